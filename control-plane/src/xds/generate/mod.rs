//! Per-proxy xDS generation from one [`PushContext`].
//!
//! A `PushContext` is an immutable view of the whole cluster config at one
//! store version: the registry plus the routing and security resources
//! indexed for lookup. It implements [`ConfigState`]: the ADS server asks it
//! for a proxy's clusters ([`clusters`]), endpoints ([`endpoints`]),
//! listeners ([`listeners`], [`gateway`]), routes ([`routes`]) and secrets
//! ([`secrets`]).

mod cache;
pub mod clusters;
pub mod endpoints;
pub mod gateway;
pub mod listeners;
mod policy;
pub mod rbac;
pub mod routes;
pub mod scope;
pub mod secrets;
mod tls;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, config_source::ConfigSourceSpecifier,
};
use envoy_types::pb::google::protobuf;
use isthmus_api::networking::{DestinationRule, VirtualService};
use isthmus_api::security::{AuthorizationPolicy, PeerAuthentication};
use isthmus_api::{Kind, Resource};
use isthmus_config::{Change, Snapshot};
use prost::Name;

use super::{
    CLUSTER, Changes, ConfigState, ENDPOINT, EndpointChanges, GenerateError, LISTENER, ProxyInfo,
    ProxyRole, ROUTE, SECRET, ServiceChanges, SharedResource, XdsResource,
};
use crate::dns_feed::build::vip_listener_hosts;
use crate::dns_feed::vip::VipRange;
use crate::registry::{ClusterContext, Registry, Resolution, Service};
use crate::resolve::ResolvedGateways;

pub(crate) use cache::{EndpointQuery, ViewKey};
pub use policy::EffectivePolicy;
pub use scope::{SidecarScope, Sidecars};

/// What the control plane knows about the mesh beyond the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshConfig {
    pub cluster: ClusterContext,
    /// This cluster's SPIFFE trust domain.
    pub trust_domain: String,
    /// PEM roots served as the `ROOTCA` secret (the CA's roots plus any
    /// extra roots; replaced when they are reloaded).
    pub trust_bundle_pem: String,
    /// Namespace whose policies apply mesh-wide (Istio's root namespace).
    pub root_namespace: String,
    /// Where federation-wide VIPs of global services come from (the DNS
    /// feed's range: sidecars listen on the VIPs DNS answers).
    pub vip_range: VipRange,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            cluster: ClusterContext::default(),
            trust_domain: "cluster.local".into(),
            trust_bundle_pem: String::new(),
            root_namespace: "istio-system".into(),
            vip_range: VipRange::default(),
        }
    }
}

/// Everything needed to generate any proxy's config at one store version.
#[derive(Debug)]
pub struct PushContext {
    /// Grows with every push context: the store version plus the number of
    /// changes from outside the store ([`PushContext::with_inputs`]).
    pub version: u64,
    /// The store version this context was built from.
    pub store_version: u64,
    /// How many changes from outside the store led here (`version - store_version`).
    generation: u64,
    pub mesh: MeshConfig,
    pub registry: Registry,
    /// Network name → east-west gateway addresses (from MeshFederation; IP
    /// addresses as written, hostnames as resolved), sorted, without duplicates.
    pub gateways: BTreeMap<String, Vec<SocketAddr>>,
    /// The resolved hostname gateway addresses `gateways` was built with.
    pub resolved_gateways: Arc<ResolvedGateways>,
    /// Cluster name → trust domain (this cluster and every peer).
    pub trust_domains: BTreeMap<String, String>,
    /// Host → the federation-wide VIPs its TCP ports listen on
    /// ([`vip_listener_hosts`]).
    pub global_vips: Arc<BTreeMap<String, Vec<IpAddr>>>,
    pub virtual_services: Vec<Arc<Resource>>,
    /// Destination rules by host they apply to.
    pub destination_rules: BTreeMap<String, Vec<Arc<Resource>>>,
    pub peer_authentications: Vec<Arc<Resource>>,
    /// Gateway resources (AUTO_PASSTHROUGH servers pick the gateway's ports).
    pub gateways_resources: Vec<Arc<Resource>>,
    pub authorization_policies: Vec<Arc<Resource>>,
    /// Sidecar resources (config scoping), by namespace.
    pub sidecars: Arc<Sidecars>,
    /// Problems met while indexing; each names its resource.
    pub warnings: Vec<String>,
    /// Whether some DestinationRule uses `failoverPriority` (then EDS depends on proxy labels).
    pub uses_failover_priority: bool,
    /// Whether some VirtualService matches on `sourceLabels` (then RDS depends on proxy labels).
    pub uses_source_labels: bool,
    /// Resources generated once per push context and shared by proxies with the same inputs.
    pub(crate) cache: cache::Cache,
    /// What changed from one push context to the next, for the last
    /// [`HISTORY`] versions: (from version, to version, changes).
    history: VecDeque<(u64, u64, Changes)>,
}

