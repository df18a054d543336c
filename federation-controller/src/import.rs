//! The import side: peers' catalogs → `ServiceEntry` objects, written
//! through the config source's write path ([`ConfigWriter`]).
//!
//! One ServiceEntry per (peer, service), named `<svc>.<peer>` in the
//! service's namespace and labelled as ours, with hosts `<svc>.<ns>.global`
//! and `<svc>.<ns>.svc.clusterset.local`. Its endpoints are the peer's
//! gateway addresses, one per endpoint group (locality, allowed labels,
//! service account), labelled with the peer's cluster and network, weighted
//! by the group's healthy count — weight 0 (unhealthy) when the peer's
//! stream is down or its gateway fails its probes. The control plane merges
//! entries of several peers (and the local Service) into one host. A dead
//! peer's entries stay, unhealthy, for the staleness bound, then go.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use isthmus_api::federation::Peer as PeerSpec;
use isthmus_api::naming::{Locality, ServiceName};
use isthmus_api::networking::{
    Location, Resolution, ServiceEntry, ServiceEntrySpec, ServicePort, WorkloadEntrySpec,
};
use isthmus_api::{Kind, Resource, ResourceKey};
use isthmus_config::{ConfigWriter, Snapshot};
use isthmus_control_plane::registry::{CLUSTER_LABEL, NETWORK_LABEL, Protocol};
use isthmus_proto::federation as proto;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::time::Instant;

use crate::catalog::LabelAllowList;
use crate::mesh::Federation;
use crate::metrics::{Metrics, PeerLabel};
use crate::state::{self, Connection, State};

/// Label marking objects this controller owns.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "isthmus-federation";
/// How long an entry written may be missing from the source before it counts as
/// removed by someone else (the source's watch lags behind our writes).
pub const CONFIRM_GRACE: Duration = Duration::from_secs(2);
/// Label naming the peer an imported ServiceEntry came from.
pub const PEER_LABEL: &str = "federation.isthmus.io/peer";

/// The name of the ServiceEntry importing `service` from `peer`.
pub fn entry_name(service: &str, peer: &str) -> String {
    format!("{service}.{peer}")
}

/// Whether `peer`'s catalog is still usable at `now`: its stream is up, or it went down
/// less than `staleness` ago.
fn fresh(peer: &state::Peer, now: Instant, staleness: Duration) -> bool {
    peer.connection == Connection::Connected || now.duration_since(peer.last_alive) <= staleness
}

/// The ServiceEntries every peer's catalog asks for, by key.
pub fn desired(
    federation: &Federation,
    peers: &BTreeMap<String, state::Peer>,
    labels: &LabelAllowList,
    now: Instant,
    staleness: Duration,
) -> BTreeMap<ResourceKey, ServiceEntry> {
    let mut out = BTreeMap::new();
    for (name, spec) in &federation.peers {
        let Some(peer) = peers.get(name) else {
            continue;
        };
        let Some(catalog) = peer
            .catalog
            .as_ref()
            .filter(|_| fresh(peer, now, staleness))
        else {
            continue;
        };
        for svc in &catalog.services {
            if !federation.may_import(&svc.namespace, &svc.name) {
                continue;
            }
            if let Some(se) = service_entry(spec, peer, svc, labels) {
                out.insert(Resource::ServiceEntry(se.clone()).key(), se);
            }
        }
    }
    out
}

