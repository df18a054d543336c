//! What a config change pushes, with the real store, controller, push
//! contexts and ADS server over loopback: an endpoint change sends EDS only,
//! with only the changed assignments, to only the proxies that see it;
//! resources are generated once and shared between proxies.

#[allow(dead_code)]
mod ads_delta_support;
#[allow(dead_code)]
mod ads_support;
mod store_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ads_delta_support::DeltaClient;
use ads_support::{TIMEOUT, names, proxy, summary};
use isthmus_config::Store;
use isthmus_control_plane::registry::Registry;
use isthmus_control_plane::xds::generate::PushContext;
use isthmus_control_plane::xds::{
    CLUSTER, Changes, ConfigState, ENDPOINT, LISTENER, ProxyInfo, ROUTE,
};
use store_support::{ControlPlane, ORIGIN, mesh, resources, upsert};

const QUIET: Duration = Duration::from_millis(300);

/// Three services in `sample` (the `sleep` test proxy, 127.0.10.5, is an
/// endpoint of `a`) and one visible only in `other`.
fn service_entry(name: &str, ns: &str, addresses: &[&str], export_to: &str) -> String {
    let endpoints: Vec<String> = addresses
        .iter()
        .map(|a| format!("  - {{address: {a}, locality: us-east/us-east-1a}}"))
        .collect();
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [{name}.mesh.internal]
  addresses: [240.0.0.{n}]
  location: MESH_INTERNAL
  resolution: STATIC
  exportTo: [{export_to}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
{eps}
"#,
        n = name.len(),
        eps = endpoints.join("\n"),
    )
}

fn mesh_yaml() -> String {
    [
        service_entry("a", "sample", &["127.0.10.5", "127.0.10.6"], "\"*\""),
        service_entry("bb", "sample", &["127.0.11.1", "127.0.11.2"], "\"*\""),
        service_entry("ccc", "sample", &["127.0.12.1"], "\"*\""),
        service_entry("private", "other", &["127.0.13.1"], "\".\""),
    ]
    .join("---\n")
}

fn cluster(name: &str) -> String {
    format!("outbound|80||{name}.mesh.internal")
}

fn in_namespace(workload: &str, ns: &str) -> ProxyInfo {
    let mut p = proxy(workload);
    p.namespace = ns.into();
    p.ip = "127.0.20.1".parse().ok();
    p.id = ProxyInfo::node_id(p.role, p.ip, workload, ns);
    p
}

#[tokio::test]
async fn endpoint_change_sends_only_the_changed_assignment() {
    let cp = ControlPlane::start(&mesh_yaml()).await;
    let sleep = proxy("sleep");
    let mut c = cp.client(&sleep).await;
    let [cds, eds, ..] = c.sync(&["80"]).await;
    let first_eds_version = eds.version_info.clone();
    assert_eq!(
        names(&eds),
        [cluster("a"), cluster("bb"), cluster("ccc")],
        "the private service is not visible from sample"
    );

    let version = upsert(
        &cp.store,
        &service_entry("bb", "sample", &["127.0.11.1", "127.0.11.9"], "\"*\""),
    );
    let push = tokio::time::timeout(TIMEOUT, c.recv()).await.expect("push");
    assert_eq!(summary(&push), (ENDPOINT.to_string(), vec![cluster("bb")]));
    assert!(
        push.version_info.starts_with(&format!("{version}-")),
        "{}",
        push.version_info
    );
    // Like Envoy (and the test client), subscribed to every CDS name.
    let subscribed = names(&cds);
    let subscribed: Vec<&str> = subscribed.iter().map(String::as_str).collect();
    c.ack(&push, &subscribed).await;
    c.expect_silence(QUIET).await;

    // The config dump still holds every assignment, the new one included.
    let dump = cp.server.last_sent(&sleep.id).expect("dump");
    let eds: Vec<&str> = dump[ENDPOINT].iter().map(|r| r.name.as_str()).collect();
    assert_eq!(eds, [cluster("a"), cluster("bb"), cluster("ccc")]);
    assert_eq!(dump.len(), 4);

    // Moving it back is a change again (digests follow each assignment).
    upsert(
        &cp.store,
        &service_entry("bb", "sample", &["127.0.11.1", "127.0.11.2"], "\"*\""),
    );
    let back = c.recv().await;
    assert_eq!(summary(&back), (ENDPOINT.to_string(), vec![cluster("bb")]));
    let digest = |version: &str| version.split('-').nth(1).map(str::to_string);
    assert_eq!(digest(&back.version_info), digest(&first_eds_version));
}

