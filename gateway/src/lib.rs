//! Isthmus east-west gateway: SNI passthrough to exported services only.
//!
//! A peer cluster's sidecar opens mTLS to this gateway with the SNI
//! `outbound_.<port>_.<subset>_.<fqdn>`. The gateway never terminates TLS:
//! it reads the ClientHello, routes on its SNI to a local endpoint of an
//! *exported* service, and splices bytes, so mTLS stays end to end and the
//! destination's sidecar sees the caller's own certificate.
//!
//! Data path, one folder per stage: [`accept`](crate::run) (global limit,
//! backpressure, drain) → [`detect`] (ClientHello: SNI, ALPN; size and time
//! bounds) → [`route`] (SNI → cluster from the control plane's gateway
//! listener; no default, no wildcard) → [`upstream`] (pick, connect, retry
//! another endpoint, outlier ejection) → `splice(2)` through a pipe per
//! direction, or `proxy-core`'s user-space `transport::splice`.
//! Config arrives over xDS (`proxy-core`), swapped atomically per change.

#![forbid(unsafe_code)]

mod accept;
pub mod cli;
pub mod detect;
pub mod metrics;
mod proxy;
pub mod route;
pub mod run;
pub mod upstream;

pub use run::{Bulk, ConfigSource, Error, Options, Running, start};
