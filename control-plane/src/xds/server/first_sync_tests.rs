//! First-sync places over real gRPC streams on loopback: with one place, a
//! second proxy's first response waits until the first proxy has synced
//! (CDS → EDS → LDS, each ACKed), or has held its place too long.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

use super::{AdsOptions, AdsServer};
use crate::xds::{
    CLUSTER, ConfigState, ENDPOINT, GenerateError, LISTENER, ProxyInfo, ProxyRole, ROUTE,
    SharedState, XdsResource, is_wildcard_type,
};

const WAIT: Duration = Duration::from_secs(10);
/// How long a proxy without a place is watched for (wrongly) getting a response.
const QUIET: Duration = Duration::from_millis(300);

/// Two clusters with assignments, one listener, one route configuration.
struct Mesh;

impl ConfigState for Mesh {
    fn version(&self) -> u64 {
        1
    }

    fn generate(
        &self,
        _: &ProxyInfo,
        type_url: &str,
        names: &BTreeSet<String>,
    ) -> Result<Vec<XdsResource>, GenerateError> {
        let all: &[&str] = match type_url {
            CLUSTER | ENDPOINT => &["c1", "c2"],
            LISTENER => &["l1"],
            ROUTE => &["r1"],
            other => return Err(GenerateError::UnknownType(other.into())),
        };
        Ok(all
            .iter()
            .filter(|n| is_wildcard_type(type_url) || names.contains(**n))
            .map(|n| XdsResource {
                name: (*n).into(),
                resource: Any {
                    type_url: type_url.into(),
                    value: n.as_bytes().to_vec(),
                },
            })
            .collect())
    }
}

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    _source: watch::Sender<SharedState>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A server with one push place (and so one first-sync place).
async fn start(first_sync_hold: Duration) -> Server {
    let (source, rx) = watch::channel::<SharedState>(std::sync::Arc::new(Mesh));
    let server = AdsServer::new(
        rx,
        AdsOptions {
            push_throttle: 1,
            first_sync_hold,
            ..AdsOptions::default()
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move { server.serve(listener, shutdown).await }
    });
    Server {
        addr,
        shutdown,
        _source: source,
    }
}

/// One simulated sidecar on its own connection.
struct Proxy {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
    node_sent: bool,
    workload: &'static str,
}

impl Proxy {
    async fn connect(addr: SocketAddr, workload: &'static str) -> Self {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let (tx, rx) = mpsc::channel(8);
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        Self {
            tx,
            rx,
            node_sent: false,
            workload,
        }
    }

    /// Subscribes to `type_url` (`names`), or ACKs `acked` with them.
    async fn request(&mut self, type_url: &str, names: &[&str], acked: Option<&DiscoveryResponse>) {
        let node = (!self.node_sent).then(|| {
            let ip = "127.0.10.5".parse().ok();
            ProxyInfo {
                id: ProxyInfo::node_id(ProxyRole::Sidecar, ip, self.workload, "sample"),
                role: ProxyRole::Sidecar,
                ip,
                workload: self.workload.into(),
                namespace: "sample".into(),
                cluster: "east".into(),
                network: "net-east".into(),
                service_account: self.workload.into(),
                labels: BTreeMap::new(),
                locality: Default::default(),
            }
            .to_node()
        });
        self.node_sent = true;
        let request = DiscoveryRequest {
            node,
            type_url: type_url.into(),
            resource_names: names.iter().map(|n| (*n).to_string()).collect(),
            version_info: acked.map(|r| r.version_info.clone()).unwrap_or_default(),
            response_nonce: acked.map(|r| r.nonce.clone()).unwrap_or_default(),
            ..DiscoveryRequest::default()
        };
        self.tx.send(request).await.expect("send");
    }

    async fn recv(&mut self, type_url: &str) -> DiscoveryResponse {
        let response = timeout(WAIT, self.rx.message())
            .await
            .expect("response in time")
            .expect("stream open")
            .expect("a response");
        assert_eq!(response.type_url, type_url);
        response
    }

    async fn expect_silence(&mut self, quiet: Duration) {
        if let Ok(got) = timeout(quiet, self.rx.message()).await {
            panic!("expected no response yet, got {got:?}");
        }
    }
}

#[tokio::test]
async fn a_proxy_in_its_first_sync_finishes_before_the_next_one_starts() {
    let server = start(WAIT * 3).await;
    let mut a = Proxy::connect(server.addr, "a").await;
    a.request(CLUSTER, &[], None).await;
    let cds = a.recv(CLUSTER).await;

    // The only place is a's until it has synced.
    let mut b = Proxy::connect(server.addr, "b").await;
    b.request(CLUSTER, &[], None).await;
    b.expect_silence(QUIET).await;

    a.request(CLUSTER, &[], Some(&cds)).await;
    a.request(ENDPOINT, &["c1", "c2"], None).await;
    let eds = a.recv(ENDPOINT).await;
    assert_eq!(eds.resources.len(), 2);
    a.request(ENDPOINT, &["c1", "c2"], Some(&eds)).await;
    a.request(LISTENER, &[], None).await;
    let lds = a.recv(LISTENER).await;
    b.expect_silence(QUIET).await;

    // a has answered every response, LDS included: b's turn, in time.
    let started = Instant::now();
    a.request(LISTENER, &[], Some(&lds)).await;
    let b_cds = b.recv(CLUSTER).await;
    assert_eq!(b_cds.resources.len(), 2);
    assert!(started.elapsed() < WAIT, "{:?}", started.elapsed());

    // a's later subscriptions are served while b syncs.
    a.request(ROUTE, &["r1"], None).await;
    assert_eq!(a.recv(ROUTE).await.resources.len(), 1);
}

#[tokio::test]
async fn a_stalled_proxy_gives_its_place_up_after_the_hold() {
    let hold = Duration::from_millis(600);
    let server = start(hold).await;
    let mut a = Proxy::connect(server.addr, "a").await;
    a.request(CLUSTER, &[], None).await;
    let held_from = Instant::now();
    a.recv(CLUSTER).await;
    // a never ACKs nor asks for more.

    let mut b = Proxy::connect(server.addr, "b").await;
    b.request(CLUSTER, &[], None).await;
    b.recv(CLUSTER).await;
    let waited = held_from.elapsed();
    assert!(waited >= hold, "b was served after {waited:?}");
    assert!(waited < WAIT, "b was served after {waited:?}");

    // a still gets what it asks for later, without a place.
    a.request(ENDPOINT, &["c1"], None).await;
    assert_eq!(a.recv(ENDPOINT).await.resources.len(), 1);
}
