//! DestinationRule, ServiceEntry, WorkloadEntry and Gateway.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::{Ctx, subset_name};
use crate::naming::{self, Locality, LocalityPattern};
use crate::networking::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, ConsistentHashLb,
    DestinationRuleSpec, GatewaySpec, LoadBalancerSettings, LocalityLbSetting, OutlierDetection,
    Resolution, ServerTlsMode, ServiceEntrySpec, TrafficPolicy, WorkloadEntrySpec,
};

/// Port protocols Isthmus knows (case-insensitive, as Istio).
const PROTOCOLS: &[&str] = &["HTTP", "HTTPS", "GRPC", "HTTP2", "TCP", "TLS", "MONGO"];

pub(super) fn destination_rule(cx: &mut Ctx, spec: &DestinationRuleSpec) {
    if spec.host.is_empty() {
        cx.error_at("host", "host is required");
    } else {
        cx.field("host", |cx| cx.hostname(&spec.host, true));
    }
    if let Some(tp) = &spec.traffic_policy {
        cx.field("trafficPolicy", |cx| traffic_policy(cx, tp));
    }
    let mut names = BTreeSet::new();
    cx.each("subsets", &spec.subsets, |cx, s| {
        cx.field("name", |cx| {
            if s.name.is_empty() {
                cx.error("subset name is required");
            } else {
                subset_name(cx, &s.name);
            }
            if !names.insert(s.name.clone()) {
                cx.error(format!("duplicate subset name {:?}", s.name));
            }
        });
        cx.labels("labels", &s.labels);
        if let Some(tp) = &s.traffic_policy {
            cx.field("trafficPolicy", |cx| traffic_policy(cx, tp));
        }
    });
    cx.export_to(&spec.export_to);
    if let Some(ws) = &spec.workload_selector {
        cx.field("workloadSelector", |cx| {
            cx.labels("matchLabels", &ws.match_labels)
        });
    }
}

fn traffic_policy(cx: &mut Ctx, tp: &TrafficPolicy) {
    policy_parts(
        cx,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
    );
    let mut ports = BTreeSet::new();
    cx.each("portLevelSettings", &tp.port_level_settings, |cx, p| {
        match &p.port {
            None => cx.error_at("port", "port is required"),
            Some(port) => cx.field("port.number", |cx| {
                cx.port(port.number);
                if !ports.insert(port.number) {
                    cx.error(format!("port {} has more than one setting", port.number));
                }
            }),
        }
        policy_parts(
            cx,
            p.load_balancer.as_ref(),
            p.connection_pool.as_ref(),
            p.outlier_detection.as_ref(),
            p.tls.as_ref(),
        );
    });
}

/// The parts a traffic policy and a port-level policy share.
fn policy_parts(
    cx: &mut Ctx,
    lb: Option<&LoadBalancerSettings>,
    cp: Option<&ConnectionPoolSettings>,
    od: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
) {
    if let Some(l) = lb.and_then(|lb| lb.locality_lb_setting.as_ref()) {
        cx.field("loadBalancer.localityLbSetting", |cx| locality_lb(cx, l));
    }
    if let Some(lb) = lb
        && let Some(ch) = &lb.consistent_hash
    {
        if lb.simple.is_some() {
            cx.error_at(
                "loadBalancer",
                "simple and consistentHash are alternatives; set one",
            );
        }
        cx.field("loadBalancer.consistentHash", |cx| consistent_hash(cx, ch));
    }
    if let Some(cp) = cp {
        cx.field("connectionPool", |cx| connection_pool(cx, cp));
    }
    if let Some(od) = od {
        cx.field("outlierDetection", |cx| outlier_detection(cx, od));
    }
    if let Some(tls) = tls {
        cx.field("tls", |cx| client_tls(cx, tls));
    }
}

