//! Semantic validation: the rules the type system cannot express.
//!
//! Each check appends a [`FieldError`] at the current field path and keeps
//! going, so a user sees every problem in a resource at once.

mod federation;
mod networking;
mod routes;
mod security;
mod sidecar;

use std::net::IpAddr;

use crate::error::LoadError;
use crate::naming;
use crate::networking::{Percent, StringMatch};
use crate::resource::{Resource, ResourceKey};

/// Longest regex pattern accepted (bytes).
pub const MAX_REGEX_LEN: usize = 1024;
/// Compiled size limit for a regex, so a pattern cannot blow up proxy memory.
pub const MAX_REGEX_PROGRAM: usize = 256 * 1024;

/// A problem at a field path inside one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// `spec.http[0].route`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// Attaches the resource identity.
    pub fn into_load_error(self, key: &ResourceKey) -> LoadError {
        LoadError::new(self.message)
            .with_field(self.field)
            .with_resource(key)
    }
}

/// Validates one typed resource; empty when it is valid.
pub fn resource(resource: &Resource) -> Vec<FieldError> {
    let mut cx = Ctx::default();
    match resource {
        Resource::VirtualService(o) => cx.field("spec", |cx| routes::virtual_service(cx, &o.spec)),
        Resource::DestinationRule(o) => {
            cx.field("spec", |cx| networking::destination_rule(cx, &o.spec))
        }
        Resource::ServiceEntry(o) => cx.field("spec", |cx| networking::service_entry(cx, &o.spec)),
        Resource::WorkloadEntry(o) => {
            cx.field("spec", |cx| networking::workload_entry(cx, &o.spec, None))
        }
        Resource::Gateway(o) => cx.field("spec", |cx| networking::gateway(cx, &o.spec)),
        Resource::Sidecar(o) => cx.field("spec", |cx| sidecar::sidecar(cx, &o.spec)),
        Resource::PeerAuthentication(o) => {
            cx.field("spec", |cx| security::peer_authentication(cx, &o.spec))
        }
        Resource::AuthorizationPolicy(o) => {
            cx.field("spec", |cx| security::authorization_policy(cx, &o.spec))
        }
        Resource::MeshFederation(o) => {
            cx.field("spec", |cx| federation::mesh_federation(cx, &o.spec))
        }
        Resource::ServiceExport(o) => {
            let name = o.metadata.name.as_deref().unwrap_or_default();
            cx.field("metadata.name", |cx| {
                cx.check(
                    naming::validate_dns1123_label(name),
                    "ServiceExport must be named as its Service",
                )
            })
        }
        Resource::Service(_)
        | Resource::EndpointSlice(_)
        | Resource::Pod(_)
        | Resource::Namespace(_)
        | Resource::Node(_) => {}
    }
    cx.errors
}

/// Walks a resource, tracking the field path and collecting errors.
#[derive(Debug, Default)]
pub(crate) struct Ctx {
    path: String,
    errors: Vec<FieldError>,
}

