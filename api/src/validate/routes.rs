//! VirtualService: matches, weighted destinations, resilience and rewrites.

use super::{Ctx, subset_name};
use crate::networking::{
    Destination, GRPC_STATUS_NAMES, HttpFaultInjection, HttpMatchRequest, HttpRetry, HttpRoute,
    RouteDestination, VirtualServiceSpec,
};

/// Retry conditions Isthmus understands (Envoy's names, as Istio passes them through).
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

pub(super) fn virtual_service(cx: &mut Ctx, spec: &VirtualServiceSpec) {
    if spec.hosts.is_empty() {
        cx.error_at("hosts", "at least one host is required");
    }
    cx.each("hosts", &spec.hosts, |cx, h| {
        if h != "*" {
            cx.hostname(h, true);
        }
    });
    cx.each("gateways", &spec.gateways, gateway_ref);
    cx.export_to(&spec.export_to);
    if spec.http.is_empty() && spec.tls.is_empty() && spec.tcp.is_empty() {
        cx.error("at least one of http, tls or tcp routes is required");
    }
    cx.each("http", &spec.http, http_route);
    cx.each("tls", &spec.tls, |cx, r| {
        if r.r#match.is_empty() {
            cx.error_at(
                "match",
                "a TLS route needs at least one match with sniHosts",
            );
        }
        cx.each("match", &r.r#match, |cx, m| {
            if m.sni_hosts.is_empty() {
                cx.error_at("sniHosts", "at least one SNI host is required");
            }
            cx.each("sniHosts", &m.sni_hosts, |cx, h| {
                if h != "*" {
                    cx.hostname(h, true);
                }
            });
            l4_match(cx, &m.destination_subnets, m.port, &m.gateways);
            cx.labels("sourceLabels", &m.source_labels);
        });
        route_destinations(cx, &r.route);
    });
    cx.each("tcp", &spec.tcp, |cx, r| {
        cx.each("match", &r.r#match, |cx, m| {
            l4_match(cx, &m.destination_subnets, m.port, &m.gateways);
            cx.labels("sourceLabels", &m.source_labels);
        });
        route_destinations(cx, &r.route);
    });
}

fn gateway_ref(cx: &mut Ctx, g: &String) {
    let name = g.rsplit_once('/').map_or(g.as_str(), |(_, n)| n);
    if g != "mesh" && crate::naming::validate_dns1123_subdomain(name).is_err() {
        cx.error(format!("gateway {g:?} must be `mesh` or [namespace/]name"));
    }
}

fn l4_match(cx: &mut Ctx, subnets: &[String], port: Option<u32>, gateways: &[String]) {
    cx.each("destinationSubnets", subnets, |cx, s| cx.ip_or_cidr(s));
    if let Some(p) = port {
        cx.field("port", |cx| cx.port(p));
    }
    cx.each("gateways", gateways, gateway_ref);
}

