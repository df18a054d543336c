//! Envoy v3 xDS: who is asking ([`proxy`]), what they get (generation), and
//! the Aggregated Discovery Service that delivers it ([`server`]).
//!
//! The server is independent of what it serves: it holds the current
//! [`ConfigState`] (swapped atomically when config changes) and asks it for
//! each proxy's resources of each type.

pub mod generate;
pub mod json;
pub mod proxy;
pub mod server;

use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;

pub use proxy::{ProxyInfo, ProxyRole};

/// `envoy.config.listener.v3.Listener` (LDS).
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// `envoy.config.route.v3.RouteConfiguration` (RDS).
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// `envoy.config.cluster.v3.Cluster` (CDS).
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// `envoy.extensions.transport_sockets.tls.v3.Secret` (SDS).
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The order in which a change is pushed: make before break.
pub const PUSH_ORDER: [&str; 5] = [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET];

/// Types whose subscription is a wildcard (all resources) in state-of-the-world.
pub fn is_wildcard_type(type_url: &str) -> bool {
    type_url == LISTENER || type_url == CLUSTER
}

/// One named, encoded xDS resource.
#[derive(Clone, Debug, PartialEq)]
pub struct XdsResource {
    pub name: String,
    pub resource: Any,
}

/// Why resources could not be generated for a request.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("unknown type URL {0:?}")]
    UnknownType(String),
    #[error("{0}")]
    Other(String),
}

/// One consistent version of the configuration, able to generate any proxy's resources.
pub trait ConfigState: Send + Sync + 'static {
    /// Increases whenever the underlying configuration changes.
    fn version(&self) -> u64;

    /// Resources of `type_url` for `proxy`. For wildcard types `names` is
    /// empty; for RDS, EDS and SDS it holds the names the proxy subscribed to.
    fn generate(
        &self,
        proxy: &ProxyInfo,
        type_url: &str,
        names: &BTreeSet<String>,
    ) -> Result<Vec<XdsResource>, GenerateError>;
}

/// Shared handle to the current configuration state.
pub type SharedState = Arc<dyn ConfigState>;
