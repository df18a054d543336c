//! `isthmus federation`: this cluster's federation controller, in directory
//! mode (`--config-dir`, `--ca-dir`: the lab's) or Kubernetes mode
//! (`--kubernetes`, `--ca-secret`: the Helm chart's).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use isthmus_api::duration::Duration as Span;
use isthmus_federation::catalog::{DEFAULT_ALLOWED_LABELS, LabelAllowList};
use isthmus_federation::kubernetes::Kubernetes;
use isthmus_federation::kubernetes::ca::SecretRef;
use isthmus_federation::run::DEFAULT_ADMIN_PORT;
use isthmus_federation::{CaSource, Options, start};
use tokio_util::sync::CancellationToken;

/// Arguments of `isthmus federation`.
#[derive(Debug, Args)]
pub(crate) struct FederationArgs {
    /// This cluster's name (the MeshFederation whose spec.local.cluster matches is used).
    #[arg(long)]
    cluster: String,
    /// Directory mode: MeshFederation, ServiceExports and workloads are read from this
    /// directory, imported ServiceEntries written to its generated/ folder.
    #[arg(long, conflicts_with = "kubernetes")]
    config_dir: Option<PathBuf>,
    /// Kubernetes mode: read through the Kubernetes API (in-cluster, else kubeconfig);
    /// imported ServiceEntries are server-side applied (field manager isthmus-federation),
    /// the MeshFederation gets a finalizer and a status.
    #[arg(long)]
    kubernetes: bool,
    /// With --kubernetes: watch namespaced kinds only in this namespace (repeat; include
    /// the MeshFederation's). Default: every namespace.
    #[arg(long = "namespace", value_name = "NAMESPACE")]
    namespaces: Vec<String>,
    /// The cluster's cacerts directory (`isthmus ca intermediate`); reloaded when it changes.
    #[arg(long, conflicts_with = "ca_secret")]
    ca_dir: Option<PathBuf>,
    /// With --kubernetes: `<namespace>/<name>` of a Secret in the cacerts layout (this
    /// cluster's intermediate); reloaded when it changes.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    ca_secret: Option<String>,
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

/// The controller's options from the flags, or what is wrong with their combination.
fn options(args: &FederationArgs) -> anyhow::Result<Options> {
    let ca = match (&args.ca_dir, &args.ca_secret) {
        (Some(dir), None) => CaSource::Directory(dir.clone()),
        (None, Some(secret)) => {
            secret.parse::<SecretRef>()?;
            CaSource::Secret(secret.clone())
        }
        (None, None) => bail!(
            "give the cluster CA: --ca-dir <dir>, or --ca-secret <namespace>/<name> with --kubernetes"
        ),
        (Some(_), Some(_)) => bail!("give one of --ca-dir or --ca-secret, not both"),
    };
    let mut options = match (&args.config_dir, args.kubernetes) {
        (Some(dir), false) => {
            if !args.namespaces.is_empty() {
                bail!(
                    "--namespace limits what --kubernetes watches; a config directory has no namespaces to choose"
                );
            }
            let CaSource::Directory(ca_dir) = &ca else {
                bail!(
                    "--ca-secret is read through the Kubernetes API: it needs --kubernetes (or use --ca-dir)"
                );
            };
            Options::new(&args.cluster, dir, ca_dir)
        }
        (None, true) => Options::kubernetes(
            &args.cluster,
            Kubernetes {
                client: None,
                namespaces: Some(args.namespaces.clone()).filter(|ns| !ns.is_empty()),
            },
            ca,
        ),
        (None, false) => bail!("give exactly one of --config-dir <dir> or --kubernetes"),
        (Some(_), true) => bail!("give one of --config-dir or --kubernetes, not both"),
    };
    options.listen = args.listen;
    options.admin = Some(args.admin);
    options.domain = args.domain.clone();
    options.allowed_labels = if args.allowed_labels.is_empty() {
        LabelAllowList::new(DEFAULT_ALLOWED_LABELS.iter().copied())
    } else {
        LabelAllowList::new(args.allowed_labels.clone())
    };
    options.timings.probe_interval = args.probe_interval.get();
    options.timings.probe_timeout = args.probe_interval.get().max(Duration::from_millis(100));
    options.timings.probe_failures = args.probe_failures;
    options.timings.staleness = args.staleness.get();
    options.trust_bundle_out = args.trust_bundle_out.clone();
    Ok(options)
}

/// Runs the controller until SIGTERM or Ctrl-C.
pub(crate) fn run(args: FederationArgs) -> anyhow::Result<ExitCode> {
    let options = options(&args)?;
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
        isthmus_proxy_core::process::terminate().await;
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: FederationArgs,
    }

    fn parse(flags: &[&str]) -> anyhow::Result<Options> {
        let mut argv = vec!["federation", "--cluster", "east"];
        argv.extend_from_slice(flags);
        let cli = Cli::try_parse_from(argv)?;
        options(&cli.args)
    }

    #[test]
    fn directory_and_kubernetes_modes() {
        let o = parse(&["--config-dir", "/c", "--ca-dir", "/ca"]).unwrap();
        assert!(
            matches!(o.source, isthmus_federation::Source::Directory(ref d) if d == std::path::Path::new("/c"))
        );
        assert_eq!(o.ca, CaSource::Directory("/ca".into()));

        let o = parse(&[
            "--kubernetes",
            "--namespace",
            "isthmus-system",
            "--namespace",
            "sample",
            "--ca-secret",
            "isthmus-system/cacerts",
        ])
        .unwrap();
        let isthmus_federation::Source::Kubernetes(k) = &o.source else {
            panic!("not Kubernetes mode: {o:?}");
        };
        assert_eq!(
            k.namespaces.as_deref(),
            Some(&["isthmus-system".to_owned(), "sample".to_owned()][..])
        );
        assert_eq!(o.ca, CaSource::Secret("isthmus-system/cacerts".into()));

        // A CA directory is fine in Kubernetes mode too; no --namespace watches all.
        let o = parse(&["--kubernetes", "--ca-dir", "/ca"]).unwrap();
        assert!(
            matches!(&o.source, isthmus_federation::Source::Kubernetes(k) if k.namespaces.is_none())
        );
    }

    #[test]
    fn wrong_combinations_say_what_to_do() {
        for (flags, expected) in [
            (&["--ca-dir", "/ca"][..], "exactly one of --config-dir"),
            (
                &["--config-dir", "/c", "--kubernetes", "--ca-dir", "/ca"][..],
                "cannot be used with",
            ),
            (&["--kubernetes"][..], "give the cluster CA"),
            (
                &[
                    "--kubernetes",
                    "--ca-dir",
                    "/ca",
                    "--ca-secret",
                    "ns/cacerts",
                ][..],
                "cannot be used with",
            ),
            (
                &["--config-dir", "/c", "--ca-secret", "ns/cacerts"][..],
                "--ca-secret is read through the Kubernetes API",
            ),
            (
                &["--config-dir", "/c", "--ca-dir", "/ca", "--namespace", "x"][..],
                "--namespace limits what --kubernetes watches",
            ),
            (
                &["--kubernetes", "--ca-secret", "cacerts"][..],
                "CA Secret cacerts: must be <namespace>/<name>",
            ),
        ] {
            let e = format!("{:#}", parse(flags).unwrap_err());
            assert!(e.contains(expected), "{flags:?}: {e}");
        }
    }
}
