//! Admin HTTP: `/ready` (200 once a snapshot from the control plane is
//! being served) and `/metrics` (Prometheus text).

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::zone::Snapshot;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub registry: Arc<Registry>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").finish_non_exhaustive()
    }
}

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
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
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

fn route<B>(req: &Request<B>, state: &AdminState) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .expect("static response")
    };
    match req.uri().path() {
        "/ready" => {
            let s = state.snapshot.load();
            if s.from_feed {
                text(
                    StatusCode::OK,
                    format!(
                        "ready: version {} with {} services\n",
                        s.version,
                        s.services()
                    ),
                )
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no snapshot from the control plane yet\n".into(),
                )
            }
        }
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
                Ok(()) => Response::builder()
                    .header(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .body(Full::new(Bytes::from(body)))
                    .expect("static response"),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding metrics failed\n".into(),
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "try /ready or /metrics\n".into()),
    }
}
