//! The inbound listener(s) and the request path to the local application.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use isthmus_proxy_core::balance::{Outcome, PickContext};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::authz::{Decision, HttpAttributes, RequestAttributes, normalize_host, normalize_path};
use crate::body::{self, Body};
use crate::flags::Flags;
use crate::metrics::{Label, Reporter, RequestLabels};
use crate::outbound::http::{RequestLine, strip_hop_by_hop};
use crate::outbound::{Proxy, accept_loop};
use crate::run::Drain;
use crate::server;
use crate::state::{InboundPort, InboundProtocol, Snapshot};
use crate::upstream::upgrade;

/// Time a client has to send its first byte and finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Explicit mode: this listener serves workload port `port`.
pub async fn serve_explicit(proxy: Arc<Proxy>, listener: TcpListener, port: u16, drain: Drain) {
    let d = drain.clone();
    accept_loop(listener, drain, move |stream, peer| {
        let proxy = proxy.clone();
        let draining = d.draining.clone();
        async move { connection(proxy, stream, peer, port, draining).await }
    })
    .await;
}

/// Transparent mode: 15006, the workload port is the original destination's.
pub async fn serve_transparent(proxy: Arc<Proxy>, listener: TcpListener, drain: Drain) {
    let d = drain.clone();
    accept_loop(listener, drain, move |stream, peer| {
        let proxy = proxy.clone();
        let draining = d.draining.clone();
        async move {
            match crate::capture::original_destination(&stream) {
                Ok(dst) => connection(proxy, stream, peer, dst.port(), draining).await,
                Err(e) => tracing::warn!(%peer, error = %e, "inbound: no original destination"),
            }
        }
    })
    .await;
}

/// Who is calling, as the handshake established; shared by the requests
/// of one connection.
#[derive(Debug)]
struct Peer {
    addr: SocketAddr,
    local: SocketAddr,
    principal: Option<String>,
    sni: Option<String>,
    /// Its requests' metric labels (response fields filled per request).
    labels: RequestLabels,
    /// `x-forwarded-client-cert` for its requests (mTLS peers): this
    /// proxy's identity as the handshake presented it, and the peer's.
    xfcc: Option<HeaderValue>,
}

impl Peer {
    fn new(
        proxy: &Proxy,
        snapshot: &Snapshot,
        (addr, local): (SocketAddr, SocketAddr),
        principal: Option<String>,
        sni: Option<String>,
        protocol: &'static str,
    ) -> Arc<Self> {
        let labels = labels(proxy, principal.as_deref(), protocol);
        let xfcc = principal.as_ref().and_then(|p| {
            let own = snapshot
                .credentials
                .as_ref()
                .map(|c| c.cert.identity().to_string())
                .unwrap_or_default();
            HeaderValue::from_str(&format!("By={own};URI={p}")).ok()
        });
        Arc::new(Self {
            addr,
            local,
            principal,
            sni,
            labels,
            xfcc,
        })
    }
}

async fn connection(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    addr: SocketAddr,
    port: u16,
    draining: CancellationToken,
) {
    let snapshot = proxy.snapshot();
    let Some(cfg) = snapshot.inbound.get(&port).cloned() else {
        tracing::debug!(%addr, port, "inbound: no chain for this port; closing");
        return;
    };
    let local = stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], port)));
    let mut first = [0u8; 1];
    let is_tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) => first[0] == 0x16,
        _ => return,
    };
    let limits = proxy.limits;
    if is_tls {
        let Some(server_tls) = (cfg.mtls).then(|| snapshot.server_tls.clone()).flatten() else {
            tracing::debug!(%addr, port, "inbound: TLS not accepted on this port (or no certificate yet)");
            return;
        };
        let tls = match tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            TlsAcceptor::from(server_tls).accept(stream),
        )
        .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                tracing::info!(%addr, port, error = %e, "inbound: mTLS handshake refused");
                return;
            }
            Err(_) => return,
        };
        let conn = tls.get_ref().1;
        let principal = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| isthmus_identity::peer_identity(c).ok())
            .map(|id| id.to_string());
        let sni = conn.server_name().map(str::to_string);
        let peer = Peer::new(
            &proxy,
            &snapshot,
            (addr, local),
            principal,
            sni,
            cfg.protocol.label(),
        );
        dispatch(proxy, snapshot, cfg, tls, peer, limits, draining).await;
    } else {
        if !cfg.plaintext {
            tracing::debug!(%addr, port, "inbound: plaintext refused (STRICT mTLS)");
            return;
        }
        let peer = Peer::new(
            &proxy,
            &snapshot,
            (addr, local),
            None,
            None,
            cfg.protocol.label(),
        );
        dispatch(proxy, snapshot, cfg, stream, peer, limits, draining).await;
    }
}

