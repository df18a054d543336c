//! The federation API server: `Watch` streams this cluster's exported
//! catalog to an authenticated, listed peer.
//!
//! Authentication is the TLS handshake ([`crate::tls`]); authorization
//! happens here: the caller's certificate must be the federation identity of
//! the trust domain declared for the peer it says it is, and that peer must
//! be in the current MeshFederation. A peer unlinked while streaming is cut
//! off.
//!
//! [`accept_tls`] feeds tonic: each TLS handshake runs in its own task, so a
//! slow or hostile client cannot stall the others.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use isthmus_identity::peer_identity;
use isthmus_proto::federation as proto;
use isthmus_proto::federation::federation_server::Federation as FederationApi;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::mesh::Federation;
use crate::metrics::Metrics;
use crate::tls::{Tls, federation_id};

/// How long a TLS handshake on the federation port may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `isthmus.federation.v1.Federation` service.
#[derive(Debug, Clone)]
pub struct FederationService {
    pub catalog: watch::Receiver<Arc<proto::Catalog>>,
    pub federation: watch::Receiver<Option<Arc<Federation>>>,
    pub heartbeat: Duration,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::WatchEvent, Status>> + Send>>;

impl FederationService {
    /// Checks that the caller is the federation identity of the listed peer it claims to be.
    fn authorize(&self, request: &Request<proto::WatchRequest>) -> Result<String, Status> {
        let cluster = request.get_ref().cluster.clone();
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let identity = peer_identity(leaf)
            .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))?;
        let federation = self.federation.borrow().clone();
        let Some(peer) = federation
            .as_ref()
            .and_then(|f| f.peers.get(&cluster).cloned())
        else {
            return Err(Status::permission_denied(format!(
                "cluster {cluster:?} ({identity}) is not a peer of this cluster; \
                 add it to spec.peers of the MeshFederation (isthmus link)"
            )));
        };
        let expected = federation_id(&peer.trust_domain)
            .map_err(|e| Status::internal(format!("peer {cluster}: {e}")))?;
        if identity != expected {
            return Err(Status::permission_denied(format!(
                "peer {cluster:?} must present {expected}, got {identity} \
                 (spec.peers[{cluster}].trustDomain is {:?})",
                peer.trust_domain
            )));
        }
        Ok(cluster)
    }
}

#[tonic::async_trait]
impl FederationApi for FederationService {
    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let peer = match self.authorize(&request) {
            Ok(peer) => peer,
            Err(status) => {
                tracing::warn!(error = %status.message(), "refused a federation peer");
                self.metrics.refused.inc();
                return Err(status);
            }
        };
        tracing::info!(%peer, "peer watching our catalog");
        let (tx, rx) = mpsc::channel(4);
        let mut catalog = self.catalog.clone();
        let mut federation = self.federation.clone();
        let heartbeat = self.heartbeat;
        let shutdown = self.shutdown.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            metrics.watchers.inc();
            let mut tick = tokio::time::interval(heartbeat);
            tick.reset();
            let mut current = catalog.borrow_and_update().clone();
            let mut send = Some(proto::watch_event::Event::Catalog((*current).clone()));
            loop {
                if let Some(event) = send.take() {
                    let event = proto::WatchEvent { event: Some(event) };
                    if tx.send(Ok(event)).await.is_err() {
                        break;
                    }
                    tick.reset();
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tx.closed() => break,
                    changed = catalog.changed() => {
                        if changed.is_err() { break; }
                        current = catalog.borrow_and_update().clone();
                        send = Some(proto::watch_event::Event::Catalog((*current).clone()));
                    }
                    changed = federation.changed() => {
                        if changed.is_err() { break; }
                        let listed = federation.borrow_and_update().as_ref().is_some_and(|f| f.peers.contains_key(&peer));
                        if !listed {
                            let _ = tx.send(Err(Status::permission_denied(format!("cluster {peer:?} was unlinked")))).await;
                            break;
                        }
                    }
                    _ = tick.tick() => {
                        send = Some(proto::watch_event::Event::Heartbeat(proto::Heartbeat { version: current.version }));
                    }
                }
            }
            metrics.watchers.dec();
            tracing::info!(%peer, "peer stream ended");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Accepts TCP, runs each TLS handshake in its own task (a slow client cannot stall
/// others), and yields the established streams to tonic.
pub(crate) fn accept_tls(
    listener: TcpListener,
    tls: Arc<Tls>,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let (tcp, from) = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(error) => {
                        tracing::debug!(%error, "federation accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let config = match tls.server_config() {
                Ok(c) => Arc::new(c),
                Err(error) => {
                    tracing::error!(%error, "federation TLS configuration");
                    continue;
                }
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(tcp))
                    .await
                {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::info!(%from, %error, "refused a federation TLS handshake")
                    }
                    Err(_) => tracing::debug!(%from, "federation TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
