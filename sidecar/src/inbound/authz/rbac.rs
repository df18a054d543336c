//! Envoy RBAC filter configs compiled into matchers, and their evaluation.
//!
//! Every matcher is compiled once, when the listener config arrives; `check`
//! only walks the compiled tree. A config that cannot be evaluated exactly is
//! rejected with the path of the offending field, never approximated: an
//! unknown or unsupported matcher (metadata, CEL, extensions, `remote_ip`, an
//! unset oneof, which is also what a field unknown to this build decodes to)
//! would otherwise have to be guessed as matching or not, and either guess
//! opens a hole in a DENY or an ALLOW policy.
//!
//! Semantics follow Envoy's RBAC filters, with these deliberate differences:
//!
//! - `authenticated.principal_name` is matched against the peer's SPIFFE URI
//!   SAN only (Envoy falls back to DNS SANs and the subject), and a connection
//!   without a verified client certificate is not authenticated;
//! - request and policy addresses are compared in canonical form, so an IPv4
//!   peer seen as `::ffff:a.b.c.d` on a dual-stack socket still matches IPv4
//!   blocks (in Envoy it silently would not, opening DENY `ipBlocks`);
//! - the `:authority` pseudo-header (alias `host`) is the normalized host, and
//!   matches when the host matches with or without the client's port; the
//!   `:path` pseudo-header is the normalized path plus the query;
//! - a header matcher without a match specifier is rejected (Envoy reads it as
//!   `present_match`, but it cannot be told apart from a specifier this build
//!   does not know);
//! - `action: LOG`, shadow rules and audit options never change a decision and
//!   are not evaluated.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac, permission, principal,
};
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier as Spec;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    PathMatcher, RegexMatcher, StringMatcher, path_matcher,
};
use envoy_types::pb::google::protobuf::Any;
use http::HeaderName;
use prost::{Message, Name};
use regex::bytes::Regex;

use super::{
    Decision, HttpAttributes, MISSING_HTTP_ATTRIBUTES, NO_MATCHING_POLICY, RequestAttributes,
};

/// The compiled RBAC filters of one inbound chain, in chain order.
///
/// The default authorizer has no filter and allows everything.
#[derive(Debug, Default)]
pub struct Authorizer {
    filters: Vec<Filter>,
    http: bool,
}

/// A config the authorizer cannot evaluate; `at` is the path of the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `Any` does not hold the expected RBAC message.
    #[error("{at}: type_url {type_url:?} is not {expected}")]
    TypeUrl {
        /// Where.
        at: String,
        /// The `Any`'s type URL.
        type_url: String,
        /// The expected message name.
        expected: String,
    },
    /// The bytes do not decode as the expected message.
    #[error("{at}: cannot decode {expected}: {source}")]
    Decode {
        /// Where.
        at: String,
        /// The expected message name.
        expected: String,
        /// The protobuf error.
        #[source]
        source: prost::DecodeError,
    },
    /// A matcher kind or option this authorizer does not evaluate.
    #[error("{at}: {what} is not supported by the Isthmus authorizer")]
    Unsupported {
        /// Where.
        at: String,
        /// What was found.
        what: String,
    },
    /// A value Envoy would reject too.
    #[error("{at}: {reason}")]
    Invalid {
        /// Where.
        at: String,
        /// What is wrong.
        reason: String,
    },
    /// A `safe_regex` that does not compile.
    #[error("{at}: invalid regex {regex:?}: {source}")]
    Regex {
        /// Where.
        at: String,
        /// The regex as configured.
        regex: String,
        /// The regex error.
        #[source]
        source: regex::Error,
    },
}

impl Authorizer {
    /// Compiles the `typed_config`s of the HTTP RBAC filters
    /// (`envoy.extensions.filters.http.rbac.v3.RBAC`), in HCM order.
    pub fn from_http_filters(configs: &[Any]) -> Result<Self, ConfigError> {
        Self::compile::<HttpRbac>(configs)
    }

