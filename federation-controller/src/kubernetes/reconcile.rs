//! `reconcile(MeshFederation) -> Result<Action, Error>` and `error_policy`, in
//! kube-rs's shape, driven by [`run`] from the config store (see the
//! [module docs](super) for why not `kube::runtime::Controller`).
//!
//! For the MeshFederation in effect: add the finalizer
//! [`FINALIZER`](super::FINALIZER) on first sight, then keep `status` current
//! (rate-limited by [`Gate`]). For one being deleted (or no longer
//! describing this cluster) that still carries the finalizer: once no
//! ServiceEntry imported for it is left — the importer removes them when
//! the federation leaves effect, and leftovers seen in the store are deleted
//! here — release the finalizer. Failures requeue with jittered exponential
//! backoff, count in `isthmus_federation_reconcile_errors`, and show in the
//! `Ready` condition.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use isthmus_api::federation::MeshFederation;
use isthmus_api::{Kind, Resource, ResourceKey};
use isthmus_config::kube::dynamic_api;
use isthmus_config::{ConfigWriter, Snapshot, Store, WriteError};
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::status::{self, Decision, Gate, Inputs};
use super::{FIELD_MANAGER, FINALIZER};
use crate::controller::ImportProgress;
use crate::import::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::mesh::Federation;
use crate::metrics::Metrics;
use crate::state::State;

/// Reconcile again after this long even without a trigger.
const RESYNC: Duration = Duration::from_secs(300);
/// How soon to look again while imported entries are still being removed.
const CLEANUP_POLL: Duration = Duration::from_millis(100);
/// Backoff bounds of [`error_policy`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What to do after a reconcile (kube-rs's `Action`, whose duration cannot be read back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Reconcile again after this long, unless a trigger comes first.
    Requeue(Duration),
    /// Only a trigger (a change of the object, the store or the peers) reconciles again.
    AwaitChange,
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Ambiguous(String),
    #[error("{object}: adding finalizer {FINALIZER}: {source}")]
    AddFinalizer {
        object: ResourceKey,
        #[source]
        source: kube::Error,
    },
    #[error("{object}: removing finalizer {FINALIZER}: {source}")]
    RemoveFinalizer {
        object: ResourceKey,
        #[source]
        source: kube::Error,
    },
    #[error("{object}: removing imported {entry}: {source}")]
    Cleanup {
        object: ResourceKey,
        entry: ResourceKey,
        #[source]
        source: WriteError,
    },
    #[error("{object}: writing status: {source}")]
    Status {
        object: ResourceKey,
        #[source]
        source: kube::Error,
    },
}

/// Everything [`reconcile`] and [`error_policy`] use.
pub(crate) struct Context {
    pub(crate) client: kube::Client,
    pub(crate) cluster: String,
    pub(crate) store: Store,
    pub(crate) state: State,
    /// Deletes leftover imported entries (the importer's writer).
    pub(crate) writer: Arc<dyn ConfigWriter>,
    pub(crate) metrics: Metrics,
    pub(crate) imports: watch::Receiver<ImportProgress>,
    objects: Mutex<BTreeMap<ObjectId, PerObject>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// A MeshFederation incarnation: a re-created object starts afresh.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ObjectId {
    key: ResourceKey,
    uid: String,
}

impl ObjectId {
    fn of(mf: &MeshFederation) -> Self {
        Self {
            key: key(mf),
            uid: mf.metadata.uid.clone().unwrap_or_default(),
        }
    }
}

#[derive(Debug, Default)]
struct PerObject {
    gate: Option<Gate>,
    failures: u32,
    not_before: Option<Instant>,
}

impl Context {
    pub(crate) fn new(
        client: kube::Client,
        cluster: String,
        store: Store,
        state: State,
        writer: Arc<dyn ConfigWriter>,
        metrics: Metrics,
        imports: watch::Receiver<ImportProgress>,
    ) -> Self {
        Self {
            client,
            cluster,
            store,
            state,
            writer,
            metrics,
            imports,
            objects: Mutex::default(),
        }
    }

    fn with<T>(&self, mf: &MeshFederation, f: impl FnOnce(&mut PerObject) -> T) -> T {
        let mut objects = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        f(objects.entry(ObjectId::of(mf)).or_default())
    }
}

