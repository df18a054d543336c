//! The ADS server on loopback with real tonic clients: the chunked,
//! pre-encoded responses decode into exactly the `DiscoveryResponse` the
//! prost codec path sent, and requests of any size and framing decode.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::util::pack_any;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Streaming};

use super::super::push::{Digest, version_info};
use super::super::wire::CHUNK;
use super::super::{AdsOptions, AdsServer};
use crate::xds::{
    CLUSTER, ConfigState, ENDPOINT, GenerateError, ProxyInfo, ProxyRole, SharedResource,
    SharedState, XdsResource, is_wildcard_type,
};

const WAIT: Duration = Duration::from_secs(10);

/// Clusters `c0..c<n>` (one of them larger than a chunk) with assignments.
struct Fixed {
    resources: BTreeMap<&'static str, Vec<XdsResource>>,
}

impl Fixed {
    fn new(clusters: usize) -> Self {
        let mut cds = Vec::new();
        let mut eds = Vec::new();
        for i in 0..clusters {
            let name = format!("outbound|80||svc-{i}.sample.svc.cluster.local");
            let cluster = Cluster {
                name: name.clone(),
                // One cluster far larger than a chunk; the others vary.
                alt_stat_name: "x".repeat(if i == 7 { 3 * CHUNK } else { i % 97 }),
                ..Cluster::default()
            };
            cds.push(XdsResource {
                name: name.clone(),
                resource: pack_any(cluster),
            });
            let cla = ClusterLoadAssignment {
                cluster_name: name.clone(),
                ..ClusterLoadAssignment::default()
            };
            eds.push(XdsResource {
                name,
                resource: pack_any(cla),
            });
        }
        Self {
            resources: [(CLUSTER, cds), (ENDPOINT, eds)].into(),
        }
    }
}

impl ConfigState for Fixed {
    fn version(&self) -> u64 {
        1
    }

    fn generate(
        &self,
        _: &ProxyInfo,
        type_url: &str,
        names: &BTreeSet<String>,
    ) -> Result<Vec<XdsResource>, GenerateError> {
        let all = self
            .resources
            .get(type_url)
            .ok_or_else(|| GenerateError::UnknownType(type_url.into()))?;
        Ok(all
            .iter()
            .filter(|r| is_wildcard_type(type_url) || names.contains(&r.name))
            .cloned()
            .collect())
    }
}

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    state: Arc<Fixed>,
    _source: watch::Sender<SharedState>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(clusters: usize) -> Server {
    let state = Arc::new(Fixed::new(clusters));
    let (source, rx) = watch::channel::<SharedState>(state.clone());
    let server = AdsServer::new(rx, AdsOptions::default());
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
        state,
        _source: source,
    }
}

fn sidecar() -> ProxyInfo {
    let ip = "127.0.10.5".parse().ok();
    ProxyInfo {
        id: ProxyInfo::node_id(ProxyRole::Sidecar, ip, "sleep", "sample"),
        role: ProxyRole::Sidecar,
        ip,
        workload: "sleep".into(),
        namespace: "sample".into(),
        cluster: "east".into(),
        network: "net-east".into(),
        service_account: "sleep".into(),
        labels: BTreeMap::new(),
        locality: Default::default(),
    }
}

/// What the prost codec path sent for `type_url`: the resources in name
/// order, the version from their digest, and the nonce the server chose.
fn expected(
    state: &Fixed,
    type_url: &str,
    names: &BTreeSet<String>,
    nonce: &str,
) -> DiscoveryResponse {
    let mut resources = state
        .generate(&sidecar(), type_url, names)
        .expect("generates");
    resources.sort_by(|a, b| a.name.cmp(&b.name));
    let shared: Vec<Arc<SharedResource>> =
        resources.iter().cloned().map(SharedResource::new).collect();
    DiscoveryResponse {
        version_info: version_info(1, Digest::of(&shared)),
        resources: resources.into_iter().map(|r| r.resource).collect(),
        type_url: type_url.into(),
        nonce: nonce.into(),
        control_plane: Some(ControlPlane {
            identifier: "isthmus".into(),
        }),
        ..DiscoveryResponse::default()
    }
}

async fn recv(rx: &mut Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    timeout(WAIT, rx.message())
        .await
        .expect("response in time")
        .expect("stream open")
        .expect("a response")
}

