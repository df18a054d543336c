//! Config checks, circuit breakers and the cluster-level settings.

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    CommonLbConfig, EdsClusterConfig, LbConfig, LbPolicy, LeastRequestLbConfig, RingHashLbConfig,
    RoundRobinLbConfig, SlowStartConfig,
    common_lb_config::{LocalityConfigSpecifier, LocalityWeightedLbConfig, ZoneAwareLbConfig},
    ring_hash_lb_config::HashFunction,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, OutlierDetection, circuit_breakers::Thresholds,
    circuit_breakers::thresholds::RetryBudget, cluster::LbSubsetConfig,
};
use envoy_types::pb::envoy::config::core::v3::{
    HealthCheck, HttpProtocolOptions as CoreHttpOptions, Pipe, socket_address::Protocol,
};
use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::{
    Policy as ClaPolicy, policy::DropOverload,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value, UInt64Value};
use envoy_types::util::pack_any;

use super::*;

fn ring(config: RingHashLbConfig) -> Cluster {
    let mut c = eds(LbPolicy::RingHash);
    c.lb_config = Some(LbConfig::RingHashLbConfig(config));
    c
}

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

fn secs(seconds: i64) -> Option<PbDuration> {
    Some(PbDuration { seconds, nanos: 0 })
}

/// Rewrites the first endpoint's socket address.
fn first_socket(
    a: &mut ClusterLoadAssignment,
    f: impl FnOnce(&mut envoy_types::pb::envoy::config::core::v3::SocketAddress),
) {
    let e = &mut a.endpoints[0].lb_endpoints[0];
    let Some(HostIdentifier::Endpoint(ep)) = &mut e.host_identifier else {
        unreachable!()
    };
    let Some(Address {
        address: Some(address::Address::SocketAddress(s)),
    }) = &mut ep.address
    else {
        unreachable!()
    };
    f(s);
}

fn one() -> ClusterLoadAssignment {
    flat(vec![ep("10.0.0.1:80")])
}

