//! Per-push-context caches: most proxies in a namespace (and locality) get
//! identical clusters, endpoints and routes, so each distinct answer is
//! generated once per config version and shared.
//!
//! Keys hold exactly the proxy inputs a generator reads: namespace and
//! the Sidecar that scopes the proxy ([`ViewKey`]) for clusters and
//! listeners; role, namespace, network, cluster, locality and the Sidecar
//! for endpoints ([`EndpointQuery`]; plus labels when some DestinationRule
//! uses `failoverPriority`), so whether a name is in the proxy's scope is
//! decided once per view and cached with its assignment; the view for
//! routes (plus labels when some VirtualService matches on `sourceLabels`).
//! A new push context starts with empty caches, except that one reached by
//! an endpoints-only change keeps the previous one's clusters, listeners
//! and routes ([`Cache::carry_over`]). A proxy's own (inbound) ports are
//! found in a per-namespace index of local endpoints ([`WorkloadIndex`]).
//!
//! The `shared_*` maps serve the ADS server: the same results as
//! [`SharedResource`]s, so every stream sends (and remembers) the same
//! `Arc`s instead of its own copy.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, mpsc};

use isthmus_api::naming::Locality;

use crate::registry::{Protocol, Service};
use crate::xds::{ProxyInfo, ProxyRole, SharedResource, XdsResource};

/// Resources shared by every stream that sends them.
pub(crate) type Shared = Arc<Vec<Arc<SharedResource>>>;

type Labels = Option<BTreeMap<String, String>>;

/// What of a proxy an assignment depends on (besides the cluster name).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EndpointView {
    role: ProxyRole,
    namespace: String,
    network: String,
    cluster: String,
    locality: Locality,
    labels: Labels,
    /// The Sidecar that scopes the proxy: a name outside its scope is
    /// cached as having no assignment.
    scope: Option<Arc<str>>,
}

/// A proxy as an assignment sees it: the proxy, whether its labels matter,
/// and the Sidecar scoping it (`<namespace>/<name>`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct EndpointQuery<'a> {
    pub(crate) proxy: &'a ProxyInfo,
    pub(crate) by_labels: bool,
    pub(crate) scope: Option<&'a Arc<str>>,
}

impl EndpointView {
    fn of(q: EndpointQuery<'_>) -> Self {
        let proxy = q.proxy;
        Self {
            role: proxy.role,
            namespace: proxy.namespace.clone(),
            network: proxy.network.clone(),
            cluster: proxy.cluster.clone(),
            locality: proxy.locality.clone(),
            labels: q.by_labels.then(|| proxy.labels.clone()),
            scope: q.scope.cloned(),
        }
    }

    /// Whether the query's proxy has this view (compared in place, nothing copied).
    fn is_of(&self, q: EndpointQuery<'_>) -> bool {
        let (proxy, by_labels) = (q.proxy, q.by_labels);
        self.scope.as_ref() == q.scope
            && self.role == proxy.role
            && self.namespace == proxy.namespace
            && self.network == proxy.network
            && self.cluster == proxy.cluster
            && self.locality == proxy.locality
            && match &self.labels {
                Some(labels) => by_labels && *labels == proxy.labels,
                None => !by_labels,
            }
    }

    /// The hash of `of(q)`, without building it.
    fn hash_of(q: EndpointQuery<'_>) -> u64 {
        let (proxy, by_labels) = (q.proxy, q.by_labels);
        let mut h = DefaultHasher::new();
        proxy.role.hash(&mut h);
        proxy.namespace.hash(&mut h);
        proxy.network.hash(&mut h);
        proxy.cluster.hash(&mut h);
        proxy.locality.hash(&mut h);
        by_labels.then_some(&proxy.labels).hash(&mut h);
        q.scope.hash(&mut h);
        h.finish()
    }
}

/// One view's values by cluster name (foldhash: a request of 2,000 names
/// hashes each, for each of 1,000 proxies).
type ViewEntry<V> = (EndpointView, foldhash::HashMap<String, V>);

/// Assignments by proxy view, then by cluster name: an EDS request of
/// 11,000 names looks each up by `&str` (no key built per name).
struct ByView<V> {
    /// By [`EndpointView::hash_of`]; views whose hashes collide share a bucket.
    views: Mutex<HashMap<u64, Vec<ViewEntry<V>>>>,
}

