//! `isthmus gateway`: the east-west gateway of one cluster.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use isthmus_gateway::run::{DEFAULT_ADMIN_PORT, DEFAULT_PORT, gateway_node};
use isthmus_gateway::{ConfigSource, Options, start};
use isthmus_proxy_core::transport::SpliceConfig;
use tokio_util::sync::CancellationToken;

/// Arguments of `isthmus gateway`.
#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// This cluster's name (`topology.istio.io/cluster`).
    #[arg(long)]
    cluster: String,
    /// The control plane's xDS address (host:port or http://host:port).
    #[arg(long, default_value = "127.0.0.1:15010")]
    control_plane: String,
    /// This cluster's network name.
    #[arg(long, default_value = "")]
    network: String,
    /// Where the gateway runs (`region/zone/subzone`).
    #[arg(long, default_value = "")]
    locality: String,
    /// The SNI passthrough listener.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))]
    listen: SocketAddr,
    /// The admin server (/ready, /metrics, /config_dump, /routes, POST /drain).
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_ADMIN_PORT)))]
    admin: SocketAddr,
    /// The xDS listener to serve (default: `0.0.0.0_<listen port>`, else
    /// `0.0.0.0_15443`, else the only one).
    #[arg(long)]
    xds_listener: Option<String>,
    /// Connections open at once; at the limit accepting pauses.
    #[arg(long, default_value_t = 16384)]
    max_connections: usize,
    /// Connections open at once to one exported service port/subset.
    #[arg(long, default_value_t = 4096)]
    max_connections_per_service: usize,
    /// Time a client gets to send its ClientHello.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    client_hello_timeout: Duration,
    /// Connections with no traffic either way for this long are closed.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Splice buffer per direction, in bytes.
    #[arg(long, default_value_t = isthmus_proxy_core::transport::DEFAULT_BUFFER_SIZE)]
    buffer_size: usize,
    /// How long connections get to finish on SIGTERM.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain_grace: Duration,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<isthmus_api::duration::Duration>()
        .map(|d| d.get())
        .map_err(|e| e.to_string())
}

/// Runs the gateway until SIGTERM or Ctrl-C, then drains.
pub(crate) fn run(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    let locality = if args.locality.is_empty() {
        Default::default()
    } else {
        args.locality
            .parse()
            .map_err(|e| anyhow::anyhow!("--locality: {e}"))?
    };
    let mut options = Options::new(
        gateway_node(&args.cluster, &args.network, locality),
        ConfigSource::ControlPlane(args.control_plane),
    );
    options.listen = args.listen;
    options.admin = Some(args.admin);
    options.xds_listener = args.xds_listener;
    options.max_connections = args.max_connections;
    options.max_connections_per_service = args.max_connections_per_service;
    options.client_hello_timeout = args.client_hello_timeout;
    options.splice = SpliceConfig {
        buffer_size: args.buffer_size,
        idle_timeout: Some(args.idle_timeout),
    };
    options.drain_grace = args.drain_grace;
    let grace = options.drain_grace;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let running = start(options, shutdown.clone()).await?;
        eprintln!(
            "gateway: passthrough on {}, admin on {}",
            running.listen,
            running.admin.map(|a| a.to_string()).unwrap_or_default()
        );
        let mut stopped = tokio::spawn(running.wait());
        tokio::select! {
            // POST /drain ends here once connections finished.
            r = &mut stopped => { r?; return Ok(ExitCode::SUCCESS); }
            () = crate::control_plane::terminate() => {}
        }
        tracing::info!("SIGTERM: draining");
        shutdown.cancel();
        if tokio::time::timeout(grace + Duration::from_secs(2), stopped)
            .await
            .is_err()
        {
            tracing::warn!("drain did not finish; exiting");
        }
        Ok(ExitCode::SUCCESS)
    })
}
