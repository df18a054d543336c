//! Protocols end to end: WebSocket-style upgrades, gRPC bidirectional
//! streaming with trailers (h2c → h2 mesh hop → h2c), opaque TCP with mTLS
//! between sidecars, a DNS ServiceEntry, and the JSON access log.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use isthmus_sidecar::access_log::AccessLog;
use support::grpc::{GrpcApp, chat};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends an HTTP/1.1 upgrade request for `host` through `via`; on 101,
/// writes `ping` on the upgraded connection and returns what came back.
async fn upgrade(via: SocketAddr, host: &str) -> (StatusCode, Option<String>) {
    let tcp = tokio::net::TcpStream::connect(via).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let req = Request::get("/chat")
        .header("host", host)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let mut resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        return (status, None);
    }
    assert_eq!(resp.headers()["upgrade"], "websocket");
    let mut io = TokioIo::new(hyper::upgrade::on(&mut resp).await.unwrap());
    let mut echoed = String::new();
    for word in ["ping", "pong"] {
        io.write_all(word.as_bytes()).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, io.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        echoed.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        echoed.push('|');
    }
    (status, Some(echoed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_pass_through_both_sidecars() {
    let w = World::start(51, "", Behavior::Echo).await;
    let (status, echoed) = upgrade(w.sleep.outbound(), HELLO).await;
    assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
    let echoed = echoed.unwrap();
    // Both messages answered by the same app over one upgraded connection.
    let app = echoed.split(':').next().unwrap().to_string();
    assert!(app.starts_with("helloworld-v"), "{echoed}");
    assert_eq!(echoed, format!("{app}:ping|{app}:pong|"));

    // Authorization still applies to the upgrade request at the destination.
    w.mesh.write(
        "deny.yaml",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-chat, namespace: sample}
spec:
  selector: {matchLabels: {app: helloworld}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/chat"]}}]
"#,
    );
    for s in [&w.v1, &w.v2] {
        w.mesh
            .wait_config(s, |snap| {
                format!("{:?}", snap.inbound.get(&5000)).contains("deny-chat")
            })
            .await;
    }
    let (status, _) = upgrade(w.sleep.outbound(), HELLO).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

const CHAT_SERVICE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: chat, namespace: sample}
spec:
  hosts: [chat.sample.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 7070, name: grpc}]
  workloadSelector: {labels: {app: chat}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: chat, namespace: sample}
spec: {address: 127.0.52.31, labels: {app: chat}, serviceAccount: helloworld}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_streams_both_ways_with_trailers() {
    let mesh = Mesh::start(52, &format!("{}\n---\n{CHAT_SERVICE}", services(52))).await;
    let _app = GrpcApp::start(SocketAddr::new(ip(52, 131), 7070), "chat-1").await;
    let chat_sidecar = mesh
        .sidecar("chat-1", "helloworld", 31, &[("app", "chat")])
        .await;
    let sleep = mesh
        .sidecar("sleep", "sleep", 21, &[("app", "sleep")])
        .await;
    mesh.wait_config(&chat_sidecar, |s| s.inbound.contains_key(&7070))
        .await;
    let authority = "chat.sample.svc.cluster.local:7070";

    // Each message is sent only after the previous answer arrived: the
    // call streams through both sidecars in both directions at once.
    let (replies, end) = chat(sleep.outbound(), authority, &["one", "two", "three"]).await;
    assert_eq!(replies, ["chat-1: one", "chat-1: two", "chat-1: three"]);
    assert_eq!(end.code(), tonic::Code::Ok, "{end:?}");

    // A status after messages travels in trailers, through both hops.
    let (replies, end) = chat(sleep.outbound(), authority, &["a", "fail"]).await;
    assert_eq!(replies, ["chat-1: a"]);
    assert_eq!(end.code(), tonic::Code::NotFound, "{end:?}");
    assert_eq!(end.message(), "no such thing");

    // Both sides counted gRPC requests.
    let c = client();
    let m = get(&c, sleep.admin(), "admin", "/metrics").await.body;
    assert!(m.contains("request_protocol=\"grpc\""), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_crosses_the_mesh_with_mtls() {
    let db = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: sample}
spec:
  hosts: [db.sample.svc.cluster.local]
  addresses: [240.240.53.1]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9000, name: tcp}]
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db, namespace: sample}
spec: {address: 127.0.53.41, labels: {app: db}, serviceAccount: helloworld}
"#;
    let mesh = Mesh::start(53, &format!("{}\n---\n{db}", services(53))).await;
    let _app = TcpEcho::start(SocketAddr::new(ip(53, 141), 9000)).await;
    let db_sidecar = mesh.sidecar("db", "helloworld", 41, &[("app", "db")]).await;
    let sleep = mesh
        .sidecar("sleep", "sleep", 21, &[("app", "sleep")])
        .await;
    mesh.wait_config(&db_sidecar, |s| s.inbound.contains_key(&9000))
        .await;
    mesh.wait_config(&sleep, |s| !s.tcp_routes.is_empty()).await;

    // The app connects to the service port on its sidecar's address.
    let mut conn = tokio::net::TcpStream::connect(SocketAddr::new(ip(53, 21), 9000))
        .await
        .unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = conn.split();
    let (sent, got) = tokio::join!(
        async {
            w.write_all(&payload).await.unwrap();
            w.shutdown().await.unwrap();
        },
        async {
            let mut got = Vec::new();
            tokio::time::timeout(WAIT, r.read_to_end(&mut got))
                .await
                .unwrap()
                .unwrap();
            got
        }
    );
    let () = sent;
    assert_eq!(got.len(), payload.len(), "half-close passes through");
    assert!(got == payload, "bytes arrive unchanged");

    // The destination saw an mTLS connection from sleep.
    let c = client();
    let m = get(&c, db_sidecar.admin(), "admin", "/metrics").await.body;
    let opened = m
        .lines()
        .find(|l| l.starts_with("istio_tcp_connections_opened_total{reporter=\"destination\""))
        .unwrap_or_else(|| panic!("{m}"));
    assert!(
        opened.contains("connection_security_policy=\"mutual_tls\""),
        "{opened}"
    );
    assert!(
        opened.contains("source_principal=\"spiffe://east.isthmus.local/ns/sample/sa/sleep\""),
        "{opened}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_service_entry_resolves_and_balances() {
    // The app listens on loopback; the ServiceEntry names it `localhost`.
    let app = App::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        "external",
        Behavior::Echo,
    )
    .await;
    let port = app.addr.port();
    let se = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external, namespace: sample}}
