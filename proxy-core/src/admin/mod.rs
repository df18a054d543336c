//! The admin HTTP server both data planes run (default port 15000):
//! `/ready`, `/metrics` (Prometheus text), `/config_dump` (the xDS config in
//! use, Envoy-style JSON), `POST /drain`, plus whatever routes the proxy
//! adds with [`AdminBuilder::route`] (the sidecar's `/clusters`, `/certs`).
//!
//! It runs on its own OS thread and single-threaded runtime
//! ([`AdminServer::spawn_dedicated`]) so a busy data plane never starves
//! the endpoints that tell an operator what is going on.

mod json;
mod server;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::ProxyConfig;

pub use json::config_dump;

/// A request as a handler sees it: the body read whole (at most 64 KiB).
pub type AdminRequest = http::Request<Bytes>;
/// What a handler answers.
pub type AdminResponse = Response<Full<Bytes>>;

/// A route handler. Called on the admin thread; keep it quick.
pub type Handler = Arc<dyn Fn(&AdminRequest) -> AdminResponse + Send + Sync>;

/// A `text/plain` response.
pub fn text(status: StatusCode, body: impl Into<String>) -> AdminResponse {
    respond(status, "text/plain; charset=utf-8", body.into().into())
}

/// An `application/json` response, pretty-printed.
pub fn json(status: StatusCode, value: &serde_json::Value) -> AdminResponse {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    respond(status, "application/json", body.into())
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> AdminResponse {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Builds an [`AdminServer`]: every part is optional; a path with nothing
/// behind it answers 404.
#[derive(Default)]
pub struct AdminBuilder {
    registry: Option<Arc<Registry>>,
    config: Option<watch::Receiver<Arc<ProxyConfig>>>,
    ready: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
    drain: Option<CancellationToken>,
    routes: BTreeMap<String, Handler>,
}

impl AdminBuilder {
    /// `/metrics` encodes this registry (register everything before).
    pub fn metrics(mut self, registry: Arc<Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// `/config_dump` renders the config published here.
    pub fn config(mut self, config: watch::Receiver<Arc<ProxyConfig>>) -> Self {
        self.config = Some(config);
        self
    }

    /// `/ready` answers 200 while `ready()` holds and no drain started, else 503.
    pub fn ready(mut self, ready: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.ready = Some(Arc::new(ready));
        self
    }

    /// `POST /drain` cancels this token (the proxy's one drain signal);
    /// once it is cancelled `/ready` answers 503.
    pub fn drain(mut self, drain: CancellationToken) -> Self {
        self.drain = Some(drain);
        self
    }

    /// Adds (or replaces) a route for an exact path, e.g.
    /// `.route("/clusters", |_req| admin::text(StatusCode::OK, "..."))`.
    pub fn route(
        mut self,
        path: &str,
        handler: impl Fn(&AdminRequest) -> AdminResponse + Send + Sync + 'static,
    ) -> Self {
        self.routes.insert(path.to_string(), Arc::new(handler));
        self
    }

    /// The server.
    pub fn build(self) -> AdminServer {
        AdminServer {
            inner: Arc::new(self),
        }
    }
}

impl fmt::Debug for AdminBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminBuilder")
            .field("metrics", &self.registry.is_some())
            .field("config", &self.config.is_some())
            .field("ready", &self.ready.is_some())
            .field("drain", &self.drain.is_some())
            .field("routes", &self.routes.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The admin endpoints; cheap to clone. Serve them with
/// [`serve`](Self::serve) or [`spawn_dedicated`](Self::spawn_dedicated),
/// or call [`handle`](Self::handle) directly.
#[derive(Clone)]
pub struct AdminServer {
    inner: Arc<AdminBuilder>,
}

impl fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl AdminServer {
    /// Starts building a server.
    pub fn builder() -> AdminBuilder {
        AdminBuilder::default()
    }

    /// Answers one request.
    pub fn handle(&self, req: &AdminRequest) -> AdminResponse {
        let s = &self.inner;
        let path = req.uri().path();
        if let Some(handler) = s.routes.get(path) {
            return handler(req);
        }
        match path {
            "/ready" => {
                if s.drain.as_ref().is_some_and(|d| d.is_cancelled()) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else if s.ready.as_ref().is_none_or(|r| r()) {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            "/metrics" if s.registry.is_some() => {
                let mut out = String::new();
                match prometheus_client::encoding::text::encode(
                    &mut out,
                    s.registry.as_deref().unwrap_or(&Registry::default()),
                ) {
                    Ok(()) => respond(
                        StatusCode::OK,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        out.into(),
                    ),
                    Err(_) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "encoding metrics failed\n",
                    ),
                }
            }
            "/config_dump" if s.config.is_some() => {
                let config = s
                    .config
                    .as_ref()
                    .map(|c| c.borrow().clone())
                    .unwrap_or_default();
                json(StatusCode::OK, &config_dump(&config))
            }
            "/drain" if s.drain.is_some() => {
                if req.method() != http::Method::POST {
                    return text(StatusCode::METHOD_NOT_ALLOWED, "use POST /drain\n");
                }
                if let Some(drain) = &s.drain {
                    tracing::info!("drain requested on the admin endpoint");
                    drain.cancel();
                }
                text(StatusCode::OK, "draining\n")
            }
            "/" => text(StatusCode::OK, self.index()),
            _ => text(StatusCode::NOT_FOUND, format!("no admin endpoint {path}\n")),
        }
    }

    /// The paths this server answers, one per line.
    fn index(&self) -> String {
        let s = &self.inner;
        let builtin = [
            ("/ready", true),
            ("/metrics", s.registry.is_some()),
            ("/config_dump", s.config.is_some()),
            ("/drain (POST)", s.drain.is_some()),
        ];
        let mut out: Vec<String> = builtin
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(p, _)| p.to_string())
            .collect();
        out.extend(s.routes.keys().cloned());
        out.join("\n") + "\n"
    }
}
