use std::time::Duration;

use isthmus_api::{Kind, Resource, ResourceKey};

use super::*;
use crate::store::{Change, Update};

fn vs(name: &str, w1: i32, w2: i32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: sample}}\nspec:\n  hosts: [{name}]\n  http:\n  - route:\n    - destination: {{host: {name}, subset: v1}}\n      weight: {w1}\n    - destination: {{host: {name}, subset: v2}}\n      weight: {w2}\n"
    )
}

fn key(name: &str) -> ResourceKey {
    ResourceKey::new(Kind::VirtualService, "sample", name)
}

/// Waits (bounded) for an update whose changes satisfy `pred`.
async fn wait_for(sub: &mut crate::store::Subscription, pred: impl Fn(&Update) -> bool) -> Update {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let u = sub.next().await.expect("store alive");
            if pred(&u) {
                return u;
            }
        }
    })
    .await
    .expect("expected update did not arrive within 10s")
}

fn start(
    dir: &Path,
) -> (
    Store,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), SourceError>>,
) {
    let store = Store::new();
    let shutdown = CancellationToken::new();
    let source = Box::new(DirectorySource::new(dir).with_debounce(Duration::from_millis(20)));
    let task = tokio::spawn(source.run(store.clone(), shutdown.clone()));
    (store, shutdown, task)
}

#[tokio::test]
async fn add_edit_delete_produce_change_events() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), vs("alpha", 50, 50)).unwrap();
    let (store, shutdown, task) = start(dir.path());
    let mut sub = store.subscribe();
    let u = wait_for(&mut sub, |u| u.snapshot.is_synced()).await;
    assert!(u.snapshot.get(&key("alpha")).is_some());

    std::fs::create_dir(dir.path().join("nested")).unwrap();
    std::fs::write(dir.path().join("nested/b.yml"), vs("beta", 90, 10)).unwrap();
    let u = wait_for(&mut sub, |u| !u.changes.is_empty()).await;
    assert_eq!(u.changes, vec![Change::Added(key("beta"))]);

    std::fs::write(dir.path().join("a.yaml"), vs("alpha", 10, 90)).unwrap();
    let u = wait_for(&mut sub, |u| !u.changes.is_empty()).await;
    assert_eq!(u.changes, vec![Change::Updated(key("alpha"))]);

    std::fs::remove_file(dir.path().join("nested/b.yml")).unwrap();
    let u = wait_for(&mut sub, |u| !u.changes.is_empty()).await;
    assert_eq!(u.changes, vec![Change::Removed(key("beta"))]);

    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn broken_file_keeps_last_good_version_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.yaml");
    std::fs::write(
        &file,
        format!("{}---\n{}", vs("alpha", 50, 50), vs("gamma", 50, 50)),
    )
    .unwrap();
    let (store, shutdown, task) = start(dir.path());
    let mut sub = store.subscribe();
    wait_for(&mut sub, |u| u.snapshot.is_synced()).await;

    // Second document now has weights summing to 90; the first is also edited.
    std::fs::write(
        &file,
        format!("{}---\n{}", vs("alpha", 20, 80), vs("gamma", 60, 30)),
    )
    .unwrap();
    let u = wait_for(&mut sub, |u| u.snapshot.errors().count() > 0).await;
    assert!(
        u.changes.is_empty(),
        "nothing half-applied: {:?}",
        u.changes
    );
    let errors: Vec<String> = u.snapshot.errors().map(|(_, e)| e.to_string()).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].ends_with("a.yaml:2: VirtualService sample/gamma: spec.http[0].route: weights sum to 90, expected 100"), "{}", errors[0]);
    let alpha = u.snapshot.get(&key("alpha")).unwrap();
    let Resource::VirtualService(alpha) = &**alpha else {
        panic!()
    };
    assert_eq!(
        alpha.spec.http[0].route[0].weight,
        Some(50),
        "previous version kept"
    );

    // Fixing the file applies both edits at once and clears the error.
    std::fs::write(
        &file,
        format!("{}---\n{}", vs("alpha", 20, 80), vs("gamma", 70, 30)),
    )
    .unwrap();
    let u = wait_for(&mut sub, |u| !u.changes.is_empty()).await;
    assert_eq!(
        u.changes,
        vec![Change::Updated(key("alpha")), Change::Updated(key("gamma"))]
    );
    assert_eq!(u.snapshot.errors().count(), 0);

    // Garbage YAML is reported too, and still nothing is lost.
    std::fs::write(&file, "apiVersion: [oops\n").unwrap();
    let u = wait_for(&mut sub, |u| u.snapshot.errors().count() > 0).await;
    assert_eq!(u.snapshot.len(), 2);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn hidden_and_non_yaml_files_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".hidden.yaml"), vs("a", 50, 50)).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not yaml").unwrap();
    std::fs::write(dir.path().join("b.yaml~"), vs("b", 50, 50)).unwrap();
    let store = Store::new();
    let report = Scanner::new(dir.path()).rescan(&store).unwrap();
    assert_eq!(report.files, 0);
    assert!(store.snapshot().is_empty());
}

