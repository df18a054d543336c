//! The xDS client: one ADS stream to the control plane, kept up with
//! backoff, feeding a validated [`ProxyConfig`] to the data plane.
//!
//! Data path: [`Connector`] (a gRPC channel) → `client` (the stream, the
//! reconnect loop, the warming timer) → `delta` or `sotw` (the wire format
//! of incremental or state-of-the-world ADS) → `state` (subscriptions,
//! accepting, warming; no I/O) → a `watch` channel of `Arc<ProxyConfig>`,
//! swapped atomically. The published value is never cleared: while the control
//! plane is away the proxy runs on the last good config (static stability).

mod backoff;
mod client;
mod connector;
mod delta;
mod node;
mod sotw;
mod state;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use backoff::{Backoff, BackoffConfig};
pub use connector::{ConnectError, Connector, PlaintextConnector};
pub use node::{NodeInfo, NodeRole};

use crate::config::ProxyConfig;

/// The ADS flavour a client speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdsProtocol {
    /// `DeltaAggregatedResources`: only what changed travels, in both
    /// directions (Istio's default). A control plane that answers
    /// `UNIMPLEMENTED` gets state of the world instead, for good.
    #[default]
    Incremental,
    /// `StreamAggregatedResources`: every response of a wildcard type is
    /// the complete set.
    StateOfTheWorld,
}

impl XdsProtocol {
    /// `"delta"` or `"sotw"`, as `/debug/syncz` of the control plane says.
    pub fn name(self) -> &'static str {
        match self {
            Self::Incremental => "delta",
            Self::StateOfTheWorld => "sotw",
        }
    }
}

impl std::str::FromStr for XdsProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "delta" => Ok(Self::Incremental),
            "sotw" => Ok(Self::StateOfTheWorld),
            other => Err(format!(
                "unknown xDS protocol {other:?} (expected delta or sotw)"
            )),
        }
    }
}

/// How the client behaves.
#[derive(Clone, Debug)]
pub struct XdsOptions {
    /// Incremental (the default) or state-of-the-world ADS.
    pub protocol: XdsProtocol,
    /// Sent on the first request of every stream: who this proxy is (see
    /// [`NodeInfo::to_node`]).
    pub node: Node,
    /// SDS names to subscribe to even if no transport socket names them.
    pub extra_secrets: BTreeSet<String>,
    /// SDS names the proxy provides itself (the workload certificate,
    /// `default`): never subscribed, never waited for.
    pub local_secrets: BTreeSet<String>,
    /// Reconnect delays.
    pub backoff: BackoffConfig,
    /// Bound on one connection attempt (whatever the connector does).
    pub connect_timeout: Duration,
    /// How long the first sync waits, once CDS and LDS are in, for routes,
    /// endpoints and secrets the server does not send (Envoy's
    /// `initial_fetch_timeout`); then the config is published as it is.
    /// `None` waits forever.
    pub initial_fetch_timeout: Option<Duration>,
    /// Largest response accepted, in bytes.
    pub max_message_size: usize,
}

impl XdsOptions {
    /// Defaults for `node`: incremental xDS, backoff 100 ms → 15 s,
    /// connect timeout 10 s, initial fetch timeout 15 s, 64 MiB messages,
    /// no extra or local secrets.
    pub fn new(node: Node) -> Self {
        Self {
            protocol: XdsProtocol::default(),
            node,
            extra_secrets: BTreeSet::new(),
            local_secrets: BTreeSet::new(),
            backoff: BackoffConfig::default(),
            connect_timeout: Duration::from_secs(10),
            initial_fetch_timeout: Some(Duration::from_secs(15)),
            max_message_size: 64 << 20,
        }
    }
}

