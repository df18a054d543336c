//! Policies and `exclude`; priorities, outlier detection and config checks
//! are in `tests/`. Every balancer is seeded: counts are exact for a seed,
//! and the bounds they are checked against hold for any seed.

mod config;
mod outlier;
mod priority;
mod ring;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, HealthStatus, Locality as EnvoyLocality, SocketAddress, address,
    socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
    lb_endpoint::HostIdentifier,
};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::*;

pub(super) const NAME: &str = "outbound|80||svc.ns.svc.cluster.local";

pub(super) fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub(super) fn socket(host: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: host.into(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    }
}

/// A healthy endpoint at `addr` (`ip:port`) with `weight`.
pub(super) fn ep_w(addr: &str, weight: u32) -> LbEndpoint {
    let a = sa(addr);
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(socket(&a.ip().to_string(), u32::from(a.port()))),
            ..EnvoyEndpoint::default()
        })),
        health_status: HealthStatus::Healthy as i32,
        load_balancing_weight: Some(UInt32Value { value: weight }),
        ..LbEndpoint::default()
    }
}

pub(super) fn ep(addr: &str) -> LbEndpoint {
    ep_w(addr, 1)
}

pub(super) fn with_health(mut e: LbEndpoint, h: HealthStatus) -> LbEndpoint {
    e.health_status = h as i32;
    e
}

pub(super) fn locality(
    priority: u32,
    weight: Option<u32>,
    zone: &str,
    lb_endpoints: Vec<LbEndpoint>,
) -> LocalityLbEndpoints {
    LocalityLbEndpoints {
        locality: Some(EnvoyLocality {
            region: "r1".into(),
            zone: zone.into(),
            sub_zone: String::new(),
        }),
        lb_endpoints,
        load_balancing_weight: weight.map(|value| UInt32Value { value }),
        priority,
        ..LocalityLbEndpoints::default()
    }
}

pub(super) fn cla(endpoints: Vec<LocalityLbEndpoints>) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: NAME.into(),
        endpoints,
        ..ClusterLoadAssignment::default()
    }
}

/// One priority-0 locality holding `endpoints`.
pub(super) fn flat(endpoints: Vec<LbEndpoint>) -> ClusterLoadAssignment {
    cla(vec![locality(0, None, "z1", endpoints)])
}

pub(super) fn eds(policy: LbPolicy) -> Cluster {
    Cluster {
        name: NAME.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        lb_policy: policy as i32,
        ..Cluster::default()
    }
}

pub(super) fn seeded(c: &Cluster, a: &ClusterLoadAssignment) -> Balancer {
    Balancer::with_seed(c, Some(a), 7).unwrap()
}

pub(super) fn pick(b: &Balancer) -> Pick {
    b.pick(&PickContext::default()).expect("an endpoint")
}

/// How often each address is picked in `n` picks (each dropped at once).
pub(super) fn counts(b: &Balancer, n: usize) -> BTreeMap<SocketAddr, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        *out.entry(pick(b).address()).or_default() += 1;
    }
    out
}

pub(super) fn count(counts: &BTreeMap<SocketAddr, usize>, addr: &str) -> usize {
    counts.get(&sa(addr)).copied().unwrap_or(0)
}

/// `actual` is within `tolerance` of `expected`.
#[track_caller]
pub(super) fn near(actual: usize, expected: usize, tolerance: usize) {
    assert!(
        actual.abs_diff(expected) <= tolerance,
        "{actual} is not within {tolerance} of {expected}"
    );
}

#[test]
fn balancer_is_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<Balancer>();
    check::<Pick>();
    check::<Permit>();
}

#[test]
fn round_robin_cycles_evenly() {
    let a = flat(vec![
        ep("10.0.0.1:80"),
        ep("10.0.0.2:80"),
        ep("10.0.0.3:80"),
    ]);
    let b = seeded(&eds(LbPolicy::RoundRobin), &a);
    let seq: Vec<SocketAddr> = (0..9).map(|_| pick(&b).address()).collect();
    assert_eq!(seq[0..3], seq[3..6]);
    assert_eq!(seq[0..3], seq[6..9]);
    let mut first: Vec<_> = seq[0..3].to_vec();
    first.sort();
    assert_eq!(
        first,
        [sa("10.0.0.1:80"), sa("10.0.0.2:80"), sa("10.0.0.3:80")]
    );
    let c = counts(&b, 3000);
    assert!(c.values().all(|&n| n == 1000), "{c:?}");
}

#[test]
fn round_robin_follows_weights_smoothly() {
    let a = flat(vec![
        ep_w("10.0.0.1:80", 1),
        ep_w("10.0.0.2:80", 2),
        ep_w("10.0.0.3:80", 3),
    ]);
    let b = seeded(&eds(LbPolicy::RoundRobin), &a);
    let c = counts(&b, 6000);
    near(count(&c, "10.0.0.1:80"), 1000, 10);
    near(count(&c, "10.0.0.2:80"), 2000, 10);
    near(count(&c, "10.0.0.3:80"), 3000, 10);
    // Smooth: within any 60 consecutive picks each host gets about its share.
    let seq: Vec<SocketAddr> = (0..600).map(|_| pick(&b).address()).collect();
    for window in seq.chunks(60) {
        let heavy = window.iter().filter(|a| **a == sa("10.0.0.3:80")).count();
        near(heavy, 30, 4);
    }
}

