//! Request path and host normalization, done once before any matching.
//!
//! Authorization is only sound if the authorizer and the application read the
//! same path. Attackers exploit every place where they could differ: `//admin`
//! and `%2F` (Istio CVE-2021-31920), a `#fragment` (CVE-2021-39156),
//! backslashes and `%5C`, dot segments (also percent-encoded), percent-encoded
//! letters (`/%61dmin`). [`normalize_path`] closes these the way Envoy does
//! with Istio's `DECODE_AND_MERGE_SLASHES` path normalization, in this order:
//!
//! 1. the request target is rejected if it holds a byte outside printable
//!    ASCII (controls, NUL, space, DEL, non-ASCII);
//! 2. the `#fragment` is dropped and the query (after the first `?`) is set
//!    aside, unchanged: matching uses the path alone;
//! 3. the path must start with `/` (`*` is accepted for `OPTIONS`);
//! 4. percent-encodings are decoded when they stand for unreserved characters
//!    (`A-Z a-z 0-9 - . _ ~`); `%2F`, `%5C` and a raw `\` become `/`; `%00` and
//!    malformed escapes are rejected; other escapes are kept, in upper case;
//! 5. repeated slashes are merged, then `.` and `..` segments are resolved as
//!    RFC 3986 says, never climbing above the root. A trailing slash is kept.
//!
//! Merging slashes before resolving dots means an empty segment can never
//! absorb a `..` (`/a//../b` is `/b`). The result is a fixed point: normalizing
//! it again changes nothing. The caller must forward the *normalized* path
//! upstream (as Envoy does), so the application sees what was authorized.
//!
//! Hosts ([`normalize_host`]) are lower-cased with the port and trailing dots
//! removed, so `ADMIN.example.com.:8080` is `admin.example.com`
//! (CVE-2021-39155: hosts are compared case-insensitively).

use http::{Method, StatusCode};

/// A request path after [`normalize_path`], with its query kept apart.
///
/// Only `normalize_path` makes one, so holding a `NormalizedPath` proves the
/// path was normalized.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NormalizedPath {
    path: String,
    query: Option<String>,
}

impl NormalizedPath {
    /// The normalized path, without query or fragment: what policies match.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw query string (after `?`, not decoded), if the target had one.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// Whether [`request_target`](Self::request_target) is `raw` as it
    /// came: normalizing changed nothing, so the request's own target can be
    /// forwarded. Compares without building the target.
    pub fn is_target(&self, raw: &str) -> bool {
        match &self.query {
            None => raw == self.path,
            Some(q) => raw
                .strip_prefix(self.path.as_str())
                .and_then(|rest| rest.strip_prefix('?'))
                .is_some_and(|rest| rest == q),
        }
    }

    /// `path?query`: the request target to forward upstream.
    pub fn request_target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Why a request target was refused; the request is answered with 400.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A byte that has no place in a request target (control, space, non-ASCII).
    #[error("request target has byte {byte:#04x} at offset {offset}")]
    InvalidByte {
        /// Offset of the byte in the request target.
        offset: usize,
        /// The byte.
        byte: u8,
    },
    /// A `%` not followed by two hex digits.
    #[error("request target has a malformed percent-encoding at offset {offset}")]
    BadPercentEncoding {
        /// Offset of the `%` in the request target.
        offset: usize,
    },
    /// `%00`, which many applications read as the end of the path.
    #[error("request target has an encoded NUL (%00) at offset {offset}")]
    EncodedNul {
        /// Offset of the `%` in the request target.
        offset: usize,
    },
    /// The path does not start with `/` (and is not `*` with `OPTIONS`).
    #[error("request path must start with '/' (or be '*' for OPTIONS)")]
    NotOriginForm,
}

impl PathError {
    /// The HTTP status to answer with: always 400 Bad Request.
    pub fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }
}

/// Normalizes a request target (`path[?query][#fragment]`, as received) for
/// matching and forwarding; see the module docs for the steps.
pub fn normalize_path(raw: &str, method: &Method) -> Result<NormalizedPath, PathError> {
    if let Some((offset, byte)) = raw
        .bytes()
        .enumerate()
        .find(|(_, b)| !(0x21..=0x7e).contains(b))
    {
        return Err(PathError::InvalidByte { offset, byte });
    }
    if raw == "*" && method == Method::OPTIONS {
        return Ok(NormalizedPath {
            path: raw.to_owned(),
            query: None,
        });
    }
    let target = raw.split_once('#').map_or(raw, |(t, _)| t);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if is_normal(path) {
        // Nothing to decode, merge or resolve: the path is its own normal form.
        return Ok(NormalizedPath {
            path: path.to_owned(),
            query,
        });
    }
    let decoded = decode(path)?;
    Ok(NormalizedPath {
        path: resolve_segments(&decoded),
        query,
    })
}