#[tokio::test]
async fn missing_directory_is_a_clear_error() {
    let err = Box::new(DirectorySource::new("/nonexistent/isthmus-config"))
        .run(Store::new(), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/isthmus-config"),
        "{err}"
    );
}

#[tokio::test]
async fn writer_applies_atomically_into_generated_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, shutdown, task) = start(dir.path());
    let mut sub = store.subscribe();
    wait_for(&mut sub, |u| u.snapshot.is_synced()).await;

    let writer = DirectorySource::new(dir.path())
        .with_store(store.clone())
        .writer();
    let resource = isthmus_api::load::load_yaml(None, &vs("imported", 50, 50))
        .resources
        .remove(0);
    writer.apply(&resource).await.unwrap();
    // Read-your-writes: the store has it before the watcher fires.
    assert!(store.snapshot().get(&key("imported")).is_some());
    let path = dir
        .path()
        .join("generated/sample_virtualservices_imported.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let reloaded = isthmus_api::load::load_yaml(None, &text);
    assert_eq!(reloaded.resources, vec![resource.clone()]);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("generated"))
        .unwrap()
        .collect();
    assert_eq!(leftovers.len(), 1, "no temp files left behind");

    // An invalid object is refused and nothing is written.
    let mut bad = resource.clone();
    if let Resource::VirtualService(v) = &mut bad {
        v.spec.http[0].route[0].weight = Some(10);
        v.metadata.name = Some("bad".into());
    }
    let err = writer.apply(&bad).await.unwrap_err();
    assert!(err.to_string().contains("weights sum to 60"), "{err}");
    assert!(
        !dir.path()
            .join("generated/sample_virtualservices_bad.yaml")
            .exists()
    );

    assert!(writer.delete(&key("imported")).await.unwrap());
    assert!(!path.exists());
    assert!(store.snapshot().get(&key("imported")).is_none());
    assert!(!writer.delete(&key("imported")).await.unwrap());
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn sidecars_load_from_files_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = |hosts: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: sample}}\nspec:\n  egress:\n  - hosts: [{hosts}]\n"
        )
    };
    std::fs::write(dir.path().join("sidecar.yaml"), sidecar("\"./*\"")).unwrap();
    let (store, shutdown, task) = start(dir.path());
    let mut sub = store.subscribe();
    let u = wait_for(&mut sub, |u| u.snapshot.is_synced()).await;
    let key = ResourceKey::new(Kind::Sidecar, "sample", "default");
    assert!(matches!(
        u.snapshot.get(&key).map(|r| &**r),
        Some(Resource::Sidecar(_))
    ));

    std::fs::write(dir.path().join("sidecar.yaml"), sidecar("reviews")).unwrap();
    let u = wait_for(&mut sub, |u| u.snapshot.errors().count() > 0).await;
    let errors: Vec<String> = u.snapshot.errors().map(|(_, e)| e.to_string()).collect();
    assert!(
        errors[0].ends_with(
            "sidecar.yaml:1: Sidecar sample/default: spec.egress[0].hosts[0]: host \"reviews\" must be <namespace>/<dnsName> (namespace: a name, ., * or ~)"
        ),
        "{errors:?}"
    );
    assert!(
        u.snapshot.get(&key).is_some(),
        "the last good version stays"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
