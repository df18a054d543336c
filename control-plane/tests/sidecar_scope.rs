//! Sidecar resources scope what a proxy gets, end to end: the real store,
//! controller, push contexts and ADS server on loopback, real gRPC clients
//! (state of the world and incremental).

#[allow(dead_code)]
mod ads_delta_support;
#[allow(dead_code)]
mod ads_support;
#[allow(dead_code)]
mod store_support;

use std::collections::BTreeSet;
use std::time::Duration;

use ads_delta_support::DeltaClient;
use ads_support::{Client, names, proxy, summary};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use isthmus_api::{Kind, ResourceKey};
use isthmus_config::Store;
use isthmus_control_plane::xds::generate::MeshConfig;
use isthmus_control_plane::xds::{CLUSTER, ENDPOINT, LISTENER, ProxyInfo, ROUTE};
use prost::Message;
use store_support::{ControlPlane, ORIGIN, resources, upsert};

const QUIET: Duration = Duration::from_millis(300);

fn service_entry(name: &str, ns: &str, host: &str, port: &str, endpoint: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [{host}]
  addresses: [240.0.0.{n}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{port}]
  endpoints:
  - {{address: {endpoint}}}
"#,
        n = name.len(),
    )
}

const HTTP: &str = "{number: 80, name: http, protocol: HTTP}";
const TCP: &str = "{number: 5432, name: tcp, protocol: TCP}";

fn sidecar(hosts: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: sleep, namespace: sample}}
spec:
  workloadSelector:
    labels: {{app: sleep}}
  egress:
  - hosts: [{hosts}]
"#
    )
}

/// `a` in sample (the sleep proxy is one of its endpoints), `b` and `db`
/// in other, a peer's `hello.west.global` (declared in `west`), rules for
/// the out-of-scope `b`, and the Sidecar importing `./*` and `west/*`.
fn mesh_yaml() -> String {
    [
        service_entry("a", "sample", "a.mesh.internal", HTTP, "127.0.10.5"),
        service_entry("b", "other", "b.mesh.internal", HTTP, "127.0.11.1"),
        service_entry("db", "other", "db.mesh.internal", TCP, "127.0.11.2"),
        service_entry("hello", "west", "hello.west.global", HTTP, "127.0.12.1"),
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: b, namespace: sample}
spec:
  host: b.mesh.internal
  subsets: [{name: v1, labels: {version: v1}}]
"#
        .to_string(),
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b, namespace: sample}
spec:
  hosts: [b.mesh.internal]
  http:
  - route: [{destination: {host: b.mesh.internal, subset: v1}}]
"#
        .to_string(),
        sidecar(r#""./*", "west/*""#),
    ]
    .join("---\n")
}

fn cluster(host: &str) -> String {
    format!("outbound|80||{host}")
}

/// The sleep proxy, which the Sidecar selects.
fn sleep() -> ProxyInfo {
    let mut p = proxy("sleep");
    p.labels.insert("app".into(), "sleep".into());
    p
}

/// An unscoped proxy in the same namespace.
fn web() -> ProxyInfo {
    let mut p = proxy("web");
    p.ip = "127.0.20.1".parse().ok();
    p.id = ProxyInfo::node_id(p.role, p.ip, "web", "sample");
    p
}

fn virtual_hosts(rds: &DiscoveryResponse) -> Vec<String> {
    rds.resources
        .iter()
        .flat_map(|r| {
            RouteConfiguration::decode(r.value.as_slice())
                .expect("RouteConfiguration")
                .virtual_hosts
        })
        .map(|vh| vh.name)
        .collect()
}

/// Receives and ACKs (as Envoy: EDS follows the newest CDS) until quiet;
/// the responses, in order. Bounded by 20 responses.
async fn drain(c: &mut Client, clusters: &mut Vec<String>) -> Vec<DiscoveryResponse> {
    let mut got = Vec::new();
    while let Ok(r) = tokio::time::timeout(QUIET, c.recv()).await {
        if r.type_url == CLUSTER {
            *clusters = names(&r);
        }
        let subscribed = match r.type_url.as_str() {
            ENDPOINT => clusters.clone(),
            ROUTE => vec!["80".to_string()],
            _ => Vec::new(),
        };
        let subscribed: Vec<&str> = subscribed.iter().map(String::as_str).collect();
        c.ack(&r, &subscribed).await;
        if r.type_url == CLUSTER {
            c.request(ENDPOINT, &subscribed_eds(clusters), None, None)
                .await;
        }
        got.push(r);
        assert!(
            got.len() <= 20,
            "push storm: {:?}",
            got.iter().map(summary).collect::<Vec<_>>()
        );
    }
    got
}

fn subscribed_eds(clusters: &[String]) -> Vec<&str> {
    clusters
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with("outbound|"))
        .collect()
}

