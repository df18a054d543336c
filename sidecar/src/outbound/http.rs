//! One outbound HTTP request: route, fault, balance, retry, mirror.
//!
//! ```text
//! request ─► route table (port) ─► virtual host (authority) ─► route
//!   ─► fault (abort / delay) ─► redirect | direct response | forward:
//!        weighted cluster ─► header ops + rewrite ─► circuit breaker
//!        ─► attempt loop: balancer pick ─► pool send (per-try timeout)
//!              └─ retry on the policy's conditions, another endpoint first
//!        ─► mirrors (fire and forget) ─► response header ops
//! ```
//!
//! Bodies are buffered (up to [`MAX_BUFFERED_BODY`]) only when a retry
//! policy or mirror needs to send them twice; a larger or streaming body is
//! sent once, and such a request is not retried after its body started.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use isthmus_proxy_core::balance::{Outcome, PickContext};

use super::Proxy;
use crate::access_log::Entry;
use crate::body::{self, Body};
use crate::flags::Flags;
use crate::metrics::{Reporter, RequestLabels, ServiceLabels};
use crate::route::{RequestInfo, RouteAction};
use crate::state::{ClusterKind, ClusterState, Snapshot};
use crate::upstream::{UpstreamError, upgrade};

/// Largest request body kept in memory so it can be retried or mirrored.
pub const MAX_BUFFERED_BODY: usize = 64 * 1024;
/// Base of the jittered backoff between retries (Envoy: 25 ms).
const RETRY_BASE: Duration = Duration::from_millis(25);
/// Cap of the backoff between retries (Envoy: 10 × base).
const RETRY_MAX: Duration = Duration::from_millis(250);
/// Bound on a mirrored request.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// Hop-by-hop headers never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// Names the outbound path sets, as constants: inserting a header by a
/// `&str` name that is not a standard one copies the name each time.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_ISTHMUS_RESPONSE_FLAGS: HeaderName = HeaderName::from_static("x-isthmus-response-flags");

