//! Serving the admin endpoints over HTTP/1.1.

use std::convert::Infallible;
use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{AdminResponse, AdminServer, text};

/// Largest request body read.
const MAX_BODY: usize = 64 * 1024;
/// A client gets this long to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

impl AdminServer {
    /// Serves on `listener` until `shutdown`; requests in progress then
    /// finish on their own.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) {
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin listener accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let server = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.answer(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    /// Serves on its own OS thread with a single-threaded runtime, so the
    /// data plane cannot starve it. Stops at `shutdown`; join the handle
    /// to wait for that.
    ///
    /// # Errors
    /// If the thread or its runtime cannot be created, or the listener
    /// cannot be registered with it.
    pub fn spawn_dedicated(
        self,
        listener: std::net::TcpListener,
        shutdown: CancellationToken,
    ) -> io::Result<JoinHandle<()>> {
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("isthmus-admin".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => self.serve(listener, shutdown).await,
                        Err(e) => tracing::error!(error = %e, "admin listener unusable"),
                    }
                });
            })
    }

    async fn answer(&self, req: http::Request<Incoming>) -> AdminResponse {
        let (parts, body) = req.into_parts();
        let body: Bytes = match Limited::new(body, MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => {
                return text(
                    http::StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large\n",
                );
            }
        };
        self.handle(&http::Request::from_parts(parts, body))
    }
}
