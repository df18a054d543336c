//! Serving downstream HTTP connections with the limits on by default:
//! 100 headers and 60 KiB of them (431 beyond, HTTP/1.1 and HTTP/2), a
//! header-read timeout against slowloris, an idle timeout, HTTP/2 stream and
//! reset limits (CVE-2023-44487), and a drain that lets in-flight requests
//! finish.
//!
//! ```text
//! io ─► hyper auto (HTTP/1.1 | HTTP/2 by preface) ─► header count check ─► handler
//!        └─ select: connection | drain started ─► graceful shutdown
//!                               | idle for idle_timeout ─► graceful shutdown
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::body::{self, Body};

/// Downstream HTTP limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most request headers (431 beyond).
    pub max_headers: usize,
    /// Most bytes of request headers (431 beyond).
    pub max_header_bytes: usize,
    /// Time allowed for the request head (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 streams reset by the client before they were accepted; more
    /// closes the connection (rapid reset).
    pub max_pending_accept_reset_streams: usize,
    /// HTTP/2 streams the server had to reset for protocol errors.
    pub max_local_error_reset_streams: usize,
    /// HTTP/2 PING interval (a peer that does not answer is dropped).
    pub keep_alive_interval: Duration,
    /// A connection without a request in flight for this long is closed
    /// (Envoy's connection manager `idle_timeout`, 1 h by default).
    pub idle_timeout: Duration,
}

/// Bytes the headers take in an HTTP/1.1 head (`name: value\r\n`).
fn header_bytes(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum()
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_headers: 100,
            max_header_bytes: 60 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_streams: 100,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 200,
            keep_alive_interval: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// Requests in flight on one connection, and when the last one ended.
#[derive(Debug)]
struct Activity {
    epoch: Instant,
    active: AtomicUsize,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.epoch.elapsed().saturating_sub(last))
    }
}

/// Marks a request in flight until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.active.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one connection (HTTP/1.1 or HTTP/2, detected) with `handler`
/// until it closes, is idle for too long, or `draining` is cancelled (then
/// in-flight requests finish first).
pub async fn serve<I, F, Fut>(io: I, limits: Limits, draining: CancellationToken, handler: F)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    // The drain already started: no new connection.
    if draining.is_cancelled() {
        return;
    }
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.max_local_error_reset_streams)
        .keep_alive_interval(limits.keep_alive_interval);
    let activity = Arc::new(Activity {
        epoch: Instant::now(),
        active: AtomicUsize::new(0),
        last_ms: AtomicU64::new(0),
    });
    let a = activity.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let in_flight = InFlight::new(&a);
        let handler = handler.clone();
        async move {
            // Checked here for both protocols: hyper's HTTP/1.1 buffer limit
            // is not a bound on the head (a 61 KiB header passed), and
            // HTTP/2 has a size limit but no count.
            let resp = if req.headers().len() > limits.max_headers
                || header_bytes(req.headers()) > limits.max_header_bytes
            {
                too_large()
            } else {
                handler(req).await
            };
            drop(in_flight);
            Ok::<_, Infallible>(resp)
        }
    });
    let mut conn = pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
    let check = (limits.idle_timeout / 4).clamp(Duration::from_millis(20), Duration::from_secs(60));
    let mut idle_check = tokio::time::interval(check);
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "downstream connection ended with an error");
                }
                return;
            }
            () = draining.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = idle_check.tick(), if !closing => {
                if activity.idle_for().is_some_and(|d| d >= limits.idle_timeout) {
                    tracing::debug!("downstream connection idle; closing");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

fn too_large() -> Response<Body> {
    let mut r = Response::new(body::full(Bytes::from_static(
        b"request header fields too large\n",
    )));
    *r.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    r
}
