//! The sidecar end to end: a real control plane, real sidecars (explicit
//! mode) and real HTTP apps on loopback; requests go app → sidecar → mTLS →
//! sidecar → app.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_call_reaches_the_app_with_the_callers_identity() {
    let w = World::start(41, "", Behavior::Echo).await;
    let c = client();
    let r = get(&c, w.sleep.outbound(), HELLO, "/hello?x=1").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let j = r.json();
    assert!(
        j["app"].as_str().unwrap().starts_with("helloworld-v"),
        "{j}"
    );
    assert_eq!(j["path"], "/hello?x=1");
    assert_eq!(j["host"], HELLO, "the app sees the logical authority");
    let xfcc = j["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.contains("URI=spiffe://east.isthmus.local/ns/sample/sa/sleep"),
        "caller identity at the destination: {xfcc}"
    );
    assert!(
        xfcc.contains("By=spiffe://east.isthmus.local/ns/sample/sa/helloworld"),
        "{xfcc}"
    );
    assert!(
        j["headers"]["x-request-id"]
            .as_str()
            .is_some_and(|v| v.len() == 36),
        "{j}"
    );

    // Trace context and request ids pass through unchanged.
    let req = http::Request::get(format!("http://{}/t", w.sleep.outbound()))
        .header("host", HELLO)
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7")
        .header("x-request-id", "fixed-id")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        j["headers"]["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(
        j["headers"]["x-b3-traceid"],
        "80f198ee56343ba864fe8b2a57d3eff7"
    );
    assert_eq!(j["headers"]["x-request-id"], "fixed-id");

    // A host the mesh does not know goes to the passthrough cluster: where
    // its name resolves (here: nowhere).
    let r = get(&c, w.sleep.outbound(), "nope.invalid:5000", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers["x-isthmus-response-flags"], "DF");

    // Istio metrics on both sides.
    let m = get(&c, w.sleep.admin(), "admin", "/metrics").await.body;
    assert!(
        m.contains("istio_requests_total{reporter=\"source\""),
        "{m}"
    );
    assert!(
        m.contains("destination_service=\"helloworld.sample.svc.cluster.local\""),
        "{m}"
    );
    // The xDS client's state: connected over incremental xDS, nothing NACKed.
    for line in [
        "isthmus_xds_connected 1",
        "isthmus_xds_incremental 1",
        "isthmus_xds_nacks_total 0",
    ] {
        assert!(m.lines().any(|l| l == line), "{line}\n{m}");
    }
    let m1 = get(&c, w.v1.admin(), "admin", "/metrics").await.body;
    let m2 = get(&c, w.v2.admin(), "admin", "/metrics").await.body;
    let both = format!("{m1}{m2}");
    assert!(both.contains("reporter=\"destination\""), "{both}");
    assert!(
        both.contains("source_principal=\"spiffe://east.isthmus.local/ns/sample/sa/sleep\""),
        "{both}"
    );
    assert!(
        both.contains("connection_security_policy=\"mutual_tls\""),
        "{both}"
    );
    // Admin pages.
    let clusters = get(&c, w.sleep.admin(), "admin", "/clusters").await;
    assert!(clusters.body.contains("127.0.41.11"), "{}", clusters.body);
    let certs = get(&c, w.sleep.admin(), "admin", "/certs").await.json();
    assert_eq!(
        certs["identity"],
        "spiffe://east.isthmus.local/ns/sample/sa/sleep"
    );
    let ready = get(&c, w.sleep.admin(), "admin", "/ready").await;
    assert_eq!(ready.status, StatusCode::OK);
}

const SUBSETS: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: helloworld, namespace: sample}
spec:
  host: helloworld.sample.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_split_stays_within_bounds() {
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld, namespace: sample}
spec:
  hosts: [helloworld.sample.svc.cluster.local]
  http:
  - route:
    - {destination: {host: helloworld.sample.svc.cluster.local, subset: v1}, weight: 90}
    - {destination: {host: helloworld.sample.svc.cluster.local, subset: v2}, weight: 10}
"#;
    let w = World::start(42, &format!("{SUBSETS}\n---\n{vs}"), Behavior::Echo).await;
    let c = client();
    let n = 1000;
    let mut v2 = 0;
    for _ in 0..n {
        let r = get(&c, w.sleep.outbound(), HELLO, "/").await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        if r.app() == "helloworld-v2" {
            v2 += 1;
        }
    }
    // Binomial(1000, 0.1): mean 100, sd 9.5; ±5 sd cannot flake in practice.
    assert!((52..=148).contains(&v2), "v2 got {v2} of {n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_an_endpoint_that_resets() {
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld, namespace: sample}
spec:
  hosts: [helloworld.sample.svc.cluster.local]
  http:
  - route: [{destination: {host: helloworld.sample.svc.cluster.local}}]
    retries: {attempts: 3, retryOn: "5xx,reset,connect-failure"}
