//! `isthmus sidecar`: wires identity, the xDS client, the runtime state, the
//! listeners and the admin server into one process with one drain signal.
//!
//! ```text
//! CertManager ──creds──┐
//! XdsClient ──config───┼─► state task: Builder::build ─► Proxy::store (lock-free reads)
//!                      │                               └► listener reconciler (explicit mode)
//! admin (own thread) ◄─┘   /ready /metrics /config_dump /clusters /certs POST /drain
//! ```
//!
//! Shutdown: the `shutdown` token (SIGTERM in the CLI) or `POST /drain`
//! starts the drain: listeners stop accepting, HTTP connections finish their
//! in-flight requests (HTTP/2 GOAWAY, HTTP/1.1 `Connection: close`), and
//! after `drain_grace` whatever is left is dropped.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use isthmus_proxy_core::admin::{self, AdminServer};
use isthmus_proxy_core::xds::{NodeInfo, PlaintextConnector, XdsClient, XdsOptions, XdsProtocol};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::identity::{CertManager, CertSource};
use crate::metrics::Metrics;
use crate::outbound::{self, Proxy};
use crate::server::Limits;
use crate::state::{Builder, Snapshot};
use crate::workers::Workers;

/// Default admin port.
pub const DEFAULT_ADMIN_PORT: u16 = 15000;

/// How traffic reaches the sidecar.
#[derive(Clone, Debug)]
pub enum Mode {
    /// The app talks to the sidecar; the sidecar listens for peers on the
    /// workload address (the lab, tests).
    Explicit {
        /// HTTP listener for the app's outbound requests.
        outbound: SocketAddr,
        /// Inbound: one listener per workload port on this IP (the address
        /// the WorkloadEntry advertises). TCP service ports for the app
        /// listen on `outbound`'s IP.
        inbound_ip: IpAddr,
        /// Where the app listens (replaces `127.0.0.1` of inbound clusters).
        app_ip: Option<IpAddr>,
    },
    /// iptables REDIRECT to `outbound` (15001) and `inbound` (15006).
    Transparent {
        outbound: SocketAddr,
        inbound: SocketAddr,
    },
}

/// Everything `isthmus sidecar` is told.
#[derive(Clone, Debug)]
pub struct Options {
    /// Who this proxy is (node id and metadata for the control plane).
    pub node: NodeInfo,
    /// xDS address, e.g. `http://127.0.0.1:15010`.
    pub control_plane: String,
    /// Where the workload certificate comes from.
    pub cert: CertSource,
    /// Capture mode and addresses.
    pub mode: Mode,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// Time in-flight requests get after the drain starts.
    pub drain_grace: Duration,
    /// A JSON access log line per request and TCP connection, on stdout.
    pub access_log: bool,
    /// Downstream limits.
    pub limits: Limits,
    /// Worker threads that own the connections (Envoy's `--concurrency`);
    /// 0 runs connections on the runtime that calls [`start`].
    pub workers: usize,
    /// The ADS flavour spoken with the control plane.
    pub xds_protocol: XdsProtocol,
    /// Give back the executable's start-up pages once serving
    /// ([`isthmus_proxy_core::memory`]).
    pub release_pages: bool,
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("control plane address: {0}")]
    ControlPlane(#[source] isthmus_proxy_core::xds::XdsError),
    #[error("starting the admin server: {0}")]
    Admin(#[source] std::io::Error),
    #[error("starting the worker threads: {0}")]
    Workers(#[source] std::io::Error),
}

/// The drain signal every listener and connection watches.
///
/// `token` stops a listener's accept loop (the drain started, or explicit
/// mode removed the listener); `draining` asks every HTTP connection to
/// finish its in-flight requests and close (HTTP/2 GOAWAY, HTTP/1.1
/// `Connection: close`); `force` ends whatever is left when the grace
/// period is over. Connection tasks run on `tracker`.
#[derive(Clone, Debug)]
pub struct Drain {
    /// Cancelled when this listener must stop accepting.
    pub token: CancellationToken,
    /// Cancelled when the drain starts.
    pub draining: CancellationToken,
    force: CancellationToken,
    /// Connection tasks.
    pub tracker: TaskTracker,
    /// Where connections run (`None`: on the accepting runtime).
    workers: Option<Arc<Workers>>,
}

impl Drain {
    fn new(token: CancellationToken, workers: Option<Arc<Workers>>) -> Self {
        Self {
            draining: token.clone(),
            token,
            force: CancellationToken::new(),
            tracker: TaskTracker::new(),
            workers,
        }
    }

    /// The drain of one listener that may also be stopped on its own.
    fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
            ..self.clone()
        }
    }

    /// Runs `serve` on an accepted connection until it ends or the grace
    /// period is over: on the next worker (the stream moves to that
    /// worker's I/O driver), or here when there are no workers.
    pub(crate) fn spawn_connection<F, Fut>(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        serve: &Arc<F>,
    ) where
        F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let force = self.force.clone();
        let Some(workers) = &self.workers else {
            let connection = serve(stream, peer);
            self.tracker.spawn(async move {
                tokio::select! {
                    () = connection => {}
                    () = force.cancelled() => {}
                }
            });
            return;
        };
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "accepted connection lost before its worker got it");
                return;
            }
        };
        let serve = serve.clone();
        self.tracker.spawn_on(
            async move {
                let stream = match TcpStream::from_std(stream) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "worker could not register a connection");
                        return;
                    }
                };
                tokio::select! {
                    () = serve(stream, peer) => {}
                    () = force.cancelled() => {}
                }
            },
            workers.next(),
        );
    }

    async fn run(self, grace: Duration) {
        self.draining.cancelled().await;
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "drain grace period over; closing remaining connections"
            );
            self.force.cancel();
            self.tracker.wait().await;
        } else {
            tracing::info!("drained");
        }
    }
}

