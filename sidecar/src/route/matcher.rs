//! Request matching: Envoy's `RouteMatch` (path, headers, query parameters, gRPC).
//!
//! Semantics follow Envoy: path matchers see the path without query or
//! fragment; `case_sensitive: false` applies to `prefix`, `path` and
//! `path_separated_prefix` but not to `safe_regex`; regexes match the whole
//! value; several values of one header are joined with `,`; query parameters
//! are compared undecoded, first value only.

use std::borrow::Cow;

use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher as PbHeaderMatcher, QueryParameterMatcher, RouteMatch,
    header_matcher::HeaderMatchSpecifier as Spec,
    query_parameter_matcher::QueryParameterMatchSpecifier as QuerySpec, route_match::PathSpecifier,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use http::HeaderName;
use regex::bytes::Regex;

use super::RequestInfo;
use super::error::{Cx, RouteError};

/// A compiled `RouteMatch`: every condition must hold.
#[derive(Debug)]
pub struct RouteMatcher {
    pub(crate) path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatch>,
    query: Vec<QueryMatch>,
    /// `grpc: {}`: only requests with a gRPC content type.
    grpc: bool,
}

/// The path condition.
#[derive(Debug)]
pub(crate) enum PathMatch {
    /// `prefix`.
    Prefix(String),
    /// `path`: the whole path.
    Exact(String),
    /// `path_separated_prefix`: the prefix, then the end or `/`.
    SeparatedPrefix(String),
    /// `safe_regex`: the whole path.
    Regex(Regex),
}

impl RouteMatcher {
    /// Whether `req`, which arrived over `scheme`, satisfies every condition.
    pub fn matches(&self, req: &RequestInfo<'_>, scheme: &str) -> bool {
        self.matches_path(req, path_only(req.path_and_query), scheme)
    }

    /// [`matches`](Self::matches) with the path (no query) already split off.
    pub(crate) fn matches_path(&self, req: &RequestInfo<'_>, path: &str, scheme: &str) -> bool {
        self.path_matches(path)
            && (!self.grpc || is_grpc(req))
            && self.headers.iter().all(|h| h.matches(req, scheme))
            && (self.query.is_empty() || self.query_matches(req.path_and_query))
    }

    fn path_matches(&self, path: &str) -> bool {
        let eq = |a: &[u8], b: &[u8]| {
            if self.case_sensitive {
                a == b
            } else {
                a.eq_ignore_ascii_case(b)
            }
        };
        let starts = |p: &str| {
            path.as_bytes()
                .get(..p.len())
                .is_some_and(|h| eq(h, p.as_bytes()))
        };
        match &self.path {
            PathMatch::Prefix(p) => starts(p),
            PathMatch::Exact(p) => eq(path.as_bytes(), p.as_bytes()),
            PathMatch::SeparatedPrefix(p) => {
                starts(p) && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathMatch::Regex(re) => re.is_match(path.as_bytes()),
        }
    }

    fn query_matches(&self, path_and_query: &str) -> bool {
        let query = query_of(path_and_query);
        self.query.iter().all(|q| q.matches(query))
    }

    /// Byte length of the part of `path_and_query` the path condition matched
    /// (what `prefix_rewrite` replaces): the configured prefix or path, or the
    /// whole path for a regex.
    pub(crate) fn matched_len(&self, path_and_query: &str) -> usize {
        match &self.path {
            PathMatch::Prefix(p) | PathMatch::Exact(p) | PathMatch::SeparatedPrefix(p) => p.len(),
            PathMatch::Regex(_) => path_only(path_and_query).len(),
        }
    }
}

/// The path without query or fragment.
pub(crate) fn path_only(path_and_query: &str) -> &str {
    match path_and_query.find(['?', '#']) {
        Some(i) => &path_and_query[..i],
        None => path_and_query,
    }
}

/// The query string (without `?` and fragment), empty when there is none.
pub(crate) fn query_of(path_and_query: &str) -> &str {
    let Some((_, rest)) = path_and_query.split_once('?') else {
        return "";
    };
    rest.split_once('#').map_or(rest, |(q, _)| q)
}

/// First value of query parameter `name`, compared undecoded (`a` alone has value `""`).
pub(crate) fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| match kv.split_once('=') {
        Some((k, v)) if k == name => Some(v),
        None if kv == name => Some(""),
        _ => None,
    })
}

