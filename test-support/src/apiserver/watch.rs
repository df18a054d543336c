//! Watch response bodies: newline-delimited `{"type": ..., "object": ...}` events.
//!
//! A watch first sends its backlog (the initial state as ADDED events, or the stored
//! history after the requested resourceVersion), then live changes from the store's
//! broadcast channel, until `timeoutSeconds` elapses, the server stops, or the client
//! disconnects. A watch that falls more than [`WATCH_BUFFER`](super::store::WATCH_BUFFER)
//! events behind is ended with a `410 Gone` ERROR event, so writers never wait for readers.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio::time::Sleep;

use super::objects::{ApiError, Filter};
use super::store::{Change, EventType, KindInfo, Signal, Subscription};

/// The annotation on the BOOKMARK that ends the initial events of a streaming list.
pub(crate) const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// Per-request options of a watch.
#[derive(Debug)]
pub(crate) struct WatchOptions {
    pub filter: Filter,
    pub timeout: Duration,
    /// `allowWatchBookmarks=true`: forward bookmarks requested by the test.
    pub bookmarks: bool,
    /// `sendInitialEvents=true`: end the initial ADDED events with a marked BOOKMARK.
    pub initial_events_end: bool,
}

/// Counts open watch bodies; decrements when the body is dropped.
#[derive(Debug)]
struct OpenWatchGuard(Arc<AtomicUsize>);

impl Drop for OpenWatchGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct WatchState {
    pending: VecDeque<Bytes>,
    rx: broadcast::Receiver<Signal>,
    deadline: Pin<Box<Sleep>>,
    shutdown: watch::Receiver<bool>,
    covered_rv: u64,
    opts: WatchOptions,
    kind: KindInfo,
    done: bool,
    _guard: OpenWatchGuard,
}

/// One encoded watch event line.
pub(crate) fn event_line(event_type: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({ "type": event_type, "object": object })).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// The `410 Gone` ERROR event line.
pub(crate) fn gone_line() -> Bytes {
    event_line("ERROR", &ApiError::gone().to_status())
}

fn bookmark_line(kind: &KindInfo, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if initial_events_end {
        metadata["annotations"] = json!({ INITIAL_EVENTS_END: "true" });
    }
    let object =
        json!({ "kind": kind.kind, "apiVersion": kind.api_version(), "metadata": metadata });
    event_line("BOOKMARK", &object)
}

/// Encodes a change as seen through `filter`: updates that move an object into or out of
/// the selection become ADDED or DELETED, like the real API server does.
fn translate(change: &Change, filter: &Filter) -> Option<Bytes> {
    let now = filter.matches(&change.object);
    let event_type = match change.event {
        EventType::Added => now.then_some("ADDED"),
        EventType::Deleted => now.then_some("DELETED"),
        EventType::Modified => {
            let before = change.previous.as_ref().is_some_and(|p| filter.matches(p));
            match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            }
        }
    }?;
    Some(event_line(event_type, &change.object))
}

/// Builds the body stream of a watch response.
pub(crate) fn watch_stream(
    kind: KindInfo,
    sub: Subscription,
    opts: WatchOptions,
    shutdown: watch::Receiver<bool>,
    open_watches: Arc<AtomicUsize>,
) -> impl Stream<Item = Bytes> + Send + 'static {
    open_watches.fetch_add(1, Ordering::SeqCst);
    let mut pending: VecDeque<Bytes> = sub
        .initial
        .iter()
        .filter(|obj| opts.filter.matches(obj))
        .map(|obj| event_line("ADDED", obj))
        .collect();
    pending.extend(
        sub.backlog
            .iter()
            .filter_map(|c| translate(c, &opts.filter)),
    );
    if opts.initial_events_end {
        pending.push_back(bookmark_line(&kind, sub.covered_rv, true));
    }
    let stopped = *shutdown.borrow();
    let state = WatchState {
        pending,
        rx: sub.rx,
        deadline: Box::pin(tokio::time::sleep(opts.timeout)),
        done: stopped,
        shutdown,
        covered_rv: sub.covered_rv,
        opts,
        kind,
        _guard: OpenWatchGuard(open_watches),
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(line) = state.pending.pop_front() {
                return Some((line, state));
            }
            if state.done {
                return None;
            }
            state.next_signal().await;
        }
    })
}

impl WatchState {
    /// Waits for the next thing to send, or for the end of the watch.
    async fn next_signal(&mut self) {
        tokio::select! {
            () = &mut self.deadline => self.done = true,
            _ = self.shutdown.changed() => self.done = true,
            msg = self.rx.recv() => match msg {
                Ok(Signal::Change(change)) => {
                    if change.rv > self.covered_rv
                        && let Some(line) = translate(&change, &self.opts.filter)
                    {
                        self.pending.push_back(line);
                    }
                }
                Ok(Signal::Bookmark(rv)) => {
                    if self.opts.bookmarks {
                        self.pending.push_back(bookmark_line(&self.kind, rv, false));
                    }
                }
                Ok(Signal::Expire) | Err(RecvError::Lagged(_)) => {
                    self.pending.push_back(gone_line());
                    self.done = true;
                }
                Err(RecvError::Closed) => self.done = true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::super::store::{Store, WATCH_BUFFER};
    use super::*;

    fn service(name: &str, version: usize) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "default"}, "spec": {"v": version}})
    }

    fn opts() -> WatchOptions {
        WatchOptions {
            filter: Filter::default(),
            timeout: Duration::from_secs(5),
            bookmarks: true,
            initial_events_end: false,
        }
    }

    #[tokio::test]
    async fn lagging_watch_ends_with_gone_and_never_blocks_writers() {
        let mut store = Store::default();
        let kind = store.kind_for_type("v1", "Service").unwrap();
        let sub = store
            .subscribe(&kind, Some(store.resource_version()), false)
            .unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let (_tx, shutdown) = watch::channel(false);
        let stream = watch_stream(kind, sub, opts(), shutdown, Arc::clone(&open));
        for i in 0..WATCH_BUFFER * 2 {
            store.upsert(service("a", i)).unwrap();
        }
        assert_eq!(open.load(Ordering::SeqCst), 1);
        let lines: Vec<Bytes> = stream.collect().await;
        assert_eq!(lines, vec![gone_line()]);
        assert_eq!(open.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn initial_events_end_with_marked_bookmark() {
        let mut store = Store::default();
        store.upsert(service("a", 1)).unwrap();
        let kind = store.kind_for_type("v1", "Service").unwrap();
        let sub = store.subscribe(&kind, None, true).unwrap();
        let (tx, shutdown) = watch::channel(false);
        let options = WatchOptions {
            initial_events_end: true,
            ..opts()
        };
        let mut stream = Box::pin(watch_stream(kind, sub, options, shutdown, Arc::default()));
        let added: Value = serde_json::from_slice(&stream.next().await.unwrap()).unwrap();
        assert_eq!(added["type"], "ADDED");
        let bookmark: Value = serde_json::from_slice(&stream.next().await.unwrap()).unwrap();
        assert_eq!(bookmark["type"], "BOOKMARK");
        assert_eq!(
            bookmark["object"]["metadata"]["annotations"][INITIAL_EVENTS_END],
            "true"
        );
        assert_eq!(bookmark["object"]["metadata"]["resourceVersion"], "2");
        tx.send(true).unwrap();
        assert!(stream.next().await.is_none());
    }
}
