//! `Cluster` → the settings a balancer runs on. Every field that changes how
//! endpoints are chosen, limited or ejected is implemented or rejected by
//! name; fields for other layers (TLS, DNS refresh, protocol options other
//! than requests per connection) are left to them.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::LocalityConfigSpecifier;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy, RingHashLbConfig,
    ring_hash_lb_config::HashFunction,
};
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use prost::{Message, Name};

use super::assignment::{self, Assignment};
use super::outlier::{self, OutlierConfig};
use super::ring::{DEFAULT_MAX_RING, DEFAULT_MIN_RING, RingSize};

/// A cluster or its endpoints that cannot be balanced as configured:
/// `Cluster "<name>": <field path>: <reason>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Cluster {cluster:?}: {field}: {reason}")]
pub struct BalanceError {
    pub cluster: String,
    pub field: String,
    pub reason: String,
}

impl BalanceError {
    pub(crate) fn new(cluster: &str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        BalanceError {
            cluster: cluster.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Envoy's default `connect_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's default `healthy_panic_threshold`, percent.
const DEFAULT_PANIC_THRESHOLD: f64 = 50.0;
/// The `typed_extension_protocol_options` key of HTTP upstream options.
const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Discovery {
    Static,
    StrictDns,
    Eds,
    OriginalDst,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Policy {
    RoundRobin,
    Random,
    LeastRequest {
        choices: u32,
    },
    /// Consistent hashing; requests without a hash pick at random.
    RingHash(RingSize),
}

/// Circuit-breaker limits of the DEFAULT routing priority (Envoy's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) connections: u32,
    pub(crate) pending: u32,
    pub(crate) requests: u32,
    pub(crate) retries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 1024,
            pending: 1024,
            requests: 1024,
            retries: 3,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) discovery: Discovery,
    /// Unused for ORIGINAL_DST (the destination is the only choice).
    pub(crate) policy: Policy,
    /// As Envoy names it, for status.
    pub(crate) policy_name: &'static str,
    pub(crate) connect_timeout: Duration,
    pub(crate) locality_weighted: bool,
    /// Percent of healthy hosts under which a priority may be in panic.
    pub(crate) panic_threshold: f64,
    pub(crate) outlier: Option<OutlierConfig>,
    pub(crate) limits: Limits,
    pub(crate) max_requests_per_connection: Option<u32>,
    pub(crate) assignment: Assignment,
}

pub(crate) fn parse(
    c: &Cluster,
    cla: Option<&ClusterLoadAssignment>,
) -> Result<Config, BalanceError> {
    let err = |field: &str, reason: String| BalanceError::new(&c.name, field, reason);
    let discovery = discovery(c)?;
    if c.load_balancing_policy.is_some() {
        return Err(err(
            "load_balancing_policy",
            "typed load balancing policies are not supported; use lb_policy".into(),
        ));
    }
    if c.lb_subset_config.is_some() {
        return Err(err(
            "lb_subset_config",
            "subset load balancing is not supported".into(),
        ));
    }
    if !c.health_checks.is_empty() {
        return Err(err(
            "health_checks",
            "active health checking is not supported".into(),
        ));
    }
    let (policy, policy_name) = policy(c, discovery)?;
    let (locality_weighted, panic_threshold) = common_lb(c)?;
    let outlier = match &c.outlier_detection {
        Some(od) => Some(outlier::parse(&c.name, od)?),
        None => None,
    };
    if discovery == Discovery::OriginalDst && outlier.is_some() {
        return Err(err(
            "outlier_detection",
            "outlier detection on an ORIGINAL_DST cluster is not supported".into(),
        ));
    }
    let connect_timeout = match &c.connect_timeout {
        None => DEFAULT_CONNECT_TIMEOUT,
        Some(d) => duration(d)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| err("connect_timeout", "must be a positive duration".into()))?,
    };
    Ok(Config {
        discovery,
        policy,
        policy_name,
        connect_timeout,
        locality_weighted,
        panic_threshold,
        outlier,
        limits: limits(c)?,
        max_requests_per_connection: max_requests_per_connection(c)?,
        assignment: endpoints(c, discovery, cla)?,
    })
}

fn discovery(c: &Cluster) -> Result<Discovery, BalanceError> {
    let err = |field: &str, reason: String| BalanceError::new(&c.name, field, reason);
    let t = match &c.cluster_discovery_type {
        None => DiscoveryType::Static,
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t)
            .map_err(|_| err("type", format!("unknown discovery type {t}")))?,
        Some(ClusterDiscoveryType::ClusterType(custom)) => {
            return Err(err(
                "cluster_type",
                format!("custom cluster type {:?} is not supported", custom.name),
            ));
        }
    };
    Ok(match t {
        DiscoveryType::Static => Discovery::Static,
        DiscoveryType::StrictDns => Discovery::StrictDns,
        DiscoveryType::Eds => Discovery::Eds,
        DiscoveryType::OriginalDst => Discovery::OriginalDst,
        DiscoveryType::LogicalDns => {
            return Err(err("type", "LOGICAL_DNS is not supported".into()));
        }
    })
}

