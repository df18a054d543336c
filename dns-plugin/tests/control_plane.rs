//! The real control plane (directory config) feeding the real DNS server:
//! writing WorkloadEntries and ServiceEntries changes the answers.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use isthmus_control_plane::run::{Options, Source, start};
use isthmus_dns::zone::{Policy, ZoneConfig};
use support::*;
use tokio_util::sync::CancellationToken;

const LOCAL: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: helloworld, namespace: sample}
spec:
  hosts: [helloworld.sample.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5000, name: http}]
  workloadSelector: {labels: {app: helloworld}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: helloworld-v1, namespace: sample}
spec: {address: 127.0.10.11, labels: {app: helloworld}, locality: us-east/us-east-1a}
"#;

/// What the federation controller would write: west's gateway for the service,
/// weight = healthy endpoints there (0 = none).
fn imported(west_weight: u32) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: helloworld-global, namespace: sample}}
spec:
  hosts: [helloworld.sample.global]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 5000, name: http}}]
  endpoints:
  - {{address: 127.0.20.1, locality: us-west/us-west-1a, weight: {west_weight}, labels: {{topology.istio.io/cluster: west}}}}
"#
    )
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never: {what}");
}

#[tokio::test]
async fn control_plane_feed_drives_answers() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(config.join("local.yaml"), LOCAL).unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(&tokens, "tok: {namespace: sample, serviceAccount: sleep}\n").unwrap();
    let shutdown = CancellationToken::new();
    let (bound, run) = start(
        Options {
            cluster: "east".into(),
            network: "net-east".into(),
            domain: "cluster.local".into(),
            source: Source::Directory(config.clone()),
            ca_dir: None,
            ca_secret: None,
            trust_domain: "east.isthmus.local".into(),
            bootstrap_tokens: Some(tokens),
            xds_listen: "127.0.0.1:0".parse().unwrap(),
            debug_listen: "127.0.0.1:0".parse().unwrap(),
            drain_grace: Duration::from_secs(1),
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let control_plane = tokio::spawn(run);

    // Two DNS servers: VIP answers for .global, endpoint answers for clusterset.local.
    let mut o = options("east", bound.xds, Policy::Vip);
    o.locality = "us-east/us-east-1a".parse().unwrap();
    o.zones = vec![
        ZoneConfig::new("global.", Policy::Vip).unwrap(),
        ZoneConfig::new("clusterset.local.", Policy::Endpoints).unwrap(),
    ];
    let dns = Dns::start(o).await;
    let a = |name: &'static str| {
        let addr = dns.addr;
        async move {
            let (m, _) = udp(addr, &query(name, RecordType::A, None)).await;
            (m.metadata.response_code, addresses(&m))
        }
    };

    // The Kubernetes-style service is answered in both zones.
    eventually("local service in DNS", || async {
        a("helloworld.sample.svc.clusterset.local.").await.1 == ips(&["127.0.10.11"])
    })
    .await;
    let (rcode, vip) = a("helloworld.sample.global.").await;
    assert_eq!(rcode, ResponseCode::NoError);
    assert_eq!(vip.len(), 1);
    assert!(
        matches!(vip[0], IpAddr::V4(v) if v.octets()[..2] == [240, 240]),
        "{vip:?}"
    );

    // The federation controller imports west (healthy): local first, then west.
    std::fs::write(config.join("imported.yaml"), imported(2)).unwrap();
    eventually("west added", || async {
        a("helloworld.sample.svc.clusterset.local.").await.1 == ips(&["127.0.10.11", "127.0.20.1"])
    })
    .await;
    // The VIP does not move when endpoints change.
    assert_eq!(a("helloworld.sample.global.").await.1, vip);

    // Local goes away: only west is left.
    std::fs::write(
        config.join("local.yaml"),
        LOCAL.replace("127.0.10.11", "127.0.10.11, weight: 0"),
    )
    .unwrap();
    eventually("east unhealthy, west only", || async {
        a("helloworld.sample.svc.clusterset.local.").await.1 == ips(&["127.0.20.1"])
    })
    .await;
    // And back.
    std::fs::write(config.join("local.yaml"), LOCAL).unwrap();
    eventually("east back", || async {
        a("helloworld.sample.svc.clusterset.local.").await.1 == ips(&["127.0.10.11", "127.0.20.1"])
    })
    .await;

    // A service removed from the registry disappears.
    std::fs::remove_file(config.join("imported.yaml")).unwrap();
    std::fs::remove_file(config.join("local.yaml")).unwrap();
    eventually("service gone", || async {
        a("helloworld.sample.global.").await.0 == ResponseCode::NXDomain
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), control_plane)
        .await
        .expect("control plane stops although a DNS server is still watching")
        .unwrap()
        .unwrap();
}
