//! `security.istio.io/v1` kinds: mutual TLS mode and authorization.

mod authorization_policy;
mod peer_authentication;

pub use authorization_policy::*;
pub use peer_authentication::*;

/// The API group of every kind in this module.
pub const GROUP: &str = "security.istio.io";