fn policy(c: &Cluster, discovery: Discovery) -> Result<(Policy, &'static str), BalanceError> {
    let err = |field: &str, reason: String| BalanceError::new(&c.name, field, reason);
    let lb = LbPolicy::try_from(c.lb_policy)
        .map_err(|_| err("lb_policy", format!("unknown policy {}", c.lb_policy)))?;
    let name = lb.as_str_name();
    let bad_config = |what: &str| err("lb_config", format!("{what} does not apply to {name}"));
    match (discovery, lb) {
        (Discovery::OriginalDst, LbPolicy::ClusterProvided) => match &c.lb_config {
            None => Ok((Policy::RoundRobin, name)),
            Some(LbConfig::OriginalDstLbConfig(o)) if *o == Default::default() => {
                Ok((Policy::RoundRobin, name))
            }
            Some(LbConfig::OriginalDstLbConfig(_)) => Err(err(
                "original_dst_lb_config",
                "HTTP header, metadata and port overrides are not supported".into(),
            )),
            Some(_) => Err(bad_config("this lb_config")),
        },
        (Discovery::OriginalDst, _) => Err(err(
            "lb_policy",
            format!("an ORIGINAL_DST cluster needs CLUSTER_PROVIDED, not {name}"),
        )),
        (_, LbPolicy::ClusterProvided) => Err(err(
            "lb_policy",
            "CLUSTER_PROVIDED is only for ORIGINAL_DST clusters".into(),
        )),
        (_, LbPolicy::RoundRobin) => match &c.lb_config {
            None => Ok((Policy::RoundRobin, name)),
            Some(LbConfig::RoundRobinLbConfig(rr)) if rr.slow_start_config.is_none() => {
                Ok((Policy::RoundRobin, name))
            }
            Some(LbConfig::RoundRobinLbConfig(_)) => Err(err(
                "round_robin_lb_config.slow_start_config",
                "slow start is not supported".into(),
            )),
            Some(_) => Err(bad_config("this lb_config")),
        },
        (_, LbPolicy::Random) => match &c.lb_config {
            None => Ok((Policy::Random, name)),
            Some(_) => Err(bad_config("lb_config")),
        },
        (_, LbPolicy::LeastRequest) => {
            let choices = match &c.lb_config {
                None => 2,
                Some(LbConfig::LeastRequestLbConfig(lr)) => {
                    let field = "least_request_lb_config";
                    if lr.slow_start_config.is_some() {
                        return Err(err(
                            &format!("{field}.slow_start_config"),
                            "slow start is not supported".into(),
                        ));
                    }
                    if lr
                        .active_request_bias
                        .as_ref()
                        .is_some_and(|b| b.default_value != 1.0)
                    {
                        return Err(err(
                            &format!("{field}.active_request_bias"),
                            "only the default bias 1.0 is supported".into(),
                        ));
                    }
                    match lr.choice_count.map(|v| v.value) {
                        None => 2,
                        Some(n) if n >= 2 => n,
                        Some(n) => {
                            return Err(err(
                                &format!("{field}.choice_count"),
                                format!("must be at least 2, got {n}"),
                            ));
                        }
                    }
                }
                Some(_) => return Err(bad_config("this lb_config")),
            };
            Ok((Policy::LeastRequest { choices }, name))
        }
        (_, LbPolicy::RingHash) => {
            let size = match &c.lb_config {
                None => RingSize {
                    min: DEFAULT_MIN_RING,
                    max: DEFAULT_MAX_RING,
                },
                Some(LbConfig::RingHashLbConfig(r)) => ring_size(c, r)?,
                Some(_) => return Err(bad_config("this lb_config")),
            };
            Ok((Policy::RingHash(size), name))
        }
        (_, LbPolicy::Maglev) => Err(err(
            "lb_policy",
            "MAGLEV is not supported: use RING_HASH (DestinationRule consistentHash.ringHash)"
                .into(),
        )),
        (_, LbPolicy::LoadBalancingPolicyConfig) => Err(err(
            "lb_policy",
            "LOAD_BALANCING_POLICY_CONFIG is not supported".into(),
        )),
    }
}