#[tokio::test]
async fn scoped_proxy_gets_only_the_services_it_imports() {
    let cp = ControlPlane::start(&mesh_yaml()).await;
    let mut c = cp.client(&sleep()).await;
    let [cds, eds, lds, rds] = c.sync(&["80"]).await;
    let want = [cluster("a.mesh.internal"), cluster("hello.west.global")];
    // The rules for b bring neither b nor its subset back.
    assert_eq!(subscribed_eds(&names(&cds)), want);
    assert!(
        names(&cds).contains(&"inbound|80||".to_string()),
        "inbound side unchanged"
    );
    assert_eq!(names(&eds), want);
    let listeners = names(&lds);
    assert!(
        listeners.contains(&"0.0.0.0_80".to_string()),
        "{listeners:?}"
    );
    assert!(
        !listeners.iter().any(|l| l.ends_with("_5432")),
        "no TCP listener for db: {listeners:?}"
    );
    assert_eq!(
        virtual_hosts(&rds),
        ["a.mesh.internal:80", "hello.west.global:80", "allow_any"]
    );

    // An unscoped proxy of the same namespace sees everything.
    let mut w = cp.client(&web()).await;
    let [cds, _, lds, rds] = w.sync(&["80"]).await;
    assert_eq!(
        subscribed_eds(&names(&cds)),
        [
            "outbound|5432||db.mesh.internal".to_string(),
            "outbound|80|v1|b.mesh.internal".to_string(),
            cluster("a.mesh.internal"),
            cluster("b.mesh.internal"),
            cluster("hello.west.global"),
        ]
    );
    assert!(
        names(&lds).contains(&"240.0.0.2_5432".to_string()),
        "{:?}",
        names(&lds)
    );
    assert_eq!(virtual_hosts(&rds).len(), 4);

    // An out-of-scope name asked for explicitly is not served either.
    c.request(ENDPOINT, &[&cluster("b.mesh.internal")], None, None)
        .await;
    let eds = c.recv().await;
    assert_eq!(names(&eds), Vec::<String>::new());

    // Operators see which Sidecar applies.
    let statuses = cp.server.sync_status();
    let scope_of = |id: &str| {
        statuses
            .iter()
            .find(|s| s.proxy_id == id)
            .map(|s| s.scope.clone())
    };
    assert_eq!(
        scope_of(&sleep().id),
        Some(Some("Sidecar sample/sleep".into()))
    );
    assert_eq!(scope_of(&web().id), Some(None));
}

#[tokio::test]
async fn out_of_scope_changes_do_not_push_the_scoped_proxy() {
    let cp = ControlPlane::start(&mesh_yaml()).await;
    let mut c = cp.client(&sleep()).await;
    let [cds, ..] = c.sync(&["80"]).await;
    let mut clusters = names(&cds);
    let mut w = cp.client(&web()).await;
    let [web_cds, ..] = w.sync(&["80"]).await;
    let mut web_clusters = names(&web_cds);

    // A new port on b (not endpoints-only: clusters and listeners change).
    upsert(
        &cp.store,
        &service_entry(
            "b",
            "other",
            "b.mesh.internal",
            "{number: 81, name: http, protocol: HTTP}",
            "127.0.11.1",
        ),
    );
    let pushed = drain(&mut w, &mut web_clusters).await;
    let types: BTreeSet<&str> = pushed.iter().map(|r| r.type_url.as_str()).collect();
    assert!(
        types.contains(CLUSTER) && types.contains(LISTENER),
        "{types:?}"
    );
    c.expect_silence(Duration::from_millis(50)).await;

    // Endpoints of db move: the unscoped proxy gets EDS, the scoped one nothing.
    upsert(
        &cp.store,
        &service_entry("db", "other", "db.mesh.internal", TCP, "127.0.11.9"),
    );
    let pushed = drain(&mut w, &mut web_clusters).await;
    assert_eq!(
        pushed.iter().map(summary).collect::<Vec<_>>(),
        [(
            ENDPOINT.to_string(),
            vec!["outbound|5432||db.mesh.internal".to_string()]
        )]
    );
    c.expect_silence(Duration::from_millis(50)).await;

    // In scope: a's endpoints move, then a new service appears in sample.
    upsert(
        &cp.store,
        &service_entry(
            "a",
            "sample",
            "a.mesh.internal",
            HTTP,
            "127.0.10.5}\n  - {address: 127.0.10.6",
        ),
    );
    let pushed = drain(&mut c, &mut clusters).await;
    assert!(
        pushed
            .iter()
            .any(|r| r.type_url == ENDPOINT && names(r).contains(&cluster("a.mesh.internal"))),
        "{:?}",
        pushed.iter().map(summary).collect::<Vec<_>>()
    );
    upsert(
        &cp.store,
        &service_entry("new", "sample", "new.mesh.internal", HTTP, "127.0.10.8"),
    );
    let pushed = drain(&mut c, &mut clusters).await;
    let new_cds = pushed
        .iter()
        .rev()
        .find(|r| r.type_url == CLUSTER)
        .expect("CDS pushed");
    assert_eq!(
        subscribed_eds(&names(new_cds)),
        [
            cluster("a.mesh.internal"),
            cluster("hello.west.global"),
            cluster("new.mesh.internal")
        ]
    );
}

