//! Starting and stopping a federation controller. [`start`] loads the
//! cluster CA and the config source (a directory, or the Kubernetes API),
//! binds the federation API (mTLS) and admin listeners, and returns the
//! bound addresses; cancelling its token stops every task. Peers being down
//! never delays [`start`] or `/ready`.
//!
//! Tasks, all fed one way:
//!
//! ```text
//! config dir | kube watchers ─► Store ─► controller: MeshFederation ─► peer tasks (stream + probes) ─► State
//!                                   └─► exported catalog ─► federation API ─► peers       │
//!                                                                          importer ◄─────┘
//!                      ServiceEntries ─► <config-dir>/generated/ | server-side apply
//! Kubernetes mode: Store + State + importer ─► reconciler ─► MeshFederation finalizer, /status
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use isthmus_config::dir::DirectorySource;
use isthmus_config::{ConfigSource, ConfigWriter, Store};
use isthmus_identity::ClusterCa;
use isthmus_proto::federation as proto;
use isthmus_proto::federation::federation_server::FederationServer;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::catalog::LabelAllowList;
use crate::controller::{Controller, ImportProgress, import_loop, incarnation};
use crate::import::Importer;
use crate::kubernetes::ca::{self, SecretRef};
use crate::kubernetes::{Kubernetes, reconcile};
use crate::mesh::Federation;
use crate::metrics::Metrics;
use crate::peer::{PeerContext, Peers, Timings};
use crate::server::FederationService;
use crate::server::accept_tls;
use crate::state::State;
use crate::tls::Tls;
use crate::tls::reload::{ca_reload_loop, renew_loop, trust_bundle_loop};

/// Default port of the federation API.
pub const DEFAULT_PORT: u16 = 15021;
/// Default port of the admin server.
pub const DEFAULT_ADMIN_PORT: u16 = 15022;
/// How long [`start`] waits for the config directory's first load.
const FIRST_LOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Where MeshFederation, ServiceExports and workloads are read from, and imported
/// ServiceEntries written to.
#[derive(Clone, Debug)]
pub enum Source {
    /// A directory of YAML (watched); imports go to `<dir>/generated/`.
    Directory(PathBuf),
    /// The Kubernetes API (kube-rs watchers); imports are server-side applied.
    Kubernetes(Kubernetes),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Directory(dir) => format!("directory {}", dir.display()),
            Source::Kubernetes(_) => "kubernetes".to_owned(),
        }
    }
}

/// Where the cluster CA (this cluster's intermediate under the shared root) comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaSource {
    /// A `cacerts` directory (`isthmus ca intermediate`), checked for changes every
    /// [`Options::ca_reload`].
    Directory(PathBuf),
    /// `<namespace>/<name>` of a Secret in the `cacerts` layout, watched for changes
    /// (Kubernetes mode only).
    Secret(String),
}

/// Everything a federation controller is told. [`Options::new`] and
/// [`Options::kubernetes`] have the defaults.
#[derive(Clone, Debug)]
pub struct Options {
    /// This cluster's name; the MeshFederation whose `spec.local.cluster` matches is used.
    pub cluster: String,
    pub source: Source,
    pub ca: CaSource,
    /// The federation API (mTLS). Default: `spec.local.federationListen`, else `0.0.0.0:15021`.
    pub listen: Option<SocketAddr>,
    /// Admin HTTP (`/ready`, `/status`, `/metrics`); none when `None`.
    pub admin: Option<SocketAddr>,
    /// Kubernetes cluster domain of local service names (`cluster.local`).
    pub domain: String,
    pub timings: Timings,
    /// Endpoint labels that may cross to peers (and are accepted from them).
    pub allowed_labels: LabelAllowList,
    /// Lifetime of the controller's own certificate (renewed at half).
    pub cert_ttl: Duration,
    /// How often a `cacerts` directory is checked for changes (root rotation); `None`
    /// never reloads (a CA Secret is watched, and not reloaded either when `None`).
    pub ca_reload: Option<Duration>,
    /// Where to write every trusted root (ours and peers'), PEM, whenever it changes.
    pub trust_bundle_out: Option<PathBuf>,
}

impl Options {
    /// Directory mode: config from `config_dir`, CA from the `cacerts` directory `ca_dir`.
    /// Defaults: listen from the MeshFederation (else `0.0.0.0:15021`), admin on
    /// `0.0.0.0:15022`, domain `cluster.local`, [`Timings::default`], labels `app` and
    /// `version`, 24 h certificates, CA reload every 10 s, no trust bundle file.
    pub fn new(
        cluster: impl Into<String>,
        config_dir: impl Into<PathBuf>,
        ca_dir: impl Into<PathBuf>,
    ) -> Options {
        Self::with_sources(
            cluster.into(),
            Source::Directory(config_dir.into()),
            CaSource::Directory(ca_dir.into()),
        )
    }

    /// Kubernetes mode, with the same defaults as [`Options::new`].
    pub fn kubernetes(cluster: impl Into<String>, kubernetes: Kubernetes, ca: CaSource) -> Options {
        Self::with_sources(cluster.into(), Source::Kubernetes(kubernetes), ca)
    }

