//! Inbound side: traffic from other workloads to this one.
//!
//! ```text
//! accept ─► detect (first byte 0x16 = TLS) ─► mTLS handshake (client cert required,
//!   SPIFFE chain + trust-domain binding) or plaintext (PERMISSIVE only)
//!   ─► HTTP: normalize path/host ─► authorize (RBAC) ─► local app
//!   ─► TCP:  authorize (connection) ─► splice to the local app
//! ```

pub mod authz;
mod server;

pub use server::{serve_explicit, serve_transparent};
