//! A TLS ClientHello parser that reads only what routing needs (SNI, ALPN)
//! and is strict about everything it walks over.
//!
//! Why our own and not `tls-parser` (rusticata, well kept): reassembling
//! the handshake from records is ours either way (tls-parser parses one
//! record at a time); past that we need ~100 lines of length-prefixed
//! walking, while tls-parser decodes every extension into allocated typed
//! values and its `many0` extension loop stops silently at the first
//! extension it cannot decode, so "no SNI" and "malformed" look alike. It
//! also brings nom-derive, num_enum and phf (with a build script) into the
//! gateway. The fuzz target (`gateway/fuzz`) checks that this parser never
//! panics and answers the same however TCP cuts the bytes.
//!
//! Strictness (RFC 8446 §4.1.2, §4.2, §5.1; RFC 6066 §3): handshake records
//! only, no empty records, record version 3.x, no duplicate extensions, one
//! host name, exact lengths at every level, host names of DNS characters.
//!
//! This file depends on `std` only: the fuzz target includes it by path, so
//! a fuzz build compiles in seconds instead of building the whole gateway.

use std::fmt;

/// TLS record content type `handshake`.
const HANDSHAKE: u8 = 22;
/// Handshake message type `client_hello`.
const CLIENT_HELLO: u8 = 1;
/// Largest record payload (2^14).
const MAX_RECORD: usize = 1 << 14;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

/// What routing needs from a ClientHello.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The `host_name` of the server_name extension, lowercased.
    pub sni: Option<String>,
    /// ALPN protocol names offered, in order (lossy UTF-8).
    pub alpn: Vec<String>,
}

/// Why the bytes are not a ClientHello we route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloError {
    /// The first record is not a TLS handshake record (plain text, HTTP,
    /// SSLv2, ...).
    NotTls,
    /// The first handshake message is not a ClientHello.
    NotClientHello,
    /// The ClientHello does not fit in the limit.
    TooLarge,
    /// Broken framing or contents.
    Malformed(&'static str),
}

impl fmt::Display for HelloError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HelloError::NotTls => f.write_str("not a TLS handshake"),
            HelloError::NotClientHello => {
                f.write_str("first handshake message is not a ClientHello")
            }
            HelloError::TooLarge => f.write_str("ClientHello larger than the limit"),
            HelloError::Malformed(what) => write!(f, "malformed ClientHello: {what}"),
        }
    }
}

impl std::error::Error for HelloError {}

/// Collects the ClientHello from records as bytes arrive: feed it the
/// whole buffer read so far; each record is looked at once, so a client
/// that sends one byte at a time costs linear work.
#[derive(Debug)]
pub struct Reassembler {
    max: usize,
    /// Raw bytes of complete records consumed so far.
    consumed: usize,
    /// Handshake bytes from those records.
    handshake: Vec<u8>,
}

impl Reassembler {
    /// A reassembler that gives up once the ClientHello (with its record
    /// headers) would exceed `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            consumed: 0,
            handshake: Vec::new(),
        }
    }

    /// Looks at `input` (everything read so far, a prefix of what comes
    /// next): the ClientHello once complete, `None` while more is needed.
    ///
    /// # Errors
    /// As soon as the bytes cannot become a ClientHello within the limit.
    pub fn advance(&mut self, input: &[u8]) -> Result<Option<ClientHello>, HelloError> {
        // Bytes past the limit never count, however they were delivered
        // (found by the fuzz target: a header straddling the limit gave a
        // different error depending on where TCP cut the bytes).
        let input = &input[..input.len().min(self.max)];
        while let Some(header) = input.get(self.consumed..self.consumed + 5) {
            let first = self.consumed == 0;
            if header[0] != HANDSHAKE {
                return Err(if first {
                    HelloError::NotTls
                } else {
                    HelloError::Malformed("a non-handshake record inside the ClientHello")
                });
            }
            // legacy_record_version: 3.0 (some clients' first record) to 3.4.
            if header[1] != 3 || header[2] > 4 {
                return Err(if first {
                    HelloError::NotTls
                } else {
                    HelloError::Malformed("record version")
                });
            }
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if len == 0 {
                return Err(HelloError::Malformed("empty handshake record"));
            }
            if len > MAX_RECORD {
                return Err(HelloError::Malformed("record longer than 2^14 bytes"));
            }
            let end = self.consumed + 5 + len;
            if end > self.max {
                return Err(HelloError::TooLarge);
            }
            let Some(payload) = input.get(self.consumed + 5..end) else {
                break;
            };
            self.handshake.extend_from_slice(payload);
            self.consumed = end;
            if let Some(hello) = self.complete()? {
                return Ok(Some(hello));
            }
        }
        if input.len() >= self.max {
            return Err(HelloError::TooLarge);
        }
        Ok(None)
    }

    /// The ClientHello if the handshake bytes hold all of it.
    fn complete(&self) -> Result<Option<ClientHello>, HelloError> {
        let Some(header) = self.handshake.get(..4) else {
            return Ok(None);
        };
        if header[0] != CLIENT_HELLO {
            return Err(HelloError::NotClientHello);
        }
        let len =
            (usize::from(header[1]) << 16) | (usize::from(header[2]) << 8) | usize::from(header[3]);
        if len + 4 > self.max {
            return Err(HelloError::TooLarge);
        }
        match self.handshake.get(4..4 + len) {
            Some(body) => parse_body(body).map(Some),
            None => Ok(None),
        }
    }
}

