//! The export side: this cluster's exported catalog, derived from the same
//! store the control plane reads, through the control plane's own registry
//! builder (so what peers see is exactly what the local gateway routes).
//!
//! Only services with a `ServiceExport` cross; only this cluster's own
//! endpoints count (never what it imported); endpoints are summarised per
//! (locality, allow-listed labels, service account) with healthy and total
//! counts — addresses never leave the cluster.

use std::collections::{BTreeMap, BTreeSet};

use isthmus_config::Snapshot;
use isthmus_control_plane::registry::{
    CLUSTER_LABEL, ClusterContext, NETWORK_LABEL, Protocol, Registry,
};
use isthmus_proto::federation as proto;

/// Endpoint labels that may cross to peers by default: what DestinationRule subsets
/// usually select on.
pub const DEFAULT_ALLOWED_LABELS: &[&str] = &["app", "version"];

/// The labels allowed to cross a cluster boundary, on export and again on import
/// (a peer is not trusted to have filtered). Topology labels are never taken from a
/// peer: the importer writes them from its own MeshFederation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelAllowList(BTreeSet<String>);

impl Default for LabelAllowList {
    fn default() -> Self {
        Self::new(DEFAULT_ALLOWED_LABELS.iter().copied())
    }
}

impl LabelAllowList {
    /// An allow-list of exactly these keys (topology labels are dropped regardless).
    pub fn new<S: Into<String>>(keys: impl IntoIterator<Item = S>) -> Self {
        Self(keys.into_iter().map(Into::into).collect())
    }

    /// Whether `key` may cross.
    pub fn allows(&self, key: &str) -> bool {
        key != CLUSTER_LABEL && key != NETWORK_LABEL && self.0.contains(key)
    }

    /// The allowed subset of `labels`.
    pub fn filter<'a>(
        &self,
        labels: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> BTreeMap<String, String> {
        labels
            .into_iter()
            .filter(|(k, _)| self.allows(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Istio protocol name of a registry protocol.
pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "HTTP",
        Protocol::Http2 => "HTTP2",
        Protocol::Grpc => "GRPC",
        Protocol::Https => "HTTPS",
        Protocol::Tls => "TLS",
        Protocol::Tcp => "TCP",
    }
}

/// The exported services of the cluster described by `ctx`, ordered by namespace and name.
pub fn exported_services(
    snapshot: &Snapshot,
    ctx: &ClusterContext,
    labels: &LabelAllowList,
) -> Vec<proto::ExportedService> {
    let registry = Registry::build(snapshot, ctx);
    let mut out = Vec::new();
    for svc in registry.services().filter(|s| s.exported) {
        let Some(name) = &svc.name else { continue };
        type GroupKey = (String, BTreeMap<String, String>, String);
        let mut groups: BTreeMap<GroupKey, (u32, u32)> = BTreeMap::new();
        for e in svc.endpoints.iter().filter(|e| e.cluster == ctx.cluster) {
            let key = (
                e.locality.to_string(),
                labels.filter(&e.labels),
                e.service_account.clone(),
            );
            let counts = groups.entry(key).or_default();
            counts.0 += u32::from(e.healthy);
            counts.1 += 1;
        }
        out.push(proto::ExportedService {
            name: name.name.clone(),
            namespace: name.namespace.clone(),
            ports: svc
                .ports
                .iter()
                .map(|p| proto::Port {
                    name: p.name.clone(),
                    number: u32::from(p.port),
                    protocol: protocol_name(p.protocol).to_owned(),
                })
                .collect(),
            groups: groups
                .into_iter()
                .map(|((locality, labels, service_account), (healthy, total))| {
                    proto::EndpointGroup {
                        locality,
                        labels: labels.into_iter().collect(),
                        service_account,
                        healthy,
                        total,
                    }
                })
                .collect(),
        });
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

#[cfg(test)]
mod tests;