#[test]
fn bad_input_names_the_cluster_and_field() {
    let base = || eds(LbPolicy::RoundRobin);
    let mut cases: Vec<(Cluster, Option<ClusterLoadAssignment>, &str)> = vec![
        (
            base(),
            Some(flat(vec![ep_w("10.0.0.1:80", 0)])),
            "ClusterLoadAssignment.endpoints[0].lb_endpoints[0].load_balancing_weight",
        ),
        (
            base(),
            Some(cla(vec![locality(
                0,
                Some(0),
                "z",
                vec![ep("10.0.0.1:80")],
            )])),
            "ClusterLoadAssignment.endpoints[0].load_balancing_weight",
        ),
        (
            ring(RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value { value: 0 }),
                ..RingHashLbConfig::default()
            }),
            Some(one()),
            "ring_hash_lb_config.minimum_ring_size",
        ),
        (
            ring(RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value { value: 2048 }),
                maximum_ring_size: Some(UInt64Value { value: 1024 }),
                ..RingHashLbConfig::default()
            }),
            Some(one()),
            "ring_hash_lb_config.maximum_ring_size",
        ),
        (
            ring(RingHashLbConfig {
                hash_function: HashFunction::MurmurHash2 as i32,
                ..RingHashLbConfig::default()
            }),
            Some(one()),
            "ring_hash_lb_config.hash_function",
        ),
        (eds(LbPolicy::Maglev), Some(one()), "lb_policy"),
        (eds(LbPolicy::ClusterProvided), Some(one()), "lb_policy"),
        (
            eds(LbPolicy::LoadBalancingPolicyConfig),
            Some(one()),
            "lb_policy",
        ),
    ];
    let mut c = base();
    c.lb_policy = 42;
    cases.push((c, Some(one()), "lb_policy"));

    let mut a = one();
    a.endpoints[0].lb_endpoints[0].host_identifier = None;
    cases.push((base(), Some(a), "endpoint"));
    let mut a = one();
    if let Some(HostIdentifier::Endpoint(e)) = &mut a.endpoints[0].lb_endpoints[0].host_identifier {
        e.address = None;
    }
    cases.push((base(), Some(a), "endpoint.address"));
    let mut a = one();
    if let Some(HostIdentifier::Endpoint(e)) = &mut a.endpoints[0].lb_endpoints[0].host_identifier {
        e.address = Some(Address {
            address: Some(address::Address::Pipe(Pipe {
                path: "/tmp/sock".into(),
                mode: 0,
            })),
        });
    }
    cases.push((base(), Some(a), "endpoint.address.pipe"));
    let mut a = one();
    first_socket(&mut a, |s| {
        s.port_specifier = Some(PortSpecifier::NamedPort("http".into()))
    });
    cases.push((base(), Some(a), "named_port"));
    let mut a = one();
    first_socket(&mut a, |s| {
        s.port_specifier = Some(PortSpecifier::PortValue(70_000))
    });
    cases.push((base(), Some(a), "port_value"));
    let mut a = one();
    first_socket(&mut a, |s| s.address = "reviews.default.svc".into());
    cases.push((
        base(),
        Some(a),
        "ClusterLoadAssignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address",
    ));
    let mut a = one();
    first_socket(&mut a, |s| s.protocol = Protocol::Udp as i32);
    cases.push((base(), Some(a), "protocol"));
    let mut a = one();
    a.endpoints[0].lb_endpoints[0].health_status = 42;
    cases.push((base(), Some(a), "health_status"));
    let mut a = one();
    a.endpoints[0].priority = 100_000;
    cases.push((
        base(),
        Some(a),
        "ClusterLoadAssignment.endpoints[0].priority",
    ));
    let mut a = one();
    a.cluster_name = "outbound|81||other".into();
    cases.push((base(), Some(a), "ClusterLoadAssignment.cluster_name"));
    let mut a = one();
    a.policy = Some(ClaPolicy {
        overprovisioning_factor: u32v(0),
        ..ClaPolicy::default()
    });
    cases.push((
        base(),
        Some(a),
        "ClusterLoadAssignment.policy.overprovisioning_factor",
    ));
    let mut a = one();
    a.policy = Some(ClaPolicy {
        drop_overloads: vec![DropOverload::default()],
        ..ClaPolicy::default()
    });
    cases.push((
        base(),
        Some(a),
        "ClusterLoadAssignment.policy.drop_overloads",
    ));

    let mut c = base();
    c.lb_subset_config = Some(LbSubsetConfig::default());
    cases.push((c, Some(one()), "lb_subset_config"));
    let mut c = base();
    c.health_checks = vec![HealthCheck::default()];
    cases.push((c, Some(one()), "health_checks"));
    let mut c = base();
    c.outlier_detection = Some(OutlierDetection {
        enforcing_success_rate: u32v(100),
        ..OutlierDetection::default()
    });
    cases.push((c, Some(one()), "outlier_detection.enforcing_success_rate"));
    let mut c = base();
    c.outlier_detection = Some(OutlierDetection {
        max_ejection_percent: u32v(150),
        ..OutlierDetection::default()
    });
    cases.push((c, Some(one()), "outlier_detection.max_ejection_percent"));
    let mut c = base();
    c.outlier_detection = Some(OutlierDetection {
        interval: secs(0),
        ..OutlierDetection::default()
    });
    cases.push((c, Some(one()), "outlier_detection.interval"));
    let mut c = base();
    c.common_lb_config = Some(CommonLbConfig {
        healthy_panic_threshold: Some(Percent { value: 150.0 }),
        ..CommonLbConfig::default()
    });
    cases.push((c, Some(one()), "common_lb_config.healthy_panic_threshold"));
    let mut c = base();
    c.common_lb_config = Some(CommonLbConfig {
        locality_config_specifier: Some(LocalityConfigSpecifier::ZoneAwareLbConfig(
            ZoneAwareLbConfig::default(),
        )),
        ..CommonLbConfig::default()
    });
    cases.push((c, Some(one()), "common_lb_config.zone_aware_lb_config"));
    let mut c = base();
    c.lb_config = Some(LbConfig::RoundRobinLbConfig(RoundRobinLbConfig {
        slow_start_config: Some(SlowStartConfig::default()),
    }));
    cases.push((c, Some(one()), "round_robin_lb_config.slow_start_config"));
    let mut c = eds(LbPolicy::LeastRequest);
    c.lb_config = Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
        choice_count: u32v(1),
        ..LeastRequestLbConfig::default()
    }));
    cases.push((c, Some(one()), "least_request_lb_config.choice_count"));
    let mut c = eds(LbPolicy::Random);
    c.lb_config = Some(LbConfig::LeastRequestLbConfig(
        LeastRequestLbConfig::default(),
    ));
    cases.push((c, Some(one()), "lb_config"));
    let mut c = base();
    c.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![Thresholds {
            retry_budget: Some(RetryBudget::default()),
            ..Thresholds::default()
        }],
        ..CircuitBreakers::default()
    });
    cases.push((
        c,
        Some(one()),
        "circuit_breakers.thresholds[0].retry_budget",
    ));
    let mut c = base();
    c.connect_timeout = Some(PbDuration {
        seconds: -1,
        nanos: 0,
    });
    cases.push((c, Some(one()), "connect_timeout"));
    let mut c = base();
    c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::LogicalDns as i32));
    cases.push((c, None, "type"));
    let mut c = base();
    c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
    cases.push((c, None, "load_assignment"));
    let mut c = base();
    c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
    cases.push((c, Some(one()), "load_assignment"));
    let mut c = base();
    c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(
        DiscoveryType::OriginalDst as i32,
    ));
    cases.push((c, None, "lb_policy"));

    for (c, a, field) in cases {
        let e = Balancer::new(&c, a.as_ref()).expect_err(field);
        assert_eq!(e.cluster, NAME);
        assert!(e.field.ends_with(field), "{e} (expected field {field})");
        assert_eq!(
            e.to_string(),
            format!("Cluster {NAME:?}: {}: {}", e.field, e.reason)
        );
        assert_eq!(validate(&c, a.as_ref()), Err(e));
    }
}

