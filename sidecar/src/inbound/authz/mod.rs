//! Inbound authorization: the Envoy RBAC filters the control plane sends for
//! a workload's inbound chains, evaluated on each request (HTTP) or connection
//! (TCP).
//!
//! ```text
//! LDS listener ──► RBAC typed_configs ──► Authorizer::from_{http,network}_filters (compiled once)
//! request ──► normalize_path / normalize_host ──► RequestAttributes ──► Authorizer::check ──► Decision
//! ```
//!
//! The control plane turns Istio `AuthorizationPolicy` into these filters
//! (`isthmus_control_plane::xds::generate::rbac`); this side follows Envoy's
//! RBAC semantics so both agree: filters run in order (DENY before ALLOW), a
//! DENY filter denies when any policy matches, an ALLOW filter allows only
//! when some policy matches (none ⇒ deny all), and no filter allows.
//!
//! Paths are matched after [`normalize_path`] and case-sensitively (as in
//! Istio: a DENY of `/admin` does not cover `/ADMIN`; an application that
//! treats paths case-insensitively needs rules for that). Hosts are matched
//! after [`normalize_host`], case-insensitively.

mod normalize;
mod rbac;

use std::net::IpAddr;

use http::{HeaderMap, Method};

pub use normalize::{NormalizedHost, NormalizedPath, PathError, normalize_host, normalize_path};
pub use rbac::{Authorizer, ConfigError};

/// Reported as the policy of a [`Decision::Deny`] when an ALLOW filter had no
/// matching policy (Envoy logs `rbac_access_denied_matched_policy[none]`).
pub const NO_MATCHING_POLICY: &str = "none";

/// Reported as the policy of a [`Decision::Deny`] when an HTTP authorizer is
/// asked about a request without [`HttpAttributes`]: it fails closed.
pub const MISSING_HTTP_ATTRIBUTES: &str = "<missing HTTP attributes>";

/// What the authorizer knows about one request (or, for TCP, one connection).
#[derive(Clone, Copy, Debug)]
pub struct RequestAttributes<'a> {
    /// SPIFFE URI SAN of the verified client certificate; `None` without mTLS.
    pub peer_principal: Option<&'a str>,
    /// Address of the downstream connection's peer (not `X-Forwarded-For`).
    pub source_ip: IpAddr,
    /// Local address the connection was made to.
    pub destination_ip: IpAddr,
    /// Local port the connection was made to.
    pub destination_port: u16,
    /// TLS SNI the client sent, if any.
    pub sni: Option<&'a str>,
    /// The HTTP request; `None` on TCP chains.
    pub http: Option<HttpAttributes<'a>>,
}

/// The HTTP part of a request, already normalized.
#[derive(Clone, Copy, Debug)]
pub struct HttpAttributes<'a> {
    /// Request method (`:method`), matched case-sensitively.
    pub method: &'a Method,
    /// Normalized path (`url_path`; `:path` is this plus the query).
    pub path: &'a NormalizedPath,
    /// Normalized `:authority` / `Host`.
    pub host: &'a NormalizedHost,
    /// Request headers; several values of one name are joined with `,`.
    pub headers: &'a HeaderMap,
}

/// The outcome of [`Authorizer::check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Every filter let the request through.
    Allow,
    /// A filter refused the request (answer 403 on HTTP, close on TCP).
    Deny {
        /// The DENY policy that matched, or [`NO_MATCHING_POLICY`] when an
        /// ALLOW filter had none (or [`MISSING_HTTP_ATTRIBUTES`]).
        policy: String,
    },
}

impl Decision {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

#[cfg(test)]
mod tests;