/// The ServiceEntry for one exported service of one peer; `None` when the peer sent a
/// name that is not a Kubernetes service name.
pub fn service_entry(
    spec: &PeerSpec,
    peer: &state::Peer,
    svc: &proto::ExportedService,
    labels: &LabelAllowList,
) -> Option<ServiceEntry> {
    let name = ServiceName::new(&svc.name, &svc.namespace)
        .inspect_err(|e| tracing::warn!(peer = %spec.name, error = %e, "peer exported an invalid service name"))
        .ok()?;
    let mut ports: Vec<ServicePort> = Vec::new();
    for p in &svc.ports {
        let usable = (1..=65535).contains(&p.number)
            && !p.name.is_empty()
            && Protocol::from_name(&p.protocol).is_some()
            && !ports
                .iter()
                .any(|q| q.number == p.number || q.name == p.name);
        if usable {
            ports.push(ServicePort {
                number: p.number,
                protocol: Some(p.protocol.to_ascii_uppercase()),
                name: p.name.clone(),
                target_port: None,
            });
        }
    }
    let peer_healthy = peer.healthy();
    let mut endpoints = Vec::new();
    for group in &svc.groups {
        let locality = group
            .locality
            .parse::<Locality>()
            .ok()
            .filter(|l| !l.region.is_empty())
            .map(|l| l.to_string())
            .or_else(|| Some(spec.locality.clone()).filter(|l| !l.is_empty()));
        let mut ep_labels = labels.filter(&group.labels);
        ep_labels.insert(CLUSTER_LABEL.to_owned(), spec.name.clone());
        ep_labels.insert(NETWORK_LABEL.to_owned(), spec.network.clone());
        for gateway in &peer.gateways {
            for addr in &gateway.resolved {
                let healthy = peer_healthy && gateway.healthy && group.healthy > 0;
                endpoints.push(WorkloadEntrySpec {
                    address: addr.ip().to_string(),
                    ports: ports
                        .iter()
                        .map(|p| (p.name.clone(), u32::from(addr.port())))
                        .collect(),
                    labels: ep_labels.clone(),
                    network: Some(spec.network.clone()),
                    locality: locality.clone(),
                    weight: Some(if healthy { group.healthy } else { 0 }),
                    service_account: Some(group.service_account.clone())
                        .filter(|sa| !sa.is_empty()),
                });
            }
        }
    }
    endpoints.dedup();
    let metadata = ObjectMeta {
        name: Some(entry_name(&name.name, &spec.name)),
        namespace: Some(name.namespace.clone()),
        labels: Some(BTreeMap::from([
            (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            (PEER_LABEL.to_owned(), spec.name.clone()),
        ])),
        ..ObjectMeta::default()
    };
    Some(ServiceEntry {
        metadata,
        spec: ServiceEntrySpec {
            hosts: vec![name.global_host(), name.clusterset_host()],
            ports,
            location: Some(Location::MeshInternal),
            resolution: Some(Resolution::Static),
            endpoints,
            ..ServiceEntrySpec::default()
        },
    })
}

/// Whether a stored object is an imported ServiceEntry of ours.
fn owned(r: &Resource) -> Option<&ServiceEntry> {
    match r {
        Resource::ServiceEntry(se)
            if se
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_BY_LABEL))
                .is_some_and(|v| v == MANAGED_BY) =>
        {
            Some(se)
        }
        _ => None,
    }
}

fn peer_of(se: &ServiceEntry) -> Option<&str> {
    se.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(PEER_LABEL))
        .map(String::as_str)
}

/// Keeps the written ServiceEntries equal to [`desired`].
#[derive(Debug)]
pub struct Importer {
    writer: Arc<dyn ConfigWriter>,
    /// What is written now (or was found written at startup), by key.
    written: BTreeMap<ResourceKey, ServiceEntry>,
    /// Entries found at startup, per peer: kept until the peer's first catalog, or until
    /// the staleness bound if it never comes; unhealthy once the peer is known down.
    recovered: BTreeMap<String, Vec<ServiceEntry>>,
    /// Entries written but not seen in the source yet, with when they were written.
    unconfirmed: BTreeMap<ResourceKey, Instant>,
    /// Last catalog (incarnation, version) of each peer whose import delay was measured.
    measured: BTreeMap<String, (String, u64)>,
    labels: LabelAllowList,
    staleness: Duration,
    metrics: Metrics,
    state: State,
}

impl Importer {
    pub fn new(
        writer: Arc<dyn ConfigWriter>,
        labels: LabelAllowList,
        staleness: Duration,
        metrics: Metrics,
        state: State,
    ) -> Self {
        Self {
            writer,
            written: BTreeMap::new(),
            recovered: BTreeMap::new(),
            unconfirmed: BTreeMap::new(),
            measured: BTreeMap::new(),
            labels,
            staleness,
            metrics,
            state,
        }
    }

    /// Takes over the ServiceEntries a previous run wrote (found in `snapshot`).
    pub fn adopt(&mut self, snapshot: &Snapshot) {
        for r in snapshot.of_kind(Kind::ServiceEntry) {
            if let Some(se) = owned(r) {
                self.written.insert(r.key(), se.clone());
                if let Some(peer) = peer_of(se) {
                    self.recovered
                        .entry(peer.to_owned())
                        .or_default()
                        .push(se.clone());
                }
            }
        }
        if !self.written.is_empty() {
            tracing::info!(
                entries = self.written.len(),
                "adopted imported ServiceEntries of a previous run"
            );
        }
    }