/// The one listener of a sidecar that depends on the proxy itself.
const VIRTUAL_INBOUND: &str = "virtualInbound";

/// Versions of [`PushContext::history`] kept: a stream further behind gets everything.
const HISTORY: usize = 64;

impl Drop for PushContext {
    fn drop(&mut self) {
        std::mem::take(&mut self.cache).retire();
    }
}

impl PushContext {
    /// Indexes a store snapshot (no hostname gateway resolved).
    pub fn build(snapshot: &Snapshot, mesh: MeshConfig) -> PushContext {
        Self::build_with(snapshot, mesh, Arc::default(), 0)
    }

    /// Indexes a store snapshot with hostname gateways resolved as in
    /// `resolved`, `generation` changes from outside the store after the start.
    pub fn build_with(
        snapshot: &Snapshot,
        mesh: MeshConfig,
        resolved: Arc<ResolvedGateways>,
        generation: u64,
    ) -> PushContext {
        let registry = Registry::build(snapshot, &mesh.cluster);
        let global_vips = Arc::new(vip_listener_hosts(&registry, &mesh.vip_range));
        let mut warnings = registry.warnings.clone();
        let gateways = gateway_addresses(snapshot, &resolved, &mut warnings);
        let mut trust_domains = BTreeMap::new();
        trust_domains.insert(mesh.cluster.cluster.clone(), mesh.trust_domain.clone());
        for r in snapshot.of_kind(Kind::MeshFederation) {
            if let Resource::MeshFederation(mf) = &**r {
                for p in &mf.spec.peers {
                    trust_domains.insert(p.name.clone(), p.trust_domain.clone());
                }
            }
        }
        let mut destination_rules: BTreeMap<String, Vec<Arc<Resource>>> = BTreeMap::new();
        for r in snapshot.of_kind(Kind::DestinationRule) {
            let Resource::DestinationRule(dr) = &**r else {
                continue;
            };
            let ns = dr.metadata.namespace.as_deref().unwrap_or_default();
            let host = qualify(&dr.spec.host, ns, &mesh.cluster.domain);
            destination_rules.entry(host).or_default().push(r.clone());
        }
        let sidecars = Arc::new(Sidecars::build(
            snapshot.of_kind(Kind::Sidecar),
            &mesh.root_namespace,
            &mut warnings,
        ));
        let uses_failover_priority = snapshot
            .of_kind(Kind::DestinationRule)
            .any(|r| matches!(&**r, Resource::DestinationRule(dr) if uses_failover_priority(dr)));
        let uses_source_labels = snapshot.of_kind(Kind::VirtualService).any(|r| {
            matches!(&**r, Resource::VirtualService(vs) if vs.spec.http.iter().any(|h| h.r#match.iter().any(|m| !m.source_labels.is_empty())))
        });
        PushContext {
            uses_failover_priority,
            uses_source_labels,
            cache: cache::Cache::default(),
            history: VecDeque::new(),
            version: snapshot.version() + generation,
            store_version: snapshot.version(),
            generation,
            registry,
            gateways,
            resolved_gateways: resolved,
            trust_domains,
            global_vips,
            virtual_services: snapshot.of_kind(Kind::VirtualService).cloned().collect(),
            destination_rules,
            peer_authentications: snapshot
                .of_kind(Kind::PeerAuthentication)
                .cloned()
                .collect(),
            gateways_resources: snapshot.of_kind(Kind::Gateway).cloned().collect(),
            authorization_policies: snapshot
                .of_kind(Kind::AuthorizationPolicy)
                .cloned()
                .collect(),
            sidecars,
            warnings,
            mesh,
        }
    }

    /// The push context after `self` (built from `previous`) for `snapshot`,
    /// which `changes` made from `previous`, with what changed for proxies
    /// recorded (see [`ConfigState::changes_since`]).
    ///
    /// Changes to ServiceEntries only rebuild the services they touch
    /// ([`Registry::update`]) and keep everything else; a service whose
    /// endpoints alone changed is an endpoints-only change (EDS), any other
    /// change of a service is [`Changes::Services`] (everything, for the
    /// proxies that import it). Any other change rebuilds the whole context
    /// and may change anything.
    pub fn next(
        &self,
        previous: &Snapshot,
        snapshot: &Snapshot,
        changes: &[Change],
    ) -> PushContext {
        let registry_only = changes
            .iter()
            .all(|c| REGISTRY_KINDS.contains(&c.key().kind));
        let rebuild = || {
            PushContext::build_with(
                snapshot,
                self.mesh.clone(),
                self.resolved_gateways.clone(),
                self.generation,
            )
        };
        let (mut pc, changed) = if !registry_only {
            (rebuild(), Changes::All)
        } else if let Some((registry, hosts)) =
            self.registry
                .update(previous, snapshot, changes, &self.mesh.cluster)
        {
            self.with_registry(registry, snapshot.version(), &hosts)
        } else {
            let registry = Registry::build(snapshot, &self.mesh.cluster);
            if registry.warnings.is_empty() && self.registry.warnings.is_empty() {
                let hosts = self
                    .registry
                    .services()
                    .chain(registry.services())
                    .map(|s| s.hostname.clone())
                    .collect();
                self.with_registry(registry, snapshot.version(), &hosts)
            } else {
                (rebuild(), Changes::All)
            }
        };
        self.record(&mut pc, changed);
        pc
    }

    /// The push context after a change from outside the store: another
    /// mesh config (a reloaded trust bundle) or other resolved hostname
    /// gateway addresses. `snapshot` is the one `self` was built from. A
    /// change of gateway addresses alone is an endpoints-only change of the
    /// services with endpoints in the networks whose gateways moved.
    pub fn with_inputs(
        &self,
        snapshot: &Snapshot,
        mesh: MeshConfig,
        resolved: Arc<ResolvedGateways>,
    ) -> PushContext {
        let mesh_changed = mesh != self.mesh;
        let mut pc = PushContext::build_with(snapshot, mesh, resolved, self.generation + 1);
        let changed = if mesh_changed {
            Changes::All
        } else {
            let networks: BTreeSet<&String> = self
                .gateways
                .keys()
                .chain(pc.gateways.keys())
                .filter(|n| self.gateways.get(*n) != pc.gateways.get(*n))
                .collect();
            let mut clusters = BTreeSet::new();
            for svc in pc.registry.services() {
                if svc.endpoints.iter().any(|e| networks.contains(&e.network)) {
                    clusters.extend(pc.endpoint_changes(svc, svc).clusters);
                }
            }
            if clusters.is_empty() {
                Changes::None
            } else {
                Changes::Endpoints(EndpointChanges {
                    clusters,
                    workloads: BTreeSet::new(),
                })
            }
        };
        self.record(&mut pc, changed);
        pc
    }

    /// Gives `pc`, the context after `self`, the history up to and including `changed`.
    fn record(&self, pc: &mut PushContext, changed: Changes) {
        pc.history = self.history.clone();
        if pc.history.len() == HISTORY {
            pc.history.pop_front();
        }
        pc.history.push_back((self.version, pc.version, changed));
    }

    /// `self` with another registry (nothing else changed), and what that
    /// changes for proxies, comparing the services named in `hosts`.
    fn with_registry(
        &self,
        registry: Registry,
        version: u64,
        hosts: &BTreeSet<String>,
    ) -> (PushContext, Changes) {
        let mut changes = Changes::None;
        for host in hosts {
            let step = match (self.registry.service(host), registry.service(host)) {
                (None, None) => continue,
                (Some(old), Some(new)) if Arc::ptr_eq(old, new) || old == new => continue,
                (Some(old), Some(new)) if endpoints_only(self, old, new) => {
                    Changes::Endpoints(self.endpoint_changes(old, new))
                }
                (old, new) => {
                    let (old, new) = (old.or(new), new.or(old));
                    let (Some(old), Some(new)) = (old, new) else {
                        continue;
                    };
                    Changes::Services(ServiceChanges {
                        hosts: BTreeSet::from([host.clone()]),
                        endpoints: self.endpoint_changes(old, new),
                    })
                }
            };
            changes = changes.merge(step);
        }
        let cache = match &changes {
            Changes::All | Changes::Services(_) => cache::Cache::default(),
            Changes::None | Changes::Endpoints(_) => self.cache.carry_over(),
        };
        // Names and addresses only change with a change that is not
        // endpoints-only; a service whose global VIPs moved (allocation is
        // by name, so only on a collision) changed too.
        let global_vips = match &mut changes {
            Changes::All => Arc::new(vip_listener_hosts(&registry, &self.mesh.vip_range)),
            Changes::Services(s) => {
                let vips = Arc::new(vip_listener_hosts(&registry, &self.mesh.vip_range));
                s.hosts.extend(
                    self.global_vips
                        .keys()
                        .chain(vips.keys())
                        .filter(|h| self.global_vips.get(*h) != vips.get(*h))
                        .cloned(),
                );
                vips
            }
            Changes::None | Changes::Endpoints(_) => self.global_vips.clone(),
        };
        let pc = PushContext {
            version: version + self.generation,
            store_version: version,
            generation: self.generation,
            mesh: self.mesh.clone(),
            registry,
            gateways: self.gateways.clone(),
            resolved_gateways: self.resolved_gateways.clone(),
            trust_domains: self.trust_domains.clone(),
            global_vips,
            virtual_services: self.virtual_services.clone(),
            destination_rules: self.destination_rules.clone(),
            peer_authentications: self.peer_authentications.clone(),
            gateways_resources: self.gateways_resources.clone(),
            authorization_policies: self.authorization_policies.clone(),
            sidecars: self.sidecars.clone(),
            // Registry warnings come first; both registries have none.
            warnings: self.warnings[self.registry.warnings.len()..].to_vec(),
            uses_failover_priority: self.uses_failover_priority,
            uses_source_labels: self.uses_source_labels,
            cache,
            history: VecDeque::new(),
        };
        (pc, changes)
    }

    /// The EDS clusters of a service whose endpoints changed (every port,
    /// every subset any DestinationRule defines for it), and its workloads.
    fn endpoint_changes(&self, old: &Service, new: &Service) -> EndpointChanges {
        let subsets: BTreeSet<Option<&str>> = std::iter::once(None)
            .chain(
                self.destination_rules
                    .get(&new.hostname)
                    .into_iter()
                    .flatten()
                    .filter_map(|r| match &**r {
                        Resource::DestinationRule(dr) => Some(dr),
                        _ => None,
                    })
                    .flat_map(|dr| dr.spec.subsets.iter().map(|s| Some(s.name.as_str()))),
            )
            .collect();
        let mut out = EndpointChanges::default();
        for port in &new.ports {
            for subset in &subsets {
                out.clusters
                    .insert(cluster_name(port.port, *subset, &new.hostname));
            }
        }
        for e in old.endpoints.iter().chain(&new.endpoints) {
            if !e.workload.is_empty() {
                out.workloads.insert(e.workload.clone());
            }
            out.workloads.insert(e.address.clone());
        }
        out
    }

    /// The destination rule for `host` as seen from `namespace`: one in the
    /// caller's namespace wins, then one in the service's namespace, then any.
    pub fn destination_rule(
        &self,
        host: &str,
        caller_ns: &str,
        service_ns: &str,
    ) -> Option<&DestinationRule> {
        let rules = self.destination_rules.get(host)?;
        let pick = |ns: &str| {
            rules.iter().find_map(|r| match &**r {
                Resource::DestinationRule(dr) if dr.metadata.namespace.as_deref() == Some(ns) => {
                    Some(dr)
                }
                _ => None,
            })
        };
        pick(caller_ns).or_else(|| pick(service_ns)).or_else(|| {
            rules.iter().find_map(|r| match &**r {
                Resource::DestinationRule(dr)
                    if visible(
                        &dr.spec.export_to,
                        dr.metadata.namespace.as_deref(),
                        caller_ns,
                    ) =>
                {
                    Some(dr)
                }
                _ => None,
            })
        })
    }

    /// VirtualServices visible from `namespace`.
    pub fn virtual_services_for<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a VirtualService> + 'a {
        self.virtual_services
            .iter()
            .filter_map(move |r| match &**r {
                Resource::VirtualService(vs)
                    if visible(
                        &vs.spec.export_to,
                        vs.metadata.namespace.as_deref(),
                        namespace,
                    ) =>
                {
                    Some(vs)
                }
                _ => None,
            })
    }

    /// PeerAuthentications and AuthorizationPolicies as typed slices.
    pub fn peer_authentications(&self) -> impl Iterator<Item = &PeerAuthentication> {
        self.peer_authentications.iter().filter_map(|r| match &**r {
            Resource::PeerAuthentication(p) => Some(p),
            _ => None,
        })
    }

    /// AuthorizationPolicies.
    pub fn authorization_policies(&self) -> impl Iterator<Item = &AuthorizationPolicy> {
        self.authorization_policies
            .iter()
            .filter_map(|r| match &**r {
                Resource::AuthorizationPolicy(p) => Some(p),
                _ => None,
            })
    }

    /// The Sidecar resource that scopes `proxy`, if any (see [`scope`]).
    pub fn sidecar_for(&self, proxy: &ProxyInfo) -> Option<&Arc<SidecarScope>> {
        self.sidecars.select(proxy, &self.mesh.root_namespace)
    }

    /// What `proxy`'s outbound clusters, listeners and routes depend on.
    pub(crate) fn view_key(&self, proxy: &ProxyInfo) -> ViewKey {
        ViewKey {
            namespace: proxy.namespace.clone(),
            sidecar: self.sidecar_for(proxy).map(|s| s.name.clone()),
        }
    }

    /// What an assignment for `proxy`, scoped by `scope`, depends on.
    pub(crate) fn endpoint_query<'a>(
        &self,
        proxy: &'a ProxyInfo,
        scope: Option<&'a Arc<SidecarScope>>,
    ) -> EndpointQuery<'a> {
        EndpointQuery {
            proxy,
            by_labels: self.uses_failover_priority,
            scope: scope.map(|s| &s.name),
        }
    }

    /// Whether the EDS cluster `name` is in `scope` (every name is when no
    /// Sidecar scopes the proxy; a name of no known service port is not).
    pub(crate) fn in_scope(&self, scope: Option<&SidecarScope>, name: &str) -> bool {
        let Some(scope) = scope else {
            return true;
        };
        parse_cluster_name(name)
            .and_then(|(port, _, host)| {
                let svc = self.registry.service(host)?;
                Some(scope.admits(svc, svc.port(port)?))
            })
            .unwrap_or(false)
    }

    /// Trust domain of the cluster an endpoint runs in.
    pub fn trust_domain_of(&self, cluster: &str) -> &str {
        self.trust_domains
            .get(cluster)
            .map_or(self.mesh.trust_domain.as_str(), String::as_str)
    }
}

