//! Test harness for the ADS server: a fake `ConfigState` serving real Envoy
//! messages, the server on loopback, and a real tonic ADS client.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, Node, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, VirtualHost, route,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use envoy_types::util::pack_any;
use isthmus_control_plane::xds::server::{AdsMetrics, AdsOptions, AdsServer, ProxySyncStatus};
use isthmus_control_plane::xds::{
    CLUSTER, ConfigState, ENDPOINT, GenerateError, LISTENER, PUSH_ORDER, ProxyInfo, ProxyRole,
    ROUTE, SharedState, XdsResource, is_wildcard_type,
};
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

/// Upper bound of every wait in these tests.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// What the fake generator serves: workload → type URL → name → resource.
#[derive(Clone, Debug, Default)]
pub struct Config {
    proxies: BTreeMap<String, BTreeMap<String, BTreeMap<String, Any>>>,
    /// Types the generator refuses (`GenerateError::Other`).
    refused: BTreeSet<String>,
}

impl Config {
    fn put(mut self, workload: &str, type_url: &str, name: &str, resource: Any) -> Self {
        self.proxies
            .entry(workload.into())
            .or_default()
            .entry(type_url.into())
            .or_default()
            .insert(name.into(), resource);
        self
    }

    /// A cluster; `rev` changes its content.
    pub fn cluster(self, workload: &str, name: &str, rev: u32) -> Self {
        let cluster = Cluster {
            name: name.into(),
            alt_stat_name: format!("{name}-rev{rev}"),
            ..Cluster::default()
        };
        self.put(workload, CLUSTER, name, pack_any(cluster))
    }

    /// One endpoint `10.0.0.1:<port>` for `cluster`.
    pub fn endpoints(self, workload: &str, cluster: &str, port: u32) -> Self {
        let cla = ClusterLoadAssignment {
            cluster_name: cluster.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket("10.0.0.1", port)),
                        ..Endpoint::default()
                    })),
                    ..LbEndpoint::default()
                }],
                ..LocalityLbEndpoints::default()
            }],
            ..ClusterLoadAssignment::default()
        };
        self.put(workload, ENDPOINT, cluster, pack_any(cla))
    }

    pub fn listener(self, workload: &str, name: &str, port: u32) -> Self {
        let listener = Listener {
            name: name.into(),
            address: Some(socket("0.0.0.0", port)),
            ..Listener::default()
        };
        self.put(workload, LISTENER, name, pack_any(listener))
    }

    /// A route configuration sending everything to `cluster`.
    pub fn route(self, workload: &str, name: &str, cluster: &str) -> Self {
        let action = RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
            ..RouteAction::default()
        };
        let rc = RouteConfiguration {
            name: name.into(),
            virtual_hosts: vec![VirtualHost {
                name: "all".into(),
                domains: vec!["*".into()],
                routes: vec![Route {
                    action: Some(route::Action::Route(action)),
                    ..Route::default()
                }],
                ..VirtualHost::default()
            }],
            ..RouteConfiguration::default()
        };
        self.put(workload, ROUTE, name, pack_any(rc))
    }

    pub fn refuse(mut self, type_url: &str) -> Self {
        self.refused.insert(type_url.into());
        self
    }

    /// The usual config of one proxy: clusters `a` and `b` with endpoints,
    /// listener `outbound` and route `http` to `b`.
    pub fn basic(self, workload: &str) -> Self {
        self.cluster(workload, "a", 1)
            .cluster(workload, "b", 1)
            .endpoints(workload, "a", 8080)
            .endpoints(workload, "b", 9090)
            .listener(workload, "outbound", 15001)
            .route(workload, "http", "b")
    }
}

fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    }
}

/// The fake `ConfigState`: filters the proxy's resources by subscribed names.
struct FakeState {
    version: u64,
    config: Config,
}

impl ConfigState for FakeState {
    fn version(&self) -> u64 {
        self.version
    }

    fn generate(
        &self,
        proxy: &ProxyInfo,
        type_url: &str,
        names: &BTreeSet<String>,
    ) -> Result<Vec<XdsResource>, GenerateError> {
        if !PUSH_ORDER.contains(&type_url) {
            return Err(GenerateError::UnknownType(type_url.into()));
        }
        if self.config.refused.contains(type_url) {
            return Err(GenerateError::Other(format!("{type_url} refused")));
        }
        let all = self
            .config
            .proxies
            .get(&proxy.workload)
            .and_then(|p| p.get(type_url));
        Ok(all
            .into_iter()
            .flatten()
            .filter(|(name, _)| is_wildcard_type(type_url) || names.contains(*name))
            .map(|(name, any)| XdsResource {
                name: name.clone(),
                resource: any.clone(),
            })
            .collect())
    }
}

