//! Routing end to end through real sidecars: matches (headers, method,
//! query), rewrites, redirects, header mutations, timeouts, mirroring,
//! consistent hashing and locality failover with failback.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;

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

const ROUTES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld, namespace: sample}
spec:
  hosts: [helloworld.sample.svc.cluster.local]
  http:
  - name: by-header
    match: [{headers: {x-canary: {exact: "yes"}}}]
    route: [{destination: {host: helloworld.sample.svc.cluster.local, subset: v2}}]
  - name: by-method
    match: [{method: {exact: DELETE}}]
    route: [{destination: {host: helloworld.sample.svc.cluster.local, subset: v2}}]
  - name: by-query
    match: [{queryParams: {beta: {exact: "1"}}}]
    route: [{destination: {host: helloworld.sample.svc.cluster.local, subset: v2}}]
  - name: rewrite
    match: [{uri: {prefix: /old/}}]
    rewrite: {uri: /new/, authority: rewritten.example}
    route: [{destination: {host: helloworld.sample.svc.cluster.local, subset: v1}}]
  - name: redirect
    match: [{uri: {exact: /moved}}]
    redirect: {uri: /here, authority: elsewhere.example, redirectCode: 302}
  - name: headers
    match: [{uri: {prefix: /headers}}]
    headers:
      request:
        set: {x-set: one}
        add: {x-added: two}
        remove: [x-drop]
      response:
        set: {x-resp: three}
        remove: [x-app]
    route: [{destination: {host: helloworld.sample.svc.cluster.local, subset: v1}}]
  - name: timeout
    match: [{uri: {prefix: /delay/}}]
    timeout: 300ms
    route: [{destination: {host: helloworld.sample.svc.cluster.local, subset: v1}}]
  - name: default
    route: [{destination: {host: helloworld.sample.svc.cluster.local, subset: v1}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_routing_feature_end_to_end() {
    let w = World::start(61, &format!("{SUBSETS}\n---\n{ROUTES}"), Behavior::Echo).await;
    let c = client();
    let via = w.sleep.outbound();
    let app = |r: &Reply| r.app();

    // Matches: only the matching request reaches v2.
    assert_eq!(app(&get(&c, via, HELLO, "/").await), "helloworld-v1");
    let r = send(&c, via, "GET", HELLO, "/", &[("x-canary", "yes")]).await;
    assert_eq!(app(&r), "helloworld-v2");
    let r = send(&c, via, "GET", HELLO, "/", &[("x-canary", "no")]).await;
    assert_eq!(app(&r), "helloworld-v1");
    assert_eq!(
        app(&send(&c, via, "DELETE", HELLO, "/", &[]).await),
        "helloworld-v2"
    );
    assert_eq!(app(&get(&c, via, HELLO, "/?beta=1").await), "helloworld-v2");
    assert_eq!(app(&get(&c, via, HELLO, "/?beta=2").await), "helloworld-v1");

    // Rewrite: prefix and authority; the app sees the new ones.
    let r = get(&c, via, HELLO, "/old/page?x=1").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let j = r.json();
    assert_eq!(j["path"], "/new/page?x=1");
    assert_eq!(j["host"], "rewritten.example");
    assert_eq!(j["headers"]["x-envoy-original-path"], "/old/page?x=1");

    // Redirect: answered by the caller's sidecar, nothing reaches an app.
    let hits = w.app_v1.hits.load(Ordering::Relaxed) + w.app_v2.hits.load(Ordering::Relaxed);
    let r = get(&c, via, HELLO, "/moved").await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.headers["location"], "http://elsewhere.example/here");
    let after = w.app_v1.hits.load(Ordering::Relaxed) + w.app_v2.hits.load(Ordering::Relaxed);
    assert_eq!(hits, after, "a redirect is local");

    // Header set/add/remove on the request and the response.
    let r = send(
        &c,
        via,
        "GET",
        HELLO,
        "/headers",
        &[("x-set", "zero"), ("x-added", "one"), ("x-drop", "gone")],
    )
    .await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-set"], "one", "set replaces");
    assert!(h.get("x-drop").is_none(), "removed: {h}");
    // The echo joins repeated headers' last value; `add` appended one.
    assert_eq!(h["x-added"], "two", "{h}");
    assert_eq!(r.headers["x-resp"], "three");
    assert!(!r.headers.contains_key("x-app"), "response header removed");
    // Elsewhere the app's header stays.
    assert!(get(&c, via, HELLO, "/").await.headers.contains_key("x-app"));

    // Timeout: the app answers after 2 s, the route allows 300 ms.
    let started = Instant::now();
    let r = get(&c, via, HELLO, "/delay/2000").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{r:?}");
    assert_eq!(r.headers["x-isthmus-response-flags"], "UT");
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(
        get(&c, via, HELLO, "/delay/10").await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirroring_is_fire_and_forget() {
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld, namespace: sample}
spec:
  hosts: [helloworld.sample.svc.cluster.local]
  http:
  - route: [{destination: {host: helloworld.sample.svc.cluster.local, subset: v1}}]
    mirror: {host: helloworld.sample.svc.cluster.local, subset: v2}
    mirrorPercentage: {value: 100}
"#;
    // v2 accepts connections and never answers.
    let w = World::start(62, &format!("{SUBSETS}\n---\n{vs}"), Behavior::Hang).await;
    let c = client();
    let started = Instant::now();
    for i in 0..20 {
        let r = get(&c, w.sleep.outbound(), HELLO, &format!("/m/{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.app(), "helloworld-v1");
        assert!(!r.headers.contains_key("x-isthmus-response-flags"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answers never wait for the mirror: {:?}",
        started.elapsed()
    );
    // The shadow copies did go out (to the hanging app, via v2's sidecar).
    tokio::time::timeout(WAIT, async {
        while w.app_v2.hits.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the mirror reached v2");
}

const STICKY: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: helloworld, namespace: sample}
spec:
  host: helloworld.sample.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
  subsets:
  - name: by-cookie
    labels: {app: helloworld}
    trafficPolicy:
      loadBalancer:
        consistentHash: {httpCookie: {name: affinity, ttl: 3600s}}
  - name: by-ip
    labels: {app: helloworld}
    trafficPolicy:
      loadBalancer:
        consistentHash: {useSourceIp: true}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld, namespace: sample}
spec:
  hosts: [helloworld.sample.svc.cluster.local]
  http:
  - match: [{uri: {prefix: /cookie}}]
    route: [{destination: {host: helloworld.sample.svc.cluster.local, subset: by-cookie}}]
  - match: [{uri: {prefix: /ip}}]
    route: [{destination: {host: helloworld.sample.svc.cluster.local, subset: by-ip}}]
  - route: [{destination: {host: helloworld.sample.svc.cluster.local}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_by_header_cookie_and_source_ip() {
    let w = World::start(63, STICKY, Behavior::Echo).await;
    let c = client();
    let via = w.sleep.outbound();

    // Header: a user always reaches the same app; users spread over both.
    let mut seen = BTreeSet::new();
    for user in 0..24 {
        let user = format!("user-{user}");
        let first = send(&c, via, "GET", HELLO, "/", &[("x-user", &user)])
            .await
            .app();
        for _ in 0..4 {
            let r = send(&c, via, "GET", HELLO, "/", &[("x-user", &user)]).await;
            assert_eq!(r.app(), first, "{user} moved");
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "24 users all hashed to {seen:?}");

    // Cookie: the first answer sets it; requests carrying it stick.
    let r = get(&c, via, HELLO, "/cookie").await;
    let set = r.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.starts_with("affinity=") && set.contains("Max-Age=3600"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let mut apps = BTreeSet::new();
    for _ in 0..10 {
        let r = send(&c, via, "GET", HELLO, "/cookie", &[("cookie", &cookie)]).await;
        assert!(
            !r.headers.contains_key("set-cookie"),
            "no new cookie once sent"
        );
        apps.insert(r.app());
    }
    assert_eq!(apps.len(), 1, "{apps:?}");

    // Source IP: every request of this caller reaches one app.
    let apps: BTreeSet<String> = apps_of(&c, via, "/ip", 12).await;
    assert_eq!(apps.len(), 1, "{apps:?}");
}

async fn apps_of(c: &Client, via: SocketAddr, path: &str, n: usize) -> BTreeSet<String> {
    let mut apps = BTreeSet::new();
    for _ in 0..n {
        apps.insert(get(c, via, HELLO, path).await.app());
    }
    apps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locality_failover_when_local_endpoints_die_and_failback() {
    let net = 64;
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: helloworld, namespace: sample}}
spec:
  hosts: [helloworld.sample.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 5000, name: http}}]
  workloadSelector: {{labels: {{app: helloworld}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: hw-local, namespace: sample}}
spec: {{address: 127.0.{net}.11, labels: {{app: helloworld}}, serviceAccount: helloworld, locality: region1/zone1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: hw-remote, namespace: sample}}
spec: {{address: 127.0.{net}.12, labels: {{app: helloworld}}, serviceAccount: helloworld, locality: region2/zone1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: helloworld, namespace: sample}}
spec:
  host: helloworld.sample.svc.cluster.local
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 1, consecutiveGatewayErrors: 1, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 100}}
    loadBalancer:
      localityLbSetting:
        enabled: true
        failover: [{{from: region1, to: region2}}]
"#
    );
    let mesh = Mesh::start(net, &yaml).await;
    let at = |region: &str| isthmus_api::naming::Locality {
        region: region.into(),
        zone: "zone1".into(),
        subzone: String::new(),
    };
    let start_local = || async {
        let app = App::start(SocketAddr::new(ip(net, 111), 5000), "local", Behavior::Echo).await;
        let mut spec = Spec::new("hw-local", "helloworld", 11, &[("app", "helloworld")]);
        spec.locality = at("region1");
        (app, mesh.sidecar_with(spec).await)
    };
    let (app, local) = start_local().await;
    let _remote_app = App::start(
        SocketAddr::new(ip(net, 112), 5000),
        "remote",
        Behavior::Echo,
    )
    .await;
    let mut spec = Spec::new("hw-remote", "helloworld", 12, &[("app", "helloworld")]);
    spec.locality = at("region2");
    let remote = mesh.sidecar_with(spec).await;
    let mut spec = Spec::new("sleep", "sleep", 21, &[("app", "sleep")]);
    spec.locality = at("region1");
    let sleep = mesh.sidecar_with(spec).await;
    for s in [&local, &remote] {
        mesh.wait_config(s, |snap| snap.inbound.contains_key(&5000))
            .await;
    }
    let c = client();
    let via = sleep.outbound();

    // Healthy: everything stays in the caller's region.
    for _ in 0..30 {
        assert_eq!(get(&c, via, HELLO, "/").await.app(), "local");
    }

    // The local endpoint dies (sidecar and app): traffic fails over at once
    // (the connect failure is retried and ejects the host).
    local.stop().await;
    drop(app);
    for i in 0..30 {
        let r = get(&c, via, HELLO, "/").await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "request {i} during failover: {r:?}"
        );
        assert_eq!(r.app(), "remote");
    }

    // It comes back: once its ejection ends, traffic returns home.
    let (_app, _local) = start_local().await;
    let back = tokio::time::timeout(WAIT, async {
        loop {
            let r = get(&c, via, HELLO, "/").await;
            assert_eq!(r.status, StatusCode::OK, "{r:?}");
            if r.app() == "local" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(back.is_ok(), "no failback");
    for _ in 0..20 {
        assert_eq!(get(&c, via, HELLO, "/").await.app(), "local");
    }
}
