//! Serving downstream HTTP connections with the limits on by default:
//! 100 headers and 60 KiB of them (431 beyond), a header-read timeout
//! against slowloris, HTTP/2 stream and reset limits (CVE-2023-44487), and
//! a drain that lets in-flight requests finish.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::body::Body;

/// Downstream HTTP limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most request headers (HTTP/1.1).
    pub max_headers: usize,
    /// Most bytes of request headers.
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
    /// Idle time after which a downstream connection is closed (HTTP/2 pings).
    pub keep_alive_interval: Duration,
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
        }
    }
}

/// Serves one connection (HTTP/1.1 or HTTP/2, detected) with `handler`,
/// watched by the drain `watcher` (`None`: draining, close at once).
pub async fn serve<I, F, Fut>(io: I, limits: Limits, watcher: Option<Watcher>, handler: F)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    // The drain already started: no new connection.
    let Some(watcher) = watcher else { return };
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
    let service = service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler(req).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(error = %e, "downstream connection ended with an error");
    }
}
