//! `isthmus sidecar`: the data plane next to one workload.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use isthmus_api::naming::Locality;
use isthmus_proxy_core::xds::{NodeInfo, NodeRole};
use isthmus_sidecar::identity::CertSource;
use isthmus_sidecar::run::{DEFAULT_ADMIN_PORT, Mode, Options, start};
use isthmus_sidecar::server::Limits;
use tokio_util::sync::CancellationToken;

use crate::control_plane::terminate;

/// Arguments of `isthmus sidecar`.
#[derive(Debug, Args)]
pub(crate) struct SidecarArgs {
    /// The control plane's xDS and certificate address (host:port).
    #[arg(long)]
    control_plane: String,
    /// `<namespace>/<name>` of this workload.
    #[arg(long)]
    workload: String,
    /// Service account (the identity in the certificate follows the token, not this).
    #[arg(long, default_value = "default")]
    service_account: String,
    /// Cluster name.
    #[arg(long)]
    cluster: String,
    /// Network name.
    #[arg(long, default_value = "")]
    network: String,
    /// Locality `region[/zone[/subzone]]`.
    #[arg(long, default_value = "")]
    locality: String,
    /// Workload labels `k=v` (repeatable, or comma-separated).
    #[arg(long = "label", value_delimiter = ',')]
    labels: Vec<String>,
    /// The workload's IP (what its WorkloadEntry/Pod advertises).
    #[arg(long)]
    ip: IpAddr,
    /// Capture mode.
    #[arg(long, value_enum, default_value = "explicit")]
    mode: CaptureMode,
    /// Explicit mode: where the app sends outbound HTTP (routed by Host).
    #[arg(long, default_value = "127.0.0.1:15001")]
    outbound: SocketAddr,
    /// Explicit mode: the app's own address (replaces 127.0.0.1 for inbound).
    #[arg(long)]
    app_ip: Option<IpAddr>,
    /// Transparent mode: the inbound capture listener.
    #[arg(long, default_value = "0.0.0.0:15006")]
    inbound: SocketAddr,
    /// Admin HTTP address.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_ADMIN_PORT)))]
    admin: SocketAddr,
    /// File holding the bootstrap or service-account token for the CA.
    #[arg(long, conflicts_with = "cert_dir")]
    token_file: Option<PathBuf>,
    /// Directory with `cert-chain.pem`, `key.pem`, `root-cert.pem` instead of the CA.
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// Requested certificate lifetime (default: the CA's, 24h).
    #[arg(long, value_parser = crate::control_plane::parse_duration)]
    cert_ttl: Option<Duration>,
    /// Time in-flight requests get on SIGTERM.
    #[arg(long, default_value = "5s", value_parser = crate::control_plane::parse_duration)]
    drain_grace: Duration,
    /// Log one JSON line per request.
    #[arg(long)]
    access_log: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CaptureMode {
    Explicit,
    Transparent,
}

fn read(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Runs the sidecar until SIGTERM or Ctrl-C, then drains.
pub(crate) fn run(args: SidecarArgs) -> anyhow::Result<ExitCode> {
    let Some((namespace, name)) = args.workload.split_once('/') else {
        bail!(
            "--workload {:?}: expected <namespace>/<name>",
            args.workload
        );
    };
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let Some((k, v)) = l.split_once('=') else {
            bail!("--label {l:?}: expected key=value");
        };
        labels.insert(k.to_string(), v.to_string());
    }
    let locality = if args.locality.is_empty() {
        Locality::default()
    } else {
        args.locality
            .parse::<Locality>()
            .map_err(|e| anyhow::anyhow!("--locality {:?}: {e}", args.locality))?
    };
    let control_plane = if args.control_plane.contains("://") {
        args.control_plane.clone()
    } else {
        format!("http://{}", args.control_plane)
    };
    let cert = match (&args.cert_dir, &args.token_file) {
        (Some(dir), _) => CertSource::Static {
            chain_pem: read(&dir.join("cert-chain.pem"))?,
            key_pem: read(&dir.join("key.pem"))?,
            roots_pem: read(&dir.join("root-cert.pem"))?,
        },
        (None, Some(file)) => CertSource::Ca {
            endpoint: control_plane.clone(),
            // Re-read before every CSR: projected tokens are rotated by the kubelet.
            token: {
                read(file)?;
                isthmus_sidecar::identity::Token::File(file.clone())
            },
            validity: args.cert_ttl,
        },
        (None, None) => bail!("give --token-file (certificate from the CA) or --cert-dir"),
    };
    let node = NodeInfo {
        role: NodeRole::Sidecar,
        ip: Some(args.ip),
        workload: name.to_string(),
        namespace: namespace.to_string(),
        cluster: args.cluster,
        network: args.network,
        service_account: args.service_account,
        labels,
        locality,
    };
    let mode = match args.mode {
        CaptureMode::Explicit => Mode::Explicit {
            outbound: args.outbound,
            inbound_ip: args.ip,
            app_ip: args.app_ip,
        },
        CaptureMode::Transparent => Mode::Transparent {
            outbound: args.outbound,
            inbound: args.inbound,
        },
    };
    let options = Options {
        node,
        control_plane,
        cert,
        mode,
        admin: args.admin,
        drain_grace: args.drain_grace,
        access_log: args.access_log,
        limits: Limits::default(),
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let running = start(options, shutdown.clone()).await?;
        eprintln!(
            "sidecar: outbound on {}, admin on {}",
            running.outbound, running.admin
        );
        terminate().await;
        tracing::info!("draining");
        shutdown.cancel();
        running.join().await;
        Ok(ExitCode::SUCCESS)
    })
}