/// Envoy's gRPC request check: `content-type` is `application/grpc` or a subtype.
fn is_grpc(req: &RequestInfo<'_>) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| {
            let v = v.as_bytes();
            v == b"application/grpc"
                || v.starts_with(b"application/grpc+")
                || v.starts_with(b"application/grpc;")
        })
}

/// A `StringMatcher`. `ignore_case` is ASCII-only and, as in Envoy, does not
/// apply to regexes.
#[derive(Debug)]
pub(crate) enum StrMatch {
    Exact(Box<[u8]>, bool),
    Prefix(Box<[u8]>, bool),
    Suffix(Box<[u8]>, bool),
    Contains(Box<[u8]>, bool),
    Regex(Regex),
}

impl StrMatch {
    pub(crate) fn matches(&self, v: &[u8]) -> bool {
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
            StrMatch::Contains(s, ic) => v.windows(s.len()).any(|w| eq(w, s, *ic)),
            StrMatch::Regex(re) => re.is_match(v),
        }
    }
}

/// Where a header matcher reads its value.
#[derive(Debug)]
enum HeaderSource {
    Method,
    Authority,
    Path,
    Scheme,
    Named(HeaderName),
}

#[derive(Debug)]
enum HeaderSpec {
    Str(StrMatch),
    /// `[start, end)` on the value parsed as an integer.
    Range(i64, i64),
    Present(bool),
}

/// A `HeaderMatcher`.
#[derive(Debug)]
struct HeaderMatch {
    source: HeaderSource,
    spec: HeaderSpec,
    invert: bool,
    missing_as_empty: bool,
}

impl HeaderMatch {
    /// Envoy: `present_match` compares presence (then inverts); other
    /// matchers never match a missing header (inverted or not) unless
    /// `treat_missing_header_as_empty`.
    fn matches(&self, req: &RequestInfo<'_>, scheme: &str) -> bool {
        let value = self.value(req, scheme);
        if let HeaderSpec::Present(p) = self.spec {
            return (value.is_some() == p) != self.invert;
        }
        let value = match value {
            Some(v) => v,
            None if self.missing_as_empty => Cow::Borrowed(&b""[..]),
            None => return false,
        };
        let matched = match &self.spec {
            HeaderSpec::Str(s) => s.matches(&value),
            HeaderSpec::Range(start, end) => std::str::from_utf8(&value)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .is_some_and(|n| (*start..*end).contains(&n)),
            HeaderSpec::Present(_) => true,
        };
        matched != self.invert
    }

    fn value<'a>(&self, req: &RequestInfo<'a>, scheme: &'a str) -> Option<Cow<'a, [u8]>> {
        let s = match &self.source {
            HeaderSource::Method => req.method.as_str(),
            HeaderSource::Authority => req.authority,
            HeaderSource::Path => req.path_and_query,
            HeaderSource::Scheme => scheme,
            HeaderSource::Named(name) => return joined(req.headers, name),
        };
        (!s.is_empty()).then_some(Cow::Borrowed(s.as_bytes()))
    }
}

/// All values of `name` joined with `,` (borrowed when there is one).
fn joined<'a>(headers: &'a http::HeaderMap, name: &HeaderName) -> Option<Cow<'a, [u8]>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let mut rest = values.peekable();
    if rest.peek().is_none() {
        return Some(Cow::Borrowed(first.as_bytes()));
    }
    let mut out = first.as_bytes().to_vec();
    for v in rest {
        out.push(b',');
        out.extend_from_slice(v.as_bytes());
    }
    Some(Cow::Owned(out))
}

