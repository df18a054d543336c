//! Config sources and the resource store they feed.
//!
//! Data flows one way: a source (a directory of YAML, or the Kubernetes
//! API) loads and validates objects with `isthmus-api`, writes them into
//! the [`Store`], and consumers subscribe to consistent snapshots. Every
//! source also has a write path ([`ConfigWriter`]) used by the federation
//! controller to publish imported services.

#![forbid(unsafe_code)]
pub mod dir;
pub mod kube;
mod source;
pub mod store;

pub use source::{ConfigSource, ConfigWriter, SourceError, WriteError};
pub use store::{Change, ErrorKey, Snapshot, Store, Subscription, Update};
