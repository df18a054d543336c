//! The webhook's HTTPS server: `POST /inject` (AdmissionReview), `GET /ready`.
//!
//! The serving certificate and key are PEM files (the chart mounts a Secret);
//! they are re-read when their modification time changes (checked at most
//! every few seconds), so a rotated Secret is picked up without a restart.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{Decision, Template, review};

/// Largest AdmissionReview accepted (the API server's own request limit is 3 MiB).
const MAX_BODY: usize = 8 << 20;
/// Time a client gets to finish the TLS handshake, and to send request headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent connections; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 512;
/// How often the certificate files are checked for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// Where the serving certificate (chain, leaf first) and key are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// `isthmus_control_plane_inject_reviews_total{result=injected|skipped|error}`.
#[derive(Clone, Debug, Default)]
pub struct InjectMetrics {
    reviews: Family<ResultLabel, Counter>,
}

impl InjectMetrics {
    /// Creates the metrics and registers them under the `inject` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.sub_registry_with_prefix("inject").register(
            "reviews",
            "AdmissionReviews answered, by result",
            metrics.reviews.clone(),
        );
        metrics
    }

    fn count(&self, result: &'static str) {
        self.reviews.get_or_create(&ResultLabel { result }).inc();
    }
}

/// Loads the certificate now (failing loudly if it is unusable), then serves
/// until `shutdown`; open connections finish their current request.
///
/// # Errors
/// If the certificate or key cannot be read or do not form a usable pair.
pub fn serve(
    listener: TcpListener,
    files: TlsFiles,
    template: Template,
    metrics: InjectMetrics,
    shutdown: CancellationToken,
) -> Result<impl Future<Output = ()>, WebhookError> {
    let resolver = Arc::new(Reloading::load(files)?);
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let template = Arc::new(template);
    Ok(async move {
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
            };
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    continue;
                }
                Err(_) => {
                    tracing::debug!(%peer, "webhook TLS handshake timed out");
                    continue;
                }
            };
            let (template, metrics) = (template.clone(), metrics.clone());
            let svc = hyper::service::service_fn(move |req| {
                let (template, metrics) = (template.clone(), metrics.clone());
                async move { Ok::<_, Infallible>(handle(req, &template, &metrics).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT);
            let conn = builder
                .serve_connection(TokioIo::new(tls), svc)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                let _ = conn.await;
                drop(permit);
            });
        }
        // Bounded by the control plane's drain grace (the caller drops us).
        graceful.shutdown().await;
    })
}

async fn handle(
    req: Request<Incoming>,
    template: &Template,
    metrics: &InjectMetrics,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ready") => text(StatusCode::OK, "ready\n"),
        (&Method::POST, "/inject") => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    metrics.count("error");
                    return text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("reading body: {e}\n"),
                    );
                }
            };
            match review(&body, template) {
                Ok((answer, decision)) => {
                    let uid = answer.pointer("/response/uid").and_then(|u| u.as_str());
                    match &decision {
                        Decision::Inject(_) => {
                            metrics.count("injected");
                            tracing::info!(?uid, "sidecar injected");
                        }
                        Decision::Skip(reason) => {
                            metrics.count("skipped");
                            tracing::debug!(?uid, reason, "injection skipped");
                        }
                    }
                    Response::builder()
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Full::new(Bytes::from(answer.to_string())))
                        .unwrap_or_default()
                }
                Err(e) => {
                    metrics.count("error");
                    tracing::warn!(error = %e, "bad AdmissionReview");
                    text(StatusCode::BAD_REQUEST, &format!("{e}\n"))
                }
            }
        }
        (_, "/inject" | "/ready") => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "endpoints: POST /inject, GET /ready\n",
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap_or_default()
}

/// A certificate resolver that re-reads its files when they change.
#[derive(Debug)]
struct Reloading {
    files: TlsFiles,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    mtimes: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl Reloading {
    fn load(files: TlsFiles) -> Result<Self, WebhookError> {
        let (key, mtimes) = load_pair(&files)?;
        Ok(Self {
            files,
            state: Mutex::new(Loaded {
                key,
                mtimes,
                checked: Instant::now(),
            }),
        })
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.checked.elapsed() >= RELOAD_CHECK {
            state.checked = Instant::now();
            if mtimes(&self.files) != state.mtimes {
                match load_pair(&self.files) {
                    Ok((key, mtimes)) => {
                        tracing::info!(cert = %self.files.cert.display(), "webhook certificate reloaded");
                        state.key = key;
                        state.mtimes = mtimes;
                    }
                    // A half-written Secret update: keep serving the old pair.
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook certificate reload failed; keeping the old one")
                    }
                }
            }
        }
        Some(state.key.clone())
    }
}

fn mtimes(files: &TlsFiles) -> (Option<SystemTime>, Option<SystemTime>) {
    let m = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(&files.cert), m(&files.key))
}

type Pair = (Arc<CertifiedKey>, (Option<SystemTime>, Option<SystemTime>));

fn load_pair(files: &TlsFiles) -> Result<Pair, WebhookError> {
    let mtimes = mtimes(files);
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| WebhookError::Read {
            path: path.clone(),
            source,
        })
    };
    let pem_err = |path: &PathBuf, reason: String| WebhookError::Pem {
        path: path.clone(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&read(&files.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(&files.cert, format!("invalid PEM: {e:?}")))?;
    if chain.is_empty() {
        return Err(pem_err(&files.cert, "no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
        .map_err(|e| pem_err(&files.key, format!("no usable private key: {e:?}")))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider.key_provider.load_private_key(key)?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| pem_err(&files.key, format!("does not match the certificate: {e}")))?;
    Ok((Arc::new(certified), mtimes))
}
