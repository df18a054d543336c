//! Priority load, overprovisioning, panic, health statuses and locality weights.

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    CommonLbConfig, LbPolicy,
    common_lb_config::{LocalityConfigSpecifier, LocalityWeightedLbConfig},
};
use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy as ClaPolicy;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::UInt32Value;

use super::*;

fn down(addr: &str) -> LbEndpoint {
    with_health(ep(addr), HealthStatus::Unhealthy)
}

fn loads(b: &Balancer) -> Vec<u32> {
    b.status()
        .priorities
        .iter()
        .map(|p| p.load_percent)
        .collect()
}

fn panics(b: &Balancer) -> Vec<bool> {
    b.status().priorities.iter().map(|p| p.panic).collect()
}

/// Picks landing in priority 0 (addresses 10.0.0.x) out of `n`.
fn in_p0(b: &Balancer, n: usize) -> usize {
    (0..n)
        .filter(|_| pick(b).address().to_string().starts_with("10.0.0."))
        .count()
}

fn two_priorities(p0: Vec<LbEndpoint>) -> ClusterLoadAssignment {
    cla(vec![
        locality(0, None, "z1", p0),
        locality(1, None, "z2", vec![ep("10.0.1.1:80"), ep("10.0.1.2:80")]),
    ])
}

#[test]
fn all_unhealthy_priority_fails_over_to_the_next() {
    let a = two_priorities(vec![down("10.0.0.1:80"), down("10.0.0.2:80")]);
    let b = seeded(&eds(LbPolicy::RoundRobin), &a);
    assert_eq!(loads(&b), [0, 100]);
    assert_eq!(in_p0(&b, 1000), 0);
}

#[test]
fn half_healthy_priority_keeps_70_percent_with_overprovisioning() {
    let a = two_priorities(vec![ep("10.0.0.1:80"), down("10.0.0.2:80")]);
    let b = seeded(&eds(LbPolicy::Random), &a);
    assert_eq!(loads(&b), [70, 30]);
    assert_eq!(panics(&b), [false, false]);
    // σ = √(10 000 × 0.7 × 0.3) ≈ 46; 4σ.
    near(in_p0(&b, 10_000), 7000, 185);
    // Only the healthy host of P0 is used.
    let c = counts(&b, 1000);
    assert_eq!(count(&c, "10.0.0.2:80"), 0);
}

#[test]
fn mostly_healthy_priority_keeps_everything() {
    let a = two_priorities(vec![
        ep("10.0.0.1:80"),
        ep("10.0.0.2:80"),
        ep("10.0.0.3:80"),
        down("10.0.0.4:80"),
    ]);
    let b = seeded(&eds(LbPolicy::RoundRobin), &a);
    // 75% × 1.4 = 105% → capped at 100.
    assert_eq!(loads(&b), [100, 0]);
    assert_eq!(in_p0(&b, 1000), 1000);
}

#[test]
fn overprovisioning_factor_comes_from_the_assignment() {
    let mut a = two_priorities(vec![ep("10.0.0.1:80"), down("10.0.0.2:80")]);
    a.policy = Some(ClaPolicy {
        overprovisioning_factor: Some(UInt32Value { value: 100 }),
        ..ClaPolicy::default()
    });
    let b = seeded(&eds(LbPolicy::Random), &a);
    assert_eq!(loads(&b), [50, 50]);
}

#[test]
fn weighted_priority_health_counts_weights() {
    let p0 = vec![
        ep_w("10.0.0.1:80", 3),
        with_health(ep("10.0.0.2:80"), HealthStatus::Unhealthy),
    ];
    let by_count = two_priorities(p0.clone());
    assert_eq!(loads(&seeded(&eds(LbPolicy::Random), &by_count)), [70, 30]);
    let mut by_weight = two_priorities(p0);
    by_weight.policy = Some(ClaPolicy {
        weighted_priority_health: true,
        ..ClaPolicy::default()
    });
    // 3 of 4 weight healthy: 75% × 1.4 → 100.
    assert_eq!(loads(&seeded(&eds(LbPolicy::Random), &by_weight)), [100, 0]);
}

#[test]
fn low_total_health_normalizes_and_panics() {
    // Each priority: 1 of 4 healthy → health 35; total 70 < 100.
    let mut p0 = vec![ep("10.0.0.1:80")];
    p0.extend((2..=4).map(|i| down(&format!("10.0.0.{i}:80"))));
    let mut p1 = vec![ep("10.0.1.1:80")];
    p1.extend((2..=4).map(|i| down(&format!("10.0.1.{i}:80"))));
    let a = cla(vec![
        locality(0, None, "z1", p0),
        locality(1, None, "z2", p1),
    ]);
    let b = seeded(&eds(LbPolicy::Random), &a);
    assert_eq!(loads(&b), [50, 50]);
    // 25% healthy < the 50% panic threshold: every host of each priority is used.
    assert_eq!(panics(&b), [true, true]);
    let c = counts(&b, 8000);
    assert_eq!(c.len(), 8);
    // σ ≈ 30; 4σ.
    assert!(c.values().all(|&n| n.abs_diff(1000) <= 120), "{c:?}");
}

