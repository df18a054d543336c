//! The typed, versioned, in-memory resource store.
//!
//! Sources write per *origin* (a file, or one Kubernetes watch): each origin
//! holds its own objects and errors, and the store derives the effective
//! view. Readers get immutable [`Snapshot`]s that are cheap to clone
//! (persistent maps), so a subscriber always sees one consistent version,
//! plus what changed since the last one it saw.

mod snapshot;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use isthmus_api::{LoadError, Resource, ResourceKey};
use tokio::sync::watch;

pub use snapshot::{Change, ErrorKey, Snapshot};

/// Where objects came from: a file path, `kubernetes:virtualservices`, ...
pub type Origin = Arc<str>;

/// Shared handle to the store; clones share state.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    tx: watch::Sender<Arc<Snapshot>>,
}

#[derive(Debug, Default)]
struct State {
    /// What each origin wants, including objects shadowed by another origin.
    origins: BTreeMap<Origin, BTreeMap<ResourceKey, Arc<Resource>>>,
    /// Sources that have not finished their first full load.
    unsynced: BTreeMap<String, bool>,
    current: Snapshot,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty store at version 0.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Arc::new(Snapshot::default()));
        Self {
            inner: Arc::new(Inner {
                state: Mutex::default(),
                tx,
            }),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.tx.borrow().clone()
    }

    /// A subscription whose first [`Subscription::next`] returns the current state.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.inner.tx.subscribe(),
            last: None,
        }
    }

    /// Applies several changes as one new version (or none, if nothing changed).
    pub fn update(&self, f: impl FnOnce(&mut Txn<'_>)) {
        let mut guard = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let state = &mut *guard;
        let mut next = state.current.clone();
        let mut txn = Txn {
            origins: &mut state.origins,
            unsynced: &mut state.unsynced,
            next: &mut next,
            changed: false,
        };
        f(&mut txn);
        let changed = txn.changed;
        next.synced = state.unsynced.values().all(|done| *done);
        // The transaction records what it changed; comparing persistent maps
        // wholesale is slower and, in imbl 6.1, wrong (jneem/imbl#161).
        if changed || next.synced != state.current.synced {
            next.version = state.current.version + 1;
            state.current = next.clone();
            self.inner.tx.send_replace(Arc::new(next));
        }
    }

    /// Replaces everything `origin` defines, atomically, and clears its errors.
    pub fn replace_origin(&self, origin: &str, resources: Vec<Resource>) {
        self.update(|t| {
            t.replace_origin(origin, resources);
            t.set_errors(ErrorKey::origin(origin), Vec::new());
        });
    }

    /// Removes an origin and everything it defined.
    pub fn remove_origin(&self, origin: &str) {
        self.update(|t| t.remove_origin(origin));
    }

    /// Records errors for an origin while keeping its last good objects.
    pub fn set_errors(&self, key: ErrorKey, errors: Vec<LoadError>) {
        self.update(|t| t.set_errors(key, errors));
    }

    /// Declares a source whose first load must finish before the store is synced.
    pub fn register_source(&self, name: &str) {
        self.update(|t| t.register_source(name));
    }

    /// Marks a source's first load as finished.
    pub fn mark_synced(&self, name: &str) {
        self.update(|t| t.mark_synced(name));
    }
}

/// One batch of changes to the store.
#[derive(Debug)]
pub struct Txn<'a> {
    origins: &'a mut BTreeMap<Origin, BTreeMap<ResourceKey, Arc<Resource>>>,
    unsynced: &'a mut BTreeMap<String, bool>,
    next: &'a mut Snapshot,
    /// Whether anything visible in the snapshot changed.
    changed: bool,
}

