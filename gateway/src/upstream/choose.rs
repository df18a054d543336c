//! TEMPORARY endpoint chooser with the API of `isthmus_proxy_core::balance`
//! (`Balancer::new/update/pick`, `Pick::report`, `try_connection`),
//! until that module lands; then this file goes and `mod.rs` imports the
//! real one. Round robin over the healthy endpoints of the best priority
//! that has any; an endpoint whose connect fails is ejected at once, for
//! 5 s times the number of ejections in a row (capped at 5 min).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BASE_EJECTION: Duration = Duration::from_secs(5);
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Why a cluster's endpoints are unusable.
#[derive(Debug, thiserror::Error)]
#[error("cluster {cluster}: {reason}")]
pub struct BalanceError {
    cluster: String,
    reason: String,
}

/// What a pick may depend on.
#[derive(Debug, Default)]
#[allow(dead_code)]
pub struct PickContext<'a> {
    /// Consistent-hash key (unused here).
    pub hash: Option<u64>,
    /// Endpoints already tried for this connection.
    pub exclude: &'a [SocketAddr],
    /// Unused here.
    pub original_dst: Option<SocketAddr>,
}

/// How using a pick went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)]
pub enum Outcome {
    Success,
    HttpStatus(u16),
    ConnectFailure,
    Timeout,
    Reset,
    Cancelled,
    LocalOriginSuccess,
}

#[derive(Debug)]
struct Endpoint {
    address: SocketAddr,
    priority: u32,
    /// Ejections in a row; reset by a success.
    ejections: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
}

impl Endpoint {
    fn available(&self, now: Instant) -> bool {
        self.ejected_until
            .lock()
            .map(|u| u.is_none_or(|u| u <= now))
            .unwrap_or(true)
    }
}

/// One cluster's endpoints and their state.
#[derive(Debug)]
pub struct Balancer {
    connect_timeout: Mutex<Duration>,
    endpoints: RwLock<Arc<Vec<Arc<Endpoint>>>>,
    next: AtomicUsize,
}

/// A chosen endpoint; report how it went.
#[derive(Debug)]
pub struct Pick {
    endpoint: Arc<Endpoint>,
}

/// Held for the life of a connection (circuit breaking; unlimited here).
#[derive(Debug)]
pub struct Permit;

impl Balancer {
    pub fn new(cluster: &Cluster, cla: Option<&ClusterLoadAssignment>) -> Result<Self, BalanceError> {
        let b = Self {
            connect_timeout: Mutex::new(DEFAULT_CONNECT_TIMEOUT),
            endpoints: RwLock::new(Arc::new(Vec::new())),
            next: AtomicUsize::new(0),
        };
        b.update(cluster, cla)?;
        Ok(b)
    }

    /// New endpoints; those that stay keep their ejection state.
    pub fn update(&self, cluster: &Cluster, cla: Option<&ClusterLoadAssignment>) -> Result<(), BalanceError> {
        let timeout = cluster
            .connect_timeout
            .and_then(crate::route::to_std)
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        if let Ok(mut t) = self.connect_timeout.lock() {
            *t = timeout;
        }
        let old = self.endpoints.read().map(|e| e.clone()).unwrap_or_default();
        let mut new = Vec::new();
        for locality in cla.iter().flat_map(|c| &c.endpoints) {
            for lb in &locality.lb_endpoints {
                let healthy = matches!(
                    HealthStatus::try_from(lb.health_status),
                    Ok(HealthStatus::Unknown | HealthStatus::Healthy)
                );
                let Some(HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
                    continue;
                };
                let Some(address::Address::SocketAddress(sa)) =
                    ep.address.as_ref().and_then(|a| a.address.as_ref())
                else {
                    continue;
                };
                let ip: IpAddr = sa.address.parse().map_err(|_| BalanceError {
                    cluster: cluster.name.clone(),
                    reason: format!("endpoint address {:?} is not an IP", sa.address),
                })?;
                let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
                    continue;
                };
                let address = SocketAddr::new(ip, u16::try_from(port).unwrap_or(0));
                if !healthy {
                    continue;
                }
                let endpoint = old
                    .iter()
                    .find(|e| e.address == address && e.priority == locality.priority)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Endpoint {
                            address,
                            priority: locality.priority,
                            ejections: AtomicU32::new(0),
                            ejected_until: Mutex::new(None),
                        })
                    });
                new.push(endpoint);
            }
        }
        if let Ok(mut e) = self.endpoints.write() {
            *e = Arc::new(new);
        }
        Ok(())
    }

    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<Pick> {
        let endpoints = self.endpoints.read().ok()?.clone();
        let now = Instant::now();
        let usable: Vec<&Arc<Endpoint>> = endpoints
            .iter()
            .filter(|e| !ctx.exclude.contains(&e.address) && e.available(now))
            .collect();
        let best = usable.iter().map(|e| e.priority).min()?;
        let candidates: Vec<&&Arc<Endpoint>> = usable.iter().filter(|e| e.priority == best).collect();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
        Some(Pick {
            endpoint: Arc::clone(candidates[i]),
        })
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout.lock().map(|t| *t).unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    pub fn try_connection(&self) -> Option<Permit> {
        Some(Permit)
    }
}

impl Pick {
    pub fn address(&self) -> SocketAddr {
        self.endpoint.address
    }

    pub fn report(self, outcome: Outcome) {
        let e = &self.endpoint;
        match outcome {
            Outcome::ConnectFailure | Outcome::Timeout => {
                let n = e.ejections.fetch_add(1, Ordering::Relaxed) + 1;
                let time = (BASE_EJECTION * n).min(MAX_EJECTION);
                if let Ok(mut until) = e.ejected_until.lock() {
                    *until = Some(Instant::now() + time);
                }
            }
            Outcome::Success | Outcome::LocalOriginSuccess => {
                e.ejections.store(0, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}
