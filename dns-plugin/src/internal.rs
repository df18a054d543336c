//! Entry points for fuzz targets (feature `fuzzing`); not a stable API.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use isthmus_proto::dns as proto;

use crate::metrics::DnsMetrics;
use crate::server::Handler;
use crate::zone::{AnswerConfig, DEFAULT_TTL, Policy, Snapshot, ZoneConfig};

/// A handler serving a small fixed snapshot (two clusters, ports, both zones and policies).
fn handler() -> &'static Handler {
    static HANDLER: OnceLock<Handler> = OnceLock::new();
    HANDLER.get_or_init(|| {
        let mut zones = ZoneConfig::defaults(Policy::Vip);
        zones[1].policy = Policy::Endpoints;
        let config = AnswerConfig {
            zones,
            cluster: "east".into(),
            locality: "us-east/us-east-1a".parse().expect("static locality"),
            ttl: DEFAULT_TTL,
        };
        let snapshot = Snapshot::build(&sample_feed(), &config);
        let mut registry = prometheus_client::registry::Registry::default();
        Handler::new(
            Arc::new(ArcSwap::from_pointee(snapshot)),
            None,
            None,
            DnsMetrics::register(&mut registry),
        )
    })
}

/// A feed message with a few services, for fuzzing and tests.
pub fn sample_feed() -> proto::Snapshot {
    let endpoint = |address: &str, locality: &str, healthy: bool| proto::Endpoint {
        address: address.into(),
        locality: locality.into(),
        healthy,
        weight: 1,
    };
    let cluster = |name: &str, endpoints: Vec<proto::Endpoint>| proto::ClusterEndpoints {
        cluster: name.into(),
        network: format!("net-{name}"),
        healthy: endpoints.iter().filter(|e| e.healthy).count() as u32,
        total: endpoints.len() as u32,
        endpoints,
    };
    proto::Snapshot {
        version: 1,
        cluster: "east".into(),
        services: vec![proto::GlobalService {
            name: "reviews".into(),
            namespace: "default".into(),
            vips: vec!["240.240.1.2".into(), "fd00::1".into()],
            ports: vec![proto::Port {
                name: "http".into(),
                number: 9080,
                protocol: "HTTP".into(),
            }],
            clusters: vec![
                cluster(
                    "east",
                    vec![endpoint("10.0.0.1", "us-east/us-east-1a", true)],
                ),
                cluster(
                    "west",
                    vec![endpoint("192.0.2.1", "us-west/us-west-1a", true)],
                ),
            ],
            exported: true,
        }],
    }
}

/// Answers one UDP datagram on the fast path, as the UDP loop would first
/// try; `None` when it would go to the full handler. Never panics.
pub fn handle_udp_fast(message: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0u8; usize::from(crate::server::MAX_UDP_PAYLOAD)];
    let answer = handler().answer_fast(message, &mut out)?;
    out.truncate(answer.len);
    Some(out)
}

/// Answers one DNS message as the TCP listener would; never panics.
pub fn handle_packet(message: &[u8]) -> Option<Vec<u8>> {
    let handler = handler();
    futures::executor::block_on(crate::server::grpc::answer_bytes(
        handler,
        message,
        ([127, 0, 0, 1], 5353).into(),
    ))
}

/// Differential check of the UDP fast path: when it answers `message`, the
/// full handler's answer to the same message must decode to the same DNS
/// message (header, question, answers, EDNS). `Err` says how they differ.
pub fn fast_path_agrees(message: &[u8]) -> Result<(), String> {
    use hickory_proto::op::Message;
    let Some(fast) = handle_udp_fast(message) else {
        return Ok(());
    };
    let full = handle_packet(message).ok_or("the full handler gave no answer")?;
    let fast = Message::from_vec(&fast).map_err(|e| format!("fast answer does not decode: {e}"))?;
    let full = Message::from_vec(&full).map_err(|e| format!("full answer does not decode: {e}"))?;
    if fast == full {
        Ok(())
    } else {
        Err(format!("fast path:\n{fast:?}\nfull handler:\n{full:?}"))
    }
}
