//! The client side of the federation API: one long-lived `Watch` stream to a
//! peer, reconnected with exponential backoff and full jitter. Every catalog
//! and heartbeat lands in [`State`]; roots the peer announces are learned
//! (trusted for its trust domain only) before it could switch to them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use isthmus_api::federation::Peer as PeerSpec;
use isthmus_identity::TrustBundle;
use isthmus_proto::federation as proto;
use isthmus_proto::federation::federation_client::FederationClient;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Endpoint, Uri};

use super::PeerContext;
use crate::metrics::PeerLabel;
use crate::state::Connection;

/// Keeps a catalog stream to `peer` open until `shutdown`.
pub(super) async fn run(peer: PeerSpec, ctx: PeerContext, shutdown: CancellationToken) {
    let mut failures: u32 = 0;
    loop {
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return,
            outcome = stream_once(&peer, &ctx) => outcome,
        };
        let (was_connected, error) = outcome;
        if was_connected {
            failures = 0;
        }
        tracing::warn!(peer = %peer.name, %error, "federation stream to peer failed");
        ctx.metrics
            .sync_errors
            .get_or_create(&PeerLabel::new(&peer.name))
            .inc();
        ctx.state.update(&peer.name, |p| {
            p.connection = Connection::Down;
            p.last_error = Some(error);
        });
        let delay = backoff(ctx.timings.backoff_min, ctx.timings.backoff_max, failures);
        failures = failures.saturating_add(1);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Full jitter: a random delay up to `min * 2^attempt`, capped at `max`.
fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let ceiling = min.saturating_mul(1 << attempt.min(16)).min(max).max(min);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::random_range(millis / 2..=millis))
}

/// One connection and stream; returns whether a catalog arrived, and why it ended.
async fn stream_once(peer: &PeerSpec, ctx: &PeerContext) -> (bool, String) {
    let config = match ctx.tls.client_config(&peer.trust_domain) {
        Ok(c) => Arc::new(c),
        Err(e) => return (false, format!("TLS configuration: {e}")),
    };
    let endpoint = match Endpoint::from_shared(format!("http://{}", peer.federation_endpoint)) {
        Ok(e) => e.connect_timeout(ctx.timings.connect_timeout),
        Err(e) => {
            return (
                false,
                format!("federationEndpoint {:?}: {e}", peer.federation_endpoint),
            );
        }
    };
    let connector = Connector {
        address: peer.federation_endpoint.clone(),
        config,
    };
    let channel = match endpoint.connect_with_connector(connector).await {
        Ok(c) => c,
        Err(e) => {
            return (
                false,
                format!("connecting to {}: {}", peer.federation_endpoint, chain(&e)),
            );
        }
    };
    let mut client = FederationClient::new(channel);
    let request = proto::WatchRequest {
        cluster: ctx.cluster.clone(),
    };
    let mut stream = match client.watch(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            return (
                false,
                format!("peer refused the stream: {}", status.message()),
            );
        }
    };
    let mut connected = false;
    loop {
        let next = tokio::time::timeout(ctx.timings.stream_timeout, stream.message()).await;
        let event = match next {
            Err(_) => {
                return (
                    connected,
                    format!("no heartbeat for {:?}", ctx.timings.stream_timeout),
                );
            }
            Ok(Err(status)) => return (connected, format!("stream broke: {}", status.message())),
            Ok(Ok(None)) => return (connected, "peer closed the stream".to_owned()),
            Ok(Ok(Some(event))) => event,
        };
        match event.event {
            Some(proto::watch_event::Event::Catalog(catalog)) => {
                if catalog.cluster != peer.name {
                    return (
                        connected,
                        format!(
                            "peer at {} says it is cluster {:?}, expected {:?}",
                            peer.federation_endpoint, catalog.cluster, peer.name
                        ),
                    );
                }
                learn_roots(peer, ctx, &catalog);
                connected = true;
                tracing::debug!(peer = %peer.name, version = catalog.version, services = catalog.services.len(), "catalog received");
                let catalog = Arc::new(catalog);
                ctx.state.update(&peer.name, |p| {
                    p.catalog = Some(catalog);
                    p.connection = Connection::Connected;
                    p.last_contact = Some(Instant::now());
                    p.last_alive = Instant::now();
                    p.last_sync = Some(SystemTime::now());
                    p.last_error = None;
                });
            }
            Some(proto::watch_event::Event::Heartbeat(_)) => {
                ctx.state.update(&peer.name, |p| {
                    p.connection = Connection::Connected;
                    p.last_contact = Some(Instant::now());
                    p.last_alive = Instant::now();
                });
            }
            None => {}
        }
    }
}

/// Trusts the roots the peer announced, for its trust domain only.
fn learn_roots(peer: &PeerSpec, ctx: &PeerContext, catalog: &proto::Catalog) {
    if catalog.trust_bundle.is_empty() {
        return;
    }
    match TrustBundle::from_pem(&catalog.trust_bundle.concat()) {
        Ok(bundle) => {
            if ctx.tls.learn_roots(&peer.trust_domain, bundle) {
                tracing::info!(peer = %peer.name, "learned new trusted roots from the peer");
                ctx.roots_changed.send_modify(|v| *v += 1);
            }
        }
        Err(e) => {
            tracing::warn!(peer = %peer.name, error = %e, "peer announced an unusable trust bundle")
        }
    }
}

/// The error and its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// TCP + rustls to the peer's federation endpoint (a hostname is resolved by connect).
#[derive(Clone)]
struct Connector {
    address: String,
    config: Arc<ClientConfig>,
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<TokioIo<TlsStream<TcpStream>>, std::io::Error>> + Send>>;

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let address = self.address.clone();
        let connector = TlsConnector::from(self.config.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect(&address).await?;
            tcp.set_nodelay(true)?;
            let host = address
                .rsplit_once(':')
                .map_or(address.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let name = ServerName::try_from(host)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = connector.connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}
