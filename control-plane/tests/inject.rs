//! The sidecar-injection webhook through the real control plane's HTTPS
//! server on loopback: AdmissionReview fixtures (as the API server sends them,
//! in `tests/inject/`) in, AdmissionReviews out; the returned JSON Patch is
//! applied and the result must be a valid Pod (k8s-openapi types, no field
//! lost) that a second review leaves unchanged.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use isthmus_control_plane::inject::{Template, TlsFiles};
use isthmus_control_plane::run::{InjectOptions, Options, Source, start_with};
use k8s_openapi::api::core::v1::Pod;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const SERVICE_DNS: &str = "isthmus-control-plane.isthmus-system.svc";

struct Webhook {
    addr: SocketAddr,
    ca_pem: String,
    dir: tempfile::TempDir,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.server.abort();
    }
}

/// A CA and a serving certificate for the webhook Service name, as `isthmus install` makes them.
fn webhook_cert(ca_name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![SERVICE_DNS.to_string()]).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem(), ca_cert.pem())
}

async fn start_webhook() -> Webhook {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(&tokens, "t: {namespace: sample, serviceAccount: sleep}\n").unwrap();
    let (cert, key, ca_pem) = webhook_cert("isthmus-webhook-ca");
    let tls = TlsFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    std::fs::write(&tls.cert, cert).unwrap();
    std::fs::write(&tls.key, key).unwrap();
    let options = Options {
        cluster: "east".into(),
        network: "net-east".into(),
        domain: "cluster.local".into(),
        source: Source::Directory(config),
        ca_dir: None,
        ca_secret: None,
        trust_domain: "east.isthmus.local".into(),
        bootstrap_tokens: Some(tokens),
        xds_listen: "127.0.0.1:0".parse().unwrap(),
        debug_listen: "127.0.0.1:0".parse().unwrap(),
        drain_grace: Duration::from_secs(1),
    };
    let inject = InjectOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls,
        template: Template {
            image: "ghcr.io/isthmus-mesh/isthmus:0.1.0".into(),
            locality: "eu-west/eu-west-1a".into(),
            ..Template::default()
        },
    };
    let shutdown = CancellationToken::new();
    let (bound, run) = start_with(options, Some(inject), shutdown.clone())
        .await
        .unwrap();
    let server = tokio::spawn(async move {
        let _ = run.await;
    });
    Webhook {
        addr: bound.inject.expect("webhook bound"),
        ca_pem,
        dir,
        shutdown,
        server,
    }
}