impl ConfigState for PushContext {
    fn version(&self) -> u64 {
        self.version
    }

    fn generate(
        &self,
        proxy: &ProxyInfo,
        type_url: &str,
        names: &BTreeSet<String>,
    ) -> Result<Vec<XdsResource>, GenerateError> {
        let out = match (type_url, proxy.role) {
            (CLUSTER, ProxyRole::Sidecar) => clusters::sidecar(self, proxy),
            (CLUSTER, ProxyRole::Gateway) => gateway::clusters(self, proxy),
            (ENDPOINT, ProxyRole::Sidecar | ProxyRole::Gateway) => {
                endpoints::generate(self, proxy, names)
            }
            (LISTENER, ProxyRole::Sidecar) => listeners::sidecar(self, proxy),
            (LISTENER, ProxyRole::Gateway) => gateway::listeners(self, proxy),
            (ROUTE, ProxyRole::Sidecar) => routes::generate(self, proxy, names),
            (SECRET, _) => secrets::generate(self, proxy, names),
            (CLUSTER | ENDPOINT | LISTENER | ROUTE, _) => Vec::new(),
            (other, _) => return Err(GenerateError::UnknownType(other.to_string())),
        };
        Ok(out)
    }

    fn generate_shared(
        &self,
        proxy: &ProxyInfo,
        type_url: &str,
        names: &BTreeSet<String>,
    ) -> Result<Vec<Arc<SharedResource>>, GenerateError> {
        let shared = |r: Vec<XdsResource>| r.into_iter().map(SharedResource::new);
        let out = match (type_url, proxy.role) {
            (CLUSTER, ProxyRole::Sidecar) => {
                let view = self.view_key(proxy);
                let all = self.cache.shared_clusters(&view, || {
                    let made = clusters::sidecar(self, proxy)
                        .into_iter()
                        .filter(|r| !r.name.starts_with("inbound|"));
                    // Kept shared from here on; the copy `sidecar` cached is not needed.
                    self.cache.forget_outbound_clusters(&view);
                    sorted(made.map(SharedResource::new).collect())
                });
                with_own(&all, shared(clusters::inbound(self, proxy)))
            }
            (LISTENER, ProxyRole::Sidecar) => {
                let all = self.cache.shared_listeners(&self.view_key(proxy), || {
                    let made = listeners::sidecar(self, proxy)
                        .into_iter()
                        .filter(|r| r.name != VIRTUAL_INBOUND);
                    sorted(made.map(SharedResource::new).collect())
                });
                let inbound = resource(VIRTUAL_INBOUND, listeners::inbound(self, proxy));
                with_own(&all, [SharedResource::new(inbound)])
            }
            (ENDPOINT, ProxyRole::Sidecar | ProxyRole::Gateway) => {
                let scope = self.sidecar_for(proxy);
                let query = self.endpoint_query(proxy, scope);
                self.cache.shared_endpoints_many(names, query, |name| {
                    self.in_scope(scope.map(Arc::as_ref), name)
                        .then(|| endpoints::assignment(self, proxy, name))
                        .flatten()
                        .map(|cla| resource(name.to_string(), cla))
                })
            }
            (ROUTE, ProxyRole::Sidecar) => {
                let view = self.view_key(proxy);
                names
                    .iter()
                    .filter_map(|n| {
                        let port = n.parse().ok()?;
                        Some(self.cache.shared_route(
                            n,
                            &view,
                            proxy,
                            self.uses_source_labels,
                            || resource(n.clone(), routes::route_config(self, proxy, port)),
                        ))
                    })
                    .collect()
            }
            _ => shared(self.generate(proxy, type_url, names)?).collect(),
        };
        Ok(out)
    }

