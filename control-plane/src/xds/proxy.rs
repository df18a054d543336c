//! Who is asking: the proxy's role, identity, cluster and locality, from
//! the Envoy `Node` it sends (id and metadata, Istio-style).
//!
//! Node id: `<role>~<ip>~<workload>.<namespace>~<namespace>.svc.cluster.local`
//! with role `sidecar`, `gateway` (Istio's `router` accepted) or `dns`.
//! Metadata (a protobuf Struct): `CLUSTER_ID`, `NAMESPACE`, `NETWORK`,
//! `SERVICE_ACCOUNT`, `LABELS` (a struct of strings), `WORKLOAD_NAME`.
//! Locality comes from `node.locality`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use isthmus_api::naming::Locality;

/// What kind of client a proxy is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProxyRole {
    Sidecar,
    Gateway,
    Dns,
}

impl fmt::Display for ProxyRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyRole::Sidecar => "sidecar",
            ProxyRole::Gateway => "gateway",
            ProxyRole::Dns => "dns",
        })
    }
}

/// Everything the generators need to know about the requesting proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyInfo {
    /// The full node id, as sent.
    pub id: String,
    pub role: ProxyRole,
    pub ip: Option<IpAddr>,
    /// Workload (pod or WorkloadEntry) name.
    pub workload: String,
    pub namespace: String,
    pub cluster: String,
    pub network: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub locality: Locality,
}

/// Why a node could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node {id:?}: {reason}")]
pub struct NodeError {
    pub id: String,
    pub reason: String,
}

impl ProxyInfo {
    /// Parses the node a proxy sends on its first request.
    pub fn from_node(node: &Node) -> Result<Self, NodeError> {
        let err = |reason: &str| NodeError {
            id: node.id.clone(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = node.id.split('~').collect();
        let [role, ip, workload_ns, _domain] = parts.as_slice() else {
            return Err(err(
                "id must be <role>~<ip>~<workload>.<namespace>~<domain>",
            ));
        };
        let role = match *role {
            "sidecar" => ProxyRole::Sidecar,
            "gateway" | "router" => ProxyRole::Gateway,
            "dns" => ProxyRole::Dns,
            _ => return Err(err("role must be sidecar, gateway or dns")),
        };
        let ip = if ip.is_empty() {
            None
        } else {
            Some(ip.parse().map_err(|_| err("bad IP in id"))?)
        };
        let (workload, id_ns) = workload_ns.rsplit_once('.').unwrap_or((workload_ns, ""));
        let meta = node.metadata.as_ref();
        let namespace = string(meta, "NAMESPACE").unwrap_or_else(|| id_ns.to_string());
        if namespace.is_empty() {
            return Err(err("no namespace in id or NAMESPACE metadata"));
        }
        let locality = node
            .locality
            .as_ref()
            .map_or_else(Locality::default, |l| Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                subzone: l.sub_zone.clone(),
            });
        Ok(Self {
            id: node.id.clone(),
            role,
            ip,
            workload: string(meta, "WORKLOAD_NAME").unwrap_or_else(|| workload.to_string()),
            namespace,
            cluster: string(meta, "CLUSTER_ID").unwrap_or_default(),
            network: string(meta, "NETWORK").unwrap_or_default(),
            service_account: string(meta, "SERVICE_ACCOUNT").unwrap_or_else(|| "default".into()),
            labels: meta
                .and_then(|m| m.fields.get("LABELS"))
                .map(labels)
                .unwrap_or_default(),
            locality,
        })
    }

    /// Builds the `Node` a proxy with this information sends (used by clients and tests).
    pub fn to_node(&self) -> Node {
        use envoy_types::pb::envoy::config::core::v3::Locality as EnvoyLocality;
        let s = |v: &str| Value {
            kind: Some(Kind::StringValue(v.to_string())),
        };
        let mut fields = BTreeMap::new();
        fields.insert("NAMESPACE".to_string(), s(&self.namespace));
        fields.insert("CLUSTER_ID".to_string(), s(&self.cluster));
        fields.insert("NETWORK".to_string(), s(&self.network));
        fields.insert("SERVICE_ACCOUNT".to_string(), s(&self.service_account));
        fields.insert("WORKLOAD_NAME".to_string(), s(&self.workload));
        let labels = self.labels.iter().map(|(k, v)| (k.clone(), s(v))).collect();
        fields.insert(
            "LABELS".to_string(),
            Value {
                kind: Some(Kind::StructValue(Struct { fields: labels })),
            },
        );
        Node {
            id: self.id.clone(),
            metadata: Some(Struct {
                fields: fields.into_iter().collect(),
            }),
            locality: Some(EnvoyLocality {
                region: self.locality.region.clone(),
                zone: self.locality.zone.clone(),
                sub_zone: self.locality.subzone.clone(),
            }),
            ..Node::default()
        }
    }

    /// A node id in our format.
    pub fn node_id(role: ProxyRole, ip: Option<IpAddr>, workload: &str, namespace: &str) -> String {
        let ip = ip.map(|i| i.to_string()).unwrap_or_default();
        format!("{role}~{ip}~{workload}.{namespace}~{namespace}.svc.cluster.local")
    }
}

fn string(meta: Option<&Struct>, key: &str) -> Option<String> {
    match meta?.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    match &v.kind {
        Some(Kind::StructValue(s)) => s
            .fields
            .iter()
            .filter_map(|(k, v)| match &v.kind {
                Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                _ => None,
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_round_trip() {
        let p = ProxyInfo {
            id: ProxyInfo::node_id(
                ProxyRole::Sidecar,
                "127.0.10.5".parse().ok(),
                "sleep-1",
                "sample",
            ),
            role: ProxyRole::Sidecar,
            ip: "127.0.10.5".parse().ok(),
            workload: "sleep-1".into(),
            namespace: "sample".into(),
            cluster: "east".into(),
            network: "net-east".into(),
            service_account: "sleep".into(),
            labels: [("app".to_string(), "sleep".to_string())].into(),
            locality: "us-east/us-east-1a".parse().unwrap(),
        };
        assert_eq!(ProxyInfo::from_node(&p.to_node()).unwrap(), p);
    }

    #[test]
    fn bad_nodes_are_errors() {
        for id in [
            "",
            "sidecar",
            "proxy~1.2.3.4~a.b~c",
            "sidecar~nope~a.b~c",
            "sidecar~~a~c",
        ] {
            let node = Node {
                id: id.into(),
                ..Node::default()
            };
            assert!(ProxyInfo::from_node(&node).is_err(), "{id:?}");
        }
    }
}
