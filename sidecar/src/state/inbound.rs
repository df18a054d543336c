//! The inbound listener (`virtualInbound`) compiled per workload port:
//! which transports are accepted (mTLS, plaintext), the authorization
//! filters, and the local cluster to forward to.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::listener::v3::{Filter, Listener, filter::ConfigType};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::inbound::authz::Authorizer;

const HTTP_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const NETWORK_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
/// HTTP filters the inbound path implements besides RBAC (fault is
/// per-route on outbound; the router is the forwarding itself).
const KNOWN_HTTP_FILTERS: &[&str] = &[
    "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
    "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
];

/// What a workload port speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundProtocol {
    /// HTTP/1.1 or HTTP/2 (request-level authorization).
    Http,
    /// Opaque TCP (connection-level authorization).
    Tcp,
}

impl InboundProtocol {
    /// Istio's `request_protocol` label.
    pub fn label(self) -> &'static str {
        match self {
            InboundProtocol::Http => "http",
            InboundProtocol::Tcp => "tcp",
        }
    }
}

/// One workload port's inbound policy.
#[derive(Debug)]
pub struct InboundPort {
    /// The workload (target) port.
    pub port: u16,
    /// `inbound|<port>||`.
    pub cluster: String,
    /// HTTP or TCP.
    pub protocol: InboundProtocol,
    /// Whether mTLS connections are accepted (a chain with transport `tls`).
    pub mtls: bool,
    /// Whether plaintext connections are accepted (PERMISSIVE or DISABLE).
    pub plaintext: bool,
    /// Authorization, compiled once.
    pub authorizer: Arc<Authorizer>,
}

/// Compiles `virtualInbound` into its ports.
pub fn compile(l: &Listener) -> Result<BTreeMap<u16, Arc<InboundPort>>, String> {
    let mut ports: BTreeMap<u16, InboundPort> = BTreeMap::new();
    for (i, chain) in l.filter_chains.iter().enumerate() {
        let at = |f: &str| format!("filter_chains[{i}] ({}).{f}", chain.name);
        let m = chain.filter_chain_match.clone().unwrap_or_default();
        let port = m
            .destination_port
            .map(|p| p.value)
            .ok_or_else(|| at("filter_chain_match.destination_port: missing"))?;
        let port = u16::try_from(port)
            .map_err(|_| at("filter_chain_match.destination_port: out of range"))?;
        let tls = match m.transport_protocol.as_str() {
            "tls" => true,
            "raw_buffer" | "" => false,
            other => {
                return Err(at(&format!(
                    "filter_chain_match.transport_protocol: {other:?} unsupported"
                )));
            }
        };
        if tls && chain.transport_socket.is_none() {
            return Err(at("transport_socket: a tls chain needs one"));
        }
        let (protocol, cluster, authorizer) = filters(&chain.filters).map_err(|e| at(&e))?;
        let entry = ports.entry(port).or_insert_with(|| InboundPort {
            port,
            cluster: cluster.clone(),
            protocol,
            mtls: false,
            plaintext: false,
            authorizer: Arc::new(authorizer),
        });
        if entry.cluster != cluster || entry.protocol != protocol {
            return Err(at(
                "filters: chains of one port disagree on cluster or protocol",
            ));
        }
        if tls {
            entry.mtls = true;
        } else {
            entry.plaintext = true;
        }
    }
    Ok(ports.into_iter().map(|(p, i)| (p, Arc::new(i))).collect())
}

fn typed(f: &Filter) -> Result<&Any, String> {
    match &f.config_type {
        Some(ConfigType::TypedConfig(any)) => Ok(any),
        _ => Err(format!("filter {}: no typed_config", f.name)),
    }
}

fn filters(filters: &[Filter]) -> Result<(InboundProtocol, String, Authorizer), String> {
    let mut rbac = Vec::new();
    for f in filters {
        let any = typed(f)?;
        match any.type_url.as_str() {
            NETWORK_RBAC => rbac.push(any.clone()),
            HCM => {
                let hcm = HttpConnectionManager::decode(any.value.as_slice())
                    .map_err(|e| format!("filter {}: {e}", f.name))?;
                let mut http_rbac = Vec::new();
                for hf in &hcm.http_filters {
                    let Some(http_filter::ConfigType::TypedConfig(a)) = &hf.config_type else {
                        return Err(format!("http filter {}: no typed_config", hf.name));
                    };
                    if a.type_url == HTTP_RBAC {
                        http_rbac.push(a.clone());
                    } else if !KNOWN_HTTP_FILTERS.contains(&a.type_url.as_str()) {
                        return Err(format!(
                            "http filter {}: unsupported type {}",
                            hf.name, a.type_url
                        ));
                    }
                }
                let Some(RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier else {
                    return Err(format!(
                        "filter {}: inbound HTTP needs an inline route_config",
                        f.name
                    ));
                };
                let cluster = single_cluster(&rc).ok_or_else(|| {
                    format!(
                        "filter {}: route_config must route everything to one cluster",
                        f.name
                    )
                })?;
                if !rbac.is_empty() {
                    return Err(format!(
                        "filter {}: network RBAC before an HTTP connection manager is not supported",
                        f.name
                    ));
                }
                let authz = Authorizer::from_http_filters(&http_rbac).map_err(|e| e.to_string())?;
                return Ok((InboundProtocol::Http, cluster, authz));
            }
            TCP_PROXY => {
                let tp = TcpProxy::decode(any.value.as_slice())
                    .map_err(|e| format!("filter {}: {e}", f.name))?;
                let Some(ClusterSpecifier::Cluster(cluster)) = tp.cluster_specifier else {
                    return Err(format!(
                        "filter {}: weighted clusters are not supported inbound",
                        f.name
                    ));
                };
                let authz = Authorizer::from_network_filters(&rbac).map_err(|e| e.to_string())?;
                return Ok((InboundProtocol::Tcp, cluster, authz));
            }
            other => return Err(format!("filter {}: unsupported type {other}", f.name)),
        }
    }
    Err("filters: no HTTP connection manager or TCP proxy".into())
}

/// The cluster of an inbound route config that sends everything to one cluster.
fn single_cluster(
    rc: &envoy_types::pb::envoy::config::route::v3::RouteConfiguration,
) -> Option<String> {
    use envoy_types::pb::envoy::config::route::v3::{
        route::Action, route_action::ClusterSpecifier,
    };
    let [vh] = rc.virtual_hosts.as_slice() else {
        return None;
    };
    let [route] = vh.routes.as_slice() else {
        return None;
    };
    match &route.action {
        Some(Action::Route(a)) => match &a.cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) => Some(c.clone()),
            _ => None,
        },
        _ => None,
    }
}
