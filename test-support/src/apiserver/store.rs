//! The fake API server's state: the kind registry, stored objects, the global
//! resourceVersion counter, per-resource event history and watch fan-out.
//!
//! Every write bumps one global resourceVersion (like etcd's revision), is recorded in the
//! history of its resource type, and is broadcast to open watches. `compact` drops the
//! history, after which watches from an older resourceVersion are answered with `410 Gone`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value, json};
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

    /// `POST` to a collection.
    pub(crate) fn create(
        &mut self,
        kind: &KindInfo,
        path_ns: Option<&str>,
        body: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        check_type(kind, &body)?;
        let ns = match (path_ns, str_at(&body, &["metadata", "namespace"])) {
            (Some(p), Some(b)) if p != b => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            (p, b) => p.or(b).map(str::to_owned),
        };
        let name = match (
            str_at(&body, &["metadata", "name"]),
            str_at(&body, &["metadata", "generateName"]),
        ) {
            (Some(name), _) if !name.is_empty() => name.to_owned(),
            (_, Some(prefix)) => {
                self.uid_seq += 1;
                format!("{prefix}{:05x}", self.uid_seq)
            }
            _ => return Err(ApiError::bad_request("name or generateName is required")),
        };
        if self.get(kind, ns.as_deref(), &name).is_some() {
            return Err(ApiError::already_exists(&kind.plural, &name));
        }
        Ok(self.write(kind, ns.as_deref(), &name, None, body, dry_run))
    }

    /// `PUT` to an object (or its `status` subresource).
    pub(crate) fn replace(
        &mut self,
        kind: &KindInfo,
        ns: Option<&str>,
        name: &str,
        body: Value,
        status_only: bool,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        check_type(kind, &body)?;
        let old = self.existing(kind, ns, name, &body)?;
        let new = if status_only {
            with_status_of(old.clone(), &body)
        } else {
            keep_status(body, &old)
        };
        Ok(self.write(kind, ns, name, Some(&old), new, dry_run))
    }

    /// `PATCH` with a JSON merge patch (RFC 7386).
    pub(crate) fn merge(
        &mut self,
        kind: &KindInfo,
        ns: Option<&str>,
        name: &str,
        patch: &Value,
        status_only: bool,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let old = self.existing(kind, ns, name, patch)?;
        let mut new = old.clone();
        match (status_only, patch.get("status")) {
            (false, _) => super::objects::merge_patch(&mut new, patch),
            (true, Some(status)) => {
                super::objects::merge_patch(&mut new, &json!({ "status": status }))
            }
            (true, None) => {}
        }
        Ok(self.write(kind, ns, name, Some(&old), new, dry_run))
    }

    /// `PATCH` with server-side apply. Returns the object and whether it was created.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply(
        &mut self,
        kind: &KindInfo,
        ns: Option<&str>,
        name: &str,
        patch: &Value,
        manager: &str,
        status_only: bool,
        dry_run: bool,
    ) -> Result<(Value, bool), ApiError> {
        check_type(kind, patch)?;
        check_name(kind, name, patch)?;
        let old = self.get(kind, ns, name);
        check_precondition(kind, name, old.as_ref(), patch)?;
        let mut new = match (&old, status_only) {
            (None, true) => return Err(ApiError::not_found(&kind.plural, name)),
            (None, false) => patch.clone(),
            (Some(old), true) => with_status_of(old.clone(), patch),
            (Some(old), false) => {
                let mut meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
                let patch_meta = patch.get("metadata");
                for field in ["labels", "annotations", "finalizers", "ownerReferences"] {
                    match patch_meta.and_then(|m| m.get(field)) {
                        Some(v) => object_mut(&mut meta).insert(field.to_owned(), v.clone()),
                        None if matches!(field, "labels" | "annotations") => {
                            object_mut(&mut meta).remove(field)
                        }
                        None => None,
                    };
                }
                let mut new = keep_status(patch.clone(), old);
                object_mut(&mut new).insert("metadata".to_owned(), meta);
                new
            }
        };
        let mut managed: Vec<Value> = old
            .as_ref()
            .and_then(|o| o.get("metadata")?.get("managedFields")?.as_array().cloned())
            .unwrap_or_default();
        managed.retain(|e| {
            !(e.get("manager").and_then(Value::as_str) == Some(manager)
                && e.get("operation").and_then(Value::as_str) == Some("Apply"))
        });
        managed.push(
            json!({"manager": manager, "operation": "Apply", "apiVersion": kind.api_version()}),
        );
        metadata_mut(&mut new).insert("managedFields".to_owned(), Value::Array(managed));
        let created = old.is_none();
        Ok((
            self.write(kind, ns, name, old.as_ref(), new, dry_run),
            created,
        ))
    }

    /// `DELETE` of an object: removes it, or only marks it deleted while it has finalizers.
    pub(crate) fn delete(
        &mut self,
        kind: &KindInfo,
        ns: Option<&str>,
        name: &str,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let old = self
            .get(kind, ns, name)
            .ok_or_else(|| ApiError::not_found(&kind.plural, name))?;
        if has_finalizers(&old) {
            if old
                .get("metadata")
                .and_then(|m| m.get("deletionTimestamp"))
                .is_some()
                || dry_run
            {
                return Ok(old);
            }
            let mut new = old;
            let meta = metadata_mut(&mut new);
            meta.insert("deletionTimestamp".to_owned(), now_rfc3339().into());
            meta.insert("deletionGracePeriodSeconds".to_owned(), 0.into());
            return Ok(self.commit(kind, ns, name, new, false));
        }
        if dry_run {
            return Ok(old);
        }
        Ok(self.commit(kind, ns, name, old, true))
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

    fn existing(
        &self,
        kind: &KindInfo,
        ns: Option<&str>,
        name: &str,
        body: &Value,
    ) -> Result<Value, ApiError> {
        check_name(kind, name, body)?;
        let old = self
            .get(kind, ns, name)
            .ok_or_else(|| ApiError::not_found(&kind.plural, name))?;
        check_precondition(kind, name, Some(&old), body)?;
        Ok(old)
    }

    /// Fills in server-managed metadata and stores `new` (unless `dry_run`).
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

/// `old` with its `status` replaced by the one in `body` (if any).
fn with_status_of(mut old: Value, body: &Value) -> Value {
    if let Some(status) = body.get("status") {
        object_mut(&mut old).insert("status".to_owned(), status.clone());
    }
    old
}

/// `new`, with the `status` of `old` if `new` has none.
fn keep_status(mut new: Value, old: &Value) -> Value {
    if new.get("status").is_none()
        && let Some(status) = old.get("status")
    {
        object_mut(&mut new).insert("status".to_owned(), status.clone());
    }
    new
}

fn check_type(kind: &KindInfo, body: &Value) -> Result<(), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let api_version = kind.api_version();
    for (field, expected) in [
        ("apiVersion", api_version.as_str()),
        ("kind", kind.kind.as_str()),
    ] {
        if let Some(actual) = str_at(body, &[field])
            && actual != expected
        {
            return Err(ApiError::bad_request(format!(
                "{field} {actual:?} does not match {expected:?}"
            )));
        }
    }
    Ok(())
}

fn check_name(kind: &KindInfo, name: &str, body: &Value) -> Result<(), ApiError> {
    match str_at(body, &["metadata", "name"]) {
        Some(actual) if !actual.is_empty() && actual != name => {
            Err(ApiError::bad_request(format!(
                "the name of the object ({actual}) does not match the name on the URL ({name}) for {}",
                kind.plural
            )))
        }
        _ => Ok(()),
    }
}

fn check_precondition(
    kind: &KindInfo,
    name: &str,
    old: Option<&Value>,
    body: &Value,
) -> Result<(), ApiError> {
    match str_at(body, &["metadata", "resourceVersion"]) {
        Some(wanted) if !wanted.is_empty() => {
            let current = old.and_then(|o| str_at(o, &["metadata", "resourceVersion"]));
            if current == Some(wanted) {
                Ok(())
            } else if current.is_none() {
                Err(ApiError::not_found(&kind.plural, name))
            } else {
                Err(ApiError::conflict(&kind.plural, name))
            }
        }
        _ => Ok(()),
    }
}