fn http_route(cx: &mut Ctx, r: &HttpRoute) {
    cx.each("match", &r.r#match, http_match);
    match (r.route.is_empty(), &r.redirect) {
        (true, None) => cx.error("an http route needs a route or a redirect"),
        (false, Some(_)) => cx.error_at("redirect", "route and redirect are mutually exclusive"),
        _ => {}
    }
    if !r.route.is_empty() {
        let weights: Vec<Option<i32>> = r.route.iter().map(|d| d.weight).collect();
        cx.field("route", |cx| weights_sum(cx, &weights));
    }
    cx.each("route", &r.route, |cx, d| {
        cx.field("destination", |cx| destination(cx, &d.destination));
        if let Some(h) = &d.headers {
            cx.field("headers", |cx| header_ops(cx, h));
        }
    });
    if let Some(redirect) = &r.redirect {
        cx.field("redirect", |cx| {
            if let Some(code) = redirect.redirect_code
                && !(300..=399).contains(&code)
            {
                cx.error_at(
                    "redirectCode",
                    format!("redirect code {code} is not a 3xx status"),
                );
            }
            if let Some(p) = redirect.port {
                cx.field("port", |cx| cx.port(p));
                if redirect.derive_port.is_some() {
                    cx.error_at("derivePort", "port and derivePort are mutually exclusive");
                }
            }
            if let Some(s) = &redirect.scheme
                && s != "http"
                && s != "https"
            {
                cx.error_at("scheme", format!("scheme {s:?} must be http or https"));
            }
            if let Some(uri) = &redirect.uri
                && !uri.starts_with('/')
            {
                cx.error_at("uri", "redirect uri must start with /");
            }
        });
    }
    if let Some(rw) = &r.rewrite {
        cx.field("rewrite", |cx| {
            if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
                cx.error("uri and uriRegexRewrite are mutually exclusive");
            }
            if let Some(rr) = &rw.uri_regex_rewrite {
                cx.field("uriRegexRewrite.match", |cx| cx.regex(&rr.r#match));
            }
            if let Some(a) = &rw.authority {
                cx.field("authority", |cx| {
                    cx.hostname(a.split(':').next().unwrap_or(a), false)
                });
            }
        });
    }
    if let Some(retries) = &r.retries {
        cx.field("retries", |cx| retry(cx, retries));
    }
    if let Some(fault) = &r.fault {
        cx.field("fault", |cx| fault_injection(cx, fault));
    }
    if let Some(m) = &r.mirror {
        cx.field("mirror", |cx| destination(cx, m));
    }
    if let Some(p) = &r.mirror_percentage {
        cx.field("mirrorPercentage", |cx| {
            cx.percent(p);
            if r.mirror.is_none() {
                cx.error("mirrorPercentage needs a mirror destination");
            }
        });
    }
    if let Some(h) = &r.headers {
        cx.field("headers", |cx| header_ops(cx, h));
    }
}

fn http_match(cx: &mut Ctx, m: &HttpMatchRequest) {
    for (name, sm) in [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            cx.field(name, |cx| cx.string_match(sm));
        }
    }
    if let Some(uri) = &m.uri {
        for (name, v) in [("exact", &uri.exact), ("prefix", &uri.prefix)] {
            if let Some(v) = v
                && !v.starts_with('/')
            {
                cx.field("uri", |cx| {
                    cx.error_at(name, format!("path {v:?} must start with /"))
                });
            }
        }
    }
    for (field, map) in [
        ("headers", &m.headers),
        ("queryParams", &m.query_params),
        ("withoutHeaders", &m.without_headers),
    ] {
        cx.field(field, |cx| {
            for (k, sm) in map {
                cx.field(k, |cx| {
                    if field != "queryParams" && !is_header_name(k) {
                        cx.error(format!("{k:?} is not a valid header name"));
                    }
                    if sm.exact.is_some() || sm.prefix.is_some() || sm.regex.is_some() {
                        cx.string_match(sm);
                    }
                });
            }
        });
    }
    if let Some(p) = m.port {
        cx.field("port", |cx| cx.port(p));
    }
    cx.labels("sourceLabels", &m.source_labels);
    cx.each("gateways", &m.gateways, gateway_ref);
    if let Some(ns) = &m.source_namespace {
        cx.field("sourceNamespace", |cx| {
            cx.check(
                crate::naming::validate_dns1123_label(ns),
                "invalid namespace",
            )
        });
    }
}

/// HTTP header names: lowercase token characters (HTTP/2 requires lowercase).
fn is_header_name(k: &str) -> bool {
    !k.is_empty()
        && k.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || b"!#$%&'*+-.^_`|~".contains(&b)
                || (b == b':' && k.starts_with(':'))
        })
}

fn header_ops(cx: &mut Ctx, h: &crate::networking::Headers) {
    for (name, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        cx.field(name, |cx| {
            for (field, keys) in [
                ("set", ops.set.keys().collect::<Vec<_>>()),
                ("add", ops.add.keys().collect()),
                ("remove", ops.remove.iter().collect()),
            ] {
                cx.field(field, |cx| {
                    for k in keys {
                        let lower = k.to_ascii_lowercase();
                        if !is_header_name(&lower) || lower.starts_with(':') {
                            cx.error(format!("{k:?} is not a header name that can be changed"));
                        }
                    }
                });
            }
        });
    }
}

