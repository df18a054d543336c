//! Root rotation without a restart: the whole control plane on loopback with
//! a `cacerts` directory and an extra-roots file. A sidecar ADS client
//! subscribed to SDS `ROOTCA` receives every new bundle; after the
//! intermediate is swapped, a CSR is signed by the new one and its chain
//! verifies (webpki) against the new root only.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use isthmus_control_plane::ca::proto::CertificateRequest;
use isthmus_control_plane::ca::proto::certificate_service_client::CertificateServiceClient;
use isthmus_control_plane::run::{MoreOptions, Options, Source, start_full};
use isthmus_control_plane::xds::SECRET;
use isthmus_identity::tool::{RootCa, create_intermediate, create_root, write_cacerts};
use isthmus_identity::{
    CertificateDer, SpiffeId, TrustBundle, UnixTime, certs_from_pem, verify_workload_chain,
};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

#[allow(dead_code)]
mod fixtures;

const TD: &str = "east.isthmus.local";

/// Writes a `cacerts` directory: an intermediate under `issuer`, trusting `roots`.
fn cacerts(dir: &std::path::Path, issuer: &RootCa, roots: &[&RootCa]) -> Vec<u8> {
    let inter = create_intermediate(issuer, "east", TD).unwrap();
    let bundle = roots
        .iter()
        .map(|r| r.trust_bundle().unwrap())
        .reduce(|a, b| a.merged(&b))
        .unwrap();
    // Staged and renamed in, as an operator (or `isthmus lab rotate-root`) does.
    let staged = dir.with_extension("next");
    let _ = std::fs::remove_dir_all(&staged);
    write_cacerts(&staged, &inter, &bundle).unwrap();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&staged, dir).unwrap();
    certs_from_pem(inter.cert_pem()).unwrap()[0].to_vec()
}

/// The roots of the next `ROOTCA` response (ACKed).
async fn next_bundle(
    rx: &mut tonic::Streaming<DiscoveryResponse>,
    tx: &mpsc::Sender<DiscoveryRequest>,
) -> TrustBundle {
    let r = tokio::time::timeout(Duration::from_secs(10), rx.message())
        .await
        .expect("SDS within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(r.type_url, SECRET);
    tx.send(sds_request(&r.nonce, &r.version_info))
        .await
        .unwrap();
    let s = Secret::decode(r.resources[0].value.as_slice()).unwrap();
    let Some(secret::Type::ValidationContext(vc)) = s.r#type else {
        panic!("{s:?}")
    };
    let Some(Specifier::InlineString(pem)) = vc.trusted_ca.and_then(|d| d.specifier) else {
        panic!("no inline roots")
    };
    TrustBundle::from_pem(&pem).unwrap()
}

fn sds_request(nonce: &str, version: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(fixtures::sleep_proxy().to_node()),
        type_url: SECRET.into(),
        resource_names: vec!["ROOTCA".into()],
        response_nonce: nonce.into(),
        version_info: version.into(),
        ..DiscoveryRequest::default()
    }
}

/// A CSR for sleep; the chain the CA answers with.
async fn certificate(addr: std::net::SocketAddr) -> Vec<CertificateDer<'static>> {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let mut request = tonic::Request::new(CertificateRequest {
        csr,
        validity_seconds: 0,
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer tok".parse().unwrap());
    let mut client = CertificateServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let response = client
        .create_certificate(request)
        .await
        .unwrap()
        .into_inner();
    response
        .cert_chain
        .iter()
        .flat_map(|pem| certs_from_pem(pem).unwrap())
        .collect()
}

#[tokio::test]
async fn roots_and_intermediate_reload_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(&tokens, "tok: {namespace: sample, serviceAccount: sleep}\n").unwrap();
    let ca_dir = dir.path().join("cacerts");
    let extra = dir.path().join("peer-roots.pem");
    let (old, next, peer) = (
        create_root("old root").unwrap(),
        create_root("next root").unwrap(),
        create_root("peer root").unwrap(),
    );
    let first_intermediate = cacerts(&ca_dir, &old, &[&old]);

    let shutdown = CancellationToken::new();
    let options = Options {
        cluster: "east".into(),
        network: "net-east".into(),
        domain: "cluster.local".into(),
        source: Source::Directory(config),
        ca_dir: Some(ca_dir.clone()),
        ca_secret: None,
        trust_domain: "ignored".into(),
        bootstrap_tokens: Some(tokens),
        xds_listen: "127.0.0.1:0".parse().unwrap(),
        debug_listen: "127.0.0.1:0".parse().unwrap(),
        drain_grace: Duration::from_secs(1),
    };
    let more = MoreOptions {
        extra_roots: Some(extra.clone()),
        ca_reload_every: Duration::from_millis(100),
        ..MoreOptions::default()
    };
    let (bound, run) = start_full(options, more, shutdown.clone()).await.unwrap();
    let server = tokio::spawn(run);

    let mut ads = AggregatedDiscoveryServiceClient::connect(format!("http://{}", bound.xds))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(sds_request("", "")).await.unwrap();
    let mut responses = ads
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let bundle = next_bundle(&mut responses, &tx).await;
    assert_eq!(bundle.roots(), old.trust_bundle().unwrap().roots());
    let chain = certificate(bound.xds).await;
    assert_eq!(chain[1].as_ref(), first_intermediate.as_slice());

    // Step 1 of a rotation: both roots. A file mid-rewrite first (the
    // previous CA stays and nothing is pushed), then the real one.
    let started = Instant::now();
    std::fs::write(ca_dir.join("root-cert.pem"), "-----BEGIN CERT").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bundle_pem = old
        .trust_bundle()
        .unwrap()
        .merged(&next.trust_bundle().unwrap())
        .to_pem();
    std::fs::write(ca_dir.join("root-cert.pem"), &bundle_pem).unwrap();
    let bundle = next_bundle(&mut responses, &tx).await;
    assert_eq!(bundle.len(), 2, "old and next root");
    eprintln!("two roots served {:?} after the change", started.elapsed());

    // Peers' roots from the extra-roots file join the bundle.
    std::fs::write(&extra, peer.cert_pem()).unwrap();
    let bundle = next_bundle(&mut responses, &tx).await;
    assert_eq!(bundle.len(), 3);
    assert!(bundle.contains(&peer.trust_bundle().unwrap().roots()[0]));

    // Step 2: an intermediate under the next root. CSRs from then on are
    // signed by it; the chain verifies against the next root alone and not
    // against the old one.
    let second_intermediate = cacerts(&ca_dir, &next, &[&old, &next]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let chain = loop {
        let chain = certificate(bound.xds).await;
        if chain[1].as_ref() == second_intermediate.as_slice() {
            break chain;
        }
        assert_eq!(chain[1].as_ref(), first_intermediate.as_slice());
        assert!(
            Instant::now() < deadline,
            "the new intermediate was never used"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sleep = SpiffeId::new(TD, "sample", "sleep").unwrap();
    assert_eq!(
        verify_workload_chain(&chain, &next.trust_bundle().unwrap(), UnixTime::now()),
        Ok(sleep)
    );
    assert!(verify_workload_chain(&chain, &old.trust_bundle().unwrap(), UnixTime::now()).is_err());

    // Dropping the old root is pushed too.
    cacerts(&ca_dir, &next, &[&next]);
    let bundle = next_bundle(&mut responses, &tx).await;
    assert_eq!(bundle.len(), 2, "next and peer root");
    assert!(!bundle.contains(&old.trust_bundle().unwrap().roots()[0]));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
