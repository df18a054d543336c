//! Zero failed requests while the control plane pushes new config 100
//! times, and while every workload certificate rotates every second.

mod support;

use std::time::{Duration, Instant};

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

/// Push `i`: the split flips between subsets and a header names the push.
fn routes(i: usize) -> String {
    let w1 = if i.is_multiple_of(2) { 80 } else { 20 };
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: helloworld, namespace: sample}}
spec:
  hosts: [helloworld.sample.svc.cluster.local]
  http:
  - headers: {{request: {{set: {{x-push: "push-{i}"}}}}}}
    route:
    - {{destination: {{host: helloworld.sample.svc.cluster.local, subset: v1}}, weight: {w1}}}
    - {{destination: {{host: helloworld.sample.svc.cluster.local, subset: v2}}, weight: {w2}}}
"#,
        w2 = 100 - w1
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_config_is_pushed_100_times() {
    let w = World::start(81, SUBSETS, Behavior::Echo).await;
    let push = |i: usize| {
        let w = &w;
        async move {
            w.mesh.write("routes.yaml", &routes(i));
            let want = format!("\"push-{i}\"");
            w.mesh
                .wait_config(&w.sleep, |s| {
                    format!("{:?}", s.routes.get("5000")).contains(&want)
                })
                .await;
        }
    };
    push(0).await;
    let load = Load::start(w.sleep.outbound(), HELLO, 4, 50_000);
    let started = Instant::now();
    for i in 1..=100 {
        push(i).await;
    }
    let pushes = started.elapsed();
    let report = load.stop().await;
    eprintln!("100 pushes in {pushes:?}; {report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.ok > 500, "the load ran: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_across_certificate_rotations() {
    let net = 82;
    let mesh = Mesh::start(net, &services(net)).await;
    let _v1 = App::start(
        std::net::SocketAddr::new(ip(net, 111), 5000),
        "helloworld-v1",
        Behavior::Echo,
    )
    .await;
    let _v2 = App::start(
        std::net::SocketAddr::new(ip(net, 112), 5000),
        "helloworld-v2",
        Behavior::Echo,
    )
    .await;
    // A 5 s certificate (backdated 2 min for clock skew) is renewed at half
    // its life: right away, then every second.
    let short = |mut s: Spec| {
        s.validity = Some(Duration::from_secs(5));
        s
    };
    let v1 = mesh
        .sidecar_with(short(Spec::new(
            "helloworld-v1",
            "helloworld",
            11,
            &[("app", "helloworld"), ("version", "v1")],
        )))
        .await;
    let v2 = mesh
        .sidecar_with(short(Spec::new(
            "helloworld-v2",
            "helloworld",
            12,
            &[("app", "helloworld"), ("version", "v2")],
        )))
        .await;
    let sleep = mesh
        .sidecar_with(short(Spec::new("sleep", "sleep", 21, &[("app", "sleep")])))
        .await;
    for s in [&v1, &v2] {
        mesh.wait_config(s, |snap| snap.inbound.contains_key(&5000))
            .await;
    }
    let generation = |s: &Sidecar| {
        s.running()
            .proxy
            .snapshot()
            .credentials
            .as_ref()
            .map_or(0, |c| c.generation)
    };
    let before = [generation(&sleep), generation(&v1), generation(&v2)];
    let load = Load::start(sleep.outbound(), HELLO, 4, 50_000);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let report = load.stop().await;
    let after = [generation(&sleep), generation(&v1), generation(&v2)];
    eprintln!("generations {before:?} → {after:?}; {report:?}");
    for (b, a) in before.iter().zip(&after) {
        assert!(
            a >= &(b + 3),
            "certificates rotated at least 3 times: {before:?} → {after:?}"
        );
    }
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.ok > 200, "the load ran: {report:?}");
}
