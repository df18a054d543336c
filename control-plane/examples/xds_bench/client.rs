//! One simulated sidecar: a real tonic ADS stream that subscribes and ACKs
//! like Envoy (CDS wildcard → EDS for the EDS clusters received → LDS
//! wildcard → RDS for the route names the listeners reference), and reports
//! every ACK to the driver. State of the world here; incremental in
//! [`delta`] (`--delta`).
//!
//! Clients share the machine with the control plane, so they do as little
//! as they can: responses are decoded by a lite message that keeps each
//! resource as a zero-copy slice, and only CDS (names and types) and LDS
//! (route names) are looked into. ACKs carry the full subscribed names, as
//! state-of-the-world requires.

mod delta;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter::ConfigType};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use isthmus_control_plane::xds::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use prost::{Message, encoding};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const ADS_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
/// `envoy.config.cluster.v3.Cluster.DiscoveryType.EDS`.
const DISCOVERY_TYPE_EDS: i32 = 3;
const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// The four subscribed types, in Envoy's initial order.
pub const TYPES: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];
pub const TYPE_NAMES: [&str; 4] = ["CDS", "EDS", "LDS", "RDS"];

/// `DiscoveryRequest` with its resource names already encoded: an ACK
/// repeats every subscribed name (1,100 per sidecar at 1k services), so a
/// subscription's names are encoded once ([`encode_names`]) and each ACK
/// copies them as one piece, where a `Vec<Bytes>` cost a reference count
/// per name and ACK. The bytes sent are prost's for the same request
/// (fields in tag order, defaults omitted); only sent, never decoded.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub version_info: String,
    pub node: Option<Node>,
    /// `resource_names` (field 3) as encoded, in order.
    pub names: Bytes,
    pub type_url: String,
    pub response_nonce: String,
}

impl Message for Request {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.version_info.is_empty() {
            encoding::string::encode(1, &self.version_info, buf);
        }
        if let Some(node) = &self.node {
            encoding::message::encode(2, node, buf);
        }
        buf.put_slice(&self.names);
        if !self.type_url.is_empty() {
            encoding::string::encode(4, &self.type_url, buf);
        }
        if !self.response_nonce.is_empty() {
            encoding::string::encode(5, &self.response_nonce, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let string = |tag, s: &String| {
            if s.is_empty() {
                0
            } else {
                encoding::string::encoded_len(tag, s)
            }
        };
        string(1, &self.version_info)
            + self
                .node
                .as_ref()
                .map_or(0, |n| encoding::message::encoded_len(2, n))
            + self.names.len()
            + string(4, &self.type_url)
            + string(5, &self.response_nonce)
    }

    fn clear(&mut self) {
        *self = Request::default();
    }
}

/// `names` as `DiscoveryRequest.resource_names` fields, in order.
fn encode_names(names: &[Bytes]) -> Bytes {
    let len = names
        .iter()
        .map(|n| encoding::bytes::encoded_len(3, n))
        .sum();
    let mut buf = BytesMut::with_capacity(len);
    for name in names {
        encoding::bytes::encode(3, name, &mut buf);
    }
    buf.freeze()
}

/// `DiscoveryResponse` with each `Any` left undecoded.
#[derive(Clone, PartialEq, Message)]
pub struct Response {
    #[prost(string, tag = "1")]
    pub version_info: String,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub resources: Vec<Bytes>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub nonce: String,
}

/// `google.protobuf.Any`, value only.
#[derive(Clone, PartialEq, Message)]
struct AnyValue {
    #[prost(bytes = "bytes", tag = "2")]
    value: Bytes,
}

/// The fields of `Cluster` that decide the EDS subscription.
#[derive(Clone, PartialEq, Message)]
struct ClusterHead {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int32, tag = "2")]
    discovery_type: i32,
    #[prost(message, optional, tag = "3")]
    eds_cluster_config: Option<EdsConfigHead>,
}

#[derive(Clone, PartialEq, Message)]
struct EdsConfigHead {
    #[prost(string, tag = "2")]
    service_name: String,
}

/// What a client tells the driver.
#[derive(Debug)]
pub enum Event {
    /// An ACK was sent for a response of `TYPES[kind]` generated from `version`.
    Acked {
        client: usize,
        kind: usize,
        version: u64,
        resources: usize,
        bytes: usize,
        at: Instant,
    },
    /// Every type has been received and ACKed once.
    Synced { client: usize, at: Instant },
    /// The stream failed; the sidecar reconnects after a backoff.
    Reconnecting { error: String },
    /// The stream failed too often; the sidecar gave up.
    Failed { client: usize, error: String },
}

/// Per-type subscription state.
#[derive(Default)]
struct Sub {
    requested: bool,
    /// Encoded ([`encode_names`]).
    names: Bytes,
    version: String,
    nonce: String,
    acked: bool,
}