/// `ring_hash_lb_config`: ring sizes; xxHash only (Envoy's default).
fn ring_size(c: &Cluster, r: &RingHashLbConfig) -> Result<RingSize, BalanceError> {
    let err = |field: &str, reason: String| {
        BalanceError::new(&c.name, format!("ring_hash_lb_config.{field}"), reason)
    };
    if r.hash_function != HashFunction::XxHash as i32 {
        return Err(err("hash_function", "only XX_HASH is supported".into()));
    }
    let min = r.minimum_ring_size.map_or(DEFAULT_MIN_RING, |v| v.value);
    let max = r.maximum_ring_size.map_or(DEFAULT_MAX_RING, |v| v.value);
    if min == 0 || min > DEFAULT_MAX_RING {
        return Err(err(
            "minimum_ring_size",
            format!("must be in 1..={DEFAULT_MAX_RING}, got {min}"),
        ));
    }
    if max < min || max > DEFAULT_MAX_RING {
        return Err(err(
            "maximum_ring_size",
            format!("must be in {min}..={DEFAULT_MAX_RING}, got {max}"),
        ));
    }
    Ok(RingSize { min, max })
}

/// `common_lb_config`: (locality weighted, panic threshold percent).
fn common_lb(c: &Cluster) -> Result<(bool, f64), BalanceError> {
    let err = |field: &str, reason: &str| BalanceError::new(&c.name, field, reason);
    let Some(common) = &c.common_lb_config else {
        return Ok((false, DEFAULT_PANIC_THRESHOLD));
    };
    let threshold = match &common.healthy_panic_threshold {
        None => DEFAULT_PANIC_THRESHOLD,
        Some(p) if (0.0..=100.0).contains(&p.value) => p.value,
        Some(_) => {
            return Err(err(
                "common_lb_config.healthy_panic_threshold",
                "must be a percentage from 0 to 100",
            ));
        }
    };
    let weighted = match &common.locality_config_specifier {
        None => false,
        Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_)) => true,
        Some(LocalityConfigSpecifier::ZoneAwareLbConfig(_)) => {
            return Err(err(
                "common_lb_config.zone_aware_lb_config",
                "zone-aware routing is not supported; use locality_weighted_lb_config",
            ));
        }
    };
    if common.override_host_status.is_some() {
        return Err(err(
            "common_lb_config.override_host_status",
            "host overrides are not supported",
        ));
    }
    if common
        .consistent_hashing_lb_config
        .as_ref()
        .is_some_and(|h| h.use_hostname_for_hashing || h.hash_balance_factor.is_some())
    {
        return Err(err(
            "common_lb_config.consistent_hashing_lb_config",
            "hashing by hostname and bounded loads are not supported",
        ));
    }
    if common.close_connections_on_host_set_change {
        return Err(err(
            "common_lb_config.close_connections_on_host_set_change",
            "is not supported",
        ));
    }
    Ok((weighted, threshold))
}

/// Limits of the DEFAULT routing priority. HIGH-priority thresholds are
/// accepted and unused: every request is routed at DEFAULT priority.
fn limits(c: &Cluster) -> Result<Limits, BalanceError> {
    let mut limits = Limits::default();
    let Some(cb) = &c.circuit_breakers else {
        return Ok(limits);
    };
    let err = |field: String, reason: &str| BalanceError::new(&c.name, field, reason);
    if !cb.per_host_thresholds.is_empty() {
        return Err(err(
            "circuit_breakers.per_host_thresholds".into(),
            "per-host limits are not supported",
        ));
    }
    let mut seen = false;
    for (i, t) in cb.thresholds.iter().enumerate() {
        let field = format!("circuit_breakers.thresholds[{i}]");
        match RoutingPriority::try_from(t.priority) {
            Ok(RoutingPriority::Default) => {}
            Ok(RoutingPriority::High) => continue,
            Err(_) => return Err(err(format!("{field}.priority"), "unknown routing priority")),
        }
        if std::mem::replace(&mut seen, true) {
            return Err(err(field, "a second set of DEFAULT-priority thresholds"));
        }
        if t.retry_budget.is_some() {
            return Err(err(
                format!("{field}.retry_budget"),
                "retry budgets are not supported",
            ));
        }
        if t.max_connection_pools.is_some() {
            return Err(err(
                format!("{field}.max_connection_pools"),
                "a connection pool limit is not supported",
            ));
        }
        let set = |slot: &mut u32, v: Option<&envoy_types::pb::google::protobuf::UInt32Value>| {
            if let Some(v) = v {
                *slot = v.value;
            }
        };
        set(&mut limits.connections, t.max_connections.as_ref());
        set(&mut limits.pending, t.max_pending_requests.as_ref());
        set(&mut limits.requests, t.max_requests.as_ref());
        set(&mut limits.retries, t.max_retries.as_ref());
    }
    Ok(limits)
}

