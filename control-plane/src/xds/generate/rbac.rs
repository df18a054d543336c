//! Istio `AuthorizationPolicy` → Envoy v3 RBAC filters for a workload's inbound chains.
//!
//! Istio's model, which this module follows:
//!
//! - Policies are grouped by action. DENY is evaluated first, then ALLOW: a
//!   request is rejected if any DENY rule matches, and — when at least one
//!   ALLOW policy applies — accepted only if some ALLOW rule matches. Each
//!   group becomes one Envoy RBAC filter; with no policy at all no filter is
//!   emitted and everything is allowed.
//! - Every rule becomes one Envoy policy named `ns[<ns>]-policy[<name>]-rule[<i>]`.
//!   A policy without rules contributes no Envoy policy, so an ALLOW policy with
//!   `spec: {}` yields an ALLOW filter with no policies: it denies everything.
//! - Within a rule every present part must match: `from` entries are OR'ed and
//!   each source's fields AND'ed, likewise `to`/operation, and `when`
//!   conditions are AND'ed. A list matches if any of its values matches; the
//!   `not*` lists are negated (`not_id` / `not_rule`). An absent part matches
//!   anything, so the empty rule `{}` matches every request.
//! - Istio principals (`<td>/ns/<ns>/sa/<sa>`) are matched against the peer
//!   certificate's URI SAN `spiffe://<td>/ns/<ns>/sa/<sa>`; namespaces against
//!   the `/ns/<ns>/` segment of that SAN.
//!
//! On plain TCP chains the HTTP-only conditions (hosts, methods, paths,
//! `request.headers[...]`) cannot be evaluated. An ALLOW rule using any of them
//! is dropped whole (it can never match TCP traffic, so it grants nothing); in
//! a DENY rule only those conditions are dropped, which makes the rule match
//! more, i.e. deny more. This is Istio's behaviour; nothing is logged.
//!
//! Values that cannot be translated (a malformed IP or port, an unknown `when`
//! key) are rejected by validation before they get here. Should one slip
//! through, the conversion fails closed: the ALLOW rule holding it is dropped
//! (grants nothing) and the DENY rule holding it matches every request.
//!
//! The generated config is encoded with policies in name order (see
//! `OrderedRbac`), so the same input always yields the same bytes and the
//! xDS content hash only changes when the policies do.

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, permission, principal,
};
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    PathMatcher, RegexMatcher, StringMatcher, path_matcher,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use isthmus_api::security::{Action, AuthorizationPolicy, Condition, Operation, Rule, Source};
use prost::{Message, Name};

/// Name of the HTTP RBAC filter.
pub const HTTP_FILTER_NAME: &str = "envoy.filters.http.rbac";
/// Name of the network (TCP) RBAC filter.
pub const NETWORK_FILTER_NAME: &str = "envoy.filters.network.rbac";
/// `stat_prefix` of the network RBAC filter.
pub const TCP_STAT_PREFIX: &str = "tcp.";

const SPIFFE: &str = "spiffe://";

/// Policies applicable to one workload: those in the workload's namespace whose
/// selector matches its labels (or that have no selector), plus those in the
/// root namespace (mesh-wide) with no selector or a matching selector.
///
/// A selector matches when every one of its `matchLabels` is among `labels`; a
/// selector with no labels matches every workload. Policies with no namespace
/// apply nowhere. The input order is kept.
pub fn applicable<'a>(
    policies: impl Iterator<Item = &'a AuthorizationPolicy>,
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a AuthorizationPolicy> {
    policies
        .filter(|p| {
            p.metadata
                .namespace
                .as_deref()
                .is_some_and(|ns| ns == namespace || ns == root_namespace)
        })
        .filter(|p| {
            p.spec
                .selector
                .as_ref()
                .is_none_or(|s| s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
        })
        .collect()
}

/// HTTP RBAC filters for the inbound chain, in evaluation order: DENY first,
/// then ALLOW (Istio order). Empty when there is no policy (allow everything).
///
/// Each is an `HttpFilter` named [`HTTP_FILTER_NAME`] whose `typed_config` is an
/// `extensions.filters.http.rbac.v3.RBAC { rules: Some(RBAC { action, policies }) }`.
/// A filter is emitted for an action whenever a policy with that action applies,
/// even if it yields no Envoy policy (an ALLOW filter then denies everything).
pub fn http_filters(policies: &[&AuthorizationPolicy]) -> Vec<HttpFilter> {
    build(policies, Chain::Http)
        .into_iter()
        .map(|rules| HttpFilter {
            name: HTTP_FILTER_NAME.to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(Any {
                type_url: HttpRbac::type_url(),
                value: OrderedHttpRbac { rules: Some(rules) }.encode_to_vec(),
            })),
            ..HttpFilter::default()
        })
        .collect()
}