/// The ADS server on loopback, fed by a fake state.
pub struct Harness {
    pub server: AdsServer,
    pub addr: SocketAddr,
    state: watch::Sender<SharedState>,
    version: u64,
    registry: Registry,
    shutdown: CancellationToken,
    serving: Option<JoinHandle<()>>,
}

impl Harness {
    /// Debounce 50 ms, at most 500 ms.
    pub async fn start(config: Config) -> Self {
        Self::start_with(
            config,
            Duration::from_millis(50),
            Duration::from_millis(500),
        )
        .await
    }

    pub async fn start_with(config: Config, debounce: Duration, max_debounce: Duration) -> Self {
        let mut registry = Registry::default();
        let metrics = AdsMetrics::register(&mut registry);
        let version = 1;
        let (state, rx) = watch::channel::<SharedState>(Arc::new(FakeState { version, config }));
        let options = AdsOptions {
            debounce,
            max_debounce,
            metrics,
            ..AdsOptions::default()
        };
        let server = AdsServer::new(rx, options);
        let shutdown = CancellationToken::new();
        let (addr, serving) = serve_on_loopback(&server, &shutdown).await;
        Self {
            server,
            addr,
            state,
            version,
            registry,
            shutdown,
            serving: Some(serving),
        }
    }

    /// Publishes a new state version; returns it.
    pub fn set(&mut self, config: Config) -> u64 {
        self.version += 1;
        self.state.send_replace(Arc::new(FakeState {
            version: self.version,
            config,
        }));
        self.version
    }

    pub async fn client(&self, workload: &str) -> Client {
        Client::connect(self.addr, Some(proxy(workload).to_node())).await
    }