/// From `HttpProtocolOptions.common_http_protocol_options`, else the
/// deprecated cluster fields Envoy still honours; 0 means unlimited.
#[allow(deprecated)]
fn max_requests_per_connection(c: &Cluster) -> Result<Option<u32>, BalanceError> {
    let mut max = c
        .common_http_protocol_options
        .as_ref()
        .and_then(|o| o.max_requests_per_connection)
        .or(c.max_requests_per_connection)
        .map(|v| v.value);
    if let Some(any) = c.typed_extension_protocol_options.get(HTTP_OPTIONS) {
        let field = format!("typed_extension_protocol_options[{HTTP_OPTIONS:?}]");
        if any.type_url != HttpProtocolOptions::type_url() {
            return Err(BalanceError::new(
                &c.name,
                field,
                format!("type URL {:?} is not HttpProtocolOptions", any.type_url),
            ));
        }
        let opts = HttpProtocolOptions::decode(any.value.as_slice())
            .map_err(|e| BalanceError::new(&c.name, field, e.to_string()))?;
        if let Some(v) = opts
            .common_http_protocol_options
            .and_then(|o| o.max_requests_per_connection)
        {
            max = Some(v.value);
        }
    }
    Ok(max.filter(|&n| n > 0))
}

/// The endpoints: `load_assignment` for STATIC and STRICT_DNS, the EDS
/// resource for EDS, none for ORIGINAL_DST.
fn endpoints(
    c: &Cluster,
    discovery: Discovery,
    cla: Option<&ClusterLoadAssignment>,
) -> Result<Assignment, BalanceError> {
    let err = |field: &str, reason: &str| BalanceError::new(&c.name, field, reason);
    match discovery {
        Discovery::Static | Discovery::StrictDns => {
            if cla.is_some() {
                return Err(err(
                    "load_assignment",
                    "STATIC and STRICT_DNS clusters take their endpoints from load_assignment, not EDS",
                ));
            }
            match &c.load_assignment {
                Some(a) => assignment::parse(
                    &c.name,
                    a,
                    "load_assignment",
                    discovery == Discovery::StrictDns,
                ),
                None if discovery == Discovery::StrictDns => Err(err(
                    "load_assignment",
                    "a STRICT_DNS cluster needs its hosts",
                )),
                None => Ok(Assignment::default()),
            }
        }
        Discovery::Eds => {
            if c.load_assignment.is_some() {
                return Err(err(
                    "load_assignment",
                    "an EDS cluster takes its endpoints from EDS",
                ));
            }
            let Some(cla) = cla else {
                return Ok(Assignment::default());
            };
            let service = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(&c.name);
            if !cla.cluster_name.is_empty() && cla.cluster_name != service {
                return Err(err(
                    "ClusterLoadAssignment.cluster_name",
                    &format!("{:?} is not this cluster's {service:?}", cla.cluster_name),
                ));
            }
            assignment::parse(&c.name, cla, "ClusterLoadAssignment", false)
        }
        Discovery::OriginalDst => {
            if c.load_assignment.is_some() || cla.is_some() {
                return Err(err(
                    "load_assignment",
                    "an ORIGINAL_DST cluster has no configured endpoints",
                ));
            }
            Ok(Assignment::default())
        }
    }
}

/// A non-negative protobuf duration.
pub(crate) fn duration(d: &PbDuration) -> Option<Duration> {
    let secs = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    Some(Duration::new(secs, nanos))
}
