//! Store → push context: derives a [`PushContext`] for every store version
//! from the previous one and the store's changes ([`PushContext::next`]:
//! incremental for ServiceEntry changes, recording what changed for
//! proxies) and publishes it to the ADS server (which debounces and pushes
//! only what changed).

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
    // Subscribe first: no version between the snapshot and the subscription is missed.
    let mut sub = store.subscribe();
    let mut snapshot = store.snapshot();
    let initial = Arc::new(PushContext::build(&snapshot, mesh));
    let (tx, rx) = watch::channel(initial.clone() as SharedState);
    let (push_tx, push_rx) = watch::channel(initial.clone());
    tokio::spawn(async move {
        let mut last_warnings = Vec::new();
        let mut current = initial;
        loop {
            let update = tokio::select! {
                _ = shutdown.cancelled() => return,
                u = sub.next() => match u { Some(u) => u, None => return },
            };
            if update.snapshot.version() == current.version {
                // The subscription's first answer: the version already built.
                snapshot = update.snapshot;
                continue;
            }
            let started = std::time::Instant::now();
            let pc = if update.snapshot.version() < current.version {
                // Cannot happen (versions only grow), but never derive backwards.
                PushContext::build(&update.snapshot, current.mesh.clone())
            } else {
                current.next(&snapshot, &update.snapshot, &update.changes)
            };
            snapshot = update.snapshot;
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
            current = pc.clone();
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
