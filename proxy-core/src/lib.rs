//! What the sidecar and the east-west gateway share: the xDS client that
//! keeps a validated, atomically swapped copy of the proxy's config, and
//! the transport/TLS plumbing both data planes use.
//!
//! Data flow: control plane ─ADS─► [`xds::XdsClient`] (subscriptions,
//! ACK/NACK, warming, reconnects) ─decode/validate─► [`config::ProxyConfig`]
//! ─`watch`─► the data plane, which swaps its runtime state on every new value.

#![deny(unsafe_code)]

pub mod admin;
pub mod balance;
pub mod config;
pub mod memory;
pub mod process;
pub mod transport;
pub mod xds;

pub use config::{ProxyConfig, ResourceType};
pub use xds::{XdsClient, XdsOptions, XdsProtocol};
