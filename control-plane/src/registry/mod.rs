//! The service registry: every service this cluster can route to, with
//! every endpoint's cluster, network, locality, labels, identity and health.
//!
//! Built from one store [`Snapshot`] (so it is always consistent) by
//! [`Registry::build`]. Sources: Kubernetes Services + EndpointSlices +
//! Pods + Nodes (`kubernetes.rs`), ServiceEntries and WorkloadEntries
//! (`service_entry.rs`). Hosts under `.global` / `.svc.clusterset.local`
//! (written by the federation controller) also get this cluster's own
//! endpoints of the same service, so the global name works locally too.

mod kubernetes;
mod service_entry;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use isthmus_api::naming::{HostKind, Locality, ServiceName};
use isthmus_api::{Kind, Resource};
use isthmus_config::{Change, Snapshot};

/// Label naming the cluster an endpoint runs in.
pub const CLUSTER_LABEL: &str = "topology.istio.io/cluster";
/// Label naming the network an endpoint is reachable on.
pub const NETWORK_LABEL: &str = "topology.istio.io/network";
/// Node/pod labels that give locality.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";

/// Where this control plane runs: what "local" means for endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterContext {
    pub cluster: String,
    pub network: String,
    /// Kubernetes cluster domain (`cluster.local`).
    pub domain: String,
}

impl Default for ClusterContext {
    fn default() -> Self {
        Self {
            cluster: "cluster-1".into(),
            network: String::new(),
            domain: "cluster.local".into(),
        }
    }
}

/// Application protocol of a port, chosen as Istio does (port name prefix or appProtocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Https,
    Tls,
    Tcp,
}

impl Protocol {
    /// From an Istio protocol name or port-name prefix (`http-web`, `grpc`, `TCP`).
    pub fn from_name(name: &str) -> Option<Protocol> {
        let prefix = name
            .split(['-', '_'])
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        Some(match prefix.as_str() {
            "http" => Protocol::Http,
            "http2" | "h2c" => Protocol::Http2,
            "grpc" | "grpc-web" => Protocol::Grpc,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "tcp" | "mongo" | "mysql" | "redis" => Protocol::Tcp,
            _ => return None,
        })
    }

    /// Whether the sidecar routes this port as HTTP (HTTP connection manager).
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }
}

/// One port of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// Whether a service is part of the mesh (mTLS between sidecars) or outside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeshLocation {
    Internal,
    External,
}

/// How endpoints of a service are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Endpoints are IP addresses known to the control plane (EDS).
    Static,
    /// Endpoints are DNS names the proxy resolves.
    Dns,
    /// No endpoints: traffic goes to the address the caller dialed.
    Passthrough,
}

/// One service, keyed by hostname.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// `reviews.default.svc.cluster.local`, `api.example.com`, `reviews.default.global`.
    pub hostname: String,
    pub namespace: String,
    /// The Kubernetes-style name, when the host is one (`reviews` in `default`).
    pub name: Option<ServiceName>,
    pub ports: Vec<ServicePort>,
    /// Virtual IPs (cluster IP, ServiceEntry addresses).
    pub addresses: Vec<IpAddr>,
    pub location: MeshLocation,
    pub resolution: Resolution,
    /// A ServiceExport exists for it (only these cross to other clusters).
    pub exported: bool,
    /// Namespaces that may use it (ServiceEntry `exportTo`; empty = all).
    pub export_to: Vec<String>,
    pub endpoints: Vec<Endpoint>,
    /// `Kind ns/name` of the resources it was built from.
    pub sources: Vec<String>,
}

impl Service {
    /// The port with this number.
    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == number)
    }
}

/// One instance behind a service.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// IP address, or a DNS name for DNS resolution.
    pub address: String,
    /// Service port name → the port this endpoint listens on.
    pub ports: BTreeMap<String, u16>,
    pub labels: BTreeMap<String, String>,
    pub cluster: String,
    pub network: String,
    pub locality: Locality,
    pub service_account: String,
    pub healthy: bool,
    /// Load-balancing weight (1 unless set by a WorkloadEntry).
    pub weight: u32,
    /// Pod or WorkloadEntry name.
    pub workload: String,
}

impl Endpoint {
    /// Adds the implicit topology labels (`topology.istio.io/cluster`, `.../network`)
    /// so DestinationRule subsets can select by cluster, as in Istio.
    pub(crate) fn with_topology_labels(mut self) -> Self {
        self.labels
            .entry(CLUSTER_LABEL.to_string())
            .or_insert_with(|| self.cluster.clone());
        if !self.network.is_empty() {
            self.labels
                .entry(NETWORK_LABEL.to_string())
                .or_insert_with(|| self.network.clone());
        }
        self
    }

