//! Store → push context: rebuilds the [`PushContext`] on every store
//! version and publishes it to the ADS server (which debounces and decides
//! which proxies changed).

use std::sync::Arc;

use isthmus_config::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::xds::SharedState;
use crate::xds::generate::{MeshConfig, PushContext};

/// The receiving ends of the published push contexts.
#[derive(Clone)]
pub struct Published {
    /// For the ADS server.
    pub state: watch::Receiver<SharedState>,
    /// The same contexts, typed (for debug endpoints).
    pub push: watch::Receiver<Arc<PushContext>>,
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Published")
            .field("version", &self.push.borrow().version)
            .finish()
    }
}

/// Publishes a new push context for every store version until `shutdown`.
pub fn spawn(store: &Store, mesh: MeshConfig, shutdown: CancellationToken) -> Published {
    let initial = Arc::new(PushContext::build(&store.snapshot(), mesh.clone()));
    let (tx, rx) = watch::channel(initial.clone() as SharedState);
    let (push_tx, push_rx) = watch::channel(initial);
    let mut sub = store.subscribe();
    tokio::spawn(async move {
        let mut last_warnings = Vec::new();
        loop {
            let update = tokio::select! {
                _ = shutdown.cancelled() => return,
                u = sub.next() => match u { Some(u) => u, None => return },
            };
            let started = std::time::Instant::now();
            let pc = PushContext::build(&update.snapshot, mesh.clone());
            if pc.warnings != last_warnings {
                for w in &pc.warnings {
                    tracing::warn!(warning = %w, "config skipped");
                }
                last_warnings = pc.warnings.clone();
            }
            tracing::debug!(
                version = pc.version,
                services = pc.registry.len(),
                changes = update.changes.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "push context rebuilt"
            );
            let pc = Arc::new(pc);
            push_tx.send_replace(pc.clone());
            if tx.send(pc).is_err() {
                return;
            }
        }
    });
    Published {
        state: rx,
        push: push_rx,
    }
}
