//! Sidecar config scoping (Istio's `Sidecar` resource): which Sidecar
//! applies to a proxy, and which services it imports.
//!
//! Selection is Istio's: in the workload's namespace, a Sidecar whose
//! `workloadSelector` matches the workload's labels; else the one of that
//! namespace without a selector; else the one without a selector in the
//! root namespace. Several at one level: the first by name wins (Istio
//! takes the oldest; creation times exist only on Kubernetes) and a
//! push-context warning names both. No Sidecar: every visible service.
//!
//! A service port is imported when the egress listener for that port (the
//! one naming it, else the one without a port) has a host entry matching
//! the service's namespace and hostname. The namespace of a multicluster
//! name (`<svc>.<ns>.global`, `<svc>.<ns>.svc.clusterset.local`) is the one
//! in the name; any other service's is the namespace of the resource it
//! came from (ServiceEntries: where they live, whatever their `exportTo`).

use std::collections::BTreeMap;
use std::sync::Arc;

use isthmus_api::Resource;
use isthmus_api::networking::{EgressHost, Sidecar};

use crate::registry::{Service, ServicePort};
use crate::xds::{ProxyInfo, ProxyRole};

/// One Sidecar, ready to answer "is this service port imported?".
#[derive(Debug, PartialEq, Eq)]
pub struct SidecarScope {
    /// `<namespace>/<name>`.
    pub name: Arc<str>,
    selector: Option<BTreeMap<String, String>>,
    /// Egress listeners naming a port, by port.
    by_port: BTreeMap<u16, Listener>,
    /// The egress listener without a port.
    other_ports: Option<Listener>,
}

#[derive(Debug, PartialEq, Eq)]
struct Listener {
    /// `Some(true)`: only HTTP-routed service ports; `Some(false)`: only others.
    http: Option<bool>,
    hosts: Vec<EgressHost>,
}

impl SidecarScope {
    /// Compiles a (validated) Sidecar.
    pub fn new(sc: &Sidecar) -> SidecarScope {
        let namespace = sc.metadata.namespace.as_deref().unwrap_or_default();
        let name = sc.metadata.name.as_deref().unwrap_or_default();
        let mut by_port = BTreeMap::new();
        let mut other_ports = None;
        let listener = |hosts: &[String], http: Option<bool>| Listener {
            http,
            hosts: hosts
                .iter()
                .filter_map(|h| EgressHost::parse(h, namespace))
                .collect(),
        };
        for e in &sc.spec.egress {
            match &e.port {
                Some(p) => {
                    let http = p.protocol.as_deref().map(|proto| {
                        crate::registry::Protocol::from_name(proto).is_some_and(|p| p.is_http())
                    });
                    if let Ok(port) = u16::try_from(p.number) {
                        by_port
                            .entry(port)
                            .or_insert_with(|| listener(&e.hosts, http));
                    }
                }
                None => {
                    other_ports.get_or_insert_with(|| listener(&e.hosts, None));
                }
            }
        }
        if sc.spec.egress.is_empty() {
            // Istio's default egress: every namespace, every host.
            other_ports = Some(listener(&["*/*".to_string()], None));
        }
        SidecarScope {
            name: format!("{namespace}/{name}").into(),
            selector: sc.spec.workload_selector.as_ref().map(|s| s.labels.clone()),
            by_port,
            other_ports,
        }
    }

    /// Whether `svc` is imported on `port`.
    pub fn admits(&self, svc: &Service, port: &ServicePort) -> bool {
        let Some(l) = self.by_port.get(&port.port).or(self.other_ports.as_ref()) else {
            return false;
        };
        if l.http.is_some_and(|http| http != port.protocol.is_http()) {
            return false;
        }
        let ns = namespace_of(svc);
        l.hosts.iter().any(|h| h.matches(ns, &svc.hostname))
    }

    /// Whether `svc` is imported on any of its ports.
    pub fn admits_any(&self, svc: &Service) -> bool {
        svc.ports.iter().any(|p| self.admits(svc, p))
    }

    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }
}

