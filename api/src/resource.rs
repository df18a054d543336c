//! Every kind Isthmus reads, as one enum, with the identity of each object.

use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::federation::{MeshFederation, ServiceExport};
use crate::networking::{
    DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry,
};
use crate::security::{AuthorizationPolicy, PeerAuthentication};

macro_rules! kinds {
    ($(
        $variant:ident($ty:ty) {
            group: $group:literal, version: $version:literal, plural: $plural:literal,
            namespaced: $namespaced:literal, custom: $custom:literal, also: [$($alt:literal),*]
        }
    )*) => {
        /// A kind Isthmus reads from its config sources.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum Kind { $($variant,)* }

        impl Kind {
            /// Every kind, in a fixed order.
            pub const ALL: &'static [Kind] = &[$(Kind::$variant,)*];

            /// The `kind` field, e.g. `VirtualService`.
            pub fn name(self) -> &'static str {
                match self { $(Kind::$variant => stringify!($variant),)* }
            }
            /// API group (`""` for the core group).
            pub fn group(self) -> &'static str {
                match self { $(Kind::$variant => $group,)* }
            }
            /// The version Isthmus writes.
            pub fn version(self) -> &'static str {
                match self { $(Kind::$variant => $version,)* }
            }
            /// Lowercase plural used in API paths.
            pub fn plural(self) -> &'static str {
                match self { $(Kind::$variant => $plural,)* }
            }
            /// Whether objects of this kind live in a namespace.
            pub fn namespaced(self) -> bool {
                match self { $(Kind::$variant => $namespaced,)* }
            }
            /// Whether this kind is a custom resource (Istio's or ours) rather than a core kind.
            pub fn is_custom(self) -> bool {
                match self { $(Kind::$variant => $custom,)* }
            }
            /// Older versions of the same group whose documents load unchanged.
            pub fn also_accepted_versions(self) -> &'static [&'static str] {
                match self { $(Kind::$variant => &[$($alt),*],)* }
            }
        }

        /// One object of any kind Isthmus reads.
        #[derive(Clone, Debug, PartialEq)]
        #[allow(clippy::large_enum_variant)]
        pub enum Resource { $($variant($ty),)* }

        impl Resource {
            /// The object's kind.
            pub fn kind(&self) -> Kind {
                match self { $(Resource::$variant(_) => Kind::$variant,)* }
            }
            /// The object's metadata.
            pub fn meta(&self) -> &ObjectMeta {
                match self { $(Resource::$variant(o) => &o.metadata,)* }
            }
            /// The object's metadata, mutably.
            pub fn meta_mut(&mut self) -> &mut ObjectMeta {
                match self { $(Resource::$variant(o) => &mut o.metadata,)* }
            }
            /// The object as JSON with `apiVersion` and `kind` filled in.
            pub fn to_value(&self) -> serde_json::Value {
                let mut v = match self {
                    $(Resource::$variant(o) => serde_json::to_value(o),)*
                }
                .unwrap_or(serde_json::Value::Null);
                if let Some(map) = v.as_object_mut() {
                    map.insert("apiVersion".into(), self.kind().api_version().into());
                    map.insert("kind".into(), self.kind().name().into());
                }
                v
            }
            /// Deserialize an object of `kind`, reporting the path of the first bad field.
            pub(crate) fn deserialize_as(
                kind: Kind,
                value: serde_json::Value,
            ) -> Result<Resource, serde_path_to_error::Error<serde_json::Error>> {
                Ok(match kind {
                    $(Kind::$variant => Resource::$variant(serde_path_to_error::deserialize(value)?),)*
                })
            }
        }
    };
}