    fn imports_any(&self, proxy: &ProxyInfo, hosts: &BTreeSet<String>) -> bool {
        let Some(scope) = self.sidecar_for(proxy) else {
            return true;
        };
        hosts.iter().any(|h| {
            self.registry.service(h).is_some_and(|svc| {
                visible(&svc.export_to, Some(&svc.namespace), &proxy.namespace)
                    && scope.admits_any(svc)
            })
        })
    }

    fn scope_of(&self, proxy: &ProxyInfo) -> Option<String> {
        self.sidecar_for(proxy)
            .map(|s| format!("Sidecar {}", s.name))
    }

    fn changes_since(&self, version: u64) -> Changes {
        if version >= self.version {
            return Changes::None;
        }
        let mut relevant = self.history.iter().filter(|(_, to, _)| *to > version);
        match relevant.next() {
            Some((from, _, first)) if *from <= version => {
                relevant.fold(first.clone(), |acc, (_, _, c)| acc.merge(c.clone()))
            }
            _ => Changes::All,
        }
    }
}

/// Shared resources sorted by name, as responses list them.
fn sorted(mut resources: Vec<Arc<SharedResource>>) -> cache::Shared {
    resources.sort_by(|a, b| a.name.cmp(&b.name));
    Arc::new(resources)
}

