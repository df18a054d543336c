//! The controller loop: each store version → the MeshFederation in effect
//! (peer tasks reconciled), and this cluster's exported catalog (published
//! to the federation API when it changed). And the import loop: peer state
//! → ServiceEntries.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use isthmus_config::Store;
use isthmus_control_plane::registry::ClusterContext;
use isthmus_proto::federation as proto;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::catalog::{self, LabelAllowList};
use crate::import::Importer;
use crate::mesh::Federation;
use crate::metrics::Metrics;
use crate::peer::{Peers, Timings};
use crate::tls::Tls;

pub(crate) fn incarnation() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Store → MeshFederation, peer tasks, and the exported catalog.
pub(crate) struct Controller {
    pub(crate) cluster: String,
    pub(crate) domain: String,
    pub(crate) labels: LabelAllowList,
    pub(crate) store: Store,
    pub(crate) tls: Arc<Tls>,
    pub(crate) catalog: watch::Sender<Arc<proto::Catalog>>,
    pub(crate) federation: watch::Sender<Option<Arc<Federation>>>,
    pub(crate) metrics: Metrics,
    pub(crate) roots_changed: watch::Sender<u64>,
}

impl Controller {
    pub(crate) async fn run(self, mut peers: Peers, shutdown: CancellationToken) {
        let mut sub = self.store.subscribe();
        let mut roots = self.roots_changed.subscribe();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                update = sub.next() => if update.is_none() { return },
                // The local CA was reloaded: announce its roots.
                changed = roots.changed() => if changed.is_err() { return },
            }
            let snapshot = self.store.snapshot();
            let federation = match Federation::from_snapshot(&snapshot, &self.cluster) {
                Ok(f) => f,
                Err(error) => {
                    tracing::error!(%error, "MeshFederation; keeping the previous one");
                    continue;
                }
            };
            if *self.federation.borrow() != federation {
                peers.reconcile(
                    &federation
                        .as_ref()
                        .map(|f| f.peers.clone())
                        .unwrap_or_default(),
                );
                self.federation.send_replace(federation.clone());
            }
            let ctx = ClusterContext {
                cluster: self.cluster.clone(),
                network: federation
                    .as_ref()
                    .map(|f| f.local.network.clone())
                    .unwrap_or_default(),
                domain: self.domain.clone(),
            };
            let services = catalog::exported_services(&snapshot, &ctx, &self.labels);
            let bundle = self.tls.local_roots().root_pems();
            self.metrics
                .exported
                .set(i64::try_from(services.len()).unwrap_or(i64::MAX));
            self.catalog.send_if_modified(|current| {
                if current.services == services && current.trust_bundle == bundle {
                    return false;
                }
                let next = proto::Catalog {
                    version: current.version + 1,
                    changed_at_unix_ms: unix_ms(),
                    services: services.clone(),
                    trust_bundle: bundle.clone(),
                    trust_domain: self.tls.trust_domain(),
                    ..(**current).clone()
                };
                tracing::info!(
                    version = next.version,
                    exported = next.services.len(),
                    "exported catalog changed"
                );
                *current = Arc::new(next);
                true
            });
        }
    }
}

/// What the importer has done, after each sync: which federation it synced for and how
/// many imported ServiceEntries are written. The finalizer waits for `(None, 0)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ImportProgress {
    /// `MeshFederation <ns>/<name>` of the last sync, `None` when none was in effect.
    pub(crate) federation: Option<String>,
    pub(crate) written: usize,
}

/// Peer state or MeshFederation changes → ServiceEntries; a tick catches staleness expiry
/// and retries failed writes; an imported entry the store shows removed or changed by
/// someone else is written again.
pub(crate) async fn import_loop(
    mut importer: Importer,
    store: Store,
    mut federation: watch::Receiver<Option<Arc<Federation>>>,
    mut peers: watch::Receiver<u64>,
    progress: watch::Sender<ImportProgress>,
    timings: Timings,
    shutdown: CancellationToken,
) {
    let mut sub = store.subscribe();
    // The first update is the whole store as it was adopted from.
    if sub.next().await.is_none() {
        return;
    }
    let started = Instant::now();
    let mut tick = tokio::time::interval(
        (timings.staleness / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            changed = peers.changed() => if changed.is_err() { return },
            changed = federation.changed() => if changed.is_err() { return },
            update = sub.next() => match update {
                Some(update) => if !importer.observe(&update.snapshot, Instant::now()) { continue },
                None => return,
            },
        }
        importer.observe(&store.snapshot(), Instant::now());
        let current = federation.borrow_and_update().clone();
        peers.borrow_and_update();
        importer
            .sync(current.as_deref(), started, Instant::now())
            .await;
        progress.send_if_modified(|p| {
            let now = ImportProgress {
                federation: current.as_ref().map(|f| f.source.clone()),
                written: importer.written(),
            };
            let changed = *p != now;
            *p = now;
            changed
        });
    }
}