fn key(mf: &MeshFederation) -> ResourceKey {
    ResourceKey::new(
        Kind::MeshFederation,
        mf.metadata.namespace.clone().unwrap_or_default(),
        mf.metadata.name.clone().unwrap_or_default(),
    )
}

fn has_finalizer(mf: &MeshFederation) -> bool {
    mf.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == FINALIZER)
}

/// The MeshFederations this controller reconciles: those describing its cluster, and
/// any still carrying its finalizer.
fn targets(snapshot: &Snapshot, cluster: &str) -> Vec<Arc<MeshFederation>> {
    snapshot
        .of_kind(Kind::MeshFederation)
        .filter_map(|r| match &**r {
            Resource::MeshFederation(mf)
                if mf.spec.local.cluster == cluster || has_finalizer(mf) =>
            {
                Some(Arc::new(mf.clone()))
            }
            _ => None,
        })
        .collect()
}

/// Imported ServiceEntries (ours by label) the store still shows.
fn imported_entries(snapshot: &Snapshot) -> Vec<ResourceKey> {
    snapshot
        .of_kind(Kind::ServiceEntry)
        .filter(|r| match &***r {
            Resource::ServiceEntry(se) => se
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_BY_LABEL))
                .is_some_and(|v| v == MANAGED_BY),
            _ => false,
        })
        .map(|r| r.key())
        .collect()
}

/// Brings one MeshFederation to what it should be; see the [module docs](self).
pub(crate) async fn reconcile(mf: Arc<MeshFederation>, ctx: Arc<Context>) -> Result<Action, Error> {
    let object = key(&mf);
    let snapshot = ctx.store.snapshot();
    let effective = Federation::from_snapshot(&snapshot, &ctx.cluster).map_err(Error::Ambiguous)?;
    let in_effect = effective
        .as_ref()
        .is_some_and(|f| f.source == object.to_string());
    if in_effect {
        if !has_finalizer(&mf) {
            let mut finalizers = mf.metadata.finalizers.clone().unwrap_or_default();
            finalizers.push(FINALIZER.to_owned());
            set_finalizers(&ctx, &mf, &finalizers)
                .await
                .map_err(|source| Error::AddFinalizer {
                    object: object.clone(),
                    source,
                })?;
            tracing::info!(mesh_federation = %object, "added finalizer {FINALIZER}");
        }
        return write_status(&mf, effective.as_deref(), None, &ctx).await;
    }
    if !has_finalizer(&mf) {
        return Ok(Action::AwaitChange);
    }
    if effective.is_none() {
        // Nothing is in effect any more: what was imported for this one must go first.
        let leftovers = imported_entries(&snapshot);
        for entry in &leftovers {
            ctx.writer
                .delete(entry)
                .await
                .map_err(|source| Error::Cleanup {
                    object: object.clone(),
                    entry: entry.clone(),
                    source,
                })?;
        }
        let progress = ctx.imports.borrow().clone();
        if !leftovers.is_empty() || progress.federation.is_some() || progress.written > 0 {
            tracing::debug!(mesh_federation = %object, store = leftovers.len(), importer = progress.written, "waiting for imported ServiceEntries to go");
            return Ok(Action::Requeue(CLEANUP_POLL));
        }
    }
    let finalizers: Vec<String> = mf
        .metadata
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    match set_finalizers(&ctx, &mf, &finalizers).await {
        Ok(()) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(source) => return Err(Error::RemoveFinalizer { object, source }),
    }
    tracing::info!(mesh_federation = %object, "imported ServiceEntries removed; released finalizer {FINALIZER}");
    Ok(Action::AwaitChange)
}

/// After a failed reconcile: count it, and retry with jittered exponential backoff
/// (100 ms doubling to 30 s). The error goes into the status (see [`run`]).
pub(crate) fn error_policy(mf: Arc<MeshFederation>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.inc();
    let failures = ctx.with(&mf, |o| {
        o.failures = o.failures.saturating_add(1);
        o.failures
    });
    let exp = BACKOFF_MIN.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let cap = exp.min(BACKOFF_MAX);
    // Full jitter over the upper half: never hammer, never all at once.
    let backoff = cap / 2 + cap.mul_f64(rand::random::<f64>() / 2.0);
    ctx.with(&mf, |o| o.not_before = Some(Instant::now() + backoff));
    tracing::warn!(%error, failures, retry_in = ?backoff, "reconciling MeshFederation failed");
    Action::Requeue(backoff)
}

