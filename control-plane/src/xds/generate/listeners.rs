//! LDS for sidecars.
//!
//! Outbound (Istio's shape, valid for unmodified Envoy with iptables capture):
//! `virtualOutbound` on 15001 hands connections to per-port listeners by
//! original destination; `0.0.0.0_<port>` runs the HTTP connection manager
//! with RDS route config `<port>`; TCP service ports get `<vip>_<port>` with
//! a TCP proxy, for the addresses the service declares and for the
//! federation-wide VIPs the DNS server answers for its global name. Inbound: `virtualInbound` on 15006 terminates mesh mTLS
//! (SDS certificate, trust bundle, SPIFFE URI SANs), applies
//! AuthorizationPolicy as Envoy RBAC, and forwards to `inbound|<port>||`.
//! PeerAuthentication decides whether plaintext is also accepted.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
    filter::ConfigType as FilterConfig, listener_filter::ConfigType as ListenerFilterConfig,
};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route::Action,
    route_action::ClusterSpecifier as RouteCluster, route_match::PathSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager::RouteSpecifier,
    http_filter::ConfigType as HttpFilterConfig,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use isthmus_api::security::MtlsMode;

use super::clusters::{PASSTHROUGH, inbound_name, socket_address};
use super::{PushContext, bool_value, cluster_name, rbac, resource, tls, u32_value};
use crate::registry::Protocol;
use crate::xds::{ProxyInfo, XdsResource};

/// Port of the outbound capture listener.
pub const OUTBOUND_PORT: u16 = 15001;
/// Port of the inbound capture listener.
pub const INBOUND_PORT: u16 = 15006;

/// Every listener a sidecar needs.
pub fn sidecar(pc: &PushContext, proxy: &ProxyInfo) -> Vec<XdsResource> {
    let mut http_ports = BTreeSet::new();
    let mut tcp: BTreeMap<String, (String, u16, String)> = BTreeMap::new();
    let scope = pc.sidecar_for(proxy);
    for svc in pc.registry.services() {
        if !super::visible(&svc.export_to, Some(&svc.namespace), &proxy.namespace) {
            continue;
        }
        for port in &svc.ports {
            if scope.is_some_and(|s| !s.admits(svc, port)) {
                continue;
            }
            if port.protocol.is_http() {
                http_ports.insert(port.port);
            } else {
                let global = pc.global_vips.get(&svc.hostname).into_iter().flatten();
                for vip in svc.addresses.iter().chain(global) {
                    let name = format!("{vip}_{}", port.port);
                    tcp.entry(name).or_insert_with(|| {
                        (
                            vip.to_string(),
                            port.port,
                            cluster_name(port.port, None, &svc.hostname),
                        )
                    });
                }
            }
        }
    }
    let mut out: Vec<XdsResource> = http_ports
        .iter()
        .map(|p| {
            let name = format!("0.0.0.0_{p}");
            let hcm = http_connection_manager(
                &format!("outbound_0.0.0.0_{p}"),
                RouteSpecifier::Rds(Rds {
                    config_source: Some(super::ads()),
                    route_config_name: p.to_string(),
                }),
                Vec::new(),
            );
            resource(
                name.clone(),
                virtual_listener(
                    &name,
                    "0.0.0.0",
                    *p,
                    vec![FilterChain {
                        filters: vec![hcm],
                        ..FilterChain::default()
                    }],
                ),
            )
        })
        .collect();
    for (name, (vip, port, cluster)) in tcp {
        let chain = FilterChain {
            filters: vec![tcp_proxy(&format!("outbound|{port}||"), &cluster)],
            ..FilterChain::default()
        };
        out.push(resource(
            name.clone(),
            virtual_listener(&name, &vip, port, vec![chain]),
        ));
    }
    out.push(resource(
        "virtualOutbound",
        Listener {
            name: "virtualOutbound".into(),
            address: Some(socket_address("0.0.0.0", OUTBOUND_PORT)),
            use_original_dst: Some(bool_value(true)),
            default_filter_chain: Some(FilterChain {
                filters: vec![tcp_proxy("PassthroughCluster", PASSTHROUGH)],
                ..FilterChain::default()
            }),
            ..Listener::default()
        },
    ));
    out.push(resource("virtualInbound", inbound(pc, proxy)));
    out
}

/// A listener that receives connections handed over by `virtualOutbound`.
fn virtual_listener(name: &str, ip: &str, port: u16, filter_chains: Vec<FilterChain>) -> Listener {
    Listener {
        name: name.to_string(),
        address: Some(socket_address(ip, port)),
        filter_chains,
        bind_to_port: Some(bool_value(false)),
        ..Listener::default()
    }
}

/// The HTTP connection manager filter with fault injection and the router
/// after any extra filters (RBAC on inbound).
pub(crate) fn http_connection_manager(
    stat_prefix: &str,
    routes: RouteSpecifier,
    mut filters: Vec<HttpFilter>,
) -> Filter {
    filters.push(HttpFilter {
        name: "envoy.filters.http.fault".into(),
        config_type: Some(HttpFilterConfig::TypedConfig(envoy_types::util::pack_any(
            HttpFault::default(),
        ))),
        ..HttpFilter::default()
    });
    filters.push(HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(HttpFilterConfig::TypedConfig(envoy_types::util::pack_any(
            Router::default(),
        ))),
        ..HttpFilter::default()
    });
    let hcm = HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(routes),
        http_filters: filters,
        ..HttpConnectionManager::default()
    };
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(FilterConfig::TypedConfig(envoy_types::util::pack_any(hcm))),
    }
}

