//! The Aggregated Discovery Service, one gRPC stream per proxy, in both
//! variants: state of the world (`StreamAggregatedResources`, below) and
//! incremental (`DeltaAggregatedResources`, [`delta`]), on the same port,
//! with the same node handling, debounce, throttle and first-sync places.
//!
//! Data path: the [`ConfigState`](crate::xds::ConfigState) watch channel →
//! `debounce` (a burst of changes becomes one update) → one task per stream
//! (`stream`, keeping the protocol state in `connection`), which answers
//! requests and pushes changes in
//! [`PUSH_ORDER`](crate::xds::PUSH_ORDER), make before break (`push`) → the
//! proxy.
//!
//! Protocol decisions:
//! - The first request must carry a valid `node`; otherwise the stream ends
//!   with `INVALID_ARGUMENT`. So does a request without a type URL.
//! - `version_info` is `<state version>-<content hash>`; every response has a
//!   fresh nonce. A request echoing the last nonce is an ACK, or a NACK when it
//!   carries `error_detail`: the NACK is logged and counted, and the rejected
//!   content is not sent again until the proxy's config changes. Requests with
//!   an older nonce are ignored, except that new resource names are honoured.
//! - A new subscription (first request of a type, or changed names) gets an
//!   immediate response, even an empty one. LDS and CDS are always wildcard
//!   subscriptions: names in their requests are ignored.
//! - A type the generator does not know or refuses is logged and counted, and
//!   gets no response; the stream stays up, since Envoy treats a stream error
//!   as fatal to every type on it.
//! - A push sends only the types whose content changed for that proxy. When
//!   the state says only endpoints changed (`ConfigState::changes_since`),
//!   only EDS is considered, and only the changed assignments the proxy
//!   subscribed to are sent: state-of-the-world EDS and RDS responses need
//!   not repeat unchanged resources (only LDS and CDS carry the whole set).
//! - Resources are generated once per state and proxy view and shared
//!   (`Arc`) by every stream; a stream keeps digests, not copies. They are
//!   kept encoded and written into each response as they are (`grpc`,
//!   `wire`): no stream holds a copy of a whole response.
//! - At most `push_throttle` streams generate and send at once (istiod's
//!   `PILOT_PUSH_THROTTLE`, 100): a mass reconnect does not hold a
//!   half-built config per proxy at the same time.
//! - At most `push_throttle` new streams are in their first sync at once
//!   (`connection::Syncing`): a stream that got its first response keeps
//!   its place until it has ACKed every type including LDS (or for
//!   `first_sync_hold`, 10 s, at most), so of 1,000 proxies connecting together the
//!   first ones finish CDS → EDS → LDS → RDS early, instead of every proxy
//!   getting CDS, then every proxy EDS, and all finishing last.
//! - Endpoint-only bursts are debounced for `endpoint_debounce` (10 ms by
//!   default) instead of `debounce` (100 ms): an endpoint change is cheap to
//!   push and its latency is what the mesh feels (a dead endpoint keeps
//!   getting traffic until then). Any other change in the burst brings the
//!   full debounce back.
//! - A new stream starts from the newest state (a fresh proxy has no burst to
//!   wait out); after that, a stream answers from the newest debounced update
//!   it has seen and never goes back to an older state version. One push
//!   uses one state.

mod connection;
mod debounce;
mod delta;
mod first_sync;
#[cfg(test)]
mod first_sync_tests;
mod grpc;
mod metrics;
mod names;
mod pending;
mod push;
mod status;
mod stream;
#[cfg(test)]
mod tests;
mod wire;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::transport::server::TcpIncoming;

pub use grpc::AdsService;
pub use metrics::AdsMetrics;
pub use status::{NackStatus, ProxySyncStatus, TypeSyncStatus};

use self::debounce::Update;
use self::status::Connections;
use crate::xds::{SharedState, XdsResource};

