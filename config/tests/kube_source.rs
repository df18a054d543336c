//! The Kubernetes source and writer, through kube-rs, against the fake API
//! server over real HTTP: list+watch, per-object errors, 410 re-list,
//! API-server restart, namespace scoping, server-side apply.

use std::time::Duration;

use isthmus_api::{Kind, Resource, ResourceKey};
use isthmus_config::kube::KubeSource;
use isthmus_config::store::{Change, Subscription, Update};
use isthmus_config::{ConfigSource, Store};
use isthmus_test_support::apiserver::{FakeApiServer, RequestAction};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const VS_API: &str = "networking.istio.io/v1";

fn vs(ns: &str, name: &str, w1: i64, w2: i64) -> Value {
    json!({
        "apiVersion": VS_API, "kind": "VirtualService",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"hosts": [name], "http": [{"route": [
            {"destination": {"host": name, "subset": "v1"}, "weight": w1},
            {"destination": {"host": name, "subset": "v2"}, "weight": w2}
        ]}]}
    })
}

fn slice(ns: &str, name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": "helloworld"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}, "zone": "us-east-1a"}],
        "ports": [{"name": "http", "port": 5000, "protocol": "TCP"}]
    })
}

fn key(kind: Kind, ns: &str, name: &str) -> ResourceKey {
    ResourceKey::new(kind, ns, name)
}

struct Harness {
    server: FakeApiServer,
    store: Store,
    sub: Subscription,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(seed: &[Value], source: impl FnOnce(kube::Client) -> KubeSource) -> Harness {
    let server = FakeApiServer::start().await;
    server.register(VS_API, "VirtualService", "virtualservices", true);
    for obj in seed {
        server.apply(obj.clone());
    }
    let store = Store::new();
    let shutdown = CancellationToken::new();
    let source = Box::new(source(server.client()));
    tokio::spawn(source.run(store.clone(), shutdown.clone()));
    let mut sub = store.subscribe();
    wait_for(&mut sub, |u| u.snapshot.is_synced()).await;
    Harness {
        server,
        store,
        sub,
        shutdown,
    }
}

async fn wait_for(sub: &mut Subscription, pred: impl Fn(&Update) -> bool) -> Update {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let u = sub.next().await.expect("store alive");
            if pred(&u) {
                return u;
            }
        }
    })
    .await
    .expect("expected store update did not arrive in 20s")
}

fn weight(store: &Store, name: &str) -> Option<i32> {
    let snap = store.snapshot();
    let r = snap.get(&key(Kind::VirtualService, "sample", name))?;
    let Resource::VirtualService(v) = &**r else {
        return None;
    };
    v.spec.http[0].route[0].weight
}

#[tokio::test]
async fn list_then_watch_virtual_services_and_endpoint_slices() {
    let seed = [
        vs("sample", "helloworld", 50, 50),
        slice("sample", "helloworld-abc", "10.0.0.1"),
    ];
    let mut h = start(&seed, |c| {
        KubeSource::new(c).with_kinds(vec![Kind::VirtualService, Kind::EndpointSlice])
    })
    .await;
    let snap = h.store.snapshot();
    assert_eq!(snap.len(), 2);
    assert!(
        snap.get(&key(Kind::EndpointSlice, "sample", "helloworld-abc"))
            .is_some()
    );

    h.server.apply(vs("sample", "reviews", 80, 20));
    let u = wait_for(&mut h.sub, |u| !u.changes.is_empty()).await;
    assert_eq!(
        u.changes,
        vec![Change::Added(key(
            Kind::VirtualService,
            "sample",
            "reviews"
        ))]
    );

    h.server.apply(vs("sample", "helloworld", 90, 10));
    let u = wait_for(&mut h.sub, |u| !u.changes.is_empty()).await;
    assert_eq!(
        u.changes,
        vec![Change::Updated(key(
            Kind::VirtualService,
            "sample",
            "helloworld"
        ))]
    );
    assert_eq!(weight(&h.store, "helloworld"), Some(90));

    h.server
        .apply(slice("sample", "helloworld-abc", "10.0.0.2"));
    let u = wait_for(&mut h.sub, |u| !u.changes.is_empty()).await;
    assert_eq!(
        u.changes,
        vec![Change::Updated(key(
            Kind::EndpointSlice,
            "sample",
            "helloworld-abc"
        ))]
    );

    h.server
        .delete(VS_API, "VirtualService", Some("sample"), "reviews");
    let u = wait_for(&mut h.sub, |u| !u.changes.is_empty()).await;
    assert_eq!(
        u.changes,
        vec![Change::Removed(key(
            Kind::VirtualService,
            "sample",
            "reviews"
        ))]
    );
}

