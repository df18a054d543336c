//! The proxy's runtime state: everything the data path reads, compiled from
//! the xDS [`ProxyConfig`] and the workload's [`Credentials`].
//!
//! ```text
//! xDS ProxyConfig ─┐
//!                  ├─► Builder::build ─► Arc<Snapshot> ─► watch ─► listeners, request path
//! Credentials ─────┘        │
//!                           └─ ClusterState (balancer, connection pool) kept across builds
//! ```
//!
//! A snapshot never changes; a new config or certificate builds a new one.
//! Per-cluster state that must survive config pushes (outlier ejections,
//! active-request counts, pooled connections) lives in [`ClusterState`],
//! carried from one snapshot to the next by name. A resource that fails to
//! compile is skipped with an error naming it; its previous compiled form
//! stays in effect when there is one.

mod inbound;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{address, transport_socket};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    UpstreamTlsContext, common_tls_context::ValidationContextType, secret,
    subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options::UpstreamProtocolOptions,
    http_protocol_options::explicit_http_config::ProtocolConfig,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use isthmus_api::naming::SpiffeId;
use isthmus_identity::TrustBundle;
use isthmus_identity::tls::ClientTls;
use isthmus_proxy_core::ProxyConfig;
use isthmus_proxy_core::balance::Balancer;
use isthmus_proxy_core::config::Encoded;
use prost::Message;
use rustls::ClientConfig;
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls_pki_types::ServerName;

pub use inbound::{InboundPort, InboundProtocol};

use crate::identity::Credentials;
use crate::metrics::{Label, ServiceLabels};
use crate::route::RouteTable;
use crate::upstream::{MeshTls, Pool, PoolSettings};

/// SDS name of the trust bundle.
pub const ROOT_CA: &str = "ROOTCA";
/// TLS sessions remembered for resumption (rustls: 8 tickets per server).
const SESSION_CACHE: usize = 1024;
/// ALPN the sidecar offers on mesh mTLS hops to an HTTP/2 upstream.
const MESH_ALPN: &[&[u8]] = &[b"h2", b"istio"];

/// What a cluster's upstream endpoints speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterKind {
    /// Endpoints from EDS or an inline assignment.
    Endpoints,
    /// `ORIGINAL_DST`: connect to where the client was going.
    OriginalDst,
}

/// A cluster's runtime: balancer and connections, kept across snapshots.
#[derive(Debug)]
pub struct ClusterState {
    /// The cluster name.
    pub name: String,
    /// Endpoint choice, outlier detection, circuit breaking.
    pub balancer: Arc<Balancer>,
    pool: Mutex<Arc<Pool>>,
    /// How endpoints are found.
    pub kind: ClusterKind,
    /// Whether the hop is mesh mTLS (and so whose SPIFFE ID is checked).
    pub mtls: bool,
    /// The destination labels of its requests.
    pub service: ServiceLabels,
}

impl ClusterState {
    /// The current connection pool.
    pub fn pool(&self) -> Arc<Pool> {
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_pool(&self, settings: PoolSettings) {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if !pool.settings().same(&settings) {
            *pool = Arc::new(Pool::new(settings));
        }
    }
}

/// An outbound TCP listener: where it listens and which cluster it feeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpRoute {
    /// The service VIP the listener was generated for.
    pub vip: IpAddr,
    /// The service port.
    pub port: u16,
    /// The destination cluster.
    pub cluster: String,
}

