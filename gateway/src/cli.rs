//! Command-line arguments of the gateway and its run until a signal,
//! shared by its own thin binary (`isthmus-gateway`, which maps only the
//! gateway's code) and the multi-call `isthmus gateway`.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use isthmus_api::naming::Locality;
use isthmus_proxy_core::xds::XdsProtocol;
use tokio_util::sync::CancellationToken;

use crate::run::{
    Bulk, ConfigSource, DEFAULT_ADMIN_PORT, DEFAULT_BULK_BUFFER, DEFAULT_PIPE_SIZE, DEFAULT_PORT,
    DEFAULT_ZERO_COPY, Error, Options, gateway_node, start,
};

/// Arguments of the gateway.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// This cluster's name (`topology.istio.io/cluster`).
    #[arg(long)]
    pub cluster: String,
    /// The control plane's xDS address (host:port or http://host:port).
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub control_plane: String,
    /// This cluster's network name.
    #[arg(long, default_value = "")]
    pub network: String,
    /// Where the gateway runs (`region/zone/subzone`).
    #[arg(long, default_value = "")]
    pub locality: String,
    /// The SNI passthrough listener.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))]
    pub listen: SocketAddr,
    /// The admin server (/ready, /metrics, /config_dump, /routes, POST /drain).
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_ADMIN_PORT)))]
    pub admin: SocketAddr,
    /// The xDS listener to serve (default: `0.0.0.0_<listen port>`, else
    /// `0.0.0.0_15443`, else the only one).
    #[arg(long)]
    pub xds_listener: Option<String>,
    /// Connections open at once; at the limit accepting pauses.
    #[arg(long, default_value_t = 16384)]
    pub max_connections: usize,
    /// Connections open at once to one exported service port/subset.
    #[arg(long, default_value_t = 4096)]
    pub max_connections_per_service: usize,
    /// Time a client gets to send its ClientHello.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub client_hello_timeout: Duration,
    /// Connections with no traffic either way for this long are closed.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Bytes in flight per direction in bulk with --zero-copy off: the
    /// buffer bulk is copied through (made when bulk starts).
    #[arg(long, default_value_t = DEFAULT_BULK_BUFFER)]
    pub buffer_size: usize,
    /// Bytes in flight per direction in bulk with --zero-copy on: the pipe's
    /// size (rounded up by the kernel to a power of two pages).
    #[arg(long, default_value_t = DEFAULT_PIPE_SIZE)]
    pub pipe_size: usize,
    /// Move bulk with splice(2) through a pipe per direction (on, Linux)
    /// instead of copying it through a buffer (off). Small messages are
    /// copied through the stack either way.
    #[arg(long, value_enum, default_value_t = Switch::from(DEFAULT_ZERO_COPY))]
    pub zero_copy: Switch,
    /// How long connections get to finish on SIGTERM.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_grace: Duration,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// ADS flavour: `delta` (incremental; falls back to state of the world
    /// when the control plane does not serve it) or `sotw`.
    #[arg(long, default_value = "delta")]
    pub xds_protocol: XdsProtocol,
}

/// `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

impl From<bool> for Switch {
    fn from(on: bool) -> Self {
        if on { Switch::On } else { Switch::Off }
    }
}

/// Why the arguments do not make a gateway.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {value:?}: {reason}")]
pub struct ArgsError {
    pub flag: &'static str,
    pub value: String,
    pub reason: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<isthmus_api::duration::Duration>()
        .map(|d| d.get())
        .map_err(|e| e.to_string())
}

impl GatewayArgs {
    /// The gateway's [`Options`].
    ///
    /// # Errors
    /// A `--locality` that is not `region[/zone[/subzone]]`, a zero
    /// `--buffer-size` or `--pipe-size`.
    pub fn options(&self) -> Result<Options, ArgsError> {
        let locality = if self.locality.is_empty() {
            Locality::default()
        } else {
            self.locality.parse().map_err(|e| ArgsError {
                flag: "--locality",
                value: self.locality.clone(),
                reason: format!("{e}"),
            })?
        };
        for (flag, size) in [
            ("--buffer-size", self.buffer_size),
            ("--pipe-size", self.pipe_size),
        ] {
            if size == 0 {
                return Err(ArgsError {
                    flag,
                    value: "0".into(),
                    reason: "must be at least 1 byte".into(),
                });
            }
        }
        let mut options = Options::new(
            gateway_node(&self.cluster, &self.network, locality),
            ConfigSource::ControlPlane(self.control_plane.clone()),
        );
        options.listen = self.listen;
        options.admin = Some(self.admin);
        options.xds_listener = self.xds_listener.clone();
        options.max_connections = self.max_connections;
        options.max_connections_per_service = self.max_connections_per_service;
        options.client_hello_timeout = self.client_hello_timeout;
        options.idle_timeout = Some(self.idle_timeout);
        options.bulk = match self.zero_copy {
            Switch::On => Bulk::Splice(self.pipe_size),
            Switch::Off => Bulk::Copy(self.buffer_size),
        };
        options.drain_grace = self.drain_grace;
        options.xds_protocol = self.xds_protocol;
        Ok(options)
    }

    /// The runtime: `--threads` workers, by default one per core.
    ///
    /// # Errors
    /// If the runtime's threads or I/O driver cannot be created.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = self.threads {
            rt.worker_threads(n.max(1));
        }
        rt.enable_all().build()
    }
}

/// Runs a gateway until `terminate` resolves, then drains it (connections
/// get the grace period, plus 2 s to close the rest); returns earlier if
/// `POST /drain` stopped it.
///
/// # Errors
/// If the gateway cannot start.
pub async fn run_until(options: Options, terminate: impl Future<Output = ()>) -> Result<(), Error> {
    let grace = options.drain_grace;
    let shutdown = CancellationToken::new();
    let running = start(options, shutdown.clone()).await?;
    eprintln!(
        "gateway: passthrough on {}, admin on {}",
        running.listen,
        running.admin.map(|a| a.to_string()).unwrap_or_default()
    );
    let stopped = running.wait();
    tokio::pin!(stopped);
    tokio::select! {
        // POST /drain ends here once connections finished.
        () = &mut stopped => return Ok(()),
        () = terminate => {}
    }
    tracing::info!("SIGTERM: draining");
    shutdown.cancel();
    if tokio::time::timeout(grace + Duration::from_secs(2), stopped)
        .await
        .is_err()
    {
        tracing::warn!("drain did not finish; exiting");
    }
    Ok(())
}
