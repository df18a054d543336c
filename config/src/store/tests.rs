use isthmus_api::load::load_yaml;
use isthmus_api::{Kind, LoadError, ResourceKey};

use super::*;

fn ns(name: &str) -> Resource {
    let text =
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{a: b}}}}\n");
    load_yaml(None, &text).resources.remove(0)
}

fn key(name: &str) -> ResourceKey {
    ResourceKey::new(Kind::Namespace, "", name)
}

#[tokio::test]
async fn subscriber_sees_initial_state_then_changes() {
    let store = Store::new();
    store.replace_origin("a.yaml", vec![ns("one"), ns("two")]);
    let mut sub = store.subscribe();
    let first = sub.next().await.unwrap();
    assert_eq!(first.snapshot.len(), 2);
    assert_eq!(
        first.changes,
        vec![Change::Added(key("one")), Change::Added(key("two"))]
    );

    let mut edited = ns("two");
    edited.meta_mut().labels = Some([("a".to_string(), "c".to_string())].into());
    store.replace_origin("a.yaml", vec![ns("one"), edited, ns("three")]);
    let next = sub.next().await.unwrap();
    assert_eq!(next.snapshot.version(), 2);
    assert_eq!(
        next.changes,
        vec![Change::Added(key("three")), Change::Updated(key("two"))]
    );

    store.remove_origin("a.yaml");
    let last = sub.next().await.unwrap();
    assert!(last.snapshot.is_empty());
    assert_eq!(last.changes.len(), 3);
}

#[tokio::test]
async fn identical_replace_is_not_a_new_version() {
    let store = Store::new();
    store.replace_origin("a.yaml", vec![ns("one")]);
    let v = store.snapshot().version();
    store.replace_origin("a.yaml", vec![ns("one")]);
    assert_eq!(store.snapshot().version(), v);
}

#[tokio::test]
async fn errors_keep_last_good_objects() {
    let store = Store::new();
    store.replace_origin("a.yaml", vec![ns("one")]);
    store.set_errors(ErrorKey::origin("a.yaml"), vec![LoadError::new("broken")]);
    let snap = store.snapshot();
    assert!(snap.get(&key("one")).is_some());
    assert_eq!(snap.errors().count(), 1);
    store.replace_origin("a.yaml", vec![ns("one")]);
    assert_eq!(store.snapshot().errors().count(), 0);
}

#[tokio::test]
async fn conflicting_origins_first_wins_and_second_takes_over() {
    let store = Store::new();
    store.replace_origin("b.yaml", vec![ns("one")]);
    let mut other = ns("one");
    other.meta_mut().labels = None;
    store.replace_origin("a.yaml", vec![other.clone()]);
    let snap = store.snapshot();
    assert_eq!(&**snap.origin_of(&key("one")).unwrap(), "a.yaml");
    assert_eq!(snap.conflicts().count(), 1);
    store.remove_origin("a.yaml");
    let snap = store.snapshot();
    assert_eq!(&**snap.origin_of(&key("one")).unwrap(), "b.yaml");
    assert_eq!(snap.conflicts().count(), 0);
}

#[tokio::test]
async fn of_kind_ranges_over_one_kind() {
    let store = Store::new();
    store.replace_origin("a.yaml", vec![ns("x"), ns("y")]);
    assert_eq!(store.snapshot().of_kind(Kind::Namespace).count(), 2);
    assert_eq!(store.snapshot().of_kind(Kind::Node).count(), 0);
    assert_eq!(store.snapshot().of_kind(Kind::VirtualService).count(), 0);
}

#[tokio::test]
async fn synced_after_every_source_loads() {
    let store = Store::new();
    store.register_source("dir");
    store.register_source("kube");
    assert!(!store.snapshot().is_synced());
    store.mark_synced("dir");
    assert!(!store.snapshot().is_synced());
    store.mark_synced("kube");
    assert!(store.snapshot().is_synced());
}

/// Regression: imbl 6.1 map equality and diff skip entries after shared
/// subtrees (jneem/imbl#161), which once made the store drop about one
/// single-object update in 32. Every update must be a new version with exactly one change.
#[tokio::test]
async fn every_single_object_update_is_a_new_version() {
    let store = Store::new();
    let names: Vec<String> = (0..640).map(|i| format!("ns-{i:04}")).collect();
    store.replace_origin("a.yaml", names.iter().map(|n| ns(n)).collect());
    let mut sub = store.subscribe();
    sub.next().await.unwrap();
    for (i, n) in names.iter().enumerate() {
        let before = store.snapshot().version();
        let mut edited = ns(n);
        edited.meta_mut().labels = Some([("edited".to_string(), "yes".to_string())].into());
        store.update(|t| t.upsert("a.yaml", edited));
        assert_eq!(
            store.snapshot().version(),
            before + 1,
            "update {i} of {n} was lost"
        );
        let u = sub.next().await.unwrap();
        assert_eq!(u.changes, vec![Change::Updated(key(n))], "update {i}");
    }
}