/// Removes hop-by-hop headers, including those `Connection` names; keeps
/// `te: trailers`, which gRPC needs end to end (RFC 9113 §8.2.2).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    // Names that are removed below anyway (`Connection: keep-alive` from
    // most servers) cost nothing; only other names are collected.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| {
            !n.eq_ignore_ascii_case("close")
                && !n.eq_ignore_ascii_case(KEEP_ALIVE.as_str())
                && !n.eq_ignore_ascii_case(PROXY_CONNECTION.as_str())
                && !HOP_BY_HOP
                    .iter()
                    .any(|h| n.eq_ignore_ascii_case(h.as_str()))
        })
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for n in named.iter().chain(HOP_BY_HOP) {
        headers.remove(n);
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// What the access log keeps of a request before it is forwarded.
#[derive(Debug)]
pub(crate) struct RequestLine {
    start: SystemTime,
    method: http::Method,
    path: String,
    authority: String,
    version: http::Version,
    request_id: String,
    user_agent: String,
}

impl RequestLine {
    pub(crate) fn of<B>(req: &Request<B>) -> Self {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        Self {
            start: SystemTime::now(),
            method: req.method().clone(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".into(), |p| p.as_str().to_string()),
            authority: req
                .uri()
                .authority()
                .map(|a| a.as_str().to_string())
                .unwrap_or_else(|| header("host")),
            version: req.version(),
            request_id: header("x-request-id"),
            user_agent: header("user-agent"),
        }
    }

    /// The access log entry of the finished request.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn entry<'a>(
        &'a self,
        direction: &'a str,
        labels: &'a RequestLabels,
        (received, sent): (u64, u64),
        duration: Duration,
        upstream_host: Option<SocketAddr>,
        upstream_cluster: &'a str,
        peer: SocketAddr,
    ) -> Entry<'a> {
        Entry {
            start_time: Some(self.start),
            direction,
            method: self.method.as_str(),
            path: &self.path,
            authority: &self.authority,
            protocol: match self.version {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            response_code: labels.response_code,
            response_flags: labels.response_flags,
            bytes_received: received,
            bytes_sent: sent,
            duration,
            request_id: &self.request_id,
            upstream_host,
            upstream_cluster,
            downstream_remote_address: Some(peer),
            downstream_peer_uri_san: if labels.reporter == crate::metrics::Reporter::Destination
                && &*labels.source_principal != "unknown"
            {
                &labels.source_principal
            } else {
                ""
            },
            user_agent: &self.user_agent,
        }
    }
}

/// A local answer with a flag.
fn local(status: StatusCode, flags: Flags, msg: &str) -> (Response<Body>, Flags) {
    let mut r = Response::new(body::full(Bytes::copy_from_slice(msg.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    (r, flags)
}

/// A version-4 UUID for `x-request-id`.
fn request_id() -> HeaderValue {
    HeaderValue::from_bytes(&uuid_v4(rand::random()))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// A version-4 UUID from 128 random bits, in its 8-4-4-4-12 hex form,
/// written on the stack: the header value is the request id's only allocation.
fn uuid_v4(v: u128) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let v = (v & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let mut s = [b'-'; 36];
    let mut bits = v;
    for i in (0..36).rev() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        s[i] = HEX[(bits & 0xf) as usize];
        bits >>= 4;
    }
    s
}

/// The authority of a request: `:authority` (HTTP/2, absolute form) or `Host`.
pub fn authority<B>(req: &Request<B>) -> Option<&str> {
    authority_in(req.uri(), req.headers())
}

fn authority_in<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    match uri.authority() {
        Some(a) => Some(a.as_str()),
        None => headers.get(header::HOST).and_then(|h| h.to_str().ok()),
    }
}

/// `http://<authority><path>`, the form upstream requests take: the pool
/// writes the authority as `Host` (HTTP/1.1) or `:authority` (HTTP/2).
/// Neither part is copied.
pub(crate) fn absolute_uri(authority: Authority, path: Option<PathAndQuery>) -> Option<Uri> {
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority);
    uri.path_and_query = Some(path.unwrap_or_else(|| PathAndQuery::from_static("/")));
    Uri::from_parts(uri).ok()
}

/// Handles one outbound request; `default_port` is the port when the
/// authority has none (explicit mode: 80; transparent: the original port).
pub async fn handle(
    proxy: Arc<Proxy>,
    mut req: Request<Incoming>,
    default_port: u16,
    peer: SocketAddr,
    original_dst: Option<SocketAddr>,
) -> Response<Body> {
    let started = Instant::now();
    let upgrade = upgrade::requested(&req).map(|token| (token, hyper::upgrade::on(&mut req)));
    let snapshot = proxy.snapshot();
    let request_bytes = req.body().size_hint().exact().unwrap_or(0);
    let unknown = crate::metrics::unknown();
    let mut labels = RequestLabels {
        reporter: Reporter::Source,
        source_workload: proxy.own.workload.clone(),
        source_workload_namespace: proxy.own.namespace.clone(),
        source_principal: snapshot.identity.clone(),
        source_cluster: proxy.own.cluster.clone(),
        destination_workload: unknown.clone(),
        destination_workload_namespace: unknown.clone(),
        destination_principal: unknown.clone(),
        destination_service: unknown.clone(),
        destination_service_name: unknown.clone(),
        destination_service_namespace: unknown.clone(),
        destination_cluster: unknown,
        request_protocol: if req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"))
        {
            "grpc"
        } else {
            "http"
        },
        response_code: 0,
        response_flags: Flags::default(),
        connection_security_policy: "unknown",
    };
    // Copied only when an access log line will need them after the request moved on.
    let logged = proxy.access_log.as_ref().map(|_| RequestLine::of(&req));
    let mut chosen = None;
    let (mut response, flags, upstream) = route(
        &proxy,
        &snapshot,
        req,
        (default_port, peer, original_dst),
        upgrade,
        (&mut labels, &mut chosen),
    )
    .await;
    labels.response_code = response.status().as_u16();
    labels.response_flags = flags;
    let elapsed = started.elapsed();
    let response_bytes = response.body().size_hint().exact().unwrap_or(0);
    proxy
        .metrics
        .record_request(&labels, elapsed, (request_bytes, response_bytes));
    if let (Some(log), Some(line)) = (&proxy.access_log, &logged) {
        log.write(&line.entry(
            "outbound",
            &labels,
            (request_bytes, response_bytes),
            elapsed,
            upstream,
            chosen.as_ref().map_or("", |c| c.name.as_str()),
            peer,
        ));
    }
    if flags != Flags::default()
        && let Ok(v) = HeaderValue::from_str(&flags.to_string())
    {
        response.headers_mut().insert(X_ISTHMUS_RESPONSE_FLAGS, v);
    }
    response
}

async fn route(
    proxy: &Arc<Proxy>,
    snapshot: &Arc<Snapshot>,
    req: Request<Incoming>,
    (default_port, peer, original_dst): (u16, SocketAddr, Option<SocketAddr>),
    upgrade: Option<(HeaderValue, OnUpgrade)>,
    (labels, chosen): (&mut RequestLabels, &mut Option<Arc<ClusterState>>),
) -> (Response<Body>, Flags, Option<SocketAddr>) {
    let Some(authority) = authority(&req) else {
        let (r, f) = local(
            StatusCode::BAD_REQUEST,
            Flags::INVALID_REQUEST,
            "missing Host\n",
        );
        return (r, f, None);
    };
    // Parsed once: it gives the port, and it is the upstream URI's authority
    // unless the route rewrites the host.
    let parsed = authority.parse::<Authority>().ok();
    let port = parsed
        .as_ref()
        .and_then(Authority::port_u16)
        .unwrap_or(default_port);
    let table = match snapshot.http_ports.get(&port) {
        Some(name) => snapshot.routes.get(name),
        None => snapshot.routes.get(&port.to_string()),
    };
    let Some(table) = table else {
        let (r, f) = local(
            StatusCode::NOT_FOUND,
            Flags::NO_ROUTE,
            "no route for this port\n",
        );
        return (r, f, None);
    };
    let info = RequestInfo {
        method: req.method(),
        authority,
        path_and_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
        headers: req.headers(),
    };
    let Some(route) = table.find(&info) else {
        let (r, f) = local(StatusCode::NOT_FOUND, Flags::NO_ROUTE, "no route matched\n");
        return (r, f, None);
    };
    let mut flags = Flags::default();

    // Fault injection: abort, then delay (Envoy's order: delay first, then abort).
    if let Some(fault) = &route.fault {
        if let Some((delay, pct)) = &fault.delay
            && pct.hit(rand::random())
        {
            flags.insert(Flags::DELAY_INJECTED);
            tokio::time::sleep(*delay).await;
        }
        if let Some((abort, pct)) = &fault.abort
            && pct.hit(rand::random())
        {
            let (r, mut f) = fault_response(abort);
            f.insert(flags);
            return (r, f, None);
        }
    }

    let forward = match &route.action {
        RouteAction::Direct { status, body: b } => {
            let mut r = Response::new(b.clone().map_or_else(body::empty, body::full));
            *r.status_mut() = *status;
            route.response_headers.apply(r.headers_mut());
            return (r, flags, None);
        }
        RouteAction::Redirect(redirect) => {
            let (status, location) = redirect.response_location(&info, "http");
            let mut r = Response::new(body::empty());
            *r.status_mut() = status;
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            route.response_headers.apply(r.headers_mut());
            return (r, flags, None);
        }
        RouteAction::Forward(f) => f,
    };
    let target = forward.clusters.pick(rand::random());
    let Some(cluster) = snapshot.clusters.get(&target.name).cloned() else {
        labels.destination_service = ServiceLabels::of_cluster(&target.name).service;
        let (r, f) = local(
            forward.cluster_not_found,
            Flags::NO_CLUSTER,
            "no such cluster\n",
        );
        return (r, f, None);
    };
    labels.destination_service = cluster.service.service.clone();
    labels.destination_service_name = cluster.service.name.clone();
    labels.destination_service_namespace = cluster.service.namespace.clone();
    *chosen = Some(cluster.clone());
    let hash = forward.request_hash(&info, peer.ip());
    // A cookie policy with a ttl hands the client the cookie it hashed on.
    let set_cookie = forward
        .hash_policies
        .iter()
        .find_map(|p| p.new_cookie(&info, peer.ip()))
        .and_then(|c| HeaderValue::from_str(&c).ok());
    // Passthrough in explicit mode: where the authority resolves (the app
    // used the sidecar as its HTTP proxy for a host the mesh does not know).
    let original_dst = match (cluster.kind, original_dst) {
        (ClusterKind::OriginalDst, None) => {
            let lookup = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::lookup_host((host_of(authority), port)),
            )
            .await;
            match lookup {
                Ok(Ok(mut addrs)) => addrs.next(),
                _ => None,
            }
        }
        (_, dst) => dst,
    };
    if cluster.kind == ClusterKind::OriginalDst && original_dst.is_none() {
        let (r, f) = local(
            StatusCode::SERVICE_UNAVAILABLE,
            Flags::DNS_FAILURE,
            "no such host\n",
        );
        return (r, f, None);
    }

    // The upstream request: headers, rewrite, authority carried in the URI.
    let (mut parts, incoming) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if !parts.headers.contains_key(&X_REQUEST_ID) {
        parts.headers.insert(X_REQUEST_ID, request_id());
    }
    parts
        .headers
        .insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    target.request_headers.apply(&mut parts.headers);
    route.request_headers.apply(&mut parts.headers);
    if let Err(e) = forward.rewrite(route, &mut parts) {
        tracing::debug!(error = %e, "rewrite failed");
        let (r, f) = local(
            StatusCode::INTERNAL_SERVER_ERROR,
            Flags::INVALID_REQUEST,
            "rewrite failed\n",
        );
        return (r, f, None);
    }
    // The authority parsed above, unless the route rewrote the host (or
    // none parsed): then what the request now carries.
    let authority = match (&forward.host_rewrite, parsed) {
        (None, Some(a)) => Some(a),
        _ => authority_in(&parts.uri, &parts.headers).and_then(|a| a.parse::<Authority>().ok()),
    };
    let Some(uri) = authority.and_then(|a| absolute_uri(a, parts.uri.path_and_query().cloned()))
    else {
        let (r, f) = local(
            StatusCode::BAD_REQUEST,
            Flags::INVALID_REQUEST,
            "invalid authority\n",
        );
        return (r, f, None);
    };
    parts.uri = uri;

    // An upgrade: one attempt on a connection of its own, then a tunnel.
    if let Some((token, downstream)) = upgrade {
        upgrade::restore(&mut parts.headers, token);
        let req = Request::from_parts(parts, body::boxed(incoming));
        let sent = forward_upgrade(&cluster, req, downstream, hash, original_dst);
        let (mut resp, mut f, upstream) = match forward.timeout {
            Some(t) => tokio::time::timeout(t, sent).await.unwrap_or_else(|_| {
                let (r, f) = local(
                    StatusCode::GATEWAY_TIMEOUT,
                    Flags::UPSTREAM_TIMEOUT,
                    "upstream request timeout\n",
                );
                (r, f, None)
            }),
            None => sent.await,
        };
        f.insert(flags);
        target.response_headers.apply(resp.headers_mut());
        route.response_headers.apply(resp.headers_mut());
        return (resp, f, upstream);
    }

    // Buffer the body when it must be sent more than once.
    let replay =
        forward.retry.as_ref().is_some_and(|r| r.num_retries > 0) || !forward.mirrors.is_empty();
    let small = incoming
        .size_hint()
        .upper()
        .is_some_and(|u| u <= MAX_BUFFERED_BODY as u64);
    let mut streaming = None;
    let mut buffered = None;
    if replay && small {
        match Limited::new(incoming, MAX_BUFFERED_BODY).collect().await {
            Ok(c) => buffered = Some(c.to_bytes()),
            Err(_) => {
                let (r, f) = local(
                    StatusCode::BAD_REQUEST,
                    Flags::DOWNSTREAM_RESET,
                    "request body failed\n",
                );
                return (r, f, None);
            }
        }
    } else {
        streaming = Some(body::boxed(incoming));
    }

    // Mirrors: copies of the request, never awaited, never affecting the answer.
    if let Some(bytes) = &buffered {
        for m in &forward.mirrors {
            if !m.sampled(rand::random()) {
                continue;
            }
            if let Some(mc) = snapshot.clusters.get(&m.cluster).cloned() {
                let mut mparts = clone_parts(&parts);
                if m.shadow_host_suffix
                    && let Some(u) = shadow_uri(&parts.uri)
                {
                    mparts.uri = u;
                }
                let req = Request::from_parts(mparts, body::full(bytes.clone()));
                tokio::spawn(mirror(mc, req));
            }
        }
    }

    let Some(_request_permit) = cluster.balancer.try_request() else {
        let (r, f) = local(
            StatusCode::SERVICE_UNAVAILABLE,
            Flags::UPSTREAM_OVERFLOW,
            "upstream overflow\n",
        );
        return (r, f, None);
    };

    let attempts = async {
        forward_attempts(
            proxy,
            &cluster,
            parts,
            buffered,
            streaming,
            forward.retry.as_ref(),
            PickContext {
                hash,
                original_dst,
                ..PickContext::default()
            },
        )
        .await
    };
    let (resp, mut f, upstream) = match forward.timeout {
        Some(t) => match tokio::time::timeout(t, attempts).await {
            Ok(r) => r,
            Err(_) => {
                let (r, f) = local(
                    StatusCode::GATEWAY_TIMEOUT,
                    Flags::UPSTREAM_TIMEOUT,
                    "upstream request timeout\n",
                );
                (r, f, None)
            }
        },
        None => attempts.await,
    };
    f.insert(flags);
    let mut resp = resp;
    if let Some(c) = set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    target.response_headers.apply(resp.headers_mut());
    route.response_headers.apply(resp.headers_mut());
    (resp, f, upstream)
}

/// The host part of an authority (brackets of an IPv6 literal removed).
fn host_of(authority: &str) -> &str {
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

fn fault_response(abort: &crate::route::FaultAbort) -> (Response<Body>, Flags) {
    match abort {
        crate::route::FaultAbort::Http(status) => {
            local(*status, Flags::FAULT_INJECTED, "fault filter abort\n")
        }
        crate::route::FaultAbort::Grpc(code) => {
            let mut r = Response::new(body::empty());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            if let Ok(v) = HeaderValue::from_str(&code.to_string()) {
                r.headers_mut().insert("grpc-status", v);
            }
            (r, Flags::FAULT_INJECTED)
        }
    }
}

fn clone_parts(parts: &http::request::Parts) -> http::request::Parts {
    let mut b = Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.clone())
        .version(parts.version);
    if let Some(h) = b.headers_mut() {
        *h = parts.headers.clone();
    }
    b.body(()).map(|r| r.into_parts().0).unwrap_or_else(|_| {
        let (p, ()) = Request::new(()).into_parts();
        p
    })
}

/// The upstream URI of a mirrored copy with Envoy's shadow host.
fn shadow_uri(uri: &Uri) -> Option<Uri> {
    let shadow = shadow_authority(uri.authority()?.as_str()).parse().ok()?;
    absolute_uri(shadow, uri.path_and_query().cloned())
}

/// Envoy's shadow host: `-shadow` appended to the host (before the port).
fn shadow_authority(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => format!("{h}-shadow:{p}"),
        _ => format!("{authority}-shadow"),
    }
}

