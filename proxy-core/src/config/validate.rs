//! What our data plane relies on, checked before a response is accepted.
//!
//! Every message names the resource and the field path, e.g.
//! `Listener "0.0.0.0_5000": filter_chains[0].filters[0]: route_specifier: scoped routes are not supported`.
//! These checks are deliberately few: anything Envoy accepts that our data
//! plane cannot run, plus what names other resources.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, Secret, UpstreamTlsContext,
};
use prost::{Message, Name};

use super::ResourceType;

/// Cluster discovery types the data plane implements.
pub const SUPPORTED_DISCOVERY_TYPES: [DiscoveryType; 4] = [
    DiscoveryType::Static,
    DiscoveryType::StrictDns,
    DiscoveryType::Eds,
    DiscoveryType::OriginalDst,
];

/// Why a response was rejected. The message is what the NACK's
/// `error_detail` carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// An `Any` of another type than the response's.
    #[error("{kind} response: resources[{index}] has type URL {found:?}, expected {:?}", .kind.type_url())]
    WrongTypeUrl {
        kind: ResourceType,
        index: usize,
        found: String,
    },
    /// Bytes that do not decode as the response's type.
    #[error("{kind} response: resources[{index}] does not decode as {kind}: {source}")]
    Decode {
        kind: ResourceType,
        index: usize,
        #[source]
        source: prost::DecodeError,
    },
    /// A resource without a name.
    #[error("{kind} response: resources[{index}] has an empty name")]
    EmptyName { kind: ResourceType, index: usize },
    /// Two resources with one name.
    #[error("{kind} {name:?}: appears more than once in the response")]
    Duplicate { kind: ResourceType, name: String },
    /// A resource the data plane cannot use.
    #[error("{kind} {name:?}: {reason}")]
    Invalid {
        kind: ResourceType,
        name: String,
        reason: String,
    },
    /// A named resource the client never subscribed to on this stream.
    #[error("{kind} {name:?}: not subscribed")]
    NotSubscribed { kind: ResourceType, name: String },
}

impl ConfigError {
    /// The type of the rejected response.
    pub fn resource_type(&self) -> ResourceType {
        match self {
            Self::WrongTypeUrl { kind, .. }
            | Self::Decode { kind, .. }
            | Self::EmptyName { kind, .. }
            | Self::Duplicate { kind, .. }
            | Self::Invalid { kind, .. }
            | Self::NotSubscribed { kind, .. } => *kind,
        }
    }
}

/// A supported discovery type; STRICT_DNS needs its hosts in `load_assignment`.
pub fn cluster(c: &Cluster) -> Result<(), String> {
    let t = match &c.cluster_discovery_type {
        // The proto default.
        None => DiscoveryType::Static,
        Some(ClusterDiscoveryType::Type(t)) => {
            DiscoveryType::try_from(*t).map_err(|_| format!("type: unknown discovery type {t}"))?
        }
        Some(ClusterDiscoveryType::ClusterType(custom)) => {
            return Err(format!(
                "cluster_type: custom cluster type {:?} is not supported",
                custom.name
            ));
        }
    };
    if !SUPPORTED_DISCOVERY_TYPES.contains(&t) {
        return Err(format!(
            "type: discovery type {} is not supported",
            t.as_str_name()
        ));
    }
    if t == DiscoveryType::StrictDns && c.load_assignment.is_none() {
        return Err("load_assignment: a STRICT_DNS cluster needs its hosts".into());
    }
    if let Some(socket) = &c.transport_socket {
        transport_socket::<UpstreamTlsContext>(socket)
            .map_err(|e| format!("transport_socket: {e}"))?;
    }
    for (i, m) in c.transport_socket_matches.iter().enumerate() {
        if let Some(socket) = &m.transport_socket {
            transport_socket::<UpstreamTlsContext>(socket)
                .map_err(|e| format!("transport_socket_matches[{i}].transport_socket: {e}"))?;
        }
    }
    Ok(())
}

/// An address; HTTP connection managers decode and name their routes;
/// TLS transport sockets decode.
pub fn listener(l: &Listener) -> Result<(), String> {
    if l.address
        .as_ref()
        .and_then(|a| a.address.as_ref())
        .is_none()
    {
        return Err("address: missing".into());
    }
    let chains = l
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("filter_chains[{i}]"), c))
        .chain(
            l.default_filter_chain
                .iter()
                .map(|c| ("default_filter_chain".to_string(), c)),
        );
    for (path, chain) in chains {
        filter_chain(chain).map_err(|e| format!("{path}.{e}"))?;
    }
    Ok(())
}

fn filter_chain(chain: &FilterChain) -> Result<(), String> {
    for (i, f) in chain.filters.iter().enumerate() {
        let Some(FilterConfig::TypedConfig(any)) = &f.config_type else {
            continue;
        };
        if any.type_url != HttpConnectionManager::type_url() {
            continue;
        }
        let hcm = HttpConnectionManager::decode(any.value.as_slice())
            .map_err(|e| format!("filters[{i}]: cannot decode HttpConnectionManager: {e}"))?;
        match &hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) if rds.route_config_name.is_empty() => {
                return Err(format!("filters[{i}].rds.route_config_name: empty"));
            }
            Some(RouteSpecifier::Rds(_)) => {}
            Some(RouteSpecifier::RouteConfig(rc)) => {
                route(rc).map_err(|e| format!("filters[{i}].route_config.{e}"))?;
            }
            Some(RouteSpecifier::ScopedRoutes(_)) => {
                return Err(format!(
                    "filters[{i}].route_specifier: scoped routes are not supported"
                ));
            }
            None => return Err(format!("filters[{i}].route_specifier: missing")),
        }
    }
    if let Some(socket) = &chain.transport_socket {
        transport_socket::<DownstreamTlsContext>(socket)
            .map_err(|e| format!("transport_socket: {e}"))?;
    }
    Ok(())
}

/// Virtual hosts have unique names and every domain appears once.
pub fn route(r: &RouteConfiguration) -> Result<(), String> {
    let mut names = BTreeSet::new();
    let mut domains = BTreeSet::new();
    for (i, vh) in r.virtual_hosts.iter().enumerate() {
        if !names.insert(vh.name.as_str()) {
            return Err(format!(
                "virtual_hosts[{i}].name: {:?} is used twice",
                vh.name
            ));
        }
        for (j, domain) in vh.domains.iter().enumerate() {
            if !domains.insert(domain.to_ascii_lowercase()) {
                return Err(format!(
                    "virtual_hosts[{i}].domains[{j}]: {domain:?} is already in another virtual host"
                ));
            }
        }
    }
    Ok(())
}

/// A secret carries something.
pub fn secret(s: &Secret) -> Result<(), String> {
    match s.r#type {
        Some(_) => Ok(()),
        None => Err("type: missing".into()),
    }
}

/// A TLS transport socket of the expected side must decode.
fn transport_socket<T: Message + Name + Default>(socket: &TransportSocket) -> Result<(), String> {
    match &socket.config_type {
        Some(SocketConfig::TypedConfig(any)) if any.type_url == T::type_url() => {
            T::decode(any.value.as_slice())
                .map(drop)
                .map_err(|e| format!("cannot decode {}: {e}", T::NAME))
        }
        _ => Ok(()),
    }
}