    /// The port this endpoint serves `port` on.
    pub fn port_for(&self, port: &ServicePort) -> u16 {
        self.ports.get(&port.name).copied().unwrap_or(port.port)
    }

    /// Whether the endpoint carries every label of `selector`.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// All services, plus what could not be used and why.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    services: BTreeMap<String, Arc<Service>>,
    /// Problems met while building (resource named), logged and skipped.
    pub warnings: Vec<String>,
}

impl Registry {
    /// Builds the registry from a consistent snapshot.
    pub fn build(snapshot: &Snapshot, ctx: &ClusterContext) -> Registry {
        let b = Builder::run(snapshot, ctx, None);
        for w in &b.warnings {
            tracing::warn!(warning = %w, "registry");
        }
        Registry {
            services: b
                .services
                .into_iter()
                .map(|(k, v)| (k, Arc::new(v)))
                .collect(),
            warnings: b.warnings,
        }
    }

    /// The registry of `snapshot`, reached from `self` (built from `previous`)
    /// by `changes`, rebuilding only the services those changes touch, with
    /// the hostnames it rebuilt. `None` when that cannot be done
    /// incrementally (a change of another kind than ServiceEntry, or
    /// warnings): then use [`build`](Self::build).
    pub fn update(
        &self,
        previous: &Snapshot,
        snapshot: &Snapshot,
        changes: &[Change],
        ctx: &ClusterContext,
    ) -> Option<(Registry, BTreeSet<String>)> {
        if !self.warnings.is_empty() {
            return None;
        }
        let mut hosts = BTreeSet::new();
        for change in changes {
            let key = change.key();
            if key.kind != Kind::ServiceEntry {
                return None;
            }
            for s in [previous, snapshot] {
                if let Some(r) = s.get(key) {
                    let Resource::ServiceEntry(se) = &**r else {
                        return None;
                    };
                    hosts.extend(se.spec.hosts.iter().map(|h| h.to_ascii_lowercase()));
                }
            }
        }
        // Global and local names of one service merge endpoints.
        let local_suffix = format!(".svc.{}", ctx.domain);
        let related: Vec<String> = hosts
            .iter()
            .flat_map(|h| {
                if let Some((name, ns)) = h
                    .strip_suffix(&local_suffix)
                    .and_then(|rest| rest.split_once('.'))
                {
                    return vec![
                        format!("{name}.{ns}.global"),
                        format!("{name}.{ns}.svc.clusterset.local"),
                    ];
                }
                match ServiceName::from_host(h) {
                    Some((n, HostKind::Global | HostKind::ClusterSet)) => {
                        vec![format!("{}.{}{local_suffix}", n.name, n.namespace)]
                    }
                    _ => Vec::new(),
                }
            })
            .collect();
        hosts.extend(related);
        let b = Builder::run(snapshot, ctx, Some(&hosts));
        if !b.warnings.is_empty() {
            return None;
        }
        let mut services = self.services.clone();
        for h in &hosts {
            services.remove(h);
        }
        services.extend(b.services.into_iter().map(|(k, v)| (k, Arc::new(v))));
        Some((
            Registry {
                services,
                warnings: Vec::new(),
            },
            hosts,
        ))
    }

    /// The service with this hostname (case-insensitive).
    pub fn service(&self, hostname: &str) -> Option<&Arc<Service>> {
        self.services.get(&hostname.to_ascii_lowercase())
    }

    /// Every service, ordered by hostname.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// Number of services.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// True when there are no services.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// Accumulates services while a registry is built.
pub(crate) struct Builder<'a> {
    pub(crate) ctx: &'a ClusterContext,
    pub(crate) snapshot: &'a Snapshot,
    /// Only these hostnames are built (an incremental update), or all.
    only: Option<&'a BTreeSet<String>>,
    pub(crate) services: BTreeMap<String, Service>,
    pub(crate) warnings: Vec<String>,
}

impl<'a> Builder<'a> {
    /// Every source, in order.
    fn run(
        snapshot: &'a Snapshot,
        ctx: &'a ClusterContext,
        only: Option<&'a BTreeSet<String>>,
    ) -> Self {
        let mut b = Builder {
            ctx,
            snapshot,
            only,
            services: BTreeMap::new(),
            warnings: Vec::new(),
        };
        kubernetes::add_services(&mut b);
        service_entry::add_service_entries(&mut b);
        b.merge_local_into_global();
        b.mark_exported();
        b
    }

