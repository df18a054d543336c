//! The Envoy `Node` a proxy introduces itself with, in the format the
//! Isthmus control plane reads (Istio-style id and metadata):
//! id `<role>~<ip>~<workload>.<namespace>~<namespace>.svc.cluster.local`,
//! metadata `NAMESPACE`, `CLUSTER_ID`, `NETWORK`, `SERVICE_ACCOUNT`,
//! `WORKLOAD_NAME`, `LABELS`, and `node.locality`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::{Locality as EnvoyLocality, Node};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use isthmus_api::naming::Locality;

/// What kind of proxy is asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeRole {
    /// A sidecar next to one workload.
    Sidecar,
    /// An east-west gateway.
    Gateway,
    /// The DNS server.
    Dns,
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeRole::Sidecar => "sidecar",
            NodeRole::Gateway => "gateway",
            NodeRole::Dns => "dns",
        })
    }
}

/// Who the proxy is; [`to_node`](Self::to_node) makes the `Node` sent on
/// the first request of every stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Sidecar, gateway or DNS.
    pub role: NodeRole,
    /// The workload's (or gateway's) IP.
    pub ip: Option<IpAddr>,
    /// Pod or WorkloadEntry name.
    pub workload: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Cluster id (`east`).
    pub cluster: String,
    /// Network id (`net-east`).
    pub network: String,
    /// Service account; `default` when empty.
    pub service_account: String,
    /// Workload labels (select policies and inbound config).
    pub labels: BTreeMap<String, String>,
    /// Where the proxy runs (drives locality-aware endpoints).
    pub locality: Locality,
}

impl NodeInfo {
    /// The node id: `<role>~<ip>~<workload>.<namespace>~<namespace>.svc.cluster.local`.
    pub fn id(&self) -> String {
        let ip = self.ip.map(|i| i.to_string()).unwrap_or_default();
        format!(
            "{}~{ip}~{}.{ns}~{ns}.svc.cluster.local",
            self.role,
            self.workload,
            ns = self.namespace
        )
    }

    /// The Envoy node with id, metadata and locality.
    pub fn to_node(&self) -> Node {
        let s = |v: &str| Value {
            kind: Some(Kind::StringValue(v.to_string())),
        };
        let service_account = if self.service_account.is_empty() {
            "default"
        } else {
            &self.service_account
        };
        let labels = self.labels.iter().map(|(k, v)| (k.clone(), s(v))).collect();
        let fields = [
            ("NAMESPACE", s(&self.namespace)),
            ("CLUSTER_ID", s(&self.cluster)),
            ("NETWORK", s(&self.network)),
            ("SERVICE_ACCOUNT", s(service_account)),
            ("WORKLOAD_NAME", s(&self.workload)),
            (
                "LABELS",
                Value {
                    kind: Some(Kind::StructValue(Struct { fields: labels })),
                },
            ),
        ];
        Node {
            id: self.id(),
            metadata: Some(Struct {
                fields: fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }),
            locality: Some(EnvoyLocality {
                region: self.locality.region.clone(),
                zone: self.locality.zone.clone(),
                sub_zone: self.locality.subzone.clone(),
            }),
            user_agent_name: "isthmus".into(),
            ..Node::default()
        }
    }
}
