//! `ClusterLoadAssignment` → priorities of localities of endpoints, each
//! checked: an IP socket address (or a DNS name in a STRICT_DNS cluster),
//! a known health status, weights of at least 1.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::core::v3::socket_address::{PortSpecifier, Protocol};
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Metadata, address};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LbEndpoint};
use envoy_types::pb::google::protobuf::value::Kind;

use super::config::BalanceError;
use super::endpoint::{Health, Locality};

/// Envoy's default overprovisioning factor, percent (1.4).
const DEFAULT_OVERPROVISIONING: u32 = 140;
/// The highest priority accepted (Envoy sets none; this bounds the tables).
const MAX_PRIORITY: u32 = 127;

#[derive(Debug)]
pub(crate) struct Assignment {
    /// Percent: 140 means a priority (or locality) with 1/1.4 of its hosts
    /// healthy still takes its full load.
    pub(crate) overprovisioning: u32,
    /// Priority health counts weights instead of hosts.
    pub(crate) weighted_priority_health: bool,
    /// Index = priority; a priority without entries is empty.
    pub(crate) priorities: Vec<Vec<LocalityGroup>>,
}

impl Default for Assignment {
    fn default() -> Self {
        Assignment {
            overprovisioning: DEFAULT_OVERPROVISIONING,
            weighted_priority_health: false,
            priorities: Vec::new(),
        }
    }
}

impl Assignment {
    /// The names STRICT_DNS entries need resolved.
    pub(crate) fn dns_names(&self) -> BTreeSet<&str> {
        self.priorities
            .iter()
            .flatten()
            .flat_map(|g| &g.endpoints)
            .filter_map(|e| match &e.target {
                Target::Dns { host, .. } => Some(host.as_str()),
                Target::Ip(_) => None,
            })
            .collect()
    }
}

/// One `LocalityLbEndpoints`.
#[derive(Debug)]
pub(crate) struct LocalityGroup {
    pub(crate) locality: Locality,
    /// `load_balancing_weight`; unset counts as 0 when localities are weighted.
    pub(crate) weight: Option<u32>,
    pub(crate) endpoints: Vec<EndpointSpec>,
}

/// One `LbEndpoint`.
#[derive(Debug)]
pub(crate) struct EndpointSpec {
    pub(crate) target: Target,
    pub(crate) hostname: String,
    pub(crate) weight: u32,
    pub(crate) health: Health,
    pub(crate) metadata: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Ip(SocketAddr),
    /// A STRICT_DNS name, a host per address it resolves to.
    Dns {
        host: String,
        port: u16,
    },
}

