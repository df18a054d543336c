//! MCS `ServiceExport`: marks the Service of the same name and namespace as
//! shared with peer clusters. Nothing is shared without one.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `multicluster.x-k8s.io/v1alpha1` `ServiceExport` spec (empty, as in MCS).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceExport",
    namespaced,
    derive = "PartialEq",
    status = "ServiceExportStatus",
    shortname = "svcex"
)]
#[serde(deny_unknown_fields)]
pub struct ServiceExportSpec {}

/// MCS `ServiceExportStatus`: conditions such as `Valid` and `Conflict`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceExportStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}