/// Network RBAC filters for a TCP inbound chain, in the same order as
/// [`http_filters`], named [`NETWORK_FILTER_NAME`] with `stat_prefix`
/// [`TCP_STAT_PREFIX`].
///
/// HTTP-only conditions cannot be evaluated on TCP: an ALLOW rule using one is
/// dropped whole, a DENY rule just loses those conditions (see the module docs).
pub fn network_filters(policies: &[&AuthorizationPolicy]) -> Vec<Filter> {
    build(policies, Chain::Tcp)
        .into_iter()
        .map(|rules| Filter {
            name: NETWORK_FILTER_NAME.to_owned(),
            config_type: Some(filter::ConfigType::TypedConfig(Any {
                type_url: NetworkRbac::type_url(),
                value: OrderedNetworkRbac {
                    rules: Some(rules),
                    stat_prefix: TCP_STAT_PREFIX.to_owned(),
                }
                .encode_to_vec(),
            })),
        })
        .collect()
}

/// The Envoy policy name of rule `index` of a policy.
fn policy_name(namespace: &str, name: &str, index: usize) -> String {
    format!("ns[{namespace}]-policy[{name}]-rule[{index}]")
}

// ---------------------------------------------------------------------------
// Deterministic encoding.
//
// `config.rbac.v3.RBAC.policies` is a protobuf map, generated as a `HashMap`
// whose iteration (hence encoding) order changes from one instance to the
// next. On the wire a map field is exactly a repeated entry message with the
// key as field 1 and the value as field 2, so these stand-ins encode the same
// messages, with the entries in name order. Envoy (and prost) decode them as
// the real types; the tests check that.

/// Wire-compatible stand-in for `envoy.config.rbac.v3.RBAC`.
#[derive(Clone, PartialEq, Message)]
struct OrderedRbac {
    /// `RBAC.action` (an enum: encoded as an int32 varint).
    #[prost(int32, tag = "1")]
    action: i32,
    /// `RBAC.policies` entries, in name order.
    #[prost(message, repeated, tag = "2")]
    policies: Vec<PolicyEntry>,
}

/// One entry of the `RBAC.policies` map.
#[derive(Clone, PartialEq, Message)]
struct PolicyEntry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(message, optional, tag = "2")]
    value: Option<Policy>,
}

/// Wire-compatible stand-in for `envoy.extensions.filters.http.rbac.v3.RBAC`.
#[derive(Clone, PartialEq, Message)]
struct OrderedHttpRbac {
    #[prost(message, optional, tag = "1")]
    rules: Option<OrderedRbac>,
}

/// Wire-compatible stand-in for `envoy.extensions.filters.network.rbac.v3.RBAC`.
#[derive(Clone, PartialEq, Message)]
struct OrderedNetworkRbac {
    #[prost(message, optional, tag = "1")]
    rules: Option<OrderedRbac>,
    #[prost(string, tag = "3")]
    stat_prefix: String,
}

