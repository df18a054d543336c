//! Per-endpoint connection reuse for one cluster.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use isthmus_proxy_core::balance::{Balancer, Permit};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;

use super::stream::connect;
use crate::body::Body;

/// How a cluster's upstream connections are made.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// HTTP/2 (always for mesh mTLS hops and h2/gRPC ports) or HTTP/1.1.
    pub http2: bool,
    /// TCP + TLS handshake bound.
    pub connect_timeout: Duration,
    /// Mesh mTLS: client configs (certificate, roots, expected SPIFFE IDs)
    /// and the SNI to send.
    pub tls: Option<MeshTls>,
    /// New connection after this many requests (`maxRequestsPerConnection`).
    pub max_requests_per_connection: Option<u32>,
}

/// How a cluster's mesh mTLS connections are made.
#[derive(Clone, Debug)]
pub struct MeshTls {
    /// ALPN `h2`, `istio`: pooled HTTP/2 and opaque TCP.
    pub h2: Arc<ClientConfig>,
    /// ALPN `http/1.1`: a connection of its own for an upgrade request.
    pub http1: Arc<ClientConfig>,
    /// SNI (`outbound_.<port>_.<subset>_.<host>`).
    pub sni: ServerName<'static>,
}

impl PoolSettings {
    /// Whether two settings make the same connections (the TLS config by identity).
    pub fn same(&self, other: &PoolSettings) -> bool {
        self.http2 == other.http2
            && self.connect_timeout == other.connect_timeout
            && self.max_requests_per_connection == other.max_requests_per_connection
            && match (&self.tls, &other.tls) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(&a.h2, &b.h2) && a.sni == b.sni,
                _ => false,
            }
    }
}

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The cluster's `maxConnections` is reached.
    #[error("connection limit of the cluster reached")]
    Overflow,
    /// TCP or TLS failed (nothing was sent).
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The HTTP handshake failed (nothing was sent).
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    /// The request failed after it may have been sent (reset, closed).
    #[error("request to {addr}: {source}")]
    Request {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    /// The request itself cannot be expressed upstream.
    #[error("invalid upstream request: {0}")]
    Invalid(String),
}

impl UpstreamError {
    /// Whether no byte of the request reached the endpoint.
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect { .. } | UpstreamError::Handshake { .. }
        )
    }
}

struct Shared<S> {
    sender: S,
    uses: AtomicU32,
    /// Requests waiting for their response head on this connection.
    in_flight: AtomicUsize,
}

/// One shared HTTP/2 connection.
type H2 = Arc<Shared<http2::SendRequest<Body>>>;

/// Counts a request on a connection until dropped (also when cancelled).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Idle HTTP/1.1 senders per endpoint, with the requests each has carried.
type IdleH1 = Arc<Mutex<HashMap<SocketAddr, Vec<(http1::SendRequest<Body>, u32)>>>>;

/// Connections of one cluster, by endpoint.
pub struct Pool {
    settings: PoolSettings,
    h2: Mutex<HashMap<SocketAddr, Vec<H2>>>,
    h1: IdleH1,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Most HTTP/2 connections per endpoint. One connection is one task on one
/// worker thread at each end (and one TLS session): under load a few let
/// both sidecars' workers share the work, as Envoy's connection per worker.
const H2_MAX_CONNECTIONS: usize = 4;
/// Requests in flight on the least busy HTTP/2 connection before another
/// one is opened (up to [`H2_MAX_CONNECTIONS`]).
const H2_BUSY_STREAMS: usize = 4;
/// Most idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_H1: usize = 64;
/// How often a pending request looks for a free connection.
const PENDING_POLL: Duration = Duration::from_millis(5);

impl Pool {
    /// An empty pool.
    pub fn new(settings: PoolSettings) -> Self {
        Self {
            settings,
            h2: Mutex::default(),
            h1: Arc::default(),
        }
    }

