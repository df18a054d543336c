//! Test harness: a fake control plane serving the real `isthmus.dns.v1` feed
//! over gRPC, the DNS server started in-process on loopback, and a small DNS
//! client (UDP and TCP) built on hickory-proto messages.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use futures::Stream;
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use isthmus_dns::run::{Options, Running, start};
use isthmus_dns::zone::{Policy, ZoneConfig};
use isthmus_proto::dns as proto;
use isthmus_proto::dns::dns_feed_server::{DnsFeed, DnsFeedServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A control plane that streams whatever snapshot the test publishes.
pub struct FakeFeed {
    pub addr: SocketAddr,
    tx: watch::Sender<proto::Snapshot>,
    stop: CancellationToken,
}

#[derive(Clone)]
struct FeedService(watch::Receiver<proto::Snapshot>, CancellationToken);

#[tonic::async_trait]
impl DnsFeed for FeedService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::Snapshot, tonic::Status>> + Send>>;
    async fn watch(
        &self,
        _: tonic::Request<proto::WatchRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        use futures::StreamExt;
        let s = futures::stream::unfold((self.0.clone(), true), |(mut rx, first)| async move {
            if !first {
                rx.changed().await.ok()?;
            }
            let v = rx.borrow_and_update().clone();
            Some((Ok(v), (rx, false)))
        })
        .take_until(self.1.clone().cancelled_owned());
        Ok(tonic::Response::new(Box::pin(s)))
    }
}

impl FakeFeed {
    /// Serves on `addr` (port 0 for any).
    pub async fn start(addr: SocketAddr, first: proto::Snapshot) -> FakeFeed {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(first);
        let stop = CancellationToken::new();
        let svc = FeedService(rx, stop.clone());
        let signal = stop.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(DnsFeedServer::new(svc))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    signal.cancelled_owned(),
                )
                .await
                .unwrap();
        });
        FakeFeed { addr, tx, stop }
    }

    pub fn publish(&self, snapshot: proto::Snapshot) {
        self.tx.send_replace(snapshot);
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for FakeFeed {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A DNS server on loopback; stopped on drop.
pub struct Dns {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn options(cluster: &str, feed: SocketAddr, policy: Policy) -> Options {
    let mut o = Options::new(cluster, feed.to_string());
    o.listen = "127.0.0.1:0".parse().unwrap();
    o.admin = Some("127.0.0.1:0".parse().unwrap());
    o.grpc = Some("127.0.0.1:0".parse().unwrap());
    o.zones = ZoneConfig::defaults(policy);
    o.udp_sockets = 2;
    o.drain_grace = Duration::from_secs(2);
    o
}

impl Dns {
    pub async fn start(options: Options) -> Dns {
        let shutdown = CancellationToken::new();
        let running = start(options, shutdown.clone()).await.unwrap();
        Dns {
            addr: running.dns,
            running: Some(running),
            shutdown,
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    /// Waits until the snapshot with `version` is served.
    pub async fn wait_version(&self, version: u64) {
        for _ in 0..200 {
            let s = self.running().snapshot();
            if s.from_feed && s.version >= version {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("snapshot version {version} never arrived");
    }
}

/// A query message for `name`/`qtype`, with EDNS when `edns` gives a buffer size.
pub fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Message {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
    m.metadata.recursion_desired = true;
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m
}

/// Sends raw bytes over UDP; the reply's bytes, or `None` after `wait`.
pub async fn udp_raw(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(wait, socket.recv(&mut buf))
        .await
        .ok()?
        .unwrap();
    buf.truncate(n);
    Some(buf)
}

pub async fn udp(server: SocketAddr, m: &Message) -> (Message, usize) {
    let bytes = udp_raw(server, &m.to_vec().unwrap(), Duration::from_secs(5))
        .await
        .expect("UDP answer");
    let reply = Message::from_vec(&bytes).unwrap();
    assert_eq!(reply.metadata.id, m.metadata.id);
    (reply, bytes.len())
}

/// One length-prefixed message over a new TCP connection.
pub async fn tcp_raw(server: SocketAddr, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    tcp_raw_wait(server, bytes, Duration::from_secs(5)).await
}

/// [`tcp_raw`], waiting at most `wait` for the reply.
pub async fn tcp_raw_wait(
    server: SocketAddr,
    bytes: &[u8],
    wait: Duration,
) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(server).await?;
    s.write_all(&(bytes.len() as u16).to_be_bytes()).await?;
    s.write_all(bytes).await?;
    let len = tokio::time::timeout(wait, s.read_u16()).await??;
    let mut buf = vec![0u8; usize::from(len)];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

pub async fn tcp(server: SocketAddr, m: &Message) -> Message {
    let bytes = tcp_raw(server, &m.to_vec().unwrap()).await.unwrap();
    Message::from_vec(&bytes).unwrap()
}

/// A and AAAA addresses of the answer section, in order.
pub fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

pub fn ips(v: &[&str]) -> Vec<IpAddr> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

/// One endpoint per address, all in `locality`.
pub fn cluster(
    name: &str,
    addrs: &[&str],
    locality: &str,
    healthy: bool,
) -> proto::ClusterEndpoints {
    proto::ClusterEndpoints {
        cluster: name.into(),
        network: format!("net-{name}"),
        healthy: if healthy { addrs.len() as u32 } else { 0 },
        total: addrs.len() as u32,
        endpoints: addrs
            .iter()
            .map(|a| proto::Endpoint {
                address: a.to_string(),
                locality: locality.into(),
                healthy,
                weight: 1,
            })
            .collect(),
    }
}

pub fn service(
    name: &str,
    ns: &str,
    vip: &str,
    clusters: Vec<proto::ClusterEndpoints>,
) -> proto::GlobalService {
    proto::GlobalService {
        name: name.into(),
        namespace: ns.into(),
        vips: vec![vip.into()],
        ports: vec![
            proto::Port {
                name: "http".into(),
                number: 9080,
                protocol: "HTTP".into(),
            },
            proto::Port {
                name: "grpc-api".into(),
                number: 9090,
                protocol: "GRPC".into(),
            },
        ],
        clusters,
        exported: true,
    }
}

pub fn snapshot(version: u64, services: Vec<proto::GlobalService>) -> proto::Snapshot {
    proto::Snapshot {
        version,
        cluster: "east".into(),
        services,
    }
}

/// GET over HTTP/1.1; (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        buf.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}
