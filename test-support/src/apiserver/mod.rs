//! A fake Kubernetes API server for `kube-rs` tests.
//!
//! [`FakeApiServer`] serves plain HTTP/1.1 on `127.0.0.1` with a random port. State is a
//! map of JSON objects keyed by resource type, namespace and name, with one global,
//! monotonically increasing `resourceVersion` and a per-resource-type event history, so
//! watches can resume from any resourceVersion since the last [`FakeApiServer::compact`].
//!
//! What is served (the subset `kube-rs` uses):
//! - `GET` on a collection (list; `labelSelector` with `k=v`, `k==v`, `k!=v`, `k`, `!k`,
//!   `k in (a,b)`, `k notin (a,b)`; `fieldSelector` with `path=v`/`path!=v` on any dotted
//!   path such as `metadata.name`; `limit`/`continue` are ignored and everything is
//!   returned in one page).
//! - `GET` on a collection with `watch=true|1`: a chunked stream of newline-delimited watch
//!   events after `resourceVersion` (`""`/`"0"`: the current objects as ADDED first),
//!   until `timeoutSeconds` elapses. `sendInitialEvents=true` sends the current objects
//!   followed by a BOOKMARK annotated `k8s.io/initial-events-end: "true"`. A watch from a
//!   compacted resourceVersion gets a `410 Gone` (see [`ExpiredWatchResponse`]).
//! - `GET`/`PUT`/`DELETE` on an object, `POST` on a collection, `DELETE` on a collection.
//! - `PATCH` with `application/apply-patch+yaml` (server-side apply; `fieldManager` is
//!   required), `application/merge-patch+json` and `application/strategic-merge-patch+json`
//!   (both applied as an RFC 7386 merge patch). JSON patch is answered with `415`.
//! - The `/status` subresource of every kind: writes there only change `status`. Writes to
//!   the main resource change everything they include and keep `status` if they omit it.
//! - `dryRun=All`, `metadata.resourceVersion` preconditions (`409 Conflict`),
//!   `generateName`, and finalizers (deleting an object with finalizers only sets
//!   `deletionTimestamp`; removing the last finalizer then deletes it).
//! - `POST` of an `authentication.k8s.io/v1` TokenReview, answered from the tokens given to
//!   [`FakeApiServer::set_token_reviews`] (see [`FakeToken`]).
//!
//! Errors are Kubernetes `Status` objects; unknown paths get a `404` `Status`.

mod objects;
mod rest;
mod route;
mod server;
mod store;
mod token_review;
mod watch;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;

pub use objects::ApiError;
use store::{Signal, Store};
pub use token_review::FakeToken;

/// How a watch request from a compacted (too old) resourceVersion is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExpiredWatchResponse {
    /// HTTP 200 with a single `ERROR` watch event carrying a `410 Expired` `Status`, then
    /// end of stream. This is what the real API server (its watch cache) does, and what
    /// `kube::runtime::watcher` recovers from by re-listing.
    #[default]
    ErrorEvent,
    /// An HTTP `410 Gone` response with a `Status` body. Note: `kube::runtime::watcher`
    /// (kube 5) treats this as a failed watch start and retries the watch with the same
    /// resourceVersion forever instead of re-listing.
    HttpGone,
}

/// What a logged request did, as routed by the fake server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestAction {
    /// `GET` on a collection without `watch`.
    List,
    /// `GET` on a collection with `watch=true`.
    Watch,
    /// `GET` on an object.
    Get,
    /// `POST` on a collection.
    Create,
    /// `PUT` on an object.
    Replace,
    /// `PATCH` on an object.
    Patch,
    /// `DELETE` on an object.
    Delete,
    /// `DELETE` on a collection.
    DeleteCollection,
    /// Anything else, including paths that were not found.
    Other,
}

/// One request received by the fake server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method, e.g. `GET`.
    pub method: String,
    /// URL path, e.g. `/api/v1/namespaces/default/services`.
    pub path: String,
    /// Raw query string without `?`, exactly as sent (kube-rs starts it with `&`).
    pub query: String,
    /// What the request was routed to.
    pub action: RequestAction,
}

impl RequestRecord {
    /// The percent-decoded value of a query parameter.
    pub fn param(&self, key: &str) -> Option<String> {
        route::Query::parse(&self.query).get(key).map(str::to_owned)
    }
}

/// State shared between the server tasks and the test-side handle.
#[derive(Debug, Default)]
struct Shared {
    store: Mutex<Store>,
    requests: Mutex<Vec<RequestRecord>>,
    open_watches: Arc<AtomicUsize>,
    expired_response: Mutex<ExpiredWatchResponse>,
    /// Tokens answered by TokenReview creates, once set (see `token_review`).
    token_reviews: Mutex<Option<std::collections::HashMap<String, FakeToken>>>,
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not cascade).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
struct Running {
    shutdown: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A fake Kubernetes API server on loopback; see the [module docs](self) for what it serves.
///
/// All methods take `&self`, so the server can be shared (e.g. in an `Arc`) between a test
/// and the tasks it spawns. Dropping it stops the server and closes every connection.
#[derive(Debug)]
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
}