    /// The settings the pool was built with.
    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// Sends `req` to `addr`. The request's URI carries the logical
    /// authority (`Host`/`:authority`) and path; its version is set here.
    pub async fn send(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
        balancer: &Balancer,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let req = prepare(req, self.settings.http2)?;
        if self.settings.http2 {
            self.send_h2(addr, req, balancer).await
        } else {
            self.send_h1(addr, req, balancer).await
        }
    }

    async fn send_h2(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
        balancer: &Balancer,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let shared = match self.pick_h2(addr) {
            Some(s) => s,
            None => self.handshake_h2(addr, balancer).await?,
        };
        let uses = shared.uses.fetch_add(1, Ordering::Relaxed) + 1;
        if self
            .settings
            .max_requests_per_connection
            .is_some_and(|max| uses >= max)
        {
            // Last request on this connection: new requests open another.
            let mut map = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(list) = map.get_mut(&addr) {
                list.retain(|s| !Arc::ptr_eq(s, &shared));
            }
        }
        let mut sender = shared.sender.clone();
        let _in_flight = InFlight::new(&shared.in_flight);
        sender
            .send_request(req)
            .await
            .map_err(|source| UpstreamError::Request { addr, source })
    }

    /// The least busy open HTTP/2 connection to `addr`, unless all are busy
    /// and another may be opened (`None`: open one).
    fn pick_h2(&self, addr: SocketAddr) -> Option<H2> {
        let mut map = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
        let list = map.get_mut(&addr)?;
        list.retain(|s| !s.sender.is_closed());
        let best = list
            .iter()
            .min_by_key(|s| s.in_flight.load(Ordering::Relaxed))?;
        let busy = best.in_flight.load(Ordering::Relaxed) >= H2_BUSY_STREAMS;
        (!busy || list.len() >= H2_MAX_CONNECTIONS).then(|| best.clone())
    }

    async fn handshake_h2(
        &self,
        addr: SocketAddr,
        balancer: &Balancer,
    ) -> Result<H2, UpstreamError> {
        let permit = balancer.try_connection().ok_or(UpstreamError::Overflow)?;
        let io = self.connect(addr, permit).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        let shared = Arc::new(Shared {
            sender,
            uses: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
        });
        let mut map = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
        let list = map.entry(addr).or_default();
        if list.len() < H2_MAX_CONNECTIONS {
            list.push(shared.clone());
        }
        Ok(shared)
    }

