//! The east-west gateway's config: SNI passthrough to exported services only.
//!
//! One filter chain per exported service, port and subset, matched by the
//! Istio SNI `outbound_.<port>_.<subset>_.<host>` for each name a peer may
//! use (the cluster FQDN, `<svc>.<ns>.global`, `<svc>.<ns>.svc.clusterset.local`),
//! each a TCP proxy to a plain (no TLS origination) cluster of this
//! cluster's own endpoints. There is no default chain: an SNI that is not
//! listed — an unexported service — has nowhere to go.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::listener::v3::{
    FilterChain, FilterChainMatch, Listener, ListenerFilter,
    listener_filter::ConfigType as ListenerFilterConfig,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use isthmus_api::Resource;
use isthmus_api::naming::{HostKind, Sni};
use isthmus_api::networking::ServerTlsMode;

use super::clusters::socket_address;
use super::listeners::tcp_proxy;
use super::{EffectivePolicy, PushContext, cluster_name, resource};
use crate::registry::Service;
use crate::xds::{ProxyInfo, XdsResource};

/// Default port of the east-west gateway listener.
pub const DEFAULT_PORT: u16 = 15443;

/// Exported services with their subsets.
fn exported<'a>(
    pc: &'a PushContext,
    proxy: &'a ProxyInfo,
) -> impl Iterator<Item = (&'a Service, Vec<Option<String>>)> + 'a {
    pc.registry
        .services()
        .filter(|s| s.exported)
        .map(move |svc| {
            let dr = pc.destination_rule(&svc.hostname, &proxy.namespace, &svc.namespace);
            let subsets = std::iter::once(None)
                .chain(
                    dr.into_iter()
                        .flat_map(|d| d.spec.subsets.iter().map(|s| Some(s.name.clone()))),
                )
                .collect();
            (&**svc, subsets)
        })
}

/// Plain EDS clusters of local endpoints, one per exported service port and subset.
pub fn clusters(pc: &PushContext, proxy: &ProxyInfo) -> Vec<XdsResource> {
    let mut out = Vec::new();
    for (svc, subsets) in exported(pc, proxy) {
        let dr = pc.destination_rule(&svc.hostname, &proxy.namespace, &svc.namespace);
        for port in &svc.ports {
            for subset in &subsets {
                let policy = EffectivePolicy::resolve(dr, port.port, subset.as_deref());
                let mut c = super::clusters::outbound(pc, svc, port, subset.as_deref(), &policy);
                c.transport_socket = None;
                c.typed_extension_protocol_options.clear();
                c.cluster_discovery_type =
                    Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
                c.eds_cluster_config = Some(EdsClusterConfig {
                    eds_config: Some(super::ads()),
                    service_name: String::new(),
                });
                out.push(resource(c.name.clone(), c));
            }
        }
    }
    out
}

/// The passthrough listener(s): ports from AUTO_PASSTHROUGH Gateways selecting this proxy, else 15443.
pub fn listeners(pc: &PushContext, proxy: &ProxyInfo) -> Vec<XdsResource> {
    let mut ports = BTreeSet::new();
    for r in &pc.gateways_resources {
        let Resource::Gateway(gw) = &**r else {
            continue;
        };
        if gw
            .spec
            .selector
            .iter()
            .all(|(k, v)| proxy.labels.get(k) == Some(v))
        {
            for s in &gw.spec.servers {
                if s.tls.as_ref().and_then(|t| t.mode) == Some(ServerTlsMode::AutoPassthrough) {
                    ports.extend(u16::try_from(s.port.number).ok());
                }
            }
        }
    }
    if ports.is_empty() {
        ports.insert(DEFAULT_PORT);
    }
    let mut chains = Vec::new();
    for (svc, subsets) in exported(pc, proxy) {
        for port in &svc.ports {
            for subset in &subsets {
                let cluster = cluster_name(port.port, subset.as_deref(), &svc.hostname);
                let mut hosts = vec![svc.hostname.clone()];
                if let Some(name) = &svc.name {
                    hosts.push(name.host(HostKind::Global));
                    hosts.push(name.host(HostKind::ClusterSet));
                }
                let server_names: Vec<String> = hosts
                    .iter()
                    .filter_map(|h| Sni::new(port.port, subset.as_deref(), h).ok())
                    .map(|s| s.to_string())
                    .collect();
                chains.push(FilterChain {
                    name: cluster.clone(),
                    filter_chain_match: Some(FilterChainMatch {
                        server_names,
                        ..FilterChainMatch::default()
                    }),
                    filters: vec![tcp_proxy(&cluster, &cluster)],
                    ..FilterChain::default()
                });
            }
        }
    }
    ports
        .into_iter()
        .map(|p| {
            let name = format!("0.0.0.0_{p}");
            resource(
                name.clone(),
                Listener {
                    name,
                    address: Some(socket_address("0.0.0.0", p)),
                    listener_filters: vec![ListenerFilter {
                        name: "envoy.filters.listener.tls_inspector".into(),
                        config_type: Some(ListenerFilterConfig::TypedConfig(
                            envoy_types::util::pack_any(TlsInspector::default()),
                        )),
                        ..ListenerFilter::default()
                    }],
                    filter_chains: chains.clone(),
                    ..Listener::default()
                },
            )
        })
        .collect()
}
