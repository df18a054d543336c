//! The proxy's complete configuration as typed Envoy v3 messages, and how
//! one xDS response becomes part of it.
//!
//! Data path: a `DiscoveryResponse` → [`decode`](Resources::decode) (every
//! `Any` has the response's type URL and decodes; the resources pass
//! [`validate`]) → [`ProxyConfig::apply`] → the names the config now
//! references (`refs`) drive the next subscriptions. A response with any
//! error is rejected whole; the previous config stays.

mod decode;
mod encoded;
mod refs;
#[cfg(test)]
pub(crate) mod tests;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

pub use decode::Resources;
pub use encoded::{Encoded, References, Resource};
pub use validate::ConfigError;

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

/// The five xDS resource types a proxy consumes (the discriminants index
/// per-type tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// CDS.
    Cluster = 0,
    /// EDS.
    Endpoint = 1,
    /// LDS.
    Listener = 2,
    /// RDS.
    Route = 3,
    /// SDS.
    Secret = 4,
}

impl ResourceType {
    /// Every type, in the order a client subscribes (as Envoy: CDS, EDS, LDS, RDS, SDS).
    pub const ALL: [ResourceType; 5] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::Secret,
    ];

    /// The type URL in requests, responses and every `Any` of a response.
    pub const fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => CLUSTER,
            ResourceType::Endpoint => ENDPOINT,
            ResourceType::Listener => LISTENER,
            ResourceType::Route => ROUTE,
            ResourceType::Secret => SECRET,
        }
    }

    /// The type for a type URL, if it is one of ours.
    pub fn from_type_url(type_url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == type_url)
    }

    /// Whether the subscription is a wildcard (all resources; absence means
    /// removal). The others are subscribed by name, and a response need not
    /// repeat unchanged resources.
    pub const fn is_wildcard(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }

    /// The message name, as used in error messages.
    pub const fn kind(self) -> &'static str {
        match self {
            ResourceType::Cluster => "Cluster",
            ResourceType::Endpoint => "ClusterLoadAssignment",
            ResourceType::Listener => "Listener",
            ResourceType::Route => "RouteConfiguration",
            ResourceType::Secret => "Secret",
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

/// Everything a proxy runs on, keyed by resource name. A published value
/// never changes; a new config is a new value. Resources are kept encoded
/// ([`Encoded`]: a consumer decodes what it compiles) and shared between
/// successive configs (cloning a config copies no resource).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyConfig {
    /// LDS, by listener name.
    pub listeners: BTreeMap<String, Encoded<Listener>>,
    /// RDS, by route configuration name.
    pub routes: BTreeMap<String, Encoded<RouteConfiguration>>,
    /// CDS, by cluster name.
    pub clusters: BTreeMap<String, Encoded<Cluster>>,
    /// EDS, by `cluster_name` (the EDS service name of the cluster).
    pub endpoints: BTreeMap<String, Encoded<ClusterLoadAssignment>>,
    /// SDS, by secret name.
    pub secrets: BTreeMap<String, Encoded<Secret>>,
    /// `version_info` of the last accepted response per type; a type is
    /// absent until its first response was accepted.
    pub versions: BTreeMap<ResourceType, String>,
}

/// Names a config references that are not (yet) in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Missing {
    /// Wildcard types not received yet.
    pub types: BTreeSet<ResourceType>,
    /// Route configurations named by HTTP connection managers.
    pub routes: BTreeSet<String>,
    /// Endpoints of EDS clusters.
    pub endpoints: BTreeSet<String>,
    /// Secrets named by transport sockets (or asked for by the caller).
    pub secrets: BTreeSet<String>,
}

impl Missing {
    /// Whether nothing is missing.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
            && self.routes.is_empty()
            && self.endpoints.is_empty()
            && self.secrets.is_empty()
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.types.is_empty() {
            let types: Vec<&str> = self.types.iter().map(|t| t.kind()).collect();
            parts.push(format!("no response yet for {}", types.join(", ")));
        }
        for (what, names) in [
            ("routes", &self.routes),
            ("endpoints", &self.endpoints),
            ("secrets", &self.secrets),
        ] {
            if !names.is_empty() {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                parts.push(format!("{what} {}", names.join(", ")));
            }
        }
        f.write_str(&parts.join("; "))
    }
}

impl ProxyConfig {
    /// The accepted version of a type, if any response was accepted.
    pub fn version(&self, t: ResourceType) -> Option<&str> {
        self.versions.get(&t).map(String::as_str)
    }

