//! `isthmus control-plane` and `isthmus proxy-config`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use isthmus_control_plane::dns_feed::VipRange;
use isthmus_control_plane::inject::{Template, TlsFiles};
use isthmus_control_plane::resolve::ResolverOptions;
use isthmus_control_plane::run::{
    DEFAULT_DEBUG_PORT, DEFAULT_XDS_PORT, InjectOptions, MoreOptions, Options, Source, start_full,
};
use tokio_util::sync::CancellationToken;

/// Arguments of `isthmus control-plane`.
#[derive(Debug, Args)]
pub(crate) struct ControlPlaneArgs {
    /// This cluster's name (`topology.istio.io/cluster`).
    #[arg(long)]
    cluster: String,
    /// This cluster's network name.
    #[arg(long, default_value = "")]
    network: String,
    /// Read config from this directory of YAML (watched).
    #[arg(
        long,
        conflicts_with = "kubernetes",
        required_unless_present = "kubernetes"
    )]
    config_dir: Option<PathBuf>,
    /// Read config from the Kubernetes API (in-cluster or kubeconfig).
    #[arg(long)]
    kubernetes: bool,
    /// With --kubernetes: only these namespaces (comma-separated).
    #[arg(long, value_delimiter = ',')]
    namespaces: Option<Vec<String>>,
    /// Istio `cacerts` directory of this cluster's intermediate CA. Without it a
    /// development CA is self-signed (never do that in production).
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// With --kubernetes: `<namespace>/<name>` of a Secret in the cacerts layout.
    #[arg(long, conflicts_with = "ca_dir")]
    ca_secret: Option<String>,
    /// Trust domain of the development CA (ignored with --ca-dir).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Directory mode: token file that authenticates certificate requests.
    #[arg(long)]
    bootstrap_tokens: Option<PathBuf>,
    /// PEM roots added to the trust bundle served as ROOTCA (peers' roots:
    /// the federation controller's --trust-bundle-out); re-read when it changes.
    #[arg(long)]
    extra_roots: Option<PathBuf>,
    /// How often the CA (--ca-dir or --ca-secret) and --extra-roots are
    /// checked for changes; a good change is used without a restart.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    ca_reload_interval: Duration,
    /// CIDR range of the federation-wide VIPs of global services (DNS `vip`
    /// answers and the sidecars' TCP listeners). Use the same range in every
    /// cluster of a federation: VIPs are a function of the service name.
    #[arg(long, default_value = isthmus_control_plane::dns_feed::vip::DEFAULT_RANGE)]
    vip_range: VipRange,
    /// DNS server (ip:port) for hostname gateway addresses of MeshFederations,
    /// instead of the system's (/etc/resolv.conf). Repeatable.
    #[arg(long)]
    gateway_dns_server: Vec<SocketAddr>,
    /// Kubernetes cluster domain.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// xDS and certificate service (gRPC) address.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_XDS_PORT)))]
    listen: SocketAddr,
    /// Debug HTTP address (/ready, /metrics, /debug/*).
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_DEBUG_PORT)))]
    debug_listen: SocketAddr,
    /// How long streams get to finish on SIGTERM.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_grace: Duration,
    /// Serve the sidecar-injection webhook (HTTPS, `POST /inject`) here, e.g. 0.0.0.0:15017.
    #[arg(long, requires_all = ["inject_cert", "inject_key"])]
    inject_listen: Option<SocketAddr>,
    /// PEM certificate chain of the webhook (re-read when it changes).
    #[arg(long)]
    inject_cert: Option<PathBuf>,
    /// PEM private key of the webhook.
    #[arg(long)]
    inject_key: Option<PathBuf>,
    /// Image of the injected sidecar and init containers.
    #[arg(long, default_value = "isthmus:dev")]
    inject_image: String,
    /// imagePullPolicy of the injected containers.
    #[arg(long, default_value = "IfNotPresent")]
    inject_image_pull_policy: String,
    /// The xDS/CA address injected sidecars dial.
    #[arg(long, default_value = "isthmus-control-plane.isthmus-system.svc:15010")]
    inject_control_plane: String,
    /// Locality `region/zone` given to injected sidecars (the node is unknown at admission).
    #[arg(long, default_value = "")]
    inject_locality: String,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<isthmus_api::duration::Duration>()
        .map(|d| d.get())
        .map_err(|e| e.to_string())
}

