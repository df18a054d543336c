//! The life of one connection: detect (ClientHello) → route (SNI →
//! cluster, per-service limit) → upstream (connect with retries) → replay
//! the ClientHello bytes → move bytes both ways (messages copied through
//! the stack, bulk through a buffer or a `splice(2)` pipe, see [`pump`])
//! until both sides close, the idle timeout, or a forced shutdown.

mod pump;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use isthmus_proxy_core::transport::SpliceEnd;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::detect::{DetectError, read_client_hello};
use crate::metrics::{LogLimit, Metrics, alpn_label};
use crate::route::RouteTable;
pub use pump::Bulk;
use pump::splice_sockets;

/// Connection settings (see [`Options`](crate::run::Options)).
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub max_client_hello: usize,
    pub client_hello_timeout: Duration,
    pub max_connections_per_service: usize,
    pub connect_attempts: usize,
    /// Connections with no traffic either way for this long are closed
    /// (a TCP proxy's own `idle_timeout` wins).
    pub idle_timeout: Option<Duration>,
    /// How a direction moves bulk.
    pub bulk: Bulk,
}

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub routes: watch::Receiver<Arc<RouteTable>>,
    pub metrics: Metrics,
    pub settings: Settings,
    /// Cancelled when the drain grace period is over.
    pub force: CancellationToken,
}

/// Rejections logged per second at most.
static REJECT_LOG: LogLimit = LogLimit::new(20);

/// Serves one accepted connection to its end.
pub(crate) async fn serve(mut client: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let span = tracing::debug_span!("conn", %peer, sni = tracing::field::Empty);
    async move {
        let _ = client.set_nodelay(true);
        let mut routed = None;
        let forced = tokio::select! {
            () = connection(&mut client, peer, &shared, &mut routed) => false,
            () = shared.force.cancelled() => true,
        };
        if let (true, Some(service)) = (forced, routed) {
            tracing::debug!("closed by shutdown");
            shared.metrics.closed(&service, "shutdown");
        }
    }
    .instrument(span)
    .await;
}

fn reject(
    shared: &Shared,
    peer: SocketAddr,
    service: &str,
    reason: &'static str,
    detail: &dyn std::fmt::Display,
) {
    shared.metrics.rejected(service, reason);
    if REJECT_LOG.allow() {
        tracing::info!(%peer, service, reason, "connection refused: {detail}");
    }
}

/// Sets `routed` to the service once connected upstream.
async fn connection(
    client: &mut TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    routed: &mut Option<String>,
) {
    let s = &shared.settings;
    let metrics = &shared.metrics;
    let _pending = metrics.active("");
    let started = Instant::now();
    let mut hello_bytes = Vec::new();
    let hello = match read_client_hello(
        client,
        &mut hello_bytes,
        s.max_client_hello,
        s.client_hello_timeout,
    )
    .await
    {
        Ok(hello) => hello,
        Err(e) => {
            if !matches!(e, DetectError::Closed(0)) {
                reject(shared, peer, "", e.reason(), &e);
            }
            return;
        }
    };
    metrics.peek_seconds(started.elapsed().as_secs_f64());
    let Some(sni) = hello.sni else {
        reject(
            shared,
            peer,
            "",
            "no_sni",
            &"the ClientHello has no server name",
        );
        return;
    };
    tracing::Span::current().record("sni", sni.as_str());
    let route = shared.routes.borrow().get(&sni).cloned();
    let Some(route) = route else {
        // Unknown or unexported: never a label (client-chosen), always counted.
        reject(
            shared,
            peer,
            "",
            "unknown_sni",
            &format_args!("no exported service for SNI {sni:?}"),
        );
        return;
    };
    let upstream = &route.upstream;
    let service = upstream.name();
    let Some(_slot) = upstream.try_enter(s.max_connections_per_service) else {
        reject(
            shared,
            peer,
            service,
            "service_connection_limit",
            &format_args!("{} connections open", upstream.active()),
        );
        return;
    };
    let (mut server, address, _permit) = match upstream.connect(s.connect_attempts).await {
        Ok(c) => c,
        Err(e) => {
            reject(shared, peer, service, e.reason(), &e);
            return;
        }
    };
    drop(_pending);
    *routed = Some(service.to_string());
    let _active = metrics.active(service);
    metrics.opened(service, alpn_label(&hello.alpn));
    tracing::debug!(%address, "routed");

    let bytes = metrics.bytes(service);
    if let Err(e) = server.write_all(&hello_bytes).await {
        metrics.closed(service, "upstream_error");
        tracing::debug!(error = %e, "upstream closed before the ClientHello was sent");
        return;
    }
    bytes.received.inc_by(hello_bytes.len() as u64);
    drop(hello_bytes);
    let idle_timeout = route.idle_timeout.or(s.idle_timeout);
    // The ClientHello is out: from here the sockets' queues hold exactly
    // what is left to forward, so the kernel may move it.
    let splice = splice_sockets(client, &mut server, idle_timeout, s.bulk, &bytes);
    let end = match splice.await {
        Ok(stats) if stats.end == SpliceEnd::IdleTimeout => "idle_timeout",
        Ok(_) => "closed",
        Err(e) => {
            tracing::debug!(error = %e, "connection failed");
            if e.side == "upstream" {
                "upstream_error"
            } else {
                "downstream_error"
            }
        }
    };
    metrics.closed(service, end);
}