/// A running sidecar.
#[derive(Debug)]
pub struct Running {
    /// Where the app sends outbound traffic.
    pub outbound: SocketAddr,
    /// The admin server.
    pub admin: SocketAddr,
    /// Inbound (transparent mode) listener.
    pub inbound: Option<SocketAddr>,
    /// The shared proxy state (tests read snapshots from it).
    pub proxy: Arc<Proxy>,
    ready: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Waits until the first config, the certificate and the listeners are in place.
    pub async fn ready(&self) {
        let mut r = self.ready.clone();
        let _ = r.wait_for(|v| *v).await;
    }

    /// Whether the sidecar is ready.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the drain finished and everything stopped.
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|source| RunError::Bind { what, addr, source })?;
    socket
        .set_reuseaddr(true)
        .and_then(|()| socket.bind(addr))
        .and_then(|()| socket.listen(1024))
        .map_err(|source| RunError::Bind { what, addr, source })
}

/// What an embedding program (or a test) plugs in beyond [`Options`].
#[derive(Debug, Default)]
pub struct Hooks {
    /// Access log destination; `None` follows `Options::access_log` (stdout).
    pub access_log: Option<AccessLog>,
}

/// Starts the sidecar; it runs until `shutdown` is cancelled (then drains).
pub async fn start(options: Options, shutdown: CancellationToken) -> Result<Running, RunError> {
    start_with(options, shutdown, Hooks::default()).await
}

