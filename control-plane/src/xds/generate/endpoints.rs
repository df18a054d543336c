//! EDS: ClusterLoadAssignments with localities, priorities and health,
//! computed relative to the requesting proxy.
//!
//! - *Split horizon*: an endpoint in another network is replaced by that
//!   network's east-west gateways; the endpoints of one network in one
//!   locality are aggregated, and their weight (their count, or the weights
//!   they carry) is split evenly over one entry per gateway of the network
//!   (at least 1 each). The locality's total weight stays what the endpoints
//!   are worth whatever the number of gateways, and every gateway takes a
//!   share. A network without a known gateway address (a hostname not
//!   resolved yet) gets no entries.
//! - *Priorities*: locality proximity (same subzone, zone, region, then the
//!   `failover` target region, then the rest); with `failoverPriority`,
//!   label matches come first; with `distribute`, the localities it names
//!   share priority 0 by weight and everything else fails over after them
//!   (Isthmus allows `distribute` and `failover` together).
//! - Health is carried per endpoint; the gateway only gets local endpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality as EnvoyLocality};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
    lb_endpoint::HostIdentifier,
};
use isthmus_api::naming::{Locality, LocalityPattern, Proximity};
use isthmus_api::networking::LocalityLbSetting;

use super::clusters::socket_address;
use super::{EffectivePolicy, PushContext, parse_cluster_name, resource, u32_value};
use crate::registry::{
    CLUSTER_LABEL, Endpoint, NETWORK_LABEL, REGION_LABEL, Resolution, SUBZONE_LABEL, ZONE_LABEL,
};
use crate::xds::{ProxyInfo, ProxyRole, XdsResource};

/// Assignments for the clusters the proxy asked for (unknown names are skipped).
pub fn generate(pc: &PushContext, proxy: &ProxyInfo, names: &BTreeSet<String>) -> Vec<XdsResource> {
    let scope = pc.sidecar_for(proxy);
    let query = pc.endpoint_query(proxy, scope);
    names
        .iter()
        .filter_map(|name| {
            pc.cache.endpoints(name, query, || {
                pc.in_scope(scope.map(Arc::as_ref), name)
                    .then(|| assignment(pc, proxy, name))
                    .flatten()
                    .map(|cla| resource(name.clone(), cla))
            })
        })
        .collect()
}

/// The assignment for one `outbound|port|subset|host` cluster.
pub fn assignment(
    pc: &PushContext,
    proxy: &ProxyInfo,
    name: &str,
) -> Option<ClusterLoadAssignment> {
    let (port, subset, host) = parse_cluster_name(name)?;
    let svc = pc.registry.service(host)?;
    if svc.resolution != Resolution::Static {
        return None;
    }
    let port = svc.port(port)?;
    let dr = pc.destination_rule(&svc.hostname, &proxy.namespace, &svc.namespace);
    let selector = match subset {
        Some(s) => Some(&dr?.spec.subsets.iter().find(|x| x.name == s)?.labels),
        None => None,
    };
    let policy = EffectivePolicy::resolve(dr, port.port, subset);
    let setting = policy
        .load_balancer
        .and_then(|lb| lb.locality_lb_setting.as_ref());
    let local_only = proxy.role == ProxyRole::Gateway;
    let mut groups: BTreeMap<(u32, String), Group> = BTreeMap::new();
    let mut distribute_weights = BTreeMap::new();
    let dist = setting.and_then(|s| matching_distribute(s, &proxy.locality));
    for e in &svc.endpoints {
        if selector.is_some_and(|sel| !e.matches(sel))
            || (local_only && e.cluster != pc.mesh.cluster.cluster)
        {
            continue;
        }
        let target = if is_remote_network(proxy, e) {
            if pc.gateways.get(&e.network).is_none_or(|g| g.is_empty()) {
                continue; // unreachable: no gateway known for that network
            }
            Target::Network(e.network.clone())
        } else {
            Target::Direct(e.address.clone(), e.port_for(port))
        };
        let locality = e.locality.to_string();
        let mut priority = priority(setting, proxy, e);
        if let Some(d) = &dist {
            match d.iter().find(|(p, _)| p.matches(&e.locality)) {
                Some((p, w)) => {
                    priority = 0;
                    distribute_weights
                        .entry(locality.clone())
                        .or_insert((p.to_string(), *w));
                }
                None => priority += 1,
            }
        }
        let g = groups.entry((priority, locality)).or_insert_with(|| Group {
            locality: e.locality.clone(),
            ..Group::default()
        });
        let slot = g.targets.entry(target).or_insert((0, false));
        slot.0 += if e.healthy { e.weight.max(1) } else { 0 };
        slot.1 |= e.healthy;
    }
    let dense: BTreeMap<u32, u32> = groups
        .keys()
        .map(|(p, _)| *p)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .zip(0..)
        .collect();
    // Distribute weights are split among the localities each pattern matched.
    let mut per_pattern: BTreeMap<String, u32> = BTreeMap::new();
    for (pattern, _) in distribute_weights.values() {
        *per_pattern.entry(pattern.clone()).or_default() += 1;
    }
    let endpoints = groups
        .into_iter()
        .map(|((prio, loc), g)| {
            let healthy_weight: u32 = g.targets.values().map(|t| t.0).sum();
            let weight = match distribute_weights.get(&loc) {
                Some((pattern, w)) => (w * 1000 / per_pattern[pattern].max(1)).max(1),
                None => healthy_weight.max(1),
            };
            LocalityLbEndpoints {
                locality: Some(EnvoyLocality {
                    region: g.locality.region.clone(),
                    zone: g.locality.zone.clone(),
                    sub_zone: g.locality.subzone.clone(),
                }),
                lb_endpoints: over_gateways(pc, g.targets)
                    .into_iter()
                    .map(|(t, (w, healthy))| lb_endpoint(t, w, healthy))
                    .collect(),
                load_balancing_weight: Some(u32_value(weight)),
                priority: dense[&prio],
                ..LocalityLbEndpoints::default()
            }
        })
        .collect();
    Some(ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints,
        ..ClusterLoadAssignment::default()
    })
}