#[test]
fn random_is_weighted() {
    let a = flat(vec![ep_w("10.0.0.1:80", 1), ep_w("10.0.0.2:80", 3)]);
    let b = seeded(&eds(LbPolicy::Random), &a);
    let c = counts(&b, 10_000);
    // σ = √(10 000 × 0.25 × 0.75) ≈ 43; 4σ.
    near(count(&c, "10.0.0.1:80"), 2500, 175);
    near(count(&c, "10.0.0.2:80"), 7500, 175);
}

#[test]
fn random_with_equal_weights_is_uniform() {
    let a = flat((1..=4).map(|i| ep(&format!("10.0.0.{i}:80"))).collect());
    let b = seeded(&eds(LbPolicy::Random), &a);
    let c = counts(&b, 10_000);
    assert_eq!(c.len(), 4);
    // σ ≈ 43; 4σ.
    assert!(c.values().all(|&n| n.abs_diff(2500) <= 175), "{c:?}");
}

#[test]
fn least_request_spreads_by_weight_when_idle() {
    let a = flat(vec![ep_w("10.0.0.1:80", 1), ep_w("10.0.0.2:80", 4)]);
    let b = seeded(&eds(LbPolicy::LeastRequest), &a);
    let c = counts(&b, 10_000);
    // σ = √(10 000 × 0.2 × 0.8) = 40; 4σ.
    near(count(&c, "10.0.0.1:80"), 2000, 160);
    // With the heavy host busy, the light one wins whenever it is sampled:
    // 1 − 0.8² = 36% (σ = 48).
    let mut held = Vec::new();
    while held.len() < 5 {
        let p = pick(&b);
        if p.address() == sa("10.0.0.2:80") {
            held.push(p);
        }
    }
    near(count(&counts(&b, 10_000), "10.0.0.1:80"), 3600, 200);
}

#[test]
fn least_request_prefers_the_less_loaded_endpoint() {
    let a = flat(vec![
        ep("10.0.0.1:80"),
        ep("10.0.0.2:80"),
        ep("10.0.0.3:80"),
    ]);
    let b = seeded(&eds(LbPolicy::LeastRequest), &a);
    // Load 10.0.0.1 with 20 requests in flight.
    let mut held = Vec::new();
    while held.len() < 20 {
        let p = pick(&b);
        if p.address() == sa("10.0.0.1:80") {
            held.push(p);
        }
    }
    let c = counts(&b, 9000);
    // It is chosen only when both samples are it: 1/9 of the time (σ ≈ 30).
    near(count(&c, "10.0.0.1:80"), 1000, 120);
    drop(held);
    // Its requests are gone: an even share again (2 samples, ties keep the first).
    let c = counts(&b, 9000);
    near(count(&c, "10.0.0.1:80"), 3000, 200);
}

#[test]
fn least_request_always_picks_the_idle_one_of_two_with_more_choices() {
    let mut c = eds(LbPolicy::LeastRequest);
    c.lb_config = Some(
        envoy_types::pb::envoy::config::cluster::v3::cluster::LbConfig::LeastRequestLbConfig(
            envoy_types::pb::envoy::config::cluster::v3::cluster::LeastRequestLbConfig {
                choice_count: Some(UInt32Value { value: 10 }),
                ..Default::default()
            },
        ),
    );
    let b = seeded(&c, &flat(vec![ep("10.0.0.1:80"), ep("10.0.0.2:80")]));
    let busy = pick(&b);
    let idle = if busy.address() == sa("10.0.0.1:80") {
        "10.0.0.2:80"
    } else {
        "10.0.0.1:80"
    };
    // 10 samples miss the idle host with probability 2^-10.
    let c = counts(&b, 1000);
    assert!(count(&c, idle) > 990, "{c:?}");
}

#[test]
fn active_requests_follow_picks_reports_and_drops() {
    let b = seeded(&eds(LbPolicy::RoundRobin), &flat(vec![ep("10.0.0.1:80")]));
    let active = |b: &Balancer| b.status().endpoints[0].active_requests;
    let p1 = pick(&b);
    let p2 = pick(&b);
    assert_eq!(active(&b), 2);
    p1.report(Outcome::Success);
    assert_eq!(active(&b), 1);
    drop(p2);
    assert_eq!(active(&b), 0);
}