/// Reconnections a sidecar makes before it gives up.
const MAX_RECONNECTS: u32 = 8;

/// Runs one sidecar until the driver goes away: like Envoy, a failed stream
/// is reopened (and everything subscribed again) after a jittered,
/// exponential backoff; after [`MAX_RECONNECTS`] failures in a row it gives up.
pub async fn run(
    client: usize,
    node: Node,
    channel: Channel,
    events: mpsc::UnboundedSender<Event>,
    incremental: bool,
) {
    let mut failures = 0;
    loop {
        let error = match stream(client, node.clone(), channel.clone(), &events, incremental).await
        {
            Ok(()) => return,
            Err(Failure { error, synced }) => {
                // A stream that got somewhere resets the backoff.
                failures = if synced { 1 } else { failures + 1 };
                error
            }
        };
        if failures > MAX_RECONNECTS || events.is_closed() {
            let _ = events.send(Event::Failed { client, error });
            return;
        }
        let _ = events.send(Event::Reconnecting { error });
        tokio::time::sleep(backoff(client, failures)).await;
    }
}

/// 250 ms doubling per failure, at most 8 s, with up to 50 % jitter
/// (derived from the client and attempt: no randomness needed).
fn backoff(client: usize, failures: u32) -> std::time::Duration {
    let base = 250u64 << failures.saturating_sub(1).min(5);
    let jitter = (client as u64 * 7919 + u64::from(failures) * 104_729) % (base / 2).max(1);
    std::time::Duration::from_millis(base + jitter)
}

/// Why a stream ended, and whether it had synced first.
struct Failure {
    error: String,
    synced: bool,
}

async fn stream(
    client: usize,
    node: Node,
    channel: Channel,
    events: &mpsc::UnboundedSender<Event>,
    incremental: bool,
) -> Result<(), Failure> {
    let mut synced = false;
    let result = if incremental {
        delta::sync_and_follow(client, node, channel, events, &mut synced).await
    } else {
        sync_and_follow(client, node, channel, events, &mut synced).await
    };
    result.map_err(|error| Failure { error, synced })
}

/// One stream: subscribe, then ACK every response until it fails.
async fn sync_and_follow(
    client: usize,
    node: Node,
    channel: Channel,
    events: &mpsc::UnboundedSender<Event>,
    synced: &mut bool,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel::<Request>(16);
    let mut subs: [Sub; 4] = Default::default();
    let send = |req: Request| {
        let tx = tx.clone();
        async move {
            tx.send(req)
                .await
                .map_err(|_| "request stream closed".to_string())
        }
    };
    // CDS wildcard first, carrying the node.
    subs[0].requested = true;
    send(Request {
        node: Some(node),
        type_url: CLUSTER.into(),
        ..Request::default()
    })
    .await?;
    let mut responses = open_stream::<Request, Response>(channel, ADS_PATH, rx).await?;
    loop {
        let response = next_response(&mut responses).await?;
        let Some(kind) = TYPES.iter().position(|t| *t == response.type_url) else {
            return Err(format!("unexpected type {}", response.type_url));
        };
        let bytes = response.resources.iter().map(Bytes::len).sum();
        let count = response.resources.len();
        // What this response makes the proxy subscribe to next.
        let follow = match kind {
            0 => Some((1, eds_names(&response.resources)?)),
            2 => Some((3, route_names(&response.resources)?)),
            _ => None,
        };
        let sub = &mut subs[kind];
        sub.version = response.version_info.clone();
        sub.nonce = response.nonce;
        sub.acked = true;
        send(Request {
            version_info: sub.version.clone(),
            names: sub.names.clone(),
            type_url: response.type_url,
            response_nonce: sub.nonce.clone(),
            ..Request::default()
        })
        .await?;
        let _ = events.send(Event::Acked {
            client,
            kind,
            version: state_version(&response.version_info),
            resources: count,
            bytes,
            at: Instant::now(),
        });
        if let Some((next, names)) = follow
            && (!subs[next].requested || subs[next].names != names)
        {
            let sub = &mut subs[next];
            sub.requested = true;
            sub.names = names;
            send(request(sub, TYPES[next])).await?;
        }
        // Envoy asks for listeners once its clusters are warm (EDS received).
        if kind == 1 && !subs[2].requested {
            subs[2].requested = true;
            send(request(&subs[2], LISTENER)).await?;
        }
        if !*synced && subs.iter().all(|s| s.acked) {
            *synced = true;
            let _ = events.send(Event::Synced {
                client,
                at: Instant::now(),
            });
        }
    }
}

