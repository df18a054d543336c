//! PeerAuthentication and AuthorizationPolicy.

use super::Ctx;
use crate::naming;
use crate::security::{
    Action, AuthorizationPolicySpec, Condition, Operation, PeerAuthenticationSpec, Source,
};

/// `when` keys Isthmus evaluates (`request.headers[<name>]` as well).
const CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

pub(super) fn peer_authentication(cx: &mut Ctx, spec: &PeerAuthenticationSpec) {
    if let Some(sel) = &spec.selector {
        cx.field("selector", |cx| cx.labels("matchLabels", &sel.match_labels));
    }
    if !spec.port_level_mtls.is_empty()
        && spec
            .selector
            .as_ref()
            .is_none_or(|s| s.match_labels.is_empty())
    {
        cx.error_at(
            "portLevelMtls",
            "portLevelMtls needs a selector with matchLabels",
        );
    }
    cx.field("portLevelMtls", |cx| {
        for port in spec.port_level_mtls.keys() {
            cx.field(port, |cx| match port.parse::<u32>() {
                Ok(p) => cx.port(p),
                Err(_) => cx.error(format!("{port:?} is not a port number")),
            });
        }
    });
}

pub(super) fn authorization_policy(cx: &mut Ctx, spec: &AuthorizationPolicySpec) {
    if let Some(sel) = &spec.selector {
        cx.field("selector", |cx| cx.labels("matchLabels", &sel.match_labels));
    }
    if let Some(action @ (Action::Audit | Action::Custom)) = spec.action {
        let name = if action == Action::Audit {
            "AUDIT"
        } else {
            "CUSTOM"
        };
        cx.error_at(
            "action",
            format!("action {name} is not supported by Isthmus (supported: ALLOW, DENY)"),
        );
    }
    cx.each("rules", &spec.rules, |cx, rule| {
        cx.each("from", &rule.from, |cx, f| {
            cx.field("source", |cx| source(cx, &f.source))
        });
        cx.each("to", &rule.to, |cx, t| {
            cx.field("operation", |cx| operation(cx, &t.operation))
        });
        cx.each("when", &rule.when, condition);
    });
}

fn source(cx: &mut Ctx, s: &Source) {
    for (name, list) in [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
    ] {
        cx.each(name, list, |cx, p| {
            if let Err(e) = naming::validate_principal_pattern(p) {
                cx.error(e.to_string());
            }
        });
    }
    for (name, list) in [
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
    ] {
        cx.each(name, list, |cx, ns| pattern(cx, ns, "namespace"));
    }
    for (name, list) in [
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
    ] {
        cx.each(name, list, |cx, ip| cx.ip_or_cidr(ip));
    }
}

fn operation(cx: &mut Ctx, o: &Operation) {
    for (name, list) in [("hosts", &o.hosts), ("notHosts", &o.not_hosts)] {
        cx.each(name, list, |cx, h| pattern(cx, h, "host"));
    }
    for (name, list) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
        cx.each(name, list, |cx, p| match p.parse::<u32>() {
            Ok(n) => cx.port(n),
            Err(_) => cx.error(format!("{p:?} is not a port number")),
        });
    }
    for (name, list) in [("methods", &o.methods), ("notMethods", &o.not_methods)] {
        cx.each(name, list, |cx, m| {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase() || b == b'*') {
                cx.error(format!("method {m:?} must be an uppercase HTTP method"));
            }
        });
    }
    for (name, list) in [("paths", &o.paths), ("notPaths", &o.not_paths)] {
        cx.each(name, list, |cx, p| {
            pattern(cx, p, "path");
            if !(p.starts_with('/') || p.starts_with('*')) {
                cx.error(format!("path {p:?} must start with / (or be a * pattern)"));
            }
        });
    }
}

/// Istio match strings: exact, `prefix*`, `*suffix` or `*`.
fn pattern(cx: &mut Ctx, s: &str, what: &str) {
    let inner = s.trim_start_matches('*').trim_end_matches('*');
    if s.is_empty() || inner.contains('*') || s.contains(char::is_whitespace) || s == "**" {
        cx.error(format!("{what} {s:?} must be exact, prefix*, *suffix or *"));
    }
}

fn condition(cx: &mut Ctx, c: &Condition) {
    let header = c
        .key
        .strip_prefix("request.headers[")
        .and_then(|r| r.strip_suffix(']'));
    if header.is_some_and(str::is_empty)
        || header.is_none() && !CONDITION_KEYS.contains(&c.key.as_str())
    {
        cx.error_at(
            "key",
            format!(
                "condition key {:?} is not supported (supported: {}, request.headers[<name>])",
                c.key,
                CONDITION_KEYS.join(", ")
            ),
        );
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        cx.error("a condition needs values or notValues");
    }
}