/// A `QueryParameterMatcher`: `None` is `present_match`.
#[derive(Debug)]
struct QueryMatch {
    name: String,
    spec: Option<StrMatch>,
}

impl QueryMatch {
    fn matches(&self, query: &str) -> bool {
        match query_param(query, &self.name) {
            None => false,
            Some(v) => self.spec.as_ref().is_none_or(|s| s.matches(v.as_bytes())),
        }
    }
}

// ---------------------------------------------------------------------------
// Compilation.

/// Compiles `route.match`. Refused: `runtime_fraction` (no runtime layer in
/// the sidecar), `cookies`, `tls_context`, `dynamic_metadata`,
/// `filter_state`, `connect_matcher`, `path_match_policy`.
pub(crate) fn compile(m: &RouteMatch, cx: &Cx) -> Result<RouteMatcher, RouteError> {
    let RouteMatch {
        case_sensitive,
        runtime_fraction,
        headers,
        query_parameters,
        cookies,
        grpc,
        tls_context,
        dynamic_metadata,
        filter_state,
        path_specifier,
    } = m;
    cx.refuse("runtime_fraction", runtime_fraction.is_some())?;
    cx.refuse("cookies", !cookies.is_empty())?;
    cx.refuse("tls_context", tls_context.is_some())?;
    cx.refuse("dynamic_metadata", !dynamic_metadata.is_empty())?;
    cx.refuse("filter_state", !filter_state.is_empty())?;
    let path = match path_specifier {
        Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
        Some(PathSpecifier::SafeRegex(r)) => {
            PathMatch::Regex(cx.field("safe_regex").full_regex(&r.regex)?)
        }
        Some(PathSpecifier::PathSeparatedPrefix(p)) => {
            if !p.starts_with('/') || p.ends_with('/') || p.contains(['?', '#']) {
                let reason =
                    format!("{p:?} must start with '/', not end with '/' and have no '?' or '#'");
                return Err(cx.field("path_separated_prefix").invalid(reason));
            }
            PathMatch::SeparatedPrefix(p.clone())
        }
        Some(PathSpecifier::ConnectMatcher(_)) => {
            return Err(cx.field("connect_matcher").unsupported("CONNECT matching"));
        }
        Some(PathSpecifier::PathMatchPolicy(_)) => {
            return Err(cx
                .field("path_match_policy")
                .unsupported("a path match policy"));
        }
        None => return Err(cx.invalid("no path specifier (unset, or unknown to this build)")),
    };
    Ok(RouteMatcher {
        path,
        case_sensitive: case_sensitive.as_ref().is_none_or(|b| b.value),
        headers: headers
            .iter()
            .enumerate()
            .map(|(i, h)| header(h, &cx.field("headers").index(i)))
            .collect::<Result<_, _>>()?,
        query: query_parameters
            .iter()
            .enumerate()
            .map(|(i, q)| query(q, &cx.field("query_parameters").index(i)))
            .collect::<Result<_, _>>()?,
        grpc: grpc.is_some(),
    })
}

/// A header name for matching: pseudo-headers `:method`, `:authority`
/// (also `host`), `:path`, `:scheme`, or a regular header.
fn header_source(name: &str, cx: &Cx) -> Result<HeaderSource, RouteError> {
    Ok(match name.to_ascii_lowercase().as_str() {
        ":method" => HeaderSource::Method,
        ":authority" | "host" => HeaderSource::Authority,
        ":path" => HeaderSource::Path,
        ":scheme" => HeaderSource::Scheme,
        n if n.starts_with(':') => {
            return Err(cx.field("name").unsupported(format!("pseudo-header {n:?}")));
        }
        n => HeaderSource::Named(HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
            cx.field("name")
                .invalid(format!("{name:?} is not a header name"))
        })?),
    })
}