#[tokio::test]
async fn invalid_object_is_reported_and_last_good_version_kept() {
    let mut h = start(&[vs("sample", "helloworld", 50, 50)], |c| {
        KubeSource::new(c).with_kinds(vec![Kind::VirtualService])
    })
    .await;
    h.server.apply(vs("sample", "helloworld", 60, 30));
    let u = wait_for(&mut h.sub, |u| u.snapshot.errors().count() > 0).await;
    let (_, err) = u.snapshot.errors().next().unwrap();
    assert_eq!(
        err.to_string(),
        "VirtualService sample/helloworld: spec.http[0].route: weights sum to 90, expected 100"
    );
    assert_eq!(weight(&h.store, "helloworld"), Some(50));

    // A typo the API server would have pruned reaches us and is named.
    let mut typo = vs("sample", "helloworld", 50, 50);
    typo["spec"]["http"][0]["timout"] = json!("5s");
    h.server.apply(typo);
    let u = wait_for(&mut h.sub, |u| {
        u.snapshot
            .errors()
            .any(|(_, e)| e.message.contains("timout"))
    })
    .await;
    assert_eq!(u.snapshot.errors().count(), 1);

    h.server.apply(vs("sample", "helloworld", 70, 30));
    wait_for(&mut h.sub, |u| {
        u.snapshot.errors().count() == 0 && !u.changes.is_empty()
    })
    .await;
    assert_eq!(weight(&h.store, "helloworld"), Some(70));
}

#[tokio::test]
async fn expired_watch_relists_and_converges() {
    let seed = [vs("sample", "a", 50, 50), vs("sample", "b", 50, 50)];
    let mut h = start(&seed, |c| {
        KubeSource::new(c).with_kinds(vec![Kind::VirtualService])
    })
    .await;
    let lists_before = lists(&h.server);

    // While the API server is down, history moves on and is compacted away.
    h.server.stop().await;
    h.server
        .delete(VS_API, "VirtualService", Some("sample"), "a");
    h.server.apply(vs("sample", "c", 10, 90));
    h.server.compact();
    h.server.start_again().await;

    let u = wait_for(&mut h.sub, |u| u.changes.len() == 2).await;
    let mut changes = u.changes.clone();
    changes.sort_by(|x, y| x.key().cmp(y.key()));
    assert_eq!(
        changes,
        vec![
            Change::Removed(key(Kind::VirtualService, "sample", "a")),
            Change::Added(key(Kind::VirtualService, "sample", "c")),
        ]
    );
    assert!(
        lists(&h.server) > lists_before,
        "the 410 should have forced a re-list"
    );
}

#[tokio::test]
async fn watch_survives_api_server_restart() {
    let mut h = start(&[vs("sample", "a", 50, 50)], |c| {
        KubeSource::new(c).with_kinds(vec![Kind::VirtualService])
    })
    .await;
    assert!(
        h.server
            .wait_until(Duration::from_secs(10), |s| s.open_watches() > 0)
            .await
    );
    h.server.restart().await;
    h.server.apply(vs("sample", "after-restart", 50, 50));
    let u = wait_for(&mut h.sub, |u| !u.changes.is_empty()).await;
    assert_eq!(
        u.changes,
        vec![Change::Added(key(
            Kind::VirtualService,
            "sample",
            "after-restart"
        ))]
    );
}

#[tokio::test]
async fn namespace_scoped_watch_ignores_other_namespaces() {
    let seed = [vs("sample", "a", 50, 50), vs("other", "b", 50, 50)];
    let mut h = start(&seed, |c| {
        KubeSource::new(c)
            .with_kinds(vec![Kind::VirtualService, Kind::Namespace])
            .with_namespaces(vec!["sample".into()])
    })
    .await;
    let snap = h.store.snapshot();
    assert!(
        snap.get(&key(Kind::VirtualService, "sample", "a"))
            .is_some()
    );
    assert!(snap.get(&key(Kind::VirtualService, "other", "b")).is_none());
    h.server.apply(vs("other", "c", 50, 50));
    h.server
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}));
    let u = wait_for(&mut h.sub, |u| !u.changes.is_empty()).await;
    assert_eq!(
        u.changes,
        vec![Change::Added(key(Kind::Namespace, "", "other"))]
    );
    assert!(
        h.store
            .snapshot()
            .get(&key(Kind::VirtualService, "other", "c"))
            .is_none()
    );
}

