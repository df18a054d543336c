//! Isthmus sidecar proxy: xDS-driven HTTP/gRPC/TCP proxy with mTLS,
//! authorization and Istio's metrics.
//!
//! Folders follow the path of a request:
//!
//! ```text
//! outbound/ (explicit | transparent listener) ─► route/ (virtual host, route, policies)
//!   ─► proxy-core balance (endpoint) ─► upstream/ (pool, TCP, mesh mTLS)
//!   ═══ network ═══► inbound/ (detect, mTLS, authz/) ─► local app
//! state/ compiles xDS + identity/ (certificate) into the snapshot all of them read.
//! ```

#![forbid(unsafe_code)]
pub mod access_log;
pub mod body;
pub mod capture;
pub mod cli;
pub mod flags;
pub mod identity;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod route;
pub mod run;
pub mod server;
pub mod state;
pub mod upstream;
pub mod workers;