/// A proxy's resources: the shared ones (sorted) plus its own, in name order.
fn with_own(
    shared: &[Arc<SharedResource>],
    own: impl IntoIterator<Item = Arc<SharedResource>>,
) -> Vec<Arc<SharedResource>> {
    let mut out = shared.to_vec();
    for r in own {
        let at = out.partition_point(|x| x.name < r.name);
        out.insert(at, r);
    }
    out
}

/// Kinds that only feed the registry: their changes are judged by what the
/// registry's services become.
const REGISTRY_KINDS: [Kind; 7] = [
    Kind::ServiceEntry,
    Kind::WorkloadEntry,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Pod,
    Kind::Node,
    Kind::ServiceExport,
];

/// Network → gateway addresses of every MeshFederation (local and peers):
/// IP addresses as written, hostnames as `resolved` has them (a hostname not
/// resolved yet adds nothing and a warning). Sorted, without duplicates.
fn gateway_addresses(
    snapshot: &Snapshot,
    resolved: &ResolvedGateways,
    warnings: &mut Vec<String>,
) -> BTreeMap<String, Vec<SocketAddr>> {
    let mut gateways: BTreeMap<String, BTreeSet<SocketAddr>> = BTreeMap::new();
    for r in snapshot.of_kind(Kind::MeshFederation) {
        let Resource::MeshFederation(mf) = &**r else {
            continue;
        };
        let key = r.key();
        let mut add = |network: &str, addrs: &[String]| {
            for a in addrs {
                let into = gateways.entry(network.to_string()).or_default();
                match GatewayAddress::parse(a) {
                    Some(GatewayAddress::Ip(sa)) => {
                        into.insert(sa);
                    }
                    Some(GatewayAddress::Host(host, port)) => match resolved.get(&host) {
                        Some(ips) => into.extend(ips.iter().map(|ip| SocketAddr::new(*ip, port))),
                        None => warnings.push(format!(
                            "{key}: gateway address {a:?}: hostname {host} not resolved (yet); \
                             network {network:?} gets no address from it"
                        )),
                    },
                    None => warnings.push(format!(
                        "{key}: gateway address {a:?} is not host:port, skipped"
                    )),
                }
            }
        };
        add(&mf.spec.local.network, &mf.spec.local.gateway_addresses);
        for p in &mf.spec.peers {
            add(&p.network, &p.gateway_addresses);
        }
    }
    gateways
        .into_iter()
        .filter(|(_, addrs)| !addrs.is_empty())
        .map(|(network, addrs)| (network, addrs.into_iter().collect()))
        .collect()
}