    async fn send_h1(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
        balancer: &Balancer,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let (mut sender, mut uses) = match self.idle_h1(addr) {
            Some(s) => s,
            None => match balancer.try_connection() {
                Some(permit) => (self.handshake_h1(addr, permit).await?, 0),
                None => self.wait_h1(addr, balancer).await?,
            },
        };
        let result = match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp),
            // An idle connection the upstream closed while it sat in the pool
            // (a restarting sidecar or app): the request was never written,
            // so it goes out once more on a new connection.
            Err(mut e) if uses > 0 && e.message().is_some() => {
                let req = e.take_message().expect("checked above");
                (sender, uses) = match balancer.try_connection() {
                    Some(permit) => (self.handshake_h1(addr, permit).await?, 0),
                    None => self.wait_h1(addr, balancer).await?,
                };
                sender.send_request(req).await
            }
            Err(e) => Err(e.into_error()),
        };
        let uses = uses + 1;
        if result.is_ok()
            && self
                .settings
                .max_requests_per_connection
                .is_none_or(|max| uses < max)
        {
            // Back to the pool once the response body is done.
            let pool = Arc::downgrade(&self.h1);
            tokio::spawn(async move {
                if sender.ready().await.is_ok()
                    && let Some(pool) = pool.upgrade()
                {
                    let mut map = pool.lock().unwrap_or_else(PoisonError::into_inner);
                    let list = map.entry(addr).or_default();
                    if list.len() < MAX_IDLE_H1 {
                        list.push((sender, uses));
                    }
                }
            });
        }
        result.map_err(|source| UpstreamError::Request { addr, source })
    }

    /// An idle HTTP/1.1 connection to `addr`, with the requests it carried.
    fn idle_h1(&self, addr: SocketAddr) -> Option<(http1::SendRequest<Body>, u32)> {
        let mut map = self.h1.lock().unwrap_or_else(PoisonError::into_inner);
        let list = map.get_mut(&addr)?;
        while let Some((s, uses)) = list.pop() {
            if s.is_ready() {
                return Some((s, uses));
            }
        }
        None
    }

    async fn handshake_h1(
        &self,
        addr: SocketAddr,
        permit: Permit,
    ) -> Result<http1::SendRequest<Body>, UpstreamError> {
        let io = self.connect(addr, permit).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(sender)
    }

    /// `maxConnections` is reached: wait as a pending request
    /// (`http1MaxPendingRequests`) for a connection to come back idle or a
    /// connection slot to free up, at most the connect timeout.
    async fn wait_h1(
        &self,
        addr: SocketAddr,
        balancer: &Balancer,
    ) -> Result<(http1::SendRequest<Body>, u32), UpstreamError> {
        let _pending = balancer.try_pending().ok_or(UpstreamError::Overflow)?;
        let deadline = tokio::time::Instant::now() + self.settings.connect_timeout;
        loop {
            if let Some(idle) = self.idle_h1(addr) {
                return Ok(idle);
            }
            if let Some(permit) = balancer.try_connection() {
                return Ok((self.handshake_h1(addr, permit).await?, 0));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(UpstreamError::Overflow);
            }
            tokio::time::sleep(PENDING_POLL).await;
        }
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        permit: Permit,
    ) -> Result<super::Stream, UpstreamError> {
        let tls = self.settings.tls.as_ref().map(|t| (&t.h2, &t.sni));
        connect(addr, self.settings.connect_timeout, tls, Some(permit))
            .await
            .map_err(|source| UpstreamError::Connect { addr, source })
    }

    /// Sends an HTTP/1.1 upgrade request on a connection of its own (mesh
    /// mTLS with ALPN `http/1.1` when the cluster uses mTLS; never pooled).
    /// On `101` the caller takes the upgraded stream with
    /// `hyper::upgrade::on(&mut response)`.
    pub async fn send_upgrade(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
        balancer: &Balancer,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let req = prepare(req, false)?;
        let permit = balancer.try_connection().ok_or(UpstreamError::Overflow)?;
        let tls = self.settings.tls.as_ref().map(|t| (&t.http1, &t.sni));
        let io = connect(addr, self.settings.connect_timeout, tls, Some(permit))
            .await
            .map_err(|source| UpstreamError::Connect { addr, source })?;
        let (mut sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream upgrade connection ended");
            }
        });
        sender
            .send_request(req)
            .await
            .map_err(|source| UpstreamError::Request { addr, source })
    }

    /// Drops idle connections to endpoints not in `keep`.
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        self.h2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|a, _| keep(a));
        self.h1
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|a, _| keep(a));
    }
}

/// Sets the version and URI form for the upstream protocol: HTTP/2 takes an
/// absolute URI (`:scheme`, `:authority`), HTTP/1.1 the origin form plus `Host`.
fn prepare(mut req: Request<Body>, http2: bool) -> Result<Request<Body>, UpstreamError> {
    let authority: Authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse().ok())
            .ok_or_else(|| UpstreamError::Invalid("request has no authority or Host".into()))?,
    };
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if http2 {
        *req.version_mut() = Version::HTTP_2;
        req.headers_mut().remove(HOST);
        *req.uri_mut() = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|e| UpstreamError::Invalid(e.to_string()))?;
    } else {
        *req.version_mut() = Version::HTTP_11;
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| UpstreamError::Invalid(e.to_string()))?;
        req.headers_mut().insert(HOST, host);
        *req.uri_mut() = Uri::from(path);
    }
    Ok(req)
}
