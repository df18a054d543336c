//! The fake API server's state: the kind registry, stored objects, the global
//! resourceVersion counter, per-resource event history and watch fan-out.
//!
//! Every write bumps one global resourceVersion (like etcd's revision), is recorded in the
//! history of its resource type, and is broadcast to open watches. `compact` drops the
//! history, after which watches from an older resourceVersion are answered with `410 Gone`.

mod writes;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::broadcast;

use super::objects::{ApiError, Filter, metadata_mut, now_rfc3339, object_mut, str_at};

/// How many undelivered events a watch may fall behind before it is ended with `410 Gone`.
pub(crate) const WATCH_BUFFER: usize = 1024;

/// A REST resource: API group (empty for core), version and plural name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ResourceKey {
    pub group: String,
    pub version: String,
    pub plural: String,
}

/// A registered kind and how it is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KindInfo {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
}

impl KindInfo {
    /// `group/version`, or just `version` for the core group.
    pub(crate) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn resource(&self) -> ResourceKey {
        ResourceKey {
            group: self.group.clone(),
            version: self.version.clone(),
            plural: self.plural.clone(),
        }
    }

    /// The storage key of an object: its namespace (empty if cluster-scoped) and name.
    fn key(&self, namespace: Option<&str>, name: &str) -> (String, String) {
        let ns = if self.namespaced {
            namespace.unwrap_or("default")
        } else {
            ""
        };
        (ns.to_owned(), name.to_owned())
    }
}

/// Splits `group/version` (or a bare core `version`) into its parts.
pub(crate) fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.split_once('/').unwrap_or(("", api_version))
}

/// The type of a stored change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One write, as kept in the history and sent to watches.
#[derive(Debug)]
pub(crate) struct Change {
    pub rv: u64,
    pub event: EventType,
    /// The object after the write (for deletions: the final state, at the deletion's version).
    pub object: Value,
    /// The object before the write, so filtered watches can turn updates into ADDED/DELETED.
    pub previous: Option<Value>,
}

/// What the store broadcasts to the open watches of one resource type.
#[derive(Debug, Clone)]
pub(crate) enum Signal {
    Change(Arc<Change>),
    /// Send a BOOKMARK at this resourceVersion (to watches that allow bookmarks).
    Bookmark(u64),
    /// End the watch with a `410 Gone` ERROR event.
    Expire,
}

#[derive(Debug)]
struct Collection {
    objects: BTreeMap<(String, String), Value>,
    history: Vec<Arc<Change>>,
    tx: broadcast::Sender<Signal>,
}

/// What a new watch starts from, taken atomically with its channel subscription.
#[derive(Debug)]
pub(crate) struct Subscription {
    /// Objects to send as synthetic ADDED events (initial state).
    pub initial: Vec<Value>,
    /// Stored changes after the requested resourceVersion.
    pub backlog: Vec<Arc<Change>>,
    /// Live changes at or below this version were already covered by `initial`/`backlog`.
    pub covered_rv: u64,
    pub rx: broadcast::Receiver<Signal>,
}

/// All state of a fake API server; survives server restarts.
#[derive(Debug)]
pub(crate) struct Store {
    collections: HashMap<ResourceKey, Collection>,
    kinds: HashMap<(String, String), KindInfo>,
    rv: u64,
    compacted: u64,
    uid_seq: u64,
}

impl Default for Store {
    fn default() -> Self {
        let mut store = Self {
            collections: HashMap::new(),
            kinds: HashMap::new(),
            rv: 1,
            compacted: 0,
            uid_seq: 0,
        };
        store.register("v1", "Service", "services", true);
        store.register("v1", "Pod", "pods", true);
        store.register("v1", "Namespace", "namespaces", false);
        store.register("v1", "Node", "nodes", false);
        store.register(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            "endpointslices",
            true,
        );
        store
    }
}