#[tokio::test]
async fn editing_the_sidecar_rescopes_the_proxies_it_selects() {
    let cp = ControlPlane::start(&mesh_yaml()).await;
    let mut c = DeltaClient::connect(cp.addr, Some(sleep().to_node())).await;
    let [cds, ..] = c.sync(&["80"]).await;
    assert_eq!(
        subscribed_eds(&ads_delta_support::names(&cds)),
        [cluster("a.mesh.internal"), cluster("hello.west.global")]
    );
    let mut w = cp.client(&web()).await;
    w.sync(&["80"]).await;

    // Import b too: CDS adds b (and its subset), LDS/RDS follow; web unchanged.
    upsert(
        &cp.store,
        &sidecar(r#""./*", "west/*", "other/b.mesh.internal""#),
    );
    let cds = c.recv().await;
    assert_eq!(
        ads_delta_support::summary(&cds),
        (
            CLUSTER.to_string(),
            vec![
                "outbound|80|v1|b.mesh.internal".to_string(),
                cluster("b.mesh.internal")
            ],
            vec![]
        )
    );
    c.ack(&cds).await;
    let mut types = BTreeSet::new();
    while let Ok(r) = tokio::time::timeout(QUIET, c.recv()).await {
        types.insert(r.type_url.clone());
        c.ack(&r).await;
        assert!(types.len() <= 4, "{types:?}");
    }
    assert!(types.contains(ROUTE), "the route config gains b: {types:?}");
    w.expect_silence(Duration::from_millis(50)).await;

    // Without the Sidecar, the proxy gets everything (db too).
    cp.store
        .update(|t| t.remove(ORIGIN, &ResourceKey::new(Kind::Sidecar, "sample", "sleep")));
    let cds = c.recv().await;
    assert_eq!(
        ads_delta_support::summary(&cds),
        (
            CLUSTER.to_string(),
            vec!["outbound|5432||db.mesh.internal".to_string()],
            vec![]
        )
    );
    c.ack(&cds).await;
    w.expect_silence(QUIET).await;
}

/// What the push context records for a change to a service, and what that
/// is for a proxy that imports it and one that does not.
#[test]
fn a_service_change_is_everything_only_for_proxies_that_import_it() {
    use isthmus_control_plane::xds::generate::PushContext;
    use isthmus_control_plane::xds::{Changes, ConfigState};

    let store = Store::new();
    store.replace_origin(ORIGIN, resources(&mesh_yaml()));
    let before_snapshot = store.snapshot();
    let before = PushContext::build(&before_snapshot, MeshConfig::default());
    let mut sub = store.subscribe();
    let _ = futures::executor::block_on(sub.next());
    // A new port on b (out of sleep's scope), then a new port on a (in it).
    upsert(
        &store,
        &service_entry(
            "b",
            "other",
            "b.mesh.internal",
            "{number: 81, name: http, protocol: HTTP}",
            "127.0.11.1",
        ),
    );
    let update = futures::executor::block_on(sub.next()).expect("update");
    let after = before.next(&before_snapshot, &update.snapshot, &update.changes);
    let changes = after.changes_since(before.version);
    assert!(
        matches!(&changes, Changes::Services(s) if s.hosts.len() == 1),
        "{changes:?}"
    );
    assert_eq!(
        changes.clone().for_proxy(&sleep(), &after, &before),
        Changes::Endpoints(match &changes {
            Changes::Services(s) => s.endpoints.clone(),
            _ => unreachable!(),
        })
    );
    assert_eq!(changes.for_proxy(&web(), &after, &before), Changes::All);

    upsert(
        &store,
        &service_entry(
            "a",
            "sample",
            "a.mesh.internal",
            "{number: 81, name: http, protocol: HTTP}",
            "127.0.10.9",
        ),
    );
    let update2 = futures::executor::block_on(sub.next()).expect("update");
    let last = after.next(&update.snapshot, &update2.snapshot, &update2.changes);
    assert_eq!(
        last.changes_since(after.version)
            .for_proxy(&sleep(), &last, &after),
        Changes::All
    );
    // Since `before`, both changes merge: b's and a's.
    let Changes::Services(both) = last.changes_since(before.version) else {
        panic!("{:?}", last.changes_since(before.version));
    };
    assert_eq!(
        both.hosts,
        BTreeSet::from(["a.mesh.internal".to_string(), "b.mesh.internal".to_string()])
    );
}