async fn dispatch<I>(
    proxy: Arc<Proxy>,
    snapshot: Arc<Snapshot>,
    cfg: Arc<InboundPort>,
    io: I,
    peer: Arc<Peer>,
    limits: server::Limits,
    draining: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match cfg.protocol {
        InboundProtocol::Http => {
            server::serve(io, limits, draining, move |req| {
                request(proxy.clone(), cfg.clone(), peer.clone(), req)
            })
            .await;
        }
        InboundProtocol::Tcp => tcp(proxy, snapshot, cfg, io, peer).await,
    }
}

fn labels(proxy: &Proxy, principal: Option<&str>, protocol: &'static str) -> RequestLabels {
    let unknown = crate::metrics::unknown();
    let (src_ns, src_sa) = principal
        .and_then(|p| p.parse::<isthmus_api::naming::SpiffeId>().ok())
        .map(|id| (Label::from(id.namespace), Label::from(id.service_account)))
        .unwrap_or_else(|| (unknown.clone(), unknown.clone()));
    RequestLabels {
        reporter: Reporter::Destination,
        source_workload: src_sa,
        source_workload_namespace: src_ns,
        source_principal: principal.map_or_else(|| unknown.clone(), Label::from),
        source_cluster: unknown.clone(),
        destination_workload: proxy.own.workload.clone(),
        destination_workload_namespace: proxy.own.namespace.clone(),
        destination_principal: unknown,
        destination_service: proxy.own.service.clone(),
        destination_service_name: proxy.own.workload.clone(),
        destination_service_namespace: proxy.own.namespace.clone(),
        destination_cluster: proxy.own.cluster.clone(),
        request_protocol: protocol,
        response_code: 0,
        response_flags: Flags::default(),
        connection_security_policy: if principal.is_some() {
            "mutual_tls"
        } else {
            "none"
        },
    }
}

fn local(status: StatusCode, msg: &'static str) -> Response<Body> {
    let mut r = Response::new(body::full(Bytes::from_static(msg.as_bytes())));
    *r.status_mut() = status;
    r
}

async fn request(
    proxy: Arc<Proxy>,
    cfg: Arc<InboundPort>,
    peer: Arc<Peer>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let upgrade = upgrade::requested(&req).map(|token| (token, hyper::upgrade::on(&mut req)));
    let snapshot = proxy.snapshot();
    let mut labels = peer.labels.clone();
    if !snapshot.identity.is_empty() {
        labels.destination_principal = snapshot.identity.clone();
    }
    if req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"))
    {
        labels.request_protocol = "grpc";
    }
    let request_bytes = req.body().size_hint().exact().unwrap_or(0);
    let logged = proxy.access_log.as_ref().map(|_| RequestLine::of(&req));
    let mut upstream = None;
    let (resp, flags) = forward(&snapshot, &cfg, &peer, req, upgrade, &mut upstream).await;
    labels.response_code = resp.status().as_u16();
    labels.response_flags = flags;
    let response_bytes = resp.body().size_hint().exact().unwrap_or(0);
    proxy
        .metrics
        .record_request(&labels, started.elapsed(), (request_bytes, response_bytes));
    if let (Some(log), Some(line)) = (&proxy.access_log, &logged) {
        log.write(&line.entry(
            "inbound",
            &labels,
            (request_bytes, response_bytes),
            started.elapsed(),
            upstream,
            &cfg.cluster,
            peer.addr,
        ));
    }
    resp
}