/// A MeshFederation gateway address: `ip:port`, or `hostname:port` to resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayAddress {
    Ip(SocketAddr),
    /// Lowercased, without a trailing dot.
    Host(String, u16),
}

impl GatewayAddress {
    /// Parses `host:port` / `[v6]:port`; `None` if it is neither.
    pub fn parse(s: &str) -> Option<GatewayAddress> {
        let (host, port) = isthmus_api::validate::split_host_port(s)?;
        if port == 0 {
            return None;
        }
        Some(match host.parse::<IpAddr>() {
            Ok(ip) => GatewayAddress::Ip(SocketAddr::new(ip, port)),
            Err(_) => GatewayAddress::Host(host.trim_end_matches('.').to_ascii_lowercase(), port),
        })
    }
}

/// Every gateway hostname the MeshFederations of `snapshot` name (see [`GatewayAddress`]).
pub fn gateway_hostnames(snapshot: &Snapshot) -> BTreeSet<String> {
    snapshot
        .of_kind(Kind::MeshFederation)
        .filter_map(|r| match &**r {
            Resource::MeshFederation(mf) => Some(mf),
            _ => None,
        })
        .flat_map(|mf| {
            let peers = mf.spec.peers.iter().flat_map(|p| &p.gateway_addresses);
            mf.spec.local.gateway_addresses.iter().chain(peers)
        })
        .filter_map(|a| match GatewayAddress::parse(a)? {
            GatewayAddress::Host(host, _) => Some(host),
            GatewayAddress::Ip(_) => None,
        })
        .collect()
}

