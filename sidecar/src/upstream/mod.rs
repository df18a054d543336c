//! Connections to upstream endpoints: TCP, then mesh mTLS when the cluster
//! asks for it, then HTTP/1.1 or HTTP/2, pooled per endpoint.
//!
//! ```text
//! Pool::send(addr, request) ─► idle sender for addr? ─► yes: send
//!                               └─ no: connect (TCP, connect timeout, connection permit)
//!                                      ─► TLS (SNI, SPIFFE server check) ─► handshake ─► send
//! ```
//!
//! HTTP/2 connections are shared by concurrent requests (a second one, up
//! to four per endpoint, opens when the least busy has four requests in
//! flight, so both ends spread the work over their workers); HTTP/1.1
//! senders go back to the pool when their response is done, and with
//! `maxConnections` reached a request waits as a pending request. The pool is owned by a
//! cluster's state and survives config pushes; a change of TLS settings or
//! protocol builds a new pool (requests in flight on the old one finish).

mod pool;
mod stream;
pub mod upgrade;

pub use pool::{MeshTls, Pool, PoolSettings, UpstreamError};
pub use stream::{Stream, connect};
