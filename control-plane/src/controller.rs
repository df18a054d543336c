//! Store → push context: derives a [`PushContext`] for every store version
//! from the previous one and the store's changes ([`PushContext::next`]:
//! incremental for ServiceEntry changes, recording what changed for
//! proxies) and publishes it to the ADS server (which debounces and pushes
//! only what changed). Changes from outside the store ([`Inputs`]: a
//! reloaded trust bundle, re-resolved gateway hostnames) make a new push
//! context the same way ([`PushContext::with_inputs`]).

use std::sync::Arc;

use isthmus_config::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::resolve::ResolvedGateways;
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

/// What the push context is built from besides the store, each followed
/// as it changes: the mesh config (the trust bundle is reloaded with the CA)
/// and the resolved hostname gateway addresses.
#[derive(Debug)]
pub struct Inputs {
    pub mesh: watch::Receiver<MeshConfig>,
    pub gateways: watch::Receiver<Arc<ResolvedGateways>>,
}

impl Inputs {
    /// Inputs that never change.
    pub fn fixed(mesh: MeshConfig) -> Self {
        Self {
            mesh: watch::channel(mesh).1,
            gateways: watch::channel(Arc::default()).1,
        }
    }
}

/// Publishes a new push context for every store version until `shutdown`.
pub fn spawn(store: &Store, mesh: MeshConfig, shutdown: CancellationToken) -> Published {
    spawn_with(store, Inputs::fixed(mesh), shutdown)
}

/// Publishes a new push context for every store version and every change
/// of `inputs` until `shutdown`.
pub fn spawn_with(store: &Store, inputs: Inputs, shutdown: CancellationToken) -> Published {
    let Inputs {
        mesh: mut mesh_rx,
        gateways: mut gateways_rx,
    } = inputs;
    // Subscribe first: no version between the snapshot and the subscription is missed.
    let mut sub = store.subscribe();
    let mut snapshot = store.snapshot();
    let initial = Arc::new(PushContext::build_with(
        &snapshot,
        mesh_rx.borrow_and_update().clone(),
        gateways_rx.borrow_and_update().clone(),
        0,
    ));
    let (tx, rx) = watch::channel(initial.clone() as SharedState);
    let (push_tx, push_rx) = watch::channel(initial.clone());
    tokio::spawn(async move {
        let mut last_warnings = Vec::new();
        let mut current = initial;
        // A closed input keeps its last value.
        let (mut mesh_open, mut gateways_open) = (true, true);
        loop {
            let started = std::time::Instant::now();
            let (pc, changes) = tokio::select! {
                _ = shutdown.cancelled() => return,
                u = sub.next() => {
                    let Some(update) = u else { return };
                    if update.snapshot.version() == current.store_version {
                        // The subscription's first answer: the version already built.
                        snapshot = update.snapshot;
                        continue;
                    }
                    let pc = if update.snapshot.version() < current.store_version {
                        // Cannot happen (versions only grow), but never derive backwards.
                        current.with_inputs(
                            &update.snapshot,
                            current.mesh.clone(),
                            current.resolved_gateways.clone(),
                        )
                    } else {
                        current.next(&snapshot, &update.snapshot, &update.changes)
                    };
                    snapshot = update.snapshot;
                    (pc, update.changes.len())
                }
                r = mesh_rx.changed(), if mesh_open => {
                    if r.is_err() {
                        mesh_open = false;
                        continue;
                    }
                    let mesh = mesh_rx.borrow_and_update().clone();
                    let gateways = gateways_rx.borrow_and_update().clone();
                    (current.with_inputs(&snapshot, mesh, gateways), 0)
                }
                r = gateways_rx.changed(), if gateways_open => {
                    if r.is_err() {
                        gateways_open = false;
                        continue;
                    }
                    let mesh = mesh_rx.borrow_and_update().clone();
                    let gateways = gateways_rx.borrow_and_update().clone();
                    (current.with_inputs(&snapshot, mesh, gateways), 0)
                }
            };
            if pc.warnings != last_warnings {
                for w in &pc.warnings {
                    tracing::warn!(warning = %w, "config skipped");
                }
                last_warnings = pc.warnings.clone();
            }
            tracing::debug!(
                version = pc.version,
                store_version = pc.store_version,
                services = pc.registry.len(),
                changes,
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