/// Whether `old` and `new` differ in their endpoints alone, in a way only
/// EDS shows: same ports, addresses, resolution (static, so clusters do not
/// inline endpoints) and the same identities (clusters carry the expected
/// SPIFFE SANs of the endpoints' service accounts).
fn endpoints_only(pc: &PushContext, old: &Service, new: &Service) -> bool {
    let identities = |s: &Service| -> BTreeSet<(String, String)> {
        s.endpoints
            .iter()
            .map(|e| {
                (
                    pc.trust_domain_of(&e.cluster).to_string(),
                    e.service_account.clone(),
                )
            })
            .collect()
    };
    old.resolution == Resolution::Static
        && new.resolution == Resolution::Static
        && old.hostname == new.hostname
        && old.namespace == new.namespace
        && old.name == new.name
        && old.ports == new.ports
        && old.addresses == new.addresses
        && old.location == new.location
        && old.exported == new.exported
        && old.export_to == new.export_to
        && old.sources == new.sources
        && identities(old) == identities(new)
}

/// Whether any traffic policy of `dr` (top level, port level, subsets) sets `failoverPriority`.
fn uses_failover_priority(dr: &DestinationRule) -> bool {
    use isthmus_api::networking::{LoadBalancerSettings, TrafficPolicy};
    let lb = |lb: Option<&LoadBalancerSettings>| {
        lb.and_then(|l| l.locality_lb_setting.as_ref())
            .is_some_and(|s| !s.failover_priority.is_empty())
    };
    let tp = |tp: &TrafficPolicy| {
        lb(tp.load_balancer.as_ref())
            || tp
                .port_level_settings
                .iter()
                .any(|p| lb(p.load_balancer.as_ref()))
    };
    dr.spec.traffic_policy.as_ref().is_some_and(tp)
        || dr
            .spec
            .subsets
            .iter()
            .any(|s| s.traffic_policy.as_ref().is_some_and(tp))
}