/// Everything the data path reads, immutable.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The xDS config this was built from (for `/config_dump`).
    pub config: Arc<ProxyConfig>,
    /// Compiled route configurations by name (outbound: the port number).
    pub routes: HashMap<String, Arc<RouteTable>>,
    /// Clusters by name.
    pub clusters: HashMap<String, Arc<ClusterState>>,
    /// Outbound HTTP ports (listeners `0.0.0.0_<port>`) → route config name.
    pub http_ports: BTreeMap<u16, String>,
    /// Outbound TCP listeners (`<vip>_<port>`).
    pub tcp_routes: Vec<TcpRoute>,
    /// Inbound chains by the workload port they serve.
    pub inbound: BTreeMap<u16, Arc<InboundPort>>,
    /// Inbound mTLS server config (certificate + every trusted root).
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    /// The certificate in use.
    pub credentials: Option<Arc<Credentials>>,
    /// Its SPIFFE ID as a metric label (empty without a certificate).
    pub identity: Label,
    /// Roots trusted: the CA's plus SDS `ROOTCA` (federation bundles).
    pub roots: Option<TrustBundle>,
    /// Resources skipped because they did not compile.
    pub errors: Vec<String>,
}

impl Snapshot {
    /// The TCP route for a destination (exact VIP, else any VIP on the port
    /// when `any_vip`, as explicit mode listens on its own address).
    pub fn tcp_route(&self, dst: SocketAddr, any_vip: bool) -> Option<&TcpRoute> {
        self.tcp_routes
            .iter()
            .find(|r| r.vip == dst.ip() && r.port == dst.port())
            .or_else(|| {
                any_vip
                    .then(|| self.tcp_routes.iter().find(|r| r.port == dst.port()))
                    .flatten()
            })
    }
}

/// Builds snapshots, carrying cluster state and compiled routes across builds.
#[derive(Debug, Default)]
pub struct Builder {
    clusters: HashMap<String, Arc<ClusterState>>,
    /// The last route tables that compiled, by name.
    routes: HashMap<String, Arc<RouteTable>>,
    /// Local application address override for inbound clusters (explicit mode).
    app_ip: Option<IpAddr>,
    /// The inputs of the previous build: a cluster whose inputs did not
    /// change keeps its state untouched (no balancer rebuild, same pool).
    previous: Option<(Arc<ProxyConfig>, Option<Arc<Credentials>>)>,
    /// Mesh TLS client configs (h2, http/1.1) by expected SPIFFE IDs, valid
    /// for the previous build's certificate and roots: a config (and so a
    /// pool, with its connections) survives config pushes, and the clusters
    /// of one service share it.
    tls: HashMap<Vec<SpiffeId>, (Arc<ClientConfig>, Arc<ClientConfig>)>,
    /// What those configs share (key, chain, roots), for the previous
    /// build's certificate and roots.
    client_tls: Option<ClientTls>,
    /// The inbound TLS config of the previous build.
    server_tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS session tickets of every cluster, by server name (SNI): one store
    /// instead of rustls's default one per config.
    sessions: Option<Arc<ClientSessionMemoryCache>>,
    /// The last inbound ports that compiled.
    inbound: BTreeMap<u16, Arc<InboundPort>>,
}

impl Builder {
    /// A builder; `app_ip` replaces the inbound clusters' `127.0.0.1`.
    pub fn new(app_ip: Option<IpAddr>) -> Self {
        Self {
            app_ip,
            ..Self::default()
        }
    }

    /// A snapshot for `config` and `creds`.
    pub fn build(&mut self, config: Arc<ProxyConfig>, creds: Option<Arc<Credentials>>) -> Snapshot {
        let mut errors = Vec::new();
        let roots = trust_bundle(&config, creds.as_deref(), &mut errors);
        let previous = self.previous.take();
        let same_identity = previous.as_ref().is_some_and(|(c, cr)| {
            c.secrets.get(ROOT_CA) == config.secrets.get(ROOT_CA)
                && match (cr, &creds) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                }
        });
        if !same_identity {
            // New certificate or roots: no session or config of the old ones.
            self.tls.clear();
            self.client_tls = None;
            self.sessions = None;
        }