/// Optimistic update of `metadata.finalizers` (a merge patch that carries the
/// resourceVersion seen, so a concurrent change answers 409 and is retried).
async fn set_finalizers(
    ctx: &Context,
    mf: &MeshFederation,
    finalizers: &[String],
) -> Result<(), kube::Error> {
    let api = dynamic_api(
        ctx.client.clone(),
        Kind::MeshFederation,
        mf.metadata.namespace.as_deref(),
    );
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": mf.metadata.resource_version,
    }});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch(
        mf.metadata.name.as_deref().unwrap_or_default(),
        &params,
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Writes the status `mf` should have, when the [`Gate`] lets it through.
async fn write_status(
    mf: &MeshFederation,
    federation: Option<&Federation>,
    error: Option<&str>,
    ctx: &Context,
) -> Result<Action, Error> {
    let now = Instant::now();
    let gate = ctx.with(mf, |o| {
        o.gate
            .get_or_insert_with(|| Gate::seeded(mf.status.as_ref(), now))
            .clone()
    });
    let desired = status::desired(
        federation,
        &ctx.state.peers(),
        Inputs {
            generation: mf.metadata.generation,
            error,
            previous: gate.last().or(mf.status.as_ref()),
            now: SystemTime::now(),
        },
    );
    match gate.decide(&desired, now) {
        Decision::Skip { recheck: None } => return Ok(Action::Requeue(RESYNC)),
        Decision::Skip { recheck: Some(at) } | Decision::Wait(at) => {
            return Ok(Action::Requeue(at.saturating_duration_since(now)));
        }
        Decision::Write => {}
    }
    let object = key(mf);
    let api = dynamic_api(
        ctx.client.clone(),
        Kind::MeshFederation,
        mf.metadata.namespace.as_deref(),
    );
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let body = json!({ "status": desired });
    api.patch_status(&object.name, &params, &Patch::Merge(&body))
        .await
        .map_err(|source| Error::Status {
            object: object.clone(),
            source,
        })?;
    ctx.metrics.status_writes.inc();
    tracing::debug!(mesh_federation = %object, "status written");
    ctx.with(mf, |o| {
        o.gate
            .get_or_insert_with(Gate::default)
            .written(desired, now);
    });
    Ok(Action::Requeue(RESYNC))
}

/// Puts the failed reconcile into `status` (`Ready` false, reason `ReconcileError`), as
/// far as the rate limit and the API server allow.
async fn record_error(mf: &MeshFederation, error: &Error, ctx: &Context) {
    let snapshot = ctx.store.snapshot();
    let effective = Federation::from_snapshot(&snapshot, &ctx.cluster)
        .ok()
        .flatten()
        .filter(|f| f.source == key(mf).to_string());
    let message = error.to_string();
    if let Err(e) = write_status(mf, effective.as_deref(), Some(&message), ctx).await {
        tracing::debug!(error = %e, "recording the reconcile error in status");
    }
}

/// Reconciles on every store version, peer-state change and import progress, and when a
/// requeue is due, until `shutdown`.
pub(crate) async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let mut sub = ctx.store.subscribe();
    let mut peers = ctx.state.subscribe();
    let mut imports = ctx.imports.clone();
    let mut wake = Instant::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            update = sub.next() => if update.is_none() { return },
            changed = peers.changed() => if changed.is_err() { return },
            changed = imports.changed() => if changed.is_err() { return },
            () = tokio::time::sleep_until(wake) => {}
        }
        let now = Instant::now();
        let mut next = now + RESYNC;
        let targets = targets(&ctx.store.snapshot(), &ctx.cluster);
        for mf in &targets {
            if let Some(at) = ctx.with(mf, |o| o.not_before).filter(|at| *at > now) {
                next = next.min(at);
                continue;
            }
            let action = match reconcile(mf.clone(), ctx.clone()).await {
                Ok(action) => {
                    ctx.with(mf, |o| {
                        o.failures = 0;
                        o.not_before = None;
                    });
                    action
                }
                Err(error) => {
                    let action = error_policy(mf.clone(), &error, ctx.clone());
                    record_error(mf, &error, &ctx).await;
                    action
                }
            };
            if let Action::Requeue(after) = action {
                next = next.min(now + after);
            }
        }
        let live: BTreeSet<ObjectId> = targets.iter().map(|mf| ObjectId::of(mf)).collect();
        ctx.objects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|id, _| live.contains(id));
        wake = next;
    }
}