/// Responses buffered per stream before a push waits for the proxy to read.
const RESPONSE_BUFFER: usize = 16;
/// Default of [`AdsOptions::push_throttle`] (istiod's `PILOT_PUSH_THROTTLE`).
pub const DEFAULT_PUSH_THROTTLE: usize = 100;
/// HTTP/2 pings that detect proxies that vanished without closing.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`AdsOptions::first_sync_hold`].
const FIRST_SYNC_HOLD: Duration = Duration::from_secs(10);

/// Settings of the ADS server.
#[derive(Clone, Debug)]
pub struct AdsOptions {
    /// Push once config has been quiet this long.
    pub debounce: Duration,
    /// Push at the latest this long after the first change of a burst.
    pub max_debounce: Duration,
    /// Quiet time for a burst that only changed endpoints (EDS).
    pub endpoint_debounce: Duration,
    /// Streams generating and sending at the same time; also how many new
    /// streams are in their first sync at once.
    pub push_throttle: usize,
    /// Longest a new stream keeps its first-sync place while its proxy is
    /// slow to ask for (or ACK) the next type.
    pub first_sync_hold: Duration,
    /// Where the server counts; unregistered by default.
    pub metrics: AdsMetrics,
}

impl Default for AdsOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(100),
            max_debounce: Duration::from_secs(1),
            endpoint_debounce: Duration::from_millis(10),
            push_throttle: DEFAULT_PUSH_THROTTLE,
            first_sync_hold: FIRST_SYNC_HOLD,
            metrics: AdsMetrics::default(),
        }
    }
}

/// Why serving ADS stopped.
#[derive(Debug, thiserror::Error)]
pub enum AdsError {
    #[error("ADS listener has no local address")]
    LocalAddr(#[source] std::io::Error),
    #[error("serving ADS on {addr}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
}

/// The ADS server. Cheap to clone; clones share connections and state.
#[derive(Clone)]
pub struct AdsServer {
    inner: Arc<Inner>,
}

/// State shared by the server handle and every connection task.
struct Inner {
    metrics: AdsMetrics,
    /// The newest state, undebounced: where new streams start.
    source: watch::Receiver<SharedState>,
    /// Debounced updates; each connection clones this receiver.
    updates: watch::Receiver<Arc<Update>>,
    /// Taken when the first stream starts (inside the runtime).
    debouncer: Mutex<Option<Debouncer>>,
    connections: Connections,
    /// Subscribed names, shared between streams.
    names: names::Interner,
    /// Bounds the streams generating and sending at once.
    throttle: Arc<tokio::sync::Semaphore>,
    /// Bounds the new streams in their first sync at once.
    syncing: Arc<tokio::sync::Semaphore>,
    first_sync_hold: Duration,
    next_connection: AtomicU64,
    next_nonce: AtomicU64,
    /// Cancelled to end every stream (shutdown).
    close: CancellationToken,
}

struct Debouncer {
    source: watch::Receiver<SharedState>,
    updates: watch::Sender<Arc<Update>>,
    debounce: debounce::Debounce,
}

impl Inner {
    fn nonce(&self) -> String {
        format!("{:x}", self.next_nonce.fetch_add(1, Ordering::Relaxed))
    }
}

impl AdsServer {
    /// A server for the configuration in `state`; every new value sent on the
    /// channel is pushed (debounced) to the proxies whose resources changed.
    pub fn new(mut state: watch::Receiver<SharedState>, options: AdsOptions) -> Self {
        let initial = Update::initial(state.borrow_and_update().clone());
        let (tx, rx) = watch::channel(initial);
        let source = state.clone();
        let debouncer = Debouncer {
            source: state,
            updates: tx,
            debounce: debounce::Debounce {
                quiet: options.debounce,
                endpoints_quiet: options.endpoint_debounce.min(options.debounce),
                max: options.max_debounce.max(options.debounce),
            },
        };
        Self {
            inner: Arc::new(Inner {
                metrics: options.metrics,
                source,
                updates: rx,
                debouncer: Mutex::new(Some(debouncer)),
                connections: Connections::default(),
                names: names::Interner::default(),
                throttle: Arc::new(tokio::sync::Semaphore::new(options.push_throttle.max(1))),
                syncing: Arc::new(tokio::sync::Semaphore::new(options.push_throttle.max(1))),
                first_sync_hold: options.first_sync_hold,
                next_connection: AtomicU64::new(1),
                next_nonce: AtomicU64::new(1),
                close: CancellationToken::new(),
            }),
        }
    }

