//! Server lifecycle: binding, the accept loop, stop/start on the same address, and `Drop`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::{FakeApiServer, Running, Shared, lock, rest};

impl FakeApiServer {
    /// Starts a server on `127.0.0.1` with a random port.
    ///
    /// # Panics
    /// If no loopback port can be bound; use [`try_start`](Self::try_start) to handle that.
    pub async fn start() -> Self {
        Self::try_start()
            .await
            .expect("bind the fake API server on 127.0.0.1")
    }

    /// Starts a server on `127.0.0.1` with a random port.
    ///
    /// # Errors
    /// If no loopback port can be bound.
    pub async fn try_start() -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let server = Self {
            addr: listener.local_addr()?,
            shared: Arc::default(),
            running: Mutex::new(None),
        };
        server.serve(listener);
        Ok(server)
    }

    /// Whether the server is currently accepting connections.
    pub fn is_running(&self) -> bool {
        lock(&self.running).is_some()
    }

    /// Stops accepting connections and closes every open connection and watch stream.
    /// Stored state is kept. Does nothing if already stopped.
    pub async fn stop(&self) {
        let running = lock(&self.running).take();
        if let Some(running) = running {
            let _ = running.shutdown.send(true);
            let _ = running.task.await;
        }
    }

    /// Listens again on the same address after [`stop`](Self::stop). Does nothing if running.
    ///
    /// # Panics
    /// If the address cannot be bound again within 5 seconds.
    pub async fn start_again(&self) {
        if self.is_running() {
            return;
        }
        let mut attempts = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(err) if attempts >= 250 => {
                    panic!("rebind fake API server on {}: {err}", self.addr)
                }
                Err(_) => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        self.serve(listener);
    }

    /// Simulates an API-server restart: [`stop`](Self::stop), then
    /// [`start_again`](Self::start_again) on the same address, keeping all state.
    pub async fn restart(&self) {
        self.stop().await;
        self.start_again().await;
    }

    fn serve(&self, listener: TcpListener) {
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&self.shared), shutdown_rx));
        *lock(&self.running) = Some(Running { shutdown, task });
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(running) = lock(&self.running).take() {
            let _ = running.shutdown.send(true);
            // Aborting drops the task's JoinSet, which aborts every connection task.
            running.task.abort();
        }
    }
}

/// Accepts connections until shutdown, then drops the listener and aborts all connections.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&shared), shutdown.clone()));
                }
                Err(err) => {
                    tracing::warn!("fake API server accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

/// Serves one connection. Keep-alive is off (every response says `Connection: close`), so
/// clients never reuse a pooled connection that a [`FakeApiServer::restart`] has closed,
/// which would make the first request after a restart fail with `IncompleteMessage`.
async fn serve_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let service = service_fn(move |req| rest::handle(Arc::clone(&shared), shutdown.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(err) = conn.await {
        tracing::debug!("fake API server connection ended: {err}");
    }
}