impl Store {
    pub(crate) fn register(
        &mut self,
        api_version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
    ) {
        let (group, version) = split_api_version(api_version);
        let info = KindInfo {
            group: group.to_owned(),
            version: version.to_owned(),
            kind: kind.to_owned(),
            plural: plural.to_owned(),
            namespaced,
        };
        self.collections
            .entry(info.resource())
            .or_insert_with(|| Collection {
                objects: BTreeMap::new(),
                history: Vec::new(),
                tx: broadcast::channel(WATCH_BUFFER).0,
            });
        self.kinds
            .insert((api_version.to_owned(), kind.to_owned()), info);
    }

    pub(crate) fn kind_for_type(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<KindInfo, ApiError> {
        self.kinds
            .get(&(api_version.to_owned(), kind.to_owned()))
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "NotFound",
                    format!("no kind {kind:?} is registered for {api_version:?}"),
                )
            })
    }

    pub(crate) fn kind_for_resource(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<KindInfo> {
        self.kinds
            .values()
            .find(|k| k.group == group && k.version == version && k.plural == plural)
            .cloned()
    }

    pub(crate) fn resource_version(&self) -> u64 {
        self.rv
    }

    /// The resourceVersion of the last `compact` (0 if never compacted).
    pub(crate) fn compacted_version(&self) -> u64 {
        self.compacted
    }

    fn collection(&mut self, kind: &KindInfo) -> &mut Collection {
        self.collections
            .entry(kind.resource())
            .or_insert_with(|| Collection {
                objects: BTreeMap::new(),
                history: Vec::new(),
                tx: broadcast::channel(WATCH_BUFFER).0,
            })
    }

    pub(crate) fn get(&self, kind: &KindInfo, ns: Option<&str>, name: &str) -> Option<Value> {
        let coll = self.collections.get(&kind.resource())?;
        coll.objects.get(&kind.key(ns, name)).cloned()
    }

    pub(crate) fn list(&self, kind: &KindInfo, filter: &Filter) -> Vec<Value> {
        self.collections
            .get(&kind.resource())
            .map(|c| {
                c.objects
                    .values()
                    .filter(|o| filter.matches(o))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Test-side create-or-replace of a whole object.
    pub(crate) fn upsert(&mut self, obj: Value) -> Result<Value, ApiError> {
        let api_version = str_at(&obj, &["apiVersion"]).unwrap_or_default();
        let kind = self.kind_for_type(api_version, str_at(&obj, &["kind"]).unwrap_or_default())?;
        let name = str_at(&obj, &["metadata", "name"])
            .ok_or_else(|| ApiError::bad_request("metadata.name is required"))?
            .to_owned();
        let ns = str_at(&obj, &["metadata", "namespace"]).map(str::to_owned);
        let old = self.get(&kind, ns.as_deref(), &name);
        Ok(self.write(&kind, ns.as_deref(), &name, old.as_ref(), obj, false))
    }

    /// Drops all history: watches from before the current resourceVersion become `410 Gone`.
    pub(crate) fn compact(&mut self) {
        self.compacted = self.rv;
        for coll in self.collections.values_mut() {
            coll.history.clear();
        }
    }

    /// Sends `signal` to every open watch of every resource type.
    pub(crate) fn signal_all(&self, signal: &Signal) {
        for coll in self.collections.values() {
            let _ = coll.tx.send(signal.clone());
        }
    }

    /// Starts a watch. `from` is the requested resourceVersion (`None` for "" or "0", which
    /// means "send the current state first"); `send_initial` forces sending the current state.
    pub(crate) fn subscribe(
        &mut self,
        kind: &KindInfo,
        from: Option<u64>,
        send_initial: bool,
    ) -> Result<Subscription, ApiError> {
        let (rv, compacted) = (self.rv, self.compacted);
        let coll = self.collection(kind);
        let rx = coll.tx.subscribe();
        match from {
            Some(from) if !send_initial => {
                if from < compacted {
                    return Err(ApiError::gone());
                }
                let backlog = coll
                    .history
                    .iter()
                    .filter(|c| c.rv > from)
                    .cloned()
                    .collect();
                Ok(Subscription {
                    initial: Vec::new(),
                    backlog,
                    covered_rv: rv.max(from),
                    rx,
                })
            }
            _ => Ok(Subscription {
                initial: coll.objects.values().cloned().collect(),
                backlog: Vec::new(),
                covered_rv: rv,
                rx,
            }),
        }
    }

    /// Fills in server-managed metadata and stores `new` (unless `dry_run`, or unless
    /// nothing changed: then `old` is returned and no event is generated).
    fn write(
        &mut self,
        kind: &KindInfo,
        ns: Option<&str>,
        name: &str,
        old: Option<&Value>,
        mut new: Value,
        dry_run: bool,
    ) -> Value {
        let changed = old.is_none_or(|old| content(old) != content(&new));
        let root = object_mut(&mut new);
        root.insert("apiVersion".to_owned(), kind.api_version().into());
        root.insert("kind".to_owned(), kind.kind.clone().into());
        let (key_ns, _) = kind.key(ns, name);
        let meta = metadata_mut(&mut new);
        meta.insert("name".to_owned(), name.into());
        if kind.namespaced {
            meta.insert("namespace".to_owned(), key_ns.into());
        } else {
            meta.remove("namespace");
        }
        meta.remove("resourceVersion");
        if let Some(old_meta) = old.and_then(|o| o.get("metadata")) {
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                match old_meta.get(field) {
                    Some(v) => meta.insert(field.to_owned(), v.clone()),
                    None => meta.remove(field),
                };
            }
            if !meta.contains_key("managedFields")
                && let Some(managed) = old_meta.get("managedFields")
            {
                meta.insert("managedFields".to_owned(), managed.clone());
            }
            let generation = old_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            meta.insert(
                "generation".to_owned(),
                (generation + i64::from(changed)).into(),
            );
        } else {
            self.uid_seq += 1;
            let uid = format!("00000000-0000-4000-8000-{:012x}", self.uid_seq);
            meta.insert("uid".to_owned(), uid.into());
            meta.insert("creationTimestamp".to_owned(), now_rfc3339().into());
            meta.insert("generation".to_owned(), 1.into());
            meta.remove("deletionTimestamp");
        }
        if dry_run {
            return new;
        }
        // Like the real API server, a write that changes nothing is not a new version.
        if let Some(old) = old {
            let mut unversioned = old.clone();
            metadata_mut(&mut unversioned).remove("resourceVersion");
            if unversioned == new {
                return old.clone();
            }
        }
        let finished = new
            .get("metadata")
            .and_then(|m| m.get("deletionTimestamp"))
            .is_some()
            && !has_finalizers(&new);
        self.commit(kind, ns, name, new, finished)
    }

    /// Bumps the resourceVersion and records, stores and broadcasts one change.
    fn commit(
        &mut self,
        kind: &KindInfo,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        delete: bool,
    ) -> Value {
        self.rv += 1;
        let rv = self.rv;
        metadata_mut(&mut obj).insert("resourceVersion".to_owned(), rv.to_string().into());
        let key = kind.key(ns, name);
        let coll = self.collection(kind);
        let (event, previous) = if delete {
            (EventType::Deleted, coll.objects.remove(&key))
        } else {
            let previous = coll.objects.insert(key, obj.clone());
            let event = if previous.is_some() {
                EventType::Modified
            } else {
                EventType::Added
            };
            (event, previous)
        };
        let change = Arc::new(Change {
            rv,
            event,
            object: obj.clone(),
            previous,
        });
        coll.history.push(Arc::clone(&change));
        let _ = coll.tx.send(Signal::Change(change));
        obj
    }
}

/// The top-level fields of an object that count for `metadata.generation`.
fn content(obj: &Value) -> BTreeMap<&String, &Value> {
    obj.as_object()
        .into_iter()
        .flat_map(Map::iter)
        .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind"))
        .collect()
}

fn has_finalizers(obj: &Value) -> bool {
    obj.get("metadata")
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}
