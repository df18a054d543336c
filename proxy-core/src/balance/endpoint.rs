//! One upstream host as the balancer sees it: what the config says about it
//! ([`EndpointInfo`]) and its live state, shared by every entry with its address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use envoy_types::pb::envoy::config::core::v3::Locality as EnvoyLocality;
use serde::Serialize;

use super::outlier::HostState;

/// What the config says about one endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointInfo {
    pub address: SocketAddr,
    /// `Endpoint.hostname`, or the name a STRICT_DNS address was resolved from.
    pub hostname: String,
    pub locality: Locality,
    pub priority: u32,
    /// `LbEndpoint.load_balancing_weight` (default 1).
    pub weight: u32,
    /// The health the control plane reported (ejection is in the outlier state).
    pub health: Health,
    /// String, number and bool values of `LbEndpoint.metadata.filter_metadata`,
    /// keyed `<filter>.<key>`.
    pub metadata: BTreeMap<String, String>,
}

/// Envoy's `Locality`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

impl From<&EnvoyLocality> for Locality {
    fn from(l: &EnvoyLocality) -> Self {
        Locality {
            region: l.region.clone(),
            zone: l.zone.clone(),
            sub_zone: l.sub_zone.clone(),
        }
    }
}

/// `LbEndpoint.health_status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
    Draining,
    Timeout,
    Degraded,
}

impl Health {
    /// Whether the balancer may use the host: UNKNOWN, HEALTHY and DEGRADED
    /// (degraded hosts are not preferred less; documented in the module).
    pub fn is_healthy(self) -> bool {
        matches!(self, Health::Unknown | Health::Healthy | Health::Degraded)
    }
}

/// A host: its config and the state shared by every entry with its address.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) info: EndpointInfo,
    pub(crate) state: Arc<HostState>,
}

impl Endpoint {
    /// An ORIGINAL_DST host: the connection's own destination, with fresh state.
    pub(crate) fn original_dst(address: SocketAddr) -> Self {
        Endpoint {
            info: EndpointInfo {
                address,
                hostname: String::new(),
                locality: Locality::default(),
                priority: 0,
                weight: 1,
                health: Health::Unknown,
                metadata: BTreeMap::new(),
            },
            state: Arc::default(),
        }
    }

    pub(crate) fn weight(&self) -> u64 {
        u64::from(self.info.weight)
    }

    pub(crate) fn active(&self) -> u64 {
        self.state.active.load(Relaxed)
    }
}
