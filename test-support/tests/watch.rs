//! Watch behaviour of the fake API server with `kube::runtime::watcher`: initial list,
//! live events, compaction (`410 Gone` and re-list) and API-server restarts.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{Stream, StreamExt};
use isthmus_test_support::apiserver::{ExpiredWatchResponse, FakeApiServer, RequestAction};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, WatchEvent, WatchParams};
use kube::runtime::watcher::Event;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

fn service(name: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
        "spec": {"ports": [{"port": 80}]}
    })
}

fn name(svc: &Service) -> String {
    svc.metadata.name.clone().unwrap()
}

type WatchItem = Result<Event<Service>, watcher::Error>;

/// A watcher driven by its own task, as a controller would drive it, so it keeps its
/// watch open (and reconnects) while the test does other things.
struct Driven {
    rx: mpsc::UnboundedReceiver<WatchItem>,
    task: JoinHandle<()>,
}

impl Drop for Driven {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn drive(stream: impl Stream<Item = WatchItem> + Send + 'static) -> Driven {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            if tx.send(item).is_err() {
                break;
            }
        }
    });
    Driven { rx, task }
}

/// The next item of the watcher, errors included.
async fn next_item(watch: &mut Driven) -> WatchItem {
    timeout(WAIT, watch.rx.recv())
        .await
        .expect("timed out waiting for the watcher")
        .expect("watcher stream ended")
}

/// The next successful watcher event, skipping errors (the watcher recovers from them).
async fn next_event(watch: &mut Driven) -> Event<Service> {
    loop {
        match next_item(watch).await {
            Ok(event) => return event,
            Err(err) => eprintln!("watcher error (expected during recovery): {err}"),
        }
    }
}

/// Consumes Init, InitApply..., InitDone and returns the initially listed names.
async fn initial_names(stream: &mut Driven) -> BTreeSet<String> {
    loop {
        if matches!(next_event(stream).await, Event::Init) {
            break;
        }
    }
    let mut names = BTreeSet::new();
    loop {
        match next_event(stream).await {
            Event::InitApply(svc) => names.insert(name(&svc)),
            Event::InitDone => return names,
            other => panic!("unexpected event during initial list: {other:?}"),
        };
    }
}

async fn expect_apply(stream: &mut Driven, expected: &str) {
    match next_event(stream).await {
        Event::Apply(svc) => assert_eq!(name(&svc), expected),
        other => panic!("expected Apply({expected}), got {other:?}"),
    }
}

#[tokio::test]
async fn watcher_sees_initial_list_then_apply_and_delete() {
    let server = FakeApiServer::start().await;
    server.apply(service("a", "web"));
    let api: Api<Service> = Api::default_namespaced(server.client());
    let mut stream = drive(watcher(api.clone(), watcher::Config::default()));

    assert_eq!(
        initial_names(&mut stream).await,
        BTreeSet::from(["a".to_owned()])
    );
    server.apply(service("b", "web"));
    expect_apply(&mut stream, "b").await;
    api.patch(
        "c",
        &PatchParams::apply("isthmus-test"),
        &Patch::Apply(service("c", "web")),
    )
    .await
    .unwrap();
    expect_apply(&mut stream, "c").await;
    server
        .delete("v1", "Service", Some("default"), "a")
        .unwrap();
    match next_event(&mut stream).await {
        Event::Delete(svc) => assert_eq!(name(&svc), "a"),
        other => panic!("expected Delete(a), got {other:?}"),
    }

    // What kube 5's default watcher sends: a paged list, then a watch from its resourceVersion.
    let requests = server.requests();
    let list = requests
        .iter()
        .find(|r| r.action == RequestAction::List)
        .unwrap();
    assert_eq!(list.query, "&limit=500");
    let watch = requests
        .iter()
        .find(|r| r.action == RequestAction::Watch)
        .unwrap();
    assert_eq!(watch.path, "/api/v1/namespaces/default/services");
    assert_eq!(
        watch.query,
        "&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=2"
    );
}