    /// Forgets written entries that the source shows removed, or changed by someone else
    /// (their spec, or a label of ours), so that the next [`sync`](Self::sync) writes them
    /// again. An entry written but not seen in the source yet gets [`CONFIRM_GRACE`]
    /// (the source's watch may lag behind the write). Returns whether any was forgotten.
    pub fn observe(&mut self, snapshot: &Snapshot, now: Instant) -> bool {
        if !snapshot.is_synced() {
            return false;
        }
        let mut drifted = Vec::new();
        for (key, mine) in &self.written {
            let intact = match snapshot.get(key).map(|r| &**r) {
                Some(Resource::ServiceEntry(seen)) => {
                    let labels = seen.metadata.labels.clone().unwrap_or_default();
                    seen.spec == mine.spec
                        && mine
                            .metadata
                            .labels
                            .iter()
                            .flatten()
                            .all(|(k, v)| labels.get(k) == Some(v))
                }
                _ => false,
            };
            if intact {
                self.unconfirmed.remove(key);
            } else if self
                .unconfirmed
                .get(key)
                .is_none_or(|at| now.duration_since(*at) > CONFIRM_GRACE)
            {
                drifted.push(key.clone());
            }
        }
        for key in &drifted {
            tracing::info!(entry = %key, "imported ServiceEntry missing or changed in the source; writing it again");
            self.written.remove(key);
            self.unconfirmed.remove(key);
        }
        !drifted.is_empty()
    }

    /// How many imported ServiceEntries are written now.
    pub fn written(&self) -> usize {
        self.written.len()
    }

    /// Writes what changed; returns how many entries failed to write.
    pub async fn sync(
        &mut self,
        federation: Option<&Federation>,
        started: Instant,
        now: Instant,
    ) -> usize {
        let peers = self.state.peers();
        let mut want = match federation {
            Some(f) => desired(f, &peers, &self.labels, now, self.staleness),
            None => BTreeMap::new(),
        };
        self.add_recovered(federation, &peers, &mut want, started, now);
        let mut failures = 0;
        let removed: Vec<ResourceKey> = self
            .written
            .keys()
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect();
        for key in removed {
            match self.writer.delete(&key).await {
                Ok(_) => {
                    tracing::info!(entry = %key, "removed imported ServiceEntry");
                    self.written.remove(&key);
                    self.unconfirmed.remove(&key);
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(entry = %key, error = %e, "removing imported ServiceEntry");
                }
            }
        }
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for (key, se) in want {
            let peer = peer_of(&se).unwrap_or_default().to_owned();
            *counts.entry(peer.clone()).or_default() += 1;
            if self.written.get(&key) == Some(&se) {
                continue;
            }
            match self.writer.apply(&Resource::ServiceEntry(se.clone())).await {
                Ok(()) => {
                    tracing::debug!(entry = %key, "wrote imported ServiceEntry");
                    self.unconfirmed.insert(key.clone(), now);
                    self.written.insert(key, se);
                }
                Err(e) => {
                    failures += 1;
                    self.metrics
                        .sync_errors
                        .get_or_create(&PeerLabel::new(&peer))
                        .inc();
                    tracing::warn!(entry = %key, error = %e, "writing imported ServiceEntry");
                }
            }
        }
        self.observe_delay(&peers);
        for (peer, n) in &counts {
            self.metrics
                .imported
                .get_or_create(&PeerLabel::new(peer))
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        for peer in peers.keys().filter(|p| !counts.contains_key(*p)) {
            self.metrics
                .imported
                .get_or_create(&PeerLabel::new(peer))
                .set(0);
        }
        self.state.set_imported(&counts);
        failures
    }

    /// Recovered entries of listed peers that have not sent a catalog yet.
    fn add_recovered(
        &mut self,
        federation: Option<&Federation>,
        peers: &BTreeMap<String, state::Peer>,
        want: &mut BTreeMap<ResourceKey, ServiceEntry>,
        started: Instant,
        now: Instant,
    ) {
        let expired = now.duration_since(started) > self.staleness;
        self.recovered.retain(|peer, _| {
            !expired
                && federation.is_some_and(|f| f.peers.contains_key(peer))
                && peers.get(peer).is_some_and(|p| p.catalog.is_none())
        });
        for (peer, entries) in &self.recovered {
            let down = peers.get(peer).is_some_and(|p| !p.healthy());
            for se in entries {
                let mut se = se.clone();
                if down {
                    for ep in &mut se.spec.endpoints {
                        ep.weight = Some(0);
                    }
                }
                want.insert(Resource::ServiceEntry(se.clone()).key(), se);
            }
        }
    }

    /// Export-to-import delay, once per new catalog version of each peer.
    fn observe_delay(&mut self, peers: &BTreeMap<String, state::Peer>) {
        for (name, peer) in peers {
            let Some(c) = &peer.catalog else { continue };
            let seen = (c.incarnation.clone(), c.version);
            if self.measured.get(name) == Some(&seen) || c.changed_at_unix_ms == 0 {
                continue;
            }
            self.measured.insert(name.clone(), seen);
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let delay_ms = now_ms.saturating_sub(u128::from(c.changed_at_unix_ms));
            #[allow(clippy::cast_precision_loss)]
            self.metrics
                .import_delay
                .get_or_create(&PeerLabel::new(name))
                .observe(delay_ms as f64 / 1000.0);
        }
    }
}

#[cfg(test)]
mod tests;