/// [`start`] with [`Hooks`].
pub async fn start_with(
    options: Options,
    shutdown: CancellationToken,
    hooks: Hooks,
) -> Result<Running, RunError> {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));

    // The drain is a child of shutdown: POST /drain drains without stopping
    // the xDS client and certificate renewal.
    let drain_token = shutdown.child_token();
    let workers = match options.workers {
        0 => None,
        n => Some(Workers::start(n).map_err(RunError::Workers)?),
    };
    let drain = Drain::new(drain_token.clone(), workers);

    let certs = CertManager::spawn(options.cert.clone(), shutdown.clone());
    let mut xds_options = XdsOptions::new(options.node.to_node());
    xds_options.protocol = options.xds_protocol;
    xds_options.local_secrets.insert("default".into());
    let connector =
        PlaintextConnector::new(&options.control_plane).map_err(RunError::ControlPlane)?;
    let xds = XdsClient::spawn(xds_options, connector, shutdown.clone());
    registry
        .sub_registry_with_prefix("isthmus")
        .register_collector(Box::new(xds.counters()));
    let registry = Arc::new(registry);

    let app_ip = match &options.mode {
        Mode::Explicit { app_ip, .. } => *app_ip,
        Mode::Transparent { .. } => None,
    };
    let proxy = Arc::new(Proxy::new(
        Arc::new(Snapshot::default()),
        metrics,
        options.node.clone(),
        hooks
            .access_log
            .or_else(|| options.access_log.then(AccessLog::stdout)),
        options.limits,
    ));

    // Listeners bound up front (errors here fail the start).
    let (outbound_addr, inbound_addr) = match &options.mode {
        Mode::Explicit { outbound, .. } => {
            let l = bind("the outbound listener", *outbound).await?;
            let addr = l.local_addr().map_err(|source| RunError::Bind {
                what: "the outbound listener",
                addr: *outbound,
                source,
            })?;
            tokio::spawn(outbound::serve_explicit_http(
                proxy.clone(),
                l,
                drain.clone(),
            ));
            (addr, None)
        }
        Mode::Transparent { outbound, inbound } => {
            let o = bind("the outbound capture listener", *outbound).await?;
            let i = bind("the inbound capture listener", *inbound).await?;
            let (oa, ia) = (
                o.local_addr().unwrap_or(*outbound),
                i.local_addr().unwrap_or(*inbound),
            );
            tokio::spawn(outbound::serve_transparent(proxy.clone(), o, drain.clone()));
            tokio::spawn(crate::inbound::serve_transparent(
                proxy.clone(),
                i,
                drain.clone(),
            ));
            (oa, Some(ia))
        }
    };

    // Admin on its own thread.
    let admin_listener =
        std::net::TcpListener::bind(options.admin).map_err(|source| RunError::Bind {
            what: "the admin listener",
            addr: options.admin,
            source,
        })?;
    let admin_addr = admin_listener.local_addr().map_err(RunError::Admin)?;
    let (ready_tx, ready_rx) = watch::channel(false);
    let ready_flag = ready_rx.clone();
    let p_clusters = proxy.clone();
    let p_certs = proxy.clone();
    let renew = certs.renew_handle();
    let p_status = proxy.clone();
    AdminServer::builder()
        .metrics(registry)
        .config(xds.config())
        .ready(move || *ready_flag.borrow())
        .drain(drain_token.clone())
        .route("/clusters", move |_| {
            admin::json(StatusCode::OK, &clusters_json(&p_clusters.snapshot()))
        })
        .route("/certs", move |_| {
            admin::json(StatusCode::OK, &certs_json(&p_certs.snapshot()))
        })
        .route("/renew", move |req| {
            if req.method() == http::Method::POST {
                renew.notify_one();
                admin::text(StatusCode::OK, "certificate renewal requested\n")
            } else {
                admin::text(StatusCode::METHOD_NOT_ALLOWED, "POST /renew\n")
            }
        })
        .route("/listeners", move |_| {
            admin::json(StatusCode::OK, &listeners_json(&p_status.snapshot()))
        })
        .build()
        .spawn_dedicated(admin_listener, shutdown.clone())
        .map_err(RunError::Admin)?;

    tokio::spawn(resolve_dns(proxy.clone(), shutdown.clone()));
    let (rebuilt_tx, rebuilt_rx) = watch::channel(0u64);
    if options.release_pages {
        tokio::spawn(release_pages(
            ready_rx.clone(),
            rebuilt_rx,
            shutdown.clone(),
        ));
    }

    // The state task: rebuild on config or certificate change.
    let mut config_rx = xds.config();
    let mut xds_ready_rx = xds.ready_watch();
    let mut creds_rx = certs.watch();
    let mode = options.mode.clone();
    let grace = options.drain_grace;
    let p = proxy.clone();
    let task = tokio::spawn(async move {
        let mut builder = Builder::new(app_ip);
        let mut bound = Bound::default();
        let drain_task = tokio::spawn(drain.clone().run(grace));
        let (mut config_open, mut creds_open, mut xds_open) = (true, true, true);
        loop {
            // Readiness first: once true, the config read after it is the
            // complete one (the client publishes the config, then ready).
            let xds_ready = *xds_ready_rx.borrow_and_update();
            let config = config_rx.borrow_and_update().clone();
            let creds = creds_rx.borrow_and_update().clone();
            let snapshot = Arc::new(builder.build(config, creds.clone()));
            p.store(snapshot.clone());
            rebuilt_tx.send_modify(|n| *n += 1);
            if let Mode::Explicit {
                outbound,
                inbound_ip,
                ..
            } = &mode
            {
                bound
                    .reconcile(&p, &snapshot, outbound.ip(), *inbound_ip, &drain)
                    .await;
            }
            let is_ready = xds_ready && creds.is_some();
            ready_tx.send_if_modified(|r| std::mem::replace(r, is_ready) != is_ready);
            // A source that ended (shutdown) keeps its last value; only the
            // drain ends this loop.
            tokio::select! {
                () = drain.token.cancelled() => break,
                r = config_rx.changed(), if config_open => config_open = r.is_ok(),
                r = creds_rx.changed(), if creds_open => creds_open = r.is_ok(),
                r = xds_ready_rx.changed(), if xds_open => xds_open = r.is_ok(),
            }
        }
        let _ = drain_task.await;
        shutdown.cancel();
        xds.join().await;
    });

    Ok(Running {
        outbound: outbound_addr,
        admin: admin_addr,
        inbound: inbound_addr,
        proxy,
        ready: ready_rx,
        task,
    })
}