#[tokio::test]
async fn label_selected_watch_turns_relabels_into_apply_and_delete() {
    let server = FakeApiServer::start().await;
    let api: Api<Service> = Api::default_namespaced(server.client());
    let mut stream = drive(watcher(api, watcher::Config::default().labels("app=web")));
    assert!(initial_names(&mut stream).await.is_empty());
    server.apply(service("a", "db"));
    server.apply(service("a", "web"));
    expect_apply(&mut stream, "a").await;
    server.apply(service("a", "db"));
    assert!(matches!(next_event(&mut stream).await, Event::Delete(svc) if name(&svc) == "a"));
}

#[tokio::test]
async fn compaction_forces_a_relist_after_reconnect() {
    let server = FakeApiServer::start().await;
    server.apply(service("a", "web"));
    let api: Api<Service> = Api::default_namespaced(server.client());
    let mut stream = drive(watcher(api, watcher::Config::default()).default_backoff());
    assert_eq!(initial_names(&mut stream).await.len(), 1);
    assert!(server.wait_until(WAIT, |s| s.open_watches() == 1).await);

    // The watcher misses a change while the server is down, and the history is compacted.
    server.stop().await;
    server
        .delete("v1", "Service", Some("default"), "a")
        .unwrap();
    server.apply(service("b", "web"));
    server.compact();
    server.clear_requests();
    server.start_again().await;

    assert_eq!(
        initial_names(&mut stream).await,
        BTreeSet::from(["b".to_owned()])
    );
    let requests = server.requests();
    let actions: Vec<_> = requests.iter().map(|r| r.action).collect();
    assert_eq!(
        actions[..2],
        [RequestAction::Watch, RequestAction::List],
        "{requests:#?}"
    );
    server.apply(service("c", "web"));
    expect_apply(&mut stream, "c").await;
}

#[tokio::test]
async fn watcher_recovers_from_a_restart_without_relisting() {
    let server = FakeApiServer::start().await;
    server.apply(service("a", "web"));
    let api: Api<Service> = Api::default_namespaced(server.client());
    let mut stream = drive(watcher(api, watcher::Config::default()).default_backoff());
    assert_eq!(initial_names(&mut stream).await.len(), 1);
    assert!(server.wait_until(WAIT, |s| s.open_watches() == 1).await);

    server.clear_requests();
    server.restart().await;
    assert_eq!(server.open_watches(), 0);
    server.apply(service("b", "web"));
    expect_apply(&mut stream, "b").await;
    // The history survived, so the watcher resumed its watch instead of listing again.
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.action == RequestAction::Watch)
    );

    // A watcher polled during an outage sees the failed reconnects.
    server.stop().await;
    assert!(!server.is_running());
    assert!(next_item(&mut stream).await.is_err());
    server.apply(service("c", "web"));
    server.start_again().await;
    expect_apply(&mut stream, "c").await;
}

#[tokio::test]
async fn expired_watches_relist() {
    let server = FakeApiServer::start().await;
    let api: Api<Service> = Api::default_namespaced(server.client());
    let mut stream = drive(watcher(api, watcher::Config::default()));
    assert!(initial_names(&mut stream).await.is_empty());
    assert!(server.wait_until(WAIT, |s| s.open_watches() == 1).await);
    server.apply(service("a", "web"));
    expect_apply(&mut stream, "a").await;
    server.expire_watches();
    assert_eq!(
        initial_names(&mut stream).await,
        BTreeSet::from(["a".to_owned()])
    );
}

#[tokio::test]
async fn streaming_list_uses_send_initial_events() {
    let server = FakeApiServer::start().await;
    server.apply(service("a", "web"));
    let api: Api<Service> = Api::default_namespaced(server.client());
    let mut stream = drive(watcher(api, watcher::Config::default().streaming_lists()));
    assert_eq!(
        initial_names(&mut stream).await,
        BTreeSet::from(["a".to_owned()])
    );
    server.apply(service("b", "web"));
    expect_apply(&mut stream, "b").await;
    let requests = server.requests();
    assert!(requests.iter().all(|r| r.action == RequestAction::Watch));
    assert_eq!(
        requests[0].query,
        "&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&sendInitialEvents=true\
         &resourceVersionMatch=NotOlderThan&resourceVersion=0"
    );
}