fn retry(cx: &mut Ctx, r: &HttpRetry) {
    if r.attempts < 0 {
        cx.error_at(
            "attempts",
            format!("attempts must be >= 0, got {}", r.attempts),
        );
    }
    if let Some(t) = r.per_try_timeout
        && t.get() < std::time::Duration::from_millis(1)
    {
        cx.error_at("perTryTimeout", "perTryTimeout must be at least 1ms");
    }
    if let Some(on) = &r.retry_on {
        cx.field("retryOn", |cx| {
            for cond in on.split(',').map(str::trim) {
                let status = cond.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
                if !status && !RETRY_ON.contains(&cond) {
                    cx.error(format!(
                        "unknown retry condition {cond:?} (known: {}, or an HTTP status code)",
                        RETRY_ON.join(", ")
                    ));
                }
            }
        });
    }
}

fn fault_injection(cx: &mut Ctx, f: &HttpFaultInjection) {
    if f.delay.is_none() && f.abort.is_none() {
        cx.error("fault needs a delay or an abort");
    }
    if let Some(d) = &f.delay {
        cx.field("delay", |cx| {
            if d.fixed_delay.is_none() {
                cx.error_at("fixedDelay", "fixedDelay is required");
            }
            if let Some(p) = &d.percentage {
                cx.field("percentage", |cx| cx.percent(p));
            }
        });
    }
    if let Some(a) = &f.abort {
        cx.field("abort", |cx| {
            match (a.http_status, &a.grpc_status) {
                (None, None) => cx.error("abort needs httpStatus or grpcStatus"),
                (Some(_), Some(_)) => cx.error("httpStatus and grpcStatus are mutually exclusive"),
                (Some(s), None) if !(200..=599).contains(&s) => {
                    cx.error_at("httpStatus", format!("httpStatus {s} is outside 200-599"))
                }
                (None, Some(g)) if !GRPC_STATUS_NAMES.contains(&g.as_str()) => cx.error_at(
                    "grpcStatus",
                    format!(
                        "unknown gRPC status {g:?} (known: {})",
                        GRPC_STATUS_NAMES.join(", ")
                    ),
                ),
                _ => {}
            }
            if let Some(p) = &a.percentage {
                cx.field("percentage", |cx| cx.percent(p));
            }
        });
    }
}

fn route_destinations(cx: &mut Ctx, routes: &[RouteDestination]) {
    if routes.is_empty() {
        cx.error_at("route", "at least one destination is required");
        return;
    }
    let weights: Vec<Option<i32>> = routes.iter().map(|d| d.weight).collect();
    cx.field("route", |cx| weights_sum(cx, &weights));
    cx.each("route", routes, |cx, d| {
        cx.field("destination", |cx| destination(cx, &d.destination))
    });
}

/// Weights of the destinations of one route: with several, they sum to 100.
fn weights_sum(cx: &mut Ctx, weights: &[Option<i32>]) {
    for (i, w) in weights.iter().enumerate() {
        if let Some(w) = *w
            && w < 0
        {
            cx.index(i, |cx| {
                cx.error_at("weight", format!("weight {w} must be >= 0"))
            });
        }
    }
    let sum: i64 = weights.iter().map(|w| i64::from(w.unwrap_or(0))).sum();
    match weights {
        [] => {}
        [single] => {
            if let Some(w) = *single
                && w != 0
                && w != 100
            {
                cx.error(format!(
                    "weights sum to {w}, expected 100 (a single destination takes all traffic)"
                ));
            }
        }
        _ => {
            if sum != 100 {
                cx.error(format!("weights sum to {sum}, expected 100"));
            }
        }
    }
}

fn destination(cx: &mut Ctx, d: &Destination) {
    if d.host.is_empty() {
        cx.error_at("host", "host is required");
    } else {
        cx.field("host", |cx| cx.hostname(&d.host, false));
    }
    if let Some(s) = &d.subset {
        cx.field("subset", |cx| subset_name(cx, s));
    }
    if let Some(p) = &d.port {
        cx.field("port.number", |cx| cx.port(p.number));
    }
}