/// Explicit mode's dynamic listeners: inbound per workload port, outbound per TCP service port.
#[derive(Default)]
struct Bound {
    listeners: HashMap<SocketAddr, CancellationToken>,
}

impl Bound {
    async fn reconcile(
        &mut self,
        proxy: &Arc<Proxy>,
        snapshot: &Snapshot,
        outbound_ip: IpAddr,
        inbound_ip: IpAddr,
        drain: &Drain,
    ) {
        let mut want: HashMap<SocketAddr, (bool, u16)> = HashMap::new();
        for port in snapshot.inbound.keys() {
            want.insert(SocketAddr::new(inbound_ip, *port), (true, *port));
        }
        for r in &snapshot.tcp_routes {
            want.entry(SocketAddr::new(outbound_ip, r.port))
                .or_insert((false, r.port));
        }
        self.listeners.retain(|addr, token| {
            let keep = want.contains_key(addr);
            if !keep {
                token.cancel();
            }
            keep
        });
        for (addr, (inbound, port)) in want {
            if self.listeners.contains_key(&addr) {
                continue;
            }
            let l = match bind(
                if inbound {
                    "an inbound listener"
                } else {
                    "a TCP service listener"
                },
                addr,
            )
            .await
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "listener not started");
                    continue;
                }
            };
            let d = drain.child();
            let token = d.token.clone();
            if inbound {
                tokio::spawn(crate::inbound::serve_explicit(proxy.clone(), l, port, d));
            } else {
                tokio::spawn(outbound::serve_explicit_tcp(proxy.clone(), l, port, d));
            }
            tracing::info!(%addr, inbound, "listening");
            self.listeners.insert(addr, token);
        }
    }
}

fn clusters_json(s: &Snapshot) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let mut names: Vec<_> = s.clusters.keys().collect();
    names.sort();
    for n in names {
        let c = &s.clusters[n];
        out.insert(
            n.clone(),
            serde_json::to_value(c.balancer.status()).unwrap_or_default(),
        );
    }
    serde_json::Value::Object(out)
}