#[test]
fn exclude_is_avoided_when_another_host_exists() {
    let a = flat(vec![
        ep("10.0.0.1:80"),
        ep("10.0.0.2:80"),
        ep("10.0.0.3:80"),
    ]);
    for policy in [
        LbPolicy::RoundRobin,
        LbPolicy::Random,
        LbPolicy::LeastRequest,
    ] {
        let b = seeded(&eds(policy), &a);
        let tried = [sa("10.0.0.1:80"), sa("10.0.0.2:80")];
        for _ in 0..200 {
            let ctx = PickContext {
                exclude: &tried,
                ..PickContext::default()
            };
            assert_eq!(b.pick(&ctx).unwrap().address(), sa("10.0.0.3:80"));
        }
        // With every host tried, a pick is still made.
        let all = [tried[0], tried[1], sa("10.0.0.3:80")];
        let ctx = PickContext {
            exclude: &all,
            ..PickContext::default()
        };
        assert!(b.pick(&ctx).is_some());
    }
}

#[test]
fn exclude_stays_among_hosts_that_take_load() {
    // P0 has one host and takes all the load; after trying it, P1 is the other choice.
    let a = cla(vec![
        locality(0, None, "z1", vec![ep("10.0.0.1:80")]),
        locality(1, None, "z2", vec![ep("10.0.1.1:80")]),
    ]);
    let b = seeded(&eds(LbPolicy::RoundRobin), &a);
    assert_eq!(pick(&b).address(), sa("10.0.0.1:80"));
    let tried = [sa("10.0.0.1:80")];
    let ctx = PickContext {
        exclude: &tried,
        ..PickContext::default()
    };
    // P1 takes no load, so its host is not eligible: the only choice is P0's.
    assert_eq!(b.pick(&ctx).unwrap().address(), sa("10.0.0.1:80"));
}

#[test]
fn original_dst_picks_the_destination() {
    let c = Cluster {
        name: "PassthroughCluster".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: LbPolicy::ClusterProvided as i32,
        ..Cluster::default()
    };
    let b = Balancer::new(&c, None).unwrap();
    assert!(b.pick(&PickContext::default()).is_none());
    let ctx = PickContext {
        original_dst: Some(sa("93.184.216.34:443")),
        ..PickContext::default()
    };
    let p = b.pick(&ctx).unwrap();
    assert_eq!(p.address(), sa("93.184.216.34:443"));
    p.report(Outcome::ConnectFailure);
    assert_eq!(b.status().lb_policy, "CLUSTER_PROVIDED");
}

#[test]
fn static_cluster_without_endpoints_picks_nothing() {
    let c = Cluster {
        name: "BlackHoleCluster".into(),
        ..Cluster::default()
    };
    let b = Balancer::new(&c, None).unwrap();
    assert!(b.pick(&PickContext::default()).is_none());
    // An EDS cluster before its endpoints arrive.
    let b = Balancer::new(&eds(LbPolicy::LeastRequest), None).unwrap();
    assert!(b.pick(&PickContext::default()).is_none());
}

#[test]
fn strict_dns_hosts_appear_when_resolved() {
    let mut dns_ep = ep("10.0.0.1:443");
    if let Some(HostIdentifier::Endpoint(e)) = &mut dns_ep.host_identifier {
        e.address = Some(socket("api.example.com", 443));
    }
    let mut literal = ep("10.9.9.9:443");
    literal.load_balancing_weight = None;
    let c = Cluster {
        name: NAME.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32)),
        load_assignment: Some(flat(vec![dns_ep, literal])),
        ..Cluster::default()
    };
    let b = Balancer::with_seed(&c, None, 1).unwrap();
    assert_eq!(b.dns_names(), ["api.example.com"]);
    assert_eq!(b.status().dns_pending, ["api.example.com"]);
    assert_eq!(pick(&b).address(), sa("10.9.9.9:443"));
    let ips: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()];
    assert!(b.set_resolved("api.example.com", &ips));
    assert!(!b.set_resolved("other.example.com", &ips));
    let c2 = counts(&b, 300);
    assert_eq!(c2.len(), 3, "{c2:?}");
    let p = b
        .pick(&PickContext {
            exclude: &[sa("10.9.9.9:443"), sa("192.0.2.2:443")],
            ..PickContext::default()
        })
        .unwrap();
    assert_eq!(p.address(), sa("192.0.2.1:443"));
    assert_eq!(p.endpoint().hostname, "api.example.com");
    assert!(b.status().dns_pending.is_empty());
    // An update keeps the answers for names it still has.
    b.update(&c, None).unwrap();
    assert_eq!(counts(&b, 300).len(), 3);
}

#[test]
fn pick_exposes_locality_and_metadata() {
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let mut e = ep("10.0.0.1:80");
    e.metadata = Some(Metadata {
        filter_metadata: [(
            "istio".to_string(),
            Struct {
                fields: [(
                    "workload".to_string(),
                    Value {
                        kind: Some(Kind::StringValue("reviews-v1".into())),
                    },
                )]
                .into(),
            },
        )]
        .into(),
        ..Metadata::default()
    });
    let b = seeded(
        &eds(LbPolicy::RoundRobin),
        &cla(vec![locality(0, None, "z9", vec![e])]),
    );
    let p = pick(&b);
    let info = p.endpoint();
    assert_eq!(info.locality.zone, "z9");
    assert_eq!(info.locality.region, "r1");
    assert_eq!(info.metadata["istio.workload"], "reviews-v1");
    assert_eq!(info.health, Health::Healthy);
}