#[tokio::test]
async fn envoy_types_client_decodes_the_prost_paths_response() {
    let server = start(2_000).await;
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", server.addr))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(4);
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();

    tx.send(DiscoveryRequest {
        node: Some(sidecar().to_node()),
        type_url: CLUSTER.into(),
        ..DiscoveryRequest::default()
    })
    .await
    .expect("send");
    let cds = recv(&mut responses).await;
    assert!(cds.resources.len() == 2_000);
    let want = expected(&server.state, CLUSTER, &BTreeSet::new(), &cds.nonce);
    assert!(cds == want, "CDS differs from the prost path's");

    // EDS for every cluster plus many unknown names: a request of ~1.5 MB,
    // many HTTP/2 frames.
    let mut names: Vec<String> = cds
        .resources
        .iter()
        .map(|any| prost::Message::decode(any.value.as_slice()).map(|c: Cluster| c.name))
        .collect::<Result<_, _>>()
        .expect("clusters decode");
    names.extend((0..30_000).map(|i| format!("outbound|80||unknown-{i}.sample.svc.cluster.local")));
    tx.send(DiscoveryRequest {
        type_url: ENDPOINT.into(),
        resource_names: names.clone(),
        ..DiscoveryRequest::default()
    })
    .await
    .expect("send");
    let eds = recv(&mut responses).await;
    let names: BTreeSet<String> = names.into_iter().collect();
    let want = expected(&server.state, ENDPOINT, &names, &eds.nonce);
    assert_eq!(eds.resources.len(), 2_000);
    assert!(eds == want, "EDS differs from the prost path's");
    assert_ne!(eds.nonce, cds.nonce);

    // The stream ends with OK when the proxy closes its side.
    drop(tx);
    let end = timeout(WAIT, responses.message()).await.expect("in time");
    assert!(matches!(end, Ok(None)), "{end:?}");
}

#[tokio::test]
async fn names_that_are_not_utf8_end_the_stream_with_invalid_argument() {
    let server = start(3).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    /// A `DiscoveryRequest` whose names need not be UTF-8.
    #[derive(Clone, PartialEq, prost::Message)]
    struct RawRequest {
        #[prost(message, optional, tag = "2")]
        node: Option<envoy_types::pb::envoy::config::core::v3::Node>,
        #[prost(bytes = "bytes", repeated, tag = "3")]
        resource_names: Vec<bytes::Bytes>,
        #[prost(string, tag = "4")]
        type_url: String,
    }
    let request = RawRequest {
        node: Some(sidecar().to_node()),
        type_url: ENDPOINT.into(),
        resource_names: vec![
            bytes::Bytes::from_static(b"a"),
            bytes::Bytes::from_static(b"\xc3"),
        ],
    };
    let codec = tonic_prost::ProstCodec::<RawRequest, DiscoveryResponse>::default();
    let path = http::uri::PathAndQuery::from_static(super::STREAM_PATH);
    let requests = tokio_stream::iter([request]).chain(tokio_stream::pending());
    let mut responses = grpc
        .streaming(tonic::Request::new(requests), path, codec)
        .await
        .expect("stream")
        .into_inner();
    let status = timeout(WAIT, responses.message())
        .await
        .expect("in time")
        .expect_err("the stream is refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("resource_names[1] is not UTF-8"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn delta_stream_without_node_is_refused() {
    let server = start(1).await;
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", server.addr))
        .await
        .expect("connect");
    let requests = tokio_stream::iter([DeltaDiscoveryRequest {
        type_url: CLUSTER.into(),
        ..DeltaDiscoveryRequest::default()
    }]);
    let mut responses = timeout(WAIT, client.delta_aggregated_resources(requests))
        .await
        .expect("in time")
        .expect("the stream opens")
        .into_inner();
    let status = timeout(WAIT, responses.message())
        .await
        .expect("in time")
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("first DeltaDiscoveryRequest on a stream must carry a node"),
        "{}",
        status.message()
    );
}

#[test]
fn requests_split_anywhere_decode_with_names_in_place() {
    let sent = DiscoveryRequest {
        type_url: ENDPOINT.into(),
        response_nonce: "3".into(),
        resource_names: (0..200).map(|i| format!("outbound|80||svc-{i}")).collect(),
        ..DiscoveryRequest::default()
    };
    let body = prost::Message::encode_to_vec(&sent);
    let mut framed = vec![0];
    framed.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
    framed.extend_from_slice(&body);
    // Two messages back to back, cut into frames of several sizes.
    let twice = [framed.clone(), framed].concat();
    for size in [1, 2, 5, 7, 64, 1000, twice.len()] {
        let mut requests =
            super::Requests::<super::super::wire::Request>::new(tonic::body::Body::empty());
        let mut decoded = Vec::new();
        for frame in twice.chunks(size) {
            requests.buffered.push(bytes::Bytes::copy_from_slice(frame));
            loop {
                match requests.take_message() {
                    Ok(Some(request)) => decoded.push(request),
                    Ok(None) => break,
                    Err(_) => panic!("frames of {size}: rejected"),
                }
            }
        }
        assert_eq!(decoded.len(), 2, "frames of {size}");
        assert_eq!(requests.buffered.len, 0);
        for got in decoded {
            assert_eq!(got.type_url, sent.type_url);
            assert_eq!(got.response_nonce, sent.response_nonce);
            let names: Vec<&[u8]> = got.resource_names.iter().collect();
            let want: Vec<&[u8]> = sent.resource_names.iter().map(String::as_bytes).collect();
            assert_eq!(names, want, "frames of {size}");
        }
    }
}
