//! `isthmus control-plane`: wires the config source, store, push contexts,
//! ADS server, certificate service and debug server into one process with
//! one drain signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use isthmus_config::dir::DirectorySource;
use isthmus_config::kube::KubeSource;
use isthmus_config::{ConfigSource, Store};
use isthmus_identity::ClusterCa;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::ca::{
    Authenticator, BootstrapTokens, CaMetrics, CaReloader, CaSource, CertificateServer, CurrentCa,
    ReloadError, TokenReviewAuthenticator,
};
use crate::controller::Inputs;
use crate::debug::{self, DebugState};
use crate::dns_feed::VipRange;
use crate::registry::ClusterContext;
use crate::resolve::{ResolverMetrics, ResolverOptions};
use crate::xds::generate::MeshConfig;
use crate::xds::server::{AdsMetrics, AdsOptions, AdsServer};

/// Default xDS and certificate-service port.
pub const DEFAULT_XDS_PORT: u16 = 15010;
/// Accept-queue length of the xDS and debug listeners.
pub const LISTEN_BACKLOG: u32 = 1024;
/// Default debug HTTP port.
pub const DEFAULT_DEBUG_PORT: u16 = 15014;

/// Where configuration comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A directory of YAML, watched.
    Directory(PathBuf),
    /// The Kubernetes API (in-cluster or kubeconfig), optionally limited to namespaces.
    Kubernetes { namespaces: Option<Vec<String>> },
}

/// Everything `isthmus control-plane` is told.
#[derive(Clone, Debug)]
pub struct Options {
    pub cluster: String,
    pub network: String,
    pub domain: String,
    pub source: Source,
    /// Istio `cacerts` directory; without one (and without `ca_secret`) a
    /// development CA is self-signed (with a warning).
    pub ca_dir: Option<PathBuf>,
    /// Kubernetes mode: `<namespace>/<name>` of a Secret in the `cacerts` layout.
    pub ca_secret: Option<String>,
    /// Trust domain for the development CA (ignored with `ca_dir`: the intermediate carries it).
    pub trust_domain: String,
    /// Directory mode: the bootstrap token file that authenticates CSRs.
    pub bootstrap_tokens: Option<PathBuf>,
    pub xds_listen: SocketAddr,
    pub debug_listen: SocketAddr,
    /// Time in-flight streams get to finish after shutdown starts.
    pub drain_grace: Duration,
}

/// Options beyond [`Options`] (a separate struct so that the many `Options`
/// literals stay as they are).
#[derive(Clone, Debug)]
pub struct MoreOptions {
    /// The sidecar-injection webhook, when on.
    pub inject: Option<InjectOptions>,
    /// A PEM file of roots merged into the `ROOTCA` trust bundle (peers'
    /// roots: the federation controller's `--trust-bundle-out`), reloaded
    /// when it changes. A missing file is no extra roots.
    pub extra_roots: Option<PathBuf>,
    /// How often the CA (directory or Secret) and the extra roots are
    /// checked for changes.
    pub ca_reload_every: Duration,
    /// How hostname gateway addresses of MeshFederations are resolved.
    pub gateway_dns: ResolverOptions,
    /// Federation-wide VIPs of global services: answered by the DNS feed,
    /// listened on by sidecars for TCP ports. Must be the same range in every
    /// cluster of a federation (the VIPs are then the same too).
    pub vip_range: VipRange,
}

impl Default for MoreOptions {
    fn default() -> Self {
        Self {
            inject: None,
            extra_roots: None,
            ca_reload_every: DEFAULT_CA_RELOAD,
            gateway_dns: ResolverOptions::default(),
            vip_range: VipRange::default(),
        }
    }
}

/// Default of [`MoreOptions::ca_reload_every`].
pub const DEFAULT_CA_RELOAD: Duration = Duration::from_secs(5);

/// Where and how the sidecar-injection webhook is served.
#[derive(Clone, Debug)]
pub struct InjectOptions {
    pub listen: SocketAddr,
    pub tls: crate::inject::TlsFiles,
    /// What injected Pods get; an empty `cluster`/`network` is filled from [`Options`].
    pub template: crate::inject::Template,
}

