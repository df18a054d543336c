//! Starting and stopping a gateway: [`start`] binds, connects to the
//! control plane and returns the bound addresses; cancelling its token
//! drains (stop accepting, `/ready` 503, connections finish within the
//! grace period, then are closed) and stops.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use isthmus_api::naming::Locality;
use isthmus_proxy_core::ProxyConfig;
use isthmus_proxy_core::admin::{self, AdminServer};
use isthmus_proxy_core::process::tick;
use isthmus_proxy_core::transport::SpliceConfig;
use isthmus_proxy_core::xds::{
    NodeInfo, NodeRole, PlaintextConnector, XdsClient, XdsError, XdsOptions, XdsProtocol,
};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::accept_loop;
use crate::detect::{DEFAULT_MAX_HELLO, DEFAULT_PEEK_TIMEOUT};
use crate::metrics::Metrics;
pub use crate::proxy::Bulk;
use crate::proxy::{Settings, Shared};
use crate::route::RouteTable;

/// Default port of the passthrough listener.
pub const DEFAULT_PORT: u16 = 15443;
/// Default port of the admin server.
pub const DEFAULT_ADMIN_PORT: u16 = 15000;
/// Whether `--zero-copy` is on by default. Off: bulk is copied
/// through a buffer of [`DEFAULT_BULK_BUFFER`] bytes, which on one host
/// moved more than splicing it (`splice(2)` saves the gateway's CPU but
/// costs the local sender and receiver more; `docs/benchmarks/gateway.md`,
/// run B2). Small messages are copied through the stack either way.
pub const DEFAULT_ZERO_COPY: bool = false;
/// Default size of the buffer a direction copies bulk through, made when
/// bulk starts and given back when messages resume: up to 64 KiB per read
/// and write, where HAProxy's 16 KiB buffers take four of each. 128, 256
/// and 512 KiB moved no more within the benchmark's noise
/// (`docs/benchmarks/gateway.md`, run B3) and hold more memory per bulk
/// direction.
pub const DEFAULT_BULK_BUFFER: usize = 64 * 1024;
/// Default size of each `splice(2)` pipe: the kernel's own default, as
/// HAProxy leaves it. Against 16 KiB pipes it moved bulk 8–24% faster with
/// 17–20% less CPU per GB (`docs/benchmarks/gateway.md`); a pipe holds
/// pages only while bytes wait in it, so a larger one costs no memory on
/// an idle connection.
pub const DEFAULT_PIPE_SIZE: usize = 64 * 1024;
/// How bulk moves by default: [`DEFAULT_ZERO_COPY`] with the default sizes.
pub fn default_bulk() -> Bulk {
    if DEFAULT_ZERO_COPY {
        Bulk::Splice(DEFAULT_PIPE_SIZE)
    } else {
        Bulk::Copy(DEFAULT_BULK_BUFFER)
    }
}
/// Accept backlog of the passthrough listener.
const BACKLOG: u32 = 1024;

/// Where the gateway's config comes from.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// The control plane's ADS address (`http://host:port` or `host:port`).
    ControlPlane(String),
    /// A config published by the caller (tests, embedding).
    Static(watch::Receiver<Arc<ProxyConfig>>),
}

/// How to run a gateway. [`Options::new`] has the defaults.
#[derive(Clone, Debug)]
pub struct Options {
    /// Who the gateway is to the control plane (role `Gateway`).
    pub node: NodeInfo,
    /// Where the config comes from.
    pub config: ConfigSource,
    /// The passthrough listener (default `0.0.0.0:15443`).
    pub listen: SocketAddr,
    /// The admin server (default `0.0.0.0:15000`); `None` runs none.
    pub admin: Option<SocketAddr>,
    /// The xDS listener whose filter chains are served; by default
    /// `0.0.0.0_<listen port>`, else `0.0.0.0_15443`, else the config's
    /// only listener.
    pub xds_listener: Option<String>,
    /// Connections open at once; at the limit accepting pauses.
    pub max_connections: usize,
    /// Connections open at once to one service (port, subset); more are closed.
    pub max_connections_per_service: usize,
    /// Largest ClientHello, record headers included.
    pub max_client_hello: usize,
    /// Time a client gets to send its whole ClientHello.
    pub client_hello_timeout: Duration,
    /// Endpoints tried per connection before giving up.
    pub connect_attempts: usize,
    /// Connections with no traffic either way for this long are closed (a
    /// TCP proxy's own `idle_timeout` wins).
    pub idle_timeout: Option<Duration>,
    /// How a direction moves bulk (small messages are copied through the
    /// stack either way).
    pub bulk: Bulk,
    /// How long connections may take to finish once a drain starts.
    pub drain_grace: Duration,
    /// The ADS flavour spoken with the control plane.
    pub xds_protocol: XdsProtocol,
}

