//! `isthmus dns`: binds the DNS (UDP+TCP), CoreDNS gRPC and admin
//! listeners, starts the control-plane feed, and stops everything on one
//! cancellation token.
//!
//! [`start`] returns once every listener is bound, with the addresses
//! actually bound (ports may be 0), so the lab and tests can run the
//! server in-process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_server::Server;
use isthmus_api::naming::Locality;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::feed::{self, FeedOptions};
use crate::metrics::DnsMetrics;
use crate::server::Handler;
use crate::server::forward::Forwarder;
use crate::server::grpc::CoreDnsService;
use crate::server::ratelimit::RateLimiter;
use crate::zone::{AnswerConfig, DEFAULT_TTL, Policy, Snapshot, ZoneConfig};

/// Default DNS port (UDP and TCP); 53 in Kubernetes.
pub const DEFAULT_DNS_PORT: u16 = 15053;
/// Default admin HTTP port (`/ready`, `/metrics`).
pub const DEFAULT_ADMIN_PORT: u16 = 15054;
/// Suggested port for CoreDNS's `grpc` plugin protocol (off unless asked for).
pub const DEFAULT_GRPC_PORT: u16 = 15055;
/// Idle time after which a TCP connection without a request is closed.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything `isthmus dns` is told.
#[derive(Clone, Debug)]
pub struct Options {
    /// This server's cluster (its endpoints are answered first).
    pub cluster: String,
    /// This server's locality (then endpoints by proximity to it).
    pub locality: Locality,
    /// The control plane's gRPC address (`host:port`).
    pub control_plane: String,
    /// DNS over UDP and TCP.
    pub listen: SocketAddr,
    /// Admin HTTP (`/ready`, `/metrics`); none when `None`.
    pub admin: Option<SocketAddr>,
    /// CoreDNS `grpc` plugin protocol; none when `None`.
    pub grpc: Option<SocketAddr>,
    pub zones: Vec<ZoneConfig>,
    pub ttl: Duration,
    /// Resolver for names outside the zones (REFUSED without one).
    pub upstream: Option<SocketAddr>,
    /// UDP queries per second allowed per source address.
    pub rate_limit: Option<u32>,
    /// UDP sockets bound to `listen` with SO_REUSEPORT, each with its own receive loop.
    pub udp_sockets: usize,
    /// Time in-flight queries get to finish after shutdown starts.
    pub drain_grace: Duration,
    /// Answer A/AAAA queries for service names in our own UDP loop
    /// (`server::fast`); off: hickory-server's UDP listener takes every query.
    pub udp_fast_path: bool,
}

impl Options {
    /// Defaults: zones `global.` and `clusterset.local.` with the `vip` policy, port 15053,
    /// admin 15054, no gRPC listener, TTL 5 s, one UDP socket per core.
    pub fn new(cluster: impl Into<String>, control_plane: impl Into<String>) -> Options {
        Options {
            cluster: cluster.into(),
            locality: Locality::default(),
            control_plane: control_plane.into(),
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_DNS_PORT)),
            admin: Some(SocketAddr::from(([0, 0, 0, 0], DEFAULT_ADMIN_PORT))),
            grpc: None,
            zones: ZoneConfig::defaults(Policy::Vip),
            ttl: DEFAULT_TTL,
            upstream: None,
            rate_limit: None,
            udp_sockets: std::thread::available_parallelism().map_or(1, |n| n.get()),
            drain_grace: Duration::from_secs(5),
            udp_fast_path: true,
        }
    }
}

/// Why the server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no zones configured")]
    NoZones,
    #[error("DNS server: {0}")]
    Server(String),
    #[error("CoreDNS gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// A started server: where it listens, and its task.
#[derive(Debug)]
pub struct Running {
    /// DNS over UDP and TCP (same port).
    pub dns: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub grpc: Option<SocketAddr>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    task: JoinHandle<Result<(), Error>>,
}

impl Running {
    /// The snapshot being served now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Waits until the server has stopped (after the shutdown token is cancelled).
    pub async fn wait(self) -> Result<(), Error> {
        self.task
            .await
            .map_err(|e| Error::Server(format!("task failed: {e}")))?
    }
}