    /// The metrics in the text exposition format.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encode");
        out
    }

    /// Waits until `check` holds for the sync status.
    pub async fn wait_status(&self, what: &str, check: impl Fn(&[ProxySyncStatus]) -> bool) {
        let waited = timeout(TIMEOUT, async {
            loop {
                if check(&self.server.sync_status()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "timed out waiting for {what}: {:#?}",
            self.server.sync_status()
        );
    }

    /// Waits until the metrics text contains `line`.
    pub async fn wait_metric(&self, line: &str) {
        let waited = timeout(TIMEOUT, async {
            while !self.metrics().lines().any(|l| l == line) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "no {line:?} in\n{}", self.metrics());
    }

    /// Cancels the shutdown token and waits for `serve` to return.
    pub async fn shutdown(&mut self) {
        self.shutdown.cancel();
        if let Some(serving) = self.serving.take() {
            timeout(TIMEOUT, serving)
                .await
                .expect("serve returns after shutdown")
                .expect("serve task");
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The `ProxyInfo` of sidecar `<workload>` in namespace `sample`, cluster `east`.
pub fn proxy(workload: &str) -> ProxyInfo {
    let ip = "127.0.10.5".parse().ok();
    ProxyInfo {
        id: ProxyInfo::node_id(ProxyRole::Sidecar, ip, workload, "sample"),
        role: ProxyRole::Sidecar,
        ip,
        workload: workload.into(),
        namespace: "sample".into(),
        cluster: "east".into(),
        network: "net-east".into(),
        service_account: workload.into(),
        labels: BTreeMap::new(),
        locality: Default::default(),
    }
}

/// A real ADS client on its own stream.
pub struct Client {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
    /// Sent with the next request only (Envoy's `set_node_on_first_message_only`).
    node: Option<Node>,
}

impl Client {
    pub async fn connect(addr: SocketAddr, node: Option<Node>) -> Self {
        let mut client = timeout(
            TIMEOUT,
            AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")),
        )
        .await
        .expect("connect in time")
        .expect("connect");
        let (tx, rx) = mpsc::channel(16);
        let rx = timeout(
            TIMEOUT,
            client.stream_aggregated_resources(ReceiverStream::new(rx)),
        )
        .await
        .expect("stream in time")
        .expect("stream opens")
        .into_inner();
        Self { tx, rx, node }
    }

    pub async fn send(&mut self, mut request: DiscoveryRequest) {
        if request.node.is_none() {
            request.node = self.node.take();
        }
        self.tx.send(request).await.expect("request stream open");
    }

    /// A request for `type_url` answering `last` (empty nonce and version when `None`).
    pub async fn request(
        &mut self,
        type_url: &str,
        names: &[&str],
        last: Option<&DiscoveryResponse>,
        error: Option<&str>,
    ) {
        self.send(DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: last.map(|r| r.nonce.clone()).unwrap_or_default(),
            version_info: last.map(|r| r.version_info.clone()).unwrap_or_default(),
            error_detail: error.map(|message| RpcStatus {
                code: 3,
                message: message.into(),
                details: vec![],
            }),
            ..DiscoveryRequest::default()
        })
        .await;
    }

    /// Subscribes to a type (first request of that type).
    pub async fn subscribe(&mut self, type_url: &str, names: &[&str]) {
        self.request(type_url, names, None, None).await;
    }

    /// ACKs a response, keeping the subscribed names.
    pub async fn ack(&mut self, response: &DiscoveryResponse, names: &[&str]) {
        self.request(&response.type_url, names, Some(response), None)
            .await;
    }

    /// NACKs a response; Envoy would send the previous version, which the server ignores.
    pub async fn nack(&mut self, response: &DiscoveryResponse, names: &[&str], message: &str) {
        self.request(&response.type_url, names, Some(response), Some(message))
            .await;
    }

    /// The next response.
    pub async fn recv(&mut self) -> DiscoveryResponse {
        next_message(&mut self.rx).await
    }

    /// The status the stream ends with.
    pub async fn recv_status(&mut self) -> tonic::Status {
        end_status(&mut self.rx).await
    }

    /// Asserts nothing arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        assert_silent(&mut self.rx, quiet, summary).await;
    }

    /// Subscribes to CDS, EDS (for the CDS names), LDS and RDS (`routes`) in
    /// Envoy's order, ACKing each; returns the four responses.
    pub async fn sync(&mut self, routes: &[&str]) -> [DiscoveryResponse; 4] {
        self.subscribe(CLUSTER, &[]).await;
        let cds = self.recv().await;
        assert_eq!(cds.type_url, CLUSTER);
        self.ack(&cds, &[]).await;
        let clusters = names(&cds);
        let clusters: Vec<&str> = clusters.iter().map(String::as_str).collect();
        self.subscribe(ENDPOINT, &clusters).await;
        let eds = self.recv().await;
        assert_eq!(eds.type_url, ENDPOINT);
        self.ack(&eds, &clusters).await;
        self.subscribe(LISTENER, &[]).await;
        let lds = self.recv().await;
        assert_eq!(lds.type_url, LISTENER);
        self.ack(&lds, &[]).await;
        self.subscribe(ROUTE, routes).await;
        let rds = self.recv().await;
        assert_eq!(rds.type_url, ROUTE);
        self.ack(&rds, routes).await;
        [cds, eds, lds, rds]
    }
}

/// Resource names in a response, decoded from the Envoy messages.
pub fn names(response: &DiscoveryResponse) -> Vec<String> {
    response.resources.iter().map(resource_name).collect()
}

fn resource_name(any: &Any) -> String {
    let bytes = any.value.as_slice();
    match any.type_url.as_str() {
        CLUSTER => Cluster::decode(bytes).expect("Cluster").name,
        ENDPOINT => {
            ClusterLoadAssignment::decode(bytes)
                .expect("ClusterLoadAssignment")
                .cluster_name
        }
        LISTENER => Listener::decode(bytes).expect("Listener").name,
        ROUTE => {
            RouteConfiguration::decode(bytes)
                .expect("RouteConfiguration")
                .name
        }
        other => panic!("unexpected resource type {other}"),
    }
}

/// `(type URL, names)` of a response, for assertions.
pub fn summary(response: &DiscoveryResponse) -> (String, Vec<String>) {
    (response.type_url.clone(), names(response))
}

/// The next message on an ADS stream (either protocol), within [`TIMEOUT`].
pub async fn next_message<T>(rx: &mut Streaming<T>) -> T {
    timeout(TIMEOUT, rx.message())
        .await
        .expect("a response in time")
        .expect("stream healthy")
        .expect("stream open")
}

/// The status an ADS stream ends with, within [`TIMEOUT`].
pub async fn end_status<T: std::fmt::Debug>(rx: &mut Streaming<T>) -> tonic::Status {
    match timeout(TIMEOUT, rx.message())
        .await
        .expect("stream ends in time")
    {
        Err(status) => status,
        Ok(other) => panic!("expected an error status, got {other:?}"),
    }
}

/// Asserts nothing arrives on `rx` for `quiet` (what did is shown by `summary`).
pub async fn assert_silent<T, S: std::fmt::Debug>(
    rx: &mut Streaming<T>,
    quiet: Duration,
    summary: impl Fn(&T) -> S,
) {
    if let Ok(got) = timeout(quiet, rx.message()).await {
        panic!(
            "expected silence, got {:?}",
            got.map(|r| r.map(|r| summary(&r)))
        );
    }
}

/// Serves `server` on `127.0.0.1:0` until `shutdown`: its address and the
/// serving task.
pub async fn serve_on_loopback(
    server: &AdsServer,
    shutdown: &CancellationToken,
) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let serving = tokio::spawn({
        let server = server.clone();
        let shutdown = shutdown.clone();
        async move { server.serve(listener, shutdown).await.expect("ADS serves") }
    });
    (addr, serving)
}