#[tokio::test]
async fn raw_watch_from_compacted_version_and_bookmarks() {
    let server = FakeApiServer::start().await;
    server.apply(service("a", "web"));
    let old = server.resource_version().to_string();
    server.apply(service("a", "db"));
    let api: Api<Service> = Api::default_namespaced(server.client());
    let wp = WatchParams::default().timeout(2);

    // Before compaction the history is replayed; bookmarks are forwarded on request.
    let mut events = api.watch(&wp, &old).await.unwrap().boxed();
    let first = timeout(WAIT, events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(first, WatchEvent::Modified(_)));
    server.send_bookmarks();
    let second = timeout(WAIT, events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(second, WatchEvent::Bookmark(b) if b.metadata.resource_version == server.resource_version().to_string())
    );

    // A client that goes away closes its watch on the server promptly.
    drop(events);
    assert!(server.wait_until(WAIT, |s| s.open_watches() == 0).await);

    server.compact();
    let mut events = api.watch(&wp, &old).await.unwrap().boxed();
    match timeout(WAIT, events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(timeout(WAIT, events.next()).await.unwrap().is_none());

    server.set_expired_watch_response(ExpiredWatchResponse::HttpGone);
    match api.watch(&wp, &old).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 410),
        Err(other) => panic!("expected HTTP 410, got {other:?}"),
        Ok(_) => panic!("expected HTTP 410, got a stream"),
    }
    // Watching from the compaction point itself is fine, and ends after timeoutSeconds.
    let current = server.resource_version().to_string();
    let short = WatchParams::default().timeout(1);
    let mut events = api.watch(&short, &current).await.unwrap().boxed();
    assert_eq!(server.open_watches(), 1);
    assert!(timeout(WAIT, events.next()).await.unwrap().is_none());
    assert!(server.wait_until(WAIT, |s| s.open_watches() == 0).await);
}

/// A fast constant backoff, so retries are observable within the test timeout.
#[derive(Debug, Clone, Copy)]
struct Every100ms;

impl Iterator for Every100ms {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(Duration::from_millis(100))
    }
}

impl kube::runtime::utils::Backoff for Every100ms {
    fn reset(&mut self) {}
}

/// Documents a kube 5 behaviour: an HTTP 410 answer to a watch request is a
/// `WatchStartFailed` that the watcher retries with the same resourceVersion, never
/// re-listing. This is why the fake server defaults to the 410 ERROR event.
#[tokio::test]
async fn http_gone_on_watch_start_does_not_make_kube_watcher_relist() {
    let server = FakeApiServer::start().await;
    server.set_expired_watch_response(ExpiredWatchResponse::HttpGone);
    let api: Api<Service> = Api::default_namespaced(server.client());
    let mut stream = drive(watcher(api, watcher::Config::default()).backoff(Every100ms));
    assert!(initial_names(&mut stream).await.is_empty());
    assert!(server.wait_until(WAIT, |s| s.open_watches() == 1).await);
    server.stop().await;
    server.apply(service("a", "web"));
    server.compact();
    server.clear_requests();
    server.start_again().await;
    let mut gone = 0;
    while gone < 3 {
        match next_item(&mut stream).await {
            Err(watcher::Error::WatchStartFailed(kube::Error::Api(status))) => {
                assert_eq!(status.code, 410);
                gone += 1;
            }
            Err(err) => eprintln!("watcher error during the outage: {err}"),
            Ok(event) => panic!("the watcher should be stuck, got {event:?}"),
        }
    }
    let requests = server.requests();
    assert!(
        requests.iter().all(|r| r.action == RequestAction::Watch),
        "{requests:#?}"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.param("resourceVersion").as_deref() == Some("1"))
    );
}
