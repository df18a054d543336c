//! Outbound: what the application sends out.
//!
//! - *Explicit* mode (the lab, tests): the app sends HTTP to the sidecar's
//!   outbound address; the route configuration is picked by the port in
//!   `Host`/`:authority` (80 without one). TCP services get a listener per
//!   service port on the sidecar's outbound IP.
//! - *Transparent* mode (Kubernetes): iptables sends everything to 15001;
//!   the original destination picks the HTTP port, a TCP service, or
//!   passthrough to where the app was going.

pub mod http;
mod tcp;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use isthmus_proxy_core::xds::NodeInfo;
use tokio::net::{TcpListener, TcpStream};

pub use tcp::proxy_tcp;
pub(crate) use tcp::{TcpConn, splice_counted};

use crate::access_log::AccessLog;
use crate::metrics::{Metrics, OwnLabels};
use crate::run::Drain;
use crate::server::{self, Limits};
use crate::state::Snapshot;

/// What every listener of the sidecar shares.
#[derive(Debug)]
pub struct Proxy {
    snapshot: ArcSwap<Snapshot>,
    /// Istio metrics.
    pub metrics: Arc<Metrics>,
    /// This workload.
    pub node: NodeInfo,
    /// Its metric labels.
    pub own: OwnLabels,
    /// A JSON access log line per request and TCP connection, when on.
    pub access_log: Option<AccessLog>,
    /// Downstream limits.
    pub limits: Limits,
}

impl Proxy {
    /// A proxy starting on `snapshot`.
    pub fn new(
        snapshot: Arc<Snapshot>,
        metrics: Arc<Metrics>,
        node: NodeInfo,
        access_log: Option<AccessLog>,
        limits: Limits,
    ) -> Self {
        Self {
            snapshot: ArcSwap::new(snapshot),
            metrics,
            own: OwnLabels::of(&node),
            node,
            access_log,
            limits,
        }
    }

    /// The state now (lock-free).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swaps in a new state.
    pub fn store(&self, snapshot: Arc<Snapshot>) {
        self.snapshot.store(snapshot);
    }
}

/// Accepts on `listener` until the drain starts, handing each connection to `serve`.
pub(crate) async fn accept_loop<F, Fut>(listener: TcpListener, drain: Drain, serve: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    loop {
        let accepted = tokio::select! {
            () = drain.token.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                drain.spawn_connection(stream, peer, &serve);
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Explicit mode: HTTP from the app, routed by authority.
pub async fn serve_explicit_http(proxy: Arc<Proxy>, listener: TcpListener, drain: Drain) {
    let d = drain.clone();
    accept_loop(listener, drain, move |stream, peer| {
        let proxy = proxy.clone();
        let draining = d.draining.clone();
        let limits = proxy.limits;
        proxy.metrics.active_connections.inc();
        async move {
            let p = proxy.clone();
            server::serve(stream, limits, draining, move |req| {
                http::handle(p.clone(), req, 80, peer, None)
            })
            .await;
            proxy.metrics.active_connections.dec();
        }
    })
    .await;
}

/// Explicit mode: a TCP service port on the sidecar's outbound address.
pub async fn serve_explicit_tcp(proxy: Arc<Proxy>, listener: TcpListener, port: u16, drain: Drain) {
    accept_loop(listener, drain, move |stream, peer| {
        let proxy = proxy.clone();
        async move {
            let snapshot = proxy.snapshot();
            let dst = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port);
            match snapshot.tcp_route(dst, true) {
                Some(r) => {
                    let cluster = r.cluster.clone();
                    proxy_tcp(&proxy, &snapshot, stream, peer, &cluster, None).await;
                }
                None => tracing::debug!(port, "no TCP service on this port any more"),
            }
        }
    })
    .await;
}

/// Transparent mode: connections redirected by iptables (original destination).
pub async fn serve_transparent(proxy: Arc<Proxy>, listener: TcpListener, drain: Drain) {
    let d = drain.clone();
    accept_loop(listener, drain, move |stream, peer| {
        let proxy = proxy.clone();
        let draining = d.draining.clone();
        async move {
            let dst = match crate::capture::original_destination(&stream) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "no original destination; closing");
                    return;
                }
            };
            let snapshot = proxy.snapshot();
            if snapshot.http_ports.contains_key(&dst.port()) {
                let p = proxy.clone();
                let limits = p.limits;
                server::serve(stream, limits, draining, move |req| {
                    http::handle(p.clone(), req, dst.port(), peer, Some(dst))
                })
                .await;
            } else if let Some(r) = snapshot.tcp_route(dst, false) {
                let cluster = r.cluster.clone();
                proxy_tcp(&proxy, &snapshot, stream, peer, &cluster, None).await;
            } else {
                // PassthroughCluster: where the app was going, unchanged.
                proxy_tcp(
                    &proxy,
                    &snapshot,
                    stream,
                    peer,
                    "PassthroughCluster",
                    Some(dst),
                )
                .await;
            }
        }
    })
    .await;
}