/// Runs the control plane until SIGTERM or Ctrl-C.
pub(crate) fn run(args: ControlPlaneArgs) -> anyhow::Result<ExitCode> {
    let source = match (args.config_dir, args.kubernetes) {
        (Some(dir), false) => Source::Directory(dir),
        (None, true) => Source::Kubernetes {
            namespaces: args.namespaces,
        },
        _ => bail!("give exactly one of --config-dir or --kubernetes"),
    };
    let options = Options {
        cluster: args.cluster,
        network: args.network,
        domain: args.domain,
        source,
        ca_dir: args.ca_dir,
        ca_secret: args.ca_secret,
        trust_domain: args.trust_domain,
        bootstrap_tokens: args.bootstrap_tokens,
        xds_listen: args.listen,
        debug_listen: args.debug_listen,
        drain_grace: args.drain_grace,
    };
    let inject = match (args.inject_listen, args.inject_cert, args.inject_key) {
        (Some(listen), Some(cert), Some(key)) => Some(InjectOptions {
            listen,
            tls: TlsFiles { cert, key },
            template: Template {
                image: args.inject_image,
                image_pull_policy: args.inject_image_pull_policy,
                control_plane: args.inject_control_plane,
                locality: args.inject_locality,
                ..Template::default()
            },
        }),
        (None, _, _) => None,
        _ => bail!("--inject-listen needs --inject-cert and --inject-key"),
    };
    let more = MoreOptions {
        inject,
        extra_roots: args.extra_roots,
        ca_reload_every: args.ca_reload_interval,
        vip_range: args.vip_range,
        gateway_dns: ResolverOptions {
            name_servers: args.gateway_dns_server,
            ..ResolverOptions::default()
        },
    };
    let grace = options.drain_grace;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let (bound, run) = start_full(options, more, shutdown.clone()).await?;
        eprintln!(
            "control plane: xDS on {}, debug on {}",
            bound.xds, bound.debug
        );
        if let Some(addr) = bound.inject {
            eprintln!("control plane: injection webhook on https://{addr}/inject");
        }
        let mut server = tokio::spawn(run);
        tokio::select! {
            r = &mut server => return r?.map(|()| ExitCode::SUCCESS).map_err(Into::into),
            _ = isthmus_proxy_core::process::terminate() => {}
        }
        tracing::info!("draining");
        shutdown.cancel();
        match tokio::time::timeout(grace + Duration::from_secs(1), server).await {
            Ok(r) => r?.map(|()| ExitCode::SUCCESS).map_err(Into::into),
            Err(_) => {
                tracing::warn!("drain grace period over; forcing shutdown");
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// Which xDS type `proxy-config` shows.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum ConfigKind {
    Listeners,
    Routes,
    Clusters,
    Endpoints,
    Secrets,
}

impl ConfigKind {
    fn type_url(self) -> &'static str {
        use isthmus_control_plane::xds;
        match self {
            ConfigKind::Listeners => xds::LISTENER,
            ConfigKind::Routes => xds::ROUTE,
            ConfigKind::Clusters => xds::CLUSTER,
            ConfigKind::Endpoints => xds::ENDPOINT,
            ConfigKind::Secrets => xds::SECRET,
        }
    }
}

/// `isthmus proxy-config <kind> <proxy-id> --control-plane <debug addr>`.
pub(crate) fn proxy_config(
    kind: ConfigKind,
    proxy: &str,
    control_plane: &str,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    let encoded = percent_encoding::utf8_percent_encode(proxy, percent_encoding::NON_ALPHANUMERIC);
    let url = format!("http://{control_plane}/debug/config_dump?proxy={encoded}");
    let (status, body) = rt
        .block_on(get(&url))
        .with_context(|| format!("fetching {url}"))?;
    if status != 200 {
        bail!("{url}: HTTP {status}: {}", body.trim());
    }
    let dump: serde_json::Value =
        serde_json::from_str(&body).context("control plane returned invalid JSON")?;
    let resources = dump
        .get(kind.type_url())
        .cloned()
        .unwrap_or(serde_json::Value::Array(Vec::new()));
    if json {
        serde_json::to_writer_pretty(&mut *out, &resources)?;
        writeln!(out)?;
    } else {
        for r in resources.as_array().into_iter().flatten() {
            let name = r
                .get("name")
                .or_else(|| r.get("clusterName"))
                .and_then(|n| n.as_str())
                .unwrap_or("?");
            writeln!(out, "{name}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.get(url.parse()?))
        .await
        .context("timed out")??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