impl Ctx {
    /// Runs `f` with `.name` appended to the path.
    pub(crate) fn field<R>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> R) -> R {
        let len = self.path.len();
        if !self.path.is_empty() {
            self.path.push('.');
        }
        self.path.push_str(name);
        let r = f(self);
        self.path.truncate(len);
        r
    }

    /// Runs `f` with `[i]` appended to the path.
    pub(crate) fn index<R>(&mut self, i: usize, f: impl FnOnce(&mut Self) -> R) -> R {
        let len = self.path.len();
        self.path.push_str(&format!("[{i}]"));
        let r = f(self);
        self.path.truncate(len);
        r
    }

    /// Runs `f` for every item of a list, each under its index.
    pub(crate) fn each<T>(&mut self, name: &str, items: &[T], mut f: impl FnMut(&mut Self, &T)) {
        self.field(name, |cx| {
            for (i, item) in items.iter().enumerate() {
                cx.index(i, |cx| f(cx, item));
            }
        });
    }

    /// Records an error at the current path.
    pub(crate) fn error(&mut self, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: self.path.clone(),
            message: message.into(),
        });
    }

    /// Records an error at `.name` below the current path.
    pub(crate) fn error_at(&mut self, name: &str, message: impl Into<String>) {
        self.field(name, |cx| cx.error(message));
    }

    /// Records `context: err` when `result` is an error.
    pub(crate) fn check<E: std::fmt::Display>(&mut self, result: Result<(), E>, context: &str) {
        if let Err(e) = result {
            self.error(format!("{context}: {e}"));
        }
    }

    /// A hostname (`reviews`, `reviews.default.svc.cluster.local`, `*.example.com`).
    pub(crate) fn hostname(&mut self, host: &str, allow_wildcard: bool) {
        if let Err(e) = naming::validate_hostname(host, allow_wildcard) {
            self.error(e.to_string());
        }
    }

    /// A port number in 1..=65535.
    pub(crate) fn port(&mut self, port: u32) {
        if !(1..=65535).contains(&port) {
            self.error(format!("port {port} is out of range 1-65535"));
        }
    }

    /// A percentage in 0..=100.
    pub(crate) fn percent(&mut self, p: &Percent) {
        if !(0.0..=100.0).contains(&p.value) {
            self.error_at("value", format!("percentage {} is outside 0-100", p.value));
        }
    }

    /// A regex in RE2 syntax that compiles within our size limits.
    pub(crate) fn regex(&mut self, pattern: &str) {
        if pattern.len() > MAX_REGEX_LEN {
            self.error(format!(
                "regex is {} bytes, over the {MAX_REGEX_LEN} byte limit",
                pattern.len()
            ));
            return;
        }
        if let Err(e) = regex::RegexBuilder::new(pattern)
            .size_limit(MAX_REGEX_PROGRAM)
            .build()
        {
            self.error(format!("invalid regex: {}", one_line(&e.to_string())));
        }
    }

    /// An Istio `StringMatch`: exactly one of exact, prefix, regex.
    pub(crate) fn string_match(&mut self, m: &StringMatch) {
        let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()];
        if set.iter().filter(|s| **s).count() != 1 {
            self.error("exactly one of exact, prefix or regex must be set");
        }
        if let Some(re) = &m.regex {
            self.field("regex", |cx| cx.regex(re));
        }
    }

    /// Kubernetes label keys and values.
    pub(crate) fn labels(
        &mut self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) {
        self.field(name, |cx| {
            for (k, v) in labels {
                cx.field(k, |cx| {
                    if let Err(msg) = label_key(k) {
                        cx.error(msg);
                    }
                    if let Err(msg) = label_value(v) {
                        cx.error(msg);
                    }
                });
            }
        });
    }

    /// `exportTo` entries: `.`, `*` or a namespace.
    pub(crate) fn export_to(&mut self, entries: &[String]) {
        self.each("exportTo", entries, |cx, e| {
            if e != "." && e != "*" && e != "~" {
                cx.check(
                    naming::validate_dns1123_label(e),
                    "exportTo must be ., *, ~ or a namespace",
                );
            }
        });
    }

    /// An IP address or CIDR block.
    pub(crate) fn ip_or_cidr(&mut self, s: &str) {
        if !is_ip_or_cidr(s) {
            self.error(format!("{s:?} is not an IP address or CIDR block"));
        }
    }

    /// A `host:port` address where host is an IP, a bracketed IPv6 or a DNS name.
    pub(crate) fn host_port(&mut self, s: &str) {
        match split_host_port(s) {
            Some((host, port)) => {
                if host.parse::<IpAddr>().is_err()
                    && let Err(e) = naming::validate_hostname(host, false)
                {
                    self.error(format!(
                        "address {s:?}: host is neither an IP nor a hostname: {e}"
                    ));
                }
                if port == 0 {
                    self.error(format!("address {s:?}: port 0 is out of range 1-65535"));
                }
            }
            None => self.error(format!("address {s:?} must be host:port (port 1-65535)")),
        }
    }
}

/// Splits `host:port` / `[v6]:port`.
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        (host, port)
    } else {
        s.rsplit_once(':')?
    };
    if host.is_empty() || host.contains(':') && !s.starts_with('[') {
        return None;
    }
    Some((host, port.parse().ok()?))
}

fn is_ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        Some((ip, bits)) => match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(b)) => b <= 32,
            (Ok(IpAddr::V6(_)), Ok(b)) => b <= 128,
            _ => false,
        },
        None => s.parse::<IpAddr>().is_ok(),
    }
}

/// A Kubernetes label key: optional DNS-subdomain prefix and a name of up to 63 characters.
pub(crate) fn label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = k.rsplit_once('/').unwrap_or(("", k));
    if !prefix.is_empty() && naming::validate_dns1123_subdomain(prefix).is_err() {
        return Err(format!("label key {k:?}: prefix must be a DNS subdomain"));
    }
    label_value(name).map_err(|_| format!("label key {k:?} is invalid"))?;
    if name.is_empty() {
        return Err(format!("label key {k:?} has an empty name"));
    }
    Ok(())
}

fn label_value(v: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let alnum_ends = v.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
        && v.chars().last().is_none_or(|c| c.is_ascii_alphanumeric());
    if v.len() > 63 || !v.chars().all(ok_char) || !alnum_ends {
        return Err(format!(
            "label value {v:?} must be at most 63 characters of [A-Za-z0-9-_.], alphanumeric at both ends"
        ));
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Checks `name` as a subset name.
pub(crate) fn subset_name(cx: &mut Ctx, name: &str) {
    if let Err(e) = naming::validate_dns1123_label(name) {
        cx.error(format!("invalid subset name {name:?}: {e}"));
    }
}
