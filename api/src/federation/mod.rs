//! Federation kinds: `MeshFederation` (ours) and MCS `ServiceExport`.

mod mesh_federation;
mod service_export;

pub use mesh_federation::*;
pub use service_export::*;

/// API group of `MeshFederation`.
pub const GROUP: &str = "federation.isthmus.io";
/// API group of the Kubernetes Multi-Cluster Services kinds.
pub const MCS_GROUP: &str = "multicluster.x-k8s.io";
