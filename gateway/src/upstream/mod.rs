//! Stage 3: from a cluster to a connected local endpoint. The balancer
//! picks (priorities, health, outlier ejection); a connect failure or
//! timeout is reported to it and the next endpoint is tried, before any
//! byte of the client's goes anywhere.

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, OutlierDetection};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::google::protobuf::{BoolValue, Duration as PbDuration, UInt32Value};
pub use isthmus_proxy_core::balance::{BalanceError, Permit};
use isthmus_proxy_core::balance::{Balancer, ClusterStatus, Outcome, PickContext};
use tokio::net::TcpStream;

/// Why no upstream connection was made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No endpoint is healthy and not ejected (or all were tried).
    #[error("no healthy endpoint")]
    NoEndpoint,
    /// The cluster's circuit breaker is open.
    #[error("too many connections to the cluster")]
    Overflow,
    /// The last endpoint tried refused or failed.
    #[error("connecting to {address} failed after {attempts} attempts")]
    Failed {
        address: SocketAddr,
        attempts: usize,
        #[source]
        source: io::Error,
    },
    /// The last endpoint tried did not answer in time.
    #[error("connecting to {address} timed out after {attempts} attempts")]
    Timeout {
        address: SocketAddr,
        attempts: usize,
    },
}

impl ConnectError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectError::NoEndpoint => "no_healthy_endpoint",
            ConnectError::Overflow => "upstream_overflow",
            ConnectError::Failed { .. } => "connect_failed",
            ConnectError::Timeout { .. } => "connect_timeout",
        }
    }
}

/// One cluster: its endpoints with their health state, kept across config
/// updates, and the connections open to it now.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    balancer: Balancer,
    active: AtomicUsize,
}

/// Counts one connection against [`Upstream::active`]; released on drop.
#[derive(Debug)]
pub struct ActiveGuard<'a> {
    upstream: &'a Upstream,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.upstream.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Outlier detection for a cluster that brings none (no DestinationRule
/// `outlierDetection`): the gateway only sees connect outcomes, so it
/// ejects on two consecutive local-origin failures (refused, timed out),
/// for 10 s growing with repeats, at most half of the endpoints (always
/// at least one).
fn gateway_outlier_detection() -> OutlierDetection {
    let n = |value| Some(UInt32Value { value });
    OutlierDetection {
        split_external_local_origin_errors: true,
        consecutive_local_origin_failure: n(2),
        enforcing_consecutive_local_origin_failure: n(100),
        base_ejection_time: Some(PbDuration {
            seconds: 10,
            nanos: 0,
        }),
        max_ejection_percent: n(50),
        always_eject_one_host: Some(BoolValue { value: true }),
        ..OutlierDetection::default()
    }
}

/// `cluster` with the gateway's default outlier detection if it has none.
fn with_defaults(cluster: &Cluster) -> Cow<'_, Cluster> {
    if cluster.outlier_detection.is_some() {
        return Cow::Borrowed(cluster);
    }
    let mut c = cluster.clone();
    c.outlier_detection = Some(gateway_outlier_detection());
    Cow::Owned(c)
}

impl Upstream {
    /// State for `cluster` with its endpoints.
    ///
    /// # Errors
    /// If the endpoints are unusable (e.g. an address is not an IP).
    pub fn new(
        cluster: &Cluster,
        cla: Option<&ClusterLoadAssignment>,
    ) -> Result<Self, BalanceError> {
        Ok(Self {
            name: cluster.name.clone(),
            balancer: Balancer::new(&with_defaults(cluster), cla)?,
            active: AtomicUsize::new(0),
        })
    }

    /// The same upstream with a new config: endpoints that stay keep their
    /// state, the connection count carries over.
    ///
    /// # Errors
    /// As for [`new`](Self::new); the old state is then kept.
    pub fn update(
        &self,
        cluster: &Cluster,
        cla: Option<&ClusterLoadAssignment>,
    ) -> Result<(), BalanceError> {
        self.balancer.update(&with_defaults(cluster), cla)
    }

    /// Endpoints, health, ejections and circuit breakers, for `/routes`.
    pub fn status(&self) -> ClusterStatus {
        self.balancer.status()
    }

    /// The cluster name (the metrics label `service`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connections open to this cluster now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Counts a new connection if fewer than `limit` are open.
    pub fn try_enter(&self, limit: usize) -> Option<ActiveGuard<'_>> {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| ActiveGuard { upstream: self })
    }

    /// Connects to an endpoint, trying up to `attempts` different ones.
    /// Returns the stream (no-delay set), its address, and the circuit
    /// breaker permit to hold for the connection's life.
    ///
    /// # Errors
    /// See [`ConnectError`]; the last failure when every attempt failed.
    pub async fn connect(
        &self,
        attempts: usize,
    ) -> Result<(TcpStream, SocketAddr, Permit), ConnectError> {
        let permit = self
            .balancer
            .try_connection()
            .ok_or(ConnectError::Overflow)?;
        let mut tried = Vec::with_capacity(attempts);
        let mut last = ConnectError::NoEndpoint;
        while tried.len() < attempts.max(1) {
            let ctx = PickContext {
                exclude: &tried,
                ..PickContext::default()
            };
            let Some(pick) = self.balancer.pick(&ctx) else {
                break;
            };
            let address = pick.address();
            if tried.contains(&address) {
                // Every other endpoint was tried (or is unusable).
                pick.report(Outcome::Cancelled);
                break;
            }
            tried.push(address);
            let timeout = self.balancer.connect_timeout();
            match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
                Ok(Ok(stream)) => {
                    pick.report(Outcome::LocalOriginSuccess);
                    let _ = stream.set_nodelay(true);
                    return Ok((stream, address, permit));
                }
                Ok(Err(source)) => {
                    tracing::debug!(cluster = %self.name, %address, error = %source, "connect failed; trying another endpoint");
                    pick.report(Outcome::ConnectFailure);
                    last = ConnectError::Failed {
                        address,
                        attempts: tried.len(),
                        source,
                    };
                }
                Err(_) => {
                    tracing::debug!(cluster = %self.name, %address, "connect timed out; trying another endpoint");
                    pick.report(Outcome::Timeout);
                    last = ConnectError::Timeout {
                        address,
                        attempts: tried.len(),
                    };
                }
            }
        }
        Err(last)
    }
}
