//! The accept loop: one permit of the global connection limit per
//! connection, taken *before* `accept`, so at the limit the gateway stops
//! accepting and the kernel's backlog (then SYN drops) pushes back on
//! clients instead of the gateway taking sockets it cannot serve.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proxy::{Shared, serve};

/// Accepts until `drain`; every connection task is spawned on `tracker`.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    limit: Arc<Semaphore>,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    drain: CancellationToken,
) {
    loop {
        let permit = match limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                shared.metrics.accept_paused();
                tokio::select! {
                    () = drain.cancelled() => return,
                    p = limit.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                }
            }
        };
        let (stream, peer) = tokio::select! {
            () = drain.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors or memory: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed; pausing 50 ms");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tracker.spawn(async move {
            serve(stream, peer, shared).await;
            drop(permit);
        });
    }
}

/// Errors about one connection that died before `accept` returned it.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