        // Routes: reuse the compiled table when the configuration is unchanged.
        let mut routes = HashMap::new();
        for (name, rc) in &config.routes {
            let unchanged = previous
                .as_ref()
                .is_some_and(|(old, _)| old.routes.get(name) == Some(rc));
            match self.routes.get(name) {
                Some(table) if unchanged => {
                    routes.insert(name.clone(), table.clone());
                }
                _ => match rc
                    .decode()
                    .map_err(|e| e.to_string())
                    .and_then(|rc| RouteTable::compile(&rc).map_err(|e| e.to_string()))
                {
                    Ok(t) => {
                        let t = Arc::new(t);
                        self.routes.insert(name.clone(), t.clone());
                        routes.insert(name.clone(), t);
                    }
                    Err(e) => {
                        errors.push(format!("RouteConfiguration {name}: {e}"));
                        if let Some(t) = self.routes.get(name) {
                            routes.insert(name.clone(), t.clone());
                        }
                    }
                },
            }
        }
        self.routes.retain(|n, _| routes.contains_key(n));

        // Clusters.
        let mut clusters = HashMap::new();
        for (name, c) in &config.clusters {
            if same_identity
                && let (Some((old, _)), Some(state)) = (&previous, self.clusters.get(name))
                && old.clusters.get(name) == Some(c)
                && c.references()
                    .endpoints
                    .iter()
                    .all(|eds| old.endpoints.get(eds) == config.endpoints.get(eds))
            {
                clusters.insert(name.clone(), state.clone());
                continue;
            }
            let built = c
                .decode()
                .map_err(|e| e.to_string())
                .and_then(|c| self.cluster(&c, &config, creds.as_deref(), roots.as_ref()));
            match built {
                Ok(Some(state)) => {
                    clusters.insert(name.clone(), state);
                }
                Ok(None) => {}
                Err(e) => {
                    errors.push(format!("Cluster {name}: {e}"));
                    if let Some(s) = self.clusters.get(name) {
                        clusters.insert(name.clone(), s.clone());
                    }
                }
            }
        }
        self.clusters = clusters.clone();

        // Listeners.
        let mut http_ports = BTreeMap::new();
        let mut tcp_routes = Vec::new();
        let mut inbound = BTreeMap::new();
        for (name, l) in &config.listeners {
            let l = match l.decode() {
                Ok(l) => l,
                Err(e) => {
                    errors.push(format!("Listener {name}: {e}"));
                    if name == "virtualInbound" {
                        inbound = self.inbound.clone();
                    }
                    continue;
                }
            };
            let l = &l;
            if name == "virtualInbound" {
                match inbound::compile(l) {
                    Ok(ports) => inbound = ports,
                    // The last good inbound config stays (its listeners too).
                    Err(e) => {
                        errors.push(format!("Listener {name}: {e}"));
                        inbound = self.inbound.clone();
                    }
                }
            } else if let Err(e) = outbound_listener(l, &mut http_ports, &mut tcp_routes) {
                errors.push(format!("Listener {name}: {e}"));
            }
        }