    /// Compiles the `typed_config`s of the network RBAC filters
    /// (`envoy.extensions.filters.network.rbac.v3.RBAC`), in chain order.
    /// HTTP-only matchers (headers, paths) are rejected.
    pub fn from_network_filters(configs: &[Any]) -> Result<Self, ConfigError> {
        Self::compile::<NetworkRbac>(configs)
    }

    fn compile<C: FilterConfig>(configs: &[Any]) -> Result<Self, ConfigError> {
        let mut filters = Vec::new();
        for (i, any) in configs.iter().enumerate() {
            let cx = Cx::root(i, C::HTTP);
            let (rules, has_matcher) = decode::<C>(any, &cx)?.into_parts();
            if has_matcher {
                return Err(cx.field("matcher").unsupported("the RBAC matcher API"));
            }
            filters.extend(Filter::compile(rules.as_ref(), &cx.field("rules"))?);
        }
        Ok(Authorizer {
            filters,
            http: C::HTTP,
        })
    }

    /// Decides one request: the first DENY filter with a matching policy or
    /// the first ALLOW filter without one denies; otherwise it is allowed.
    ///
    /// An HTTP authorizer asked about a request without HTTP attributes
    /// denies it (it cannot evaluate its HTTP conditions).
    pub fn check(&self, req: &RequestAttributes<'_>) -> Decision {
        if self.http && req.http.is_none() && !self.filters.is_empty() {
            return deny(MISSING_HTTP_ATTRIBUTES);
        }
        for filter in &self.filters {
            let matched = filter.policies.iter().find(|(_, p)| p.matches(req));
            match (filter.deny, matched) {
                (true, Some((name, _))) => return deny(name),
                (false, None) => return deny(NO_MATCHING_POLICY),
                _ => {}
            }
        }
        Decision::Allow
    }
}

fn deny(policy: &str) -> Decision {
    Decision::Deny {
        policy: policy.to_owned(),
    }
}

/// What the authorizer reads from an HTTP or a network RBAC filter config.
/// Shadow rules, stat prefixes and enforcement options never change a
/// decision and are not read.
trait FilterConfig: Message + Name + Default {
    /// Whether the filter sits in an HTTP connection manager.
    const HTTP: bool;
    /// The enforced rules, and whether the (unsupported) matcher API is set.
    fn into_parts(self) -> (Option<Rbac>, bool);
}

impl FilterConfig for HttpRbac {
    const HTTP: bool = true;
    fn into_parts(self) -> (Option<Rbac>, bool) {
        (self.rules, self.matcher.is_some())
    }
}

impl FilterConfig for NetworkRbac {
    const HTTP: bool = false;
    fn into_parts(self) -> (Option<Rbac>, bool) {
        (self.rules, self.matcher.is_some())
    }
}

/// Decodes an `Any` holding a `T`.
fn decode<T: Message + Name + Default>(any: &Any, cx: &Cx) -> Result<T, ConfigError> {
    let expected = T::full_name();
    if any.type_url.rsplit_once('/').map(|(_, name)| name) != Some(expected.as_str()) {
        return Err(ConfigError::TypeUrl {
            at: cx.at.clone(),
            type_url: any.type_url.clone(),
            expected,
        });
    }
    T::decode(any.value.as_slice()).map_err(|source| ConfigError::Decode {
        at: cx.at.clone(),
        expected,
        source,
    })
}

// ---------------------------------------------------------------------------
// Compiled form.

/// One enforcing filter; policies in name order (as Envoy reports them).
#[derive(Debug)]
struct Filter {
    deny: bool,
    policies: Vec<(String, CompiledPolicy)>,
}

/// A policy matches when one of its permissions and one of its principals do.
#[derive(Debug)]
struct CompiledPolicy {
    permissions: Matcher,
    principals: Matcher,
}

impl CompiledPolicy {
    fn matches(&self, req: &RequestAttributes<'_>) -> bool {
        self.permissions.matches(req) && self.principals.matches(req)
    }
}