/// `distribute` and `failover` may appear together (Istio rejects that; we order
/// failover between regions and weight within the healthy ones).
fn locality_lb(cx: &mut Ctx, l: &LocalityLbSetting) {
    cx.each("distribute", &l.distribute, |cx, d| {
        cx.field("from", |cx| locality_pattern(cx, &d.from));
        cx.field("to", |cx| {
            if d.to.is_empty() {
                cx.error("at least one destination locality is required");
                return;
            }
            let sum: u64 = d.to.values().map(|w| u64::from(*w)).sum();
            if sum != 100 {
                cx.error(format!("weights sum to {sum}, expected 100"));
            }
            for k in d.to.keys() {
                cx.field(k, |cx| locality_pattern(cx, k));
            }
        });
    });
    let mut froms = BTreeSet::new();
    cx.each("failover", &l.failover, |cx, f| {
        for (name, region) in [("from", &f.from), ("to", &f.to)] {
            if region.is_empty()
                || region.contains(['/', '*'])
                || region.contains(char::is_whitespace)
            {
                cx.error_at(
                    name,
                    format!("failover {name} must be a region name, got {region:?}"),
                );
            }
        }
        if !f.from.is_empty() && f.from == f.to {
            cx.error(format!(
                "failover from and to must be different regions (both {:?})",
                f.from
            ));
        }
        if !froms.insert(f.from.clone()) {
            cx.error_at(
                "from",
                format!("region {:?} already has a failover target", f.from),
            );
        }
    });
    cx.each("failoverPriority", &l.failover_priority, |cx, p| {
        let key = p.split_once('=').map_or(p.as_str(), |(k, _)| k);
        if let Err(msg) = super::label_key(key) {
            cx.error(format!(
                "failoverPriority entries are label keys (optionally key=value): {msg}"
            ));
        }
    });
}

/// Envoy's largest ring.
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

fn consistent_hash(cx: &mut Ctx, ch: &ConsistentHashLb) {
    let keys = [
        ch.http_header_name.is_some(),
        ch.http_cookie.is_some(),
        ch.use_source_ip == Some(true),
        ch.http_query_parameter_name.is_some(),
    ];
    match keys.iter().filter(|k| **k).count() {
        1 => {}
        0 => cx.error(
            "one hash key is required: httpHeaderName, httpCookie, useSourceIp or \
             httpQueryParameterName",
        ),
        _ => cx.error(
            "httpHeaderName, httpCookie, useSourceIp and httpQueryParameterName are \
             alternatives; set one",
        ),
    }
    if let Some(h) = &ch.http_header_name {
        cx.field("httpHeaderName", |cx| {
            if !is_token(h) {
                cx.error(format!("{h:?} is not an HTTP header name"));
            }
        });
    }
    if ch
        .http_query_parameter_name
        .as_ref()
        .is_some_and(String::is_empty)
    {
        cx.error_at("httpQueryParameterName", "must not be empty");
    }
    if let Some(c) = &ch.http_cookie {
        cx.field("httpCookie", |cx| {
            if c.name.is_empty() {
                cx.error_at("name", "cookie name is required");
            } else if !is_token(&c.name) {
                cx.error_at("name", format!("{:?} is not a cookie name", c.name));
            }
            if c.path.as_ref().is_some_and(|p| !p.starts_with('/')) {
                cx.error_at("path", "must start with '/'");
            }
        });
    }
    let mut ring = |field: &str, size: Option<u64>| {
        if let Some(n) = size
            && !(1..=MAX_RING_SIZE).contains(&n)
        {
            cx.error_at(field, format!("must be in 1..={MAX_RING_SIZE}, got {n}"));
        }
    };
    ring("minimumRingSize", ch.minimum_ring_size);
    ring(
        "ringHash.minimumRingSize",
        ch.ring_hash.as_ref().and_then(|r| r.minimum_ring_size),
    );
}

/// An RFC 9110 token (header and cookie names).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn locality_pattern(cx: &mut Ctx, p: &str) {
    if let Err(e) = p.parse::<LocalityPattern>() {
        cx.error(e.to_string());
    }
}

fn connection_pool(cx: &mut Ctx, cp: &ConnectionPoolSettings) {
    if let Some(tcp) = &cp.tcp {
        cx.field("tcp", |cx| {
            positive(cx, "maxConnections", tcp.max_connections);
            nonzero(cx, "connectTimeout", tcp.connect_timeout);
            nonzero(cx, "maxConnectionDuration", tcp.max_connection_duration);
            nonzero(cx, "idleTimeout", tcp.idle_timeout);
            if let Some(ka) = &tcp.tcp_keepalive {
                cx.field("tcpKeepalive", |cx| {
                    nonzero(cx, "time", ka.time);
                    nonzero(cx, "interval", ka.interval);
                });
            }
        });
    }
    if let Some(http) = &cp.http {
        cx.field("http", |cx| {
            positive(
                cx,
                "http1MaxPendingRequests",
                http.http1_max_pending_requests,
            );
            positive(cx, "http2MaxRequests", http.http2_max_requests);
            non_negative(
                cx,
                "maxRequestsPerConnection",
                http.max_requests_per_connection,
            );
            non_negative(cx, "maxRetries", http.max_retries);
            positive(cx, "maxConcurrentStreams", http.max_concurrent_streams);
            nonzero(cx, "idleTimeout", http.idle_timeout);
        });
    }
}