impl FakeApiServer {
    /// The address the server listens on (stable across restarts).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `kube::Config` for this server: default namespace `default`, no auth, a 2 s connect
    /// timeout and no read timeout (so idle watches are not cut off). Tweak it and build a
    /// client with `kube::Client::try_from(config)` if the defaults do not fit.
    pub fn config(&self) -> kube::Config {
        let url = self
            .url()
            .parse()
            .expect("a socket address is a valid URI authority");
        let mut config = kube::Config::new(url);
        config.default_namespace = "default".to_owned();
        config.connect_timeout = Some(Duration::from_secs(2));
        config.write_timeout = Some(Duration::from_secs(5));
        config.read_timeout = None;
        config
    }

    /// A `kube::Client` for this server, built from [`config`](Self::config).
    ///
    /// # Panics
    /// If called outside a Tokio runtime.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("build a kube client for the fake API server")
    }

    /// Registers a kind, e.g. `register("networking.istio.io/v1", "VirtualService",
    /// "virtualservices", true)`. Service, Pod, Namespace, Node (all `v1`) and
    /// `discovery.k8s.io/v1` EndpointSlice are pre-registered.
    pub fn register(&self, api_version: &str, kind: &str, plural: &str, namespaced: bool) {
        lock(&self.shared.store).register(api_version, kind, plural, namespaced);
    }

    /// Creates or replaces an object and returns it as stored (with `resourceVersion`, `uid`,
    /// `creationTimestamp`, `generation`). The object needs `apiVersion`, `kind` of a
    /// registered kind and `metadata.name`; a namespaced object without
    /// `metadata.namespace` goes to `default`. Watches see ADDED or MODIFIED.
    ///
    /// # Panics
    /// If the object is invalid; see [`try_apply`](Self::try_apply).
    pub fn apply(&self, obj: Value) -> Value {
        self.try_apply(obj)
            .unwrap_or_else(|err| panic!("FakeApiServer::apply: {err}"))
    }

    /// Like [`apply`](Self::apply), returning invalid input as an error.
    ///
    /// # Errors
    /// `404` for an unregistered kind, `400` without `metadata.name`.
    pub fn try_apply(&self, obj: Value) -> Result<Value, ApiError> {
        lock(&self.shared.store).upsert(obj)
    }

    /// Deletes an object like an HTTP `DELETE` would and returns its last state, or `None`
    /// if it did not exist. An object with finalizers only gets a `deletionTimestamp`.
    /// `namespace` is ignored for cluster-scoped kinds and defaults to `default`.
    ///
    /// # Panics
    /// If the kind is not registered.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let mut store = lock(&self.shared.store);
        let kind = store
            .kind_for_type(api_version, kind)
            .unwrap_or_else(|e| panic!("{e}"));
        store.delete(&kind, namespace, name, false).ok()
    }

    /// The stored object, if any (`namespace` as for [`delete`](Self::delete)).
    ///
    /// # Panics
    /// If the kind is not registered.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let store = lock(&self.shared.store);
        let kind = store
            .kind_for_type(api_version, kind)
            .unwrap_or_else(|e| panic!("{e}"));
        store.get(&kind, namespace, name)
    }

    /// All stored objects of a kind, in every namespace, sorted by namespace and name.
    ///
    /// # Panics
    /// If the kind is not registered.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let store = lock(&self.shared.store);
        let kind = store
            .kind_for_type(api_version, kind)
            .unwrap_or_else(|e| panic!("{e}"));
        store.list(&kind, &objects::Filter::default())
    }

    /// The current (latest) global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).resource_version()
    }

    /// Simulates etcd compaction: drops all event history. Any later watch, or exact list,
    /// from a resourceVersion older than the current one gets `410 Gone`. Open watches are
    /// not affected (use [`expire_watches`](Self::expire_watches) for that).
    pub fn compact(&self) {
        lock(&self.shared.store).compact();
    }

    /// Sends a BOOKMARK at the current resourceVersion on every open watch that was opened
    /// with `allowWatchBookmarks=true` (kube-rs watchers do this by default).
    pub fn send_bookmarks(&self) {
        let store = lock(&self.shared.store);
        store.signal_all(&Signal::Bookmark(store.resource_version()));
    }

    /// Ends every open watch with a `410 Gone` ERROR event, forcing watchers to re-list.
    pub fn expire_watches(&self) {
        lock(&self.shared.store).signal_all(&Signal::Expire);
    }

    /// Chooses how watches from a compacted resourceVersion are answered.
    pub fn set_expired_watch_response(&self, response: ExpiredWatchResponse) {
        *lock(&self.shared.expired_response) = response;
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests).clone()
    }

    /// How many requests were received so far.
    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// How many watch responses are currently streaming.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// Polls `condition` every 10 ms until it holds or `timeout` passes; returns whether it held.
    pub async fn wait_until(&self, timeout: Duration, condition: impl Fn(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if condition(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
