//! Admin HTTP: `/ready` (200 once the config is loaded and the federation
//! API listens — peers being down never makes it fail), `/metrics`
//! (Prometheus text) and `/status` (JSON per peer, what `isthmus status`
//! prints).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use isthmus_proto::federation as proto;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::state::{Connection, State};

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub cluster: String,
    pub ready: Arc<AtomicBool>,
    pub state: State,
    pub catalog: watch::Receiver<Arc<proto::Catalog>>,
    pub registry: Arc<Registry>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// `/status`: this cluster and every peer.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Status {
    pub cluster: String,
    /// Services this cluster exports.
    pub exported: usize,
    pub catalog_version: u64,
    pub peers: Vec<PeerStatus>,
}

/// One peer in `/status`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PeerStatus {
    pub name: String,
    /// `ALIVE` (stream up, a gateway answers) or `DOWN`.
    pub state: String,
    /// `CONNECTING`, `CONNECTED` or `DOWN`.
    pub connection: String,
    /// Services the peer exports (its last catalog).
    pub exported: usize,
    /// Services imported from it here.
    pub imported: usize,
    /// Lowest latency of its healthy gateways' last probes, milliseconds.
    pub probe_latency_ms: Option<f64>,
    pub gateways: Vec<GatewayStatus>,
    /// Unix seconds of the last catalog received.
    pub last_sync: Option<u64>,
    pub last_error: Option<String>,
}

/// One probed gateway in `/status`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct GatewayStatus {
    pub address: String,
    pub healthy: bool,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
}

impl AdminState {
    /// The status document.
    pub fn status(&self) -> Status {
        let catalog = self.catalog.borrow().clone();
        let peers = self
            .state
            .peers()
            .into_values()
            .map(|p| PeerStatus {
                state: if p.healthy() && p.connection == Connection::Connected {
                    "ALIVE"
                } else {
                    "DOWN"
                }
                .to_owned(),
                connection: serde_json::to_value(p.connection)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                exported: p.exported().unwrap_or(0),
                imported: p.imported,
                probe_latency_ms: p.probe_latency().map(|d| d.as_secs_f64() * 1000.0),
                gateways: p
                    .gateways
                    .iter()
                    .map(|g| GatewayStatus {
                        address: g.address.clone(),
                        healthy: g.healthy,
                        consecutive_failures: g.consecutive_failures,
                        last_error: g.last_error.clone(),
                    })
                    .collect(),
                last_sync: p
                    .last_sync
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs()),
                // A dead gateway is the reason when the stream is fine.
                last_error: p.error(),
                name: p.name,
            })
            .collect();
        Status {
            cluster: self.cluster.clone(),
            exported: catalog.services.len(),
            catalog_version: catalog.version,
            peers,
        }
    }
}

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::debug!(%error, "admin accept");
                    continue;
                }
            },
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&req, &state)) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
}

fn route<B>(req: &Request<B>, state: &AdminState) -> Response<Full<Bytes>> {
    let respond = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("static response")
    };
    let text = "text/plain; charset=utf-8";
    match req.uri().path() {
        "/ready" if state.ready.load(Ordering::Acquire) => {
            respond(StatusCode::OK, text, "ready\n".into())
        }
        "/ready" => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            text,
            "config not loaded yet\n".into(),
        ),
        "/status" => match serde_json::to_string_pretty(&state.status()) {
            Ok(json) => respond(StatusCode::OK, "application/json", json),
            Err(e) => respond(StatusCode::INTERNAL_SERVER_ERROR, text, format!("{e}\n")),
        },
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
                Ok(()) => respond(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(_) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    text,
                    "encoding metrics failed\n".into(),
                ),
            }
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            text,
            "try /ready, /status or /metrics\n".into(),
        ),
    }
}