async fn forward(
    snapshot: &Arc<Snapshot>,
    cfg: &InboundPort,
    peer: &Peer,
    req: Request<Incoming>,
    upgrade: Option<(HeaderValue, OnUpgrade)>,
    upstream: &mut Option<SocketAddr>,
) -> (Response<Body>, Flags) {
    let raw = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let path = match normalize_path(raw, req.method()) {
        Ok(p) => p,
        Err(e) => {
            return (
                local(e.status(), "bad request path\n"),
                Flags::INVALID_REQUEST,
            );
        }
    };
    let authority = crate::outbound::http::authority(&req).unwrap_or_default();
    let host = normalize_host(authority);
    let decision = cfg.authorizer.check(&RequestAttributes {
        peer_principal: peer.principal.as_deref(),
        source_ip: peer.addr.ip(),
        destination_ip: peer.local.ip(),
        destination_port: cfg.port,
        sni: peer.sni.as_deref(),
        http: Some(HttpAttributes {
            method: req.method(),
            path: &path,
            host: &host,
            headers: req.headers(),
        }),
    });
    if let Decision::Deny { policy } = decision {
        tracing::debug!(principal = ?peer.principal, %policy, path = path.path(), "inbound: denied");
        return (
            local(StatusCode::FORBIDDEN, "RBAC: access denied\n"),
            Flags::RBAC_DENIED,
        );
    }
    let Some(cluster) = snapshot.clusters.get(&cfg.cluster).cloned() else {
        return (
            local(StatusCode::SERVICE_UNAVAILABLE, "no local cluster\n"),
            Flags::NO_CLUSTER,
        );
    };
    // Forward the normalized target so the app sees what authorization saw;
    // the request's own path is reused when normalizing left it as it was,
    // which is nearly always.
    let target = path
        .is_target(raw)
        .then(|| req.uri().path_and_query().cloned())
        .flatten()
        .or_else(|| PathAndQuery::try_from(path.request_target()).ok());
    let authority = if authority.is_empty() {
        Some(Authority::from_static("localhost"))
    } else {
        authority.parse::<Authority>().ok()
    };
    let uri = match (authority, target) {
        (Some(authority), Some(target)) => {
            crate::outbound::http::absolute_uri(authority, Some(target))
        }
        _ => None,
    };
    let Some(uri) = uri else {
        return (
            local(StatusCode::BAD_REQUEST, "bad authority\n"),
            Flags::INVALID_REQUEST,
        );
    };
    let (mut parts, incoming) = req.into_parts();
    parts.uri = uri;
    strip_hop_by_hop(&mut parts.headers);
    // The app learns who called from XFCC, set here only (never trusted from outside).
    const XFCC: http::HeaderName = http::HeaderName::from_static("x-forwarded-client-cert");
    parts.headers.remove(XFCC);
    if let Some(v) = &peer.xfcc {
        parts.headers.insert(XFCC, v.clone());
    }
    let Some(pick) = cluster.balancer.pick(&PickContext {
        hash: None,
        exclude: &[],
        ..PickContext::default()
    }) else {
        return (
            local(StatusCode::SERVICE_UNAVAILABLE, "no local endpoint\n"),
            Flags::NO_HEALTHY_UPSTREAM,
        );
    };
    let addr = pick.address();
    *upstream = Some(addr);
    let downstream = upgrade.map(|(token, on)| {
        upgrade::restore(&mut parts.headers, token);
        on
    });
    let req = Request::from_parts(parts, body::boxed(incoming));
    let pool = cluster.pool();
    let sent = match downstream {
        Some(downstream) => {
            pool.send_upgrade(addr, req, &cluster.balancer)
                .await
                .map(|mut resp| {
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        upgrade::tunnel(downstream, hyper::upgrade::on(&mut resp));
                    }
                    resp.map(body::boxed)
                })
        }
        None => pool.send(addr, req, &cluster.balancer).await,
    };
    match sent {
        Ok(mut resp) => {
            pick.report(Outcome::HttpStatus(resp.status().as_u16()));
            let token = resp.headers().get(http::header::UPGRADE).cloned();
            let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            strip_hop_by_hop(resp.headers_mut());
            if let (true, Some(token)) = (switched, token) {
                upgrade::restore(resp.headers_mut(), token);
            }
            (resp, Flags::default())
        }
        Err(e) => {
            let connect = e.is_connect_failure();
            pick.report(if connect {
                Outcome::ConnectFailure
            } else {
                Outcome::Reset
            });
            tracing::debug!(%addr, error = %e, "inbound: local app request failed");
            if connect {
                (
                    local(StatusCode::SERVICE_UNAVAILABLE, "local app connect error\n"),
                    Flags::UPSTREAM_CONNECT_FAILURE,
                )
            } else {
                (
                    local(StatusCode::SERVICE_UNAVAILABLE, "local app reset\n"),
                    Flags::UPSTREAM_RESET,
                )
            }
        }
    }
}

async fn tcp<I>(
    proxy: Arc<Proxy>,
    snapshot: Arc<Snapshot>,
    cfg: Arc<InboundPort>,
    mut io: I,
    peer: Arc<Peer>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let decision = cfg.authorizer.check(&RequestAttributes {
        peer_principal: peer.principal.as_deref(),
        source_ip: peer.addr.ip(),
        destination_ip: peer.local.ip(),
        destination_port: cfg.port,
        sni: peer.sni.as_deref(),
        http: None,
    });
    if !decision.is_allowed() {
        tracing::debug!(principal = ?peer.principal, "inbound TCP: denied");
        return;
    }
    let Some(cluster) = snapshot.clusters.get(&cfg.cluster).cloned() else {
        return;
    };
    let Some(pick) = cluster.balancer.pick(&PickContext {
        hash: None,
        exclude: &[],
        ..PickContext::default()
    }) else {
        return;
    };
    let addr = pick.address();
    let mut app = match crate::upstream::connect(
        addr,
        cluster.balancer.connect_timeout(),
        None,
        None,
    )
    .await
    {
        Ok(s) => {
            pick.report(Outcome::LocalOriginSuccess);
            s
        }
        Err(e) => {
            tracing::debug!(%addr, error = %e, "inbound TCP: local app unreachable");
            pick.report(Outcome::ConnectFailure);
            return;
        }
    };
    let mut labels = peer.labels.clone();
    if !snapshot.identity.is_empty() {
        labels.destination_principal = snapshot.identity.clone();
    }
    let conn = crate::outbound::TcpConn {
        direction: "inbound",
        peer: peer.addr,
        upstream: addr,
        cluster: &cfg.cluster,
    };
    crate::outbound::splice_counted(&proxy, &labels, conn, &mut io, &mut app).await;
}
