//! Path and authority rewrites: redirects, and the rewrite of forwarded requests.

use std::borrow::Cow;

use envoy_types::pb::envoy::config::route::v3::{
    RedirectAction,
    redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier},
};
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute;
use http::header::HOST;
use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderName, HeaderValue, StatusCode, Uri};

use super::RequestInfo;
use super::action::Forward;
use super::error::{Cx, RouteError};
use super::matcher::{PathMatch, RouteMatcher, path_only};

/// Header holding the path before a rewrite (Envoy's router sets it).
pub const X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");

/// A request could not be rewritten into a valid URI.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// The rewritten path is not a valid request target.
    #[error("rewritten path {path:?} is not a valid request target")]
    Path {
        /// The rewritten path.
        path: String,
    },
    /// The URI could not be rebuilt.
    #[error("cannot rebuild the request URI: {0}")]
    Uri(#[from] http::uri::InvalidUriParts),
    /// The authority is not a valid `Host` value.
    #[error("rewritten authority {0:?} is not a valid Host value")]
    Host(String),
}

/// A regex substitution on the path (Envoy `RegexMatchAndSubstitute`):
/// every match is replaced; `\N` in the substitution is capture group N.
#[derive(Debug)]
pub struct RegexRewrite {
    regex: regex::Regex,
    /// The substitution in `regex` crate syntax (`${N}`, `$$`).
    replacement: String,
}

impl RegexRewrite {
    /// `path` with every match replaced.
    pub fn apply<'a>(&self, path: &'a str) -> Cow<'a, str> {
        self.regex.replace_all(path, self.replacement.as_str())
    }

    pub(crate) fn compile(r: &RegexMatchAndSubstitute, cx: &Cx) -> Result<Self, RouteError> {
        let RegexMatchAndSubstitute {
            pattern,
            substitution,
        } = r;
        let Some(pattern) = pattern else {
            return Err(cx.field("pattern").invalid("missing"));
        };
        let regex = cx.field("pattern").rewrite_regex(&pattern.regex)?;
        let groups = regex.captures_len();
        let cx = cx.field("substitution");
        // RE2 rewrite syntax: `\N` is a group, `\\` a backslash; `$` is literal.
        let mut replacement = String::with_capacity(substitution.len());
        let mut chars = substitution.chars();
        while let Some(c) = chars.next() {
            match c {
                '$' => replacement.push_str("$$"),
                '\\' => match chars.next() {
                    Some('\\') => replacement.push('\\'),
                    Some(d @ '0'..='9') => {
                        let n = d as usize - '0' as usize;
                        if n >= groups {
                            let reason = format!("\\{n} but the pattern has {} groups", groups - 1);
                            return Err(cx.invalid(reason));
                        }
                        replacement.push_str(&format!("${{{n}}}"));
                    }
                    other => {
                        let reason = format!("invalid escape \\{}", other.unwrap_or(' '));
                        return Err(cx.invalid(reason));
                    }
                },
                c => replacement.push(c),
            }
        }
        Ok(RegexRewrite { regex, replacement })
    }
}

/// How a redirect builds the new path.
#[derive(Debug)]
enum RedirectPath {
    /// The request's path.
    Keep,
    /// `path_redirect`; `has_query` when it carries its own query.
    Path { path: String, has_query: bool },
    /// `prefix_rewrite` of the matched prefix (or whole matched path).
    Prefix(String),
    /// `regex_rewrite`.
    Regex(RegexRewrite),
}

/// A redirect response (Envoy `RedirectAction`).
#[derive(Debug)]
pub struct Redirect {
    status: StatusCode,
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: RedirectPath,
    strip_query: bool,
    /// Byte length the route's path condition matched; `None` for a regex
    /// (the whole path).
    matched_len: Option<usize>,
}