        let server_tls = match (&creds, &roots) {
            // Same certificate and roots: the same config (its session
            // tickets stay valid).
            (Some(_), Some(_)) if same_identity && self.server_tls.is_some() => {
                self.server_tls.clone()
            }
            (Some(c), Some(r)) => match isthmus_identity::tls::server_config(&c.cert, r) {
                Ok(mut cfg) => {
                    cfg.alpn_protocols =
                        vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"istio".to_vec()];
                    Some(Arc::new(cfg))
                }
                Err(e) => {
                    errors.push(format!("inbound TLS: {e}"));
                    None
                }
            },
            _ => None,
        };
        for e in &errors {
            tracing::warn!(error = %e, "resource skipped");
        }
        self.previous = Some((config.clone(), creds.clone()));
        self.inbound = inbound.clone();
        self.server_tls = server_tls.clone();
        Snapshot {
            config,
            routes,
            clusters,
            http_ports,
            tcp_routes,
            inbound,
            server_tls,
            identity: creds.as_ref().map_or_else(
                || Arc::from(""),
                |c| Arc::from(c.cert.identity().to_string()),
            ),
            credentials: creds,
            roots,
            errors,
        }
    }

    fn cluster(
        &mut self,
        c: &Cluster,
        config: &ProxyConfig,
        creds: Option<&Credentials>,
        roots: Option<&TrustBundle>,
    ) -> Result<Option<Arc<ClusterState>>, String> {
        use envoy_types::pb::envoy::config::cluster::v3::cluster::{
            ClusterDiscoveryType, DiscoveryType,
        };
        let kind = match c.cluster_discovery_type {
            Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::OriginalDst as i32 => {
                ClusterKind::OriginalDst
            }
            _ => ClusterKind::Endpoints,
        };
        let eds_name = eds_name(c);
        // STATIC / STRICT_DNS clusters carry their endpoints inline; EDS
        // clusters take them from the EDS resource.
        let mut inline = None;
        let mut assignment = None;
        if let Some(a) = &c.load_assignment {
            let mut c = c.clone();
            if let (Some(ip), true, Some(a)) = (
                self.app_ip,
                c.name.starts_with("inbound|"),
                c.load_assignment.as_mut(),
            ) {
                override_ip(a, ip);
            }
            let _ = a;
            inline = Some(c);
        } else {
            assignment = match config.endpoints.get(eds_name) {
                Some(a) => Some(
                    a.decode()
                        .map_err(|e| format!("ClusterLoadAssignment {eds_name}: {e}"))?,
                ),
                None => None,
            };
        }
        let c = inline.as_ref().unwrap_or(c);
        let tls = upstream_tls(c)?;
        let mtls = tls.is_some();
        // Explicit protocol options win (HTTP/2 and gRPC ports,
        // `h2UpgradePolicy: UPGRADE`); otherwise HTTP/1.1 stays HTTP/1.1,
        // between sidecars too: Istio's default (mesh-wide `h2UpgradePolicy`
        // DO_NOT_UPGRADE) and Envoy's. It is also the cheaper hop: with
        // HTTP/2 each sidecar cost 0.07–0.10 vCPU per 1,000 rps against
        // 0.06 for HTTP/1.1 (docs/benchmarks/sidecar.md).
        let http2 = explicit_http2(c)?.unwrap_or(false);
        let tls = match (tls, creds, roots) {
            (None, _, _) => None,
            (Some((sni, sans)), Some(creds), Some(roots)) => {
                let sni = ServerName::try_from(sni.clone())
                    .map_err(|e| format!("transport_socket.sni {sni:?}: {e}"))?;
                let (h2, http1) = match self.tls.get(&sans) {
                    Some(configs) => configs.clone(),
                    None => {
                        let sessions = self
                            .sessions
                            .get_or_insert_with(|| {
                                Arc::new(ClientSessionMemoryCache::new(SESSION_CACHE))
                            })
                            .clone();
                        let shared = match &self.client_tls {
                            Some(shared) => shared,
                            None => self.client_tls.insert(
                                ClientTls::new(&creds.cert, roots)
                                    .map_err(|e| format!("transport_socket: {e}"))?,
                            ),
                        };
                        let mut h2 = shared
                            .config(sans.iter().cloned())
                            .map_err(|e| format!("transport_socket: {e}"))?;
                        h2.resumption = Resumption::store(sessions.clone());
                        let mut http1 = h2.clone();
                        h2.alpn_protocols = MESH_ALPN.iter().map(|p| p.to_vec()).collect();
                        http1.alpn_protocols = vec![b"http/1.1".to_vec()];
                        let configs = (Arc::new(h2), Arc::new(http1));
                        self.tls.insert(sans, configs.clone());
                        configs
                    }
                };
                Some(MeshTls { h2, http1, sni })
            }
            // Without a certificate yet the cluster cannot connect; it
            // appears with the first certificate (readiness waits for it).
            (Some(_), _, _) => return Ok(None),
        };
        let balancer = match self.clusters.get(&c.name) {
            Some(s) => {
                s.balancer
                    .update(c, assignment.as_ref())
                    .map_err(|e| e.to_string())?;
                s.balancer.clone()
            }
            None => Arc::new(Balancer::new(c, assignment.as_ref()).map_err(|e| e.to_string())?),
        };
        let settings = PoolSettings {
            http2,
            connect_timeout: balancer.connect_timeout(),
            tls,
            max_requests_per_connection: balancer.max_requests_per_connection(),
        };
        match self.clusters.get(&c.name) {
            Some(s) if s.kind == kind && s.mtls == mtls => {
                s.set_pool(settings);
                Ok(Some(s.clone()))
            }
            _ => Ok(Some(Arc::new(ClusterState {
                name: c.name.clone(),
                balancer,
                pool: Mutex::new(Arc::new(Pool::new(settings))),
                kind,
                mtls,
                service: ServiceLabels::of_cluster(&c.name),
            }))),
        }
    }
}

