//! Per-endpoint connection reuse for one cluster.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
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

/// Where a pool keeps a connection: the worker whose runtime runs the
/// connection's task ([`crate::workers::current`]) and the endpoint. A
/// request takes connections of its own worker first, so it and the
/// connection's task wake each other on one thread.
type Key = (usize, SocketAddr);

/// An idle HTTP/1.1 sender and the requests it has carried.
type IdleSender = (http1::SendRequest<Body>, u32);

/// Idle HTTP/1.1 senders per worker and endpoint.
type IdleH1 = Arc<Mutex<HashMap<Key, Vec<IdleSender>>>>;

/// Connections of one cluster, by worker and endpoint.
pub struct Pool {
    settings: PoolSettings,
    h2: Mutex<HashMap<Key, Vec<H2>>>,
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
    ) -> Result<Response<Body>, UpstreamError> {
        let req = prepare(req, self.settings.http2)?;
        if self.settings.http2 {
            let resp = self.send_h2(addr, req, balancer).await?;
            Ok(resp.map(crate::body::boxed))
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
            None => match self.handshake_h2(addr, balancer).await {
                Ok(s) => s,
                // The cluster's connection limit is reached: share another
                // worker's connection rather than fail.
                Err(UpstreamError::Overflow) => self.any_h2(addr).ok_or(UpstreamError::Overflow)?,
                Err(e) => return Err(e),
            },
        };
        let uses = shared.uses.fetch_add(1, Ordering::Relaxed) + 1;
        if self
            .settings
            .max_requests_per_connection
            .is_some_and(|max| uses >= max)
        {
            // Last request on this connection: new requests open another.
            let mut map = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
            for list in map.values_mut() {
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
        let list = map.get_mut(&(crate::workers::current(), addr))?;
        list.retain(|s| !s.sender.is_closed());
        let best = list
            .iter()
            .min_by_key(|s| s.in_flight.load(Ordering::Relaxed))?;
        let busy = best.in_flight.load(Ordering::Relaxed) >= H2_BUSY_STREAMS;
        (!busy || list.len() >= H2_MAX_CONNECTIONS).then(|| best.clone())
    }

    /// The least busy open HTTP/2 connection to `addr` of any worker.
    fn any_h2(&self, addr: SocketAddr) -> Option<H2> {
        let map = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .filter(|((_, a), _)| *a == addr)
            .flat_map(|(_, list)| list.iter())
            .filter(|s| !s.sender.is_closed())
            .min_by_key(|s| s.in_flight.load(Ordering::Relaxed))
            .cloned()
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
        let list = map.entry((crate::workers::current(), addr)).or_default();
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
    ) -> Result<Response<Body>, UpstreamError> {
        let here = crate::workers::current();
        let mut conn = match self.idle_h1(addr, false) {
            Some(s) => s,
            None => match balancer.try_connection() {
                Some(permit) => (self.handshake_h1(addr, permit).await?, 0, here),
                None => self.wait_h1(addr, balancer).await?,
            },
        };
        // A pooled connection is ready (the previous response ended) or
        // about to be (its task has yet to see that end); one that closed
        // meanwhile sends nothing and is replaced below.
        let _ = conn.0.ready().await;
        let result = match conn.0.try_send_request(req).await {
            Ok(resp) => Ok(resp),
            // An idle connection the upstream closed while it sat in the pool
            // (a restarting sidecar or app): the request was never written,
            // so it goes out once more on a new connection.
            Err(mut e) if conn.1 > 0 && e.message().is_some() => {
                let req = e.take_message().expect("checked above");
                conn = match balancer.try_connection() {
                    Some(permit) => (self.handshake_h1(addr, permit).await?, 0, here),
                    None => self.wait_h1(addr, balancer).await?,
                };
                conn.0.send_request(req).await
            }
            Err(e) => Err(e.into_error()),
        };
        let resp = result.map_err(|source| UpstreamError::Request { addr, source })?;
        let (sender, uses, home) = conn;
        let uses = uses + 1;
        let reuse = self
            .settings
            .max_requests_per_connection
            .is_none_or(|max| uses < max);
        // Back to the pool when the response body ends, under the worker
        // running the connection (this one, unless the sender was another
        // worker's, taken at the connection limit).
        let back = reuse.then(|| GiveBack {
            pool: Arc::downgrade(&self.h1),
            key: (home, addr),
            sender,
            uses,
        });
        Ok(resp.map(|body| crate::body::boxed(PooledBody { body, back })))
    }

    /// An idle HTTP/1.1 connection to `addr` of this worker (or, when
    /// `any`, of another worker if this one has none): the sender, the
    /// requests it carried and the worker running it.
    fn idle_h1(
        &self,
        addr: SocketAddr,
        any: bool,
    ) -> Option<(http1::SendRequest<Body>, u32, usize)> {
        let mut map = self.h1.lock().unwrap_or_else(PoisonError::into_inner);
        let here = crate::workers::current();
        if let Some((s, uses)) = map.get_mut(&(here, addr)).and_then(pop_ready) {
            return Some((s, uses, here));
        }
        if !any {
            return None;
        }
        map.iter_mut()
            .filter(|((worker, a), _)| *a == addr && *worker != here)
            .find_map(|((worker, _), list)| pop_ready(list).map(|(s, uses)| (s, uses, *worker)))
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
    /// (`http1MaxPendingRequests`) for a connection of any worker to come
    /// back idle or a connection slot to free up, at most the connect timeout.
    async fn wait_h1(
        &self,
        addr: SocketAddr,
        balancer: &Balancer,
    ) -> Result<(http1::SendRequest<Body>, u32, usize), UpstreamError> {
        let _pending = balancer.try_pending().ok_or(UpstreamError::Overflow)?;
        let deadline = tokio::time::Instant::now() + self.settings.connect_timeout;
        loop {
            if let Some(idle) = self.idle_h1(addr, true) {
                return Ok(idle);
            }
            if let Some(permit) = balancer.try_connection() {
                let sender = self.handshake_h1(addr, permit).await?;
                return Ok((sender, 0, crate::workers::current()));
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
            .retain(|(_, a), _| keep(a));
        self.h1
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(_, a), _| keep(a));
    }
}

/// The newest idle sender of `list` whose connection is still open
/// (closed ones are dropped).
fn pop_ready(list: &mut Vec<IdleSender>) -> Option<IdleSender> {
    while let Some((s, uses)) = list.pop() {
        if !s.is_closed() {
            return Some((s, uses));
        }
    }
    None
}

/// An HTTP/1.1 connection to put back into its pool.
struct GiveBack {
    pool: Weak<Mutex<HashMap<Key, Vec<IdleSender>>>>,
    key: Key,
    sender: http1::SendRequest<Body>,
    uses: u32,
}

impl GiveBack {
    fn put(self) {
        if let Some(pool) = self.pool.upgrade() {
            let mut map = pool.lock().unwrap_or_else(PoisonError::into_inner);
            let list = map.entry(self.key).or_default();
            if list.len() < MAX_IDLE_H1 {
                list.push((self.sender, self.uses));
            }
        }
    }
}

/// A response body from a pooled HTTP/1.1 connection: at its end the
/// connection goes straight back to the pool (the next request waits for
/// it to be ready, usually at once). A body dropped before its end leaves
/// the connection to a task that returns it if it ever becomes ready.
struct PooledBody {
    body: Incoming,
    back: Option<GiveBack>,
}

impl http_body::Body for PooledBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            None => {
                if let Some(back) = self.back.take() {
                    back.put();
                }
            }
            Some(Err(_)) => self.back = None,
            Some(Ok(_)) => {
                if self.body.is_end_stream()
                    && let Some(back) = self.back.take()
                {
                    back.put();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        let Some(back) = self.back.take() else {
            return;
        };
        if http_body::Body::is_end_stream(&self.body) {
            // Nothing was left to read (no body, or it was read whole).
            back.put();
        } else if tokio::runtime::Handle::try_current().is_ok() {
            let GiveBack {
                pool,
                key,
                mut sender,
                uses,
            } = back;
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    GiveBack {
                        pool,
                        key,
                        sender,
                        uses,
                    }
                    .put();
                }
            });
        }
    }
}

