//! Command-line arguments and run of the sidecar, shared by its own thin
//! binary (`isthmus-sidecar`, small enough to map little memory) and the
//! multi-call `isthmus sidecar`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use isthmus_api::naming::Locality;
use isthmus_proxy_core::xds::{NodeInfo, NodeRole, XdsProtocol};

use tokio_util::sync::CancellationToken;

use crate::identity::{CertSource, Token};
use crate::run::{DEFAULT_ADMIN_PORT, Mode, Options, RunError, start};
use crate::server::Limits;

/// Arguments of the sidecar.
#[derive(Debug, Args)]
pub struct SidecarArgs {
    /// The control plane's xDS and certificate address (host:port).
    #[arg(long)]
    pub control_plane: String,
    /// `<namespace>/<name>` of this workload.
    #[arg(long)]
    pub workload: String,
    /// Service account (the identity in the certificate follows the token, not this).
    #[arg(long, default_value = "default")]
    pub service_account: String,
    /// Cluster name.
    #[arg(long)]
    pub cluster: String,
    /// Network name.
    #[arg(long, default_value = "")]
    pub network: String,
    /// Locality `region[/zone[/subzone]]`.
    #[arg(long, default_value = "")]
    pub locality: String,
    /// Workload labels `k=v` (repeatable, or comma-separated).
    #[arg(long = "label", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// The workload's IP (what its WorkloadEntry/Pod advertises).
    #[arg(long)]
    pub ip: IpAddr,
    /// Capture mode.
    #[arg(long, value_enum, default_value = "explicit")]
    pub mode: CaptureMode,
    /// Explicit mode: where the app sends outbound HTTP (routed by Host).
    #[arg(long, default_value = "127.0.0.1:15001")]
    pub outbound: SocketAddr,
    /// Explicit mode: the app's own address (replaces 127.0.0.1 for inbound).
    #[arg(long)]
    pub app_ip: Option<IpAddr>,
    /// Transparent mode: the inbound capture listener.
    #[arg(long, default_value = "0.0.0.0:15006")]
    pub inbound: SocketAddr,
    /// Admin HTTP address.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_ADMIN_PORT)))]
    pub admin: SocketAddr,
    /// File holding the bootstrap or service-account token for the CA.
    #[arg(long, conflicts_with = "cert_dir")]
    pub token_file: Option<PathBuf>,
    /// Directory with `cert-chain.pem`, `key.pem`, `root-cert.pem` instead of the CA.
    #[arg(long)]
    pub cert_dir: Option<PathBuf>,
    /// Requested certificate lifetime (default: the CA's, 24h).
    #[arg(long, value_parser = parse_duration)]
    pub cert_ttl: Option<Duration>,
    /// Time in-flight requests get on SIGTERM.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_grace: Duration,
    /// Log one JSON line per request.
    #[arg(long)]
    pub access_log: bool,
    /// Worker threads of the data plane (Envoy's `--concurrency`; Istio runs
    /// 2): each owns the connections it is given and their upstream
    /// connections. The main thread runs xDS, certificates and the accept
    /// loops; 0 runs the connections there too.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// ADS flavour: `delta` (incremental; falls back to state of the world
    /// when the control plane does not serve it) or `sotw`.
    #[arg(long, default_value = "delta")]
    pub xds_protocol: XdsProtocol,
    /// Keep the executable's start-up code resident (by default, once the
    /// sidecar serves and its config is quiet, the pages only start-up and
    /// config compilation ran are dropped from its resident set).
    #[arg(long)]
    pub keep_startup_pages: bool,
}

/// How traffic reaches the sidecar.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum CaptureMode {
    /// The app sends to the sidecar's outbound address.
    Explicit,
    /// iptables redirects to 15001/15006.
    Transparent,
}

/// Why the arguments do not make a sidecar.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("{flag} {value:?}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("give --token-file (certificate from the CA) or --cert-dir")]
    NoCertificate,
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<isthmus_api::duration::Duration>()
        .map(|d| d.get())
        .map_err(|e| e.to_string())
}

fn read(path: &Path) -> Result<String, ArgsError> {
    std::fs::read_to_string(path).map_err(|source| ArgsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl SidecarArgs {
    /// The sidecar's [`Options`] (reads the token or certificate files).
    pub fn options(&self) -> Result<Options, ArgsError> {
        let invalid = |flag, value: &str, reason: String| ArgsError::Invalid {
            flag,
            value: value.to_string(),
            reason,
        };
        let Some((namespace, name)) = self.workload.split_once('/') else {
            let reason = "expected <namespace>/<name>".into();
            return Err(invalid("--workload", &self.workload, reason));
        };
        let mut labels = BTreeMap::new();
        for l in &self.labels {
            let Some((k, v)) = l.split_once('=') else {
                return Err(invalid("--label", l, "expected key=value".into()));
            };
            labels.insert(k.to_string(), v.to_string());
        }
        let locality = if self.locality.is_empty() {
            Locality::default()
        } else {
            self.locality
                .parse::<Locality>()
                .map_err(|e| invalid("--locality", &self.locality, e.to_string()))?
        };
        let control_plane = if self.control_plane.contains("://") {
            self.control_plane.clone()
        } else {
            format!("http://{}", self.control_plane)
        };
        let cert = match (&self.cert_dir, &self.token_file) {
            (Some(dir), _) => CertSource::Static {
                chain_pem: read(&dir.join("cert-chain.pem"))?,
                key_pem: read(&dir.join("key.pem"))?,
                roots_pem: read(&dir.join("root-cert.pem"))?,
            },
            // Read now to fail early, and again before every CSR: projected tokens rotate.
            (None, Some(file)) => {
                read(file)?;
                CertSource::Ca {
                    endpoint: control_plane.clone(),
                    token: Token::File(file.clone()),
                    validity: self.cert_ttl,
                }
            }
            (None, None) => return Err(ArgsError::NoCertificate),
        };
        let mode = match self.mode {
            CaptureMode::Explicit => Mode::Explicit {
                outbound: self.outbound,
                inbound_ip: self.ip,
                app_ip: self.app_ip,
            },
            CaptureMode::Transparent => Mode::Transparent {
                outbound: self.outbound,
                inbound: self.inbound,
            },
        };
        Ok(Options {
            node: NodeInfo {
                role: NodeRole::Sidecar,
                ip: Some(self.ip),
                workload: name.to_string(),
                namespace: namespace.to_string(),
                cluster: self.cluster.clone(),
                network: self.network.clone(),
                service_account: self.service_account.clone(),
                labels,
                locality,
            },
            control_plane,
            cert,
            mode,
            admin: self.admin,
            drain_grace: self.drain_grace,
            access_log: self.access_log,
            limits: Limits::default(),
            workers: self.concurrency,
            xds_protocol: self.xds_protocol,
            release_pages: !self.keep_startup_pages,
        })
    }

    /// The main thread's runtime (xDS, certificates, state, accept loops):
    /// single-threaded; the `--concurrency` workers that serve connections
    /// are started by [`run_until`] (see [`crate::workers`]).
    ///
    /// # Errors
    /// If the runtime's I/O driver cannot be created.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
}

/// Runs a sidecar until `terminate` resolves, then drains it.
///
/// # Errors
/// If the sidecar cannot start.
pub async fn run_until(
    options: Options,
    terminate: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let shutdown = CancellationToken::new();
    let running = start(options, shutdown.clone()).await?;
    eprintln!(
        "sidecar: outbound on {}, admin on {}",
        running.outbound, running.admin
    );
    terminate.await;
    tracing::info!("draining");
    shutdown.cancel();
    running.join().await;
    Ok(())
}