async fn mirror(cluster: Arc<ClusterState>, req: Request<Body>) {
    let Some(pick) = cluster.balancer.pick(&PickContext {
        hash: None,
        exclude: &[],
        ..PickContext::default()
    }) else {
        return;
    };
    let addr = pick.address();
    let pool = cluster.pool();
    let sent = tokio::time::timeout(MIRROR_TIMEOUT, async {
        match pool.send(addr, req, &cluster.balancer).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                // Drain so the connection can be reused.
                let _ = resp.into_body().collect().await;
                Outcome::HttpStatus(status)
            }
            Err(e) if e.is_connect_failure() => Outcome::ConnectFailure,
            Err(_) => Outcome::Reset,
        }
    })
    .await;
    pick.report(sent.unwrap_or(Outcome::Timeout));
}

/// An upgrade request: one endpoint, one attempt (its body may be a stream
/// that is already flowing), and on `101` a tunnel between both sides.
async fn forward_upgrade(
    cluster: &Arc<ClusterState>,
    req: Request<Body>,
    downstream: OnUpgrade,
    hash: Option<u64>,
    original_dst: Option<SocketAddr>,
) -> (Response<Body>, Flags, Option<SocketAddr>) {
    let Some(_permit) = cluster.balancer.try_request() else {
        let (r, f) = local(
            StatusCode::SERVICE_UNAVAILABLE,
            Flags::UPSTREAM_OVERFLOW,
            "upstream overflow\n",
        );
        return (r, f, None);
    };
    let Some(pick) = cluster.balancer.pick(&PickContext {
        hash,
        original_dst,
        ..PickContext::default()
    }) else {
        let (r, f) = local(
            StatusCode::SERVICE_UNAVAILABLE,
            Flags::NO_HEALTHY_UPSTREAM,
            "no healthy upstream\n",
        );
        return (r, f, None);
    };
    let addr = pick.address();
    match cluster
        .pool()
        .send_upgrade(addr, req, &cluster.balancer)
        .await
    {
        Ok(mut resp) => {
            pick.report(Outcome::HttpStatus(resp.status().as_u16()));
            let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            let token = resp.headers().get(header::UPGRADE).cloned();
            if switched {
                upgrade::tunnel(downstream, hyper::upgrade::on(&mut resp));
            }
            let mut resp = resp.map(body::boxed);
            strip_hop_by_hop(resp.headers_mut());
            if let (true, Some(token)) = (switched, token) {
                upgrade::restore(resp.headers_mut(), token);
            }
            (resp, Flags::default(), Some(addr))
        }
        Err(e) => {
            let (outcome, status, flag, msg) = match &e {
                UpstreamError::Overflow => (
                    Outcome::Cancelled,
                    StatusCode::SERVICE_UNAVAILABLE,
                    Flags::UPSTREAM_OVERFLOW,
                    "upstream connection limit\n",
                ),
                e if e.is_connect_failure() => (
                    Outcome::ConnectFailure,
                    StatusCode::SERVICE_UNAVAILABLE,
                    Flags::UPSTREAM_CONNECT_FAILURE,
                    "upstream connect error\n",
                ),
                _ => (
                    Outcome::Reset,
                    StatusCode::SERVICE_UNAVAILABLE,
                    Flags::UPSTREAM_RESET,
                    "upstream reset before response\n",
                ),
            };
            pick.report(outcome);
            tracing::debug!(cluster = %cluster.name, %addr, error = %e, "upgrade request failed");
            let (r, f) = local(status, flag, msg);
            (r, f, Some(addr))
        }
    }
}