kinds! {
    VirtualService(VirtualService) {
        group: "networking.istio.io", version: "v1", plural: "virtualservices",
        namespaced: true, custom: true, also: ["v1beta1", "v1alpha3"]
    }
    DestinationRule(DestinationRule) {
        group: "networking.istio.io", version: "v1", plural: "destinationrules",
        namespaced: true, custom: true, also: ["v1beta1", "v1alpha3"]
    }
    ServiceEntry(ServiceEntry) {
        group: "networking.istio.io", version: "v1", plural: "serviceentries",
        namespaced: true, custom: true, also: ["v1beta1", "v1alpha3"]
    }
    WorkloadEntry(WorkloadEntry) {
        group: "networking.istio.io", version: "v1", plural: "workloadentries",
        namespaced: true, custom: true, also: ["v1beta1", "v1alpha3"]
    }
    Gateway(Gateway) {
        group: "networking.istio.io", version: "v1", plural: "gateways",
        namespaced: true, custom: true, also: ["v1beta1", "v1alpha3"]
    }
    Sidecar(Sidecar) {
        group: "networking.istio.io", version: "v1", plural: "sidecars",
        namespaced: true, custom: true, also: ["v1beta1", "v1alpha3"]
    }
    PeerAuthentication(PeerAuthentication) {
        group: "security.istio.io", version: "v1", plural: "peerauthentications",
        namespaced: true, custom: true, also: ["v1beta1"]
    }
    AuthorizationPolicy(AuthorizationPolicy) {
        group: "security.istio.io", version: "v1", plural: "authorizationpolicies",
        namespaced: true, custom: true, also: ["v1beta1"]
    }
    MeshFederation(MeshFederation) {
        group: "federation.isthmus.io", version: "v1alpha1", plural: "meshfederations",
        namespaced: true, custom: true, also: []
    }
    ServiceExport(ServiceExport) {
        group: "multicluster.x-k8s.io", version: "v1alpha1", plural: "serviceexports",
        namespaced: true, custom: true, also: []
    }
    Service(Service) {
        group: "", version: "v1", plural: "services",
        namespaced: true, custom: false, also: []
    }
    EndpointSlice(EndpointSlice) {
        group: "discovery.k8s.io", version: "v1", plural: "endpointslices",
        namespaced: true, custom: false, also: []
    }
    Pod(Pod) {
        group: "", version: "v1", plural: "pods",
        namespaced: true, custom: false, also: []
    }
    Namespace(Namespace) {
        group: "", version: "v1", plural: "namespaces",
        namespaced: false, custom: false, also: []
    }
    Node(Node) {
        group: "", version: "v1", plural: "nodes",
        namespaced: false, custom: false, also: []
    }
}

impl Kind {
    /// `group/version`, or just `version` for the core group.
    pub fn api_version(self) -> String {
        if self.group().is_empty() {
            self.version().to_string()
        } else {
            format!("{}/{}", self.group(), self.version())
        }
    }

    /// The kind for an `apiVersion`/`kind` pair, accepting older versions of Istio's groups.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        Kind::ALL.iter().copied().find(|k| {
            k.name() == kind
                && k.group() == group
                && (k.version() == version || k.also_accepted_versions().contains(&version))
        })
    }

    /// The kind named `name` (case-insensitive; plural and lowercase forms accepted).
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL
            .iter()
            .copied()
            .find(|k| k.name().eq_ignore_ascii_case(name) || k.plural().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The identity of an object: kind, namespace (empty when cluster-scoped) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ResourceKey {
    /// A key for `kind` `namespace/name`.
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceKey {
    /// `VirtualService sample/helloworld`, or `Node node-1` when cluster-scoped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

impl Resource {
    /// The object's identity.
    pub fn key(&self) -> ResourceKey {
        let meta = self.meta();
        ResourceKey {
            kind: self.kind(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    /// `metadata.resourceVersion`, when the source set one.
    pub fn resource_version(&self) -> Option<&str> {
        self.meta().resource_version.as_deref()
    }

    /// The same object without `resourceVersion`, `managedFields` and other
    /// server-maintained metadata: two objects equal under this are the same config.
    pub fn without_server_fields(&self) -> Resource {
        let mut r = self.clone();
        let m = r.meta_mut();
        m.resource_version = None;
        m.managed_fields = None;
        m.generation = None;
        m.uid = None;
        m.creation_timestamp = None;
        r
    }
}