impl Txn<'_> {
    /// Replaces everything `origin` defines.
    pub fn replace_origin(&mut self, origin: &str, resources: Vec<Resource>) {
        let new: BTreeMap<ResourceKey, Arc<Resource>> = resources
            .into_iter()
            .map(|r| (r.key(), Arc::new(r)))
            .collect();
        let old = self.origins.remove(origin).unwrap_or_default();
        let mut touched: Vec<ResourceKey> = old.keys().cloned().collect();
        // Keep the old Arc when nothing changed, so subscribers see no change.
        let mut merged = BTreeMap::new();
        for (key, r) in new {
            let r = match old.get(&key) {
                Some(prev) if **prev == *r => prev.clone(),
                _ => r,
            };
            touched.push(key.clone());
            merged.insert(key, r);
        }
        if !merged.is_empty() {
            self.origins.insert(origin.into(), merged);
        }
        self.recompute(touched);
    }

    /// Adds or replaces one object of `origin`.
    pub fn upsert(&mut self, origin: &str, resource: Resource) {
        let key = resource.key();
        let objects = self.origins.entry(origin.into()).or_default();
        if objects.get(&key).is_some_and(|prev| **prev == resource) {
            return;
        }
        objects.insert(key.clone(), Arc::new(resource));
        self.recompute(vec![key]);
    }

    /// Removes one object of `origin`.
    pub fn remove(&mut self, origin: &str, key: &ResourceKey) {
        if let Some(objects) = self.origins.get_mut(origin)
            && objects.remove(key).is_some()
        {
            if objects.is_empty() {
                self.origins.remove(origin);
            }
            self.recompute(vec![key.clone()]);
        }
    }

    /// Removes an origin, its objects and all its errors.
    pub fn remove_origin(&mut self, origin: &str) {
        let old = self.origins.remove(origin).unwrap_or_default();
        self.recompute(old.into_keys().collect());
        let keys: Vec<ErrorKey> = self
            .next
            .errors
            .keys()
            .filter(|k| &*k.origin == origin)
            .cloned()
            .collect();
        for k in keys {
            self.changed |= self.next.errors.remove(&k).is_some();
        }
    }

    /// Sets (or, when empty, clears) the errors recorded under `key`.
    pub fn set_errors(&mut self, key: ErrorKey, errors: Vec<LoadError>) {
        if errors.is_empty() {
            self.changed |= self.next.errors.remove(&key).is_some();
        } else if self.next.errors.get(&key).is_none_or(|e| **e != *errors) {
            self.next.errors.insert(key, errors.into());
            self.changed = true;
        }
    }

    /// Clears the per-object errors of `origin` (a re-list reports them afresh).
    pub fn clear_object_errors(&mut self, origin: &str) {
        let keys: Vec<ErrorKey> = self
            .next
            .errors
            .keys()
            .filter(|k| &*k.origin == origin && k.object.is_some())
            .cloned()
            .collect();
        for k in keys {
            self.changed |= self.next.errors.remove(&k).is_some();
        }
    }

    /// The objects `origin` currently defines.
    pub fn origin_objects(&self, origin: &str) -> Vec<Arc<Resource>> {
        self.origins
            .get(origin)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Declares a source that must load once before the store counts as synced.
    pub fn register_source(&mut self, name: &str) {
        self.unsynced.entry(name.to_string()).or_insert(false);
    }

    /// Marks a source's first load as done.
    pub fn mark_synced(&mut self, name: &str) {
        self.unsynced.insert(name.to_string(), true);
    }

    /// Recomputes the effective object for each key: the first origin (in
    /// order) that defines it wins; others are reported as conflicts.
    fn recompute(&mut self, keys: Vec<ResourceKey>) {
        for key in keys {
            let mut holders = self
                .origins
                .iter()
                .filter_map(|(o, m)| m.get(&key).map(|r| (o, r)));
            match holders.next() {
                Some((origin, r)) => {
                    let shadowed: Vec<Origin> = holders.map(|(o, _)| o.clone()).collect();
                    let entry = snapshot::Entry {
                        resource: r.clone(),
                        origin: origin.clone(),
                    };
                    if self.next.objects.get(&key) != Some(&entry) {
                        self.next.objects.insert(key.clone(), entry);
                        self.changed = true;
                    }
                    if shadowed.is_empty() {
                        self.changed |= self.next.conflicts.remove(&key).is_some();
                    } else {
                        let mut all = vec![origin.clone()];
                        all.extend(shadowed);
                        let all: Arc<[Origin]> = all.into();
                        if self.next.conflicts.get(&key) != Some(&all) {
                            self.next.conflicts.insert(key, all);
                            self.changed = true;
                        }
                    }
                }
                None => {
                    self.changed |= self.next.objects.remove(&key).is_some();
                    self.changed |= self.next.conflicts.remove(&key).is_some();
                }
            }
        }
    }
}

/// A stream of store versions for one consumer.
#[derive(Debug)]
pub struct Subscription {
    rx: watch::Receiver<Arc<Snapshot>>,
    last: Option<Arc<Snapshot>>,
}

/// A new version of the store and what changed since the subscriber's previous one.
#[derive(Clone, Debug)]
pub struct Update {
    pub snapshot: Arc<Snapshot>,
    /// Objects added, updated or removed (errors-only updates have none).
    pub changes: Vec<Change>,
}

impl Subscription {
    /// Waits for the next version; the first call returns the current one with
    /// every object as added. `None` once the store is gone.
    pub async fn next(&mut self) -> Option<Update> {
        if self.last.is_some() {
            self.rx.changed().await.ok()?;
        }
        let snapshot = self.rx.borrow_and_update().clone();
        let changes = match &self.last {
            Some(prev) => prev.changes_to(&snapshot),
            None => Snapshot::default().changes_to(&snapshot),
        };
        self.last = Some(snapshot.clone());
        Some(Update { snapshot, changes })
    }
}

#[cfg(test)]
mod tests;
