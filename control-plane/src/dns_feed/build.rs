//! Registry → `isthmus.dns.v1.Snapshot`.
//!
//! Every service whose host is a service name — `<svc>.<ns>.global`,
//! `<svc>.<ns>.svc.clusterset.local` (ServiceEntries, e.g. imported by the
//! federation controller) or `<svc>.<ns>.svc.<domain>` (Kubernetes Services,
//! ServiceEntries and WorkloadEntries of this cluster) — becomes one global
//! service `<svc>.<ns>`. Endpoints of all its hosts are merged (deduplicated
//! by cluster and address) and grouped by their cluster, which for imported
//! entries comes from the `topology.istio.io/cluster` label: so remote
//! clusters' gateway addresses and health flow through unchanged.

use std::collections::BTreeMap;
use std::net::IpAddr;

use isthmus_api::naming::{HostKind, ServiceName};
use isthmus_proto::dns as proto;

use super::vip::{self, VipRange};
use crate::registry::{Protocol, Registry};

#[derive(Default)]
struct Group {
    ports: Vec<proto::Port>,
    /// cluster → (network, address → endpoint)
    clusters: BTreeMap<String, (String, BTreeMap<String, proto::Endpoint>)>,
    exported: bool,
}

/// Builds the feed message (without VIP changes between calls for the same names).
pub fn snapshot(
    registry: &Registry,
    cluster: &str,
    range: &VipRange,
    version: u64,
) -> proto::Snapshot {
    let mut groups: BTreeMap<ServiceName, Group> = BTreeMap::new();
    for svc in registry.services() {
        let Some((name, _)) = ServiceName::from_host(&svc.hostname) else {
            continue;
        };
        let g = groups.entry(name).or_default();
        g.exported |= svc.exported;
        for p in &svc.ports {
            if !g.ports.iter().any(|q| q.number == u32::from(p.port)) {
                g.ports.push(proto::Port {
                    name: p.name.clone(),
                    number: u32::from(p.port),
                    protocol: protocol_name(p.protocol).into(),
                });
            }
        }
        for e in &svc.endpoints {
            // Endpoints known only by hostname cannot be A/AAAA answers.
            if e.address.parse::<IpAddr>().is_err() {
                continue;
            }
            let (_, eps) = g
                .clusters
                .entry(e.cluster.clone())
                .or_insert_with(|| (e.network.clone(), BTreeMap::new()));
            let ep = eps
                .entry(e.address.clone())
                .or_insert_with(|| proto::Endpoint {
                    address: e.address.clone(),
                    locality: e.locality.to_string(),
                    healthy: false,
                    weight: 0,
                });
            ep.healthy |= e.healthy;
            ep.weight = ep.weight.max(if e.healthy { e.weight } else { 0 });
        }
    }
    let mut vips = global_vips(registry, range);
    let services = groups
        .into_iter()
        .map(|(name, mut g)| {
            let vips = vips.remove(&name).unwrap_or_default();
            g.ports.sort_by_key(|p| p.number);
            proto::GlobalService {
                name: name.name,
                namespace: name.namespace,
                vips: vips.iter().map(ToString::to_string).collect(),
                ports: g.ports,
                clusters: g
                    .clusters
                    .into_iter()
                    .map(|(cluster, (network, eps))| {
                        let endpoints: Vec<proto::Endpoint> = eps.into_values().collect();
                        proto::ClusterEndpoints {
                            cluster,
                            network,
                            healthy: endpoints.iter().filter(|e| e.healthy).count() as u32,
                            total: endpoints.len() as u32,
                            endpoints,
                        }
                    })
                    .collect(),
                exported: g.exported,
            }
        })
        .collect();
    proto::Snapshot {
        version,
        cluster: cluster.to_string(),
        services,
    }
}

/// The federation-wide VIPs of every global service (`<svc>.<ns>`) the
/// registry knows under any of its names: addresses its `.global` or
/// clusterset hosts declare are kept, the rest are allocated from `range`
/// by name ([`vip`]). The DNS feed answers them, and sidecars listen on them
/// for the service's TCP ports, so both always agree.
pub fn global_vips(registry: &Registry, range: &VipRange) -> BTreeMap<ServiceName, Vec<IpAddr>> {
    let mut declared: BTreeMap<ServiceName, Vec<IpAddr>> = BTreeMap::new();
    for svc in registry.services() {
        let Some((name, kind)) = ServiceName::from_host(&svc.hostname) else {
            continue;
        };
        let d = declared.entry(name).or_default();
        // A cluster IP is this cluster's own; only cluster-set hosts declare federation VIPs.
        if kind != HostKind::ClusterLocal {
            for a in &svc.addresses {
                if !d.contains(a) {
                    d.push(*a);
                }
            }
        }
    }
    let names: Vec<(String, Vec<IpAddr>)> = declared
        .iter()
        .map(|(n, d)| (n.global_host(), d.clone()))
        .collect();
    declared
        .into_keys()
        .zip(vip::allocate(range, &names))
        .collect()
}

/// For each global service, the registry host whose TCP ports get listeners
/// on its VIPs — the `.global` host if there is one (imports merge the local
/// endpoints into it), else the clusterset host, else the local service —
/// with those VIPs.
pub fn vip_listener_hosts(registry: &Registry, range: &VipRange) -> BTreeMap<String, Vec<IpAddr>> {
    let vips = global_vips(registry, range);
    let mut target: BTreeMap<ServiceName, (u8, &str)> = BTreeMap::new();
    for svc in registry.services() {
        let Some((name, kind)) = ServiceName::from_host(&svc.hostname) else {
            continue;
        };
        let rank = match kind {
            HostKind::Global => 0,
            HostKind::ClusterSet => 1,
            HostKind::ClusterLocal => 2,
        };
        let t = target.entry(name).or_insert((rank, &svc.hostname));
        if rank < t.0 {
            *t = (rank, &svc.hostname);
        }
    }
    target
        .into_iter()
        .filter_map(|(name, (_, host))| Some((host.to_string(), vips.get(&name)?.clone())))
        .collect()
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "HTTP",
        Protocol::Http2 => "HTTP2",
        Protocol::Grpc => "GRPC",
        Protocol::Https => "HTTPS",
        Protocol::Tls => "TLS",
        Protocol::Tcp => "TCP",
    }
}
