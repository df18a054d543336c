//! The `endpoints` answer policy: which addresses, in which order.

use std::net::IpAddr;

use isthmus_api::naming::{Locality, Proximity};
use isthmus_proto::dns as proto;

/// Addresses for an `endpoints` answer, closest first.
///
/// Clusters with no healthy endpoint are left out, and so are unhealthy
/// endpoints; if no cluster is healthy, every endpoint is answered (a
/// possibly-stale address beats an empty answer). Order: this server's
/// cluster first, then by locality proximity (same zone, same region,
/// others), ties kept in feed order (clusters by name). Duplicates dropped.
pub fn order_endpoints(
    svc: &proto::GlobalService,
    cluster: &str,
    locality: &Locality,
) -> Vec<IpAddr> {
    let any_healthy = svc.clusters.iter().any(|c| c.healthy > 0);
    let mut picked: Vec<((bool, Proximity), IpAddr)> = Vec::new();
    for c in &svc.clusters {
        if any_healthy && c.healthy == 0 {
            continue;
        }
        // A cluster said to be healthy whose endpoints carry no healthy flag: trust the count.
        let use_flags = any_healthy && c.endpoints.iter().any(|e| e.healthy);
        let remote = c.cluster != cluster;
        for e in &c.endpoints {
            if use_flags && !e.healthy {
                continue;
            }
            let Ok(ip) = e.address.parse::<IpAddr>() else {
                continue;
            };
            let proximity = e
                .locality
                .parse::<Locality>()
                .map_or(Proximity::Remote, |l| locality.proximity(&l));
            picked.push(((remote, proximity), ip));
        }
    }
    picked.sort_by_key(|(rank, _)| *rank);
    let mut out: Vec<IpAddr> = Vec::with_capacity(picked.len());
    for (_, ip) in picked {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}
