//! mTLS rejections, both ways: a server with the wrong SPIFFE ID, an expired
//! certificate, a leaf whose trust domain its intermediate does not carry,
//! and a foreign trust domain are refused by the caller's sidecar; the same
//! certificates presented by a client are refused by the inbound listener.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use http::StatusCode;
use support::certs::{Pki, leaf, mtls_get, static_source};
use support::*;

const NET: u8 = 71;
const HELLO_ID: &str = "spiffe://east.isthmus.local/ns/sample/sa/helloworld";
const SLEEP_ID: &str = "spiffe://east.isthmus.local/ns/sample/sa/sleep";
/// Subset (and `x-case` header), host number.
const CASES: &[(&str, u8)] = &[
    ("good", 11),
    ("wrong-san", 12),
    ("expired", 13),
    ("mismatch", 14),
    ("foreign", 15),
];

fn config() -> String {
    let mut y = String::from(
        r#"
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
kind: DestinationRule
metadata: {name: helloworld, namespace: sample}
spec:
  host: helloworld.sample.svc.cluster.local
  subsets:
"#,
    );
    for (case, _) in CASES {
        y.push_str(&format!("  - {{name: {case}, labels: {{case: {case}}}}}\n"));
    }
    y.push_str(
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld, namespace: sample}
spec:
  hosts: [helloworld.sample.svc.cluster.local]
  http:
"#,
    );
    for (case, _) in CASES {
        y.push_str(&format!(
            "  - match: [{{headers: {{x-case: {{exact: {case}}}}}}}]\n    route: [{{destination: {{host: helloworld.sample.svc.cluster.local, subset: {case}}}}}]\n"
        ));
    }
    for (case, host) in CASES {
        y.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: hw-{case}, namespace: sample}}\nspec: {{address: 127.0.{NET}.{host}, labels: {{app: helloworld, case: {case}}}, serviceAccount: helloworld}}\n"
        ));
    }
    y
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_are_refused_both_ways() {
    let pki = Pki::new("east", "east.isthmus.local");
    let roots = pki.roots_pem();
    // Same root, but the intermediate carries another trust domain.
    let west = pki.intermediate("west", "west.isthmus.local");
    // A root (and trust domain) this mesh does not trust.
    let evil = Pki::new("evil", "evil.example");
    let bad = |case: &str| match case {
        "wrong-san" => leaf(
            &pki.intermediate,
            "spiffe://east.isthmus.local/ns/sample/sa/other",
            false,
        ),
        "expired" => leaf(&pki.intermediate, HELLO_ID, true),
        "mismatch" => leaf(&west, HELLO_ID, false),
        "foreign" => leaf(
            &evil.intermediate,
            "spiffe://evil.example/ns/sample/sa/helloworld",
            false,
        ),
        other => unreachable!("{other}"),
    };

    let mesh = Mesh::start_with_ca(
        NET,
        &format!("{}\n---\n{}", services_sleep(), config()),
        Some(pki.ca_dir()),
    )
    .await;
    let mut apps = Vec::new();
    let mut sidecars = Vec::new();
    for (case, host) in CASES {
        apps.push(
            App::start(
                SocketAddr::new(ip(NET, host + 100), 5000),
                case,
                Behavior::Echo,
            )
            .await,
        );
        let mut spec = Spec::new(
            case,
            "helloworld",
            *host,
            &[("app", "helloworld"), ("case", case)],
        );
        if *case != "good" {
            spec.cert = Some(static_source(bad(case), &roots));
        }
        sidecars.push(mesh.sidecar_with(spec).await);
    }
    let sleep = mesh
        .sidecar("sleep", "sleep", 21, &[("app", "sleep")])
        .await;
    for s in &sidecars {
        mesh.wait_config(s, |snap| snap.inbound.contains_key(&5000))
            .await;
    }
    mesh.wait_config(&sleep, |snap| {
        snap.clusters
            .contains_key("outbound|5000|foreign|helloworld.sample.svc.cluster.local")
    })
    .await;

    // The caller's sidecar refuses every server but the good one.
    let c = client();
    let call = |case: &'static str| {
        let c = c.clone();
        let via = sleep.outbound();
        async move { send(&c, via, "GET", HELLO, "/", &[("x-case", case)]).await }
    };
    let r = call("good").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.app(), "good");
    for (i, (case, _)) in CASES.iter().enumerate().skip(1) {
        let r = call(case).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{case}: {r:?}");
        let flags = r.headers["x-isthmus-response-flags"].to_str().unwrap();
        assert!(flags.contains("UF"), "{case}: {flags}");
        assert_eq!(
            apps[i].hits.load(Ordering::Relaxed),
            0,
            "{case}: its app was reached"
        );
    }

    // The good sidecar's inbound refuses the same certificates from a client.
    let inbound = SocketAddr::new(ip(NET, 11), 5000);
    let sleep_leaf = leaf(&pki.intermediate, SLEEP_ID, false);
    assert_eq!(
        mtls_get(inbound, sleep_leaf, &roots, HELLO_ID).await,
        Some(200)
    );
    for (what, cert) in [
        ("expired", leaf(&pki.intermediate, SLEEP_ID, true)),
        (
            "trust domain not the intermediate's",
            leaf(&west, SLEEP_ID, false),
        ),
        (
            "foreign trust domain",
            leaf(
                &evil.intermediate,
                "spiffe://evil.example/ns/sample/sa/sleep",
                false,
            ),
        ),
    ] {
        assert_eq!(
            mtls_get(inbound, cert, &roots, HELLO_ID).await,
            None,
            "{what} accepted"
        );
    }
    // And the client refuses a server that is not who the caller expects.
    let sleep_leaf = leaf(&pki.intermediate, SLEEP_ID, false);
    let other = "spiffe://east.isthmus.local/ns/sample/sa/other";
    assert_eq!(mtls_get(inbound, sleep_leaf, &roots, other).await, None);
}

/// Only the sleep service and its WorkloadEntry (helloworld is per test).
fn services_sleep() -> String {
    let all = services(NET);
    let start = all
        .find("kind: ServiceEntry\nmetadata: {name: sleep")
        .unwrap();
    format!("apiVersion: networking.istio.io/v1\n{}", &all[start..])
}