/// Where the endpoints of a group are reached.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Direct(String, u16),
    /// Every gateway of a remote network (see [`over_gateways`]).
    Network(String),
}

/// One `LbEndpoint`'s address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Address {
    Direct(String, u16),
    Gateway(SocketAddr),
}

/// Target → (healthy weight, any healthy).
type Targets = BTreeMap<Target, (u32, bool)>;

#[derive(Debug, Default)]
struct Group {
    locality: Locality,
    targets: Targets,
}

/// Replaces each remote network by its gateways, splitting the network's
/// weight evenly (the remainder to the first ones, at least 1 each; an
/// unhealthy network's gateways are unhealthy). Networks that share a
/// gateway address add up on it.
fn over_gateways(pc: &PushContext, targets: Targets) -> BTreeMap<Address, (u32, bool)> {
    let mut out = BTreeMap::new();
    for (target, (weight, healthy)) in targets {
        let network = match target {
            Target::Direct(host, port) => {
                out.insert(Address::Direct(host, port), (weight, healthy));
                continue;
            }
            Target::Network(network) => network,
        };
        let gateways = pc.gateways.get(&network).map_or(&[][..], Vec::as_slice);
        let n = u32::try_from(gateways.len()).unwrap_or(u32::MAX).max(1);
        for (i, gw) in (0..).zip(gateways) {
            let share = weight / n + u32::from(i < weight % n);
            let slot = out.entry(Address::Gateway(*gw)).or_insert((0, false));
            slot.0 += if healthy { share.max(1) } else { 0 };
            slot.1 |= healthy;
        }
    }
    out
}

fn lb_endpoint(address: Address, weight: u32, healthy: bool) -> LbEndpoint {
    let address = match &address {
        Address::Direct(host, port) => socket_address(host, *port),
        Address::Gateway(sa) => socket_address(&sa.ip().to_string(), sa.port()),
    };
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(address),
            ..EnvoyEndpoint::default()
        })),
        health_status: if healthy {
            HealthStatus::Healthy
        } else {
            HealthStatus::Unhealthy
        } as i32,
        load_balancing_weight: Some(u32_value(weight.max(1))),
        ..LbEndpoint::default()
    }
}

fn is_remote_network(proxy: &ProxyInfo, e: &Endpoint) -> bool {
    !e.network.is_empty() && !proxy.network.is_empty() && e.network != proxy.network
}

/// The `distribute` entry for the proxy's locality, as (destination pattern, weight).
fn matching_distribute(
    s: &LocalityLbSetting,
    origin: &Locality,
) -> Option<Vec<(LocalityPattern, u32)>> {
    if s.enabled == Some(false) {
        return None;
    }
    let d = s.distribute.iter().find(|d| {
        d.from
            .parse::<LocalityPattern>()
            .is_ok_and(|p| p.matches(origin))
    })?;
    Some(
        d.to.iter()
            .filter_map(|(k, w)| Some((k.parse().ok()?, *w)))
            .collect(),
    )
}

/// Priority of an endpoint for this proxy (lower is preferred).
pub fn priority(setting: Option<&LocalityLbSetting>, proxy: &ProxyInfo, e: &Endpoint) -> u32 {
    if setting.is_some_and(|s| s.enabled == Some(false)) {
        return 0;
    }
    let mut locality = match proxy.locality.proximity(&e.locality) {
        Proximity::SameSubzone => 0,
        Proximity::SameZone => 1,
        Proximity::SameRegion => 2,
        Proximity::Remote => 4,
    };
    if locality == 4
        && setting.is_some_and(|s| {
            s.failover
                .iter()
                .any(|f| f.from == proxy.locality.region && f.to == e.locality.region)
        })
    {
        locality = 3;
    }
    let keys = setting
        .map(|s| s.failover_priority.as_slice())
        .unwrap_or_default();
    if keys.is_empty() {
        return locality;
    }
    let proxy_labels = topology_labels(
        &proxy.labels,
        &proxy.cluster,
        &proxy.network,
        &proxy.locality,
    );
    let ep_labels = topology_labels(&e.labels, &e.cluster, &e.network, &e.locality);
    let matched = keys
        .iter()
        .take_while(|k| {
            let (key, value) = k
                .split_once('=')
                .map_or((k.as_str(), None), |(k, v)| (k, Some(v)));
            let want = value
                .map(str::to_string)
                .or_else(|| proxy_labels.get(key).cloned());
            want.is_some() && ep_labels.get(key) == want.as_ref()
        })
        .count();
    let label_rank = u32::try_from(keys.len() - matched).unwrap_or(u32::MAX / 8);
    label_rank * 5 + locality
}

fn topology_labels(
    labels: &BTreeMap<String, String>,
    cluster: &str,
    network: &str,
    loc: &Locality,
) -> BTreeMap<String, String> {
    let mut l = labels.clone();
    for (k, v) in [
        (CLUSTER_LABEL, cluster),
        (NETWORK_LABEL, network),
        (REGION_LABEL, loc.region.as_str()),
        (ZONE_LABEL, loc.zone.as_str()),
        (SUBZONE_LABEL, loc.subzone.as_str()),
    ] {
        if !v.is_empty() {
            l.entry(k.to_string()).or_insert_with(|| v.to_string());
        }
    }
    l
}
