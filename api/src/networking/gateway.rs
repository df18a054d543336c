//! `Gateway`: listeners of a gateway workload. Isthmus serves the
//! east-west `AUTO_PASSTHROUGH` form, limited to exported services.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::unsupported::Unsupported;

/// Istio `Gateway` spec.
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Gateway",
    namespaced,
    derive = "PartialEq",
    shortname = "gw"
)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    #[serde(default)]
    pub servers: Vec<Server>,
    /// Labels of the gateway workloads this applies to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

/// Istio `Port` of a gateway server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayPort {
    #[serde(default)]
    pub number: u32,
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// Istio `Server`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Server {
    #[serde(default)]
    pub port: GatewayPort,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// `[namespace/]host` entries exposed by this server.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Option<Unsupported>,
}

/// Istio `ServerTLSSettings.TLSmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    Passthrough,
    Simple,
    Mutual,
    AutoPassthrough,
    IstioMutual,
    OptionalMutual,
}

/// Istio `ServerTLSSettings`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerTlsSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ServerTlsMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<Unsupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<Unsupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<Unsupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<Unsupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_certificate_spki: Option<Unsupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_certificate_hash: Option<Unsupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<Unsupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_protocol_version: Option<Unsupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher_suites: Option<Unsupported>,
}