"#;
    let w = World::start(43, vs, Behavior::Reset).await;
    let c = client();
    for i in 0..100 {
        let r = get(&c, w.sleep.outbound(), HELLO, "/").await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {r:?}");
        assert_eq!(r.app(), "helloworld-v1");
    }
    assert!(
        w.app_v2.hits.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "v2 was tried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_failing_endpoint_at_once() {
    let dr = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: helloworld, namespace: sample}
spec:
  host: helloworld.sample.svc.cluster.local
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 2, interval: 10s, baseEjectionTime: 60s, maxEjectionPercent: 100}
"#;
    let w = World::start(44, dr, Behavior::Reset).await;
    let c = client();
    let mut failures = 0;
    for _ in 0..60 {
        if get(&c, w.sleep.outbound(), HELLO, "/").await.status != StatusCode::OK {
            failures += 1;
        }
    }
    // Round robin / least request reach v2 a few times, then it is ejected.
    assert!(
        failures <= 4,
        "{failures} failures: the endpoint was not ejected at once"
    );
    let clusters = get(&c, w.sleep.admin(), "admin", "/clusters").await.body;
    assert!(clusters.contains("ejected"), "{clusters}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_aborts_the_configured_share() {
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld, namespace: sample}
spec:
  hosts: [helloworld.sample.svc.cluster.local]
  http:
  - fault: {abort: {httpStatus: 418, percentage: {value: 30}}}
    route: [{destination: {host: helloworld.sample.svc.cluster.local}}]
"#;
    let w = World::start(45, vs, Behavior::Echo).await;
    let c = client();
    let n = 600;
    let mut aborted = 0;
    for _ in 0..n {
        let r = get(&c, w.sleep.outbound(), HELLO, "/").await;
        match r.status.as_u16() {
            418 => {
                aborted += 1;
                assert_eq!(r.headers["x-isthmus-response-flags"], "FI");
            }
            200 => {}
            s => panic!("unexpected {s}"),
        }
    }
    // Binomial(600, 0.3): mean 180, sd 11.2.
    assert!((124..=236).contains(&aborted), "{aborted} of {n} aborted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_refuses_bypass_attempts() {
    let policy = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: sample}
spec:
  selector: {matchLabels: {app: helloworld}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: sample}
spec:
  selector: {matchLabels: {app: helloworld}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["east.isthmus.local/ns/sample/sa/sleep"]}}]
"#;
    let w = World::start(46, policy, Behavior::Echo).await;
    let c = client();
    assert_eq!(
        get(&c, w.sleep.outbound(), HELLO, "/ok").await.status,
        StatusCode::OK
    );
    for path in [
        "/admin",
        "/admin/x",
        "//admin",
        "/public/../admin",
        "/admin%2Fx",
        "/%61dmin",
        "/admin/./x",
        "/admin#frag",
        "/public/%2e%2e/admin",
        "/admin%5Cx",
    ] {
        let r = get(&c, w.sleep.outbound(), HELLO, path).await;
        assert!(
            r.status == StatusCode::FORBIDDEN || r.status == StatusCode::BAD_REQUEST,
            "{path}: {r:?}"
        );
    }
    // Case-insensitive host in the authority still reaches the same policy.
    let r = get(
        &c,
        w.sleep.outbound(),
        "HelloWorld.Sample.svc.cluster.local:5000",
        "/admin",
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mtls_refuses_plaintext_and_the_wrong_caller_is_denied() {
    let pa = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: sample}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-other, namespace: sample}
spec:
  selector: {matchLabels: {app: helloworld}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["east.isthmus.local/ns/sample/sa/other"]}}]
"#;
    let w = World::start(47, pa, Behavior::Echo).await;
    let c = client();
    // Plaintext straight to the inbound listener: closed.
    let direct = http::Request::get(format!("http://{}:5000/", ip(47, 11)))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert!(
        c.request(direct).await.is_err(),
        "plaintext accepted under STRICT"
    );
    // mTLS from sleep, which the policy does not allow: 403.
    let r = get(&c, w.sleep.outbound(), HELLO, "/").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_keeps_flowing_without_the_control_plane() {
    let mut w = World::start(48, "", Behavior::Echo).await;
    let c = client();
    assert_eq!(
        get(&c, w.sleep.outbound(), HELLO, "/").await.status,
        StatusCode::OK
    );
    w.mesh.stop_control_plane().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..50 {
        assert_eq!(
            get(&c, w.sleep.outbound(), HELLO, "/").await.status,
            StatusCode::OK
        );
    }
    // Back again: the sidecars reconnect and take new config.
    w.mesh.restart_control_plane().await;
    w.mesh.write(
        "vs.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld, namespace: sample}
spec:
  hosts: [helloworld.sample.svc.cluster.local]
  http:
  - fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: helloworld.sample.svc.cluster.local}}]
"#,
    );
    let sleep = &w.sleep;
    w.mesh
        .wait_config(sleep, |s| {
            // The compiled table shows the abort status.
            format!("{:?}", s.routes.get("5000")).contains("Http(418)")
        })
        .await;
    assert_eq!(
        get(&c, w.sleep.outbound(), HELLO, "/")
            .await
            .status
            .as_u16(),
        418
    );
}
