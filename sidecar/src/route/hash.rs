//! Request hashing for consistent-hash load balancing (Envoy `hash_policy`).
//!
//! Hashes are xxHash64 with seed 0, as in Envoy, so a request hashes the
//! same in the sidecar and in Envoy and across restarts.

use std::hash::Hasher;
use std::net::IpAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::route_action::{
    HashPolicy as PbHashPolicy, hash_policy,
};
use http::HeaderName;
use twox_hash::XxHash64;

use super::RequestInfo;
use super::error::{Cx, RouteError};
use super::matcher::{query_of, query_param};

/// What a hash policy hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    /// A request header's values (sorted, so their order does not matter);
    /// `:authority`, `:path` and `:method` read the request line.
    Header(HashHeader),
    /// A cookie's value. When the cookie is missing and `ttl` is set, a
    /// cookie is generated (see [`HashPolicy::new_cookie`]).
    Cookie {
        /// Cookie name.
        name: String,
        /// `Max-Age` of a generated cookie; `None`: no cookie is generated.
        ttl: Option<Duration>,
        /// `Path` of a generated cookie (empty: none).
        path: String,
    },
    /// The downstream peer's IP address.
    SourceIp,
    /// A query parameter's first value (undecoded).
    QueryParameter(String),
}

/// The header a [`HashOn::Header`] policy reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashHeader {
    /// `:authority`.
    Authority,
    /// `:path` (with query).
    Path,
    /// `:method`.
    Method,
    /// A regular header.
    Named(HeaderName),
}

/// One `hash_policy` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashPolicy {
    /// What is hashed.
    pub on: HashOn,
    /// When this policy produced a hash, skip the later ones.
    pub terminal: bool,
}

