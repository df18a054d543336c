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
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

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

/// A generated resource with its content hash, made once per config version
/// and distinct proxy view and shared (`Arc`) by every stream that sends it.
///
/// It keeps the resource encoded (the `google.protobuf.Any` message, type
/// URL and value): the ADS server writes these bytes into every response
/// that carries the resource without decoding, cloning or re-encoding it.
#[derive(Debug, PartialEq)]
pub struct SharedResource {
    pub name: String,
    /// The encoded `Any`.
    pub encoded: Bytes,
    /// Hash of the name and the encoded `Any`.
    pub hash: u64,
    /// What precedes the `Any` in an incremental `Resource` (version, name
    /// and the body's field head): the same for every stream, so written
    /// once, when the first incremental stream sends the resource.
    pub(crate) delta_head: OnceLock<Bytes>,
}

impl SharedResource {
    /// Encodes and hashes `resource` once.
    pub fn new(resource: XdsResource) -> Arc<Self> {
        let encoded = Bytes::from(resource.resource.encode_to_vec());
        let mut h = DefaultHasher::new();
        resource.name.hash(&mut h);
        encoded.hash(&mut h);
        Arc::new(Self {
            hash: h.finish(),
            name: resource.name,
            encoded,
            delta_head: OnceLock::new(),
        })
    }

    /// The resource as an `Any` (decoded again: for config dumps and tests).
    pub fn resource(&self) -> Any {
        // The bytes came from encoding an `Any`, so they decode.
        Any::decode(self.encoded.clone()).expect("an encoded Any decodes")
    }

    /// A plain copy (for config dumps).
    pub fn to_resource(&self) -> XdsResource {
        XdsResource {
            name: self.name.clone(),
            resource: self.resource(),
        }
    }
}

/// What may differ for proxies between two config versions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Changes {
    /// Nothing any proxy is sent.
    None,
    /// Only endpoints of some services.
    Endpoints(EndpointChanges),
    /// Some services changed beyond their endpoints: anything may differ
    /// for a proxy that imports one of them (see
    /// [`ConfigState::imports_any`]); for the others, only what
    /// `endpoints` says.
    Services(ServiceChanges),
    /// Anything: every type may differ for every proxy.
    #[default]
    All,
}

/// The services part of [`Changes`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceChanges {
    /// Hostnames of the services (before or after) that changed beyond their endpoints.
    pub hosts: BTreeSet<String>,
    /// Their endpoints (and those of endpoints-only changes merged in).
    pub endpoints: EndpointChanges,
}

/// The endpoints-only part of [`Changes`]: EDS for these clusters, except
/// for the proxies named here, whose own clusters and listeners (inbound
/// ports come from the endpoints that are the proxy) may differ too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointChanges {
    /// EDS cluster names (`outbound|port|subset|host`) whose assignment may differ.
    pub clusters: BTreeSet<String>,
    /// Workload names and addresses of the endpoints before and after: a
    /// proxy that is one of them gets a full push. So do gateways.
    pub workloads: BTreeSet<String>,
}

impl EndpointChanges {
    /// Whether `proxy` may see more than EDS change.
    pub fn affects_whole(&self, proxy: &ProxyInfo) -> bool {
        proxy.role != ProxyRole::Sidecar
            || (!proxy.workload.is_empty() && self.workloads.contains(&proxy.workload))
            || proxy
                .ip
                .is_some_and(|ip| self.workloads.contains(&ip.to_string()))
    }
}

impl EndpointChanges {
    fn extend(&mut self, other: EndpointChanges) {
        self.clusters.extend(other.clusters);
        self.workloads.extend(other.workloads);
    }
}

impl Changes {
    /// The changes of both.
    pub fn merge(self, other: Changes) -> Changes {
        match (self, other) {
            (Changes::None, c) | (c, Changes::None) => c,
            (Changes::All, _) | (_, Changes::All) => Changes::All,
            (Changes::Endpoints(mut a), Changes::Endpoints(b)) => {
                a.extend(b);
                Changes::Endpoints(a)
            }
            (Changes::Services(mut s), Changes::Endpoints(e))
            | (Changes::Endpoints(e), Changes::Services(mut s)) => {
                s.endpoints.extend(e);
                Changes::Services(s)
            }
            (Changes::Services(mut a), Changes::Services(b)) => {
                a.hosts.extend(b.hosts);
                a.endpoints.extend(b.endpoints);
                Changes::Services(a)
            }
        }
    }

    /// What the changes are for `proxy`, going from state `old` to `new`:
    /// [`Changes::Services`] becomes everything if the proxy imports one
    /// of the services in either state, else its endpoints part.
    pub fn for_proxy(
        self,
        proxy: &ProxyInfo,
        new: &dyn ConfigState,
        old: &dyn ConfigState,
    ) -> Changes {
        match self {
            Changes::Services(s) => {
                if new.imports_any(proxy, &s.hosts) || old.imports_any(proxy, &s.hosts) {
                    Changes::All
                } else {
                    Changes::Endpoints(s.endpoints)
                }
            }
            other => other,
        }
    }
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

    /// Like [`generate`](Self::generate), but shared: a state that caches
    /// its results hands every stream the same `Arc`s. The default wraps
    /// `generate`.
    fn generate_shared(
        &self,
        proxy: &ProxyInfo,
        type_url: &str,
        names: &BTreeSet<String>,
    ) -> Result<Vec<Arc<SharedResource>>, GenerateError> {
        Ok(self
            .generate(proxy, type_url, names)?
            .into_iter()
            .map(SharedResource::new)
            .collect())
    }

    /// What limits `proxy`'s view in this state (`Sidecar <ns>/<name>`), if
    /// anything does: shown in `/debug/syncz` and logged at connect.
    fn scope_of(&self, proxy: &ProxyInfo) -> Option<String> {
        let _ = proxy;
        None
    }

    /// Whether `proxy` may be sent anything about the services `hosts` in
    /// this state (the default: yes). A state that scopes proxies (Sidecar
    /// resources) says no for services out of the proxy's scope.
    fn imports_any(&self, proxy: &ProxyInfo, hosts: &BTreeSet<String>) -> bool {
        let _ = (proxy, hosts);
        true
    }

    /// What may differ between the state of `version` (older) and this one.
    /// The default, [`Changes::All`], makes every push regenerate everything.
    fn changes_since(&self, version: u64) -> Changes {
        let _ = version;
        Changes::All
    }
}

/// Shared handle to the current configuration state.
pub type SharedState = Arc<dyn ConfigState>;