/// One HTTPS request with rustls, verifying the webhook's certificate as the API server does.
async fn request(hook: &Webhook, method: &str, path: &str, body: Vec<u8>) -> (u16, Bytes) {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(hook.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(hook.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(SERVICE_DNS).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the webhook certificate");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(format!("https://{SERVICE_DNS}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("answer within 10s")
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/inject")
        .join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// Sends a review; returns the response part and the decoded patch (if any).
async fn review(hook: &Webhook, review: &Value) -> (Value, Option<Vec<Value>>) {
    let (status, body) = request(hook, "POST", "/inject", review.to_string().into_bytes()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = answer["response"].clone();
    assert_eq!(response["uid"], review["request"]["uid"], "uid echoed");
    assert_eq!(response["allowed"], true, "the webhook never denies");
    let patch = response.get("patch").map(|p| {
        assert_eq!(response["patchType"], "JSONPatch");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(p.as_str().unwrap())
            .unwrap();
        serde_json::from_slice::<Vec<Value>>(&raw).unwrap()
    });
    (response, patch)
}

/// RFC 6902 `add` (the only op the webhook emits), strict about missing parents.
fn apply(mut doc: Value, ops: &[Value]) -> Value {
    for op in ops {
        assert_eq!(op["op"], "add", "{op}");
        let path = op["path"].as_str().unwrap();
        let (parent, last) = path.rsplit_once('/').unwrap();
        let last = last.replace("~1", "/").replace("~0", "~");
        let target = doc
            .pointer_mut(parent)
            .unwrap_or_else(|| panic!("{path}: parent missing"));
        match target {
            Value::Object(map) => {
                map.insert(last, op["value"].clone());
            }
            Value::Array(list) if last == "-" => list.push(op["value"].clone()),
            other => panic!("{path}: cannot add into {other}"),
        }
    }
    doc
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(list) => list.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// The patched Pod must be a Pod: every field known to k8s-openapi (a typo
/// would be dropped by the round trip and show up as a difference).
fn typed_pod(pod: &Value) -> Pod {
    let typed: Pod = serde_json::from_value(pod.clone()).expect("patched object is a Pod");
    let (mut back, mut orig) = (serde_json::to_value(&typed).unwrap(), pod.clone());
    strip_nulls(&mut back);
    strip_nulls(&mut orig);
    orig.as_object_mut().unwrap().remove("apiVersion");
    orig.as_object_mut().unwrap().remove("kind");
    back.as_object_mut().unwrap().remove("apiVersion");
    back.as_object_mut().unwrap().remove("kind");
    assert_eq!(
        back, orig,
        "fields lost in a round trip through k8s-openapi"
    );
    typed
}

fn args(c: &k8s_openapi::api::core::v1::Container) -> Vec<&str> {
    c.args.iter().flatten().map(String::as_str).collect()
}

#[tokio::test]
async fn deployment_pod_gets_sidecar_init_container_and_token() {
    let hook = start_webhook().await;
    let req = fixture("deployment-pod.json");
    let (_, patch) = review(&hook, &req).await;
    let patch = patch.expect("a patch");
    let pod = apply(req["request"]["object"].clone(), &patch);
    let typed = typed_pod(&pod);
    let spec = typed.spec.as_ref().unwrap();

    // The app container stays first and untouched; the sidecar is appended.
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["helloworld", "isthmus-proxy"]);
    assert_eq!(
        pod["spec"]["containers"][0],
        req["request"]["object"]["spec"]["containers"][0]
    );
    let proxy = &spec.containers[1];
    assert_eq!(
        proxy.image.as_deref(),
        Some("ghcr.io/isthmus-mesh/isthmus:0.1.0")
    );
    let a = args(proxy);
    for pair in [
        ["--mode", "transparent"],
        [
            "--control-plane",
            "isthmus-control-plane.isthmus-system.svc:15010",
        ],
        ["--workload", "$(POD_NAMESPACE)/$(POD_NAME)"],
        ["--service-account", "$(SERVICE_ACCOUNT)"],
        ["--ip", "$(POD_IP)"],
        ["--cluster", "east"],
        ["--network", "net-east"],
        ["--locality", "eu-west/eu-west-1a"],
        [
            "--token-file",
            "/var/run/secrets/isthmus/tokens/isthmus-token",
        ],
        ["--label", "app=helloworld"],
        ["--label", "version=v1"],
    ] {
        assert!(a.windows(2).any(|w| w == pair), "{pair:?} missing in {a:?}");
    }
    assert_eq!(a[0], "--mode");
    assert_eq!(
        proxy.command.as_deref(),
        Some(&["/usr/local/bin/isthmus-sidecar".to_string()][..])
    );
    // The downward API fills what is unknown at admission (the name is generated later).
    let env: Vec<(&str, &str)> = proxy
        .env
        .iter()
        .flatten()
        .map(|e| {
            let f = e.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
            (e.name.as_str(), f.field_path.as_str())
        })
        .collect();
    assert_eq!(
        env,
        [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_IP", "status.podIP"),
            ("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ]
    );
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(
        (sc.run_as_user, sc.run_as_non_root),
        (Some(1337), Some(true))
    );
    assert_eq!(sc.allow_privilege_escalation, Some(false));

    // The init container installs the redirect as root with NET_ADMIN only.
    let init = spec.init_containers.as_ref().unwrap();
    assert_eq!(init.len(), 1);
    assert_eq!(init[0].name, "isthmus-init");
    assert_eq!(
        args(&init[0]),
        [
            "iptables",
            "--apply",
            "--proxy-uid",
            "1337",
            "--proxy-gid",
            "1337"
        ]
    );
    let caps = init[0]
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
    );

    // The projected token for the CA (audience checked by TokenReview), mounted read-only.
    let volumes = spec.volumes.as_ref().unwrap();
    assert_eq!(volumes.len(), 2, "the kube-api-access volume stays");
    let token = volumes[1]
        .projected
        .as_ref()
        .unwrap()
        .sources
        .as_ref()
        .unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap();
    assert_eq!(token.audience.as_deref(), Some("isthmus-ca"));
    assert_eq!(token.path, "isthmus-token");
    let mount = &proxy.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (mount.name.as_str(), mount.read_only),
        ("isthmus-token", Some(true))
    );

    // Existing annotations stay; the status annotation is added next to them.
    let annotations = typed.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        annotations["kubectl.kubernetes.io/default-container"],
        "helloworld"
    );
    let status: Value = serde_json::from_str(&annotations["sidecar.isthmus.io/status"]).unwrap();
    assert_eq!(status["containers"], json!(["isthmus-proxy"]));

    // Idempotent: the injected Pod sent again comes back without a patch.
    let mut again = req.clone();
    again["request"]["object"] = pod;
    let (response, patch) = review(&hook, &again).await;
    assert!(patch.is_none(), "re-injected: {response}");
}

#[tokio::test]
async fn pods_without_annotations_volumes_or_with_init_containers() {
    let hook = start_webhook().await;
    let req = fixture("bare-pod-with-init.json");
    let (_, patch) = review(&hook, &req).await;
    let pod = apply(req["request"]["object"].clone(), &patch.expect("a patch"));
    let typed = typed_pod(&pod);
    let spec = typed.spec.unwrap();
    // The app's own init containers run first, without capture in the way.
    let init: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, ["migrate", "isthmus-init"]);
    assert_eq!(spec.volumes.unwrap().len(), 1);
    assert!(
        typed
            .metadata
            .annotations
            .unwrap()
            .contains_key("sidecar.isthmus.io/status")
    );
}

#[tokio::test]
async fn opted_out_updates_and_other_resources_are_allowed_unchanged() {
    let hook = start_webhook().await;
    for name in ["opted-out.json", "update.json"] {
        let (response, patch) = review(&hook, &fixture(name)).await;
        assert!(patch.is_none(), "{name}: {response}");
    }
    let mut other = fixture("deployment-pod.json");
    other["request"]["resource"] = json!({"group": "", "version": "v1", "resource": "pods"});
    other["request"]["subResource"] = json!("ephemeralcontainers");
    assert!(review(&hook, &other).await.1.is_none(), "subresource");
    other["request"]["subResource"] = Value::Null;
    other["request"]["resource"] =
        json!({"group": "apps", "version": "v1", "resource": "deployments"});
    assert!(review(&hook, &other).await.1.is_none(), "deployment");
    let mut host = fixture("deployment-pod.json");
    host["request"]["object"]["spec"]["hostNetwork"] = json!(true);
    assert!(review(&hook, &host).await.1.is_none(), "hostNetwork");
}

#[tokio::test]
async fn bad_requests_are_rejected_with_a_reason() {
    let hook = start_webhook().await;
    let (status, body) = request(&hook, "POST", "/inject", b"{not json".to_vec()).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("not JSON"));
    let v1beta1 = json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "x"}});
    let (status, body) = request(&hook, "POST", "/inject", v1beta1.to_string().into_bytes()).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("admission.k8s.io/v1"));
    let no_uid =
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}});
    assert_eq!(
        request(&hook, "POST", "/inject", no_uid.to_string().into_bytes())
            .await
            .0,
        400
    );
    assert_eq!(request(&hook, "GET", "/inject", Vec::new()).await.0, 405);
    assert_eq!(request(&hook, "GET", "/nope", Vec::new()).await.0, 404);
    assert_eq!(request(&hook, "GET", "/ready", Vec::new()).await.0, 200);
    let big = vec![b' '; 9 << 20];
    assert_eq!(request(&hook, "POST", "/inject", big).await.0, 413);
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let mut hook = start_webhook().await;
    assert_eq!(request(&hook, "GET", "/ready", Vec::new()).await.0, 200);
    let (cert, key, ca_pem) = webhook_cert("rotated-ca");
    // Key first, then the certificate, as a Secret volume update may land.
    std::fs::write(hook.dir.path().join("tls.key"), key).unwrap();
    std::fs::write(hook.dir.path().join("tls.crt"), cert).unwrap();
    hook.ca_pem = ca_pem;
    // Checked every 5 s: within 12 s clients trusting only the new CA connect.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
    loop {
        let ok = tokio::spawn({
            let (addr, ca) = (hook.addr, hook.ca_pem.clone());
            async move { try_handshake(addr, &ca).await }
        })
        .await
        .unwrap();
        if ok {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new certificate not served"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(request(&hook, "GET", "/ready", Vec::new()).await.0, 200);
}

async fn try_handshake(addr: SocketAddr, ca_pem: &str) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(SERVICE_DNS).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .is_ok()
}
