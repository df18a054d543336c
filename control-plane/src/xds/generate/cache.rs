//! Per-push-context caches: most proxies in a namespace (and locality) get
//! identical clusters, endpoints and routes, so each distinct answer is
//! generated once per config version and shared.
//!
//! Keys hold exactly the proxy inputs a generator reads: namespace and
//! the Sidecar that scopes the proxy ([`ViewKey`]) for clusters and listeners; role, namespace, network, cluster and locality for endpoints
//! (plus labels when some DestinationRule uses `failoverPriority`);
//! the view for routes (plus labels when some VirtualService matches on
//! `sourceLabels`). A new push context starts with empty caches, except
//! that one reached by an endpoints-only change keeps the previous one's
//! clusters, listeners and routes ([`Cache::carry_over`]).
//!
//! The `shared_*` maps serve the ADS server: the same results as
//! [`SharedResource`]s, so every stream sends (and remembers) the same
//! `Arc`s instead of its own copy.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use isthmus_api::naming::Locality;

use crate::registry::Service;
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
}

impl EndpointView {
    fn of(proxy: &ProxyInfo, by_labels: bool) -> Self {
        Self {
            role: proxy.role,
            namespace: proxy.namespace.clone(),
            network: proxy.network.clone(),
            cluster: proxy.cluster.clone(),
            locality: proxy.locality.clone(),
            labels: by_labels.then(|| proxy.labels.clone()),
        }
    }

    /// Whether `proxy` has this view (compared in place, nothing copied).
    fn is_of(&self, proxy: &ProxyInfo, by_labels: bool) -> bool {
        self.role == proxy.role
            && self.namespace == proxy.namespace
            && self.network == proxy.network
            && self.cluster == proxy.cluster
            && self.locality == proxy.locality
            && match &self.labels {
                Some(labels) => by_labels && *labels == proxy.labels,
                None => !by_labels,
            }
    }

    /// The hash of `of(proxy, by_labels)`, without building it.
    fn hash_of(proxy: &ProxyInfo, by_labels: bool) -> u64 {
        let mut h = DefaultHasher::new();
        proxy.role.hash(&mut h);
        proxy.namespace.hash(&mut h);
        proxy.network.hash(&mut h);
        proxy.cluster.hash(&mut h);
        proxy.locality.hash(&mut h);
        by_labels.then_some(&proxy.labels).hash(&mut h);
        h.finish()
    }
}

/// One view's values by cluster name.
type ViewEntry<V> = (EndpointView, HashMap<String, V>);

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
    fn get_or_make(
        &self,
        name: &str,
        proxy: &ProxyInfo,
        by_labels: bool,
        make: impl FnOnce() -> V,
    ) -> V {
        let hash = EndpointView::hash_of(proxy, by_labels);
        {
            let views = lock(&self.views);
            let hit = views
                .get(&hash)
                .and_then(|bucket| bucket.iter().find(|(v, _)| v.is_of(proxy, by_labels)))
                .and_then(|(_, names)| names.get(name));
            if let Some(hit) = hit {
                return hit.clone();
            }
        }
        let made = make();
        let mut views = lock(&self.views);
        let bucket = views.entry(hash).or_default();
        let at = match bucket.iter().position(|(v, _)| v.is_of(proxy, by_labels)) {
            Some(at) => at,
            None => {
                bucket.push((EndpointView::of(proxy, by_labels), HashMap::new()));
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
        proxy: &ProxyInfo,
        by_labels: bool,
        mut make: impl FnMut(&str) -> V,
    ) -> Vec<V> {
        let hash = EndpointView::hash_of(proxy, by_labels);
        let names: Vec<&String> = names.into_iter().collect();
        let mut found: Vec<Option<V>> = {
            let views = lock(&self.views);
            let entry = views
                .get(&hash)
                .and_then(|bucket| bucket.iter().find(|(v, _)| v.is_of(proxy, by_labels)));
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
            let at = match bucket.iter().position(|(v, _)| v.is_of(proxy, by_labels)) {
                Some(at) => at,
                None => {
                    bucket.push((EndpointView::of(proxy, by_labels), HashMap::new()));
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
    /// The registry's services by namespace, built on first use: a proxy's
    /// own ports are looked up among its namespace's services (twice per
    /// proxy, 1,000 of 10,000 services) instead of all of them.
    services_by_namespace: OnceLock<HashMap<String, Vec<Arc<Service>>>>,
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

    /// The services of `namespace`; `all` lists every service (called once
    /// per cache).
    pub(crate) fn services_in<'a, I>(
        &self,
        namespace: &str,
        all: impl FnOnce() -> I,
    ) -> &[Arc<Service>]
    where
        I: IntoIterator<Item = &'a Arc<Service>>,
    {
        self.services_by_namespace
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
            .get(namespace)
            .map_or(&[], Vec::as_slice)
    }

    /// A sidecar's shared clusters for `view`.
    pub(crate) fn shared_clusters(&self, view: &ViewKey, make: impl FnOnce() -> Shared) -> Shared {
        get_or_make(&self.shared_clusters, view.clone(), make)
    }

    /// A sidecar's shared listeners for `view`.
    pub(crate) fn shared_listeners(&self, view: &ViewKey, make: impl FnOnce() -> Shared) -> Shared {
        get_or_make(&self.shared_listeners, view.clone(), make)
    }

    /// The assignments of `names` as `proxy` sees them, shared, in the
    /// order of `names`; names without one are left out.
    pub(crate) fn shared_endpoints_many<'n>(
        &self,
        names: impl IntoIterator<Item = &'n String>,
        proxy: &ProxyInfo,
        by_labels: bool,
        mut make: impl FnMut(&str) -> Option<XdsResource>,
    ) -> Vec<Arc<SharedResource>> {
        self.shared_endpoints
            .get_or_make_many(names, proxy, by_labels, |name| {
                make(name).map(SharedResource::new)
            })
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

    /// One cluster's assignment as `proxy` sees it.
    pub(crate) fn endpoints(
        &self,
        name: &str,
        proxy: &ProxyInfo,
        by_labels: bool,
        make: impl FnOnce() -> Option<XdsResource>,
    ) -> Option<XdsResource> {
        self.endpoints.get_or_make(name, proxy, by_labels, make)
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