/// The name of a cluster's EDS resource.
fn eds_name(c: &Cluster) -> &str {
    c.eds_cluster_config
        .as_ref()
        .map(|e| e.service_name.as_str())
        .filter(|n| !n.is_empty())
        .unwrap_or(&c.name)
}

/// Replaces every endpoint IP (inbound clusters point at `127.0.0.1`; in
/// explicit mode the application listens on its own address).
fn override_ip(
    a: &mut envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment,
    ip: IpAddr,
) {
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    for l in &mut a.endpoints {
        for e in &mut l.lb_endpoints {
            if let Some(HostIdentifier::Endpoint(ep)) = &mut e.host_identifier
                && let Some(addr) = &mut ep.address
                && let Some(address::Address::SocketAddress(sa)) = &mut addr.address
            {
                sa.address = ip.to_string();
            }
        }
    }
}

/// The CA's roots plus the SDS `ROOTCA` bundle.
fn trust_bundle(
    config: &ProxyConfig,
    creds: Option<&Credentials>,
    errors: &mut Vec<String>,
) -> Option<TrustBundle> {
    let secret = match config.secrets.get(ROOT_CA).map(Encoded::decode) {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            errors.push(format!("Secret {ROOT_CA}: {e}"));
            None
        }
        None => None,
    };
    let sds = secret.as_ref().and_then(|s| match &s.r#type {
        Some(secret::Type::ValidationContext(v)) => v.trusted_ca.as_ref(),
        _ => None,
    });
    let sds = sds.and_then(|ds| {
        use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
        let pem = match &ds.specifier {
            Some(Specifier::InlineString(s)) => s.clone(),
            Some(Specifier::InlineBytes(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => {
                errors.push(format!(
                    "Secret {ROOT_CA}: trusted_ca: only inline data is supported"
                ));
                return None;
            }
        };
        match TrustBundle::from_pem(&pem) {
            Ok(b) => Some(b),
            Err(e) => {
                errors.push(format!("Secret {ROOT_CA}: trusted_ca: {e}"));
                None
            }
        }
    });
    match (creds.map(|c| &c.roots), sds) {
        (Some(a), Some(b)) => Some(a.merged(&b)),
        (Some(a), None) => Some(a.clone()),
        (None, Some(b)) => Some(b),
        (None, None) => None,
    }
}

/// `(sni, expected SPIFFE IDs)` of a cluster's mesh mTLS transport socket.
fn upstream_tls(c: &Cluster) -> Result<Option<(String, Vec<SpiffeId>)>, String> {
    let Some(ts) = &c.transport_socket else {
        return Ok(None);
    };
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Err("transport_socket: no typed_config".into());
    };
    if !any.type_url.ends_with("UpstreamTlsContext") {
        return Err(format!(
            "transport_socket: unsupported type {}",
            any.type_url
        ));
    }
    let ctx = UpstreamTlsContext::decode(any.value.as_slice())
        .map_err(|e| format!("transport_socket: {e}"))?;
    let common = ctx.common_tls_context.unwrap_or_default();
    let matchers = match common.validation_context_type {
        Some(ValidationContextType::CombinedValidationContext(c)) => c
            .default_validation_context
            .map(|v| v.match_typed_subject_alt_names)
            .unwrap_or_default(),
        Some(ValidationContextType::ValidationContext(v)) => v.match_typed_subject_alt_names,
        _ => Vec::new(),
    };
    let mut sans = Vec::new();
    for m in matchers {
        if m.san_type != SanType::Uri as i32 {
            return Err("transport_socket: only URI SAN matchers are supported".into());
        }
        match m.matcher.and_then(|m| m.match_pattern) {
            Some(MatchPattern::Exact(uri)) => sans.push(
                uri.parse::<SpiffeId>()
                    .map_err(|e| format!("transport_socket: SAN {uri:?}: {e}"))?,
            ),
            _ => return Err("transport_socket: only exact SAN matchers are supported".into()),
        }
    }
    if sans.is_empty() {
        return Err(
            "transport_socket: no expected SPIFFE IDs (match_typed_subject_alt_names)".into(),
        );
    }
    Ok(Some((ctx.sni, sans)))
}