/// A TCP proxy filter to one cluster.
pub(crate) fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Filter {
    let proxy = TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_string())),
        ..TcpProxy::default()
    };
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(FilterConfig::TypedConfig(envoy_types::util::pack_any(
            proxy,
        ))),
    }
}

/// Ports the proxy's own workload serves: (service port, target port, protocol).
pub fn workload_ports(pc: &PushContext, proxy: &ProxyInfo) -> Vec<(u16, u16, Protocol)> {
    pc.cache
        .workload_ports(proxy, &pc.mesh.cluster.cluster, || pc.registry.services())
}

/// The effective mTLS mode for a workload port: workload policy (port level,
/// then whole), namespace policy, mesh policy in the root namespace; PERMISSIVE by default.
pub fn mtls_mode(pc: &PushContext, proxy: &ProxyInfo, port: u16) -> MtlsMode {
    let root = pc.mesh.root_namespace.as_str();
    let mut workload = None;
    let mut namespace = None;
    let mut mesh = None;
    for pa in pc.peer_authentications() {
        let ns = pa.metadata.namespace.as_deref().unwrap_or_default();
        let selector = pa
            .spec
            .selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty());
        let port_mode = pa
            .spec
            .port_level_mtls
            .get(&port.to_string())
            .and_then(|m| m.mode);
        let mode = port_mode
            .or(pa.spec.mtls.as_ref().and_then(|m| m.mode))
            .filter(|m| *m != MtlsMode::Unset);
        match selector {
            Some(sel)
                if ns == proxy.namespace
                    && sel.iter().all(|(k, v)| proxy.labels.get(k) == Some(v)) =>
            {
                workload = workload.or(mode)
            }
            None if ns == proxy.namespace => namespace = namespace.or(mode),
            None if ns == root => mesh = mesh.or(mode),
            _ => {}
        }
    }
    workload
        .or(namespace)
        .or(mesh)
        .unwrap_or(MtlsMode::Permissive)
}

pub(crate) fn inbound(pc: &PushContext, proxy: &ProxyInfo) -> Listener {
    let policies = rbac::applicable(
        pc.authorization_policies(),
        &pc.mesh.root_namespace,
        &proxy.namespace,
        &proxy.labels,
    );
    let trust_prefixes: Vec<String> = pc
        .trust_domains
        .values()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|td| format!("spiffe://{td}/"))
        .collect();
    let mut chains = Vec::new();
    for (_, target, proto) in workload_ports(pc, proxy) {
        let mode = mtls_mode(pc, proxy, target);
        let cluster = inbound_name(target);
        let filters = || -> Vec<Filter> {
            if proto.is_http() {
                let route = RouteConfiguration {
                    name: cluster.clone(),
                    virtual_hosts: vec![VirtualHost {
                        name: cluster.clone(),
                        domains: vec!["*".into()],
                        routes: vec![Route {
                            r#match: Some(RouteMatch {
                                path_specifier: Some(PathSpecifier::Prefix("/".into())),
                                ..RouteMatch::default()
                            }),
                            action: Some(Action::Route(RouteAction {
                                cluster_specifier: Some(RouteCluster::Cluster(cluster.clone())),
                                timeout: Some(super::duration(std::time::Duration::ZERO)),
                                ..RouteAction::default()
                            })),
                            ..Route::default()
                        }],
                        ..VirtualHost::default()
                    }],
                    ..RouteConfiguration::default()
                };
                // RBAC runs on both chains; principal rules cannot match plaintext peers.
                vec![http_connection_manager(
                    &format!("inbound_{target}"),
                    RouteSpecifier::RouteConfig(route),
                    rbac::http_filters(&policies),
                )]
            } else {
                let mut f = rbac::network_filters(&policies);
                f.push(tcp_proxy(&cluster, &cluster));
                f
            }
        };
        if mode != MtlsMode::Disable {
            chains.push(FilterChain {
                name: format!("inbound_{target}_mtls"),
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(u32_value(u32::from(target))),
                    transport_protocol: "tls".into(),
                    ..FilterChainMatch::default()
                }),
                filters: filters(),
                transport_socket: Some(tls::downstream(&trust_prefixes)),
                ..FilterChain::default()
            });
        }
        if mode != MtlsMode::Strict {
            chains.push(FilterChain {
                name: format!("inbound_{target}_plaintext"),
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(u32_value(u32::from(target))),
                    transport_protocol: "raw_buffer".into(),
                    ..FilterChainMatch::default()
                }),
                filters: filters(),
                ..FilterChain::default()
            });
        }
    }
    Listener {
        name: "virtualInbound".into(),
        address: Some(socket_address("0.0.0.0", INBOUND_PORT)),
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            config_type: Some(ListenerFilterConfig::TypedConfig(
                envoy_types::util::pack_any(TlsInspector::default()),
            )),
            ..ListenerFilter::default()
        }],
        use_original_dst: Some(bool_value(true)),
        filter_chains: chains,
        ..Listener::default()
    }
}