/// The attempt loop: first try plus retries.
#[allow(clippy::too_many_arguments)]
async fn forward_attempts(
    proxy: &Arc<Proxy>,
    cluster: &Arc<ClusterState>,
    parts: http::request::Parts,
    buffered: Option<Bytes>,
    mut streaming: Option<Body>,
    retry: Option<&crate::route::RetryPolicy>,
    pick_ctx: PickContext<'_>,
) -> (Response<Body>, Flags, Option<SocketAddr>) {
    let mut parts = Some(parts);
    // Endpoints of earlier attempts, avoided by the next pick; pushed only
    // when an attempt is retried, so a request answered at once allocates nothing.
    let mut tried: Vec<SocketAddr> = Vec::new();
    let max_attempts = 1 + retry.map_or(0, |r| r.num_retries);
    let mut last: Option<(Response<Body>, Flags)> = None;
    let mut retries_permit = None;
    for attempt in 0..max_attempts {
        if attempt > 0 {
            // Retry budget (maxRetries) and jittered backoff.
            match cluster.balancer.try_retry() {
                Some(p) => retries_permit = Some(p),
                None => {
                    let (r, mut f) = last.take().unwrap_or_else(|| {
                        local(
                            StatusCode::SERVICE_UNAVAILABLE,
                            Flags::UPSTREAM_OVERFLOW,
                            "retry overflow\n",
                        )
                    });
                    f.insert(Flags::UPSTREAM_OVERFLOW);
                    return (r, f, tried.last().copied());
                }
            }
            proxy
                .metrics
                .retries
                .get_or_create(&crate::metrics::ClusterLabel {
                    cluster: cluster.name.clone(),
                })
                .inc();
            let cap = (RETRY_BASE * 2u32.saturating_pow(attempt - 1)).min(RETRY_MAX);
            let wait = cap.mul_f64(rand::random::<f64>());
            tokio::time::sleep(wait).await;
        }
        let body = match (&buffered, streaming.take()) {
            (Some(b), _) => body::full(b.clone()),
            (None, Some(s)) => s,
            (None, None) => break, // a streamed body cannot be sent twice
        };
        let Some(pick) = cluster.balancer.pick(&PickContext {
            exclude: &tried,
            ..pick_ctx
        }) else {
            let (r, f) = last.take().unwrap_or_else(|| {
                local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Flags::NO_HEALTHY_UPSTREAM,
                    "no healthy upstream\n",
                )
            });
            return (r, f, tried.last().copied());
        };
        let addr = pick.address();
        // The last attempt (the only one without retries) takes the head;
        // earlier ones send a copy.
        let head = if attempt + 1 == max_attempts {
            parts.take()
        } else {
            parts.as_ref().map(clone_parts)
        };
        let Some(head) = head else { break };
        let req = Request::from_parts(head, body);
        let pool = cluster.pool();
        let send = pool.send(addr, req, &cluster.balancer);
        let result = match retry.and_then(|r| r.per_try_timeout) {
            Some(t) => tokio::time::timeout(t, send).await.map_err(|_| ()),
            None => Ok(send.await),
        };
        let more = attempt + 1 < max_attempts && (buffered.is_some());
        match result {
            Ok(Ok(resp)) => {
                let status = resp.status();
                let grpc = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok());
                pick.report(Outcome::HttpStatus(status.as_u16()));
                let mut resp = resp;
                strip_hop_by_hop(resp.headers_mut());
                if more && retry.is_some_and(|r| r.retry_status(status, grpc)) {
                    last = Some((resp, Flags::RETRY_LIMIT));
                    tried.push(addr);
                    continue;
                }
                let flags = if attempt > 0 && retry.is_some_and(|r| r.retry_status(status, grpc)) {
                    Flags::RETRY_LIMIT
                } else {
                    Flags::default()
                };
                drop(retries_permit);
                return (resp, flags, Some(addr));
            }
            Ok(Err(UpstreamError::Overflow)) => {
                pick.report(Outcome::Cancelled);
                let (r, f) = local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Flags::UPSTREAM_OVERFLOW,
                    "upstream connection limit\n",
                );
                return (r, f, Some(addr));
            }
            Ok(Err(e)) => {
                let connect = e.is_connect_failure();
                pick.report(if connect {
                    Outcome::ConnectFailure
                } else {
                    Outcome::Reset
                });
                tracing::debug!(cluster = %cluster.name, %addr, error = %e, "upstream request failed");
                let (r, f) = if connect {
                    local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Flags::UPSTREAM_CONNECT_FAILURE,
                        "upstream connect error\n",
                    )
                } else {
                    local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Flags::UPSTREAM_RESET,
                        "upstream reset before response\n",
                    )
                };
                let retriable = retry.is_some_and(|r| {
                    if connect {
                        r.retry_connect_failure()
                    } else {
                        r.retry_reset()
                    }
                });
                last = Some((r, f));
                if more && retriable {
                    tried.push(addr);
                    continue;
                }
                let (r, mut f) = last
                    .take()
                    .unwrap_or_else(|| local(StatusCode::SERVICE_UNAVAILABLE, f, ""));
                if attempt > 0 {
                    f.insert(Flags::RETRY_LIMIT);
                }
                return (r, f, Some(addr));
            }
            Err(()) => {
                pick.report(Outcome::Timeout);
                let (r, f) = local(
                    StatusCode::GATEWAY_TIMEOUT,
                    Flags::UPSTREAM_TIMEOUT,
                    "upstream per-try timeout\n",
                );
                last = Some((r, f));
                if more && retry.is_some_and(|r| r.retry_reset()) {
                    tried.push(addr);
                    continue;
                }
                let (r, f) = last.take().unwrap_or_else(|| {
                    local(StatusCode::GATEWAY_TIMEOUT, Flags::UPSTREAM_TIMEOUT, "")
                });
                return (r, f, Some(addr));
            }
        }
    }
    let (r, mut f) = last.unwrap_or_else(|| {
        local(
            StatusCode::SERVICE_UNAVAILABLE,
            Flags::NO_HEALTHY_UPSTREAM,
            "no upstream attempt possible\n",
        )
    });
    f.insert(Flags::RETRY_LIMIT);
    (r, f, tried.last().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_version_4_uuids_of_the_random_bits() {
        for v in [
            0u128,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
            1 << 100,
        ] {
            let id = uuid_v4(v);
            let id = std::str::from_utf8(&id).expect("ascii");
            let w = (v & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
            let expected = format!(
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                w >> 96,
                (w >> 80) & 0xffff,
                (w >> 64) & 0xffff,
                (w >> 48) & 0xffff,
                w & 0xffff_ffff_ffff
            );
            assert_eq!(id, expected);
            assert_eq!(&id[14..15], "4", "version nibble of {id}");
            assert!(
                matches!(&id[19..20], "8" | "9" | "a" | "b"),
                "variant of {id}"
            );
        }
        assert_ne!(request_id(), request_id());
    }

    #[test]
    fn mirrored_copies_go_to_the_shadow_host_with_the_same_path() {
        let shadow = |u: &str| shadow_uri(&u.parse().unwrap()).map(|u| u.to_string());
        assert_eq!(
            shadow("http://helloworld.sample:5000/a/b?c=d").as_deref(),
            Some("http://helloworld.sample-shadow:5000/a/b?c=d")
        );
        assert_eq!(
            shadow("http://helloworld/").as_deref(),
            Some("http://helloworld-shadow/")
        );
        assert_eq!(shadow("/no/authority"), None);
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Custom , close"),
            ("connection", "upgrade"),
            ("x-custom", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip, trailers"),
            ("x-kept", "2"),
        ] {
            h.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("?")))
            .collect();
        left.sort();
        assert_eq!(left, ["te: trailers", "x-kept: 2"]);
    }
}