fn positive(cx: &mut Ctx, name: &str, v: Option<i32>) {
    if let Some(v) = v
        && v <= 0
    {
        cx.error_at(name, format!("{name} must be > 0, got {v}"));
    }
}

fn non_negative(cx: &mut Ctx, name: &str, v: Option<i32>) {
    if let Some(v) = v
        && v < 0
    {
        cx.error_at(name, format!("{name} must be >= 0, got {v}"));
    }
}

fn nonzero(cx: &mut Ctx, name: &str, d: Option<crate::duration::Duration>) {
    if let Some(d) = d
        && d.get().is_zero()
    {
        cx.error_at(name, format!("{name} duration must be greater than zero"));
    }
}

fn outlier_detection(cx: &mut Ctx, od: &OutlierDetection) {
    for (name, v) in [
        ("maxEjectionPercent", od.max_ejection_percent),
        ("minHealthPercent", od.min_health_percent),
    ] {
        if let Some(v) = v
            && !(0..=100).contains(&v)
        {
            cx.error_at(name, format!("{name} {v} is outside 0-100"));
        }
    }
    nonzero(cx, "interval", od.interval);
    nonzero(cx, "baseEjectionTime", od.base_ejection_time);
    if od.consecutive_local_origin_failures.is_some()
        && od.split_external_local_origin_errors != Some(true)
    {
        cx.error_at(
            "consecutiveLocalOriginFailures",
            "needs splitExternalLocalOriginErrors: true",
        );
    }
}

fn client_tls(cx: &mut Ctx, tls: &ClientTlsSettings) {
    if let Some(mode @ (ClientTlsMode::Simple | ClientTlsMode::Mutual)) = tls.mode {
        let name = if mode == ClientTlsMode::Simple {
            "SIMPLE"
        } else {
            "MUTUAL"
        };
        cx.error_at(
            "mode",
            format!("mode {name} is not supported by Isthmus (supported: DISABLE, ISTIO_MUTUAL)"),
        );
    }
    if let Some(sni) = &tls.sni {
        cx.field("sni", |cx| cx.hostname(sni, false));
    }
    cx.each("subjectAltNames", &tls.subject_alt_names, |cx, san| {
        if san.is_empty() || san.contains(char::is_whitespace) {
            cx.error(format!(
                "subject alt name {san:?} must be a non-empty string without spaces"
            ));
        }
    });
}

pub(super) fn service_entry(cx: &mut Ctx, spec: &ServiceEntrySpec) {
    if spec.hosts.is_empty() {
        cx.error_at("hosts", "at least one host is required");
    }
    cx.each("hosts", &spec.hosts, |cx, h| cx.hostname(h, true));
    cx.each("addresses", &spec.addresses, |cx, a| cx.ip_or_cidr(a));
    let mut numbers = BTreeSet::new();
    let mut names = BTreeSet::new();
    cx.each("ports", &spec.ports, |cx, p| {
        cx.field("number", |cx| {
            cx.port(p.number);
            if !numbers.insert(p.number) {
                cx.error(format!("port {} is listed more than once", p.number));
            }
        });
        cx.field("name", |cx| {
            if p.name.is_empty() {
                cx.error("port name is required");
            } else if !names.insert(p.name.clone()) {
                cx.error(format!("port name {:?} is listed more than once", p.name));
            }
        });
        if let Some(proto) = &p.protocol {
            cx.field("protocol", |cx| protocol(cx, proto));
        }
        if let Some(t) = p.target_port {
            cx.field("targetPort", |cx| cx.port(t));
        }
    });
    let resolution = spec.resolution.unwrap_or(Resolution::None);
    if !spec.endpoints.is_empty() && spec.workload_selector.is_some() {
        cx.error_at(
            "workloadSelector",
            "endpoints and workloadSelector are mutually exclusive",
        );
    }
    if resolution == Resolution::None && !spec.endpoints.is_empty() {
        cx.error_at(
            "endpoints",
            "resolution NONE takes no endpoints (use STATIC or DNS)",
        );
    }
    let port_names: Vec<&str> = spec.ports.iter().map(|p| p.name.as_str()).collect();
    cx.each("endpoints", &spec.endpoints, |cx, e| {
        workload_entry(cx, e, Some(&port_names));
        if resolution == Resolution::Static
            && !e.address.is_empty()
            && e.address.parse::<IpAddr>().is_err()
            && !e.address.starts_with("unix://")
        {
            cx.error_at(
                "address",
                format!("resolution STATIC needs IP addresses, got {:?}", e.address),
            );
        }
    });
    if let Some(ws) = &spec.workload_selector {
        cx.field("workloadSelector", |cx| cx.labels("labels", &ws.labels));
    }
    cx.export_to(&spec.export_to);
}