/// Endpoint changes on incremental streams: one response with one
/// assignment, to the proxies that see it only, and a nonce as ACK.
#[tokio::test]
async fn incremental_endpoint_change_sends_one_assignment() {
    let cp = ControlPlane::start(&mesh_yaml()).await;
    let sleep = proxy("sleep");
    let mut c = DeltaClient::connect(cp.addr, Some(sleep.to_node())).await;
    let [_, eds, ..] = c.sync(&["80"]).await;
    assert_eq!(
        ads_delta_support::names(&eds),
        [cluster("a"), cluster("bb"), cluster("ccc")]
    );
    let web = in_namespace("web", "other");
    let mut other = DeltaClient::connect(cp.addr, Some(web.to_node())).await;
    other.sync(&["80"]).await;

    let version = upsert(
        &cp.store,
        &service_entry("bb", "sample", &["127.0.11.1", "127.0.11.9"], "\"*\""),
    );
    let push = c.recv().await;
    assert_eq!(
        ads_delta_support::summary(&push),
        (ENDPOINT.to_string(), vec![cluster("bb")], vec![])
    );
    assert!(
        push.system_version_info.starts_with(&format!("{version}-")),
        "{}",
        push.system_version_info
    );
    c.ack(&push).await;
    // bb is exported everywhere: the other namespace's proxy sees it too.
    let theirs = other.recv().await;
    assert_eq!(
        ads_delta_support::summary(&theirs),
        ads_delta_support::summary(&push)
    );
    other.ack(&theirs).await;

    // private is seen from its own namespace only.
    upsert(
        &cp.store,
        &service_entry("private", "other", &["127.0.13.2"], "\".\""),
    );
    let private = other.recv().await;
    assert_eq!(
        ads_delta_support::summary(&private),
        (ENDPOINT.to_string(), vec![cluster("private")], vec![])
    );
    other.ack(&private).await;
    c.expect_silence(QUIET).await;
    other.expect_silence(Duration::from_millis(50)).await;
    let dump = cp.server.last_sent(&sleep.id).expect("dump");
    assert_eq!(dump[ENDPOINT].len(), 3);
}

