//! The certificate service over real gRPC on loopback: a tonic client, the tonic server,
//! the cluster CA, and both authenticators (bootstrap tokens; TokenReview against the fake
//! Kubernetes API server).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use isthmus_control_plane::ca::proto::CertificateRequest;
use isthmus_control_plane::ca::proto::certificate_service_client::CertificateServiceClient;
use isthmus_control_plane::ca::{
    Authenticator, BootstrapTokens, Caller, CertificateServer, TokenReviewAuthenticator,
};
use isthmus_identity::tool::{create_intermediate, create_root};
use isthmus_identity::{
    CertificateDer, ClusterCa, SpiffeId, TrustBundle, UnixTime, certs_from_pem,
    verify_workload_chain,
};
use isthmus_test_support::apiserver::{FakeApiServer, FakeToken};
use rcgen::{CertificateParams, KeyPair, SanType};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Request};

const TD: &str = "east.isthmus.local";

struct Harness {
    addr: SocketAddr,
    roots: TrustBundle,
    task: JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn cluster_ca() -> (Arc<ClusterCa>, TrustBundle) {
    let root = create_root("test root").unwrap();
    let roots = root.trust_bundle().unwrap();
    let east = create_intermediate(&root, "east", TD).unwrap();
    (Arc::new(east.cluster_ca(&roots).unwrap()), roots)
}

async fn start(auth: Arc<dyn Authenticator>) -> Harness {
    let (ca, roots) = cluster_ca();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let service = CertificateServer::new(ca, auth).into_service();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    Harness { addr, roots, task }
}

fn bootstrap() -> Arc<dyn Authenticator> {
    Arc::new(BootstrapTokens::from_entries([
        ("token-sleep".to_owned(), Caller::new("sample", "sleep")),
        ("token-reviews".to_owned(), Caller::new("sample", "reviews")),
    ]))
}

async fn client(addr: SocketAddr) -> CertificateServiceClient<Channel> {
    CertificateServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// A CSR that asks for someone else's identity and a DNS name.
fn csr_claiming(uri: &str) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["reviews.sample.svc".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::URI(uri.try_into().unwrap()));
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn request(token: Option<&str>, csr: String, validity_seconds: i64) -> Request<CertificateRequest> {
    let mut request = Request::new(CertificateRequest {
        csr,
        validity_seconds,
    });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

fn ders(pems: &[String]) -> Vec<CertificateDer<'static>> {
    pems.iter()
        .flat_map(|pem| certs_from_pem(pem).unwrap())
        .collect()
}

fn at(offset: Duration) -> UnixTime {
    UnixTime::since_unix_epoch(
        (SystemTime::now() + offset)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap(),
    )
}

#[tokio::test]
async fn csr_flow_returns_a_chain_that_verifies() {
    let harness = start(bootstrap()).await;
    let response = client(harness.addr)
        .await
        .create_certificate(request(
            Some("token-sleep"),
            csr_claiming("spiffe://east.isthmus.local/ns/sample/sa/sleep"),
            0,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.cert_chain.len(), 2, "leaf + intermediate, no root");
    assert_eq!(response.trust_bundle, harness.roots.root_pems());

    let bundle = TrustBundle::from_pem(&response.trust_bundle.concat()).unwrap();
    let chain = ders(&response.cert_chain);
    let sleep = SpiffeId::new(TD, "sample", "sleep").unwrap();
    assert_eq!(
        verify_workload_chain(&chain, &bundle, UnixTime::now()),
        Ok(sleep)
    );
    // Default lifetime: 24 hours.
    assert!(verify_workload_chain(&chain, &bundle, at(Duration::from_secs(23 * 3600))).is_ok());
    assert!(verify_workload_chain(&chain, &bundle, at(Duration::from_secs(25 * 3600))).is_err());
}

#[tokio::test]
async fn identity_follows_the_token_not_the_csr() {
    let harness = start(bootstrap()).await;
    let mut client = client(harness.addr).await;
    // reviews' token with a CSR asking for sleep's identity (and for another trust domain).
    for claimed in [
        "spiffe://east.isthmus.local/ns/sample/sa/sleep",
        "spiffe://west.isthmus.local/ns/sample/sa/sleep",
        "spiffe://east.isthmus.local/ns/istio-system/sa/istiod",
    ] {
        let response = client
            .create_certificate(request(Some("token-reviews"), csr_claiming(claimed), 0))
            .await
            .unwrap()
            .into_inner();
        let chain = ders(&response.cert_chain);
        assert_eq!(
            verify_workload_chain(&chain, &harness.roots, UnixTime::now()),
            Ok(SpiffeId::new(TD, "sample", "reviews").unwrap()),
            "{claimed}"
        );
        assert_eq!(
            isthmus_identity::peer_identity(&chain[0])
                .unwrap()
                .to_string(),
            "spiffe://east.isthmus.local/ns/sample/sa/reviews"
        );
    }
}

#[tokio::test]
async fn requested_validity_is_honoured_and_capped() {
    let harness = start(bootstrap()).await;
    let mut client = client(harness.addr).await;
    let issue = |validity| {
        request(
            Some("token-sleep"),
            csr_claiming("spiffe://x/ns/a/sa/b"),
            validity,
        )
    };

    let short = client
        .create_certificate(issue(3600))
        .await
        .unwrap()
        .into_inner();
    let chain = ders(&short.cert_chain);
    assert!(verify_workload_chain(&chain, &harness.roots, at(Duration::from_secs(3000))).is_ok());
    assert!(verify_workload_chain(&chain, &harness.roots, at(Duration::from_secs(3700))).is_err());

    let long = client
        .create_certificate(issue(i64::MAX))
        .await
        .unwrap()
        .into_inner();
    let chain = ders(&long.cert_chain);
    let week = 7 * 24 * 3600;
    assert!(
        verify_workload_chain(&chain, &harness.roots, at(Duration::from_secs(week - 60))).is_ok()
    );
    assert!(
        verify_workload_chain(&chain, &harness.roots, at(Duration::from_secs(week + 60))).is_err()
    );

    let err = client.create_certificate(issue(-1)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("validity_seconds"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn missing_or_bad_credentials_are_unauthenticated() {
    let harness = start(bootstrap()).await;
    let mut client = client(harness.addr).await;
    let csr = || csr_claiming("spiffe://east.isthmus.local/ns/sample/sa/sleep");

    let err = client
        .create_certificate(request(None, csr(), 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("missing credentials"),
        "{}",
        err.message()
    );

    for token in ["token-sleepy", "token-slee", "", "TOKEN-SLEEP"] {
        let err = client
            .create_certificate(request(Some(token), csr(), 0))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}");
    }

    let mut basic = request(None, csr(), 0);
    basic
        .metadata_mut()
        .insert("authorization", "Basic dG9rZW4tc2xlZXA=".parse().unwrap());
    let err = client.create_certificate(basic).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn garbage_csr_is_an_invalid_argument() {
    let harness = start(bootstrap()).await;
    let mut client = client(harness.addr).await;
    for csr in [
        String::new(),
        "not a csr".to_owned(),
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".to_owned(),
        harness.roots.to_pem(),
    ] {
        let err = client
            .create_certificate(request(Some("token-sleep"), csr.clone(), 0))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{csr:?}");
        assert!(
            err.message()
                .starts_with("invalid certificate signing request"),
            "{}",
            err.message()
        );
    }
    // A bad CSR with a bad token is still refused for the token first.
    let err = client
        .create_certificate(request(Some("nope"), "garbage".to_owned(), 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn token_review_against_the_kubernetes_api() {
    let apiserver = FakeApiServer::start().await;
    apiserver.set_token_reviews([
        (
            "sa-sleep".to_owned(),
            FakeToken::service_account("sample", "sleep", &["istio-ca"]),
        ),
        (
            "sa-for-another-audience".to_owned(),
            FakeToken::service_account("sample", "sleep", &["vault"]),
        ),
        (
            "user-alice".to_owned(),
            FakeToken {
                username: "alice".to_owned(),
                audiences: vec!["istio-ca".to_owned()],
            },
        ),
    ]);
    let auth = TokenReviewAuthenticator::new(apiserver.client(), "istio-ca");
    let harness = start(Arc::new(auth)).await;
    let mut client = client(harness.addr).await;
    let csr = || csr_claiming("spiffe://east.isthmus.local/ns/kube-system/sa/admin");

    let response = client
        .create_certificate(request(Some("sa-sleep"), csr(), 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        verify_workload_chain(&ders(&response.cert_chain), &harness.roots, UnixTime::now()),
        Ok(SpiffeId::new(TD, "sample", "sleep").unwrap())
    );
    let reviews: Vec<_> = apiserver
        .requests()
        .into_iter()
        .filter(|r| r.path == "/apis/authentication.k8s.io/v1/tokenreviews")
        .collect();
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0].method, "POST");

    for (token, expected) in [
        ("sa-unknown", "invalid bearer token"),
        (
            "sa-for-another-audience",
            "invalid for the target audiences",
        ),
        ("user-alice", "not to a service account"),
    ] {
        let err = client
            .create_certificate(request(Some(token), csr(), 0))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token}");
        assert!(
            err.message().contains(expected),
            "{token}: {}",
            err.message()
        );
    }

    // The API server is down: the token cannot be checked, so retry later.
    apiserver.stop().await;
    let err = client
        .create_certificate(request(Some("sa-sleep"), csr(), 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
}

#[tokio::test]
async fn bootstrap_token_file_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.yaml");
    std::fs::write(
        &path,
        "# bootstrap tokens\n\"tok-1\": {namespace: sample, serviceAccount: sleep}\n",
    )
    .unwrap();
    let tokens = Arc::new(BootstrapTokens::load(&path).unwrap());
    assert_eq!(tokens.len(), 1);
    assert_eq!(
        tokens.authenticate("tok-1").await,
        Ok(Caller::new("sample", "sleep"))
    );
    assert!(!tokens.reload().unwrap(), "unchanged file");

    // JSON is YAML too.
    std::fs::write(
        &path,
        r#"{"tok-2": {"namespace": "sample", "serviceAccount": "reviews"}}"#,
    )
    .unwrap();
    assert!(tokens.reload().unwrap());
    assert!(tokens.authenticate("tok-1").await.is_err());
    assert_eq!(
        tokens.authenticate("tok-2").await,
        Ok(Caller::new("sample", "reviews"))
    );

    // A broken file is reported, naming it, and the previous tokens stay in effect.
    for (contents, expected) in [
        ("tok-3: {namespace: sample}\n", "serviceAccount"),
        (
            "tok-3: {namespace: sample, serviceAccount: a, extra: 1}\n",
            "extra",
        ),
        (
            "tok-3: {namespace: a/b, serviceAccount: sleep}\n",
            "entry #1 (a/b/sleep)",
        ),
        (
            "\"\": {namespace: a, serviceAccount: b}\n",
            "the token is empty",
        ),
        ("- just\n- a list\n", "expected a YAML or JSON map"),
        (
            "tok-3: {namespace: a, serviceAccount: b}\ntok-3: {namespace: a, serviceAccount: c}\n",
            "a token appears more than once",
        ),
        (
            "[tok-3]: {namespace: a, serviceAccount: b}\n",
            "the token must be a string",
        ),
    ] {
        std::fs::write(&path, contents).unwrap();
        let err = tokens.reload().unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(expected), "{contents:?}: {err}");
        assert!(!err.contains("tok-3"), "tokens are never printed: {err}");
        assert!(tokens.authenticate("tok-2").await.is_ok());
    }

    // The periodic reloader picks up a fixed file.
    std::fs::write(
        &path,
        "tok-4: {namespace: sample, serviceAccount: ratings}\n",
    )
    .unwrap();
    let reloader = Arc::clone(&tokens).spawn_reloader(Duration::from_millis(20));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokens.authenticate("tok-4").await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reloader did not reload"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reloader.abort();

    let missing = BootstrapTokens::load(dir.path().join("nope.yaml")).unwrap_err();
    assert!(missing.to_string().contains("nope.yaml"), "{missing}");
}
