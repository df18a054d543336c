//! One ADS stream in one task: the handshake (the node), then requests and
//! pushes, strictly in turn, until the proxy leaves, breaks the protocol, or
//! the server shuts down. The same loop serves both protocols
//! ([`Protocol`]: state of the world and incremental).

use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;

use tokio::time::{Instant, sleep_until};
use tonic::Status;
use tracing::{Instrument, Span, debug, field, warn};

use super::Inner;
use super::debounce::Update;
use super::first_sync::FirstSync;
use super::grpc::Requests;
pub(super) use super::grpc::ResponseTx;
use super::wire::{Incoming, Outgoing};
use crate::xds::ProxyInfo;

/// The protocol state of one stream, as the stream's loop drives it.
pub(super) trait Protocol: Sized + Send + 'static {
    type Request: Incoming;
    type Response: Outgoing;

    /// The node a request carries (the first one must).
    fn node(request: &Self::Request) -> Option<&Node>;

    /// A proxy on a new stream (registered in the status view while it lives).
    fn new(
        inner: Arc<Inner>,
        proxy: ProxyInfo,
        tx: ResponseTx<Self::Response>,
        current: Arc<Update>,
    ) -> Self;

    fn first_sync(&mut self) -> &mut FirstSync;

    /// Whether the proxy has finished its first sync (see [`FirstSync`]).
    fn synced(&self) -> bool;

    fn on_request(
        &mut self,
        request: Self::Request,
    ) -> impl Future<Output = Result<(), End>> + Send;

    /// Sends what changed for this proxy in `update`.
    fn push(&mut self, update: Arc<Update>) -> impl Future<Output = Result<(), End>> + Send;
}

/// The status ending every stream on shutdown.
pub(super) fn shutting_down() -> Status {
    Status::unavailable("control plane shutting down; reconnect")
}

/// Why a stream ended.
pub(super) enum End {
    /// The proxy closed or reset its side.
    Gone,
    /// The server is shutting down.
    Shutdown,
    /// The proxy sent something unusable.
    Reject(Status),
}

/// Serves one stream until the proxy leaves, breaks the protocol, or the
/// server shuts down.
pub(super) async fn run<P: Protocol>(
    inner: Arc<Inner>,
    requests: Requests<P::Request>,
    tx: ResponseTx<P::Response>,
    peer: Option<SocketAddr>,
) {
    let span = tracing::info_span!(
        "ads",
        peer = ?peer,
        proxy = field::Empty,
        role = field::Empty,
        cluster = field::Empty,
    );
    async move {
        let end = match serve::<P>(inner, requests, tx.clone()).await {
            Ok(()) | Err(End::Gone) => return debug!("stream closed by the proxy"),
            Err(End::Shutdown) => shutting_down(),
            Err(End::Reject(status)) => {
                warn!(message = status.message(), "rejecting stream");
                status
            }
        };
        // A proxy that is gone or does not read gets no status.
        let _ = tx.try_send(Err(end));
    }
    .instrument(span)
    .await;
}

async fn serve<P: Protocol>(
    inner: Arc<Inner>,
    mut requests: Requests<P::Request>,
    tx: ResponseTx<P::Response>,
) -> Result<(), End> {
    let close = inner.close.clone();
    let first = tokio::select! {
        () = close.cancelled() => return Err(End::Shutdown),
        msg = requests.message() => msg?,
    };
    let Some(first) = first else {
        return Ok(());
    };
    let proxy = identify::<P>(&first)?;
    let span = Span::current();
    span.record("proxy", proxy.id.as_str());
    span.record("role", field::display(proxy.role));
    span.record("cluster", proxy.cluster.as_str());

    let mut updates = inner.updates.clone();
    updates.mark_unchanged();
    let current = Update::initial(inner.source.borrow().clone());
    let mut conn = P::new(inner.clone(), proxy, tx, current);
    conn.on_request(first).await?;
    let mut updates_open = true;
    loop {
        let sync_deadline = conn.first_sync().deadline();
        tokio::select! {
            () = close.cancelled() => return Err(End::Shutdown),
            () = sleep_until(sync_deadline.unwrap_or_else(Instant::now)), if sync_deadline.is_some() => {
                let synced = conn.synced();
                conn.first_sync().end(&inner, synced);
            }
            msg = requests.message() => match msg? {
                Some(request) => conn.on_request(request).await?,
                None => return Ok(()),
            },
            changed = updates.changed(), if updates_open => match changed {
                Ok(()) => {
                    let update = updates.borrow_and_update().clone();
                    conn.push(update).await?;
                }
                // The config source is gone: keep serving the last state.
                Err(_) => updates_open = false,
            },
        }
    }
}

/// Who is on the stream, from the first request's node.
fn identify<P: Protocol>(request: &P::Request) -> Result<ProxyInfo, End> {
    let node = P::node(request).ok_or_else(|| {
        End::Reject(Status::invalid_argument(format!(
            "the first {} on a stream must carry a node",
            <P::Request as Incoming>::NAME
        )))
    })?;
    ProxyInfo::from_node(node)
        .map_err(|e| End::Reject(Status::invalid_argument(format!("invalid node: {e}"))))
}