    /// The gRPC service, for `tonic::transport::Server::builder().add_service(..)`.
    pub fn service(&self) -> AdsService {
        AdsService {
            server: self.clone(),
        }
    }

    /// Starts the task serving one `StreamAggregatedResources` stream;
    /// returns where its responses come out.
    fn open_stream(
        &self,
        requests: grpc::Requests,
        peer: Option<SocketAddr>,
    ) -> Result<mpsc::Receiver<Result<wire::Response, Status>>, Status> {
        if self.inner.close.is_cancelled() {
            return Err(stream::shutting_down());
        }
        self.start_debouncer();
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        tokio::spawn(stream::run::<connection::Connection>(
            self.inner.clone(),
            requests,
            tx,
            peer,
        ));
        Ok(rx)
    }

    /// Starts the task serving one `DeltaAggregatedResources` stream.
    fn open_delta_stream(
        &self,
        requests: grpc::Requests<delta::Request>,
        peer: Option<SocketAddr>,
    ) -> Result<mpsc::Receiver<Result<delta::Response, Status>>, Status> {
        if self.inner.close.is_cancelled() {
            return Err(stream::shutting_down());
        }
        self.start_debouncer();
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        tokio::spawn(stream::run::<delta::Connection>(
            self.inner.clone(),
            requests,
            tx,
            peer,
        ));
        Ok(rx)
    }

    /// Serves ADS on `listener` over plain HTTP/2 until `shutdown` is
    /// cancelled; then every stream ends with `UNAVAILABLE` (so proxies
    /// reconnect elsewhere) and the server returns once they are closed.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), AdsError> {
        let addr = listener.local_addr().map_err(AdsError::LocalAddr)?;
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let close = self.inner.close.clone();
        let signal = async move {
            shutdown.cancelled().await;
            close.cancel();
        };
        tracing::info!(%addr, "serving ADS");
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .add_service(self.service())
            .serve_with_incoming_shutdown(incoming, signal)
            .await
            .map_err(|source| AdsError::Serve { addr, source })
    }

    /// Ends every stream with `UNAVAILABLE` and refuses new ones (for servers
    /// run through [`service`](Self::service) rather than [`serve`](Self::serve)).
    pub fn drain(&self) {
        self.inner.close.cancel();
    }

    /// Sync state of every open stream, for `/debug/syncz`.
    pub fn sync_status(&self) -> Vec<ProxySyncStatus> {
        self.inner.connections.statuses()
    }

    /// The resources last sent to a proxy (on its newest stream), by type
    /// URL, for `/debug/config_dump`.
    pub fn last_sent(
        &self,
        proxy_id: &str,
    ) -> Option<std::collections::BTreeMap<String, Vec<XdsResource>>> {
        self.inner.connections.last_sent(proxy_id)
    }

    /// Starts the debouncer on first use: `new` may run outside a runtime.
    fn start_debouncer(&self) {
        let Some(d) = lock(&self.inner.debouncer).take() else {
            return;
        };
        // Changes that arrived before the first stream need no debounce.
        let mut source = d.source;
        let latest = source.borrow_and_update().clone();
        if !debounce::same_state(&latest, &d.updates.borrow().state) {
            d.updates.send_replace(Update::initial(latest));
        }
        tokio::spawn(debounce::run(source, d.updates, d.debounce));
    }
}

impl fmt::Debug for AdsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdsServer")
            .field("connections", &self.inner.connections.len())
            .field("closed", &self.inner.close.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves
/// the data consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
