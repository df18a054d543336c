//! Per-push-context caches: most proxies in a namespace (and locality) get
//! identical clusters, endpoints and routes, so each distinct answer is
//! generated once per config version and shared.
//!
//! Keys hold exactly the proxy inputs a generator reads: namespace for
//! clusters; role, namespace, network, cluster and locality for endpoints
//! (plus labels when some DestinationRule uses `failoverPriority`);
//! namespace for routes (plus labels when some VirtualService matches on
//! `sourceLabels`). A new push context starts with empty caches.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use crate::xds::{ProxyInfo, ProxyRole, XdsResource};

type Labels = Option<BTreeMap<String, String>>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EndpointKey {
    name: String,
    role: ProxyRole,
    namespace: String,
    network: String,
    cluster: String,
    locality: String,
    labels: Labels,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RouteKey {
    name: String,
    namespace: String,
    labels: Labels,
}

/// Shared generation results for one push context.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    clusters: Mutex<HashMap<String, Arc<Vec<XdsResource>>>>,
    endpoints: Mutex<HashMap<EndpointKey, Option<XdsResource>>>,
    routes: Mutex<HashMap<RouteKey, XdsResource>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Cache {
    /// Outbound clusters for `namespace`, generated on first use.
    pub(crate) fn outbound_clusters(
        &self,
        namespace: &str,
        make: impl FnOnce() -> Vec<XdsResource>,
    ) -> Arc<Vec<XdsResource>> {
        if let Some(hit) = lock(&self.clusters).get(namespace) {
            return hit.clone();
        }
        let made = Arc::new(make());
        lock(&self.clusters)
            .entry(namespace.to_string())
            .or_insert(made)
            .clone()
    }

    /// One cluster's assignment as `proxy` sees it.
    pub(crate) fn endpoints(
        &self,
        name: &str,
        proxy: &ProxyInfo,
        by_labels: bool,
        make: impl FnOnce() -> Option<XdsResource>,
    ) -> Option<XdsResource> {
        let key = EndpointKey {
            name: name.to_string(),
            role: proxy.role,
            namespace: proxy.namespace.clone(),
            network: proxy.network.clone(),
            cluster: proxy.cluster.clone(),
            locality: proxy.locality.to_string(),
            labels: by_labels.then(|| proxy.labels.clone()),
        };
        if let Some(hit) = lock(&self.endpoints).get(&key) {
            return hit.clone();
        }
        let made = make();
        lock(&self.endpoints).entry(key).or_insert(made).clone()
    }

    /// One route configuration as `proxy` sees it.
    pub(crate) fn route(
        &self,
        name: &str,
        proxy: &ProxyInfo,
        by_labels: bool,
        make: impl FnOnce() -> XdsResource,
    ) -> XdsResource {
        let key = RouteKey {
            name: name.to_string(),
            namespace: proxy.namespace.clone(),
            labels: by_labels.then(|| proxy.labels.clone()),
        };
        if let Some(hit) = lock(&self.routes).get(&key) {
            return hit.clone();
        }
        let made = make();
        lock(&self.routes).entry(key).or_insert(made).clone()
    }
}
