//! Isthmus sidecar proxy: xDS-driven HTTP/gRPC/TCP proxy with mTLS.
//!
//! Not built yet (issue 4).

pub mod capture;
pub mod inbound;
