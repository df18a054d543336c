//! The Isthmus control plane: the brain of one cluster.
//!
//! Data flows one way: the `isthmus-config` [`Store`](isthmus_config::Store)
//! → [`registry`] (services and endpoints) → per-proxy xDS generation
//! ([`xds`]) → the ADS server → sidecars, gateways and the DNS server. The
//! cluster CA ([`ca`]) signs workload certificates.

pub mod ca;
pub mod controller;
pub mod debug;
pub mod dns_feed;
pub mod registry;
pub mod run;
pub mod xds;