/// Why a connection to the control plane failed or ended.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The control plane address is not a valid URI.
    #[error("invalid control plane address {uri:?}")]
    Endpoint {
        uri: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The connector failed.
    #[error("connecting to the control plane")]
    Connect(#[source] ConnectError),
    /// The connector did not finish in time.
    #[error("connecting to the control plane: no connection within {0:?}")]
    ConnectTimeout(Duration),
    /// The ADS call was refused.
    #[error("opening the ADS stream")]
    Open(#[source] tonic::Status),
    /// The stream broke.
    #[error("ADS stream failed")]
    Stream(#[source] tonic::Status),
    /// The control plane ended the stream without an error.
    #[error("the control plane closed the ADS stream")]
    Closed,
    /// The client stopped (cancelled) before the event waited for.
    #[error("the xDS client stopped")]
    Stopped,
}

/// An error and its sources on one line, for logs.
pub(crate) fn error_chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Counters of one client, readable at any time (for metrics).
#[derive(Debug, Default)]
pub struct XdsCounters {
    updates_accepted: AtomicU64,
    nacks_sent: AtomicU64,
    reconnects: AtomicU64,
    connected: AtomicBool,
    state_of_the_world: AtomicBool,
}

/// A snapshot of [`XdsCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdsStats {
    /// Responses accepted (and ACKed).
    pub updates_accepted: u64,
    /// Responses rejected (NACKed).
    pub nacks_sent: u64,
    /// Connection attempts after the first.
    pub reconnects: u64,
    /// Whether an ADS stream is open now.
    pub connected: bool,
    /// The protocol of the open (or the last) stream.
    pub protocol: XdsProtocol,
}

impl XdsCounters {
    /// The current values.
    pub fn snapshot(&self) -> XdsStats {
        XdsStats {
            updates_accepted: self.updates_accepted.load(Ordering::Relaxed),
            nacks_sent: self.nacks_sent.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
            protocol: if self.state_of_the_world.load(Ordering::Relaxed) {
                XdsProtocol::StateOfTheWorld
            } else {
                XdsProtocol::Incremental
            },
        }
    }

    fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Scraped as `xds_connected`, `xds_incremental` (gauges, 0 or 1),
/// `xds_updates_accepted_total`, `xds_nacks_total` and
/// `xds_reconnects_total`, under the registry's prefix.
impl Collector for XdsCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = self.snapshot();
        for (name, help, value) in [
            (
                "xds_connected",
                "Whether the ADS stream to the control plane is open",
                stats.connected,
            ),
            (
                "xds_incremental",
                "Whether the open (or last) ADS stream is incremental (delta) xDS",
                stats.protocol == XdsProtocol::Incremental,
            ),
        ] {
            let gauge = ConstGauge::new(i64::from(value));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        for (name, help, value) in [
            (
                "xds_updates_accepted",
                "xDS responses accepted (ACKed)",
                stats.updates_accepted,
            ),
            (
                "xds_nacks",
                "xDS responses rejected (NACKed)",
                stats.nacks_sent,
            ),
            (
                "xds_reconnects",
                "Connection attempts to the control plane after the first",
                stats.reconnects,
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// A running xDS client: the published config, readiness and counters.
/// Stops when the `shutdown` token given to [`spawn`](Self::spawn) is
/// cancelled (dropping the handle does not stop it).
pub struct XdsClient {
    config: watch::Receiver<Arc<ProxyConfig>>,
    ready: watch::Receiver<bool>,
    counters: Arc<XdsCounters>,
    task: JoinHandle<()>,
    node_id: String,
}

impl XdsClient {
    /// Starts the client on the current runtime: connects through
    /// `connector`, syncs, and keeps syncing until `shutdown`.
    pub fn spawn(
        options: XdsOptions,
        connector: impl Connector,
        shutdown: CancellationToken,
    ) -> Self {
        let (config_tx, config) = watch::channel(Arc::new(ProxyConfig::default()));
        let (ready_tx, ready) = watch::channel(false);
        let counters = Arc::new(XdsCounters::default());
        let node_id = options.node.id.clone();
        let span = tracing::info_span!("xds", node = %node_id, control_plane = %connector.target());
        let runner = client::Runner::new(
            options,
            Box::new(connector),
            client::Outputs {
                config: config_tx,
                ready: ready_tx,
                counters: counters.clone(),
            },
            shutdown,
        );
        let task = tokio::spawn(runner.run().instrument(span));
        Self {
            config,
            ready,
            counters,
            task,
            node_id,
        }
    }

    /// The published config: an empty config until the first sync, then
    /// every consistent update. Never cleared, not even while disconnected.
    pub fn config(&self) -> watch::Receiver<Arc<ProxyConfig>> {
        self.config.clone()
    }

    /// The config published now.
    pub fn current(&self) -> Arc<ProxyConfig> {
        self.config.borrow().clone()
    }

    /// Whether the first complete config was published, as a watch. It
    /// turns true only after that config is in [`config`](Self::config):
    /// read this first, then the config, and the config is complete.
    pub fn ready_watch(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }

    /// Whether the first complete config was published.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits for the first complete config; fails if the client stops first.
    pub async fn ready(&self) -> Result<(), XdsError> {
        let mut ready = self.ready.clone();
        ready
            .wait_for(|r| *r)
            .await
            .map(drop)
            .map_err(|_| XdsError::Stopped)
    }

    /// The client's counters (shared; read them any time).
    pub fn counters(&self) -> Arc<XdsCounters> {
        self.counters.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> XdsStats {
        self.counters.snapshot()
    }

    /// Waits until the client has stopped (after its `shutdown` token was
    /// cancelled).
    pub async fn join(self) {
        if let Err(e) = self.task.await {
            tracing::error!(node = %self.node_id, error = %e, "xDS client task failed");
        }
    }
}

impl fmt::Debug for XdsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdsClient")
            .field("node", &self.node_id)
            .field("ready", &self.is_ready())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
