//! The Kubernetes source: kube-rs watchers for every kind, and server-side apply.
//!
//! Each (kind, namespace scope) is one watcher and one origin in the store.
//! kube-rs's watcher re-lists after `410 Gone` and reconnects with backoff
//! after API-server restarts; a re-list replaces the origin atomically.
//! Objects are converted with the same loader as files, so an invalid
//! object is reported (per object) and its last good version kept.

mod writer;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use isthmus_api::load::load_value;
use isthmus_api::{Kind, LoadError, Resource, ResourceKey};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use writer::{FIELD_MANAGER, KubeWriter};

use crate::source::{ConfigSource, ConfigWriter, SourceError};
use crate::store::{ErrorKey, Store};

/// Reads resources from a Kubernetes API server.
#[derive(Clone)]
pub struct KubeSource {
    client: kube::Client,
    namespaces: Option<Vec<String>>,
    kinds: Vec<Kind>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("namespaces", &self.namespaces)
            .field("kinds", &self.kinds)
            .finish()
    }
}

impl KubeSource {
    /// Watches every kind Isthmus reads, cluster-wide.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            namespaces: None,
            kinds: Kind::ALL.to_vec(),
        }
    }

    /// Limits namespaced kinds to these namespaces (cluster-scoped kinds are still watched).
    pub fn with_namespaces(mut self, namespaces: Vec<String>) -> Self {
        self.namespaces = Some(namespaces);
        self
    }

    /// Watches only these kinds.
    pub fn with_kinds(mut self, kinds: Vec<Kind>) -> Self {
        self.kinds = kinds;
        self
    }

    /// One watch per kind and namespace scope.
    fn watches(&self) -> Vec<Watch> {
        let mut out = Vec::new();
        for &kind in &self.kinds {
            match (&self.namespaces, kind.namespaced()) {
                (Some(namespaces), true) => out.extend(namespaces.iter().map(|ns| Watch {
                    kind,
                    namespace: Some(ns.clone()),
                })),
                _ => out.push(Watch {
                    kind,
                    namespace: None,
                }),
            }
        }
        out
    }

    async fn run_all(self, store: Store, shutdown: CancellationToken) -> Result<(), SourceError> {
        let watches = self.watches();
        for w in &watches {
            store.register_source(&w.origin());
        }
        let mut tasks = tokio::task::JoinSet::new();
        for w in watches {
            let (client, store, shutdown) = (self.client.clone(), store.clone(), shutdown.clone());
            tasks.spawn(async move { w.run(client, store, shutdown).await });
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// The kube-rs description of a kind.
pub fn api_resource(kind: Kind) -> ApiResource {
    ApiResource {
        group: kind.group().to_string(),
        version: kind.version().to_string(),
        api_version: kind.api_version(),
        kind: kind.name().to_string(),
        plural: kind.plural().to_string(),
    }
}

/// A dynamic API handle for `kind`, in `namespace` or cluster-wide.
pub fn dynamic_api(
    client: kube::Client,
    kind: Kind,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    let ar = api_resource(kind);
    match namespace {
        Some(ns) if kind.namespaced() => Api::namespaced_with(client, ns, &ar),
        _ => Api::all_with(client, &ar),
    }
}

#[derive(Clone, Debug)]
struct Watch {
    kind: Kind,
    namespace: Option<String>,
}

impl Watch {
    fn origin(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("kubernetes:{}/{ns}", self.kind.plural()),
            None => format!("kubernetes:{}", self.kind.plural()),
        }
    }

    async fn run(self, client: kube::Client, store: Store, shutdown: CancellationToken) {
        let origin = self.origin();
        let api = dynamic_api(client, self.kind, self.namespace.as_deref());
        let mut events = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut initial: Option<Vec<DynamicObject>> = None;
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = events.try_next() => e,
            };
            match event {
                Ok(Some(Event::Init)) => initial = Some(Vec::new()),
                Ok(Some(Event::InitApply(obj))) => initial.get_or_insert_with(Vec::new).push(obj),
                Ok(Some(Event::InitDone)) => {
                    let objects = initial.take().unwrap_or_default();
                    info!(origin, count = objects.len(), "listed");
                    self.relisted(&store, &origin, objects);
                    store.mark_synced(&origin);
                }
                Ok(Some(Event::Apply(obj))) => self.applied(&store, &origin, obj),
                Ok(Some(Event::Delete(obj))) => {
                    let key = self.key_of(&obj);
                    store.update(|t| {
                        t.remove(&origin, &key);
                        t.set_errors(ErrorKey::object(&origin, key.clone()), Vec::new());
                    });
                }
                Ok(None) => return,
                // The backoff wrapper retries; an error only means this attempt failed.
                Err(e) => warn!(origin, error = %e, "watch failed; retrying with backoff"),
            }
        }
    }

    fn key_of(&self, obj: &DynamicObject) -> ResourceKey {
        let ns = if self.kind.namespaced() {
            obj.metadata.namespace.clone().unwrap_or_default()
        } else {
            String::new()
        };
        ResourceKey::new(self.kind, ns, obj.metadata.name.clone().unwrap_or_default())
    }

    fn convert(&self, obj: DynamicObject) -> Result<Resource, Vec<LoadError>> {
        let mut value =
            serde_json::to_value(obj).map_err(|e| vec![LoadError::new(e.to_string())])?;
        if let Some(map) = value.as_object_mut() {
            // List items carry no type information; we know what we asked for.
            map.insert("apiVersion".into(), self.kind.api_version().into());
            map.insert("kind".into(), self.kind.name().into());
        }
        load_value(value)
    }

    fn applied(&self, store: &Store, origin: &str, obj: DynamicObject) {
        let key = self.key_of(&obj);
        match self.convert(obj) {
            Ok(r) => store.update(|t| {
                t.upsert(origin, r);
                t.set_errors(ErrorKey::object(origin, key.clone()), Vec::new());
            }),
            Err(errors) => {
                for e in &errors {
                    warn!(origin, error = %e, "rejected object; keeping its last good version");
                }
                store.set_errors(ErrorKey::object(origin, key), errors);
            }
        }
    }

    fn relisted(&self, store: &Store, origin: &str, objects: Vec<DynamicObject>) {
        let mut good = Vec::new();
        let mut bad: BTreeMap<ResourceKey, Vec<LoadError>> = BTreeMap::new();
        for obj in objects {
            let key = self.key_of(&obj);
            match self.convert(obj) {
                Ok(r) => good.push(r),
                Err(errors) => {
                    bad.insert(key, errors);
                }
            }
        }
        store.update(|t| {
            // Invalid objects that still exist keep their last good version.
            let keep: Vec<Resource> = t
                .origin_objects(origin)
                .into_iter()
                .filter(|r| bad.contains_key(&r.key()))
                .map(|r| (*r).clone())
                .collect();
            good.extend(keep);
            t.replace_origin(origin, good);
            t.clear_object_errors(origin);
            for (key, errors) in bad {
                t.set_errors(ErrorKey::object(origin, key), errors);
            }
        });
    }
}

impl ConfigSource for KubeSource {
    fn name(&self) -> String {
        "kubernetes".to_string()
    }

    fn run(
        self: Box<Self>,
        store: Store,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<(), SourceError>> {
        Box::pin(self.run_all(store, shutdown))
    }

    fn writer(&self) -> Arc<dyn ConfigWriter> {
        Arc::new(KubeWriter::new(self.client.clone()))
    }
}
