use std::net::IpAddr;

use isthmus_api::load::load_yaml;
use isthmus_config::Store;

use super::vip::{self, VipRange};
use super::*;
use crate::registry::{ClusterContext, Registry};

fn registry(yaml: &str) -> Registry {
    let loaded = load_yaml(Some("test.yaml"), yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let store = Store::new();
    store.replace_origin("test.yaml", loaded.resources);
    let ctx = ClusterContext {
        cluster: "east".into(),
        network: "net-east".into(),
        domain: "cluster.local".into(),
    };
    Registry::build(&store.snapshot(), &ctx)
}

/// A local service (WorkloadEntries) and its imported global entry: west's gateway
/// (healthy) and central's (weight 0: no healthy endpoint there).
const FEDERATED: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-1, namespace: default}
spec: {address: 10.0.0.1, labels: {app: reviews}, locality: us-east/us-east-1a}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews-global, namespace: default}
spec:
  hosts: [reviews.default.global]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints:
  - {address: 192.0.2.10, locality: us-west/us-west-1a, weight: 3, labels: {topology.istio.io/cluster: west}}
  - {address: 192.0.2.20, locality: eu/eu-1a, weight: 0, labels: {topology.istio.io/cluster: central}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings-global, namespace: default}
spec:
  hosts: [ratings.default.global]
  addresses: [240.240.7.7]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints:
  - {address: 192.0.2.30, labels: {topology.istio.io/cluster: west}}
"#;

#[test]
fn global_services_carry_vips_ports_and_per_cluster_health() {
    let range = VipRange::default();
    let s = build::snapshot(&registry(FEDERATED), "east", &range, 7);
    assert_eq!(s.version, 7);
    assert_eq!(s.cluster, "east");
    let names: Vec<_> = s
        .services
        .iter()
        .map(|s| format!("{}.{}", s.name, s.namespace))
        .collect();
    assert_eq!(names, ["ratings.default", "reviews.default"]);

    let ratings = &s.services[0];
    assert_eq!(ratings.vips, ["240.240.7.7"], "declared addresses are kept");

    let reviews = &s.services[1];
    assert_eq!(reviews.vips.len(), 1);
    assert!(range.contains(reviews.vips[0].parse().unwrap()));
    assert_eq!(reviews.ports.len(), 1);
    assert_eq!(
        (reviews.ports[0].name.as_str(), reviews.ports[0].number),
        ("http", 9080)
    );
    let clusters: Vec<_> = reviews
        .clusters
        .iter()
        .map(|c| {
            (
                c.cluster.as_str(),
                c.healthy,
                c.total,
                c.endpoints[0].address.as_str(),
            )
        })
        .collect();
    assert_eq!(
        clusters,
        [
            ("central", 0, 1, "192.0.2.20"),
            ("east", 1, 1, "10.0.0.1"),
            ("west", 1, 1, "192.0.2.10")
        ]
    );
    assert_eq!(
        reviews.clusters[2].endpoints[0].locality,
        "us-west/us-west-1a"
    );
    assert_eq!(reviews.clusters[2].endpoints[0].weight, 3);
}

#[test]
fn vips_are_a_function_of_the_name_set() {
    let range = VipRange::default();
    let names = |v: &[&str]| -> Vec<(String, Vec<IpAddr>)> {
        v.iter().map(|n| (n.to_string(), vec![])).collect()
    };
    let a = vip::allocate(&range, &names(&["a.x.global", "b.x.global", "c.x.global"]));
    // Another cluster listing the names in another order gets the same VIPs.
    let b = vip::allocate(&range, &names(&["c.x.global", "a.x.global", "b.x.global"]));
    assert_eq!(a[0], b[1]);
    assert_eq!(a[1], b[2]);
    assert_eq!(a[2], b[0]);
    let all: std::collections::HashSet<_> = a.iter().flatten().collect();
    assert_eq!(all.len(), 3);
}

#[test]
fn collisions_resolve_deterministically_and_uniquely() {
    // A /30 has 2 usable addresses: the third name finds the range full.
    let range: VipRange = "10.1.0.0/30".parse().unwrap();
    let names: Vec<(String, Vec<IpAddr>)> = ["a", "b", "c"]
        .iter()
        .map(|n| (format!("{n}.x.global"), vec![]))
        .collect();
    let got = vip::allocate(&range, &names);
    let mut assigned: Vec<IpAddr> = got.iter().flatten().copied().collect();
    assigned.sort();
    assert_eq!(
        assigned,
        [
            "10.1.0.1".parse::<IpAddr>().unwrap(),
            "10.1.0.2".parse().unwrap()
        ]
    );
    assert!(
        got[2].is_empty(),
        "the last name in order gets none: {got:?}"
    );
    // A declared address inside the range is reserved before hashing.
    let mut names = names;
    names[2].1 = vec!["10.1.0.1".parse().unwrap()];
    let got = vip::allocate(&range, &names);
    assert_eq!(got[2], ["10.1.0.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(got[0], ["10.1.0.2".parse::<IpAddr>().unwrap()]);
    assert!(got[1].is_empty());
}

#[test]
fn ten_thousand_names_get_unique_vips_in_a_slash_16() {
    let range = VipRange::default();
    let names: Vec<(String, Vec<IpAddr>)> = (0..10_000)
        .map(|i| (format!("svc-{i}.bench.global"), vec![]))
        .collect();
    let got = vip::allocate(&range, &names);
    let unique: std::collections::HashSet<_> = got.iter().flatten().collect();
    assert_eq!(unique.len(), 10_000);
    assert!(unique.iter().all(|ip| range.contains(**ip)));
}

#[test]
fn ranges_are_validated() {
    assert!("240.240.0.0/16".parse::<VipRange>().is_ok());
    assert!("fd00:240::/64".parse::<VipRange>().is_ok());
    assert!("240.240.0.0/31".parse::<VipRange>().is_err());
    assert!("240.240.0.0".parse::<VipRange>().is_err());
    assert_eq!(
        "240.240.9.9/16".parse::<VipRange>().unwrap().to_string(),
        "240.240.0.0/16"
    );
}

#[tokio::test(start_paused = true)]
async fn stream_sends_a_snapshot_at_once_and_after_each_change() {
    use crate::xds::generate::MeshConfig;
    let mesh = MeshConfig {
        cluster: ClusterContext {
            cluster: "east".into(),
            network: "net-east".into(),
            domain: "cluster.local".into(),
        },
        ..MeshConfig::default()
    };
    let store = Store::new();
    let pc = |store: &Store| Arc::new(PushContext::build(&store.snapshot(), mesh.clone()));
    let (tx, rx) = watch::channel(pc(&store));
    let shutdown = CancellationToken::new();
    let feed = DnsFeedService::spawn(rx, FeedOptions::default(), shutdown.clone());
    let mut stream = feed
        .watch(Request::new(proto::WatchRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!((first.version, first.services.len()), (1, 0));

    let loaded = load_yaml(Some("test.yaml"), FEDERATED);
    store.replace_origin("test.yaml", loaded.resources);
    tx.send(pc(&store)).unwrap();
    let second = stream.next().await.unwrap().unwrap();
    assert_eq!((second.version, second.services.len()), (2, 2));

    // A push context with the same services sends nothing new.
    tx.send(pc(&store)).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(feed.current().version, 2);

    shutdown.cancel();
    assert!(stream.next().await.is_none(), "streams end on shutdown");
}