#[allow(deprecated)] // The legacy specifiers are still valid config.
fn header(h: &PbHeaderMatcher, cx: &Cx) -> Result<HeaderMatch, RouteError> {
    let PbHeaderMatcher {
        name,
        invert_match,
        treat_missing_header_as_empty,
        header_match_specifier,
    } = h;
    let source = header_source(name, cx)?;
    let legacy = |s: &String, field: &str, make: fn(Box<[u8]>, bool) -> StrMatch| {
        Ok::<_, RouteError>(HeaderSpec::Str(make(non_empty(s, field, cx)?, false)))
    };
    let spec = match header_match_specifier {
        Some(Spec::StringMatch(m)) => HeaderSpec::Str(string(m, &cx.field("string_match"))?),
        Some(Spec::ExactMatch(s)) => HeaderSpec::Str(StrMatch::Exact(s.as_bytes().into(), false)),
        Some(Spec::PrefixMatch(s)) => legacy(s, "prefix_match", StrMatch::Prefix)?,
        Some(Spec::SuffixMatch(s)) => legacy(s, "suffix_match", StrMatch::Suffix)?,
        Some(Spec::ContainsMatch(s)) => legacy(s, "contains_match", StrMatch::Contains)?,
        Some(Spec::SafeRegexMatch(r)) => HeaderSpec::Str(StrMatch::Regex(
            cx.field("safe_regex_match").full_regex(&r.regex)?,
        )),
        Some(Spec::RangeMatch(r)) => {
            if r.start >= r.end {
                let reason = format!("[{}, {}) is empty", r.start, r.end);
                return Err(cx.field("range_match").invalid(reason));
            }
            HeaderSpec::Range(r.start, r.end)
        }
        Some(Spec::PresentMatch(p)) => HeaderSpec::Present(*p),
        // Envoy: a matcher without a specifier checks presence.
        None => HeaderSpec::Present(true),
    };
    Ok(HeaderMatch {
        source,
        spec,
        invert: *invert_match,
        missing_as_empty: *treat_missing_header_as_empty,
    })
}

fn query(q: &QueryParameterMatcher, cx: &Cx) -> Result<QueryMatch, RouteError> {
    let QueryParameterMatcher {
        name,
        query_parameter_match_specifier,
    } = q;
    if name.is_empty() {
        return Err(cx.field("name").invalid("must not be empty"));
    }
    let spec = match query_parameter_match_specifier {
        Some(QuerySpec::StringMatch(m)) => Some(string(m, &cx.field("string_match"))?),
        // Envoy treats `present_match` (either value) and no specifier as "present".
        Some(QuerySpec::PresentMatch(_)) | None => None,
    };
    Ok(QueryMatch {
        name: name.clone(),
        spec,
    })
}

/// Compiles a `StringMatcher`.
pub(crate) fn string(m: &StringMatcher, cx: &Cx) -> Result<StrMatch, RouteError> {
    let ic = m.ignore_case;
    match &m.match_pattern {
        Some(MatchPattern::Exact(s)) => Ok(StrMatch::Exact(s.as_bytes().into(), ic)),
        Some(MatchPattern::Prefix(s)) => Ok(StrMatch::Prefix(non_empty(s, "prefix", cx)?, ic)),
        Some(MatchPattern::Suffix(s)) => Ok(StrMatch::Suffix(non_empty(s, "suffix", cx)?, ic)),
        Some(MatchPattern::Contains(s)) => {
            Ok(StrMatch::Contains(non_empty(s, "contains", cx)?, ic))
        }
        Some(MatchPattern::SafeRegex(r)) => Ok(StrMatch::Regex(
            cx.field("safe_regex").full_regex(&r.regex)?,
        )),
        Some(MatchPattern::Custom(_)) => {
            Err(cx.field("custom").unsupported("a custom string matcher"))
        }
        None => Err(cx.invalid("string matcher has no pattern (unset, or unknown to this build)")),
    }
}

fn non_empty(s: &str, field: &str, cx: &Cx) -> Result<Box<[u8]>, RouteError> {
    if s.is_empty() {
        return Err(cx.field(field).invalid("must not be empty"));
    }
    Ok(s.as_bytes().into())
}
