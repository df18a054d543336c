//! The admin `/clusters` view of one balancer: priority loads, circuit
//! breakers, and every endpoint with its live state.

use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;

use super::breaker::{Breakers, Resource};
use super::config::Discovery;
use super::endpoint::EndpointInfo;
use super::view::View;

#[derive(Clone, Debug, Serialize)]
pub struct ClusterStatus {
    pub name: String,
    /// Envoy's name of the policy (`LEAST_REQUEST`, `CLUSTER_PROVIDED`, ...).
    pub lb_policy: &'static str,
    pub priorities: Vec<PriorityStatus>,
    pub circuit_breakers: BreakerStatus,
    /// STRICT_DNS names not resolved yet (they have no hosts).
    pub dns_pending: Vec<String>,
    /// In priority and config order; an address listed in several
    /// localities appears once per entry, with the same live state.
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PriorityStatus {
    pub priority: u32,
    /// Percent of requests this priority takes.
    pub load_percent: u32,
    /// Envoy's priority health: `min(100, overprovisioning × healthy share)`.
    pub health_percent: u32,
    /// Whether the priority balances over all its hosts, healthy or not.
    pub panic: bool,
}

/// In use / limit of each circuit breaker.
#[derive(Clone, Debug, Serialize)]
pub struct BreakerStatus {
    pub connections: u32,
    pub max_connections: u32,
    pub pending_requests: u32,
    pub max_pending_requests: u32,
    pub requests: u32,
    pub max_requests: u32,
    pub retries: u32,
    pub max_retries: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct EndpointStatus {
    #[serde(flatten)]
    pub info: EndpointInfo,
    pub active_requests: u64,
    pub outlier: OutlierStatus,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct OutlierStatus {
    pub ejected: bool,
    /// Milliseconds until the current ejection ends.
    pub ejected_for_ms: Option<u64>,
    /// Ejections so far.
    pub ejection_count: u64,
    /// After decay: the next ejection lasts `base_ejection_time × (multiplier + 1)`, capped.
    pub ejection_multiplier: u32,
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub consecutive_local_origin_failure: u32,
}

pub(crate) fn build(name: &str, view: &View, breakers: &Breakers, now: u64) -> ClusterStatus {
    let cfg = &view.hosts.cfg;
    let endpoints = view
        .hosts
        .priorities
        .iter()
        .flatten()
        .flat_map(|g| &g.hosts)
        .map(|e| {
            let s = &e.state;
            let (c5xx, gateway, local) = s.counters();
            let ejected_for = s.ejected_for(now);
            EndpointStatus {
                info: e.info.clone(),
                active_requests: s.active.load(Relaxed),
                outlier: OutlierStatus {
                    ejected: ejected_for.is_some(),
                    ejected_for_ms: ejected_for.map(|ns| ns.div_ceil(1_000_000)),
                    ejection_count: s.ejections(),
                    ejection_multiplier: cfg.outlier.as_ref().map_or(0, |od| od.multiplier(s, now)),
                    consecutive_5xx: c5xx,
                    consecutive_gateway_failure: gateway,
                    consecutive_local_origin_failure: local,
                },
            }
        })
        .collect();
    let priorities = view
        .levels
        .iter()
        .zip(0..)
        .map(|(l, priority)| PriorityStatus {
            priority,
            load_percent: l.load,
            health_percent: l.health,
            panic: l.panic,
        })
        .collect();
    let (connections, max_connections) = breakers.get(Resource::Connections);
    let (pending_requests, max_pending_requests) = breakers.get(Resource::Pending);
    let (requests, max_requests) = breakers.get(Resource::Requests);
    let (retries, max_retries) = breakers.get(Resource::Retries);
    ClusterStatus {
        name: name.to_string(),
        lb_policy: if cfg.discovery == Discovery::OriginalDst {
            "CLUSTER_PROVIDED"
        } else {
            cfg.policy_name
        },
        priorities,
        circuit_breakers: BreakerStatus {
            connections,
            max_connections,
            pending_requests,
            max_pending_requests,
            requests,
            max_requests,
            retries,
            max_retries,
        },
        dns_pending: view.hosts.pending_dns.clone(),
        endpoints,
    }
}