fn certs_json(s: &Snapshot) -> serde_json::Value {
    let fmt = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    serde_json::json!({
        "identity": s.credentials.as_ref().map(|c| c.cert.identity().to_string()),
        "generation": s.credentials.as_ref().map(|c| c.generation),
        "not_before_unix": s.credentials.as_ref().map(|c| fmt(c.not_before)),
        "not_after_unix": s.credentials.as_ref().map(|c| fmt(c.not_after)),
        "roots": s.roots.as_ref().map_or(0, isthmus_identity::TrustBundle::len),
        // The issuing intermediate (DER, hex): which CA signed the leaf in use.
        "issuer_der_hex": s.credentials.as_ref().and_then(|c| c.cert.chain().get(1)).map(|der| {
            der.iter().map(|b| format!("{b:02x}")).collect::<String>()
        }),
    })
}

fn listeners_json(s: &Snapshot) -> serde_json::Value {
    serde_json::json!({
        "http_ports": s.http_ports,
        "tcp": s.tcp_routes.iter().map(|r| format!("{}:{} -> {}", r.vip, r.port, r.cluster)).collect::<Vec<_>>(),
        "inbound": s.inbound.values().map(|i| serde_json::json!({
            "port": i.port, "cluster": i.cluster, "mtls": i.mtls, "plaintext": i.plaintext,
            "protocol": format!("{:?}", i.protocol),
        })).collect::<Vec<_>>(),
        "errors": s.errors,
    })
}

/// How often STRICT_DNS cluster names are resolved again (Envoy's default
/// `dns_refresh_rate` is 5 s).
const DNS_REFRESH: Duration = Duration::from_secs(5);

/// Resolves the hostnames of STRICT_DNS clusters (DNS ServiceEntries) now
/// and every [`DNS_REFRESH`]; a failed lookup keeps the previous addresses.
/// Config changes must be quiet this long before the executable's pages
/// are given back (compiling a config runs code requests never do).
const RELEASE_AFTER_QUIET: Duration = Duration::from_secs(5);

/// Once the sidecar is ready, and again after config changes have been
/// quiet for [`RELEASE_AFTER_QUIET`], gives back the executable pages that
/// only start-up and config compilation ran
/// ([`isthmus_proxy_core::memory`]): the hot request path faults back in,
/// the rest stays out of the resident set.
async fn release_pages(
    mut ready: watch::Receiver<bool>,
    mut rebuilt: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    if ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    loop {
        // Until no rebuild for the quiet period.
        loop {
            rebuilt.borrow_and_update();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RELEASE_AFTER_QUIET) => break,
                r = rebuilt.changed() => if r.is_err() { return },
            }
        }
        match tokio::task::spawn_blocking(isthmus_proxy_core::memory::release_executable_pages)
            .await
        {
            Ok(Ok(r)) => tracing::debug!(
                mappings = r.mappings,
                resident_kib = r.resident_bytes / 1024,
                heap_trimmed = r.heap_trimmed,
                "released the executable's start-up pages"
            ),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot release the executable's pages");
                return;
            }
            Err(_) => return,
        }
        // The next round starts with the next rebuild.
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = rebuilt.changed() => if r.is_err() { return },
        }
    }
}

async fn resolve_dns(proxy: Arc<Proxy>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last: HashMap<(String, String), std::time::Instant> = HashMap::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snapshot = proxy.snapshot();
        for (cluster, state) in &snapshot.clusters {
            for name in state.balancer.dns_names() {
                let key = (cluster.clone(), name.clone());
                if last.get(&key).is_some_and(|t| t.elapsed() < DNS_REFRESH) {
                    continue;
                }
                last.insert(key, std::time::Instant::now());
                match tokio::net::lookup_host((name.as_str(), 0)).await {
                    Ok(addrs) => {
                        let ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                        state.balancer.set_resolved(&name, &ips);
                    }
                    Err(e) => tracing::debug!(cluster, name, error = %e, "DNS lookup failed"),
                }
            }
        }
        last.retain(|(c, _), _| snapshot.clusters.contains_key(c));
    }
}