/// A (re)subscription request for one type, echoing its last response.
fn request(sub: &Sub, type_url: &str) -> Request {
    Request {
        version_info: sub.version.clone(),
        names: sub.names.clone(),
        type_url: type_url.into(),
        response_nonce: sub.nonce.clone(),
        ..Request::default()
    }
}

/// `<state version>-<hash>` → state version.
fn state_version(version_info: &str) -> u64 {
    version_info
        .split('-')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Sorted EDS service names of the EDS clusters in a CDS response, encoded.
fn eds_names(resources: &[Bytes]) -> Result<Bytes, String> {
    let mut names = Vec::new();
    for any in resources {
        names.extend(cluster_eds_name(any.clone())?);
    }
    names.sort();
    Ok(encode_names(&names))
}

/// The EDS service name of a cluster (an encoded `Any`), if it is an EDS
/// cluster.
fn cluster_eds_name(any: Bytes) -> Result<Option<Bytes>, String> {
    let value = AnyValue::decode(any).map_err(|e| format!("CDS Any: {e}"))?;
    let c = ClusterHead::decode(value.value).map_err(|e| format!("CDS Cluster: {e}"))?;
    if c.discovery_type != DISCOVERY_TYPE_EDS {
        return Ok(None);
    }
    Ok(Some(Bytes::from(match c.eds_cluster_config {
        Some(eds) if !eds.service_name.is_empty() => eds.service_name,
        _ => c.name,
    })))
}

/// Sorted RDS names referenced by HTTP connection managers in an LDS
/// response, encoded.
fn route_names(resources: &[Bytes]) -> Result<Bytes, String> {
    let mut names = std::collections::BTreeSet::new();
    for any in resources {
        names.extend(listener_routes(any.clone())?);
    }
    Ok(encode_names(&names.into_iter().collect::<Vec<_>>()))
}

/// RDS names referenced by the HTTP connection managers of a listener (an
/// encoded `Any`).
fn listener_routes(any: Bytes) -> Result<Vec<Bytes>, String> {
    let value = AnyValue::decode(any).map_err(|e| format!("LDS Any: {e}"))?;
    let listener = Listener::decode(value.value).map_err(|e| format!("LDS Listener: {e}"))?;
    let filters = listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.iter())
        .flat_map(|c| &c.filters);
    let mut names = Vec::new();
    for f in filters {
        if let Some(ConfigType::TypedConfig(tc)) = &f.config_type
            && tc.type_url == HCM_TYPE
        {
            let hcm = HttpConnectionManager::decode(tc.value.as_slice())
                .map_err(|e| format!("LDS HCM: {e}"))?;
            if let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier {
                names.push(Bytes::from(rds.route_config_name));
            }
        }
    }
    Ok(names)
}

/// Opens one bidirectional ADS stream at `path` (either protocol) on
/// `channel`, its requests taken from `rx`.
async fn open_stream<Req, Resp>(
    channel: Channel,
    path: &'static str,
    rx: mpsc::Receiver<Req>,
) -> Result<tonic::Streaming<Resp>, String>
where
    Req: Message + Send + Sync + 'static,
    Resp: Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
    grpc.ready().await.map_err(|e| format!("connect: {e}"))?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    let path = http::uri::PathAndQuery::from_static(path);
    Ok(grpc
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, codec)
        .await
        .map_err(|s| format!("open stream: {s}"))?
        .into_inner())
}

/// The next response; an error when the stream failed or the server closed it.
async fn next_response<Resp>(responses: &mut tonic::Streaming<Resp>) -> Result<Resp, String> {
    match responses.message().await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err("server closed the stream".into()),
        Err(s) => Err(format!("stream: {s}")),
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

    use super::*;

    #[test]
    fn a_request_with_encoded_names_is_prosts_request() {
        let names = ["outbound|80||a.ns.svc.cluster.local", "b", ""];
        let ours = Request {
            version_info: "3-abc".into(),
            node: Some(Node {
                id: "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local".into(),
                ..Node::default()
            }),
            names: encode_names(&names.map(|n| Bytes::from_static(n.as_bytes()))),
            type_url: ENDPOINT.into(),
            response_nonce: "7".into(),
        };
        let prosts = DiscoveryRequest {
            version_info: ours.version_info.clone(),
            node: ours.node.clone(),
            resource_names: names.map(str::to_string).to_vec(),
            type_url: ours.type_url.clone(),
            response_nonce: ours.response_nonce.clone(),
            ..DiscoveryRequest::default()
        };
        assert_eq!(ours.encode_to_vec(), prosts.encode_to_vec());
        assert_eq!(ours.encoded_len(), prosts.encoded_len());
        let empty = Request::default();
        assert_eq!(
            empty.encode_to_vec(),
            DiscoveryRequest::default().encode_to_vec()
        );
    }
}
