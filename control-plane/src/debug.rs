//! The debug HTTP server (default port 15014): `/ready`, `/metrics`,
//! `/debug/syncz`, `/debug/config_dump?proxy=<id>`, `/debug/registryz`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use isthmus_config::Store;
use prometheus_client::registry::Registry as Metrics;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::xds::generate::PushContext;
use crate::xds::json as xds_json;
use crate::xds::server::AdsServer;

/// What the debug endpoints read.
#[derive(Clone)]
pub struct DebugState {
    pub store: Store,
    pub ads: AdsServer,
    pub metrics: Arc<Mutex<Metrics>>,
    /// The current push context (for `/debug/registryz`).
    pub push: watch::Receiver<Arc<PushContext>>,
}

impl std::fmt::Debug for DebugState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugState").finish_non_exhaustive()
    }
}

/// Serves the debug endpoints until `shutdown`.
pub async fn serve(listener: TcpListener, state: DebugState, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "debug listener accept failed");
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, &req)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn handle(state: &DebugState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect();
    match req.uri().path() {
        "/ready" => {
            if state.store.snapshot().is_synced() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "config not loaded yet\n")
            }
        }
        "/metrics" => {
            let mut out = String::new();
            let metrics = state
                .metrics
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match prometheus_client::encoding::text::encode(&mut out, &metrics) {
                Ok(()) => Response::builder()
                    .header(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .body(Full::new(Bytes::from(out)))
                    .unwrap_or_default(),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        "/debug/syncz" => json_response(syncz(&state.ads)),
        "/debug/config_dump" => match query.get("proxy") {
            Some(id) => match state.ads.last_sent(id) {
                Some(sent) => json_response(config_dump(&sent)),
                None => text(
                    StatusCode::NOT_FOUND,
                    &format!("no connected proxy {id:?}\n"),
                ),
            },
            None => text(
                StatusCode::BAD_REQUEST,
                "usage: /debug/config_dump?proxy=<node id>\n",
            ),
        },
        "/debug/registryz" => json_response(registryz(&state.push.borrow())),
        _ => text(
            StatusCode::NOT_FOUND,
            "endpoints: /ready /metrics /debug/syncz /debug/config_dump?proxy=<id> /debug/registryz\n",
        ),
    }
}

/// Per proxy: role, cluster, and per type the last sent and last ACKed version.
pub fn syncz(ads: &AdsServer) -> Value {
    Value::Array(
        ads.sync_status()
            .into_iter()
            .map(|s| {
                let types: serde_json::Map<String, Value> = s
                    .types
                    .iter()
                    .map(|(t, st)| {
                        (t.clone(), json!({
                            "subscribed": if st.wildcard { json!("*") } else { json!(st.subscribed_names) },
                            "sent": st.last_sent_version,
                            "acked": st.last_acked_version,
                            "synced": st.is_synced(),
                            "nack": st.last_nack.as_ref().map(|n| json!({"version": n.version, "message": n.message})),
                        }))
                    })
                    .collect();
                json!({
                    "proxy": s.proxy_id,
                    "role": s.role.to_string(),
                    "cluster": s.cluster,
                    "protocol": if s.incremental { "delta" } else { "sotw" },
                    "scope": s.scope,
                    "types": types,
                })
            })
            .collect(),
    )
}

/// The resources last sent to one proxy, as Envoy JSON, by type URL.
pub fn config_dump(sent: &BTreeMap<String, Vec<crate::xds::XdsResource>>) -> Value {
    let by_type: serde_json::Map<String, Value> = sent
        .iter()
        .map(|(t, resources)| {
            let list = resources
                .iter()
                .map(|r| {
                    xds_json::to_json(&r.resource)
                        .unwrap_or_else(|e| json!({ "name": r.name, "error": e.to_string() }))
                })
                .collect();
            (t.clone(), Value::Array(list))
        })
        .collect();
    Value::Object(by_type)
}

/// Every service with its ports and endpoints.
pub fn registryz(pc: &PushContext) -> Value {
    let services: Vec<Value> = pc
        .registry
        .services()
        .map(|s| {
            json!({
                "hostname": s.hostname,
                "namespace": s.namespace,
                "exported": s.exported,
                "addresses": s.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "ports": s.ports.iter().map(|p| json!({"name": p.name, "port": p.port, "protocol": format!("{:?}", p.protocol)})).collect::<Vec<_>>(),
                "endpoints": s.endpoints.iter().map(|e| json!({
                    "address": e.address, "ports": e.ports, "cluster": e.cluster, "network": e.network,
                    "locality": e.locality.to_string(), "healthy": e.healthy, "weight": e.weight,
                    "serviceAccount": e.service_account, "workload": e.workload, "labels": e.labels,
                })).collect::<Vec<_>>(),
                "sources": s.sources,
            })
        })
        .collect();
    json!({ "version": pc.version, "services": services, "warnings": pc.warnings })
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

fn json_response(v: Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(&v).unwrap_or_default();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// A query value: `+` is a space, then percent-decoding.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}