/// The namespace a service is matched by (see the module docs).
pub fn namespace_of(svc: &Service) -> &str {
    let multicluster =
        svc.hostname.ends_with(".global") || svc.hostname.ends_with(".svc.clusterset.local");
    match &svc.name {
        Some(name) if multicluster => &name.namespace,
        _ => &svc.namespace,
    }
}

/// Every Sidecar of a push context, by namespace, each list sorted by name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sidecars {
    by_namespace: BTreeMap<String, Vec<Arc<SidecarScope>>>,
}

impl Sidecars {
    /// Indexes the Sidecars among `resources`; ties that selection will
    /// break by name are reported in `warnings`.
    pub fn build<'a>(
        resources: impl IntoIterator<Item = &'a Arc<Resource>>,
        root_namespace: &str,
        warnings: &mut Vec<String>,
    ) -> Sidecars {
        let mut by_namespace: BTreeMap<String, Vec<Arc<SidecarScope>>> = BTreeMap::new();
        for r in resources {
            if let Resource::Sidecar(sc) = &**r {
                let ns = sc.metadata.namespace.clone().unwrap_or_default();
                by_namespace
                    .entry(ns)
                    .or_default()
                    .push(Arc::new(SidecarScope::new(sc)));
            }
        }
        for (ns, list) in &mut by_namespace {
            list.sort_by(|a, b| a.name.cmp(&b.name));
            let defaults: Vec<&Arc<SidecarScope>> =
                list.iter().filter(|s| s.selector.is_none()).collect();
            if let [first, rest @ ..] = defaults.as_slice() {
                for other in rest {
                    warnings.push(format!(
                        "Sidecar {} and Sidecar {} both have no workloadSelector in namespace {ns}; \
                         {} (first by name) applies",
                        first.name, other.name, first.name
                    ));
                }
            }
            let selecting: Vec<&Arc<SidecarScope>> =
                list.iter().filter(|s| s.selector.is_some()).collect();
            for (i, a) in selecting.iter().enumerate() {
                for b in &selecting[i + 1..] {
                    if may_overlap(a, b) {
                        warnings.push(format!(
                            "Sidecar {} and Sidecar {} may select the same workloads; \
                             {} (first by name) applies to those",
                            a.name, b.name, a.name
                        ));
                    }
                }
            }
            if ns == root_namespace {
                for s in &selecting {
                    warnings.push(format!(
                        "Sidecar {}: in the root namespace a workloadSelector limits it to \
                         workloads of {root_namespace}; only Sidecars without one are mesh-wide",
                        s.name
                    ));
                }
            }
        }
        Sidecars { by_namespace }
    }

    /// The Sidecar that applies to `proxy` (sidecars only), if any.
    pub fn select(&self, proxy: &ProxyInfo, root_namespace: &str) -> Option<&Arc<SidecarScope>> {
        if proxy.role != ProxyRole::Sidecar {
            return None;
        }
        let default_of = |ns: &str| {
            self.by_namespace
                .get(ns)?
                .iter()
                .find(|s| s.selector.is_none())
        };
        self.by_namespace
            .get(&proxy.namespace)
            .and_then(|list| list.iter().find(|s| s.selects(&proxy.labels)))
            .or_else(|| default_of(&proxy.namespace))
            .or_else(|| default_of(root_namespace))
    }

    /// Whether there is no Sidecar at all.
    pub fn is_empty(&self) -> bool {
        self.by_namespace.is_empty()
    }
}

/// Whether some set of labels satisfies both selectors.
fn may_overlap(a: &SidecarScope, b: &SidecarScope) -> bool {
    let (Some(a), Some(b)) = (&a.selector, &b.selector) else {
        return false;
    };
    a.iter().all(|(k, v)| b.get(k).is_none_or(|w| w == v))
}

#[cfg(test)]
mod tests;