    /// Whether services with this (lowercase) hostname are being built.
    pub(crate) fn wants(&self, hostname: &str) -> bool {
        self.only.is_none_or(|only| only.contains(hostname))
    }

    /// Adds a service, merging ports and endpoints into one already defined for the host.
    pub(crate) fn add(&mut self, service: Service) {
        if !self.wants(&service.hostname) {
            return;
        }
        match self.services.get_mut(&service.hostname) {
            Some(existing) => {
                for p in service.ports {
                    if existing.port(p.port).is_none() {
                        existing.ports.push(p);
                    }
                }
                existing.addresses.extend(service.addresses);
                existing.endpoints.extend(service.endpoints);
                existing.sources.extend(service.sources);
            }
            None => {
                self.services.insert(service.hostname.clone(), service);
            }
        }
    }

    /// `.global` and clusterset hosts also get this cluster's own endpoints of the service.
    fn merge_local_into_global(&mut self) {
        let globals: Vec<(String, ServiceName)> = self
            .services
            .keys()
            .filter_map(|h| match ServiceName::from_host(h) {
                Some((name, HostKind::Global | HostKind::ClusterSet)) => Some((h.clone(), name)),
                _ => None,
            })
            .collect();
        for (host, name) in globals {
            let local_host = format!("{}.{}.svc.{}", name.name, name.namespace, self.ctx.domain);
            let Some(local) = self.services.get(&local_host) else {
                continue;
            };
            let local_eps: Vec<Endpoint> = local
                .endpoints
                .iter()
                .filter(|e| e.cluster == self.ctx.cluster)
                .cloned()
                .collect();
            let local_ports = local.ports.clone();
            if let Some(global) = self.services.get_mut(&host) {
                // The imported entry may not know a port name the local service uses: map by number.
                for mut ep in local_eps {
                    for gp in &global.ports {
                        if let Some(lp) = local_ports.iter().find(|lp| lp.port == gp.port) {
                            let target = ep.ports.get(&lp.name).copied().unwrap_or(lp.port);
                            ep.ports.insert(gp.name.clone(), target);
                        }
                    }
                    global.endpoints.push(ep);
                }
            }
        }
    }

    fn mark_exported(&mut self) {
        for export in self.snapshot.of_kind(Kind::ServiceExport) {
            let key = export.key();
            let host = format!("{}.{}.svc.{}", key.name, key.namespace, self.ctx.domain);
            if !self.wants(&host) {
                continue;
            }
            match self.services.get_mut(&host) {
                Some(s) => s.exported = true,
                None => self.warnings.push(format!(
                    "ServiceExport {}/{}: no Service {host} to export",
                    key.namespace, key.name
                )),
            }
        }
    }

    /// Resources of one kind.
    pub(crate) fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &'a Arc<Resource>> + 'a {
        self.snapshot.of_kind(kind)
    }
}

/// Builders for unit tests of the registry's consumers.
#[cfg(test)]
impl Service {
    /// A mesh-internal, statically resolved service without endpoints;
    /// port `n` is named `p<n>`.
    pub(crate) fn for_test(host: &str, ns: &str, ports: &[(u16, Protocol)]) -> Self {
        Service {
            hostname: host.into(),
            namespace: ns.into(),
            name: ServiceName::from_host(host).map(|(n, _)| n),
            ports: ports
                .iter()
                .map(|(port, protocol)| ServicePort {
                    name: format!("p{port}"),
                    port: *port,
                    protocol: *protocol,
                })
                .collect(),
            addresses: Vec::new(),
            location: MeshLocation::Internal,
            resolution: Resolution::Static,
            exported: false,
            export_to: Vec::new(),
            endpoints: Vec::new(),
            sources: Vec::new(),
        }
    }
}

#[cfg(test)]
impl Endpoint {
    /// A healthy endpoint at `address` in `cluster`, weight 1, no labels,
    /// ports, network, locality or workload.
    pub(crate) fn for_test(address: &str, cluster: &str) -> Self {
        Endpoint {
            address: address.into(),
            ports: BTreeMap::new(),
            labels: BTreeMap::new(),
            cluster: cluster.into(),
            network: String::new(),
            locality: Locality::default(),
            service_account: "default".into(),
            healthy: true,
            weight: 1,
            workload: String::new(),
        }
    }
}

#[cfg(test)]
mod tests;
