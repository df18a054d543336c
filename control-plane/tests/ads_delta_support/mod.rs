//! A real tonic incremental ADS client (`DeltaAggregatedResources`) for
//! the tests, speaking as Envoy does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use isthmus_control_plane::xds::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// Upper bound of every wait.
pub const WAIT: Duration = crate::ads_support::TIMEOUT;

/// A real incremental ADS client on its own stream.
pub struct DeltaClient {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
    /// Sent with the next request only.
    node: Option<Node>,
}

impl DeltaClient {
    pub async fn connect(addr: SocketAddr, node: Option<Node>) -> Self {
        let mut client = timeout(
            WAIT,
            AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")),
        )
        .await
        .expect("connect in time")
        .expect("connect");
        let (tx, rx) = mpsc::channel(16);
        let rx = timeout(
            WAIT,
            client.delta_aggregated_resources(ReceiverStream::new(rx)),
        )
        .await
        .expect("stream in time")
        .expect("stream opens")
        .into_inner();
        Self { tx, rx, node }
    }

    pub async fn send(&mut self, mut request: DeltaDiscoveryRequest) {
        if request.node.is_none() {
            request.node = self.node.take();
        }
        self.tx.send(request).await.expect("request stream open");
    }

    /// Subscribes to names of a type (none: a wildcard for LDS and CDS).
    pub async fn subscribe(&mut self, type_url: &str, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: strings(names),
            ..DeltaDiscoveryRequest::default()
        })
        .await;
    }

    /// The first request of a type after a reconnect: what the proxy has.
    pub async fn resubscribe(
        &mut self,
        type_url: &str,
        names: &[&str],
        versions: HashMap<String, String>,
    ) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: strings(names),
            initial_resource_versions: versions,
            ..DeltaDiscoveryRequest::default()
        })
        .await;
    }

    pub async fn unsubscribe(&mut self, type_url: &str, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_unsubscribe: strings(names),
            ..DeltaDiscoveryRequest::default()
        })
        .await;
    }

    /// ACKs a response: its type URL and nonce, nothing else.
    pub async fn ack(&mut self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..DeltaDiscoveryRequest::default()
        })
        .await;
    }

    pub async fn nack(&mut self, response: &DeltaDiscoveryResponse, message: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: message.into(),
                details: vec![],
            }),
            ..DeltaDiscoveryRequest::default()
        })
        .await;
    }

    /// The next response.
    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        crate::ads_support::next_message(&mut self.rx).await
    }

    /// The status the stream ends with.
    pub async fn recv_status(&mut self) -> tonic::Status {
        crate::ads_support::end_status(&mut self.rx).await
    }

    /// Asserts nothing arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        crate::ads_support::assert_silent(&mut self.rx, quiet, summary).await;
    }

    /// Envoy's first sync: CDS wildcard, EDS for the clusters, LDS
    /// wildcard, RDS for `routes`, each ACKed; returns the four responses.
    pub async fn sync(&mut self, routes: &[&str]) -> [DeltaDiscoveryResponse; 4] {
        self.subscribe(CLUSTER, &[]).await;
        let cds = self.recv().await;
        assert_eq!(cds.type_url, CLUSTER);
        self.ack(&cds).await;
        let clusters = names(&cds);
        let clusters: Vec<&str> = clusters.iter().map(String::as_str).collect();
        self.subscribe(ENDPOINT, &clusters).await;
        let eds = self.recv().await;
        assert_eq!(eds.type_url, ENDPOINT);
        self.ack(&eds).await;
        self.subscribe(LISTENER, &[]).await;
        let lds = self.recv().await;
        assert_eq!(lds.type_url, LISTENER);
        self.ack(&lds).await;
        self.subscribe(ROUTE, routes).await;
        let rds = self.recv().await;
        assert_eq!(rds.type_url, ROUTE);
        self.ack(&rds).await;
        [cds, eds, lds, rds]
    }
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// Names of the resources in a response, checked against the names inside
/// the decoded Envoy messages.
pub fn names(response: &DeltaDiscoveryResponse) -> Vec<String> {
    response
        .resources
        .iter()
        .map(|r| {
            let any = r.resource.as_ref().expect("a resource body");
            assert_eq!(any.type_url, response.type_url);
            let bytes = any.value.as_slice();
            let inner = match any.type_url.as_str() {
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
            };
            assert_eq!(inner, r.name, "Resource.name is the resource's own name");
            assert_eq!(r.version.len(), 16, "a content digest: {}", r.version);
            inner
        })
        .collect()
}

/// Name → version of the resources in a response.
pub fn versions(response: &DeltaDiscoveryResponse) -> HashMap<String, String> {
    response
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect()
}

/// `(type URL, resource names, removed names)`, for assertions.
pub fn summary(response: &DeltaDiscoveryResponse) -> (String, Vec<String>, Vec<String>) {
    (
        response.type_url.clone(),
        names(response),
        response.removed_resources.clone(),
    )
}
