//! The Isthmus control plane: the brain of one cluster.
//!
//! Data flows one way: the `isthmus-config` [`Store`](isthmus_config::Store)
//! → [`registry`] (services and endpoints) → per-proxy xDS generation
//! ([`xds`]) → the ADS server → sidecars, gateways and the DNS server.
//! Hostname gateway addresses are resolved by [`resolve`] and the trust
//! bundle is reloaded with the CA; both feed the push context like config.
//! The cluster CA ([`ca`]) signs workload certificates. In Kubernetes, the
//! [`inject`] webhook adds sidecars to Pods of labelled namespaces.

#![forbid(unsafe_code)]
pub mod ca;
pub mod controller;
pub mod debug;
pub mod dns_feed;
pub mod inject;
pub mod registry;
pub mod resolve;
pub mod run;
pub mod xds;