/// Permissions and principals share one tree: the compiler only builds the
/// leaves each side allows.
#[derive(Debug)]
enum Matcher {
    Any,
    All(Vec<Matcher>),
    AnyOf(Vec<Matcher>),
    Not(Box<Matcher>),
    Header(HeaderMatch),
    UrlPath(StrMatch),
    DestinationIp(Cidr),
    DestinationPort(u16),
    /// `[start, end)`.
    DestinationPorts(i32, i32),
    Sni(StrMatch),
    /// The peer's SPIFFE ID; `None` matches any authenticated peer.
    Authenticated(Option<StrMatch>),
    SourceIp(Cidr),
}

impl Matcher {
    fn matches(&self, req: &RequestAttributes<'_>) -> bool {
        match self {
            Matcher::Any => true,
            Matcher::All(ms) => ms.iter().all(|m| m.matches(req)),
            Matcher::AnyOf(ms) => ms.iter().any(|m| m.matches(req)),
            Matcher::Not(m) => !m.matches(req),
            Matcher::Header(h) => h.matches(req.http.as_ref()),
            Matcher::UrlPath(s) => req
                .http
                .is_some_and(|h| s.matches(h.path.path().as_bytes())),
            Matcher::DestinationIp(c) => c.contains(req.destination_ip),
            Matcher::DestinationPort(p) => req.destination_port == *p,
            Matcher::DestinationPorts(start, end) => {
                (*start..*end).contains(&i32::from(req.destination_port))
            }
            Matcher::Sni(s) => s.matches(req.sni.unwrap_or_default().as_bytes()),
            Matcher::Authenticated(name) => match (req.peer_principal, name) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(p), Some(m)) => m.matches(p.as_bytes()),
            },
            Matcher::SourceIp(c) => c.contains(req.source_ip),
        }
    }
}

/// A `StringMatcher`. `ignore_case` is ASCII-only and, as in Envoy, does not
/// apply to regexes (which must match the whole value).
#[derive(Debug)]
enum StrMatch {
    Exact(Box<[u8]>, bool),
    Prefix(Box<[u8]>, bool),
    Suffix(Box<[u8]>, bool),
    Contains(Box<[u8]>, bool),
    Regex(Regex),
}

impl StrMatch {
    fn matches(&self, v: &[u8]) -> bool {
        fn eq(a: &[u8], b: &[u8], ignore_case: bool) -> bool {
            if ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        }
        match self {
            StrMatch::Exact(s, ic) => eq(v, s, *ic),
            StrMatch::Prefix(s, ic) => v.get(..s.len()).is_some_and(|h| eq(h, s, *ic)),
            StrMatch::Suffix(s, ic) => v
                .len()
                .checked_sub(s.len())
                .and_then(|start| v.get(start..))
                .is_some_and(|t| eq(t, s, *ic)),
            StrMatch::Contains(s, ic) => s.is_empty() || v.windows(s.len()).any(|w| eq(w, s, *ic)),
            StrMatch::Regex(re) => re.is_match(v),
        }
    }
}

/// A `HeaderMatcher`.
#[derive(Debug)]
struct HeaderMatch {
    source: HeaderSource,
    spec: HeaderSpec,
    invert: bool,
    missing_as_empty: bool,
}

#[derive(Debug)]
enum HeaderSource {
    Authority,
    Method,
    Path,
    Named(HeaderName),
}

#[derive(Debug)]
enum HeaderSpec {
    Str(StrMatch),
    /// `[start, end)` on the value parsed as an integer.
    Range(i64, i64),
    Present(bool),
}