    /// Route configurations the listeners' HTTP connection managers load by RDS.
    pub fn route_names(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .flat_map(|l| l.references().routes.iter().cloned())
            .collect()
    }

    /// EDS names (service name, else cluster name) of the EDS clusters.
    pub fn endpoint_names(&self) -> BTreeSet<String> {
        self.clusters
            .values()
            .flat_map(|c| c.references().endpoints.iter().cloned())
            .collect()
    }

    /// SDS secret names the clusters' and listeners' TLS transport sockets use.
    pub fn secret_names(&self) -> BTreeSet<String> {
        let clusters = self.clusters.values().map(Encoded::references);
        let listeners = self.listeners.values().map(Encoded::references);
        clusters
            .chain(listeners)
            .flat_map(|r| r.secrets.iter().cloned())
            .collect()
    }

    /// What is still missing for a consistent config: wildcard types never
    /// received, referenced routes and endpoints, and `secrets` (the SDS
    /// names the proxy subscribes to) that have not arrived.
    pub fn missing(&self, secrets: &BTreeSet<String>) -> Missing {
        let absent = |wanted: BTreeSet<String>, have: &dyn Fn(&str) -> bool| {
            wanted.into_iter().filter(|n| !have(n)).collect()
        };
        Missing {
            types: [ResourceType::Cluster, ResourceType::Listener]
                .into_iter()
                .filter(|t| !self.versions.contains_key(t))
                .collect(),
            routes: absent(self.route_names(), &|n| self.routes.contains_key(n)),
            endpoints: absent(self.endpoint_names(), &|n| self.endpoints.contains_key(n)),
            secrets: absent(secrets.clone(), &|n| self.secrets.contains_key(n)),
        }
    }

    /// Applies one accepted response: wildcard types are replaced whole,
    /// named types are updated resource by resource (state of the world for
    /// named types does not repeat unchanged resources; they are removed
    /// when no longer referenced, see [`retain`](Self::retain)).
    pub fn apply(&mut self, resources: Resources, version: String) {
        self.versions.insert(resources.resource_type(), version);
        match resources {
            Resources::Clusters(c) => self.clusters = c,
            Resources::Listeners(l) => self.listeners = l,
            Resources::Endpoints(e) => self.endpoints.extend(e),
            Resources::Routes(r) => self.routes.extend(r),
            Resources::Secrets(s) => self.secrets.extend(s),
        }
    }

    /// Applies one accepted incremental (delta) response: every type is
    /// updated resource by resource, and `removed` names are dropped.
    pub fn apply_incremental(&mut self, resources: Resources, removed: &[String], version: String) {
        fn merge<V>(map: &mut BTreeMap<String, V>, new: BTreeMap<String, V>, removed: &[String]) {
            for name in removed {
                map.remove(name);
            }
            map.extend(new);
        }
        self.versions.insert(resources.resource_type(), version);
        match resources {
            Resources::Clusters(c) => merge(&mut self.clusters, c, removed),
            Resources::Listeners(l) => merge(&mut self.listeners, l, removed),
            Resources::Endpoints(e) => merge(&mut self.endpoints, e, removed),
            Resources::Routes(r) => merge(&mut self.routes, r, removed),
            Resources::Secrets(s) => merge(&mut self.secrets, s, removed),
        }
    }

    /// Whether a resource of type `t` named `name` is in the config.
    pub fn contains(&self, t: ResourceType, name: &str) -> bool {
        match t {
            ResourceType::Cluster => self.clusters.contains_key(name),
            ResourceType::Endpoint => self.endpoints.contains_key(name),
            ResourceType::Listener => self.listeners.contains_key(name),
            ResourceType::Route => self.routes.contains_key(name),
            ResourceType::Secret => self.secrets.contains_key(name),
        }
    }

    /// Drops named resources that are no longer subscribed.
    pub fn retain(
        &mut self,
        routes: &BTreeSet<String>,
        endpoints: &BTreeSet<String>,
        secrets: &BTreeSet<String>,
    ) {
        self.routes.retain(|n, _| routes.contains(n));
        self.endpoints.retain(|n, _| endpoints.contains(n));
        self.secrets.retain(|n, _| secrets.contains(n));
    }

    /// Resource counts per type, for logs.
    pub fn summary(&self) -> String {
        format!(
            "{} listeners, {} routes, {} clusters, {} endpoints, {} secrets",
            self.listeners.len(),
            self.routes.len(),
            self.clusters.len(),
            self.endpoints.len(),
            self.secrets.len()
        )
    }
}