impl<V> Default for ByView<V> {
    fn default() -> Self {
        Self {
            views: Mutex::default(),
        }
    }
}

impl<V> fmt::Debug for ByView<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByView")
            .field("views", &lock(&self.views).len())
            .finish()
    }
}

impl<V: Clone> ByView<V> {
    /// Looks `name` up for `proxy`'s view, or makes and inserts it (outside
    /// the lock, as [`get_or_make`]).
    fn get_or_make(&self, name: &str, q: EndpointQuery<'_>, make: impl FnOnce() -> V) -> V {
        let hash = EndpointView::hash_of(q);
        {
            let views = lock(&self.views);
            let hit = views
                .get(&hash)
                .and_then(|bucket| bucket.iter().find(|(v, _)| v.is_of(q)))
                .and_then(|(_, names)| names.get(name));
            if let Some(hit) = hit {
                return hit.clone();
            }
        }
        let made = make();
        let mut views = lock(&self.views);
        let bucket = views.entry(hash).or_default();
        let at = match bucket.iter().position(|(v, _)| v.is_of(q)) {
            Some(at) => at,
            None => {
                bucket.push((EndpointView::of(q), Default::default()));
                bucket.len() - 1
            }
        };
        bucket[at].1.entry(name.to_string()).or_insert(made).clone()
    }

    /// [`get_or_make`](Self::get_or_make) for many names of one view: the
    /// view is hashed and found once and the lock taken once for the hits
    /// (an EDS request of 11,000 names), then once more for the misses,
    /// made outside the lock. Values in `names` order.
    fn get_or_make_many<'n>(
        &self,
        names: impl IntoIterator<Item = &'n String>,
        q: EndpointQuery<'_>,
        mut make: impl FnMut(&str) -> V,
    ) -> Vec<V> {
        let hash = EndpointView::hash_of(q);
        let names: Vec<&String> = names.into_iter().collect();
        let mut found: Vec<Option<V>> = {
            let views = lock(&self.views);
            let entry = views
                .get(&hash)
                .and_then(|bucket| bucket.iter().find(|(v, _)| v.is_of(q)));
            match entry {
                Some((_, by_name)) => names.iter().map(|n| by_name.get(*n).cloned()).collect(),
                None => vec![None; names.len()],
            }
        };
        let missing: Vec<(usize, V)> = found
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_none())
            .map(|(i, _)| (i, make(names[i])))
            .collect();
        if !missing.is_empty() {
            let mut views = lock(&self.views);
            let bucket = views.entry(hash).or_default();
            let at = match bucket.iter().position(|(v, _)| v.is_of(q)) {
                Some(at) => at,
                None => {
                    bucket.push((EndpointView::of(q), Default::default()));
                    bucket.len() - 1
                }
            };
            let by_name = &mut bucket[at].1;
            for (i, made) in missing {
                let kept = by_name.entry(names[i].clone()).or_insert(made).clone();
                found[i] = Some(kept);
            }
        }
        found.into_iter().flatten().collect()
    }
}

/// What a sidecar's outbound clusters, listeners and routes depend on:
/// its namespace and the Sidecar resource that scopes it (if any).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ViewKey {
    pub(crate) namespace: String,
    /// `<namespace>/<name>` of the Sidecar that applies.
    pub(crate) sidecar: Option<Arc<str>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RouteKey {
    name: String,
    view: ViewKey,
    labels: Labels,
}

impl RouteKey {
    fn new(name: &str, view: &ViewKey, proxy: &ProxyInfo, by_labels: bool) -> Self {
        Self {
            name: name.to_string(),
            view: view.clone(),
            labels: by_labels.then(|| proxy.labels.clone()),
        }
    }
}

/// Shared generation results for one push context.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    clusters: Mutex<HashMap<ViewKey, Arc<Vec<XdsResource>>>>,
    endpoints: ByView<Option<XdsResource>>,
    routes: Mutex<HashMap<RouteKey, XdsResource>>,
    /// A sidecar's clusters but its inbound ones, by view.
    shared_clusters: Mutex<HashMap<ViewKey, Shared>>,
    /// A sidecar's listeners but `virtualInbound`, by view.
    shared_listeners: Mutex<HashMap<ViewKey, Shared>>,
    shared_endpoints: ByView<Option<Arc<SharedResource>>>,
    shared_routes: Mutex<HashMap<RouteKey, Arc<SharedResource>>>,
    /// The registry's services by namespace, built on first use.
    services_by_namespace: OnceLock<HashMap<String, Vec<Arc<Service>>>>,
    /// Local endpoints' ports by workload and by address, per namespace,
    /// built on first use.
    workloads: Mutex<HashMap<String, Arc<WorkloadIndex>>>,
}

