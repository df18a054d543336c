//! Peers: for each peer of the MeshFederation, a catalog stream
//! ([`stream`]) and gateway probes ([`probe`]), restarted when the peer's
//! entry changes and stopped when it is unlinked. A peer that is down never
//! blocks anything: its tasks retry in the background.

mod probe;
mod stream;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use isthmus_api::federation::Peer as PeerSpec;
use isthmus_identity::TrustBundle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use probe::PROBE_SNI;

use crate::metrics::Metrics;
use crate::state::State;
use crate::tls::Tls;

/// Every timing of the controller; the defaults are the issue's, tests shorten them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// How often each peer gateway is probed (default 1 s).
    pub probe_interval: Duration,
    /// How long one probe may take (default 1 s).
    pub probe_timeout: Duration,
    /// Failed probes in a row before a gateway is unhealthy (default 3).
    pub probe_failures: u32,
    /// Heartbeat interval on catalog streams this controller serves (default 5 s).
    pub heartbeat: Duration,
    /// Silence after which a peer's stream counts as dead (default 15 s).
    pub stream_timeout: Duration,
    /// TCP+TLS connect timeout towards peers (default 3 s).
    pub connect_timeout: Duration,
    /// Reconnect backoff bounds (defaults 200 ms and 10 s), with full jitter.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long a dead peer's last catalog is kept (as unhealthy endpoints) before its
    /// ServiceEntries are removed (default 10 min).
    pub staleness: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(1),
            probe_failures: 3,
            heartbeat: Duration::from_secs(5),
            stream_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(3),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            staleness: Duration::from_secs(600),
        }
    }
}

/// What every peer task needs.
#[derive(Clone, Debug)]
pub struct PeerContext {
    /// This cluster's name (sent in `WatchRequest`).
    pub cluster: String,
    pub tls: Arc<Tls>,
    pub state: State,
    pub metrics: Metrics,
    pub timings: Timings,
    /// Bumped when a peer announced a root this controller did not know.
    pub roots_changed: watch::Sender<u64>,
}

/// The running peer tasks, by peer name.
#[derive(Debug)]
pub struct Peers {
    ctx: PeerContext,
    running: BTreeMap<String, (PeerSpec, CancellationToken)>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Peers {
    pub fn new(ctx: PeerContext, tracker: TaskTracker, shutdown: CancellationToken) -> Self {
        Self {
            ctx,
            running: BTreeMap::new(),
            tracker,
            shutdown,
        }
    }

    /// Starts, restarts and stops peer tasks so that exactly `peers` run.
    pub fn reconcile(&mut self, peers: &BTreeMap<String, PeerSpec>) {
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|name| !peers.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            if let Some((spec, token)) = self.running.remove(&name) {
                token.cancel();
                self.ctx.tls.forget(&spec.trust_domain);
                self.ctx.state.remove(&name);
                tracing::info!(peer = %name, "peer unlinked");
            }
        }
        for (name, spec) in peers {
            if self.running.get(name).is_some_and(|(s, _)| s == spec) {
                continue;
            }
            if let Some((old, token)) = self.running.remove(name) {
                token.cancel();
                if old.trust_domain != spec.trust_domain {
                    self.ctx.tls.forget(&old.trust_domain);
                }
            }
            let configured = spec.trust_bundle.as_deref().and_then(|pem| {
                TrustBundle::from_pem(pem)
                    .inspect_err(|e| tracing::warn!(peer = %name, error = %e, "spec.peers[].trustBundle is unusable"))
                    .ok()
            });
            self.ctx
                .tls
                .set_configured_roots(&spec.trust_domain, configured);
            self.ctx.state.ensure(name, &spec.gateway_addresses);
            let token = self.shutdown.child_token();
            self.tracker
                .spawn(stream::run(spec.clone(), self.ctx.clone(), token.clone()));
            self.tracker
                .spawn(probe::run(spec.clone(), self.ctx.clone(), token.clone()));
            tracing::info!(peer = %name, endpoint = %spec.federation_endpoint, "peer linked");
            self.running.insert(name.clone(), (spec.clone(), token));
        }
    }
}
