//! The incremental variant of a simulated sidecar
//! (`DeltaAggregatedResources`), subscribing like Envoy: CDS wildcard → EDS
//! names of the EDS clusters it has → LDS wildcard (once EDS arrived) → RDS
//! names its listeners reference; names it no longer needs are
//! unsubscribed. An ACK is the type URL and the nonce.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use isthmus_control_plane::xds::{CLUSTER, LISTENER};
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::{Event, TYPES, cluster_eds_name, listener_routes, state_version};

const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// `DeltaDiscoveryRequest` (the fields a sidecar sends).
#[derive(Clone, PartialEq, Message)]
pub struct Request {
    #[prost(message, optional, tag = "1")]
    pub node: Option<Node>,
    #[prost(string, tag = "2")]
    pub type_url: String,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub subscribe: Vec<Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "4")]
    pub unsubscribe: Vec<Bytes>,
    #[prost(string, tag = "6")]
    pub response_nonce: String,
}

/// `DeltaDiscoveryResponse` with each `Resource` left undecoded.
#[derive(Clone, PartialEq, Message)]
pub struct Response {
    #[prost(string, tag = "1")]
    pub system_version_info: String,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub resources: Vec<Bytes>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub nonce: String,
    #[prost(bytes = "bytes", repeated, tag = "6")]
    pub removed: Vec<Bytes>,
}

/// `Resource`: name and the `Any` bytes.
#[derive(Clone, PartialEq, Message)]
struct ResourceHead {
    #[prost(bytes = "bytes", optional, tag = "2")]
    resource: Option<Bytes>,
    #[prost(bytes = "bytes", tag = "3")]
    name: Bytes,
}

/// What the proxy has and subscribed to.
#[derive(Default)]
struct State {
    /// Cluster name → its EDS name (`None`: not an EDS cluster).
    clusters: BTreeMap<Bytes, Option<Bytes>>,
    /// Listener name → the route names it references.
    listeners: BTreeMap<Bytes, Vec<Bytes>>,
    /// Subscribed EDS and RDS names.
    eds: BTreeSet<Bytes>,
    rds: BTreeSet<Bytes>,
    lds_requested: bool,
    acked: [bool; 4],
}

/// Subscribe and unsubscribe requests that make `subscribed` equal `wanted`.
fn follow(
    type_url: &str,
    subscribed: &mut BTreeSet<Bytes>,
    wanted: BTreeSet<Bytes>,
) -> Option<Request> {
    let subscribe: Vec<Bytes> = wanted.difference(subscribed).cloned().collect();
    let unsubscribe: Vec<Bytes> = subscribed.difference(&wanted).cloned().collect();
    *subscribed = wanted;
    (!subscribe.is_empty() || !unsubscribe.is_empty()).then(|| Request {
        type_url: type_url.into(),
        subscribe,
        unsubscribe,
        ..Request::default()
    })
}

/// One incremental stream: subscribe, then ACK every response until it fails.
pub async fn sync_and_follow(
    client: usize,
    node: Node,
    channel: Channel,
    events: &mpsc::UnboundedSender<Event>,
    synced: &mut bool,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel::<Request>(16);
    let send = |req: Request| {
        let tx = tx.clone();
        async move {
            tx.send(req)
                .await
                .map_err(|_| "request stream closed".to_string())
        }
    };
    send(Request {
        node: Some(node),
        type_url: CLUSTER.into(),
        ..Request::default()
    })
    .await?;
    let mut responses = super::open_stream::<Request, Response>(channel, DELTA_PATH, rx).await?;
    let mut state = State::default();
    loop {
        let response = super::next_response(&mut responses).await?;
        let Some(kind) = TYPES.iter().position(|t| *t == response.type_url) else {
            return Err(format!("unexpected type {}", response.type_url));
        };
        let bytes = response.resources.iter().map(Bytes::len).sum();
        let count = response.resources.len();
        let next = match kind {
            0 => {
                for r in &response.resources {
                    let r =
                        ResourceHead::decode(r.clone()).map_err(|e| format!("Resource: {e}"))?;
                    let any = r.resource.ok_or("CDS Resource without a body")?;
                    // Copied: a slice would keep the whole response's
                    // buffer alive (as Envoy, the client keeps its own copy).
                    let name = Bytes::copy_from_slice(&r.name);
                    state.clusters.insert(name, cluster_eds_name(any)?);
                }
                for name in &response.removed {
                    state.clusters.remove(name);
                }
                let wanted = state.clusters.values().flatten().cloned().collect();
                follow(TYPES[1], &mut state.eds, wanted)
            }
            2 => {
                for r in &response.resources {
                    let r =
                        ResourceHead::decode(r.clone()).map_err(|e| format!("Resource: {e}"))?;
                    let any = r.resource.ok_or("LDS Resource without a body")?;
                    let name = Bytes::copy_from_slice(&r.name);
                    state.listeners.insert(name, listener_routes(any)?);
                }
                for name in &response.removed {
                    state.listeners.remove(name);
                }
                let wanted = state.listeners.values().flatten().cloned().collect();
                follow(TYPES[3], &mut state.rds, wanted)
            }
            _ => None,
        };
        send(Request {
            type_url: response.type_url,
            response_nonce: response.nonce,
            ..Request::default()
        })
        .await?;
        state.acked[kind] = true;
        let _ = events.send(Event::Acked {
            client,
            kind,
            version: state_version(&response.system_version_info),
            resources: count,
            bytes,
            at: Instant::now(),
        });
        if let Some(next) = next {
            send(next).await?;
        }
        // Envoy asks for listeners once its clusters are warm (EDS received).
        if kind == 1 && !state.lds_requested {
            state.lds_requested = true;
            send(Request {
                type_url: LISTENER.into(),
                ..Request::default()
            })
            .await?;
        }
        if !*synced && state.acked.iter().all(|a| *a) {
            *synced = true;
            let _ = events.send(Event::Synced {
                client,
                at: Instant::now(),
            });
        }
    }
}
