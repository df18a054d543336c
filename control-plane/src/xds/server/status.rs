//! What each connected proxy was sent and what it accepted, for
//! `/debug/syncz` and `/debug/config_dump`.
//!
//! Each connection task owns its protocol state and publishes a copy here
//! after every change; readers never wait on a stream. Streams do not keep
//! copies of what they sent: a config dump regenerates the sent types from
//! the stream's state (the same content, shared with every other stream).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::lock;
use crate::xds::{ProxyInfo, ProxyRole, SharedState, XdsResource};

/// One ADS stream: who is connected and how far each type is in sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySyncStatus {
    /// Server-unique stream id (a reconnecting proxy gets a new one).
    pub connection: u64,
    pub proxy_id: String,
    pub role: ProxyRole,
    /// The proxy's cluster (`CLUSTER_ID` metadata).
    pub cluster: String,
    pub connected_since: SystemTime,
    /// Whether the stream speaks incremental xDS (`DeltaAggregatedResources`).
    pub incremental: bool,
    /// What scopes the proxy's config in the stream's current state
    /// (`Sidecar <namespace>/<name>`), if anything does.
    pub scope: Option<String>,
    /// Per subscribed type URL.
    pub types: BTreeMap<String, TypeSyncStatus>,
}

/// Sync state of one xDS type on one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeSyncStatus {
    /// Whether the subscription is a wildcard (LDS, CDS; incremental
    /// streams may also name them).
    pub wildcard: bool,
    /// How many resource names the proxy subscribed to (0 for
    /// state-of-the-world wildcards).
    pub subscribed_names: usize,
    pub last_sent_version: Option<String>,
    pub last_acked_version: Option<String>,
    pub last_nack: Option<NackStatus>,
}

impl TypeSyncStatus {
    /// Whether the proxy ACKed the last response sent for this type.
    pub fn is_synced(&self) -> bool {
        self.last_sent_version.is_some() && self.last_sent_version == self.last_acked_version
    }
}

/// A response a proxy rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NackStatus {
    /// The version of the rejected response.
    pub version: String,
    /// The proxy's `error_detail` message.
    pub message: String,
}

/// What a connection publishes.
pub(super) struct View {
    pub(super) status: ProxySyncStatus,
    pub(super) proxy: ProxyInfo,
    /// The state the stream's responses come from.
    pub(super) state: SharedState,
    /// Subscribed names of each type something was sent for.
    pub(super) sent: BTreeMap<String, Arc<BTreeSet<String>>>,
}

impl View {
    /// A new stream's view: nothing subscribed yet.
    pub(super) fn new(id: u64, proxy: &ProxyInfo, state: SharedState, incremental: bool) -> Self {
        View {
            status: ProxySyncStatus {
                connection: id,
                proxy_id: proxy.id.clone(),
                role: proxy.role,
                cluster: proxy.cluster.clone(),
                connected_since: SystemTime::now(),
                incremental,
                scope: state.scope_of(proxy),
                types: BTreeMap::new(),
            },
            proxy: proxy.clone(),
            state,
            sent: BTreeMap::new(),
        }
    }

    /// The resources of every sent type, regenerated.
    fn dump(&self) -> BTreeMap<String, Vec<XdsResource>> {
        self.sent
            .iter()
            .filter_map(|(type_url, names)| {
                let resources = self
                    .state
                    .generate_shared(&self.proxy, type_url, names)
                    .ok()?;
                let mut resources: Vec<XdsResource> =
                    resources.iter().map(|r| r.to_resource()).collect();
                resources.sort_by(|a, b| a.name.cmp(&b.name));
                Some((type_url.clone(), resources))
            })
            .collect()
    }
}

/// Every live connection's view, by connection id.
#[derive(Default)]
pub(super) struct Connections {
    views: Mutex<BTreeMap<u64, Arc<Mutex<View>>>>,
}

impl Connections {
    pub(super) fn insert(&self, view: View) -> Arc<Mutex<View>> {
        let id = view.status.connection;
        let view = Arc::new(Mutex::new(view));
        lock(&self.views).insert(id, view.clone());
        view
    }

    pub(super) fn remove(&self, id: u64) {
        lock(&self.views).remove(&id);
    }

    fn all(&self) -> Vec<Arc<Mutex<View>>> {
        lock(&self.views).values().cloned().collect()
    }

    pub(super) fn len(&self) -> usize {
        lock(&self.views).len()
    }

    /// Every stream's status, ordered by proxy id, then connection.
    pub(super) fn statuses(&self) -> Vec<ProxySyncStatus> {
        let mut all: Vec<ProxySyncStatus> = self
            .all()
            .iter()
            .map(|v| {
                let view = lock(v);
                let mut status = view.status.clone();
                status.scope = view.state.scope_of(&view.proxy);
                status
            })
            .collect();
        all.sort_by(|a, b| {
            (a.proxy_id.as_str(), a.connection).cmp(&(b.proxy_id.as_str(), b.connection))
        });
        all
    }

    /// The resources last sent to `proxy_id` on its newest stream.
    pub(super) fn last_sent(&self, proxy_id: &str) -> Option<BTreeMap<String, Vec<XdsResource>>> {
        let newest = self
            .all()
            .into_iter()
            .filter(|v| lock(v).status.proxy_id == proxy_id)
            .max_by_key(|v| lock(v).status.connection)?;
        // Generate outside the lock: the stream publishes through it.
        let snapshot = {
            let view = lock(&newest);
            View {
                status: view.status.clone(),
                proxy: view.proxy.clone(),
                state: view.state.clone(),
                sent: view.sent.clone(),
            }
        };
        Some(snapshot.dump())
    }
}