impl OrderedRbac {
    fn new(action: RbacAction, policies: BTreeMap<String, Policy>) -> Self {
        OrderedRbac {
            action: action as i32,
            policies: policies
                .into_iter()
                .map(|(key, value)| PolicyEntry {
                    key,
                    value: Some(value),
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------
// Policies and rules.

/// The kind of inbound chain the filters are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chain {
    Http,
    Tcp,
}

/// A value that cannot be translated (validation should have rejected it).
#[derive(Clone, Copy, Debug)]
struct Invalid;

/// One RBAC config per action present, DENY first.
fn build(policies: &[&AuthorizationPolicy], chain: Chain) -> Vec<OrderedRbac> {
    let mut out = Vec::new();
    // AUDIT and CUSTOM are rejected by validation; were one to get here it is
    // ignored (AUDIT never affects the decision).
    for (action, rbac_action) in [
        (Action::Deny, RbacAction::Deny),
        (Action::Allow, RbacAction::Allow),
    ] {
        let mut present = false;
        let mut rules = BTreeMap::new();
        for p in policies
            .iter()
            .filter(|p| p.spec.action.unwrap_or(Action::Allow) == action)
        {
            present = true;
            let ns = p.metadata.namespace.as_deref().unwrap_or_default();
            let name = p.metadata.name.as_deref().unwrap_or_default();
            for (i, rule) in p.spec.rules.iter().enumerate() {
                if let Some(policy) = rule_policy(rule, action, chain) {
                    rules.insert(policy_name(ns, name, i), policy);
                }
            }
        }
        if present {
            out.push(OrderedRbac::new(rbac_action, rules));
        }
    }
    out
}

/// The Envoy policy for one rule, or `None` if the rule can never match.
fn rule_policy(rule: &Rule, action: Action, chain: Chain) -> Option<Policy> {
    let tcp = chain == Chain::Tcp;
    if tcp && action == Action::Allow && uses_http_only(rule) {
        return None;
    }
    match translate(rule, tcp) {
        Ok(policy) => Some(policy),
        // Fail closed: a broken DENY rule denies everything, a broken ALLOW rule grants nothing.
        Err(Invalid) if action == Action::Deny => Some(Policy {
            permissions: vec![Permission::any()],
            principals: vec![Principal::any()],
            ..Policy::default()
        }),
        Err(Invalid) => None,
    }
}

/// Whether a rule uses a condition that only exists for HTTP requests.
fn uses_http_only(rule: &Rule) -> bool {
    rule.to.iter().any(|t| {
        let o = &t.operation;
        [
            &o.hosts,
            &o.not_hosts,
            &o.methods,
            &o.not_methods,
            &o.paths,
            &o.not_paths,
        ]
        .iter()
        .any(|l| !l.is_empty())
    }) || rule.when.iter().any(|c| header_name(&c.key).is_some())
}

/// Translates a rule; with `tcp`, HTTP-only conditions are left out.
fn translate(rule: &Rule, tcp: bool) -> Result<Policy, Invalid> {
    let mut permissions = Vec::new();
    let mut principals = Vec::new();
    if !rule.to.is_empty() {
        let ops = rule
            .to
            .iter()
            .map(|t| operation(&t.operation, tcp))
            .collect::<Result<_, _>>()?;
        permissions.push(any_of(ops));
    }
    if !rule.from.is_empty() {
        let sources = rule
            .from
            .iter()
            .map(|f| source(&f.source))
            .collect::<Result<_, _>>()?;
        principals.push(any_of(sources));
    }
    for c in &rule.when {
        condition(c, tcp, &mut permissions, &mut principals)?;
    }
    Ok(Policy {
        permissions: vec![all_of(permissions)],
        principals: vec![all_of(principals)],
        ..Policy::default()
    })
}

/// An operation: all present fields must match.
fn operation(o: &Operation, tcp: bool) -> Result<Permission, Invalid> {
    let mut parts = Vec::new();
    if !tcp {
        push_field(&mut parts, &o.hosts, &o.not_hosts, |v| {
            Ok(perm_header(header(":authority", v, true)))
        })?;
        push_field(&mut parts, &o.methods, &o.not_methods, |v| {
            Ok(perm_header(header(":method", v, false)))
        })?;
        push_field(&mut parts, &o.paths, &o.not_paths, |v| {
            Ok(perm(permission::Rule::UrlPath(PathMatcher {
                rule: Some(path_matcher::Rule::Path(string_matcher(v, false))),
            })))
        })?;
    }
    push_field(&mut parts, &o.ports, &o.not_ports, destination_port)?;
    Ok(all_of(parts))
}

/// A source: all present fields must match.
fn source(s: &Source) -> Result<Principal, Invalid> {
    let mut parts = Vec::new();
    push_field(&mut parts, &s.principals, &s.not_principals, |v| {
        Ok(peer_principal(v))
    })?;
    push_field(&mut parts, &s.namespaces, &s.not_namespaces, |v| {
        Ok(peer_namespace(v))
    })?;
    push_field(&mut parts, &s.ip_blocks, &s.not_ip_blocks, source_ip)?;
    Ok(all_of(parts))
}

/// A `when` condition, added to the permissions or the principals it constrains.
fn condition(
    c: &Condition,
    tcp: bool,
    permissions: &mut Vec<Permission>,
    principals: &mut Vec<Principal>,
) -> Result<(), Invalid> {
    let (values, not_values) = (&c.values, &c.not_values);
    match c.key.as_str() {
        "source.ip" => push_field(principals, values, not_values, source_ip),
        "source.namespace" => push_field(principals, values, not_values, |v| Ok(peer_namespace(v))),
        "source.principal" => push_field(principals, values, not_values, |v| Ok(peer_principal(v))),
        "destination.ip" => push_field(permissions, values, not_values, |v| {
            Ok(perm(permission::Rule::DestinationIp(cidr(v)?)))
        }),
        "destination.port" => push_field(permissions, values, not_values, destination_port),
        "connection.sni" => push_field(permissions, values, not_values, |v| {
            Ok(perm(permission::Rule::RequestedServerName(string_matcher(
                v, false,
            ))))
        }),
        key => match header_name(key) {
            // HTTP-only: on TCP only DENY rules get here, and they drop it.
            Some(_) if tcp => Ok(()),
            Some(name) => push_field(principals, values, not_values, |v| {
                Ok(id(principal::Identifier::Header(header(
                    &name.to_ascii_lowercase(),
                    v,
                    false,
                ))))
            }),
            None => Err(Invalid),
        },
    }
}

/// `<name>` of a `request.headers[<name>]` key.
fn header_name(key: &str) -> Option<&str> {
    key.strip_prefix("request.headers[")
        .and_then(|r| r.strip_suffix(']'))
        .filter(|n| !n.is_empty())
}

/// Adds "any of `values`" and "none of `not_values`" (each when non-empty) to `parts`.
fn push_field<M: Matcher>(
    parts: &mut Vec<M>,
    values: &[String],
    not_values: &[String],
    one: impl Fn(&str) -> Result<M, Invalid>,
) -> Result<(), Invalid> {
    if !values.is_empty() {
        let ms = values.iter().map(|v| one(v)).collect::<Result<_, _>>()?;
        parts.push(any_of(ms));
    }
    if !not_values.is_empty() {
        let ms = not_values
            .iter()
            .map(|v| one(v))
            .collect::<Result<_, _>>()?;
        parts.push(any_of(ms).not());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Leaf matchers.

/// An Istio match string: exact, `prefix*`, `*suffix`, `*infix*` or `*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pattern<'a> {
    Any,
    Exact(&'a str),
    Prefix(&'a str),
    Suffix(&'a str),
    Contains(&'a str),
}

fn pattern(v: &str) -> Pattern<'_> {
    match (v.strip_prefix('*'), v.strip_suffix('*')) {
        (Some(_), Some(_)) => match v
            .strip_prefix('*')
            .and_then(|s| s.strip_suffix('*'))
            .filter(|s| !s.is_empty())
        {
            Some(inner) => Pattern::Contains(inner),
            // `*` or `**`.
            None => Pattern::Any,
        },
        (Some(suffix), None) => Pattern::Suffix(suffix),
        (None, Some(prefix)) => Pattern::Prefix(prefix),
        (None, None) => Pattern::Exact(v),
    }
}

/// A string matcher for an Istio match string; `*` requires a non-empty value.
fn string_matcher(v: &str, ignore_case: bool) -> StringMatcher {
    let p = match pattern(v) {
        Pattern::Any => MatchPattern::SafeRegex(regex(".+")),
        Pattern::Exact(s) => MatchPattern::Exact(s.to_owned()),
        Pattern::Prefix(s) => MatchPattern::Prefix(s.to_owned()),
        Pattern::Suffix(s) => MatchPattern::Suffix(s.to_owned()),
        Pattern::Contains(s) => MatchPattern::Contains(s.to_owned()),
    };
    StringMatcher {
        ignore_case,
        match_pattern: Some(p),
    }
}

/// A header matcher for an Istio match string; `*` means the header is present.
fn header(name: &str, v: &str, ignore_case: bool) -> HeaderMatcher {
    let spec = match pattern(v) {
        Pattern::Any => HeaderMatchSpecifier::PresentMatch(true),
        _ => HeaderMatchSpecifier::StringMatch(string_matcher(v, ignore_case)),
    };
    HeaderMatcher {
        name: name.to_owned(),
        header_match_specifier: Some(spec),
        ..HeaderMatcher::default()
    }
}

fn regex(re: impl Into<String>) -> RegexMatcher {
    RegexMatcher {
        regex: re.into(),
        ..RegexMatcher::default()
    }
}

/// The peer's identity: an Istio principal (`<td>/ns/<ns>/sa/<sa>`, with or
/// without `spiffe://`) against the certificate's URI SAN. `*` is any
/// authenticated (SPIFFE) peer; `prefix*` and `*suffix` match on the SAN.
fn peer_principal(v: &str) -> Principal {
    let with_scheme = |s: &str| {
        if s.starts_with(SPIFFE) {
            s.to_owned()
        } else {
            format!("{SPIFFE}{s}")
        }
    };
    let p = match pattern(v) {
        Pattern::Any => MatchPattern::Prefix(SPIFFE.to_owned()),
        Pattern::Exact(s) => MatchPattern::Exact(with_scheme(s)),
        Pattern::Prefix(s) => MatchPattern::Prefix(with_scheme(s)),
        Pattern::Suffix(s) => MatchPattern::Suffix(s.to_owned()),
        Pattern::Contains(s) => MatchPattern::Contains(s.to_owned()),
    };
    authenticated(StringMatcher {
        match_pattern: Some(p),
        ..StringMatcher::default()
    })
}

/// The peer's namespace, from the `/ns/<ns>/` segment of its SPIFFE ID; `*` in
/// the pattern matches any run of characters other than `/`.
fn peer_namespace(v: &str) -> Principal {
    authenticated(StringMatcher {
        match_pattern: Some(MatchPattern::SafeRegex(regex(namespace_regex(v)))),
        ..StringMatcher::default()
    })
}

/// `^spiffe://[^/]+/ns/<ns>/sa/[^/]+$` with `<ns>` escaped and `*` → `[^/]*`.
fn namespace_regex(ns: &str) -> String {
    let mut re = String::from("^spiffe://[^/]+/ns/");
    for (i, part) in ns.split('*').enumerate() {
        if i > 0 {
            re.push_str("[^/]*");
        }
        for c in part.chars() {
            if "\\.+*?()|[]{}^$".contains(c) {
                re.push('\\');
            }
            re.push(c);
        }
    }
    re.push_str("/sa/[^/]+$");
    re
}

fn authenticated(name: StringMatcher) -> Principal {
    id(principal::Identifier::Authenticated(
        principal::Authenticated {
            principal_name: Some(name),
        },
    ))
}

/// The downstream connection's address (not `X-Forwarded-For`).
fn source_ip(v: &str) -> Result<Principal, Invalid> {
    Ok(id(principal::Identifier::DirectRemoteIp(cidr(v)?)))
}

fn destination_port(v: &str) -> Result<Permission, Invalid> {
    match v.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(perm(permission::Rule::DestinationPort(u32::from(p)))),
        _ => Err(Invalid),
    }
}

/// An IP (as a /32 or /128) or a CIDR block.
fn cidr(v: &str) -> Result<CidrRange, Invalid> {
    let (addr, len) = match v.trim().split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (v.trim(), None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| Invalid)?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.parse::<u32>().ok().filter(|l| *l <= max).ok_or(Invalid)?,
        None => max,
    };
    Ok(CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(UInt32Value { value: len }),
    })
}

// ---------------------------------------------------------------------------
// Boolean structure shared by permissions and principals.

/// The and/or/not/any structure common to RBAC permissions and principals.
trait Matcher: Sized {
    fn any() -> Self;
    fn and(all: Vec<Self>) -> Self;
    fn or(any: Vec<Self>) -> Self;
    fn not(self) -> Self;
}

fn perm(rule: permission::Rule) -> Permission {
    Permission { rule: Some(rule) }
}

fn perm_header(h: HeaderMatcher) -> Permission {
    perm(permission::Rule::Header(h))
}

fn id(id: principal::Identifier) -> Principal {
    Principal {
        identifier: Some(id),
    }
}

impl Matcher for Permission {
    fn any() -> Self {
        perm(permission::Rule::Any(true))
    }
    fn and(rules: Vec<Self>) -> Self {
        perm(permission::Rule::AndRules(permission::Set { rules }))
    }
    fn or(rules: Vec<Self>) -> Self {
        perm(permission::Rule::OrRules(permission::Set { rules }))
    }
    fn not(self) -> Self {
        perm(permission::Rule::NotRule(Box::new(self)))
    }
}

impl Matcher for Principal {
    fn any() -> Self {
        id(principal::Identifier::Any(true))
    }
    fn and(ids: Vec<Self>) -> Self {
        id(principal::Identifier::AndIds(principal::Set { ids }))
    }
    fn or(ids: Vec<Self>) -> Self {
        id(principal::Identifier::OrIds(principal::Set { ids }))
    }
    fn not(self) -> Self {
        id(principal::Identifier::NotId(Box::new(self)))
    }
}

/// Matches when every part does (no part: always; one part: that part).
fn all_of<M: Matcher>(mut parts: Vec<M>) -> M {
    if parts.len() > 1 {
        return M::and(parts);
    }
    parts.pop().unwrap_or_else(M::any)
}

/// Matches when some part does (no part: never; one part: that part).
fn any_of<M: Matcher>(mut parts: Vec<M>) -> M {
    if parts.len() > 1 {
        return M::or(parts);
    }
    parts.pop().unwrap_or_else(|| M::any().not())
}

#[cfg(test)]
mod tests;