#[tokio::test]
async fn writer_uses_server_side_apply_and_deletes() {
    let mut h = start(&[], |c| {
        KubeSource::new(c).with_kinds(vec![Kind::VirtualService])
    })
    .await;
    let writer = KubeSource::new(h.server.client()).writer();
    let resource = isthmus_api::load::load_value(vs("sample", "imported", 50, 50)).unwrap();
    writer.apply(&resource).await.unwrap();
    let stored = h
        .server
        .get(VS_API, "VirtualService", Some("sample"), "imported")
        .unwrap();
    assert_eq!(stored["metadata"]["managedFields"][0]["manager"], "isthmus");
    assert_eq!(stored["spec"]["http"][0]["route"][1]["weight"], 50);
    let u = wait_for(&mut h.sub, |u| !u.changes.is_empty()).await;
    assert_eq!(
        u.changes,
        vec![Change::Added(key(
            Kind::VirtualService,
            "sample",
            "imported"
        ))]
    );
    let patch = h
        .server
        .requests()
        .into_iter()
        .find(|r| r.action == RequestAction::Patch)
        .unwrap();
    assert_eq!(patch.param("fieldManager").as_deref(), Some("isthmus"));

    let mut bad = resource.clone();
    if let Resource::VirtualService(v) = &mut bad {
        v.spec.hosts.clear();
    }
    assert!(
        writer.apply(&bad).await.is_err(),
        "invalid objects are never written"
    );

    let k = key(Kind::VirtualService, "sample", "imported");
    assert!(writer.delete(&k).await.unwrap());
    assert!(!writer.delete(&k).await.unwrap());
    let u = wait_for(&mut h.sub, |u| !u.changes.is_empty()).await;
    assert_eq!(u.changes, vec![Change::Removed(k)]);
}

fn lists(server: &FakeApiServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.action == RequestAction::List)
        .count()
}

fn sidecar(ns: &str, name: &str, hosts: &[&str]) -> Value {
    json!({
        "apiVersion": VS_API, "kind": "Sidecar",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"egress": [{"hosts": hosts}]}
    })
}

fn egress_hosts(store: &Store, ns: &str, name: &str) -> Option<Vec<String>> {
    let snap = store.snapshot();
    let r = snap.get(&key(Kind::Sidecar, ns, name))?;
    let Resource::Sidecar(s) = &**r else {
        return None;
    };
    Some(s.spec.egress[0].hosts.clone())
}

#[tokio::test]
async fn sidecars_are_watched_like_the_other_istio_kinds() {
    let server = FakeApiServer::start().await;
    server.register(VS_API, "Sidecar", "sidecars", true);
    server.apply(sidecar("sample", "default", &["./*"]));
    let store = Store::new();
    let shutdown = CancellationToken::new();
    let source = Box::new(KubeSource::new(server.client()).with_kinds(vec![Kind::Sidecar]));
    tokio::spawn(source.run(store.clone(), shutdown.clone()));
    let mut sub = store.subscribe();
    wait_for(&mut sub, |u| u.snapshot.is_synced()).await;
    let mut h = Harness {
        server,
        store,
        sub,
        shutdown,
    };
    assert_eq!(
        egress_hosts(&h.store, "sample", "default"),
        Some(vec!["./*".to_string()])
    );

    h.server
        .apply(sidecar("sample", "default", &["./*", "istio-system/*"]));
    wait_for(&mut h.sub, |u| !u.changes.is_empty()).await;
    assert_eq!(
        egress_hosts(&h.store, "sample", "default").map(|h| h.len()),
        Some(2)
    );

    // An unsupported field is reported by name; the last good version stays.
    let mut bad = sidecar("sample", "default", &["./*"]);
    bad["spec"]["ingress"] = json!([{"port": {"number": 80}, "defaultEndpoint": "127.0.0.1:8080"}]);
    h.server.apply(bad);
    let u = wait_for(&mut h.sub, |u| u.snapshot.errors().count() > 0).await;
    let (_, err) = u.snapshot.errors().next().unwrap();
    assert_eq!(
        err.to_string(),
        "Sidecar sample/default: spec.ingress: Istio field not supported by Isthmus"
    );
    assert_eq!(
        egress_hosts(&h.store, "sample", "default").map(|h| h.len()),
        Some(2)
    );

    h.server
        .delete(VS_API, "Sidecar", Some("sample"), "default");
    let u = wait_for(&mut h.sub, |u| !u.changes.is_empty()).await;
    assert_eq!(
        u.changes,
        vec![Change::Removed(key(Kind::Sidecar, "sample", "default"))]
    );
}