#[test]
fn panic_mode_uses_all_hosts_and_threshold_zero_disables_it() {
    let mut hosts = vec![ep("10.0.0.1:80")];
    hosts.extend((2..=4).map(|i| down(&format!("10.0.0.{i}:80"))));
    let a = flat(hosts);
    let b = seeded(&eds(LbPolicy::RoundRobin), &a);
    assert_eq!(panics(&b), [true]);
    let c = counts(&b, 4000);
    assert!(c.values().all(|&n| n == 1000), "{c:?}");

    let mut no_panic = eds(LbPolicy::RoundRobin);
    no_panic.common_lb_config = Some(CommonLbConfig {
        healthy_panic_threshold: Some(Percent { value: 0.0 }),
        ..CommonLbConfig::default()
    });
    let b = seeded(&no_panic, &a);
    assert_eq!(panics(&b), [false]);
    assert_eq!(count(&counts(&b, 100), "10.0.0.1:80"), 100);
    // With nothing healthy and panic disabled, there is nothing to pick.
    let all_down = flat(vec![down("10.0.0.1:80")]);
    let b = seeded(&no_panic, &all_down);
    assert!(b.pick(&PickContext::default()).is_none());
}

#[test]
fn nothing_healthy_anywhere_panics_in_the_first_priority() {
    let a = cla(vec![
        locality(1, None, "z1", vec![down("10.0.0.1:80")]),
        locality(2, None, "z2", vec![down("10.0.1.1:80")]),
    ]);
    let b = seeded(&eds(LbPolicy::RoundRobin), &a);
    // Priority 0 has no entries: the first priority with hosts takes the load.
    assert_eq!(loads(&b), [0, 100, 0]);
    assert_eq!(in_p0(&b, 100), 100);
}

#[test]
fn failback_when_hosts_recover_through_update() {
    let c = eds(LbPolicy::RoundRobin);
    let b = seeded(&c, &two_priorities(vec![down("10.0.0.1:80")]));
    assert_eq!(in_p0(&b, 100), 0);
    b.update(&c, Some(&two_priorities(vec![ep("10.0.0.1:80")])))
        .unwrap();
    assert_eq!(in_p0(&b, 100), 100);
}

#[test]
fn health_statuses() {
    let a = flat(vec![
        with_health(ep("10.0.0.1:80"), HealthStatus::Unknown),
        with_health(ep("10.0.0.2:80"), HealthStatus::Healthy),
        with_health(ep("10.0.0.3:80"), HealthStatus::Degraded),
        with_health(ep("10.0.0.4:80"), HealthStatus::Unhealthy),
        with_health(ep("10.0.0.5:80"), HealthStatus::Draining),
        with_health(ep("10.0.0.6:80"), HealthStatus::Timeout),
        ep("10.0.0.7:80"),
    ]);
    // 4 of 7 healthy: 57% ≥ the panic threshold, and 80% health with one priority.
    let b = seeded(&eds(LbPolicy::RoundRobin), &a);
    let c = counts(&b, 400);
    let used: Vec<_> = c.keys().map(|a| a.ip().to_string()).collect();
    assert_eq!(used, ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.7"]);
    assert_eq!(b.status().endpoints[4].info.health, Health::Draining);
}

fn weighted_localities() -> Cluster {
    let mut c = eds(LbPolicy::RoundRobin);
    c.common_lb_config = Some(CommonLbConfig {
        locality_config_specifier: Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(
            LocalityWeightedLbConfig {},
        )),
        ..CommonLbConfig::default()
    });
    c
}

#[test]
fn locality_weights_split_80_20() {
    let a = cla(vec![
        locality(
            0,
            Some(80),
            "z1",
            vec![ep("10.0.0.1:80"), ep("10.0.0.2:80")],
        ),
        locality(0, Some(20), "z2", vec![ep("10.0.1.1:80")]),
    ]);
    let b = seeded(&weighted_localities(), &a);
    // σ = √(10 000 × 0.8 × 0.2) = 40; 4σ.
    near(in_p0(&b, 10_000), 8000, 160);
    // Within z1, round robin splits evenly.
    let c = counts(&b, 10_000);
    near(count(&c, "10.0.0.1:80"), 4000, 160);
    near(count(&c, "10.0.0.2:80"), 4000, 160);

    // Without locality weighting all hosts are one pool.
    let b = seeded(&eds(LbPolicy::RoundRobin), &a);
    let c = counts(&b, 3000);
    assert!(c.values().all(|&n| n == 1000), "{c:?}");
}

#[test]
fn locality_weight_shrinks_with_its_health() {
    // Envoy's example: X weight 1 at 50% healthy → 0.7; Y weight 2 → X gets 0.7 / 2.7.
    let a = cla(vec![
        locality(
            0,
            Some(1),
            "x",
            vec![ep("10.0.0.1:80"), down("10.0.0.2:80")],
        ),
        locality(0, Some(2), "y", vec![ep("10.0.1.1:80"), ep("10.0.1.2:80")]),
    ]);
    let b = seeded(&weighted_localities(), &a);
    // 25.9% of 10 000; σ ≈ 44; 4σ.
    near(in_p0(&b, 10_000), 2593, 175);
    // A locality without a weight gets nothing while another has one.
    let a = cla(vec![
        locality(0, None, "x", vec![ep("10.0.0.1:80")]),
        locality(0, Some(1), "y", vec![ep("10.0.1.1:80")]),
    ]);
    assert_eq!(in_p0(&seeded(&weighted_localities(), &a), 500), 0);
}