impl Options {
    /// Defaults: listen on 15443, admin on 15000, 16384 connections (4096
    /// per service), 16 KiB / 10 s ClientHello, 3 connect attempts,
    /// bulk copied through 64 KiB buffers (or spliced through 64 KiB pipes),
    /// 1 h idle timeout, 10 s drain grace,
    /// incremental xDS.
    pub fn new(node: NodeInfo, config: ConfigSource) -> Self {
        Self {
            node,
            config,
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            admin: Some(SocketAddr::from(([0, 0, 0, 0], DEFAULT_ADMIN_PORT))),
            xds_listener: None,
            max_connections: 16384,
            max_connections_per_service: 4096,
            max_client_hello: DEFAULT_MAX_HELLO,
            client_hello_timeout: DEFAULT_PEEK_TIMEOUT,
            connect_attempts: 3,
            idle_timeout: SpliceConfig::default().idle_timeout,
            bulk: default_bulk(),
            drain_grace: Duration::from_secs(10),
            xds_protocol: XdsProtocol::default(),
        }
    }
}

/// The node of the east-west gateway of `cluster`: workload
/// `eastwest-gateway` in `isthmus-system`, label `istio: eastwestgateway`
/// (what AUTO_PASSTHROUGH Gateways select).
pub fn gateway_node(cluster: &str, network: &str, locality: Locality) -> NodeInfo {
    NodeInfo {
        role: NodeRole::Gateway,
        ip: None,
        workload: "eastwest-gateway".into(),
        namespace: "isthmus-system".into(),
        cluster: cluster.into(),
        network: network.into(),
        service_account: "eastwest-gateway".into(),
        labels: BTreeMap::from([
            ("istio".to_string(), "eastwestgateway".to_string()),
            ("app".to_string(), "istio-eastwestgateway".to_string()),
        ]),
        locality,
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("binding the {what} listener on {address}")]
    Bind {
        what: &'static str,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The control plane address is unusable.
    #[error(transparent)]
    Xds(#[from] XdsError),
    /// The admin server thread could not start.
    #[error("starting the admin server")]
    Admin(#[source] std::io::Error),
}

/// A started gateway.
#[derive(Debug)]
pub struct Running {
    /// The passthrough listener's address.
    pub listen: SocketAddr,
    /// The admin server's address.
    pub admin: Option<SocketAddr>,
    ready: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Waits until the first complete config is routing (bounded by the
    /// caller); false if the gateway stopped first.
    pub async fn ready(&self) -> bool {
        self.ready.clone().wait_for(|r| *r).await.is_ok()
    }

    /// Waits until the gateway has drained and stopped (after the token
    /// given to [`start`] was cancelled).
    pub async fn wait(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "gateway task failed");
        }
    }
}

fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

/// Starts the gateway on the current runtime. Cancelling `shutdown`
/// drains it; [`Running::wait`] returns once it stopped.
///
/// # Errors
/// If a listener cannot be bound or the control plane address is invalid.
pub async fn start(options: Options, shutdown: CancellationToken) -> Result<Running, Error> {
    let listener = bind(options.listen).map_err(|source| Error::Bind {
        what: "gateway",
        address: options.listen,
        source,
    })?;
    let listen = listener.local_addr().map_err(|source| Error::Bind {
        what: "gateway",
        address: options.listen,
        source,
    })?;
    let xds_listener = ListenerChoice {
        name: options.xds_listener.clone(),
        port: listen.port(),
    };
    // `drain` stops accepting (SIGTERM or POST /drain); `stop` ends the
    // xDS client and admin once connections are done; `force` closes
    // connections left after the grace period.
    let drain = shutdown.child_token();
    let stop = CancellationToken::new();
    let force = CancellationToken::new();

    let (config, xds) = match &options.config {
        ConfigSource::Static(rx) => (rx.clone(), None),
        ConfigSource::ControlPlane(address) => {
            let uri = if address.contains("://") {
                address.clone()
            } else {
                format!("http://{address}")
            };
            let connector = PlaintextConnector::new(&uri)?;
            let mut xds_options = XdsOptions::new(options.node.to_node());
            xds_options.protocol = options.xds_protocol;
            let client = XdsClient::spawn(xds_options, connector, stop.clone());
            (client.config(), Some(client))
        }
    };
    let (xds_ready_tx, xds_ready) = watch::channel(xds.is_none());
    let xds_counters = xds.as_ref().map(XdsClient::counters);
    let xds_task = tokio::spawn({
        let stop = stop.clone();
        async move {
            if let Some(client) = xds {
                if client.ready().await.is_ok() {
                    xds_ready_tx.send_replace(true);
                }
                stop.cancelled().await;
                client.join().await;
            }
        }
    });
    // Connections' first timers (ClientHello, connect) then never come
    // before the driver's planned wake-up: no wake-up of it per connection.
    tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = tick() => {}
            }
        }
    });
    let (routes_tx, routes) = watch::channel(Arc::new(RouteTable::default()));
    let (ready_tx, ready) = watch::channel(false);
    let routes_task = tokio::spawn(keep_routes(
        config.clone(),
        xds_ready,
        xds_listener,
        routes_tx,
        ready_tx,
        stop.clone(),
    ));

    let mut registry = Registry::with_prefix("isthmus");
    let metrics = Metrics::register(&mut registry);
    if let Some(counters) = xds_counters {
        registry.register_collector(Box::new(counters));
    }
    let admin = match options.admin {
        None => None,
        Some(address) => {
            let server = admin_server(
                Arc::new(registry),
                config,
                ready.clone(),
                routes.clone(),
                drain.clone(),
            );
            match start_admin(server, address, &stop) {
                Ok(admin) => Some(admin),
                Err(e) => {
                    stop.cancel(); // the xDS client and the routes task
                    return Err(e);
                }
            }
        }
    };
    let admin_address = admin.as_ref().map(|(a, _)| *a);

    let shared = Arc::new(Shared {
        routes,
        metrics,
        settings: Settings {
            max_client_hello: options.max_client_hello,
            client_hello_timeout: options.client_hello_timeout,
            max_connections_per_service: options.max_connections_per_service,
            connect_attempts: options.connect_attempts,
            idle_timeout: options.idle_timeout,
            bulk: options.bulk,
        },
        force: force.clone(),
    });
    let grace = options.drain_grace;
    let limit = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let span = tracing::info_span!("gateway", cluster = %options.node.cluster, %listen);
    let task = tokio::spawn(tracing::Instrument::instrument(
        async move {
            let tracker = TaskTracker::new();
            accept_loop(listener, limit, shared, tracker.clone(), drain).await;
            tracker.close();
            tracing::info!(connections = tracker.len(), "draining");
            if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
                tracing::warn!(
                    connections = tracker.len(),
                    "drain grace period over; closing the rest"
                );
                force.cancel();
                tracker.wait().await;
            }
            stop.cancel();
            let _ = routes_task.await;
            let _ = xds_task.await;
            if let Some((_, thread)) = admin {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
            tracing::info!("stopped");
        },
        span,
    ));
    Ok(Running {
        listen,
        admin: admin_address,
        ready,
        task,
    })
}

