//! The Isthmus resource model: the kinds every component reads, how they
//! are loaded and validated, and the naming conventions they share.
//!
//! Config sources (see `isthmus-config`) turn files or API-server objects
//! into [`Resource`]s with [`load::load_yaml`] / [`load::load_value`]; the
//! control plane, gateway, DNS server and federation controller consume
//! them. This crate does no I/O.

#![forbid(unsafe_code)]
pub mod crds;
pub mod duration;
pub mod error;
pub mod federation;
pub mod load;
pub mod naming;
pub mod networking;
pub mod resource;
pub mod security;
pub mod unsupported;
pub mod validate;

pub use error::LoadError;
pub use resource::{Kind, Resource, ResourceKey};
