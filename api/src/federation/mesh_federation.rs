//! `MeshFederation`: this cluster's identity in the federation and its peers.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `federation.isthmus.io/v1alpha1` `MeshFederation` spec.
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "federation.isthmus.io",
    version = "v1alpha1",
    kind = "MeshFederation",
    namespaced,
    derive = "PartialEq",
    status = "MeshFederationStatus",
    shortname = "mf",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.local.cluster"}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshFederationSpec {
    /// This cluster.
    #[serde(default)]
    pub local: LocalCluster,
    /// The clusters this one federates with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Peer>,
    /// Which peer services may be imported (everything exported when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_policy: Option<ImportPolicy>,
}

/// This cluster's identity and addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalCluster {
    /// Cluster name (a DNS label), used in `topology.istio.io/cluster`.
    #[serde(default)]
    pub cluster: String,
    /// Network name; endpoints in another network are reached via its gateway.
    #[serde(default)]
    pub network: String,
    /// `region/zone/subzone` of this cluster.
    #[serde(default)]
    pub locality: String,
    /// SPIFFE trust domain of this cluster's intermediate CA.
    #[serde(default)]
    pub trust_domain: String,
    /// East-west gateway addresses peers dial: `host:port`, host an IP or a DNS name.
    #[serde(default)]
    pub gateway_addresses: Vec<String>,
    /// `ip:port` the federation API listens on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation_listen: Option<String>,
}

/// A federated peer cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Peer {
    /// Peer cluster name (a DNS label).
    #[serde(default)]
    pub name: String,
    /// `host:port` of the peer's federation API.
    #[serde(default)]
    pub federation_endpoint: String,
    /// The peer's east-west gateway addresses (`host:port`).
    #[serde(default)]
    pub gateway_addresses: Vec<String>,
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub locality: String,
    /// Trust domain the peer's certificates must carry.
    #[serde(default)]
    pub trust_domain: String,
    /// PEM trust anchors for the peer, when it does not share our root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_bundle: Option<String>,
}

/// Limits on what is imported from peers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportPolicy {
    /// Namespaces whose exported services may be imported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// `namespace/name` of services that may be imported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
}

/// What the federation controller last saw of each peer, written through the
/// `/status` subresource (Kubernetes mode; in directory mode the controller's
/// admin `/status` says the same).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshFederationStatus {
    /// `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One entry per peer of the spec, by name.
    #[serde(default)]
    pub peers: Vec<PeerStatus>,
    /// `Ready`: every peer connected and the last reconcile succeeded.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// What the controller knows about one peer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// The peer's name (`spec.peers[].name`).
    pub name: String,
    /// State of the catalog stream from the peer.
    pub connection: PeerConnection,
    /// When the peer's last catalog arrived (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<Time>,
    /// Services imported from the peer (ServiceEntries written here).
    #[serde(default)]
    pub imported_services: u32,
    /// Services the peer exports (its last catalog).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported_services: Option<u32>,
    /// Lowest round trip of the peer's healthy gateways at their last probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_latency_ms: Option<f64>,
    /// Why the stream or the gateway probes last failed, while they do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// State of the catalog stream from a peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PeerConnection {
    /// No stream yet (the first attempt is in progress).
    #[default]
    Connecting,
    /// A stream is open and heartbeats arrive.
    Connected,
    /// The last attempt or stream failed; retrying with backoff.
    Down,
}
