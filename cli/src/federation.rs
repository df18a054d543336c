//! `isthmus federation`: this cluster's federation controller (directory mode).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use isthmus_api::duration::Duration as Span;
use isthmus_federation::catalog::{DEFAULT_ALLOWED_LABELS, LabelAllowList};
use isthmus_federation::run::DEFAULT_ADMIN_PORT;
use isthmus_federation::{Options, start};
use tokio_util::sync::CancellationToken;

/// Arguments of `isthmus federation`.
#[derive(Debug, Args)]
pub(crate) struct FederationArgs {
    /// This cluster's name (the MeshFederation whose spec.local.cluster matches is used).
    #[arg(long)]
    cluster: String,
    /// Config directory: MeshFederation, ServiceExports and workloads are read from it,
    /// imported ServiceEntries written to its generated/ folder.
    #[arg(long)]
    config_dir: PathBuf,
    /// The cluster's cacerts directory (`isthmus ca intermediate`); reloaded when it changes.
    #[arg(long)]
    ca_dir: PathBuf,
    /// Federation API address (mTLS); default spec.local.federationListen, else 0.0.0.0:15021.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin HTTP address (/ready, /status, /metrics).
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_ADMIN_PORT)))]
    admin: SocketAddr,
    /// Kubernetes cluster domain of local service names.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// Endpoint label that may cross to peers (repeat; default app and version).
    #[arg(long = "allowed-label", value_name = "KEY")]
    allowed_labels: Vec<String>,
    /// How often each peer gateway is probed.
    #[arg(long, default_value = "1s")]
    probe_interval: Span,
    /// Failed probes in a row before a peer gateway's endpoints are unhealthy.
    #[arg(long, default_value_t = 3)]
    probe_failures: u32,
    /// How long a dead peer's services are kept (unhealthy) before they are removed.
    #[arg(long, default_value = "10m")]
    staleness: Span,
    /// Write every trusted root (this cluster's and those peers announced) here, PEM.
    #[arg(long)]
    trust_bundle_out: Option<PathBuf>,
}

/// Runs the controller until SIGTERM or Ctrl-C.
pub(crate) fn run(args: FederationArgs) -> anyhow::Result<ExitCode> {
    let mut options = Options::new(&args.cluster, &args.config_dir, &args.ca_dir);
    options.listen = args.listen;
    options.admin = Some(args.admin);
    options.domain = args.domain;
    options.allowed_labels = if args.allowed_labels.is_empty() {
        LabelAllowList::new(DEFAULT_ALLOWED_LABELS.iter().copied())
    } else {
        LabelAllowList::new(args.allowed_labels)
    };
    options.timings.probe_interval = args.probe_interval.get();
    options.timings.probe_timeout = args.probe_interval.get().max(Duration::from_millis(100));
    options.timings.probe_failures = args.probe_failures;
    options.timings.staleness = args.staleness.get();
    options.trust_bundle_out = args.trust_bundle_out;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let running = start(options, shutdown.clone())
            .await
            .context("starting the federation controller")?;
        eprintln!(
            "federation: cluster {} on {} (mTLS), admin on {}",
            args.cluster,
            running.federation,
            running.admin.map(|a| a.to_string()).unwrap_or_default(),
        );
        crate::control_plane::terminate().await;
        tracing::info!("stopping");
        shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(5), running.wait()).await {
            Ok(r) => r.map(|()| ExitCode::SUCCESS).map_err(Into::into),
            Err(_) => {
                tracing::warn!("shutdown took over 5 s; forcing it");
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}