/// The upstream protocol the cluster asks for: `Some(true)` HTTP/2,
/// `Some(false)` HTTP/1.1, `None` when it does not say.
fn explicit_http2(c: &Cluster) -> Result<Option<bool>, String> {
    let Some(any) = c
        .typed_extension_protocol_options
        .get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
    else {
        return Ok(None);
    };
    let opts = HttpProtocolOptions::decode(any.value.as_slice())
        .map_err(|e| format!("typed_extension_protocol_options: {e}"))?;
    Ok(match opts.upstream_protocol_options {
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match e.protocol_config {
            Some(ProtocolConfig::Http2ProtocolOptions(_)) => Some(true),
            Some(ProtocolConfig::HttpProtocolOptions(_)) => Some(false),
            _ => None,
        },
        _ => None,
    })
}

/// Records an outbound listener: HTTP port with RDS, or TCP VIP:port.
fn outbound_listener(
    l: &Listener,
    http_ports: &mut BTreeMap<u16, String>,
    tcp_routes: &mut Vec<TcpRoute>,
) -> Result<(), String> {
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, http_connection_manager::RouteSpecifier,
    };
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
        TcpProxy, tcp_proxy::ClusterSpecifier,
    };
    if l.name == "virtualOutbound" {
        return Ok(());
    }
    let Some(address::Address::SocketAddress(sa)) =
        l.address.as_ref().and_then(|a| a.address.as_ref())
    else {
        return Err("address: not a socket address".into());
    };
    let port = match sa.port_specifier {
        Some(
            envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p),
        ) => u16::try_from(p).map_err(|_| format!("address.port_value {p} out of range"))?,
        _ => return Err("address: no port_value".into()),
    };
    let ip: IpAddr = sa
        .address
        .parse()
        .map_err(|_| format!("address.address {:?} is not an IP", sa.address))?;
    let [chain] = l.filter_chains.as_slice() else {
        return Err(format!(
            "filter_chains: expected one, got {}",
            l.filter_chains.len()
        ));
    };
    for f in &chain.filters {
        let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
            return Err(format!("filter {}: no typed_config", f.name));
        };
        if any.type_url.ends_with("HttpConnectionManager") {
            let hcm = HttpConnectionManager::decode(any.value.as_slice())
                .map_err(|e| format!("filter {}: {e}", f.name))?;
            match hcm.route_specifier {
                Some(RouteSpecifier::Rds(rds)) => {
                    http_ports.insert(port, rds.route_config_name);
                }
                _ => return Err(format!("filter {}: outbound HTTP needs RDS", f.name)),
            }
        } else if any.type_url.ends_with("TcpProxy") {
            let tp = TcpProxy::decode(any.value.as_slice())
                .map_err(|e| format!("filter {}: {e}", f.name))?;
            match tp.cluster_specifier {
                Some(ClusterSpecifier::Cluster(cluster)) => tcp_routes.push(TcpRoute {
                    vip: ip,
                    port,
                    cluster,
                }),
                _ => {
                    return Err(format!(
                        "filter {}: weighted TCP clusters are not supported",
                        f.name
                    ));
                }
            }
        } else {
            return Err(format!(
                "filter {}: unsupported type {}",
                f.name, any.type_url
            ));
        }
    }
    Ok(())
}