/// `prefix` names the message in errors (`load_assignment` or `ClusterLoadAssignment`).
pub(crate) fn parse(
    cluster: &str,
    cla: &ClusterLoadAssignment,
    prefix: &str,
    dns: bool,
) -> Result<Assignment, BalanceError> {
    let err = |field: String, reason: String| BalanceError::new(cluster, field, reason);
    let mut out = Assignment::default();
    if !cla.named_endpoints.is_empty() {
        return Err(err(
            format!("{prefix}.named_endpoints"),
            "named endpoints are not supported".into(),
        ));
    }
    if let Some(policy) = &cla.policy {
        let field = format!("{prefix}.policy");
        if !policy.drop_overloads.is_empty() {
            return Err(err(
                format!("{field}.drop_overloads"),
                "dropping load is not supported".into(),
            ));
        }
        if policy.endpoint_stale_after.is_some() {
            return Err(err(
                format!("{field}.endpoint_stale_after"),
                "stale endpoints are not supported".into(),
            ));
        }
        match policy.overprovisioning_factor.map(|v| v.value) {
            Some(0) => {
                return Err(err(
                    format!("{field}.overprovisioning_factor"),
                    "must be greater than 0".into(),
                ));
            }
            Some(f) => out.overprovisioning = f,
            None => {}
        }
        out.weighted_priority_health = policy.weighted_priority_health;
    }
    for (i, l) in cla.endpoints.iter().enumerate() {
        let field = format!("{prefix}.endpoints[{i}]");
        if l.lb_config.is_some() {
            return Err(err(
                format!("{field}.leds_cluster_locality_config"),
                "LEDS is not supported".into(),
            ));
        }
        if l.priority > MAX_PRIORITY {
            return Err(err(
                format!("{field}.priority"),
                format!("{} is above the supported {MAX_PRIORITY}", l.priority),
            ));
        }
        let weight = l.load_balancing_weight.map(|w| w.value);
        if weight == Some(0) {
            return Err(err(
                format!("{field}.load_balancing_weight"),
                "must be at least 1".into(),
            ));
        }
        let endpoints = l
            .lb_endpoints
            .iter()
            .enumerate()
            .map(|(j, e)| {
                let field = format!("{field}.lb_endpoints[{j}]");
                endpoint(e, dns).map_err(|(f, reason)| err(format!("{field}.{f}"), reason))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let p = l.priority as usize;
        if out.priorities.len() <= p {
            out.priorities.resize_with(p + 1, Vec::new);
        }
        out.priorities[p].push(LocalityGroup {
            locality: l.locality.as_ref().map(Locality::from).unwrap_or_default(),
            weight,
            endpoints,
        });
    }
    Ok(out)
}

/// One endpoint, or (field under the `LbEndpoint`, reason).
fn endpoint(e: &LbEndpoint, dns: bool) -> Result<EndpointSpec, (String, String)> {
    let fail = |field: &str, reason: &str| Err((field.to_string(), reason.to_string()));
    let ep = match &e.host_identifier {
        Some(HostIdentifier::Endpoint(ep)) => ep,
        Some(HostIdentifier::EndpointName(_)) => {
            return fail("endpoint_name", "named endpoints are not supported");
        }
        None => return fail("endpoint", "missing"),
    };
    if !ep.additional_addresses.is_empty() {
        return fail(
            "endpoint.additional_addresses",
            "additional addresses are not supported",
        );
    }
    let sa = match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(sa)) => sa,
        Some(address::Address::Pipe(_)) => {
            return fail("endpoint.address.pipe", "pipe addresses are not supported");
        }
        Some(address::Address::EnvoyInternalAddress(_)) => {
            return fail(
                "endpoint.address.envoy_internal_address",
                "internal addresses are not supported",
            );
        }
        None => return fail("endpoint.address", "missing"),
    };
    let field = "endpoint.address.socket_address";
    if sa.protocol != Protocol::Tcp as i32 {
        return fail(&format!("{field}.protocol"), "only TCP is supported");
    }
    if !sa.resolver_name.is_empty() {
        return fail(
            &format!("{field}.resolver_name"),
            "custom resolvers are not supported",
        );
    }
    if !sa.network_namespace_filepath.is_empty() {
        return fail(
            &format!("{field}.network_namespace_filepath"),
            "network namespaces are not supported",
        );
    }
    let port = match &sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) => match u16::try_from(*p) {
            Ok(p) if p > 0 => p,
            _ => {
                return fail(
                    &format!("{field}.port_value"),
                    &format!("{p} is not a port"),
                );
            }
        },
        Some(PortSpecifier::NamedPort(_)) => {
            return fail(
                &format!("{field}.named_port"),
                "named ports are not supported",
            );
        }
        None => return fail(&format!("{field}.port_value"), "missing"),
    };
    let target = match sa.address.parse::<IpAddr>() {
        Ok(ip) => Target::Ip(SocketAddr::new(ip, port)),
        Err(_) if dns && !sa.address.is_empty() => Target::Dns {
            host: sa.address.clone(),
            port,
        },
        Err(_) => {
            return fail(
                &format!("{field}.address"),
                &format!("{:?} is not an IP address", sa.address),
            );
        }
    };
    let weight = e.load_balancing_weight.map_or(1, |w| w.value);
    if weight == 0 {
        return fail("load_balancing_weight", "must be at least 1");
    }
    let health = match HealthStatus::try_from(e.health_status) {
        Ok(HealthStatus::Unknown) => Health::Unknown,
        Ok(HealthStatus::Healthy) => Health::Healthy,
        Ok(HealthStatus::Unhealthy) => Health::Unhealthy,
        Ok(HealthStatus::Draining) => Health::Draining,
        Ok(HealthStatus::Timeout) => Health::Timeout,
        Ok(HealthStatus::Degraded) => Health::Degraded,
        Err(_) => {
            return fail(
                "health_status",
                &format!("unknown health status {}", e.health_status),
            );
        }
    };
    Ok(EndpointSpec {
        target,
        hostname: ep.hostname.clone(),
        weight,
        health,
        metadata: flatten(e.metadata.as_ref()),
    })
}

/// Scalar values of `filter_metadata`, keyed `<filter>.<key>`.
fn flatten(m: Option<&Metadata>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (filter, fields) in m.iter().flat_map(|m| &m.filter_metadata) {
        for (key, value) in &fields.fields {
            let text = match &value.kind {
                Some(Kind::StringValue(s)) => s.clone(),
                Some(Kind::NumberValue(n)) => n.to_string(),
                Some(Kind::BoolValue(b)) => b.to_string(),
                _ => continue,
            };
            out.insert(format!("{filter}.{key}"), text);
        }
    }
    out
}