impl Cache {
    /// Frees the cache on a background thread.
    ///
    /// After a full push a push context's cache holds every proxy view's
    /// resources (at 10k services, hundreds of thousands of allocations).
    /// Whichever stream drops the context last would free them all in the
    /// middle of its next push: the first change after a full push took
    /// twice as long as the others. One thread, started on first use,
    /// frees retired caches in order; if it cannot be started the cache is
    /// freed here.
    pub(crate) fn retire(self) {
        static RETIRED: OnceLock<Option<Mutex<mpsc::Sender<Cache>>>> = OnceLock::new();
        let sender = RETIRED.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Cache>();
            std::thread::Builder::new()
                .name("retired-caches".into())
                .spawn(move || rx.into_iter().for_each(drop))
                .ok()
                .map(|_| Mutex::new(tx))
        });
        if let Some(sender) = sender
            && let Err(mpsc::SendError(cache)) = lock(sender).send(self)
        {
            drop(cache);
        }
    }
}

/// One port of a local endpoint: (order among all, target port, service
/// port, protocol). The order is the registry's (services by hostname, then
/// endpoints, then ports), so a target port served by two services keeps
/// the first one's service port and protocol, as a scan would.
type WorkloadPort = (u32, u16, u16, Protocol);

/// The ports of one namespace's endpoints in this cluster by workload and
/// by address: how a proxy finds its own workload's ports.
#[derive(Debug, Default)]
struct WorkloadIndex {
    by_workload: HashMap<String, Vec<WorkloadPort>>,
    by_address: HashMap<String, Vec<WorkloadPort>>,
}

impl WorkloadIndex {
    fn new(services: &[Arc<Service>], local_cluster: &str) -> Self {
        let mut index = Self::default();
        let mut order = 0u32;
        for svc in services {
            for e in svc.endpoints.iter().filter(|e| e.cluster == local_cluster) {
                for p in &svc.ports {
                    let entry = (order, e.port_for(p), p.port, p.protocol);
                    order += 1;
                    if !e.workload.is_empty() {
                        index
                            .by_workload
                            .entry(e.workload.clone())
                            .or_default()
                            .push(entry);
                    }
                    index
                        .by_address
                        .entry(e.address.clone())
                        .or_default()
                        .push(entry);
                }
            }
        }
        index
    }