impl HeaderMatch {
    /// Envoy's rules: a missing header matches only `present_match: false`
    /// (or `true` when inverted), unless it is treated as empty.
    fn matches(&self, http: Option<&HttpAttributes<'_>>) -> bool {
        if let (HeaderSource::Authority, Some(h)) = (&self.source, http) {
            // The host matches with or without the port the client wrote.
            let host = h.host.as_str();
            let with_port = h.host.port().map(|p| format!("{host}:{p}"));
            let matched = self.spec.matches(host.as_bytes())
                || with_port.is_some_and(|v| self.spec.matches(v.as_bytes()));
            return matched != self.invert;
        }
        let value = match http.and_then(|h| self.source.value(h)) {
            Some(v) => v,
            None if self.missing_as_empty => Cow::Borrowed(&[][..]),
            None => return matches!(self.spec, HeaderSpec::Present(p) if p == self.invert),
        };
        self.spec.matches(&value) != self.invert
    }
}

impl HeaderSpec {
    /// The match on a present value, before `invert_match`.
    fn matches(&self, value: &[u8]) -> bool {
        match self {
            HeaderSpec::Str(s) => s.matches(value),
            HeaderSpec::Range(start, end) => std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .is_some_and(|n| (*start..*end).contains(&n)),
            HeaderSpec::Present(p) => *p,
        }
    }
}

impl HeaderSource {
    fn value<'a>(&self, h: &HttpAttributes<'a>) -> Option<Cow<'a, [u8]>> {
        Some(match self {
            HeaderSource::Authority => Cow::Borrowed(h.host.as_str().as_bytes()),
            HeaderSource::Method => Cow::Borrowed(h.method.as_str().as_bytes()),
            HeaderSource::Path => match h.path.query() {
                None => Cow::Borrowed(h.path.path().as_bytes()),
                Some(_) => Cow::Owned(h.path.request_target().into_bytes()),
            },
            HeaderSource::Named(name) => {
                let mut values = h.headers.get_all(name).iter();
                let first = values.next()?;
                let mut rest = values.peekable();
                if rest.peek().is_none() {
                    return Some(Cow::Borrowed(first.as_bytes()));
                }
                let mut joined = first.as_bytes().to_vec();
                for v in rest {
                    joined.push(b',');
                    joined.extend_from_slice(v.as_bytes());
                }
                Cow::Owned(joined)
            }
        })
    }
}

/// An address block, stored masked and in canonical form.
#[derive(Clone, Copy, Debug)]
struct Cidr {
    net: IpAddr,
    len: u32,
}

impl Cidr {
    fn new(addr: IpAddr, len: u32) -> Self {
        let (addr, len) = match addr {
            IpAddr::V6(v6) if len >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), len - 96),
                None => (addr, len),
            },
            _ => (addr, len),
        };
        Cidr {
            net: mask(addr, len),
            len,
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        mask(ip.to_canonical(), self.len) == self.net
    }
}

fn mask(ip: IpAddr, len: u32) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32u32.saturating_sub(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from_bits(a.to_bits() & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX
                .checked_shl(128u32.saturating_sub(len))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from_bits(a.to_bits() & m))
        }
    }
}

// ---------------------------------------------------------------------------
// Compilation.

/// Where the compiler is in the config, and for which kind of chain.
struct Cx {
    at: String,
    http: bool,
}

impl Cx {
    fn root(filter: usize, http: bool) -> Self {
        Cx {
            at: format!("filters[{filter}]"),
            http,
        }
    }
    fn field(&self, name: &str) -> Cx {
        self.with(format!("{}.{name}", self.at))
    }
    fn index(&self, i: usize) -> Cx {
        self.with(format!("{}[{i}]", self.at))
    }
    fn key(&self, key: &str) -> Cx {
        self.with(format!("{}[{key:?}]", self.at))
    }
    fn with(&self, at: String) -> Cx {
        Cx {
            at,
            http: self.http,
        }
    }
    fn unsupported(&self, what: impl Into<String>) -> ConfigError {
        ConfigError::Unsupported {
            at: self.at.clone(),
            what: what.into(),
        }
    }
    fn invalid(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            at: self.at.clone(),
            reason: reason.into(),
        }
    }
    /// Header and path matchers need an HTTP request.
    fn http_only(&self, what: &str) -> Result<(), ConfigError> {
        if self.http {
            Ok(())
        } else {
            Err(self.unsupported(format!("{what} (HTTP only) in a network RBAC filter")))
        }
    }
}

