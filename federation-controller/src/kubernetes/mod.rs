//! Kubernetes mode: the same controller as in directory mode, fed by kube-rs
//! watchers instead of files.
//!
//! - The store is fed by [`KubeSource`] limited to the kinds the controller
//!   reads ([`KINDS`]), optionally to some namespaces.
//! - Imported ServiceEntries are written with server-side apply by
//!   [`KubeWriter`] as field manager [`FIELD_MANAGER`], labelled as ours.
//! - The cluster CA comes from a `cacerts` Secret and is reloaded when the
//!   Secret changes ([`ca`]).
//! - The MeshFederation in effect gets the finalizer [`FINALIZER`] and a
//!   `status` ([`status`]); deleting it removes every ServiceEntry imported
//!   for it before the finalizer is released ([`reconcile`]).
//!
//! Why not `kube::runtime::Controller`/`finalizer`: the controller already has
//! one view of the cluster, the config store, which feeds the exported
//! catalog, the peer tasks and the importer in both modes; a second watch of
//! MeshFederations would be a second, differently timed view of the same
//! object (a status could describe a spec the importer has not seen yet).
//! There is one MeshFederation per cluster, so a per-object work queue buys
//! nothing, and what triggers a reconcile is mostly not the object (peer
//! streams, probes, the importer's progress). So [`reconcile::run`] calls
//! `reconcile`/`error_policy` with kube-rs's signatures from the store and
//! those triggers, and implements the finalizer with the same semantics as
//! `kube::runtime::finalizer`: added on first sight, cleanup when
//! `deletionTimestamp` is set, then removed — by merge patches that carry
//! the resourceVersion seen (a concurrent change gets 409 and is retried),
//! where kube-rs uses a JSON patch with a `test` operation.
//! Peers never see any of this: nothing from the Kubernetes API (and no
//! credential) crosses to them, only the exported catalog.

pub mod ca;
pub(crate) mod reconcile;
pub mod status;

use std::sync::Arc;

use isthmus_api::Kind;
use isthmus_config::kube::{KubeSource, KubeWriter};
use isthmus_config::{ConfigSource, ConfigWriter};

/// Field manager of everything the controller writes (ServiceEntries, finalizer, status).
pub const FIELD_MANAGER: &str = "isthmus-federation";
/// Finalizer on the MeshFederation in effect: its imported ServiceEntries go first.
pub const FINALIZER: &str = "federation.isthmus.io/cleanup";

/// The kinds the controller reads: the MeshFederation, ServiceExports, what the
/// registry builds local services from, and ServiceEntries (local ones are exported too;
/// imported ones are adopted after a restart).
pub const KINDS: &[Kind] = &[
    Kind::MeshFederation,
    Kind::ServiceExport,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Pod,
    Kind::Node,
    Kind::WorkloadEntry,
    Kind::ServiceEntry,
];

/// How to reach the Kubernetes API.
#[derive(Clone, Default)]
pub struct Kubernetes {
    /// The client; `None` builds one from the environment (in-cluster, else kubeconfig).
    pub client: Option<kube::Client>,
    /// Namespaced kinds only from these namespaces (the MeshFederation's among them);
    /// `None` watches every namespace.
    pub namespaces: Option<Vec<String>>,
}

impl std::fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubernetes")
            .field("client", &self.client.as_ref().map(|_| "given"))
            .field("namespaces", &self.namespaces)
            .finish()
    }
}

impl Kubernetes {
    /// The client given, or one from the environment.
    ///
    /// # Errors
    /// If there is neither an in-cluster config nor a usable kubeconfig.
    pub async fn client(&self) -> Result<kube::Client, kube::Error> {
        match &self.client {
            Some(c) => Ok(c.clone()),
            None => kube::Client::try_default().await,
        }
    }

    /// The config source (limited to [`KINDS`]) and its writer (as [`FIELD_MANAGER`]).
    pub(crate) fn source(
        &self,
        client: kube::Client,
    ) -> (Box<dyn ConfigSource>, Arc<dyn ConfigWriter>) {
        let mut source = KubeSource::new(client.clone()).with_kinds(KINDS.to_vec());
        if let Some(ns) = &self.namespaces {
            source = source.with_namespaces(ns.clone());
        }
        let writer = KubeWriter::new(client).with_field_manager(FIELD_MANAGER);
        (Box::new(source), Arc::new(writer))
    }
}
