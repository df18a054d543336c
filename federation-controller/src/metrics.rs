//! Prometheus metrics of the federation controller, registered once under
//! the `isthmus_federation` prefix and passed down as cheap handles.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set naming a peer cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

impl PeerLabel {
    pub fn new(peer: &str) -> Self {
        Self {
            peer: peer.to_owned(),
        }
    }
}

fn histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric of the controller.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// 1 while the peer's stream is up and a gateway answers, else 0.
    pub peer_up: Family<PeerLabel, Gauge>,
    /// Gateway probe round trips (TCP connect + TLS answer), seconds.
    pub probe_latency: Family<PeerLabel, Histogram, fn() -> Histogram>,
    /// Failed gateway probes.
    pub probe_failures: Family<PeerLabel, Counter>,
    /// Services imported from each peer.
    pub imported: Family<PeerLabel, Gauge>,
    /// Services this cluster exports.
    pub exported: Gauge,
    /// Peers streaming this cluster's catalog now.
    pub watchers: Gauge,
    /// Refused peer streams (unlisted cluster, wrong identity).
    pub refused: Counter,
    /// Failed or broken streams to a peer, and failed ServiceEntry writes.
    pub sync_errors: Family<PeerLabel, Counter>,
    /// From a catalog change in the peer to its ServiceEntries written here, seconds.
    pub import_delay: Family<PeerLabel, Histogram, fn() -> Histogram>,
    /// Failed reconciles of the MeshFederation (Kubernetes mode: finalizer, cleanup, status).
    pub reconcile_errors: Counter,
    /// MeshFederation status writes (Kubernetes mode).
    pub status_writes: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them under `isthmus_federation`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            peer_up: Family::default(),
            probe_latency: Family::new_with_constructor(histogram),
            probe_failures: Family::default(),
            imported: Family::default(),
            exported: Gauge::default(),
            watchers: Gauge::default(),
            refused: Counter::default(),
            sync_errors: Family::default(),
            import_delay: Family::new_with_constructor(histogram),
            reconcile_errors: Counter::default(),
            status_writes: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("isthmus_federation");
        r.register(
            "peer_up",
            "1 while the peer is reachable",
            m.peer_up.clone(),
        );
        r.register(
            "probe_latency_seconds",
            "Gateway probe latency",
            m.probe_latency.clone(),
        );
        r.register(
            "probe_failures",
            "Failed gateway probes",
            m.probe_failures.clone(),
        );
        r.register(
            "imported_services",
            "Services imported from the peer",
            m.imported.clone(),
        );
        r.register(
            "exported_services",
            "Services this cluster exports",
            m.exported.clone(),
        );
        r.register(
            "watchers",
            "Peers streaming this cluster's catalog",
            m.watchers.clone(),
        );
        r.register("refused_peers", "Refused peer streams", m.refused.clone());
        r.register(
            "sync_errors",
            "Failed peer streams and ServiceEntry writes",
            m.sync_errors.clone(),
        );
        r.register(
            "import_delay_seconds",
            "Delay from a peer's export change to its ServiceEntries written here",
            m.import_delay.clone(),
        );
        r.register(
            "reconcile_errors",
            "Failed MeshFederation reconciles (finalizer, cleanup, status)",
            m.reconcile_errors.clone(),
        );
        r.register(
            "status_writes",
            "MeshFederation status writes",
            m.status_writes.clone(),
        );
        m
    }
}