impl Filter {
    /// `None` when the filter never denies: no `rules` (Envoy enforces
    /// nothing) or `action: LOG`.
    fn compile(rules: Option<&Rbac>, cx: &Cx) -> Result<Option<Filter>, ConfigError> {
        let Some(rules) = rules else {
            return Ok(None);
        };
        let deny = match RbacAction::try_from(rules.action) {
            Ok(RbacAction::Allow) => false,
            Ok(RbacAction::Deny) => true,
            Ok(RbacAction::Log) => return Ok(None),
            Err(_) => {
                let reason = format!("unknown action {}", rules.action);
                return Err(cx.field("action").invalid(reason));
            }
        };
        let mut named: Vec<(&String, &Policy)> = rules.policies.iter().collect();
        named.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let cx = cx.field("policies");
        let policies = named
            .into_iter()
            .map(|(name, p)| Ok((name.clone(), compile_policy(p, &cx.key(name))?)))
            .collect::<Result<_, ConfigError>>()?;
        Ok(Some(Filter { deny, policies }))
    }
}

fn compile_policy(p: &Policy, cx: &Cx) -> Result<CompiledPolicy, ConfigError> {
    if p.condition.is_some() || p.checked_condition.is_some() {
        return Err(cx.field("condition").unsupported("a CEL condition"));
    }
    Ok(CompiledPolicy {
        permissions: Matcher::AnyOf(list(&p.permissions, &cx.field("permissions"), permission)?),
        principals: Matcher::AnyOf(list(&p.principals, &cx.field("principals"), principal)?),
    })
}