/// Whether an object in `owner_ns` with `export_to` is visible from `namespace`.
pub(crate) fn visible(export_to: &[String], owner_ns: Option<&str>, namespace: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == namespace || (e == "." && owner_ns == Some(namespace)))
}

/// Expands a short host (`reviews`) relative to a namespace; dotted hosts are taken as written.
pub fn qualify(host: &str, namespace: &str, domain: &str) -> String {
    if host.contains('.') || host == "*" {
        host.to_ascii_lowercase()
    } else {
        format!("{}.{namespace}.svc.{domain}", host.to_ascii_lowercase())
    }
}

/// `outbound|<port>|<subset>|<host>`: the name of a sidecar cluster.
pub fn cluster_name(port: u16, subset: Option<&str>, host: &str) -> String {
    format!("outbound|{port}|{}|{host}", subset.unwrap_or_default())
}

/// Splits a cluster name made by [`cluster_name`].
pub fn parse_cluster_name(name: &str) -> Option<(u16, Option<&str>, &str)> {
    let mut parts = name.splitn(4, '|');
    if parts.next()? != "outbound" {
        return None;
    }
    let port = parts.next()?.parse().ok()?;
    let subset = parts.next().filter(|s| !s.is_empty());
    Some((port, subset, parts.next()?))
}

/// Packs a message as a named xDS resource.
pub(crate) fn resource<T: Name + prost::Message>(name: impl Into<String>, msg: T) -> XdsResource {
    XdsResource {
        name: name.into(),
        resource: envoy_types::util::pack_any(msg),
    }
}

/// The config source that means "over the same ADS stream".
pub(crate) fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..ConfigSource::default()
    }
}

/// A protobuf duration.
pub(crate) fn duration(d: std::time::Duration) -> protobuf::Duration {
    protobuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf UInt32 wrapper.
pub(crate) fn u32_value(v: u32) -> protobuf::UInt32Value {
    protobuf::UInt32Value { value: v }
}

/// A protobuf Bool wrapper.
pub(crate) fn bool_value(v: bool) -> protobuf::BoolValue {
    protobuf::BoolValue { value: v }
}

#[cfg(test)]
mod tests;