    fn with_sources(cluster: String, source: Source, ca: CaSource) -> Options {
        Options {
            cluster,
            source,
            ca,
            listen: None,
            admin: Some(SocketAddr::from(([0, 0, 0, 0], DEFAULT_ADMIN_PORT))),
            domain: "cluster.local".into(),
            timings: Timings::default(),
            allowed_labels: LabelAllowList::default(),
            cert_ttl: Duration::from_secs(24 * 3600),
            ca_reload: Some(Duration::from_secs(10)),
            trust_bundle_out: None,
        }
    }
}

/// Why the controller could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cluster CA: {0}")]
    Ca(#[from] isthmus_identity::LoadError),
    #[error("{0}")]
    CaSecret(#[from] ca::SecretError),
    #[error("a CA Secret ({0}) is read through the Kubernetes API: it needs the Kubernetes source")]
    CaSecretWithoutKubernetes(String),
    #[error("Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("federation identity: {0}")]
    Tls(#[from] isthmus_identity::tls::TlsError),
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("config source {origin}: {reason}")]
    Config { origin: String, reason: String },
    #[error("federation API server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("federation controller task failed: {0}")]
    Task(String),
}

/// A started controller: where it listens, its live state, and its task.
#[derive(Debug)]
pub struct Running {
    /// The federation API (mTLS) address actually bound.
    pub federation: SocketAddr,
    /// The admin address actually bound.
    pub admin: Option<SocketAddr>,
    admin_state: AdminState,
    task: JoinHandle<Result<(), Error>>,
}

impl Running {
    /// The live peer state.
    pub fn state(&self) -> &State {
        &self.admin_state.state
    }

    /// What `/status` would answer now.
    pub fn status(&self) -> admin::Status {
        self.admin_state.status()
    }

    /// Waits until the controller has stopped (after the shutdown token is cancelled).
    pub async fn wait(self) -> Result<(), Error> {
        self.task.await.map_err(|e| Error::Task(e.to_string()))?
    }
}

/// Loads the CA and config, binds every listener and starts the controller; it stops
/// when `shutdown` is cancelled.
///
/// # Errors
/// If the CA (directory or Secret) is unusable, the config source cannot be read or holds
/// two MeshFederations for this cluster, or a listener cannot be bound.
pub async fn start(options: Options, shutdown: CancellationToken) -> Result<Running, Error> {
    let store = Store::new();
    let (source, writer, client): (Box<dyn ConfigSource>, Arc<dyn ConfigWriter>, _) =
        match &options.source {
            Source::Kubernetes(k) => {
                let client = k.client().await?;
                let (source, writer) = k.source(client.clone());
                (source, writer, Some(client))
            }
            Source::Directory(dir) => {
                let source = DirectorySource::new(dir).with_store(store.clone());
                let writer = source.writer();
                (Box::new(source), writer, None)
            }
        };
    let (ca, ca_watch) = match (&options.ca, &client) {
        (CaSource::Directory(dir), _) => (ClusterCa::load(dir)?, CaWatch::Directory(dir.clone())),
        (CaSource::Secret(secret), Some(client)) => {
            let secret: SecretRef = secret.parse()?;
            let (ca, pems) = ca::load(client.clone(), &secret).await?;
            (ca, CaWatch::Secret(client.clone(), secret, Box::new(pems)))
        }
        (CaSource::Secret(secret), None) => {
            return Err(Error::CaSecretWithoutKubernetes(secret.clone()));
        }
    };
    let tls = Tls::new(Arc::new(ca), options.cert_ttl)?;
    let config_error = |reason: String| Error::Config {
        origin: options.source.describe(),
        reason,
    };
    let tracker = TaskTracker::new();
    {
        let (store, token) = (store.clone(), shutdown.child_token());
        let name = options.source.describe();
        tracker.spawn(async move {
            if let Err(e) = source.run(store, token).await {
                tracing::error!(source = %name, error = %e, "config source stopped");
            }
        });
    }
    wait_synced(&store).await.map_err(config_error)?;
    let first =
        Federation::from_snapshot(&store.snapshot(), &options.cluster).map_err(config_error)?;
    if let Some(f) = &first
        && f.local.trust_domain != tls.trust_domain()
    {
        tracing::warn!(
            mesh_federation = %f.source,
            declared = %f.local.trust_domain,
            ca = %tls.trust_domain(),
            "spec.local.trustDomain differs from the trust domain of the cluster intermediate; peers will refuse this cluster"
        );
    }
    let listen = options
        .listen
        .or_else(|| {
            first
                .as_ref()?
                .local
                .federation_listen
                .as_ref()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)));
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Bind {
            what: "federation API",
            addr: listen,
            source,
        })?;
    let federation_addr = listener.local_addr().map_err(|source| Error::Bind {
        what: "federation API",
        addr: listen,
        source,
    })?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let state = State::default();
    let (catalog_tx, catalog_rx) = watch::channel(Arc::new(proto::Catalog {
        cluster: options.cluster.clone(),
        incarnation: incarnation(),
        trust_domain: tls.trust_domain(),
        trust_bundle: tls.local_roots().root_pems(),
        ..proto::Catalog::default()
    }));
    let (federation_tx, federation_rx) = watch::channel(first.clone());
    let ready = Arc::new(AtomicBool::new(false));
    let admin_state = AdminState {
        cluster: options.cluster.clone(),
        ready: ready.clone(),
        state: state.clone(),
        catalog: catalog_rx.clone(),
        registry: Arc::new(registry),
    };
    let admin = match options.admin {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind {
                    what: "admin",
                    addr,
                    source,
                })?;
            let bound = l.local_addr().ok();
            tracker.spawn(admin::serve(l, admin_state.clone(), shutdown.clone()));
            bound
        }
        None => None,
    };

    let (roots_tx, roots_rx) = watch::channel(0u64);
    let roots_tx_reload = roots_tx.clone();
    let ctx = PeerContext {
        cluster: options.cluster.clone(),
        tls: tls.clone(),
        state: state.clone(),
        metrics: metrics.clone(),
        timings: options.timings,
        roots_changed: roots_tx.clone(),
    };
    let mut peers = Peers::new(ctx, tracker.clone(), shutdown.clone());
    peers.reconcile(&first.as_ref().map(|f| f.peers.clone()).unwrap_or_default());

    let mut importer = Importer::new(
        writer.clone(),
        options.allowed_labels.clone(),
        options.timings.staleness,
        metrics.clone(),
        state.clone(),
    );
    importer.adopt(&store.snapshot());

    let service = FederationService {
        catalog: catalog_rx,
        federation: federation_rx.clone(),
        heartbeat: options.timings.heartbeat,
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    };
    let incoming = accept_tls(listener, tls.clone(), shutdown.clone());
    let grpc_shutdown = shutdown.clone();
    let grpc = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(FederationServer::new(service))
            .serve_with_incoming_shutdown(incoming, grpc_shutdown.cancelled_owned())
            .await
    });

    let controller = Controller {
        cluster: options.cluster.clone(),
        domain: options.domain.clone(),
        labels: options.allowed_labels.clone(),
        store: store.clone(),
        tls: tls.clone(),
        catalog: catalog_tx,
        federation: federation_tx,
        metrics: metrics.clone(),
        roots_changed: roots_tx,
    };
    tracker.spawn(controller.run(peers, shutdown.clone()));
    let (progress_tx, progress_rx) = watch::channel(ImportProgress::default());
    tracker.spawn(import_loop(
        importer,
        store.clone(),
        federation_rx,
        state.subscribe(),
        progress_tx,
        options.timings,
        shutdown.clone(),
    ));
    if let Some(client) = &client {
        let ctx = reconcile::Context::new(
            client.clone(),
            options.cluster.clone(),
            store.clone(),
            state.clone(),
            writer.clone(),
            metrics.clone(),
            progress_rx,
        );
        tracker.spawn(reconcile::run(Arc::new(ctx), shutdown.clone()));
    }
    tracker.spawn(renew_loop(tls.clone(), shutdown.clone()));
    match (ca_watch, options.ca_reload) {
        (_, None) => {}
        (CaWatch::Directory(dir), Some(every)) => {
            tracker.spawn(ca_reload_loop(
                dir,
                every,
                tls.clone(),
                roots_tx_reload,
                shutdown.clone(),
            ));
        }
        (CaWatch::Secret(client, secret, pems), Some(_)) => {
            tracker.spawn(ca::reload_loop(
                client,
                secret,
                *pems,
                tls.clone(),
                roots_tx_reload,
                shutdown.clone(),
            ));
        }
    }
    if let Some(path) = options.trust_bundle_out.clone() {
        tracker.spawn(trust_bundle_loop(
            path,
            tls.clone(),
            roots_rx,
            shutdown.clone(),
        ));
    }
    tracker.close();
    ready.store(true, Ordering::Release);
    tracing::info!(cluster = %options.cluster, federation = %federation_addr, ?admin, "federation controller started");

    let task = tokio::spawn(async move {
        let served = grpc.await.map_err(|e| Error::Task(e.to_string()))?;
        tracker.wait().await;
        served.map_err(Error::Grpc)
    });
    Ok(Running {
        federation: federation_addr,
        admin,
        admin_state,
        task,
    })
}

/// How the loaded CA is kept current.
enum CaWatch {
    Directory(PathBuf),
    Secret(kube::Client, SecretRef, Box<ca::Pems>),
}

async fn wait_synced(store: &Store) -> Result<(), String> {
    let mut sub = store.subscribe();
    let wait = async {
        while let Some(update) = sub.next().await {
            if update.snapshot.is_synced() {
                return Ok(());
            }
        }
        Err("the store closed before the first load".to_owned())
    };
    tokio::time::timeout(FIRST_LOAD_TIMEOUT, wait)
        .await
        .unwrap_or_else(|_| Err(format!("first load took over {FIRST_LOAD_TIMEOUT:?}")))
}