/// Compiles a non-empty list (Envoy requires at least one entry).
fn list<T>(
    items: &[T],
    cx: &Cx,
    one: fn(&T, &Cx) -> Result<Matcher, ConfigError>,
) -> Result<Vec<Matcher>, ConfigError> {
    if items.is_empty() {
        return Err(cx.invalid("must have at least one entry"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| one(item, &cx.index(i)))
        .collect()
}

#[allow(deprecated)] // `metadata` is deprecated but must still be refused.
fn permission(p: &Permission, cx: &Cx) -> Result<Matcher, ConfigError> {
    use permission::Rule as R;
    let Some(rule) = &p.rule else {
        return Err(cx.invalid("permission has no rule (unset, or unknown to this build)"));
    };
    Ok(match rule {
        R::Any(true) => Matcher::Any,
        R::Any(false) => return Err(cx.field("any").invalid("any must be true")),
        R::AndRules(s) => Matcher::All(list(&s.rules, &cx.field("and_rules.rules"), permission)?),
        R::OrRules(s) => Matcher::AnyOf(list(&s.rules, &cx.field("or_rules.rules"), permission)?),
        R::NotRule(p) => Matcher::Not(Box::new(permission(p, &cx.field("not_rule"))?)),
        R::Header(h) => {
            cx.http_only("header")?;
            Matcher::Header(header(h, &cx.field("header"))?)
        }
        R::UrlPath(p) => {
            cx.http_only("url_path")?;
            Matcher::UrlPath(path(p, &cx.field("url_path"))?)
        }
        R::DestinationIp(c) => Matcher::DestinationIp(cidr(c, &cx.field("destination_ip"))?),
        R::DestinationPort(port) => match u16::try_from(*port) {
            Ok(port) => Matcher::DestinationPort(port),
            Err(_) => {
                let reason = format!("{port} is not a port number");
                return Err(cx.field("destination_port").invalid(reason));
            }
        },
        R::DestinationPortRange(r) => {
            if !(0..=65536).contains(&r.start) || !(0..=65536).contains(&r.end) || r.start >= r.end
            {
                let reason = format!("[{}, {}) is not a port range", r.start, r.end);
                return Err(cx.field("destination_port_range").invalid(reason));
            }
            Matcher::DestinationPorts(r.start, r.end)
        }
        R::RequestedServerName(m) => Matcher::Sni(string(m, &cx.field("requested_server_name"))?),
        R::Metadata(_) => return Err(cx.field("metadata").unsupported("a metadata matcher")),
        R::SourcedMetadata(_) => {
            return Err(cx
                .field("sourced_metadata")
                .unsupported("a metadata matcher"));
        }
        R::Matcher(_) => return Err(cx.field("matcher").unsupported("a matcher extension")),
        R::UriTemplate(_) => return Err(cx.field("uri_template").unsupported("a URI template")),
    })
}

#[allow(deprecated)] // `source_ip` is deprecated but still means the peer address.
fn principal(p: &Principal, cx: &Cx) -> Result<Matcher, ConfigError> {
    use principal::Identifier as I;
    let Some(id) = &p.identifier else {
        return Err(cx.invalid("principal has no identifier (unset, or unknown to this build)"));
    };
    Ok(match id {
        I::Any(true) => Matcher::Any,
        I::Any(false) => return Err(cx.field("any").invalid("any must be true")),
        I::AndIds(s) => Matcher::All(list(&s.ids, &cx.field("and_ids.ids"), principal)?),
        I::OrIds(s) => Matcher::AnyOf(list(&s.ids, &cx.field("or_ids.ids"), principal)?),
        I::NotId(p) => Matcher::Not(Box::new(principal(p, &cx.field("not_id"))?)),
        I::Authenticated(a) => {
            let cx = cx.field("authenticated.principal_name");
            Matcher::Authenticated(
                a.principal_name
                    .as_ref()
                    .map(|m| string(m, &cx))
                    .transpose()?,
            )
        }
        I::DirectRemoteIp(c) => Matcher::SourceIp(cidr(c, &cx.field("direct_remote_ip"))?),
        I::SourceIp(c) => Matcher::SourceIp(cidr(c, &cx.field("source_ip"))?),
        I::RemoteIp(_) => {
            let what = "remote_ip (the X-Forwarded-For address; use direct_remote_ip)";
            return Err(cx.field("remote_ip").unsupported(what));
        }
        I::Header(h) => {
            cx.http_only("header")?;
            Matcher::Header(header(h, &cx.field("header"))?)
        }
        I::UrlPath(p) => {
            cx.http_only("url_path")?;
            Matcher::UrlPath(path(p, &cx.field("url_path"))?)
        }
        I::Metadata(_) => return Err(cx.field("metadata").unsupported("a metadata matcher")),
        I::SourcedMetadata(_) => {
            return Err(cx
                .field("sourced_metadata")
                .unsupported("a metadata matcher"));
        }
        I::FilterState(_) => {
            return Err(cx
                .field("filter_state")
                .unsupported("a filter state matcher"));
        }
        I::Custom(_) => return Err(cx.field("custom").unsupported("a custom principal")),
    })
}

fn path(p: &PathMatcher, cx: &Cx) -> Result<StrMatch, ConfigError> {
    match &p.rule {
        Some(path_matcher::Rule::Path(m)) => string(m, &cx.field("path")),
        None => Err(cx.invalid("path matcher has no rule (unset, or unknown to this build)")),
    }
}

fn string(m: &StringMatcher, cx: &Cx) -> Result<StrMatch, ConfigError> {
    let ic = m.ignore_case;
    match &m.match_pattern {
        Some(MatchPattern::Exact(s)) => Ok(StrMatch::Exact(bytes(s), ic)),
        Some(MatchPattern::Prefix(s)) => Ok(StrMatch::Prefix(non_empty(s, "prefix", cx)?, ic)),
        Some(MatchPattern::Suffix(s)) => Ok(StrMatch::Suffix(non_empty(s, "suffix", cx)?, ic)),
        Some(MatchPattern::Contains(s)) => {
            Ok(StrMatch::Contains(non_empty(s, "contains", cx)?, ic))
        }
        Some(MatchPattern::SafeRegex(r)) => regex(r, &cx.field("safe_regex")),
        Some(MatchPattern::Custom(_)) => {
            Err(cx.field("custom").unsupported("a custom string matcher"))
        }
        None => Err(cx.invalid("string matcher has no pattern (unset, or unknown to this build)")),
    }
}

fn bytes(s: &str) -> Box<[u8]> {
    s.as_bytes().into()
}

fn non_empty(s: &str, field: &str, cx: &Cx) -> Result<Box<[u8]>, ConfigError> {
    if s.is_empty() {
        return Err(cx.field(field).invalid("must not be empty"));
    }
    Ok(bytes(s))
}

/// A whole-value regex. The regex is checked as written first: wrapping an
/// invalid one (`a)|(b`) could make it valid with another meaning.
fn regex(r: &RegexMatcher, cx: &Cx) -> Result<StrMatch, ConfigError> {
    let err = |source| ConfigError::Regex {
        at: cx.at.clone(),
        regex: r.regex.clone(),
        source,
    };
    Regex::new(&r.regex).map_err(err)?;
    let re = Regex::new(&format!("^(?:{})$", r.regex)).map_err(err)?;
    Ok(StrMatch::Regex(re))
}

#[allow(deprecated)] // The old specifiers are still valid config.
fn header(h: &HeaderMatcher, cx: &Cx) -> Result<HeaderMatch, ConfigError> {
    let name = h.name.to_ascii_lowercase();
    let source = match name.as_str() {
        ":authority" | "host" => HeaderSource::Authority,
        ":method" => HeaderSource::Method,
        ":path" => HeaderSource::Path,
        n if n.starts_with(':') => {
            return Err(cx.field("name").unsupported(format!("pseudo-header {n:?}")));
        }
        n => HeaderSource::Named(HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
            cx.field("name")
                .invalid(format!("{:?} is not a header name", h.name))
        })?),
    };
    let spec = match &h.header_match_specifier {
        Some(Spec::StringMatch(m)) => HeaderSpec::Str(string(m, &cx.field("string_match"))?),
        Some(Spec::ExactMatch(s)) => HeaderSpec::Str(StrMatch::Exact(bytes(s), false)),
        Some(Spec::PrefixMatch(s)) => {
            HeaderSpec::Str(StrMatch::Prefix(non_empty(s, "prefix_match", cx)?, false))
        }
        Some(Spec::SuffixMatch(s)) => {
            HeaderSpec::Str(StrMatch::Suffix(non_empty(s, "suffix_match", cx)?, false))
        }
        Some(Spec::ContainsMatch(s)) => HeaderSpec::Str(StrMatch::Contains(
            non_empty(s, "contains_match", cx)?,
            false,
        )),
        Some(Spec::SafeRegexMatch(r)) => HeaderSpec::Str(regex(r, &cx.field("safe_regex_match"))?),
        Some(Spec::RangeMatch(r)) => HeaderSpec::Range(r.start, r.end),
        Some(Spec::PresentMatch(p)) => HeaderSpec::Present(*p),
        None => {
            let reason = "header matcher has no match specifier (unset, or unknown to this build)";
            return Err(cx.invalid(reason));
        }
    };
    Ok(HeaderMatch {
        source,
        spec,
        invert: h.invert_match,
        missing_as_empty: h.treat_missing_header_as_empty,
    })
}

fn cidr(c: &CidrRange, cx: &Cx) -> Result<Cidr, ConfigError> {
    let addr: IpAddr = c.address_prefix.parse().map_err(|_| {
        cx.field("address_prefix")
            .invalid(format!("{:?} is not an IP address", c.address_prefix))
    })?;
    // Envoy: an unset prefix_len is 0.
    let len = c.prefix_len.map_or(0, |l| l.value);
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        let reason = format!("prefix length {len} is over {max}");
        return Err(cx.field("prefix_len").invalid(reason));
    }
    Ok(Cidr::new(addr, len))
}