/// Bounds-checked reads over a slice; every failure is "truncated".
struct Reader<'a>(&'a [u8]);

const TRUNCATED: HelloError = HelloError::Malformed("length beyond the end of its field");

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HelloError> {
        if n > self.0.len() {
            return Err(TRUNCATED);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, HelloError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, HelloError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length.
    fn vec8(&mut self) -> Result<&'a [u8], HelloError> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// A vector with a two-byte length.
    fn vec16(&mut self) -> Result<&'a [u8], HelloError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The ClientHello body (after the 4-byte handshake header).
fn parse_body(body: &[u8]) -> Result<ClientHello, HelloError> {
    let mut r = Reader(body);
    let _legacy_version = r.u16()?;
    let _random = r.take(32)?;
    if r.vec8()?.len() > 32 {
        return Err(HelloError::Malformed("session id longer than 32 bytes"));
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloError::Malformed("cipher suites"));
    }
    if r.vec8()?.is_empty() {
        return Err(HelloError::Malformed("no compression methods"));
    }
    let mut hello = ClientHello::default();
    if r.is_empty() {
        // A TLS 1.2 ClientHello may have no extensions at all: no SNI.
        return Ok(hello);
    }
    let mut extensions = Reader(r.vec16()?);
    if !r.is_empty() {
        return Err(HelloError::Malformed("bytes after the extensions"));
    }
    let mut seen = Vec::new();
    while !extensions.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        seen.push(kind);
        match kind {
            EXT_SERVER_NAME => hello.sni = Some(server_name(data)?),
            EXT_ALPN => hello.alpn = alpn(data)?,
            _ => {}
        }
    }
    seen.sort_unstable();
    if seen.windows(2).any(|w| w[0] == w[1]) {
        return Err(HelloError::Malformed("an extension appears twice"));
    }
    Ok(hello)
}

/// RFC 6066 §3: a list of (name_type, name); exactly one host_name.
fn server_name(data: &[u8]) -> Result<String, HelloError> {
    let mut outer = Reader(data);
    let mut list = Reader(outer.vec16()?);
    if !outer.is_empty() {
        return Err(HelloError::Malformed("bytes after the server name list"));
    }
    let mut host = None;
    while !list.is_empty() {
        let name_type = list.u8()?;
        let name = list.vec16()?;
        if name_type != 0 {
            continue;
        }
        if host.is_some() {
            return Err(HelloError::Malformed("two host names"));
        }
        let valid = !name.is_empty()
            && name.len() <= 255
            && name
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !valid {
            return Err(HelloError::Malformed("server name is not a DNS host name"));
        }
        host = Some(String::from_utf8_lossy(name).to_ascii_lowercase());
    }
    host.ok_or(HelloError::Malformed(
        "server_name extension without a host name",
    ))
}

/// RFC 7301 §3.1: a non-empty list of non-empty names.
fn alpn(data: &[u8]) -> Result<Vec<String>, HelloError> {
    let mut outer = Reader(data);
    let mut list = Reader(outer.vec16()?);
    if !outer.is_empty() || list.is_empty() {
        return Err(HelloError::Malformed("ALPN list"));
    }
    let mut names = Vec::new();
    while !list.is_empty() {
        let name = list.vec8()?;
        if name.is_empty() {
            return Err(HelloError::Malformed("empty ALPN protocol name"));
        }
        names.push(String::from_utf8_lossy(name).into_owned());
    }
    Ok(names)
}

/// Feeds `data` to a reassembler in pieces cut at `cuts` (positions, any
/// order, out-of-range ones ignored), as TCP might deliver it. For the fuzz
/// target and tests.
#[doc(hidden)]
pub fn parse_in_pieces(
    data: &[u8],
    cuts: &[usize],
    max: usize,
) -> Result<Option<ClientHello>, HelloError> {
    let mut cuts: Vec<usize> = cuts.iter().copied().filter(|&c| c < data.len()).collect();
    cuts.sort_unstable();
    cuts.push(data.len());
    let mut r = Reassembler::new(max);
    for end in cuts {
        if let Some(hello) = r.advance(&data[..end])? {
            return Ok(Some(hello));
        }
    }
    Ok(None)
}
