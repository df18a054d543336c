//! `isthmus dns`: the cross-cluster DNS server (`.global`, `clusterset.local`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use isthmus_api::naming::Locality;
use isthmus_dns::run::{DEFAULT_ADMIN_PORT, DEFAULT_DNS_PORT, Options, start};
use isthmus_dns::zone::{Policy, ZoneConfig};
use tokio_util::sync::CancellationToken;

/// Arguments of `isthmus dns`.
#[derive(Debug, Args)]
pub(crate) struct DnsArgs {
    /// This cluster's name: its endpoints are answered first.
    #[arg(long)]
    cluster: String,
    /// The control plane's gRPC address (the DNS feed is served next to xDS).
    #[arg(long, default_value = "127.0.0.1:15010")]
    control_plane: String,
    /// DNS address (UDP and TCP).
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_DNS_PORT)))]
    listen: SocketAddr,
    /// Admin HTTP address (/ready, /metrics).
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_ADMIN_PORT)))]
    admin: SocketAddr,
    /// Also serve CoreDNS's `grpc` plugin protocol on this address.
    #[arg(long)]
    grpc: Option<SocketAddr>,
    /// This server's locality, region[/zone[/subzone]]: then endpoints by proximity to it.
    #[arg(long)]
    locality: Option<Locality>,
    /// What A/AAAA answers carry: the service VIP, or endpoint addresses in locality order.
    #[arg(long, default_value = "vip")]
    policy: Policy,
    /// Zones to serve, each `<zone>` or `<zone>=<policy>` (default: global. and
    /// clusterset.local. with --policy).
    #[arg(long = "zone", value_name = "ZONE[=POLICY]")]
    zones: Vec<String>,
    /// Forward names outside the zones to this resolver (otherwise REFUSED).
    #[arg(long)]
    upstream: Option<SocketAddr>,
    /// Answer TTL in seconds.
    #[arg(long, default_value_t = 5)]
    ttl: u64,
    /// UDP queries per second allowed per source address (no limit without it).
    #[arg(long)]
    rate_limit: Option<u32>,
    /// UDP sockets (SO_REUSEPORT receive loops); default one per core.
    #[arg(long)]
    udp_sockets: Option<usize>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Answer A/AAAA queries for service names over UDP in our own receive loop
    /// (`on`); `off` hands every UDP query to hickory-server's listener.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    udp_fast_path: String,
}

fn zones(args: &DnsArgs) -> anyhow::Result<Vec<ZoneConfig>> {
    if args.zones.is_empty() {
        return Ok(ZoneConfig::defaults(args.policy));
    }
    args.zones
        .iter()
        .map(|z| {
            let (name, policy) = match z.split_once('=') {
                Some((name, policy)) => (name, policy.parse().map_err(anyhow::Error::msg)?),
                None => (z.as_str(), args.policy),
            };
            ZoneConfig::new(name, policy).map_err(anyhow::Error::msg)
        })
        .collect()
}

/// Runs the DNS server until SIGTERM or Ctrl-C.
pub(crate) fn run(args: DnsArgs) -> anyhow::Result<ExitCode> {
    let mut options = Options::new(args.cluster.clone(), args.control_plane.clone());
    options.listen = args.listen;
    options.admin = Some(args.admin);
    options.grpc = args.grpc;
    options.locality = args.locality.clone().unwrap_or_default();
    options.zones = zones(&args)?;
    options.upstream = args.upstream;
    options.ttl = Duration::from_secs(args.ttl);
    options.rate_limit = args.rate_limit;
    options.udp_fast_path = args.udp_fast_path == "on";
    if let Some(n) = args.udp_sockets {
        options.udp_sockets = n;
    }
    let grace = options.drain_grace;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let running = start(options, shutdown.clone())
            .await
            .context("starting the DNS server")?;
        eprintln!(
            "dns: DNS on {} (UDP, TCP), admin on {}{}",
            running.dns,
            running.admin.map(|a| a.to_string()).unwrap_or_default(),
            running
                .grpc
                .map(|a| format!(", CoreDNS gRPC on {a}"))
                .unwrap_or_default(),
        );
        isthmus_proxy_core::process::terminate().await;
        tracing::info!("draining");
        shutdown.cancel();
        match tokio::time::timeout(grace + Duration::from_secs(1), running.wait()).await {
            Ok(r) => r.map(|()| ExitCode::SUCCESS).map_err(Into::into),
            Err(_) => {
                tracing::warn!("drain grace period over; forcing shutdown");
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}