pub(super) fn protocol(cx: &mut Ctx, proto: &str) {
    if !PROTOCOLS.iter().any(|p| p.eq_ignore_ascii_case(proto)) {
        cx.error(format!(
            "unknown protocol {proto:?} (known: {})",
            PROTOCOLS.join(", ")
        ));
    }
}

/// A WorkloadEntry, standalone or inside a ServiceEntry (then its ports name the entry's ports).
pub(super) fn workload_entry(cx: &mut Ctx, e: &WorkloadEntrySpec, port_names: Option<&[&str]>) {
    if !e.address.is_empty()
        && !e.address.starts_with("unix://")
        && e.address.parse::<IpAddr>().is_err()
    {
        cx.field("address", |cx| cx.hostname(&e.address, false));
    }
    if e.address.is_empty() && e.network.is_none() && port_names.is_none() {
        cx.error_at(
            "address",
            "address is required unless network names the workload's network",
        );
    }
    cx.field("ports", |cx| {
        for (name, port) in &e.ports {
            cx.field(name, |cx| {
                cx.port(*port);
                if let Some(known) = port_names
                    && !known.contains(&name.as_str())
                {
                    cx.error(format!("{name:?} is not a port name of this ServiceEntry"));
                }
            });
        }
    });
    cx.labels("labels", &e.labels);
    if let Some(l) = &e.locality {
        cx.field("locality", |cx| {
            if let Err(err) = l.parse::<Locality>() {
                cx.error(err.to_string());
            }
        });
    }
    if let Some(sa) = &e.service_account {
        cx.field("serviceAccount", |cx| {
            cx.check(
                naming::validate_dns1123_subdomain(sa),
                "invalid service account",
            )
        });
    }
}

pub(super) fn gateway(cx: &mut Ctx, spec: &GatewaySpec) {
    if spec.servers.is_empty() {
        cx.error_at("servers", "at least one server is required");
    }
    cx.labels("selector", &spec.selector);
    cx.each("servers", &spec.servers, |cx, s| {
        cx.field("port", |cx| {
            cx.field("number", |cx| cx.port(s.port.number));
            cx.field("protocol", |cx| protocol(cx, &s.port.protocol));
            if let Some(t) = s.port.target_port {
                cx.field("targetPort", |cx| cx.port(t));
            }
        });
        if s.hosts.is_empty() {
            cx.error_at("hosts", "at least one host is required");
        }
        cx.each("hosts", &s.hosts, |cx, h| {
            let (ns, host) = h.split_once('/').unwrap_or((".", h));
            if ns != "." && ns != "*" && ns != "~" {
                cx.check(naming::validate_dns1123_label(ns), "host namespace must be ., *, ~ or a namespace");
            }
            if host != "*" {
                cx.hostname(host, true);
            }
        });
        if let Some(bind) = &s.bind
            && bind.parse::<IpAddr>().is_err()
            && !bind.starts_with("unix://")
        {
            cx.error_at("bind", format!("bind {bind:?} must be an IP address or unix:// path"));
        }
        let proto = s.port.protocol.to_ascii_uppercase();
        if let Some(tls) = &s.tls {
            cx.field("tls", |cx| match tls.mode {
                Some(ServerTlsMode::AutoPassthrough) if proto != "TLS" => {
                    cx.error_at("mode", "AUTO_PASSTHROUGH needs port protocol TLS")
                }
                Some(ServerTlsMode::Passthrough) if proto != "TLS" && proto != "HTTPS" => {
                    cx.error_at("mode", "PASSTHROUGH needs port protocol TLS or HTTPS")
                }
                Some(ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual)
                    if tls.credential_name.is_none() =>
                {
                    cx.error_at("credentialName", "credentialName is required for this mode (certificate files are not supported)")
                }
                _ => {}
            });
        } else if proto == "HTTPS" || proto == "TLS" {
            cx.error_at("tls", format!("port protocol {proto} needs tls settings"));
        }
    });
}
