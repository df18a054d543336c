//! The real control plane (config store → controller → ADS server) on
//! loopback, for tests that change the store and watch what proxies get.

use std::net::SocketAddr;
use std::time::Duration;

use isthmus_api::Resource;
use isthmus_api::load::load_yaml;
use isthmus_config::Store;
use isthmus_control_plane::controller;
use isthmus_control_plane::registry::ClusterContext;
use isthmus_control_plane::xds::generate::MeshConfig;
use isthmus_control_plane::xds::server::{AdsOptions, AdsServer};
use tokio_util::sync::CancellationToken;

use super::ads_support::Client;
use isthmus_control_plane::xds::ProxyInfo;

/// The origin every test object is stored under.
pub const ORIGIN: &str = "mesh.yaml";

/// Cluster `east` on network `net-east`.
pub fn mesh() -> MeshConfig {
    MeshConfig {
        cluster: ClusterContext {
            cluster: "east".into(),
            network: "net-east".into(),
            domain: "cluster.local".into(),
        },
        ..MeshConfig::default()
    }
}

/// The objects of `yaml`, which must load without error.
pub fn resources(yaml: &str) -> Vec<Resource> {
    let loaded = load_yaml(Some(ORIGIN), yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    loaded.resources
}

/// Replaces one object in the store; the store's new version.
pub fn upsert(store: &Store, yaml: &str) -> u64 {
    let mut r = resources(yaml);
    store.update(|t| t.upsert(ORIGIN, r.remove(0)));
    store.snapshot().version()
}

/// The control plane serving a store, with the default debounces of the
/// tests (100 ms, endpoints 10 ms). Stops when dropped.
pub struct ControlPlane {
    pub store: Store,
    pub server: AdsServer,
    pub addr: SocketAddr,
    shutdown: CancellationToken,
}

impl ControlPlane {
    /// Serves `yaml` (the mesh) on `127.0.0.1:0`.
    pub async fn start(yaml: &str) -> Self {
        let store = Store::new();
        store.replace_origin(ORIGIN, resources(yaml));
        let shutdown = CancellationToken::new();
        let published = controller::spawn(&store, mesh(), shutdown.clone());
        let server = AdsServer::new(
            published.state.clone(),
            AdsOptions {
                debounce: Duration::from_millis(100),
                endpoint_debounce: Duration::from_millis(10),
                ..AdsOptions::default()
            },
        );
        let (addr, _serving) = super::ads_support::serve_on_loopback(&server, &shutdown).await;
        Self {
            store,
            server,
            addr,
            shutdown,
        }
    }

    /// A state-of-the-world ADS client connected as `p`.
    pub async fn client(&self, p: &ProxyInfo) -> Client {
        Client::connect(self.addr, Some(p.to_node())).await
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