impl HashPolicy {
    /// The hash of this policy's input, `None` when the request lacks it.
    pub fn hash<'a>(&self, req: &RequestInfo<'a>, source_ip: IpAddr) -> Option<u64> {
        match &self.on {
            HashOn::Header(h) => {
                let pseudo = |s: &'a str| {
                    if s.is_empty() {
                        Vec::new()
                    } else {
                        vec![s.as_bytes()]
                    }
                };
                let mut values: Vec<&[u8]> = match h {
                    HashHeader::Authority => pseudo(req.authority),
                    HashHeader::Path => pseudo(req.path_and_query),
                    HashHeader::Method => pseudo(req.method.as_str()),
                    HashHeader::Named(n) => req
                        .headers
                        .get_all(n)
                        .iter()
                        .map(|v| v.as_bytes())
                        .collect(),
                };
                if values.is_empty() {
                    return None;
                }
                values.sort_unstable();
                let mut hasher = XxHash64::with_seed(0);
                for v in values {
                    hasher.write(v);
                }
                Some(hasher.finish())
            }
            HashOn::Cookie { name, ttl, .. } => match cookie(req, name) {
                Some(v) => Some(xxhash(v.as_bytes())),
                None if ttl.is_some() => Some(xxhash(generated_value(source_ip).as_bytes())),
                None => None,
            },
            HashOn::SourceIp => Some(xxhash(source_ip.to_string().as_bytes())),
            HashOn::QueryParameter(name) => {
                query_param(query_of(req.path_and_query), name).map(|v| xxhash(v.as_bytes()))
            }
        }
    }

    /// The `Set-Cookie` value to add to the response when this is a cookie
    /// policy with a `ttl` and the request has no such cookie; its value is
    /// what [`hash`](Self::hash) hashed. Envoy derives the value from both
    /// connection addresses and ports; the sidecar uses the source IP, so a
    /// client keeps its affinity before the cookie is set.
    pub fn new_cookie(&self, req: &RequestInfo<'_>, source_ip: IpAddr) -> Option<String> {
        let HashOn::Cookie {
            name,
            ttl: Some(ttl),
            path,
        } = &self.on
        else {
            return None;
        };
        if cookie(req, name).is_some() {
            return None;
        }
        let mut out = format!("{name}=\"{}\"", generated_value(source_ip));
        if !ttl.is_zero() {
            out.push_str(&format!("; Max-Age={}", ttl.as_secs()));
        }
        if !path.is_empty() {
            out.push_str(&format!("; Path={path}"));
        }
        out.push_str("; HttpOnly");
        Some(out)
    }

    /// Compiles a `hash_policy` entry. Refused: `filter_state`, header
    /// `regex_rewrite`, cookie `attributes`, `connection_properties` without `source_ip`.
    pub(crate) fn compile(p: &PbHashPolicy, cx: &Cx) -> Result<HashPolicy, RouteError> {
        use hash_policy::PolicySpecifier as P;
        let PbHashPolicy {
            terminal,
            policy_specifier,
        } = p;
        let on = match policy_specifier {
            Some(P::Header(h)) => {
                let cx = cx.field("header");
                cx.refuse("regex_rewrite", h.regex_rewrite.is_some())?;
                HashOn::Header(match h.header_name.to_ascii_lowercase().as_str() {
                    ":authority" | "host" => HashHeader::Authority,
                    ":path" => HashHeader::Path,
                    ":method" => HashHeader::Method,
                    n => HashHeader::Named(HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                        let reason = format!("{:?} is not a header name", h.header_name);
                        cx.field("header_name").invalid(reason)
                    })?),
                })
            }
            Some(P::Cookie(c)) => {
                let cx = cx.field("cookie");
                cx.refuse("attributes", !c.attributes.is_empty())?;
                if c.name.is_empty() {
                    return Err(cx.field("name").invalid("must not be empty"));
                }
                HashOn::Cookie {
                    name: c.name.clone(),
                    ttl: c
                        .ttl
                        .as_ref()
                        .map(|d| cx.field("ttl").duration(d))
                        .transpose()?,
                    path: c.path.clone(),
                }
            }
            Some(P::ConnectionProperties(c)) if c.source_ip => HashOn::SourceIp,
            Some(P::ConnectionProperties(_)) => {
                let cx = cx.field("connection_properties.source_ip");
                return Err(cx.invalid("must be true"));
            }
            Some(P::QueryParameter(q)) if !q.name.is_empty() => {
                HashOn::QueryParameter(q.name.clone())
            }
            Some(P::QueryParameter(_)) => {
                return Err(cx
                    .field("query_parameter.name")
                    .invalid("must not be empty"));
            }
            Some(P::FilterState(_)) => {
                return Err(cx.field("filter_state").unsupported("a filter state hash"));
            }
            None => return Err(cx.invalid("no policy (unset, or unknown to this build)")),
        };
        Ok(HashPolicy {
            on,
            terminal: *terminal,
        })
    }
}

/// Combines `policies` as Envoy does: each produced hash is XORed into the
/// running one after rotating it left by one bit; a terminal policy that
/// is reached with a hash in hand ends the walk. `None` when no policy
/// produced one.
pub fn combined_hash(
    policies: &[HashPolicy],
    req: &RequestInfo<'_>,
    source_ip: IpAddr,
) -> Option<u64> {
    let mut hash: Option<u64> = None;
    for p in policies {
        if let Some(h) = p.hash(req, source_ip) {
            hash = Some(hash.map_or(0, |old| old.rotate_left(1)) ^ h);
        }
        if p.terminal && hash.is_some() {
            break;
        }
    }
    hash
}

fn xxhash(bytes: &[u8]) -> u64 {
    XxHash64::oneshot(0, bytes)
}

/// A generated cookie value: the hex xxHash64 of the source IP.
fn generated_value(source_ip: IpAddr) -> String {
    format!("{:016x}", xxhash(source_ip.to_string().as_bytes()))
}

/// The value of cookie `name` in the `cookie` headers, without surrounding quotes.
fn cookie<'a>(req: &RequestInfo<'a>, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| {
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            })
        })
}