spec:
  hosts: [external.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{{number: {port}, name: http}}]
  endpoints: [{{address: localhost}}]
"#
    );
    let mesh = Mesh::start(54, &format!("{}\n---\n{se}", services(54))).await;
    let sleep = mesh
        .sidecar("sleep", "sleep", 21, &[("app", "sleep")])
        .await;
    let c = client();
    let host = format!("external.example.com:{port}");
    // The first lookup happens within half a second of the cluster arriving.
    let r = tokio::time::timeout(WAIT, async {
        loop {
            let r = get(&c, sleep.outbound(), &host, "/x").await;
            if r.status == StatusCode::OK {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the DNS cluster resolves");
    assert_eq!(r.app(), "external");
    assert!(r.json()["headers"].get("x-forwarded-client-cert").is_none());
    let clusters = get(&c, sleep.admin(), "admin", "/clusters").await.body;
    assert!(
        clusters.contains(&format!("127.0.0.1:{port}")),
        "{clusters}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_writes_one_json_line_per_request() {
    let mesh = Mesh::start(55, &services(55)).await;
    let _app = App::start(
        SocketAddr::new(ip(55, 111), 5000),
        "helloworld-v1",
        Behavior::Echo,
    )
    .await;
    let (log, mut lines) = AccessLog::channel();
    let mut spec = Spec::new(
        "helloworld-v1",
        "helloworld",
        11,
        &[("app", "helloworld"), ("version", "v1")],
    );
    spec.hooks.access_log = Some(log);
    let v1 = mesh.sidecar_with(spec).await;
    let (log, mut out_lines) = AccessLog::channel();
    let mut spec = Spec::new("sleep", "sleep", 21, &[("app", "sleep")]);
    spec.hooks.access_log = Some(log);
    let sleep = mesh.sidecar_with(spec).await;
    mesh.wait_config(&v1, |s| s.inbound.contains_key(&5000))
        .await;
    let c = client();
    let req = Request::get(format!("http://{}/logged?q=1", sleep.outbound()))
        .header("host", HELLO)
        .header("x-request-id", "log-me")
        .header("user-agent", "isthmus-test")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let outbound = tokio::time::timeout(WAIT, out_lines.recv())
        .await
        .unwrap()
        .unwrap();
    let inbound = tokio::time::timeout(WAIT, lines.recv())
        .await
        .unwrap()
        .unwrap();
    for (line, direction) in [(&outbound, "outbound"), (&inbound, "inbound")] {
        assert!(
            line.ends_with('\n') && line.matches('\n').count() == 1,
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON object");
        assert_eq!(v["direction"], direction, "{v}");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/logged?q=1");
        assert_eq!(v["response_code"], 200);
        assert_eq!(v["response_flags"], "-");
        assert_eq!(v["x_request_id"], "log-me");
        assert_eq!(v["user_agent"], "isthmus-test");
        assert!(v["start_time"].as_str().unwrap().ends_with('Z'), "{v}");
    }
    let out: serde_json::Value = serde_json::from_str(&outbound).unwrap();
    assert_eq!(
        out["upstream_cluster"],
        "outbound|5000||helloworld.sample.svc.cluster.local"
    );
    assert_eq!(out["upstream_host"], "127.0.55.11:5000");
    let inb: serde_json::Value = serde_json::from_str(&inbound).unwrap();
    assert_eq!(
        inb["downstream_peer_uri_san"],
        "spiffe://east.isthmus.local/ns/sample/sa/sleep"
    );
    assert_eq!(inb["upstream_host"], "127.0.55.111:5000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upgrade_policy_picks_the_mesh_hop_protocol() {
    let net = 56;
    let mesh = Mesh::start(net, &services(net)).await;
    let _app = App::start(
        SocketAddr::new(ip(net, 111), 5000),
        "helloworld-v1",
        Behavior::Echo,
    )
    .await;
    let (log, mut lines) = AccessLog::channel();
    let mut spec = Spec::new(
        "helloworld-v1",
        "helloworld",
        11,
        &[("app", "helloworld"), ("version", "v1")],
    );
    spec.hooks.access_log = Some(log);
    let v1 = mesh.sidecar_with(spec).await;
    let sleep = mesh
        .sidecar("sleep", "sleep", 21, &[("app", "sleep")])
        .await;
    mesh.wait_config(&v1, |s| s.inbound.contains_key(&5000))
        .await;
    let c = client();
    let hop = |lines: &mut tokio::sync::mpsc::Receiver<String>| {
        let line = lines.try_recv().expect("an inbound access log line");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v["protocol"].as_str().unwrap().to_string()
    };
    // Default (Istio's DO_NOT_UPGRADE): the app's HTTP/1.1 stays HTTP/1.1 on the mTLS hop.
    let r = get(&c, sleep.outbound(), HELLO, "/").await;
    assert_eq!(r.status, StatusCode::OK);
    let xfcc = r.json()["headers"]["x-forwarded-client-cert"].to_string();
    assert!(xfcc.contains("sa/sleep"), "mTLS: {xfcc}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(hop(&mut lines), "HTTP/1.1");
    // UPGRADE: HTTP/2 between the sidecars, whatever the app spoke.
    mesh.write(
        "dr.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: helloworld, namespace: sample}
spec:
  host: helloworld.sample.svc.cluster.local
  trafficPolicy:
    connectionPool: {http: {h2UpgradePolicy: UPGRADE}}
"#,
    );
    mesh.wait_config(&sleep, |s| {
        s.clusters
            .get("outbound|5000||helloworld.sample.svc.cluster.local")
            .is_some_and(|c| c.pool().settings().http2)
    })
    .await;
    let r = get(&c, sleep.outbound(), HELLO, "/").await;
    assert_eq!(r.status, StatusCode::OK);
    let xfcc = r.json()["headers"]["x-forwarded-client-cert"].to_string();
    assert!(xfcc.contains("sa/sleep"), "still mTLS: {xfcc}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(hop(&mut lines), "HTTP/2");
}
