//! Kubernetes-mode harness: per cluster one fake API server (the kinds the
//! controller reads registered, the `cacerts` Secret stored), with the
//! directories, gateway and controller of [`Cluster`] around it; the
//! controller runs in Kubernetes mode against that API server.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use isthmus_federation::kubernetes::Kubernetes;
use isthmus_federation::{CaSource, Options};
use isthmus_identity::tool::RootCa;
use isthmus_test_support::apiserver::FakeApiServer;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use super::{Cluster, ClusterSpec, timings};

/// Namespace of the MeshFederation and the CA Secret.
pub const NS: &str = "isthmus-system";
/// Name of the MeshFederation (what the chart renders).
pub const MESH: &str = "mesh";
pub const CA_SECRET: &str = "cacerts";
pub const MF_API: &str = "federation.isthmus.io/v1alpha1";
pub const SE_API: &str = "networking.istio.io/v1";
pub const EXPORT_API: &str = "multicluster.x-k8s.io/v1alpha1";

/// One cluster with its own API server.
pub struct KubeCluster {
    pub base: Cluster,
    pub api: FakeApiServer,
}

/// The `cacerts` files of `dir` as a Secret.
pub fn cacerts_secret(dir: &Path) -> Value {
    let data = [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ]
    .into_iter()
    .map(|f| {
        let bytes = std::fs::read(dir.join(f)).expect("cacerts file");
        (f.to_owned(), ByteString(bytes))
    })
    .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET.into()),
            namespace: Some(NS.into()),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..Secret::default()
    };
    let mut v = serde_json::to_value(secret).expect("secret");
    v["apiVersion"] = "v1".into();
    v["kind"] = "Secret".into();
    v
}

impl KubeCluster {
    /// A cluster whose CA (under `root`) is in its API server's `cacerts` Secret.
    pub async fn new(spec: ClusterSpec, root: &RootCa) -> Self {
        let base = Cluster::new(spec, root);
        let api = FakeApiServer::start().await;
        for (v, k, p) in [
            (MF_API, "MeshFederation", "meshfederations"),
            (EXPORT_API, "ServiceExport", "serviceexports"),
            (SE_API, "ServiceEntry", "serviceentries"),
            (SE_API, "WorkloadEntry", "workloadentries"),
            ("v1", "Secret", "secrets"),
        ] {
            api.register(v, k, p, true);
        }
        api.apply(cacerts_secret(&base.ca_dir()));
        Self { base, api }
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.base.spec
    }

    /// Creates the MeshFederation `mesh` listing `peers` (each with its own trust domain).
    pub fn link(&self, peers: &[&ClusterSpec]) {
        let s = self.spec();
        let peers: Vec<Value> = peers
            .iter()
            .map(|p| {
                json!({
                    "name": p.name, "federationEndpoint": p.federation().to_string(),
                    "gatewayAddresses": [p.gateway().to_string()], "network": p.network,
                    "locality": p.locality, "trustDomain": p.trust_domain,
                })
            })
            .collect();
        self.api.apply(json!({
            "apiVersion": MF_API, "kind": "MeshFederation",
            "metadata": {"name": MESH, "namespace": NS},
            "spec": {
                "local": {
                    "cluster": s.name, "network": s.network, "locality": s.locality,
                    "trustDomain": s.trust_domain, "gatewayAddresses": [s.gateway().to_string()],
                    "federationListen": s.federation().to_string(),
                },
                "peers": peers,
            },
        }));
    }

    /// A Service `name` in `sample` with `endpoints` ready endpoints in one EndpointSlice.
    pub fn add_service(&self, name: &str, endpoints: u8) {
        self.api.apply(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "sample"},
            "spec": {"clusterIP": "10.96.0.10", "selector": {"app": name},
                     "ports": [{"name": "http", "port": 5000, "protocol": "TCP"}]},
        }));
        let eps: Vec<Value> = (1..=endpoints)
            .map(|i| json!({"addresses": [format!("10.1.0.{i}")], "conditions": {"ready": true}}))
            .collect();
        self.api.apply(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-abc"), "namespace": "sample",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "endpoints": eps,
            "ports": [{"name": "http", "port": 5000, "protocol": "TCP"}],
        }));
    }

    pub fn export(&self, name: &str) {
        self.api.apply(json!({
            "apiVersion": EXPORT_API, "kind": "ServiceExport",
            "metadata": {"name": name, "namespace": "sample"},
        }));
    }

    pub fn unexport(&self, name: &str) {
        self.api
            .delete(EXPORT_API, "ServiceExport", Some("sample"), name)
            .expect("export existed");
    }

    /// Kubernetes mode against this cluster's API server, CA from the Secret.
    pub fn options(&self) -> Options {
        let mut o = Options::kubernetes(
            &self.spec().name,
            Kubernetes {
                client: Some(self.api.client()),
                namespaces: None,
            },
            CaSource::Secret(format!("{NS}/{CA_SECRET}")),
        );
        o.admin = Some(std::net::SocketAddr::new(self.spec().ip, 0));
        o.timings = timings();
        o.ca_reload = Some(Duration::from_millis(100));
        o.trust_bundle_out = Some(self.base.trust_bundle_out());
        o
    }

    pub async fn start(&mut self) {
        let options = self.options();
        self.base.start_with(options).await;
    }

    /// The MeshFederation as stored, if it exists.
    pub fn mesh(&self) -> Option<Value> {
        self.api.get(MF_API, "MeshFederation", Some(NS), MESH)
    }

    /// The status entry of `peer` in the MeshFederation.
    pub fn peer_status(&self, peer: &str) -> Option<Value> {
        let mf = self.mesh()?;
        mf["status"]["peers"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == peer)
            .cloned()
    }

    /// Imported ServiceEntries (ours by label) in the API server, by name.
    pub fn imported(&self) -> BTreeMap<String, Value> {
        self.api
            .list(SE_API, "ServiceEntry")
            .into_iter()
            .filter(|se| {
                se["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "isthmus-federation"
            })
            .map(|se| {
                (
                    se["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    se,
                )
            })
            .collect()
    }
}
