//! Test harness: a real control plane in-process on loopback (as
//! `isthmus control-plane` runs it, with a directory config), the sidecar
//! node, and bounded waits.

#![allow(dead_code)]

pub mod fake;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use isthmus_control_plane::run::{Options, RunError, Source, start};
use isthmus_control_plane::xds::{ProxyInfo, ProxyRole};
use isthmus_proxy_core::ProxyConfig;
use isthmus_proxy_core::xds::{
    BackoffConfig, PlaintextConnector, XdsClient, XdsOptions, XdsProtocol,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// helloworld (port 5000, one endpoint) and the sidecar's own workload, sleep (port 80).
pub const SERVICES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: helloworld, namespace: sample}
spec:
  hosts: [helloworld.sample.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5000, name: http}]
  workloadSelector: {labels: {app: helloworld}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: helloworld-v1, namespace: sample}
spec: {address: 127.0.10.11, labels: {app: helloworld, version: v1}, serviceAccount: helloworld}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: sleep, namespace: sample}
spec:
  hosts: [sleep.sample.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: sleep}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: sleep, namespace: sample}
spec: {address: 127.0.10.21, labels: {app: sleep}, serviceAccount: sleep}
"#;

/// A second service: reviews on 9080 with one endpoint at 127.0.10.31.
pub const REVIEWS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: sample}
spec:
  hosts: [reviews.sample.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: sample}
spec: {address: 127.0.10.31, labels: {app: reviews}, serviceAccount: reviews}
"#;

pub const HELLOWORLD_CLUSTER: &str = "outbound|5000||helloworld.sample.svc.cluster.local";
pub const REVIEWS_CLUSTER: &str = "outbound|9080||reviews.sample.svc.cluster.local";

/// A config directory and a bootstrap token file.
pub struct ConfigDir {
    _dir: tempfile::TempDir,
    pub config: PathBuf,
    pub tokens: PathBuf,
}

impl ConfigDir {
    pub fn new(services: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::create_dir(&config).unwrap();
        std::fs::write(config.join("services.yaml"), services).unwrap();
        let tokens = dir.path().join("tokens.yaml");
        std::fs::write(
            &tokens,
            "tok-sleep: {namespace: sample, serviceAccount: sleep}\n",
        )
        .unwrap();
        Self {
            _dir: dir,
            config,
            tokens,
        }
    }

    pub fn write(&self, file: &str, contents: &str) {
        std::fs::write(self.config.join(file), contents).unwrap();
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.config.join(file)).unwrap();
    }
}

/// A running control plane; stopped on drop.
pub struct ControlPlane {
    pub xds: SocketAddr,
    pub debug: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), RunError>>>,
}

impl ControlPlane {
    /// Starts a control plane on `xds_listen` and waits until its registry
    /// holds `marker` (an endpoint address), so the first push has it.
    pub async fn start(dir: &ConfigDir, xds_listen: SocketAddr, marker: &str) -> Self {
        let shutdown = CancellationToken::new();
        let options = Options {
            cluster: "east".into(),
            network: "net-east".into(),
            domain: "cluster.local".into(),
            source: Source::Directory(dir.config.clone()),
            ca_dir: None,
            ca_secret: None,
            trust_domain: "east.isthmus.local".into(),
            bootstrap_tokens: Some(dir.tokens.clone()),
            xds_listen,
            debug_listen: "127.0.0.1:0".parse().unwrap(),
            drain_grace: Duration::from_millis(200),
        };
        let (bound, run) = start(options, shutdown.clone()).await.unwrap();
        let cp = Self {
            xds: bound.xds,
            debug: bound.debug,
            shutdown,
            task: Some(tokio::spawn(run)),
        };
        cp.wait_registry(marker).await;
        cp
    }

    pub async fn wait_registry(&self, marker: &str) {
        tokio::time::timeout(WAIT, async {
            loop {
                if http_get(self.debug, "/debug/registryz")
                    .await
                    .contains(marker)
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("registry never showed {marker}"));
    }

    /// Cancels and waits until every port is closed.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("control plane stopped in time")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut buf = String::new();
    if s.write_all(request.as_bytes()).await.is_ok() {
        let _ = s.read_to_string(&mut buf).await;
    }
    buf
}

/// The sleep sidecar in namespace sample, as the control plane parses it.
pub fn sidecar_node() -> Node {
    ProxyInfo {
        id: ProxyInfo::node_id(
            ProxyRole::Sidecar,
            "127.0.10.21".parse().ok(),
            "sleep",
            "sample",
        ),
        role: ProxyRole::Sidecar,
        ip: "127.0.10.21".parse().ok(),
        workload: "sleep".into(),
        namespace: "sample".into(),
        cluster: "east".into(),
        network: "net-east".into(),
        service_account: "sleep".into(),
        labels: [("app".to_string(), "sleep".to_string())].into(),
        locality: "us-east/us-east-1a".parse().unwrap(),
    }
    .to_node()
}

/// Client options for tests: the sidecar node, `default` served locally,
/// fast backoff, `protocol`.
pub fn options(protocol: XdsProtocol) -> XdsOptions {
    let mut options = XdsOptions::new(sidecar_node());
    options.protocol = protocol;
    options.local_secrets = ["default".to_string()].into();
    options.backoff = BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        stable_after: Duration::from_secs(1),
    };
    options
}

/// A client of the control plane at `addr`.
pub fn client(addr: SocketAddr, options: XdsOptions, shutdown: &CancellationToken) -> XdsClient {
    let connector = PlaintextConnector::new(&format!("http://{addr}")).unwrap();
    XdsClient::spawn(options, connector, shutdown.clone())
}

/// Waits (bounded) for a published config satisfying `pred`.
pub async fn wait_config(
    rx: &mut watch::Receiver<Arc<ProxyConfig>>,
    what: &str,
    pred: impl Fn(&ProxyConfig) -> bool,
) -> Arc<ProxyConfig> {
    tokio::time::timeout(WAIT, rx.wait_for(|c| pred(c)))
        .await
        .unwrap_or_else(|_| panic!("no published config {what} within {WAIT:?}"))
        .expect("client running")
        .clone()
}

/// Every reference in `config` resolves: routes of listeners, endpoints of
/// EDS clusters, SDS secrets except those the proxy serves itself.
pub fn assert_consistent(config: &ProxyConfig, local_secrets: &BTreeSet<String>) {
    let secrets: BTreeSet<String> = config
        .secret_names()
        .difference(local_secrets)
        .cloned()
        .collect();
    let missing = config.missing(&secrets);
    assert!(missing.is_empty(), "inconsistent config: {missing}");
}
