//! Isthmus federation controller: links this cluster with its peers.
//!
//! Place in the data flow: it reads the same config source as the control
//! plane (the `MeshFederation` naming this cluster and its peers,
//! `ServiceExport`s, and the workloads the control plane's registry is built
//! from), streams this cluster's exported catalog to linked peers over a
//! mutually authenticated gRPC API ([`server`], `isthmus.federation.v1`),
//! streams theirs ([`peer`]), and writes what it imports as `ServiceEntry`
//! objects through the config source's write path ([`import`]) — which the
//! control plane then serves as EDS (remote endpoints behind the peer's
//! gateway) and as the DNS feed. Peer gateways are probed; a peer that is
//! down turns unhealthy, then stale, then gone, and never blocks startup.
//!
//! Two modes, one controller: directory mode (config and imports in a
//! directory, the lab's) and Kubernetes mode ([`kubernetes`]: kube-rs
//! watchers, server-side apply, the MeshFederation's finalizer and status).
//!
//! Entry point: [`run::start`] (what `isthmus federation` and the lab call).

#![forbid(unsafe_code)]

pub mod admin;
pub mod catalog;
mod controller;
pub mod import;
pub mod kubernetes;
pub mod mesh;
pub mod metrics;
pub mod peer;
pub mod run;
pub mod server;
pub mod state;
pub mod tls;

pub use run::{CaSource, Error, Options, Running, Source, start};