#[test]
fn failed_update_keeps_the_previous_config() {
    let c = eds(LbPolicy::RoundRobin);
    let b = seeded(&c, &one());
    let bad = flat(vec![ep_w("10.0.0.2:80", 0)]);
    assert!(b.update(&c, Some(&bad)).is_err());
    assert_eq!(pick(&b).address(), sa("10.0.0.1:80"));
    let mut other = c.clone();
    other.name = "outbound|81||other".into();
    let e = b.update(&other, Some(&one())).unwrap_err();
    assert_eq!(e.field, "name");
}

#[test]
fn circuit_breakers_hand_out_permits_up_to_their_limits() {
    let b = seeded(&eds(LbPolicy::RoundRobin), &one());
    let retries: Vec<_> = (0..3).map(|_| b.try_retry().unwrap()).collect();
    assert!(b.try_retry().is_none());
    drop(retries);
    assert!(b.try_retry().is_some());
    let requests: Vec<_> = (0..1024).map(|_| b.try_request().unwrap()).collect();
    assert!(b.try_request().is_none());
    assert_eq!(b.status().circuit_breakers.requests, 1024);
    drop(requests);
    assert_eq!(b.status().circuit_breakers.requests, 0);

    let mut c = eds(LbPolicy::RoundRobin);
    let limits = |max: u32| CircuitBreakers {
        thresholds: vec![
            Thresholds {
                priority: 1, // HIGH: unused
                max_connections: u32v(100),
                ..Thresholds::default()
            },
            Thresholds {
                max_connections: u32v(max),
                max_pending_requests: u32v(1),
                ..Thresholds::default()
            },
        ],
        ..CircuitBreakers::default()
    };
    c.circuit_breakers = Some(limits(2));
    let b = seeded(&c, &one());
    let c1 = b.try_connection().unwrap();
    let c2 = b.try_connection().unwrap();
    assert!(b.try_connection().is_none());
    let pending = b.try_pending().unwrap();
    assert!(b.try_pending().is_none());
    // Raised in place: one more fits; lowered: none until enough are released.
    c.circuit_breakers = Some(limits(3));
    b.update(&c, Some(&one())).unwrap();
    let c3 = b.try_connection().unwrap();
    c.circuit_breakers = Some(limits(1));
    b.update(&c, Some(&one())).unwrap();
    drop((c1, c3));
    assert!(b.try_connection().is_none());
    drop(c2);
    assert!(b.try_connection().is_some());
    drop(pending);
}

