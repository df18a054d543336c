//! `Sidecar`: which services a sidecar proxy is told about (config scoping).
//!
//! Isthmus implements the outbound half: `workloadSelector` picks the
//! workloads, `egress[].hosts` (`<namespace>/<dnsName>`) limits the
//! services they get clusters, endpoints, listeners and routes for, and
//! `egress[].port` limits one egress listener to one port. The inbound half
//! (`ingress`), listener binding (`bind`, `captureMode`) and connection pool
//! settings are Istio fields Isthmus rejects by name.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::unsupported::Unsupported;

/// Istio `Sidecar` spec.
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Sidecar",
    namespaced,
    derive = "PartialEq"
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SidecarSpec {
    /// The workloads (in the Sidecar's namespace) this applies to; none:
    /// every workload of the namespace (or of the mesh, in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<SidecarWorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Unsupported>,
    /// What the selected workloads may reach; empty: Istio's default, `*/*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressListener>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_connection_pool: Option<Unsupported>,
}

/// Istio `WorkloadSelector` of a Sidecar (`labels`, not `matchLabels`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SidecarWorkloadSelector {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Istio `IstioEgressListener`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressListener {
    /// Limits this listener to one port; none: every port no other listener names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<SidecarPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<Unsupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<Unsupported>,
    /// `<namespace>/<dnsName>`: namespace a name, `.` (the Sidecar's own),
    /// `*` (any) or `~` (none); dnsName `*`, `*.suffix` or a full name.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// Istio `SidecarPort`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SidecarPort {
    #[serde(default)]
    pub number: u32,
    /// `HTTP`, `HTTP2`, `GRPC`, `TCP`, `TLS`, `HTTPS`, `MONGO`: when set,
    /// only service ports of the same kind (HTTP-routed or not) are admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// A label for the port (as in Istio, no behaviour).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<Unsupported>,
}

/// Istio `OutboundTrafficPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<OutboundTrafficMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<Unsupported>,
}

/// Istio `OutboundTrafficPolicy.Mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficMode {
    /// Only services in the registry (and in scope) are reachable.
    RegistryOnly,
    /// Unknown destinations pass through (what Isthmus sidecars do).
    AllowAny,
}

/// One parsed `egress[].hosts` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressHost {
    pub namespace: EgressNamespace,
    /// Lowercase, without a trailing dot.
    pub host: HostPattern,
}

/// The namespace part of an egress host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EgressNamespace {
    /// `*`: any namespace.
    Any,
    /// `~`: no namespace (the entry imports nothing).
    None,
    /// A namespace by name (`.` already replaced by the Sidecar's own).
    Named(String),
}

/// The dnsName part of an egress host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// `*`.
    Any,
    /// `*.suffix`: stored as `.suffix`.
    Suffix(String),
    Exact(String),
}

impl EgressHost {
    /// Parses `<namespace>/<dnsName>` for a Sidecar in `own_namespace`
    /// (shape only; [`crate::validate`] checks the names).
    pub fn parse(entry: &str, own_namespace: &str) -> Option<EgressHost> {
        let (ns, host) = entry.split_once('/')?;
        if ns.is_empty() || host.is_empty() {
            return None;
        }
        let namespace = match ns {
            "*" => EgressNamespace::Any,
            "~" => EgressNamespace::None,
            "." => EgressNamespace::Named(own_namespace.to_string()),
            other => EgressNamespace::Named(other.to_string()),
        };
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host.strip_prefix('*') {
            HostPattern::Suffix(suffix.to_string())
        } else {
            HostPattern::Exact(host)
        };
        Some(EgressHost { namespace, host })
    }

    /// Whether a service `hostname` (lowercase) of `namespace` is imported.
    pub fn matches(&self, namespace: &str, hostname: &str) -> bool {
        let ns = match &self.namespace {
            EgressNamespace::Any => true,
            EgressNamespace::None => false,
            EgressNamespace::Named(n) => n == namespace,
        };
        ns && match &self.host {
            HostPattern::Any => true,
            HostPattern::Suffix(s) => hostname.ends_with(s.as_str()),
            HostPattern::Exact(h) => h == hostname,
        }
    }
}