/// Binds every listener and starts serving; stops when `shutdown` is cancelled.
pub async fn start(options: Options, shutdown: CancellationToken) -> Result<Running, Error> {
    if options.zones.is_empty() {
        return Err(Error::NoZones);
    }
    let config = AnswerConfig {
        zones: options.zones.clone(),
        cluster: options.cluster.clone(),
        locality: options.locality.clone(),
        ttl: options.ttl,
    };
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::empty(&config)));
    let mut registry = Registry::with_prefix("isthmus_dns");
    let metrics = DnsMetrics::register(&mut registry);
    let handler = Handler::new(
        snapshot.clone(),
        options
            .upstream
            .map(|u| Forwarder::new(u, Duration::from_secs(2))),
        options.rate_limit.map(RateLimiter::new),
        metrics.clone(),
    );

    // Bind everything first, so a port in use fails start() instead of a task.
    let mut server = Server::new(handler.clone());
    let (mut udp, tcp, dns) = bind_dns(options.listen, options.udp_sockets.max(1)).await?;
    if !options.udp_fast_path {
        for socket in udp.drain(..) {
            server.register_socket(socket);
        }
    }
    server.register_listener(tcp, TCP_IDLE_TIMEOUT, 64);
    let admin = match options.admin {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(bind_err("admin HTTP", addr))?,
        ),
        None => None,
    };
    let grpc = match options.grpc {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(bind_err("CoreDNS gRPC", addr))?,
        ),
        None => None,
    };
    let local = |l: &Option<tokio::net::TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
    let (admin_addr, grpc_addr) = (local(&admin), local(&grpc));
    tracing::info!(cluster = %options.cluster, dns = %dns, admin = ?admin_addr, grpc = ?grpc_addr,
        control_plane = %options.control_plane, "DNS server listening");

    let mut tasks = tokio::task::JoinSet::new();
    for socket in udp {
        let (handler, shutdown) = (handler.clone(), shutdown.clone());
        tasks.spawn(async move {
            crate::server::udp::serve(socket, handler, shutdown).await;
            Ok(())
        });
    }
    let feed_options = FeedOptions {
        node: format!("dns~{}~{dns}", options.cluster),
        ..FeedOptions::new(options.control_plane.clone())
    };
    tasks.spawn(feed_task(
        feed_options,
        config,
        snapshot.clone(),
        metrics,
        shutdown.clone(),
    ));
    if let Some(listener) = admin {
        let state = AdminState {
            snapshot: snapshot.clone(),
            registry: Arc::new(registry),
        };
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            admin::serve(listener, state, shutdown).await;
            Ok(())
        });
    }
    if let Some(listener) = grpc {
        let service = CoreDnsService::new(handler).into_service();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await
                .map_err(Error::Grpc)
        });
    }
    let grace = options.drain_grace;
    let task = tokio::spawn(async move {
        shutdown.cancelled().await;
        // Stop accepting; queries in flight get `grace` to finish.
        let drained = tokio::time::timeout(grace, async {
            let dns = server.shutdown_gracefully().await;
            let mut result = dns.map_err(|e| Error::Server(e.to_string()));
            while let Some(joined) = tasks.join_next().await {
                if let Ok(Err(e)) = joined {
                    result = result.and(Err(e));
                }
            }
            result
        })
        .await;
        drained.unwrap_or_else(|_| {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "DNS drain took too long; stopping"
            );
            Ok(())
        })
    });
    Ok(Running {
        dns,
        admin: admin_addr,
        grpc: grpc_addr,
        snapshot,
        task,
    })
}

async fn feed_task(
    options: FeedOptions,
    config: AnswerConfig,
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: DnsMetrics,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    feed::run(options, config, snapshot, metrics, shutdown).await;
    Ok(())
}

fn bind_err(what: &'static str, addr: SocketAddr) -> impl Fn(std::io::Error) -> Error {
    move |source| Error::Bind { what, addr, source }
}

/// The UDP sockets and the TCP listener of the DNS port. UDP and TCP must
/// share one port number; when asked for port 0 the kernel picks the UDP
/// port, and that number may already be taken on TCP (by any ephemeral
/// connection), so a few fresh picks are tried before giving up.
async fn bind_dns(
    listen: SocketAddr,
    n: usize,
) -> Result<
    (
        Vec<tokio::net::UdpSocket>,
        tokio::net::TcpListener,
        SocketAddr,
    ),
    Error,
> {
    let attempts = if listen.port() == 0 { 16 } else { 1 };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = bind_udp(listen, n).map_err(bind_err("DNS (UDP)", listen))?;
        let dns = udp[0].local_addr().map_err(bind_err("DNS (UDP)", listen))?;
        match tokio::net::TcpListener::bind(dns).await {
            Ok(tcp) => return Ok((udp, tcp, dns)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempt < attempts => {
                tracing::debug!(%dns, "TCP port taken for the picked UDP port; picking another");
            }
            Err(source) => return Err(bind_err("DNS (TCP)", dns)(source)),
        }
    }
}

/// `n` UDP sockets on one address with SO_REUSEPORT (the kernel spreads
/// clients across them, so each core gets its own receive loop).
fn bind_udp(addr: SocketAddr, n: usize) -> std::io::Result<Vec<tokio::net::UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if n > 1 {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        // A deeper receive queue absorbs bursts while a loop is busy.
        let _ = socket.set_recv_buffer_size(4 << 20);
        socket.bind(&addr.into())?;
        let std: std::net::UdpSocket = socket.into();
        // Later sockets bind the port the first one got (when asked for port 0).
        addr = std.local_addr()?;
        out.push(tokio::net::UdpSocket::from_std(std)?);
    }
    Ok(out)
}
