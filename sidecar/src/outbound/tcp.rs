//! Opaque TCP: pick an endpoint (another on connect failure), connect (mesh
//! mTLS when the cluster asks), splice both ways with half-close.

use std::net::SocketAddr;
use std::sync::Arc;

use isthmus_proxy_core::balance::{Outcome, PickContext};
use tokio::net::TcpStream;

use super::Proxy;
use crate::access_log::Entry;
use crate::flags::Flags;
use crate::metrics::{Reporter, RequestLabels};
use crate::state::{ClusterKind, Snapshot};

/// Connection attempts to different endpoints before giving up.
const CONNECT_ATTEMPTS: usize = 3;

/// Proxies one downstream connection to `cluster` (`original_dst` for
/// passthrough clusters).
pub async fn proxy_tcp(
    proxy: &Arc<Proxy>,
    snapshot: &Arc<Snapshot>,
    mut downstream: TcpStream,
    peer: SocketAddr,
    cluster: &str,
    original_dst: Option<SocketAddr>,
) {
    let unknown = crate::metrics::unknown();
    let mut labels = RequestLabels {
        reporter: Reporter::Source,
        source_workload: proxy.own.workload.clone(),
        source_workload_namespace: proxy.own.namespace.clone(),
        source_principal: snapshot.identity.clone(),
        source_cluster: proxy.own.cluster.clone(),
        destination_workload: unknown.clone(),
        destination_workload_namespace: unknown.clone(),
        destination_principal: unknown.clone(),
        destination_service: unknown.clone(),
        destination_service_name: unknown.clone(),
        destination_service_namespace: unknown.clone(),
        destination_cluster: unknown,
        request_protocol: "tcp",
        response_code: 0,
        response_flags: Flags::default(),
        connection_security_policy: "unknown",
    };
    let Some(state) = snapshot.clusters.get(cluster).cloned() else {
        tracing::debug!(%peer, cluster, "TCP: unknown cluster; closing");
        return;
    };
    labels.destination_service = state.service.service.clone();
    labels.destination_service_name = state.service.name.clone();
    labels.destination_service_namespace = state.service.namespace.clone();
    let pool = state.pool();
    let settings = pool.settings().clone();
    let mut tried = Vec::new();
    let mut upstream = None;
    for _ in 0..CONNECT_ATTEMPTS {
        let (addr, pick) = match (state.kind, original_dst) {
            (ClusterKind::OriginalDst, Some(dst)) => (dst, None),
            (ClusterKind::OriginalDst, None) => return,
            (ClusterKind::Endpoints, _) => match state.balancer.pick(&PickContext {
                hash: None,
                exclude: &tried,
                ..PickContext::default()
            }) {
                Some(p) => (p.address(), Some(p)),
                None => break,
            },
        };
        tried.push(addr);
        let Some(permit) = state.balancer.try_connection() else {
            tracing::debug!(cluster, "TCP: connection limit reached");
            return;
        };
        let tls = settings.tls.as_ref().map(|t| (&t.h2, &t.sni));
        match crate::upstream::connect(addr, settings.connect_timeout, tls, Some(permit)).await {
            Ok(s) => {
                if let Some(p) = pick {
                    p.report(Outcome::LocalOriginSuccess);
                }
                upstream = Some((s, addr));
                break;
            }
            Err(e) => {
                tracing::debug!(cluster, %addr, error = %e, "TCP connect failed");
                if let Some(p) = pick {
                    p.report(Outcome::ConnectFailure);
                }
                if original_dst.is_some() {
                    break;
                }
            }
        }
    }
    let Some((mut upstream, addr)) = upstream else {
        return;
    };
    let conn = TcpConn {
        direction: "outbound",
        peer,
        upstream: addr,
        cluster,
    };
    splice_counted(proxy, &labels, conn, &mut downstream, &mut upstream).await;
}

/// One proxied TCP connection, for the access log.
#[derive(Debug)]
pub(crate) struct TcpConn<'a> {
    /// `outbound` or `inbound`.
    pub direction: &'a str,
    /// The downstream peer.
    pub peer: SocketAddr,
    /// The endpoint connected to.
    pub upstream: SocketAddr,
    /// Its cluster.
    pub cluster: &'a str,
}

/// Splices both ways (16 KiB buffers, half-close, 1 h idle timeout),
/// records Istio's TCP metrics and writes the access log line.
pub(crate) async fn splice_counted<D, U>(
    proxy: &Proxy,
    labels: &RequestLabels,
    conn: TcpConn<'_>,
    downstream: &mut D,
    upstream: &mut U,
) where
    D: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
{
    use isthmus_proxy_core::transport::{SpliceConfig, splice};
    let m = &proxy.metrics;
    let (start, started) = (std::time::SystemTime::now(), std::time::Instant::now());
    m.tcp_opened.get_or_create(labels).inc();
    let (up, down) = match splice(downstream, upstream, &SpliceConfig::default(), &()).await {
        Ok(s) => (s.to_upstream, s.to_downstream),
        Err(e) => {
            tracing::debug!(error = %e, "TCP splice ended with an error");
            (e.to_upstream, e.to_downstream)
        }
    };
    m.tcp_received.get_or_create(labels).inc_by(up);
    m.tcp_sent.get_or_create(labels).inc_by(down);
    m.tcp_closed.get_or_create(labels).inc();
    if let Some(log) = &proxy.access_log {
        log.write(&Entry {
            start_time: Some(start),
            direction: conn.direction,
            protocol: "TCP",
            bytes_received: up,
            bytes_sent: down,
            duration: started.elapsed(),
            upstream_host: Some(conn.upstream),
            upstream_cluster: conn.cluster,
            downstream_remote_address: Some(conn.peer),
            downstream_peer_uri_san: if conn.direction == "inbound"
                && &*labels.source_principal != "unknown"
            {
                &labels.source_principal
            } else {
                ""
            },
            ..Entry::default()
        });
    }
}
