use std::collections::BTreeMap;

use isthmus_api::networking::{LocalityFailover, LocalityLbSetting};

use super::endpoints::priority;
use super::*;
use crate::registry::Endpoint;
use crate::xds::ProxyRole;

fn proxy(locality: &str) -> ProxyInfo {
    ProxyInfo {
        id: "sidecar~~sleep.sample~sample.svc.cluster.local".into(),
        role: ProxyRole::Sidecar,
        ip: None,
        workload: "sleep".into(),
        namespace: "sample".into(),
        cluster: "east".into(),
        network: "net-east".into(),
        service_account: "sleep".into(),
        labels: BTreeMap::new(),
        locality: locality.parse().unwrap(),
    }
}

fn endpoint(locality: &str, cluster: &str, network: &str) -> Endpoint {
    Endpoint {
        network: network.into(),
        locality: locality.parse().unwrap(),
        ..Endpoint::for_test("10.0.0.1", cluster)
    }
    .with_topology_labels()
}

#[test]
fn cluster_names_round_trip() {
    let name = cluster_name(9080, Some("v1"), "reviews.default.svc.cluster.local");
    assert_eq!(name, "outbound|9080|v1|reviews.default.svc.cluster.local");
    assert_eq!(
        parse_cluster_name(&name),
        Some((9080, Some("v1"), "reviews.default.svc.cluster.local"))
    );
    assert_eq!(parse_cluster_name("outbound|80||a"), Some((80, None, "a")));
    assert_eq!(parse_cluster_name("inbound|80||"), None);
    assert_eq!(parse_cluster_name("outbound|x||a"), None);
}

#[test]
fn proximity_then_failover_region_then_the_rest() {
    let p = proxy("us-east/us-east-1a/rack-1");
    let setting = LocalityLbSetting {
        failover: vec![LocalityFailover {
            from: "us-east".into(),
            to: "eu-west".into(),
        }],
        ..LocalityLbSetting::default()
    };
    let prio = |loc: &str| priority(Some(&setting), &p, &endpoint(loc, "x", ""));
    assert_eq!(prio("us-east/us-east-1a/rack-1"), 0);
    assert_eq!(prio("us-east/us-east-1a/rack-2"), 1);
    assert_eq!(prio("us-east/us-east-1b"), 2);
    assert_eq!(
        prio("eu-west/eu-west-1a"),
        3,
        "the failover target comes before other regions"
    );
    assert_eq!(prio("us-west/us-west-1a"), 4);
    let disabled = LocalityLbSetting {
        enabled: Some(false),
        ..setting.clone()
    };
    assert_eq!(
        priority(
            Some(&disabled),
            &p,
            &endpoint("us-west/us-west-1a", "x", "")
        ),
        0
    );
}

#[test]
fn failover_priority_labels_rank_before_locality() {
    let p = proxy("us-east/us-east-1a");
    let setting = LocalityLbSetting {
        failover_priority: vec![
            "topology.istio.io/network".into(),
            "topology.istio.io/cluster".into(),
        ],
        ..LocalityLbSetting::default()
    };
    let prio = |loc: &str, cluster: &str, net: &str| {
        priority(Some(&setting), &p, &endpoint(loc, cluster, net))
    };
    let same_both = prio("us-west/us-west-1a", "east", "net-east");
    let same_net = prio("us-east/us-east-1a", "other", "net-east");
    let none = prio("us-east/us-east-1a", "west", "net-west");
    assert!(
        same_both < same_net && same_net < none,
        "{same_both} {same_net} {none}"
    );
}

#[test]
fn distribute_and_failover_together() {
    // Build a registry with endpoints in three regions and check the EDS priorities/weights.
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hw, namespace: sample}
spec:
  hosts: [hw.sample.global]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints:
  - {address: 10.0.0.1, locality: us-east/us-east-1a}
  - {address: 10.0.0.2, locality: us-east/us-east-1b}
  - {address: 10.0.0.3, locality: us-west/us-west-1a}
  - {address: 10.0.0.4, locality: eu-west/eu-west-1a}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hw, namespace: sample}
spec:
  host: hw.sample.global
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        distribute:
        - from: us-east/us-east-1a/*
          to: {"us-east/us-east-1a/*": 80, "us-east/us-east-1b/*": 20}
        failover: [{from: us-east, to: eu-west}]
"#;
    let loaded = isthmus_api::load::load_yaml(None, yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let store = isthmus_config::Store::new();
    store.replace_origin("t", loaded.resources);
    let pc = PushContext::build(&store.snapshot(), MeshConfig::default());
    let cla = endpoints::assignment(
        &pc,
        &proxy("us-east/us-east-1a"),
        "outbound|80||hw.sample.global",
    )
    .unwrap();
    let summary: Vec<(String, u32, u32)> = cla
        .endpoints
        .iter()
        .map(|l| {
            let loc = l.locality.clone().unwrap_or_default();
            (
                format!("{}/{}", loc.region, loc.zone),
                l.priority,
                l.load_balancing_weight.map_or(0, |w| w.value),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("us-east/us-east-1a".to_string(), 0, 80_000),
            ("us-east/us-east-1b".to_string(), 0, 20_000),
            ("eu-west/eu-west-1a".to_string(), 1, 1),
            ("us-west/us-west-1a".to_string(), 2, 1),
        ]
    );
}