/// Whether steps 4 and 5 would leave `path` (which starts with `/`) as it
/// is: no escape or backslash to decode, no empty segment but a trailing
/// one, no `.` or `..` segment.
fn is_normal(path: &str) -> bool {
    if path.bytes().any(|b| b == b'%' || b == b'\\') {
        return false;
    }
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == "." || segment == ".." || (segment.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// Step 4: decodes unreserved escapes and turns every separator spelling into `/`.
fn decode(path: &str) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|&h| hex_value(h));
                let lo = bytes.get(i + 2).and_then(|&l| hex_value(l));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::BadPercentEncoding { offset: i });
                };
                match (hi << 4) | lo {
                    0 => return Err(PathError::EncodedNul { offset: i }),
                    b'/' | b'\\' => out.push('/'),
                    c if is_unreserved(c) => out.push(char::from(c)),
                    _ => {
                        out.push('%');
                        out.push(char::from(HEX[usize::from(hi)]));
                        out.push(char::from(HEX[usize::from(lo)]));
                    }
                }
                i += 3;
            }
            b'\\' => {
                out.push('/');
                i += 1;
            }
            _ => {
                out.push(char::from(b));
                i += 1;
            }
        }
    }
    Ok(out)
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// RFC 3986 unreserved characters.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Step 5: merges slashes and resolves dot segments of a path starting with `/`.
fn resolve_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    // Whether the path ends in a directory (trailing `/`, `.` or `..`).
    let mut trailing = false;
    for segment in path.split('/').skip(1) {
        match segment {
            "" | "." => trailing = true,
            ".." => {
                kept.pop();
                trailing = true;
            }
            s => {
                kept.push(s);
                trailing = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &kept {
        out.push('/');
        out.push_str(s);
    }
    if trailing || kept.is_empty() {
        out.push('/');
    }
    out
}

/// A `Host`/`:authority` value after [`normalize_host`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NormalizedHost {
    name: String,
    port: Option<u16>,
}

impl NormalizedHost {
    /// The normalized host: lower case, no port, no trailing dot.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The port the client wrote after the host, if it was a number.
    pub fn port(&self) -> Option<u16> {
        self.port
    }
}

/// Normalizes a `Host`/`:authority` for comparison: splits off the port
/// (keeping an IPv6 literal's brackets), drops trailing dots and lower-cases
/// ASCII. `ADMIN.example.com.:8080` is `admin.example.com`, port 8080.
///
/// The authorizer matches policy `hosts` against the host with and without
/// the port, so `hosts: [a.com]` covers `a.com:8080` (adding a port cannot
/// dodge a DENY) and `hosts: [a.com:8080]` still means what it says.
pub fn normalize_host(raw: &str) -> NormalizedHost {
    let (host, port) = if raw.starts_with('[') {
        match raw.find(']') {
            Some(end) => (&raw[..=end], raw[end + 1..].strip_prefix(':')),
            None => (raw, None),
        }
    } else {
        match raw.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (raw, None),
        }
    };
    NormalizedHost {
        name: host.trim_end_matches('.').to_ascii_lowercase(),
        port: port.and_then(|p| p.parse().ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortcut for paths already normal gives what the full steps 4
    /// and 5 give, over every path of up to four segments drawn from the
    /// spellings that matter (escapes, backslashes, dots, empty segments).
    #[test]
    fn the_shortcut_for_normal_paths_agrees_with_decoding_and_resolving() {
        const PIECES: [&str; 12] = [
            "a", "b.c", "", ".", "..", "%2F", "%2f", "%5C", "%61", "%41%42", "\\", ".a",
        ];
        let mut paths = vec![String::from("/")];
        let mut frontier = vec![String::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for p in &frontier {
                for piece in PIECES {
                    let q = format!("{p}/{piece}");
                    paths.push(q.clone());
                    next.push(q);
                }
            }
            frontier = next;
        }
        let mut shortcut = 0;
        for path in &paths {
            let full = decode(path).map(|d| resolve_segments(&d));
            if is_normal(path) {
                shortcut += 1;
                assert_eq!(full.as_deref(), Ok(path.as_str()), "{path:?}");
            }
            let got = normalize_path(path, &Method::GET).map(|n| n.path().to_owned());
            assert_eq!(got, full, "{path:?}");
        }
        assert!(shortcut > 100, "the shortcut was taken {shortcut} times");
    }

    #[test]
    fn a_target_is_recognized_when_normalizing_left_it_unchanged() {
        for (raw, same) in [
            ("/a/b", true),
            ("/a/b?x=1&y", true),
            ("/a/b?", true),
            ("/a/./b", false),
            ("/a//b?x", false),
            ("/a/b#frag", false),
            ("/a/b?x#frag", false),
            ("/%61", false),
        ] {
            let n = normalize_path(raw, &Method::GET).expect(raw);
            assert_eq!(n.is_target(raw), same, "{raw:?}");
            assert_eq!(n.is_target(raw), n.request_target() == raw, "{raw:?}");
        }
    }
}