impl Redirect {
    /// The redirect status (301, 302, 303, 307 or 308).
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The status and `Location` for `req`, which arrived over `scheme`
    /// (`http`/`https`; decides whether its default port is dropped when the
    /// scheme changes), as Envoy builds them.
    pub fn response_location(&self, req: &RequestInfo<'_>, scheme: &str) -> (StatusCode, String) {
        let new_scheme = self.scheme.as_deref().unwrap_or(scheme);
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        let host = match &self.host {
            Some(h) => h.as_str(),
            None => request_host(req.authority, scheme, new_scheme, self.port.is_some()),
        };
        let pq = req.path_and_query;
        let query_start = pq.find('?').unwrap_or(pq.len());
        let mut path: Cow<'_, str> = match &self.path {
            RedirectPath::Path { path, has_query } => {
                if *has_query {
                    // Its own query wins and is never stripped.
                    return (self.status, format!("{new_scheme}://{host}{port}{path}"));
                }
                Cow::Owned(format!("{path}{}", &pq[query_start..]))
            }
            RedirectPath::Keep => Cow::Borrowed(pq),
            RedirectPath::Prefix(p) => {
                let n = self.matched_len.unwrap_or_else(|| path_only(pq).len());
                Cow::Owned(format!("{p}{}", pq.get(n..).unwrap_or_default()))
            }
            RedirectPath::Regex(r) => {
                let path = path_only(pq);
                Cow::Owned(format!("{}{}", r.apply(path), &pq[path.len()..]))
            }
        };
        if self.strip_query
            && let Some(i) = path.find('?')
        {
            path = Cow::Owned(path[..i].to_string());
        }
        let slash = if path.starts_with('/') { "" } else { "/" };
        (
            self.status,
            format!("{new_scheme}://{host}{port}{slash}{path}"),
        )
    }

    /// Compiles a `RedirectAction`. Refused: `path_rewrite` (substitution formats).
    pub(crate) fn compile(
        r: &RedirectAction,
        matcher: &RouteMatcher,
        cx: &Cx,
    ) -> Result<Redirect, RouteError> {
        let RedirectAction {
            host_redirect,
            port_redirect,
            response_code,
            strip_query,
            scheme_rewrite_specifier,
            path_rewrite_specifier,
        } = r;
        let status = match RedirectResponseCode::try_from(*response_code) {
            Ok(RedirectResponseCode::MovedPermanently) => StatusCode::MOVED_PERMANENTLY,
            Ok(RedirectResponseCode::Found) => StatusCode::FOUND,
            Ok(RedirectResponseCode::SeeOther) => StatusCode::SEE_OTHER,
            Ok(RedirectResponseCode::TemporaryRedirect) => StatusCode::TEMPORARY_REDIRECT,
            Ok(RedirectResponseCode::PermanentRedirect) => StatusCode::PERMANENT_REDIRECT,
            Err(_) => {
                let reason = format!("unknown response code {response_code}");
                return Err(cx.field("response_code").invalid(reason));
            }
        };
        let scheme = match scheme_rewrite_specifier {
            None | Some(SchemeRewriteSpecifier::HttpsRedirect(false)) => None,
            Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".to_string()),
            Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => {
                let valid = s.starts_with(|c: char| c.is_ascii_alphabetic())
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
                if !valid {
                    return Err(cx
                        .field("scheme_redirect")
                        .invalid(format!("{s:?} is not a scheme")));
                }
                Some(s.to_ascii_lowercase())
            }
        };
        let port = match u16::try_from(*port_redirect) {
            Ok(0) => None,
            Ok(p) => Some(p),
            Err(_) => {
                let reason = format!("{port_redirect} is not a port");
                return Err(cx.field("port_redirect").invalid(reason));
            }
        };
        if !host_redirect.is_empty() && host_redirect.parse::<Authority>().is_err() {
            let reason = format!("{host_redirect:?} is not a host");
            return Err(cx.field("host_redirect").invalid(reason));
        }
        let valid_target = |s: &str| s.parse::<PathAndQuery>().is_ok();
        let path = match path_rewrite_specifier {
            None => RedirectPath::Keep,
            Some(PathRewriteSpecifier::PathRedirect(p)) => {
                if p.is_empty() || !valid_target(p) {
                    return Err(cx
                        .field("path_redirect")
                        .invalid(format!("{p:?} is not a path")));
                }
                RedirectPath::Path {
                    path: p.clone(),
                    has_query: p.contains('?'),
                }
            }
            Some(PathRewriteSpecifier::PrefixRewrite(p)) => {
                if !valid_target(p) {
                    return Err(cx
                        .field("prefix_rewrite")
                        .invalid(format!("{p:?} is not a path")));
                }
                RedirectPath::Prefix(p.clone())
            }
            Some(PathRewriteSpecifier::RegexRewrite(r)) => {
                RedirectPath::Regex(RegexRewrite::compile(r, &cx.field("regex_rewrite"))?)
            }
            Some(PathRewriteSpecifier::PathRewrite(_)) => {
                return Err(cx
                    .field("path_rewrite")
                    .unsupported("a substitution-format path"));
            }
        };
        Ok(Redirect {
            status,
            scheme,
            host: Some(host_redirect.clone()).filter(|h| !h.is_empty()),
            port,
            path,
            strip_query: *strip_query,
            matched_len: match &matcher.path {
                PathMatch::Prefix(p) | PathMatch::Exact(p) | PathMatch::SeparatedPrefix(p) => {
                    Some(p.len())
                }
                PathMatch::Regex(_) => None,
            },
        })
    }
}