#[test]
fn connect_timeout_and_requests_per_connection() {
    let mut c = eds(LbPolicy::RoundRobin);
    let b = Balancer::new(&c, None).unwrap();
    assert_eq!(b.connect_timeout(), Duration::from_secs(5));
    assert_eq!(b.max_requests_per_connection(), None);
    c.connect_timeout = Some(PbDuration {
        seconds: 1,
        nanos: 500_000_000,
    });
    let opts = HttpProtocolOptions {
        common_http_protocol_options: Some(CoreHttpOptions {
            max_requests_per_connection: u32v(100),
            ..CoreHttpOptions::default()
        }),
        ..HttpProtocolOptions::default()
    };
    c.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        pack_any(opts),
    );
    b.update(&c, None).unwrap();
    assert_eq!(b.connect_timeout(), Duration::from_millis(1500));
    assert_eq!(b.max_requests_per_connection(), Some(100));
}

/// The shape `control-plane/src/xds/generate/clusters.rs` emits for a
/// DestinationRule with every traffic policy it maps.
#[test]
fn a_control_plane_cluster_is_accepted() {
    let c = Cluster {
        name: NAME.into(),
        alt_stat_name: NAME.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: None,
            service_name: NAME.into(),
        }),
        connect_timeout: secs(10),
        lb_policy: LbPolicy::LeastRequest as i32,
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                max_connections: u32v(10),
                max_pending_requests: u32v(5),
                max_requests: u32v(20),
                max_retries: u32v(2),
                ..Thresholds::default()
            }],
            ..CircuitBreakers::default()
        }),
        outlier_detection: Some(OutlierDetection {
            consecutive_5xx: u32v(7),
            consecutive_gateway_failure: u32v(3),
            enforcing_consecutive_gateway_failure: u32v(100),
            interval: secs(5),
            base_ejection_time: secs(15),
            max_ejection_percent: u32v(100),
            ..OutlierDetection::default()
        }),
        common_lb_config: Some(CommonLbConfig {
            locality_config_specifier: Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(
                LocalityWeightedLbConfig {},
            )),
            ..CommonLbConfig::default()
        }),
        ..Cluster::default()
    };
    let a = cla(vec![
        locality(0, Some(1), "z1", vec![ep("10.0.0.1:80")]),
        locality(1, Some(1), "z2", vec![ep("10.0.1.1:80")]),
    ]);
    let b = Balancer::new(&c, Some(&a)).unwrap();
    assert_eq!(pick(&b).address(), sa("10.0.0.1:80"));
    let s = b.status();
    assert_eq!(s.lb_policy, "LEAST_REQUEST");
    assert_eq!(s.circuit_breakers.max_retries, 2);
    assert_eq!(s.circuit_breakers.max_requests, 20);
}

#[test]
fn status_serializes_for_the_admin_page() {
    let b = seeded(&eds(LbPolicy::RoundRobin), &one());
    let _p = pick(&b);
    let json = serde_json::to_value(b.status()).unwrap();
    assert_eq!(json["name"], NAME);
    assert_eq!(json["priorities"][0]["load_percent"], 100);
    let e = &json["endpoints"][0];
    assert_eq!(e["address"], "10.0.0.1:80");
    assert_eq!(e["health"], "HEALTHY");
    assert_eq!(e["locality"]["zone"], "z1");
    assert_eq!(e["active_requests"], 1);
    assert_eq!(e["outlier"]["ejected"], false);
}

#[test]
fn odd_but_valid_input_does_not_panic() {
    // Priority gaps, empty localities, huge weights, an empty assignment.
    let a = cla(vec![
        locality(
            3,
            None,
            "z",
            vec![ep_w("10.0.0.1:80", u32::MAX), ep_w("10.0.0.2:80", u32::MAX)],
        ),
        locality(0, Some(u32::MAX), "y", vec![]),
    ]);
    let mut heavy = a.clone();
    heavy.policy = Some(ClaPolicy {
        overprovisioning_factor: u32v(u32::MAX),
        weighted_priority_health: true,
        ..ClaPolicy::default()
    });
    for policy in [
        LbPolicy::RoundRobin,
        LbPolicy::Random,
        LbPolicy::LeastRequest,
    ] {
        let b = seeded(&eds(policy), &a);
        assert_eq!(counts(&b, 100).len(), 2);
        assert_eq!(counts(&seeded(&eds(policy), &heavy), 100).len(), 2);
        let b = seeded(&eds(policy), &cla(vec![]));
        assert!(b.pick(&PickContext::default()).is_none());
        assert!(b.status().endpoints.is_empty());
    }
}