/// Binds the admin server and starts its thread.
fn start_admin(
    server: AdminServer,
    address: SocketAddr,
    stop: &CancellationToken,
) -> Result<(SocketAddr, std::thread::JoinHandle<()>), Error> {
    let listener = std::net::TcpListener::bind(address).map_err(|source| Error::Bind {
        what: "admin",
        address,
        source,
    })?;
    let bound = listener.local_addr().map_err(Error::Admin)?;
    let thread = server
        .spawn_dedicated(listener, stop.clone())
        .map_err(Error::Admin)?;
    Ok((bound, thread))
}

/// Which xDS listener the gateway serves.
#[derive(Debug)]
struct ListenerChoice {
    name: Option<String>,
    port: u16,
}

impl ListenerChoice {
    fn resolve(&self, config: &ProxyConfig) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let by_port = [self.port, DEFAULT_PORT]
            .into_iter()
            .map(|p| format!("0.0.0.0_{p}"))
            .find(|n| config.listeners.contains_key(n));
        match (by_port, config.listeners.len()) {
            (Some(name), _) => name,
            (None, 1) => config.listeners.keys().next().cloned().unwrap_or_default(),
            (None, _) => format!("0.0.0.0_{DEFAULT_PORT}"),
        }
    }
}

/// Rebuilds the route table on every config change; ready once the xDS
/// client is and the table reflects its config.
async fn keep_routes(
    mut config: watch::Receiver<Arc<ProxyConfig>>,
    mut xds_ready: watch::Receiver<bool>,
    listener: ListenerChoice,
    routes: watch::Sender<Arc<RouteTable>>,
    ready: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut config_changed = true;
    loop {
        // Readiness is read before the config it vouches for: the client
        // publishes the complete config, then turns ready, so a `true` read
        // first means the config read next is at least that complete one
        // (read the other way round, a publish in between would report the
        // previous, incomplete table as ready).
        let is_ready = *xds_ready.borrow_and_update();
        if config_changed {
            let current = config.borrow_and_update().clone();
            let name = listener.resolve(&current);
            let table = RouteTable::build(&current, &name, &routes.borrow());
            for w in &table.warnings {
                tracing::warn!("{w}");
            }
            tracing::info!(snis = table.len(), "routes updated");
            routes.send_replace(Arc::new(table));
        }
        ready.send_if_modified(|r| std::mem::replace(r, is_ready) != is_ready);
        tokio::select! {
            () = stop.cancelled() => return,
            changed = config.changed() => {
                if changed.is_err() {
                    stop.cancelled().await;
                    return;
                }
                config_changed = true;
            }
            changed = xds_ready.changed(), if !is_ready => {
                config_changed = false;
                if changed.is_err() {
                    stop.cancelled().await;
                    return;
                }
            }
        }
    }
}

/// The admin endpoints plus `/routes` (SNI → service, open connections).
fn admin_server(
    registry: Arc<Registry>,
    config: watch::Receiver<Arc<ProxyConfig>>,
    ready: watch::Receiver<bool>,
    routes: watch::Receiver<Arc<RouteTable>>,
    drain: CancellationToken,
) -> AdminServer {
    AdminServer::builder()
        .metrics(registry)
        .config(config)
        .ready(move || *ready.borrow())
        .drain(drain)
        .route("/routes", move |_| {
            let table = routes.borrow().clone();
            admin::json(StatusCode::OK, &table.to_json())
        })
        .build()
}
