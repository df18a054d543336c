//! Active gateway probes: every interval, each gateway address of a peer is
//! resolved (hostnames are fine) and sent a TLS ClientHello. An east-west
//! gateway passes TLS through by SNI, so it either completes or rejects the
//! handshake, or closes the connection for the unroutable probe SNI: any of
//! those within the timeout means it is alive. A failed resolution, a refused
//! connection or silence past the timeout is a failure; after
//! `failure_threshold` failures in a row the gateway is unhealthy (its
//! endpoints get weight 0), and one success makes it healthy again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use isthmus_api::federation::Peer as PeerSpec;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::PeerContext;
use crate::metrics::PeerLabel;

/// SNI of probe handshakes: routes nowhere on a gateway, and says what it is in logs.
pub const PROBE_SNI: &str = "probe.federation.isthmus-system.invalid";

/// Probes every gateway of `peer` until `shutdown`.
pub(super) async fn run(peer: PeerSpec, ctx: PeerContext, shutdown: CancellationToken) {
    if peer.gateway_addresses.is_empty() {
        return;
    }
    let config = Arc::new(ctx.tls.probe_config());
    let label = PeerLabel::new(&peer.name);
    let mut tick = tokio::time::interval(ctx.timings.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let probes = peer.gateway_addresses.iter().map(|address| {
            let config = config.clone();
            async move {
                let started = Instant::now();
                let result = probe(address, config, ctx.timings.probe_timeout).await;
                (address.clone(), result, started.elapsed())
            }
        });
        let results = futures::future::join_all(probes).await;
        let threshold = ctx.timings.probe_failures.max(1);
        for (address, result, elapsed) in results {
            match &result {
                Ok(_) => ctx
                    .metrics
                    .probe_latency
                    .get_or_create(&label)
                    .observe(elapsed.as_secs_f64()),
                Err(error) => {
                    ctx.metrics.probe_failures.get_or_create(&label).inc();
                    tracing::debug!(peer = %peer.name, %address, %error, "gateway probe failed");
                }
            }
            let mut changed_health = None;
            ctx.state.update(&peer.name, |p| {
                let Some(g) = p.gateways.iter_mut().find(|g| g.address == address) else {
                    return;
                };
                let was = g.healthy;
                match result {
                    Ok(resolved) => {
                        g.resolved = resolved;
                        g.consecutive_failures = 0;
                        g.healthy = true;
                        g.last_latency = Some(elapsed);
                        g.last_error = None;
                    }
                    Err(error) => {
                        g.consecutive_failures = g.consecutive_failures.saturating_add(1);
                        if g.consecutive_failures >= threshold {
                            g.healthy = false;
                        }
                        g.last_error = Some(error);
                    }
                }
                if was != g.healthy {
                    changed_health = Some(g.healthy);
                }
            });
            match changed_health {
                Some(true) => {
                    tracing::info!(peer = %peer.name, %address, "peer gateway is healthy again")
                }
                Some(false) => {
                    tracing::warn!(peer = %peer.name, %address, threshold, "peer gateway failed its probes; its endpoints are unhealthy")
                }
                None => {}
            }
        }
    }
}

/// One probe; the resolved addresses on success.
async fn probe(
    address: &str,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, String> {
    let attempt = async {
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host(address)
            .await
            .map_err(|e| format!("resolving {address}: {e}"))?
            .collect();
        let first = *resolved
            .first()
            .ok_or_else(|| format!("{address} resolved to no address"))?;
        let tcp = TcpStream::connect(first)
            .await
            .map_err(|e| format!("connecting to {first}: {e}"))?;
        let name = ServerName::try_from(PROBE_SNI).expect("static DNS name");
        match TlsConnector::from(config).connect(name, tcp).await {
            // A handshake that completes proves the gateway (and whatever it routed to) alive.
            Ok(_) => Ok(resolved),
            Err(e) if answered(&e) => Ok(resolved),
            Err(e) => Err(format!("TLS to {first}: {e}")),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {address} within {timeout:?}")))
}

/// Whether a failed handshake still shows a live gateway: it answered with a TLS alert or
/// closed the connection after reading the ClientHello.
fn answered(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, InvalidData, UnexpectedEof};
    matches!(
        e.kind(),
        UnexpectedEof | InvalidData | ConnectionAborted | ConnectionReset
    )
}
