//! A scripted ADS server: the test sees every request and decides every
//! response, to send what a real control plane never would (malformed
//! resources) and to withhold resources (warming). Plus resource builders.

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ConfigSource, Node, SocketAddress, address,
    config_source::ConfigSourceSpecifier, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, Listener, filter::ConfigType as FilterConfig,
};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use isthmus_proxy_core::xds::{PlaintextConnector, XdsClient, XdsOptions};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use super::WAIT;

pub type ResponseTx = mpsc::Sender<Result<DiscoveryResponse, Status>>;

/// Hands each new stream to the test: its requests and a way to respond.
pub struct FakeAds {
    streams: mpsc::Sender<(mpsc::Receiver<DiscoveryRequest>, ResponseTx)>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for FakeAds {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut incoming = request.into_inner();
        let (req_tx, req_rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Ok(Some(r)) = incoming.message().await {
                if req_tx.send(r).await.is_err() {
                    break;
                }
            }
        });
        let (tx, rx) = mpsc::channel(16);
        self.streams
            .send((req_rx, tx))
            .await
            .map_err(|_| Status::unavailable("test gone"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type DeltaAggregatedResourcesStream =
        tokio_stream::Empty<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("delta"))
    }
}

/// The test's end of one stream.
pub struct Stream {
    pub requests: mpsc::Receiver<DiscoveryRequest>,
    pub tx: ResponseTx,
    nonce: u32,
}

impl Stream {
    pub async fn next_request(&mut self) -> DiscoveryRequest {
        tokio::time::timeout(WAIT, self.requests.recv())
            .await
            .expect("request in time")
            .expect("stream open")
    }

    /// The next request of `type_url` (others, e.g. subscription updates, are skipped).
    pub async fn next_of(&mut self, type_url: &str) -> DiscoveryRequest {
        loop {
            let r = self.next_request().await;
            if r.type_url == type_url {
                return r;
            }
        }
    }

    /// Sends a response; returns its nonce.
    pub async fn respond(&mut self, type_url: &str, version: &str, resources: Vec<Any>) -> String {
        self.nonce += 1;
        let nonce = format!("nonce-{}", self.nonce);
        self.tx
            .send(Ok(DiscoveryResponse {
                version_info: version.into(),
                resources,
                type_url: type_url.into(),
                nonce: nonce.clone(),
                ..DiscoveryResponse::default()
            }))
            .await
            .unwrap();
        nonce
    }
}

/// Starts the fake server; returns its address and where its streams arrive.
pub async fn fake_server(
    shutdown: &CancellationToken,
) -> (
    SocketAddr,
    mpsc::Receiver<(mpsc::Receiver<DiscoveryRequest>, ResponseTx)>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (streams, rx) = mpsc::channel(4);
    let shutdown = shutdown.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(FakeAds { streams }))
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown.cancelled_owned()),
    );
    (addr, rx)
}

pub async fn accept(
    streams: &mut mpsc::Receiver<(mpsc::Receiver<DiscoveryRequest>, ResponseTx)>,
) -> Stream {
    let (requests, tx) = tokio::time::timeout(WAIT, streams.recv())
        .await
        .expect("client connects in time")
        .unwrap();
    Stream {
        requests,
        tx,
        nonce: 0,
    }
}

pub fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..ConfigSource::default()
    }
}

pub fn static_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        ..Cluster::default()
    }
}

pub fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        ..Cluster::default()
    }
}

pub fn http_listener(port: u32, route: &str) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: "test".into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route.into(),
        })),
        ..HttpConnectionManager::default()
    };
    Listener {
        name: format!("0.0.0.0_{port}"),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "0.0.0.0".into(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..SocketAddress::default()
            })),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(FilterConfig::TypedConfig(pack_any(hcm))),
            }],
            ..FilterChain::default()
        }],
        ..Listener::default()
    }
}

pub fn route(name: &str, domains: &[&[&str]]) -> RouteConfiguration {
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: domains
            .iter()
            .enumerate()
            .map(|(i, d)| VirtualHost {
                name: format!("vh{i}"),
                domains: d.iter().map(|s| s.to_string()).collect(),
                ..VirtualHost::default()
            })
            .collect(),
        ..RouteConfiguration::default()
    }
}

pub fn options() -> XdsOptions {
    let mut o = XdsOptions::new(Node {
        id: "sidecar~127.0.10.21~sleep.sample~sample.svc.cluster.local".into(),
        ..Node::default()
    });
    o.backoff.initial = Duration::from_millis(50);
    o.backoff.max = Duration::from_millis(200);
    o
}

pub fn spawn_client(
    addr: SocketAddr,
    options: XdsOptions,
    shutdown: &CancellationToken,
) -> XdsClient {
    let connector = PlaintextConnector::new(&format!("http://{addr}")).unwrap();
    XdsClient::spawn(options, connector, shutdown.clone())
}
