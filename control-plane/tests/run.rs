//! The whole control plane, started as `isthmus control-plane` starts it, on
//! loopback: a sidecar ADS client syncs, sees a config-file change, and the
//! debug endpoints report it; a workload gets its certificate with its token.

use std::collections::BTreeSet;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use isthmus_control_plane::ca::proto::CertificateRequest;
use isthmus_control_plane::ca::proto::certificate_service_client::CertificateServiceClient;
use isthmus_control_plane::run::{Options, Source, start};
use isthmus_control_plane::xds::CLUSTER;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

#[allow(dead_code)]
mod fixtures;

const SERVICES: &str = r#"
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
spec: {address: 127.0.10.11, labels: {app: helloworld, version: v1}, serviceAccount: helloworld}
"#;

const BROKEN: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x, namespace: sample}\nspec: {hosts: [x], http: [{route: [{destination: {host: x}, weight: 50}, {destination: {host: y}, weight: 20}]}]}\n";

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        buf.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

async fn next(rx: &mut tonic::Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(10), rx.message())
        .await
        .expect("response within 10s")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn control_plane_serves_sidecars_and_reacts_to_config_changes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(config.join("services.yaml"), SERVICES).unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        "tok-sleep: {namespace: sample, serviceAccount: sleep}\n",
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let options = Options {
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
    };
    let (bound, run) = start(options, shutdown.clone()).await.unwrap();
    let server = tokio::spawn(run);

    // Ready once the directory is loaded.
    let mut ready = 0;
    for _ in 0..100 {
        ready = http_get(bound.debug, "/ready").await.0;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 200);

    // A sidecar subscribes to clusters.
    let proxy = fixtures::sleep_proxy();
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", bound.xds))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(DiscoveryRequest {
        node: Some(proxy.to_node()),
        type_url: CLUSTER.into(),
        ..DiscoveryRequest::default()
    })
    .await
    .unwrap();
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut responses).await;
    let names = |r: &DiscoveryResponse| -> BTreeSet<String> {
        r.resources
            .iter()
            .map(|a| {
                isthmus_control_plane::xds::json::to_json(a).unwrap()["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert!(
        names(&first).contains("outbound|5000||helloworld.sample.svc.cluster.local"),
        "{:?}",
        names(&first)
    );
    tx.send(DiscoveryRequest {
        type_url: CLUSTER.into(),
        version_info: first.version_info.clone(),
        response_nonce: first.nonce.clone(),
        ..DiscoveryRequest::default()
    })
    .await
    .unwrap();

    // A new file adds a service: the sidecar gets it; a broken file changes nothing.
    std::fs::write(config.join("broken.yaml"), BROKEN).unwrap();
    std::fs::write(
        config.join("more.yaml"),
        SERVICES
            .replace("helloworld", "reviews")
            .replace("5000", "9080"),
    )
    .unwrap();
    let second = next(&mut responses).await;
    assert!(
        names(&second).contains("outbound|9080||reviews.sample.svc.cluster.local"),
        "{:?}",
        names(&second)
    );
    assert_ne!(second.version_info, first.version_info);
    tx.send(DiscoveryRequest {
        type_url: CLUSTER.into(),
        version_info: second.version_info.clone(),
        response_nonce: second.nonce.clone(),
        ..DiscoveryRequest::default()
    })
    .await
    .unwrap();

    // Debug endpoints: sync status shows the ACK, config dump has the clusters, registry the services.
    let mut acked = false;
    for _ in 0..100 {
        let (_, syncz) = http_get(bound.debug, "/debug/syncz").await;
        if syncz.contains(&format!("\"acked\": \"{}\"", second.version_info)) {
            acked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(acked, "syncz never showed the ACK");
    let (_, syncz) = http_get(bound.debug, "/debug/syncz").await;
    assert!(syncz.contains("\"protocol\": \"sotw\""), "{syncz}");
    let (status, dump) = http_get(
        bound.debug,
        &format!("/debug/config_dump?proxy={}", proxy.id.replace('~', "%7E")),
    )
    .await;
    assert_eq!(status, 200);
    assert!(dump.contains("outbound|9080||reviews.sample.svc.cluster.local"));
    let (_, registry) = http_get(bound.debug, "/debug/registryz").await;
    assert!(registry.contains("127.0.10.11"), "{registry}");
    let (_, metrics) = http_get(bound.debug, "/metrics").await;
    assert!(metrics.contains("isthmus_control_plane"), "{metrics}");

    // The certificate service issues the caller's own identity.
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(vec!["ignored.example.com".to_string()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let mut ca = CertificateServiceClient::connect(format!("http://{}", bound.xds))
        .await
        .unwrap();
    let mut req = tonic::Request::new(CertificateRequest {
        csr,
        validity_seconds: 3600,
    });
    req.metadata_mut()
        .insert("authorization", "Bearer tok-sleep".parse().unwrap());
    let chain = ca
        .create_certificate(req)
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    let leaf = isthmus_identity::certs_from_pem(&chain[0])
        .unwrap()
        .remove(0);
    assert_eq!(
        isthmus_identity::peer_identity(&leaf).unwrap().to_string(),
        "spiffe://east.isthmus.local/ns/sample/sa/sleep"
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("drained in time")
        .unwrap()
        .unwrap();
}