/// The request's host for a redirect (Envoy `processRequestHost`): its port
/// is dropped when the redirect sets a port, or when the scheme changes and
/// the port is the old scheme's default.
fn request_host<'a>(authority: &'a str, scheme: &str, new_scheme: &str, new_port: bool) -> &'a str {
    let port_start = if authority.starts_with('[') {
        authority.rfind("]:").map(|i| i + 1)
    } else {
        authority.rfind(':')
    };
    let Some(i) = port_start else {
        return authority;
    };
    let port = &authority[i..];
    let default_port = (scheme == "https" && port == ":443") || (scheme == "http" && port == ":80");
    if new_port || (new_scheme != scheme && default_port) {
        &authority[..i]
    } else {
        authority
    }
}

/// [`Forward::rewrite`].
pub(crate) fn rewrite_request(
    f: &Forward,
    matcher: &RouteMatcher,
    parts: &mut Parts,
) -> Result<(), RewriteError> {
    let original = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let new_path = if let Some(prefix) = &f.prefix_rewrite {
        let n = matcher.matched_len(original);
        Some(format!("{prefix}{}", original.get(n..).unwrap_or_default()))
    } else {
        f.regex_rewrite.as_ref().map(|r| {
            let path = path_only(original);
            format!("{}{}", r.apply(path), &original[path.len()..])
        })
    };
    if let Some(new_path) = new_path {
        let original = HeaderValue::from_str(original).map_err(|_| RewriteError::Path {
            path: original.to_string(),
        })?;
        let pq = PathAndQuery::try_from(new_path.as_str())
            .ok()
            .filter(|pq| pq.as_str().starts_with('/'))
            .ok_or(RewriteError::Path { path: new_path })?;
        let mut uri = parts.uri.clone().into_parts();
        uri.path_and_query = Some(pq);
        parts.uri = Uri::from_parts(uri)?;
        parts.headers.insert(X_ENVOY_ORIGINAL_PATH, original);
    }
    if let Some(host) = &f.host_rewrite {
        let bad_host = || RewriteError::Host(host.clone());
        let value = HeaderValue::from_str(host).map_err(|_| bad_host())?;
        let old_host = match parts.headers.get(HOST) {
            Some(h) => Some(h.clone()),
            None => parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        };
        if parts.uri.authority().is_some() {
            let mut uri = parts.uri.clone().into_parts();
            uri.authority = Some(host.parse::<Authority>().map_err(|_| bad_host())?);
            parts.uri = Uri::from_parts(uri)?;
        }
        if parts.headers.contains_key(HOST) || parts.uri.authority().is_none() {
            parts.headers.insert(HOST, value);
        }
        if f.append_x_forwarded_host
            && let Some(old) = old_host
        {
            append_forwarded_host(&mut parts.headers, old);
        }
    }
    Ok(())
}

/// Appends to `x-forwarded-host` as one comma-separated value (Envoy's `appendCopy`).
fn append_forwarded_host(headers: &mut http::HeaderMap, host: HeaderValue) {
    const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
    let existing: Vec<&[u8]> = headers
        .get_all(&XFH)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if existing.is_empty() {
        headers.insert(XFH, host);
        return;
    }
    let mut joined = existing.join(&b","[..]);
    joined.push(b',');
    joined.extend_from_slice(host.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(XFH, v);
    }
}
