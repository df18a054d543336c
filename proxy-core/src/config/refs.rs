//! The names one resource type makes a proxy subscribe to in another:
//! listeners → route configurations (RDS), EDS clusters → assignments (EDS),
//! TLS transport sockets → secrets (SDS).
//!
//! Resources reaching here were validated, so a config that does not decode
//! is simply skipped.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, UpstreamTlsContext,
};
use prost::{Message, Name};

/// Route configurations named by the listeners' HTTP connection managers.
pub(super) fn route_names<'a>(listeners: impl Iterator<Item = &'a Listener>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for l in listeners {
        for chain in l.filter_chains.iter().chain(&l.default_filter_chain) {
            for f in &chain.filters {
                let Some(FilterConfig::TypedConfig(any)) = &f.config_type else {
                    continue;
                };
                if any.type_url != HttpConnectionManager::type_url() {
                    continue;
                }
                if let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice())
                    && let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier
                {
                    names.insert(rds.route_config_name);
                }
            }
        }
    }
    names
}

/// The EDS names of EDS clusters: the service name, else the cluster name.
pub(super) fn endpoint_names<'a>(clusters: impl Iterator<Item = &'a Cluster>) -> BTreeSet<String> {
    clusters
        .filter(|c| {
            c.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
        })
        .map(|c| {
            c.eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(&c.name)
                .to_string()
        })
        .collect()
}

/// Secrets the clusters' upstream TLS contexts load by SDS.
pub(super) fn cluster_secret_names<'a>(
    clusters: impl Iterator<Item = &'a Cluster>,
) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for c in clusters {
        let sockets = c.transport_socket.iter().chain(
            c.transport_socket_matches
                .iter()
                .filter_map(|m| m.transport_socket.as_ref()),
        );
        for socket in sockets {
            if let Some(tls) = decode_socket::<UpstreamTlsContext>(socket) {
                common_secret_names(tls.common_tls_context.as_ref(), &mut names);
            }
        }
    }
    names
}

/// Secrets the listeners' downstream TLS contexts load by SDS.
pub(super) fn listener_secret_names<'a>(
    listeners: impl Iterator<Item = &'a Listener>,
) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for l in listeners {
        let sockets = l
            .filter_chains
            .iter()
            .chain(&l.default_filter_chain)
            .filter_map(|c| c.transport_socket.as_ref());
        for socket in sockets {
            if let Some(tls) = decode_socket::<DownstreamTlsContext>(socket) {
                common_secret_names(tls.common_tls_context.as_ref(), &mut names);
            }
        }
    }
    names
}

fn decode_socket<T: Message + Name + Default>(socket: &TransportSocket) -> Option<T> {
    match &socket.config_type {
        Some(SocketConfig::TypedConfig(any)) if any.type_url == T::type_url() => {
            T::decode(any.value.as_slice()).ok()
        }
        _ => None,
    }
}

/// Certificate and validation-context secrets fetched by SDS. A config
/// without `sds_config` names a static secret, which is not subscribed.
fn common_secret_names(common: Option<&CommonTlsContext>, names: &mut BTreeSet<String>) {
    let Some(common) = common else {
        return;
    };
    let dynamic = |s: &SdsSecretConfig| s.sds_config.is_some() && !s.name.is_empty();
    for s in &common.tls_certificate_sds_secret_configs {
        if dynamic(s) {
            names.insert(s.name.clone());
        }
    }
    let validation = match &common.validation_context_type {
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => Some(s),
        Some(ValidationContextType::CombinedValidationContext(c)) => {
            c.validation_context_sds_secret_config.as_ref()
        }
        _ => None,
    };
    if let Some(s) = validation.filter(|s| dynamic(s)) {
        names.insert(s.name.clone());
    }
}
