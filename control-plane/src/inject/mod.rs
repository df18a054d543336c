//! Sidecar injection: the mutating admission webhook (`POST /inject`).
//!
//! The Kubernetes API server sends an `admission.k8s.io/v1` AdmissionReview
//! for every Pod created in a namespace labelled `isthmus-injection=enabled`
//! (the chart's `namespaceSelector`); the answer allows the Pod and carries a
//! JSON Patch that adds
//!
//! - the init container `isthmus-init` (`isthmus iptables --apply`, with
//!   `NET_ADMIN`/`NET_RAW`) that installs the transparent-capture redirect,
//! - the sidecar container `isthmus-proxy` (`isthmus sidecar --mode
//!   transparent`): its bootstrap is its argument list, filled from the
//!   downward API (`$(POD_NAMESPACE)/$(POD_NAME)`, `$(POD_IP)`,
//!   `$(SERVICE_ACCOUNT)`) and from the Pod's labels at admission,
//! - a projected service-account token (audience `isthmus-ca`) that the
//!   sidecar presents to the CA (checked by TokenReview),
//! - the annotation `sidecar.isthmus.io/status` saying what was injected.
//!
//! ```text
//! API server ──HTTPS──► server.rs ──► review.rs (AdmissionReview v1) ──► patch.rs (Pod → JSON Patch)
//! ```
//!
//! Injection is idempotent (a Pod that already has `isthmus-proxy` or the
//! status annotation is allowed unchanged) and skips Pods that opt out
//! (`sidecar.istio.io/inject: "false"`, annotation or label) and
//! `hostNetwork` Pods (iptables there would capture the node's traffic). The
//! webhook never denies a Pod: anything it cannot or must not inject is
//! allowed unchanged, with the reason logged and counted.

mod patch;
mod review;
mod server;

#[cfg(test)]
mod tests;

pub use patch::{Decision, INIT_CONTAINER, SIDECAR_CONTAINER, STATUS_ANNOTATION, TOKEN_VOLUME};
pub use review::{ReviewError, review};
pub use server::{InjectMetrics, TlsFiles, WebhookError, serve};

/// Default HTTPS port of the injection webhook.
pub const DEFAULT_INJECT_PORT: u16 = 15017;

/// What an injected Pod gets: the image, where its sidecar finds the
/// control plane, and this cluster's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// Image of both injected containers (the `isthmus` binary, with iptables).
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`.
    pub image_pull_policy: String,
    /// The control plane's xDS and CA address as sidecars dial it (host:port).
    pub control_plane: String,
    /// This cluster's name (`--cluster`).
    pub cluster: String,
    /// This cluster's network (`--network`).
    pub network: String,
    /// Locality `region/zone` given to every sidecar; empty for none. A Pod's
    /// node is not known at admission, so this is the cluster's default.
    pub locality: String,
    /// Audience of the projected token; the CA's TokenReview checks it.
    pub token_audience: String,
    /// Lifetime of the projected token (the kubelet refreshes the file).
    pub token_expiration_seconds: i64,
    /// The proxy's uid and gid (excluded from capture by the iptables rules).
    pub proxy_uid: i64,
}

impl Default for Template {
    fn default() -> Self {
        Self {
            image: "isthmus:dev".into(),
            image_pull_policy: "IfNotPresent".into(),
            control_plane: "isthmus-control-plane.isthmus-system.svc:15010".into(),
            cluster: String::new(),
            network: String::new(),
            locality: String::new(),
            token_audience: "isthmus-ca".into(),
            token_expiration_seconds: 86_400,
            proxy_uid: 1337,
        }
    }
}
