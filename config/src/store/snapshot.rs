//! An immutable version of the store.

use std::sync::Arc;

use imbl::OrdMap;
use isthmus_api::{Kind, LoadError, Resource, ResourceKey};

use super::Origin;

/// The effective object for a key and the origin it came from.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) resource: Arc<Resource>,
    pub(crate) origin: Origin,
}

impl PartialEq for Entry {
    /// Identity, not content: a store update keeps the same `Arc` for unchanged objects.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.resource, &other.resource) && self.origin == other.origin
    }
}

/// Errors are recorded per origin, or per object within an origin.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ErrorKey {
    pub origin: Origin,
    pub object: Option<ResourceKey>,
}

impl ErrorKey {
    /// Errors of a whole origin (a broken file).
    pub fn origin(origin: &str) -> Self {
        Self {
            origin: origin.into(),
            object: None,
        }
    }

    /// Errors of one object within an origin (a bad object in a Kubernetes watch).
    pub fn object(origin: &str, key: ResourceKey) -> Self {
        Self {
            origin: origin.into(),
            object: Some(key),
        }
    }
}

/// What happened to one object between two versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Added(ResourceKey),
    Updated(ResourceKey),
    Removed(ResourceKey),
}

impl Change {
    /// The object the change is about.
    pub fn key(&self) -> &ResourceKey {
        match self {
            Change::Added(k) | Change::Updated(k) | Change::Removed(k) => k,
        }
    }
}

/// One consistent version of every object, plus the errors and conflicts of that version.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub(crate) version: u64,
    pub(crate) synced: bool,
    pub(crate) objects: OrdMap<ResourceKey, Entry>,
    pub(crate) errors: OrdMap<ErrorKey, Arc<[LoadError]>>,
    pub(crate) conflicts: OrdMap<ResourceKey, Arc<[Origin]>>,
}

impl Snapshot {
    /// Increases by one for every change to objects or errors.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// True once every registered source has finished its first load.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// True when there are no objects.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The object with this key.
    pub fn get(&self, key: &ResourceKey) -> Option<&Arc<Resource>> {
        self.objects.get(key).map(|e| &e.resource)
    }

    /// The origin the object with this key came from.
    pub fn origin_of(&self, key: &ResourceKey) -> Option<&Origin> {
        self.objects.get(key).map(|e| &e.origin)
    }

    /// Every object, ordered by kind, namespace, name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.objects.values().map(|e| &e.resource)
    }

    /// Objects of one kind, ordered by namespace and name.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Arc<Resource>> {
        let start = ResourceKey::new(kind, "", "");
        self.objects
            .range(start..)
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(_, e)| &e.resource)
    }

    /// Every recorded error.
    pub fn errors(&self) -> impl Iterator<Item = (&ErrorKey, &LoadError)> {
        self.errors
            .iter()
            .flat_map(|(k, errs)| errs.iter().map(move |e| (k, e)))
    }

    /// Keys defined by more than one origin, with the origins (the first one wins).
    pub fn conflicts(&self) -> impl Iterator<Item = (&ResourceKey, &[Origin])> {
        self.conflicts.iter().map(|(k, o)| (k, &**o))
    }

    /// The object changes that turn `self` into `next`.
    pub fn changes_to(&self, next: &Snapshot) -> Vec<Change> {
        // A plain ordered walk with point lookups: imbl 6.1's `diff` and map
        // equality skip entries after shared subtrees (jneem/imbl#161).
        let mut changes: Vec<Change> = next
            .objects
            .iter()
            .filter_map(|(k, new)| match self.objects.get(k) {
                None => Some(Change::Added(k.clone())),
                Some(old)
                    if !Arc::ptr_eq(&old.resource, &new.resource)
                        && old.resource != new.resource =>
                {
                    Some(Change::Updated(k.clone()))
                }
                Some(_) => None,
            })
            .collect();
        changes.extend(
            self.objects
                .keys()
                .filter(|k| !next.objects.contains_key(*k))
                .map(|k| Change::Removed(k.clone())),
        );
        changes.sort_by(|a, b| a.key().cmp(b.key()));
        changes
    }
}