    /// (service port, target port, protocol) of the ports the proxy's own
    /// workload serves (matched by workload name or by IP), one per target
    /// port, by target port.
    fn ports(&self, proxy: &ProxyInfo) -> Vec<(u16, u16, Protocol)> {
        let by_workload = (!proxy.workload.is_empty())
            .then(|| self.by_workload.get(&proxy.workload))
            .flatten();
        let by_address = proxy.ip.and_then(|ip| self.by_address.get(&ip.to_string()));
        let mut mine: Vec<&WorkloadPort> = by_workload
            .into_iter()
            .chain(by_address)
            .flatten()
            .collect();
        mine.sort_unstable_by_key(|(order, ..)| *order);
        let mut seen = BTreeMap::new();
        for &(_, target, port, protocol) in mine {
            seen.entry(target).or_insert((port, protocol));
        }
        seen.into_iter()
            .map(|(target, (port, protocol))| (port, target, protocol))
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Looks `key` up in `map`, or makes and inserts it (outside the lock:
/// generation is slow and other streams may use the map meanwhile).
fn get_or_make<K, V>(map: &Mutex<HashMap<K, V>>, key: K, make: impl FnOnce() -> V) -> V
where
    K: std::hash::Hash + Eq,
    V: Clone,
{
    if let Some(hit) = lock(map).get(&key) {
        return hit.clone();
    }
    let made = make();
    lock(map).entry(key).or_insert(made).clone()
}

impl Cache {
    /// A cache for the next push context after an endpoints-only change:
    /// clusters, listeners and routes do not depend on endpoints (the
    /// per-proxy inbound parts are not cached), so they are kept.
    pub(crate) fn carry_over(&self) -> Cache {
        Cache {
            clusters: Mutex::new(lock(&self.clusters).clone()),
            routes: Mutex::new(lock(&self.routes).clone()),
            shared_clusters: Mutex::new(lock(&self.shared_clusters).clone()),
            shared_listeners: Mutex::new(lock(&self.shared_listeners).clone()),
            shared_routes: Mutex::new(lock(&self.shared_routes).clone()),
            ..Cache::default()
        }
    }

    /// The ports `proxy`'s own workload serves, from an index of its
    /// namespace's local endpoints built on first use (a proxy's inbound
    /// clusters and listeners are generated per proxy: scanning the
    /// namespace's services each time cost 1,000 services × 5 endpoints
    /// of string compares per proxy; indexing all namespaces at once cost
    /// the first endpoint change 60 ms at 10k services). `local_cluster` is
    /// this control plane's cluster; `all` lists every service (called
    /// once per cache).
    pub(crate) fn workload_ports<'a, I>(
        &self,
        proxy: &ProxyInfo,
        local_cluster: &str,
        all: impl FnOnce() -> I,
    ) -> Vec<(u16, u16, Protocol)>
    where
        I: IntoIterator<Item = &'a Arc<Service>>,
    {
        let ns = proxy.namespace.as_str();
        let found = lock(&self.workloads).get(ns).cloned();
        let index = found.unwrap_or_else(|| {
            let services = self
                .services_by_namespace
                .get_or_init(|| {
                    let mut by_namespace: HashMap<String, Vec<Arc<Service>>> = HashMap::new();
                    for svc in all() {
                        by_namespace
                            .entry(svc.namespace.clone())
                            .or_default()
                            .push(svc.clone());
                    }
                    by_namespace
                })
                .get(ns)
                .map_or(&[][..], Vec::as_slice);
            let made = Arc::new(WorkloadIndex::new(services, local_cluster));
            lock(&self.workloads)
                .entry(ns.to_string())
                .or_insert(made)
                .clone()
        });
        index.ports(proxy)
    }

    /// A sidecar's shared clusters for `view`.
    pub(crate) fn shared_clusters(&self, view: &ViewKey, make: impl FnOnce() -> Shared) -> Shared {
        get_or_make(&self.shared_clusters, view.clone(), make)
    }

    /// A sidecar's shared listeners for `view`.
    pub(crate) fn shared_listeners(&self, view: &ViewKey, make: impl FnOnce() -> Shared) -> Shared {
        get_or_make(&self.shared_listeners, view.clone(), make)
    }

    /// The assignments of `names` as the query's proxy sees them, shared,
    /// in the order of `names`; names without one (`make` gives `None`,
    /// also for a name outside the proxy's scope) are left out.
    pub(crate) fn shared_endpoints_many<'n>(
        &self,
        names: impl IntoIterator<Item = &'n String>,
        q: EndpointQuery<'_>,
        mut make: impl FnMut(&str) -> Option<XdsResource>,
    ) -> Vec<Arc<SharedResource>> {
        self.shared_endpoints
            .get_or_make_many(names, q, |name| make(name).map(SharedResource::new))
            .into_iter()
            .flatten()
            .collect()
    }

    /// One route configuration as `proxy` sees it, shared.
    pub(crate) fn shared_route(
        &self,
        name: &str,
        view: &ViewKey,
        proxy: &ProxyInfo,
        by_labels: bool,
        make: impl FnOnce() -> XdsResource,
    ) -> Arc<SharedResource> {
        get_or_make(
            &self.shared_routes,
            RouteKey::new(name, view, proxy, by_labels),
            || SharedResource::new(make()),
        )
    }

    /// Drops the plain outbound clusters of `view` (kept shared instead).
    pub(crate) fn forget_outbound_clusters(&self, view: &ViewKey) {
        lock(&self.clusters).remove(view);
    }

    /// Outbound clusters for `view`, generated on first use.
    pub(crate) fn outbound_clusters(
        &self,
        view: &ViewKey,
        make: impl FnOnce() -> Vec<XdsResource>,
    ) -> Arc<Vec<XdsResource>> {
        get_or_make(&self.clusters, view.clone(), || Arc::new(make()))
    }

    /// One cluster's assignment as the query's proxy sees it.
    pub(crate) fn endpoints(
        &self,
        name: &str,
        q: EndpointQuery<'_>,
        make: impl FnOnce() -> Option<XdsResource>,
    ) -> Option<XdsResource> {
        self.endpoints.get_or_make(name, q, make)
    }

    /// One route configuration as `proxy` sees it.
    pub(crate) fn route(
        &self,
        name: &str,
        view: &ViewKey,
        proxy: &ProxyInfo,
        by_labels: bool,
        make: impl FnOnce() -> XdsResource,
    ) -> XdsResource {
        get_or_make(
            &self.routes,
            RouteKey::new(name, view, proxy, by_labels),
            make,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::Cache;
    use crate::registry::{Endpoint, Protocol, Service};
    use crate::xds::{ProxyInfo, ProxyRole};

    fn endpoint(address: &str, workload: &str, cluster: &str, ports: &[(&str, u16)]) -> Endpoint {
        Endpoint {
            ports: ports.iter().map(|(n, p)| (n.to_string(), *p)).collect(),
            workload: workload.into(),
            ..Endpoint::for_test(address, cluster)
        }
    }

    fn service(
        host: &str,
        ns: &str,
        ports: &[(u16, Protocol)],
        endpoints: Vec<Endpoint>,
    ) -> Arc<Service> {
        Arc::new(Service {
            endpoints,
            ..Service::for_test(host, ns, ports)
        })
    }

    fn proxy(ns: &str, workload: &str, ip: Option<&str>) -> ProxyInfo {
        ProxyInfo {
            id: format!(
                "sidecar~{}~{workload}.{ns}~{ns}.svc.cluster.local",
                ip.unwrap_or("0.0.0.0")
            ),
            role: ProxyRole::Sidecar,
            ip: ip.map(|ip| ip.parse().unwrap()),
            workload: workload.into(),
            namespace: ns.into(),
            cluster: "east".into(),
            network: String::new(),
            service_account: "default".into(),
            labels: BTreeMap::new(),
            locality: Default::default(),
        }
    }

    /// A proxy's own ports: found by workload name or by IP, in its own
    /// namespace and cluster only; a target port two services share keeps
    /// the first service's port and protocol (registry order).
    #[test]
    fn workload_ports_match_name_or_address_in_namespace_and_cluster() {
        use Protocol::{Grpc, Http, Tcp};
        let services = [
            // Registry order: by hostname.
            service(
                "a.shop.svc.cluster.local",
                "shop",
                &[(80, Http), (9000, Grpc)],
                vec![endpoint("10.0.0.1", "web-1", "east", &[("p80", 8080)])],
            ),
            service(
                "b.shop.svc.cluster.local",
                "shop",
                // Same target 8080 as a's port 80: a's wins.
                &[(81, Tcp)],
                vec![
                    endpoint("10.0.0.1", "web-1", "east", &[("p81", 8080)]),
                    // Matched by address only (no workload name).
                    endpoint("10.0.0.2", "", "east", &[("p81", 7000)]),
                ],
            ),
            service(
                "c.shop.svc.cluster.local",
                "shop",
                &[(90, Http)],
                // Another cluster's endpoint with the same workload name.
                vec![endpoint("10.9.0.1", "web-1", "west", &[("p90", 9090)])],
            ),
            service(
                "d.other.svc.cluster.local",
                "other",
                &[(70, Http)],
                vec![endpoint("10.0.0.1", "web-1", "east", &[])],
            ),
        ];
        let cache = Cache::default();
        let ports = |p: &ProxyInfo| cache.workload_ports(p, "east", || services.iter());

        assert_eq!(
            ports(&proxy("shop", "web-1", None)),
            vec![(80, 8080, Http), (9000, 9000, Grpc)]
        );
        // By IP: the address matches both a's and b's endpoints.
        assert_eq!(
            ports(&proxy("shop", "", Some("10.0.0.1"))),
            vec![(80, 8080, Http), (9000, 9000, Grpc)]
        );
        assert_eq!(
            ports(&proxy("shop", "x", Some("10.0.0.2"))),
            vec![(81, 7000, Tcp)]
        );
        // Name and IP both match, different endpoints: the union, by target.
        assert_eq!(
            ports(&proxy("shop", "web-1", Some("10.0.0.2"))),
            vec![(81, 7000, Tcp), (80, 8080, Http), (9000, 9000, Grpc)]
        );
        assert_eq!(ports(&proxy("other", "web-1", None)), vec![(70, 70, Http)]);
        assert_eq!(ports(&proxy("shop", "nobody", Some("10.0.0.9"))), vec![]);
        assert_eq!(ports(&proxy("empty", "web-1", None)), vec![]);
    }
}