/// Why the control plane could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cluster CA: {0}")]
    Ca(#[from] isthmus_identity::LoadError),
    #[error("bootstrap tokens: {0}")]
    Tokens(#[from] crate::ca::TokensError),
    #[error("Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("config source: {0}")]
    Source(#[from] isthmus_config::SourceError),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("directory mode needs --bootstrap-tokens to authenticate certificate requests")]
    NoAuthenticator,
    #[error("CA Secret {secret}: {reason}")]
    CaSecret { secret: String, reason: String },
    #[error("injection webhook: {0}")]
    Webhook(#[from] crate::inject::WebhookError),
    #[error("{0}")]
    Reload(ReloadError),
}

impl From<ReloadError> for RunError {
    fn from(e: ReloadError) -> Self {
        match e {
            ReloadError::Ca(e) => RunError::Ca(e),
            ReloadError::Secret { secret, reason } => RunError::CaSecret { secret, reason },
            other => RunError::Reload(other),
        }
    }
}

/// Loads the cluster CA from a Kubernetes Secret (`<namespace>/<name>`) with
/// Istio's `cacerts` keys (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`).
pub async fn load_ca_secret(client: kube::Client, secret: &str) -> Result<ClusterCa, RunError> {
    let data = crate::ca::fetch_secret(client, secret).await?;
    Ok(crate::ca::ca_from_secret(secret, &data)?)
}

/// Addresses the running control plane actually bound (ports may have been 0).
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub xds: SocketAddr,
    pub debug: SocketAddr,
    /// The injection webhook, when on.
    pub inject: Option<SocketAddr>,
}

/// Starts every part; returns once listening, with a future that runs until `shutdown`.
pub async fn start(
    options: Options,
    shutdown: CancellationToken,
) -> Result<(Bound, impl Future<Output = Result<(), RunError>>), RunError> {
    start_with(options, None, shutdown).await
}

/// [`start`], plus the sidecar-injection webhook when `inject` is given.
pub async fn start_with(
    options: Options,
    inject: Option<InjectOptions>,
    shutdown: CancellationToken,
) -> Result<(Bound, impl Future<Output = Result<(), RunError>>), RunError> {
    let more = MoreOptions {
        inject,
        ..MoreOptions::default()
    };
    start_full(options, more, shutdown).await
}

/// [`start`] with [`MoreOptions`].
pub async fn start_full(
    options: Options,
    more: MoreOptions,
    shutdown: CancellationToken,
) -> Result<(Bound, impl Future<Output = Result<(), RunError>>), RunError> {
    let MoreOptions {
        inject,
        extra_roots,
        ca_reload_every,
        gateway_dns,
        vip_range,
    } = more;
    let kube_client = match options.source {
        Source::Kubernetes { .. } => Some(kube::Client::try_default().await?),
        Source::Directory(_) => None,
    };
    let ca_source = match (&options.ca_dir, &options.ca_secret, &kube_client) {
        (Some(dir), _, _) => CaSource::Dir(dir.clone()),
        (None, Some(secret), Some(client)) => CaSource::Secret {
            client: client.clone(),
            secret: secret.clone(),
        },
        (None, Some(secret), None) => {
            return Err(RunError::CaSecret {
                secret: secret.clone(),
                reason: "needs --kubernetes".into(),
            });
        }
        (None, None, _) => CaSource::Fixed,
    };
    let mut metrics = prometheus_client::registry::Registry::with_prefix("isthmus_control_plane");
    let ca_metrics = CaMetrics::register(&mut metrics);
    let (reloader, ca) =
        CaReloader::load(ca_source, extra_roots, &options.trust_domain, ca_metrics).await?;
    let store = Store::new();
    let (source, auth): (Box<dyn ConfigSource>, Arc<dyn Authenticator>) = match &options.source {
        Source::Directory(dir) => {
            let tokens = options
                .bootstrap_tokens
                .as_ref()
                .ok_or(RunError::NoAuthenticator)?;
            let tokens = Arc::new(BootstrapTokens::load(tokens)?);
            tokens.clone().spawn_reloader(Duration::from_secs(5));
            (
                Box::new(DirectorySource::new(dir).with_store(store.clone())),
                tokens,
            )
        }
        Source::Kubernetes { namespaces } => {
            let client = kube_client.clone().ok_or(RunError::NoAuthenticator)?;
            let mut src = KubeSource::new(client.clone());
            if let Some(ns) = namespaces {
                src = src.with_namespaces(ns.clone());
            }
            (
                Box::new(src),
                Arc::new(TokenReviewAuthenticator::new(client, "isthmus-ca")),
            )
        }
    };
    let mesh = MeshConfig {
        cluster: ClusterContext {
            cluster: options.cluster.clone(),
            network: options.network.clone(),
            domain: options.domain.clone(),
        },
        trust_domain: ca.trust_domain().to_string(),
        trust_bundle_pem: reloader.roots(&ca).to_pem(),
        vip_range,
        ..MeshConfig::default()
    };
    let ads_metrics = AdsMetrics::register(&mut metrics);
    let inject_metrics = crate::inject::InjectMetrics::register(&mut metrics);
    let resolver_metrics = ResolverMetrics::register(&mut metrics);
    // The CA in use and the trust bundle follow the cacerts (root rotation).
    let (mesh_tx, mesh_rx) = tokio::sync::watch::channel(mesh);
    let current_ca = CurrentCa::new(ca.clone());
    tokio::spawn(reloader.run(
        current_ca.clone(),
        mesh_tx,
        ca_reload_every,
        shutdown.clone(),
    ));
    let gateways = crate::resolve::spawn(&store, gateway_dns, resolver_metrics, shutdown.clone());
    let inputs = Inputs {
        mesh: mesh_rx,
        gateways,
    };
    let published = crate::controller::spawn_with(&store, inputs, shutdown.clone());
    // The DNS servers' feed (isthmus.dns.v1), served next to ADS.
    let dns_feed = crate::dns_feed::DnsFeedService::spawn(
        published.push.clone(),
        crate::dns_feed::FeedOptions {
            vip_range,
            ..crate::dns_feed::FeedOptions::default()
        },
        shutdown.clone(),
    );
    let ads = AdsServer::new(
        published.state.clone(),
        AdsOptions {
            metrics: ads_metrics,
            ..AdsOptions::default()
        },
    );
    let bind = |what, addr: SocketAddr| async move {
        // A deep accept queue: a thousand proxies reconnect at once after a restart.
        let listen = || -> std::io::Result<TcpListener> {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(LISTEN_BACKLOG)
        };
        listen().map_err(|source| RunError::Bind { what, addr, source })
    };
    let xds_listener = bind("xDS", options.xds_listen).await?;
    let debug_listener = bind("debug HTTP", options.debug_listen).await?;
    let inject = match &inject {
        Some(inject) => {
            let listener = bind("injection webhook", inject.listen).await?;
            let addr = listener.local_addr().map_err(|source| RunError::Bind {
                what: "injection webhook",
                addr: inject.listen,
                source,
            })?;
            let mut template = inject.template.clone();
            if template.cluster.is_empty() {
                template.cluster.clone_from(&options.cluster);
            }
            if template.network.is_empty() {
                template.network.clone_from(&options.network);
            }
            let serve = crate::inject::serve(
                listener,
                inject.tls.clone(),
                template,
                inject_metrics,
                shutdown.clone(),
            )?;
            Some((addr, serve))
        }
        None => None,
    };
    let bound = Bound {
        xds: xds_listener.local_addr().map_err(|source| RunError::Bind {
            what: "xDS",
            addr: options.xds_listen,
            source,
        })?,
        debug: debug_listener
            .local_addr()
            .map_err(|source| RunError::Bind {
                what: "debug HTTP",
                addr: options.debug_listen,
                source,
            })?,
        inject: inject.as_ref().map(|(addr, _)| *addr),
    };
    tracing::info!(cluster = %options.cluster, trust_domain = %ca.trust_domain(), xds = %bound.xds, debug = %bound.debug, "control plane listening");

    let source_task = tokio::spawn(source.run(store.clone(), shutdown.clone()));
    let synced = wait_synced(store.clone(), published.push.clone());
    let debug_state = DebugState {
        store: store.clone(),
        ads: ads.clone(),
        metrics: Arc::new(Mutex::new(metrics)),
        push: published.push,
    };
    let debug_task = tokio::spawn(debug::serve(debug_listener, debug_state, shutdown.clone()));
    let inject_task = inject.map(|(_, serve)| tokio::spawn(serve));
    let grpc = {
        let ads = ads.clone();
        let shutdown = shutdown.clone();
        let grace = options.drain_grace;
        async move {
            // Proxies that connect now wait in the accept queue until every
            // source has loaded once: a partial mesh would make them drop
            // routes and clusters they have (istiod waits for its caches too).
            tokio::select! {
                () = synced => {}
                () = shutdown.cancelled() => {}
            }
            let incoming = TcpIncoming::from(xds_listener).with_nodelay(Some(true));
            let service = ads.service();
            let signal = async move {
                shutdown.cancelled().await;
                ads.drain();
                tokio::time::sleep(grace.min(Duration::from_millis(200))).await;
            };
            tonic::transport::Server::builder()
                .add_service(service)
                .add_service(CertificateServer::with_current(current_ca, auth).into_service())
                .add_service(dns_feed.into_service())
                .serve_with_incoming_shutdown(incoming, signal)
                .await
        }
    };
    let run = async move {
        let grpc_result = grpc.await;
        let _ = debug_task.await;
        if let Some(task) = inject_task {
            let _ = task.await;
        }
        if let Ok(Err(e)) = source_task.await {
            return Err(RunError::Source(e));
        }
        grpc_result.map_err(RunError::Grpc)
    };
    Ok((bound, run))
}

/// Resolves once the store is synced (every source loaded once) and the
/// published push context was built from a synced snapshot. Logs while it waits.
async fn wait_synced(
    store: Store,
    push: tokio::sync::watch::Receiver<Arc<crate::xds::generate::PushContext>>,
) {
    let started = std::time::Instant::now();
    let mut warned = Duration::ZERO;
    loop {
        let snapshot = store.snapshot();
        if snapshot.is_synced() && push.borrow().store_version >= snapshot.version() {
            if started.elapsed() > Duration::from_secs(1) {
                tracing::info!(after = ?started.elapsed(), "config synced; serving xDS");
            }
            return;
        }
        if started.elapsed() >= warned + Duration::from_secs(10) {
            warned = started.elapsed();
            tracing::warn!(waited = ?warned, "config sources not synced yet; xDS waits (proxies keep their last config)");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