/// Sets the version and URI form for the upstream protocol: HTTP/2 takes an
/// absolute URI (`:scheme`, `:authority`), HTTP/1.1 the origin form plus `Host`.
fn prepare(mut req: Request<Body>, http2: bool) -> Result<Request<Body>, UpstreamError> {
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if http2 {
        let authority: Authority = match req.uri().authority() {
            Some(a) => a.clone(),
            None => req
                .headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse().ok())
                .ok_or_else(|| UpstreamError::Invalid("request has no authority or Host".into()))?,
        };
        *req.version_mut() = Version::HTTP_2;
        req.headers_mut().remove(HOST);
        *req.uri_mut() = crate::outbound::http::absolute_uri(authority, Some(path))
            .ok_or_else(|| UpstreamError::Invalid("invalid upstream URI".into()))?;
    } else {
        *req.version_mut() = Version::HTTP_11;
        match req.uri().authority() {
            Some(authority) => {
                // `Host` is written only when it differs: usually it is the
                // header the authority was read from.
                let same = req
                    .headers()
                    .get(HOST)
                    .is_some_and(|h| h.as_bytes() == authority.as_str().as_bytes());
                if !same {
                    let host = HeaderValue::from_str(authority.as_str())
                        .map_err(|e| UpstreamError::Invalid(e.to_string()))?;
                    req.headers_mut().insert(HOST, host);
                }
                *req.uri_mut() = Uri::from(path);
            }
            None if req.headers().contains_key(HOST) => {}
            None => {
                return Err(UpstreamError::Invalid(
                    "request has no authority or Host".into(),
                ));
            }
        }
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, host: Option<&str>) -> Request<Body> {
        let mut req = Request::builder().uri(uri);
        if let Some(h) = host {
            req = req.header(HOST, h);
        }
        req.body(crate::body::empty()).expect("request")
    }

    fn host(req: &Request<Body>) -> Option<&str> {
        req.headers().get(HOST).and_then(|h| h.to_str().ok())
    }

    #[test]
    fn http1_takes_the_origin_form_and_the_authority_as_host() {
        // Host already the authority: left as it is.
        let r = prepare(
            request("http://svc.ns:8080/p?q", Some("svc.ns:8080")),
            false,
        )
        .expect("ok");
        assert_eq!(
            (r.uri().to_string().as_str(), host(&r)),
            ("/p?q", Some("svc.ns:8080"))
        );
        assert_eq!(r.version(), Version::HTTP_11);
        // A rewritten authority replaces Host; a missing Host is added.
        let r = prepare(request("http://new.ns/p", Some("old.ns")), false).expect("ok");
        assert_eq!(
            (r.uri().to_string().as_str(), host(&r)),
            ("/p", Some("new.ns"))
        );
        let r = prepare(request("http://new.ns", None), false).expect("ok");
        assert_eq!(
            (r.uri().to_string().as_str(), host(&r)),
            ("/", Some("new.ns"))
        );
        // Origin form keeps its Host; without either there is no authority.
        let r = prepare(request("/p", Some("svc.ns")), false).expect("ok");
        assert_eq!(
            (r.uri().to_string().as_str(), host(&r)),
            ("/p", Some("svc.ns"))
        );
        assert!(matches!(
            prepare(request("/p", None), false),
            Err(UpstreamError::Invalid(_))
        ));
    }

    #[test]
    fn http2_takes_the_absolute_form_without_host() {
        let r = prepare(request("/p?q", Some("svc.ns:8080")), true).expect("ok");
        assert_eq!(
            (r.uri().to_string().as_str(), host(&r)),
            ("http://svc.ns:8080/p?q", None)
        );
        assert_eq!(r.version(), Version::HTTP_2);
        let r = prepare(request("http://a.ns/p", Some("b.ns")), true).expect("ok");
        assert_eq!(
            (r.uri().to_string().as_str(), host(&r)),
            ("http://a.ns/p", None)
        );
        assert!(matches!(
            prepare(request("/p", None), true),
            Err(UpstreamError::Invalid(_))
        ));
    }
}
