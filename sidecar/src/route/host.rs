//! Virtual host selection by `:authority` (Envoy's domain matching).

use std::collections::HashMap;

use super::error::{Cx, RouteError};

/// Domains of every virtual host, indexed for lookup: exact names in a hash
/// map, wildcard suffixes (`*.foo`) and prefixes (`foo.*`) in hash maps per
/// length, longest first, and the `*` host. All lower-case.
#[derive(Debug, Default)]
pub(crate) struct DomainIndex {
    exact: HashMap<Box<str>, usize>,
    suffixes: Vec<(usize, HashMap<Box<str>, usize>)>,
    prefixes: Vec<(usize, HashMap<Box<str>, usize>)>,
    any: Option<usize>,
    ignore_port: bool,
}

impl DomainIndex {
    pub(crate) fn new(ignore_port: bool) -> DomainIndex {
        DomainIndex {
            ignore_port,
            ..DomainIndex::default()
        }
    }

    /// Adds virtual host `vhost`'s domains. Envoy's rules: at least one
    /// domain, `*` only alone or at one end, each domain in one virtual host.
    pub(crate) fn add(
        &mut self,
        vhost: usize,
        domains: &[String],
        cx: &Cx,
    ) -> Result<(), RouteError> {
        if domains.is_empty() {
            return Err(cx.field("domains").invalid("must have at least one domain"));
        }
        for (i, domain) in domains.iter().enumerate() {
            let cx = cx.field("domains").index(i);
            let d = domain.to_ascii_lowercase();
            let stars = d.matches('*').count();
            let slot = if d == "*" {
                self.any.get_or_insert(vhost)
            } else if stars == 1 && d.len() > 1 && d.starts_with('*') {
                let key: Box<str> = d[1..].into();
                by_len(&mut self.suffixes, key.len())
                    .entry(key)
                    .or_insert(vhost)
            } else if stars == 1 && d.len() > 1 && d.ends_with('*') {
                let key: Box<str> = d[..d.len() - 1].into();
                by_len(&mut self.prefixes, key.len())
                    .entry(key)
                    .or_insert(vhost)
            } else if stars == 0 && !d.is_empty() {
                self.exact.entry(d.into()).or_insert(vhost)
            } else {
                let reason = format!("{domain:?}: a wildcard is '*' alone, or at the start or end");
                return Err(cx.invalid(reason));
            };
            if *slot != vhost || domains[..i].iter().any(|p| p.eq_ignore_ascii_case(domain)) {
                let reason = format!("{domain:?} is in more than one virtual host or listed twice");
                return Err(cx.invalid(reason));
            }
        }
        Ok(())
    }

    /// The virtual host for `authority`: exact, then the longest suffix
    /// wildcard, then the longest prefix wildcard, then `*`. At each step the
    /// authority is tried as given, then without its port, so `a.b:80`
    /// matches domain `a.b:80` or `a.b`. Lower-cases without allocating for
    /// authorities up to 255 bytes.
    pub(crate) fn lookup(&self, authority: &str) -> Option<usize> {
        with_lowercase(authority, |host| {
            let host = if self.ignore_port {
                without_port(host).unwrap_or(host)
            } else {
                host
            };
            let bare = without_port(host);
            let both = |f: &dyn Fn(&str) -> Option<usize>| f(host).or_else(|| bare.and_then(f));
            both(&|h| self.exact.get(h).copied())
                .or_else(|| both(&|h| wildcard(&self.suffixes, h, |h, n| h.get(h.len() - n..))))
                .or_else(|| both(&|h| wildcard(&self.prefixes, h, |h, n| h.get(..n))))
                .or(self.any)
        })
    }
}

/// The map for wildcards of length `len`, keeping the list longest first.
fn by_len(
    list: &mut Vec<(usize, HashMap<Box<str>, usize>)>,
    len: usize,
) -> &mut HashMap<Box<str>, usize> {
    let at = list.partition_point(|(l, _)| *l > len);
    if list.get(at).is_none_or(|(l, _)| *l != len) {
        list.insert(at, (len, HashMap::new()));
    }
    &mut list[at].1
}

/// The longest wildcard matching `host`; the `*` stands for at least one character.
fn wildcard(
    list: &[(usize, HashMap<Box<str>, usize>)],
    host: &str,
    part: fn(&str, usize) -> Option<&str>,
) -> Option<usize> {
    list.iter()
        .filter(|(len, _)| host.len() > *len)
        .find_map(|(len, map)| map.get(part(host, *len)?).copied())
}

/// `host` without a trailing `:port` (`[v6]:port` too); `None` when there is none.
pub(crate) fn without_port(host: &str) -> Option<&str> {
    let colon = if host.starts_with('[') {
        host.rfind("]:")? + 1
    } else {
        let i = host.rfind(':')?;
        if host[..i].contains(':') {
            return None; // A bare IPv6 address.
        }
        i
    };
    let port = &host[colon + 1..];
    (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())).then(|| &host[..colon])
}

/// Calls `f` with `s` in ASCII lower case, copying only when needed, on the
/// stack when short.
fn with_lowercase<R>(s: &str, f: impl FnOnce(&str) -> R) -> R {
    if !s.bytes().any(|b| b.is_ascii_uppercase()) {
        return f(s);
    }
    let mut buf = [0u8; 255];
    if let Some(dst) = buf.get_mut(..s.len()) {
        dst.copy_from_slice(s.as_bytes());
        dst.make_ascii_lowercase();
        // ASCII lower-casing keeps UTF-8 valid.
        if let Ok(lower) = std::str::from_utf8(dst) {
            return f(lower);
        }
    }
    f(&s.to_ascii_lowercase())
}