#[tokio::test]
async fn proxy_whose_view_did_not_change_gets_nothing() {
    let cp = ControlPlane::start(&mesh_yaml()).await;
    let mut sleep = cp.client(&proxy("sleep")).await;
    sleep.sync(&["80"]).await;
    let other = in_namespace("web", "other");
    let mut web = cp.client(&other).await;
    let [_, eds, ..] = web.sync(&["80"]).await;
    assert!(names(&eds).contains(&cluster("private")));

    upsert(
        &cp.store,
        &service_entry("private", "other", &["127.0.13.2"], "\".\""),
    );
    let push = web.recv().await;
    assert_eq!(
        summary(&push),
        (ENDPOINT.to_string(), vec![cluster("private")])
    );
    sleep.expect_silence(QUIET).await;
    web.expect_silence(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn proxy_that_is_a_changed_endpoint_gets_its_own_config_again() {
    let cp = ControlPlane::start(&mesh_yaml()).await;
    let sleep = proxy("sleep");
    let mut c = cp.client(&sleep).await;
    let [cds, ..] = c.sync(&["80"]).await;
    assert!(
        names(&cds).contains(&"inbound|80||".to_string()),
        "{:?}",
        names(&cds)
    );

    // sleep (127.0.10.5) is no longer an endpoint of a: its inbound cluster goes.
    upsert(
        &cp.store,
        &service_entry("a", "sample", &["127.0.10.7", "127.0.10.6"], "\"*\""),
    );
    let mut types = BTreeSet::new();
    let mut last_cds = None;
    while let Ok(r) = tokio::time::timeout(QUIET, c.recv()).await {
        if r.type_url == CLUSTER {
            last_cds = Some(names(&r));
        }
        if r.type_url == ENDPOINT {
            // Its other types are regenerated, but of its assignments
            // only the changed one goes out.
            assert_eq!(names(&r), [cluster("a")]);
        }
        types.insert(r.type_url.clone());
        let names = if r.type_url == ENDPOINT {
            names(&cds)
        } else if r.type_url == ROUTE {
            vec!["80".to_string()]
        } else {
            Vec::new()
        };
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        c.ack(&r, &names).await;
    }
    assert!(
        types.contains(CLUSTER) && types.contains(LISTENER) && types.contains(ENDPOINT),
        "{types:?}"
    );
    let last_cds = last_cds.expect("CDS pushed");
    assert!(
        !last_cds.contains(&"inbound|80||".to_string()),
        "{last_cds:?}"
    );
}

fn push_context_after(yaml_changes: &[String]) -> (PushContext, PushContext, Store) {
    let store = Store::new();
    store.replace_origin(ORIGIN, resources(&mesh_yaml()));
    let before_snapshot = store.snapshot();
    let before = PushContext::build(&before_snapshot, mesh());
    let mut sub = store.subscribe();
    // The subscription's first answer is the current version.
    let _ = futures::executor::block_on(sub.next());
    for y in yaml_changes {
        upsert(&store, y);
    }
    let update = futures::executor::block_on(sub.next()).expect("update");
    let after = before.next(&before_snapshot, &update.snapshot, &update.changes);
    (before, after, store)
}

#[test]
fn endpoint_only_change_is_recorded_and_the_registry_matches_a_full_build() {
    let (before, after, store) = push_context_after(&[service_entry(
        "bb",
        "sample",
        &["127.0.11.1", "127.0.11.9"],
        "\"*\"",
    )]);
    let Changes::Endpoints(scope) = after.changes_since(before.version) else {
        panic!("{:?}", after.changes_since(before.version));
    };
    assert_eq!(scope.clusters, BTreeSet::from([cluster("bb")]));
    assert!(scope.workloads.contains("127.0.11.9") && scope.workloads.contains("127.0.11.2"));
    assert!(!scope.affects_whole(&proxy("sleep")));
    assert_eq!(after.changes_since(after.version), Changes::None);
    assert_eq!(
        after.changes_since(0),
        Changes::All,
        "older than the history"
    );

    let full = Registry::build(&store.snapshot(), &mesh().cluster);
    let incremental: Vec<_> = after.registry.services().map(|s| (**s).clone()).collect();
    let built: Vec<_> = full.services().map(|s| (**s).clone()).collect();
    assert_eq!(incremental, built);
}

#[test]
fn other_changes_change_everything() {
    // A new port is not an endpoint change.
    let yaml = service_entry("bb", "sample", &["127.0.11.1"], "\"*\"").replace(
        "ports: [{number: 80, name: http, protocol: HTTP}]",
        "ports: [{number: 81, name: http, protocol: HTTP}]",
    );
    let (before, after, _) = push_context_after(&[yaml]);
    let Changes::Services(changed) = after.changes_since(before.version) else {
        panic!("{:?}", after.changes_since(before.version));
    };
    assert_eq!(
        changed.hosts,
        BTreeSet::from(["bb.mesh.internal".to_string()])
    );
    // Every proxy no Sidecar scopes may see anything change.
    assert_eq!(
        after
            .changes_since(before.version)
            .for_proxy(&proxy("sleep"), &after, &before),
        Changes::All
    );

    let vs = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bb, namespace: sample}
spec:
  hosts: [bb.mesh.internal]
  http:
  - route:
    - destination: {host: bb.mesh.internal}
"#;
    let (before, after, _) = push_context_after(&[vs.to_string()]);
    assert_eq!(after.changes_since(before.version), Changes::All);
}

#[test]
fn resources_are_generated_once_and_shared() {
    let store = Store::new();
    store.replace_origin(ORIGIN, resources(&mesh_yaml()));
    let pc = PushContext::build(&store.snapshot(), mesh());
    let (one, two) = (proxy("sleep"), proxy("web"));
    let none = BTreeSet::new();
    let eds_names: BTreeSet<String> = [cluster("a"), cluster("bb")].into();
    let routes: BTreeSet<String> = ["80".to_string()].into();
    for (type_url, names) in [
        (CLUSTER, &none),
        (LISTENER, &none),
        (ENDPOINT, &eds_names),
        (ROUTE, &routes),
    ] {
        let a = pc.generate_shared(&one, type_url, names).expect("generate");
        let b = pc.generate_shared(&two, type_url, names).expect("generate");
        let shared = a
            .iter()
            .filter(|r| b.iter().any(|s| Arc::ptr_eq(r, s)))
            .count();
        // Only the proxy's own inbound cluster and listener are its own.
        let own = a
            .iter()
            .filter(|r| r.name.starts_with("inbound|") || r.name == "virtualInbound")
            .count();
        assert_eq!(shared + own, a.len(), "{type_url}");
        assert!(shared > 0, "{type_url}");
        // And the same content as the unshared generator.
        let mut plain = pc.generate(&one, type_url, names).expect("generate");
        plain.sort_by(|x, y| x.name.cmp(&y.name));
        let mut from_shared: Vec<_> = a.iter().map(|r| r.to_resource()).collect();
        from_shared.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(from_shared, plain, "{type_url}");
    }
}
