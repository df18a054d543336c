//! Stage 2: from an SNI to a cluster, as the control plane's gateway
//! listener says. Each filter chain lists the exact SNIs of one exported
//! service, port and subset (`outbound_.<port>_.<subset>_.<fqdn>`) and a
//! TCP proxy to that cluster; the subset's endpoints are the cluster's
//! (the control plane makes one cluster per subset).
//!
//! What is deliberately *not* supported, so nothing unexported can be
//! reached (the class of Istio CVE-2021-31921): a default filter chain, a
//! chain without server names (a catch-all in Envoy), wildcard server
//! names, and any filter other than a single-cluster TCP proxy. Such
//! chains are skipped and reported in [`RouteTable::warnings`].

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, filter};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
use isthmus_proxy_core::ProxyConfig;
use prost::{Message, Name};

use crate::upstream::Upstream;

/// Where connections for one SNI go.
#[derive(Debug)]
pub struct Route {
    /// The cluster (and its endpoints' state).
    pub upstream: Arc<Upstream>,
    /// The TCP proxy's idle timeout, if it sets one.
    pub idle_timeout: Option<Duration>,
}

/// SNI → route for one listener, rebuilt on every config change. Lookups
/// are exact (SNIs are lowercased on both sides).
#[derive(Debug, Default)]
pub struct RouteTable {
    by_sni: HashMap<String, Arc<Route>>,
    upstreams: HashMap<String, Arc<Upstream>>,
    /// Chains or clusters that were skipped, and why.
    pub warnings: Vec<String>,
}

impl RouteTable {
    /// The route for `sni`, if an exported service has it.
    pub fn get(&self, sni: &str) -> Option<&Arc<Route>> {
        self.by_sni.get(sni)
    }

    /// How many SNIs route somewhere.
    pub fn len(&self) -> usize {
        self.by_sni.len()
    }

    /// Whether no SNI routes anywhere.
    pub fn is_empty(&self) -> bool {
        self.by_sni.is_empty()
    }

    /// For `/routes`: SNI → service, and per service the open connections
    /// and the balancer's view (endpoints, health, ejections).
    pub fn to_json(&self) -> serde_json::Value {
        let snis: std::collections::BTreeMap<&String, &str> = self
            .by_sni
            .iter()
            .map(|(sni, r)| (sni, r.upstream.name()))
            .collect();
        let services: std::collections::BTreeMap<&String, serde_json::Value> = self
            .upstreams
            .iter()
            .map(|(name, u)| {
                let status = serde_json::to_value(u.status()).unwrap_or_default();
                (
                    name,
                    serde_json::json!({ "active": u.active(), "balancer": status }),
                )
            })
            .collect();
        serde_json::json!({ "snis": snis, "services": services, "warnings": self.warnings })
    }

    /// The table for listener `listener` of `config`. Upstreams of
    /// `previous` that are still used are kept (with their endpoint health
    /// and connection counts) and updated.
    pub fn build(config: &ProxyConfig, listener: &str, previous: &RouteTable) -> RouteTable {
        let mut table = RouteTable::default();
        let Some(l) = config.listeners.get(listener) else {
            if !config.listeners.is_empty() {
                table
                    .warnings
                    .push(format!("no listener {listener:?} in the config"));
            }
            return table;
        };
        let l = match l.decode() {
            Ok(l) => l,
            Err(e) => {
                table.warnings.push(format!("listener {listener}: {e}"));
                return table;
            }
        };
        if l.default_filter_chain.is_some() {
            table.warnings.push(format!(
                "listener {listener}: default_filter_chain ignored (no default route)"
            ));
        }
        for (i, chain) in l.filter_chains.iter().enumerate() {
            let what = format!("listener {listener}: filter_chains[{i}] ({})", chain.name);
            if let Err(e) = table.add_chain(config, chain, previous) {
                table.warnings.push(format!("{what}: {e}; skipped"));
            }
        }
        table
    }

    fn add_chain(
        &mut self,
        config: &ProxyConfig,
        chain: &FilterChain,
        previous: &RouteTable,
    ) -> Result<(), String> {
        let m = chain.filter_chain_match.clone().unwrap_or_default();
        let names: Vec<String> = m
            .server_names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        if names.is_empty() {
            return Err("no server_names (a catch-all is never served)".into());
        }
        if let Some(w) = names.iter().find(|n| n.contains('*')) {
            return Err(format!("wildcard server name {w:?} is not supported"));
        }
        let proxy = single_tcp_proxy(chain)?;
        let Some(ClusterSpecifier::Cluster(cluster_name)) = &proxy.cluster_specifier else {
            return Err("tcp_proxy: only a single cluster is supported".into());
        };
        let cluster = config
            .clusters
            .get(cluster_name)
            .ok_or_else(|| format!("cluster {cluster_name:?} is not in the config"))?
            .decode()
            .map_err(|e| format!("cluster {cluster_name:?}: {e}"))?;
        let upstream = self.upstream(config, &cluster, previous)?;
        let route = Arc::new(Route {
            upstream,
            idle_timeout: proxy.idle_timeout.and_then(to_std).filter(|d| !d.is_zero()),
        });
        for name in names {
            if self.by_sni.contains_key(&name) {
                self.warnings.push(format!(
                    "server name {name:?} is listed twice; the first chain wins"
                ));
                continue;
            }
            self.by_sni.insert(name, route.clone());
        }
        Ok(())
    }

    /// The upstream for `cluster`: this table's, else the previous table's
    /// (updated), else a new one.
    fn upstream(
        &mut self,
        config: &ProxyConfig,
        cluster: &Cluster,
        previous: &RouteTable,
    ) -> Result<Arc<Upstream>, String> {
        if let Some(u) = self.upstreams.get(&cluster.name) {
            return Ok(u.clone());
        }
        let eds_name = match &cluster.eds_cluster_config {
            Some(EdsClusterConfig { service_name, .. }) if !service_name.is_empty() => service_name,
            _ => &cluster.name,
        };
        let eds = match config.endpoints.get(eds_name) {
            Some(a) => Some(
                a.decode()
                    .map_err(|e| format!("ClusterLoadAssignment {eds_name:?}: {e}"))?,
            ),
            None => None,
        };
        let cla = eds.as_ref().or(cluster.load_assignment.as_ref());
        let upstream = match previous.upstreams.get(&cluster.name) {
            Some(u) => {
                u.update(cluster, cla).map_err(|e| e.to_string())?;
                u.clone()
            }
            _ => Arc::new(Upstream::new(cluster, cla).map_err(|e| e.to_string())?),
        };
        self.upstreams
            .insert(cluster.name.clone(), upstream.clone());
        Ok(upstream)
    }
}

/// A protobuf duration, if non-negative.
pub(crate) fn to_std(d: envoy_types::pb::google::protobuf::Duration) -> Option<Duration> {
    let secs = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok()?;
    (nanos < 1_000_000_000).then(|| Duration::new(secs, nanos))
}

/// The chain's only filter, a TCP proxy.
fn single_tcp_proxy(chain: &FilterChain) -> Result<TcpProxy, String> {
    let [f] = chain.filters.as_slice() else {
        return Err(format!(
            "{} filters; exactly one tcp_proxy is supported",
            chain.filters.len()
        ));
    };
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) if any.type_url == TcpProxy::type_url() => {
            TcpProxy::decode(any.value.as_slice())
                .map_err(|e| format!("tcp_proxy does not decode: {e}"))
        }
        _ => Err(format!("filter {:?} is not a tcp_proxy", f.name)),
    }
}
