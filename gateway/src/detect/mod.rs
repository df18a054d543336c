//! Stage 1 of a connection: read the TLS ClientHello, without terminating
//! TLS, to learn the SNI (routing) and ALPN (metrics).
//!
//! The bytes are read into a buffer, not peeked with `MSG_PEEK`: a peek
//! returns the same bytes again while a fragment is still incomplete, so
//! waiting for "more" means polling, and the peeked bytes would sit in the
//! socket buffer regardless. Read bytes are replayed to the upstream
//! unchanged before the splice starts (one write of at most
//! [`DEFAULT_MAX_HELLO`] bytes).

mod client_hello;
#[cfg(test)]
mod tests;

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

pub use client_hello::{ClientHello, HelloError, Reassembler};

/// The largest ClientHello accepted, record headers included (16 KiB:
/// browsers' post-quantum key shares take ~1.8 KiB, Envoy's TLS inspector
/// allows 16 KiB).
pub const DEFAULT_MAX_HELLO: usize = 16 * 1024;
/// How long a client gets to send its whole ClientHello.
pub const DEFAULT_PEEK_TIMEOUT: Duration = Duration::from_secs(10);
/// The first read's size; most ClientHellos fit.
const FIRST_READ: usize = 2048;

/// Why no ClientHello was read.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The bytes are not (or not yet, within the limit) a ClientHello.
    #[error(transparent)]
    Hello(#[from] HelloError),
    /// The whole ClientHello did not arrive in time.
    #[error("no complete ClientHello within {0:?}")]
    Timeout(Duration),
    /// The client closed before its ClientHello was complete.
    #[error("client closed after {0} bytes, before its ClientHello was complete")]
    Closed(usize),
    /// Reading failed.
    #[error("reading the ClientHello")]
    Io(#[source] io::Error),
}

impl DetectError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DetectError::Hello(HelloError::NotTls) => "not_tls",
            DetectError::Hello(HelloError::NotClientHello) => "not_client_hello",
            DetectError::Hello(HelloError::TooLarge) => "client_hello_too_large",
            DetectError::Hello(HelloError::Malformed(_)) => "malformed_client_hello",
            DetectError::Timeout(_) => "client_hello_timeout",
            DetectError::Closed(_) => "closed_before_client_hello",
            DetectError::Io(_) => "client_read_error",
        }
    }
}

/// Reads from `stream` into `buf` until the ClientHello is complete, at
/// most `max` bytes, within `timeout` in total (a client sending a byte a
/// second gains nothing). On success `buf` holds every byte read, which
/// may go beyond the ClientHello.
///
/// # Errors
/// See [`DetectError`].
pub async fn read_client_hello<S>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    max: usize,
    timeout: Duration,
) -> Result<ClientHello, DetectError>
where
    S: AsyncRead + Unpin + ?Sized,
{
    let read = async {
        let mut reassembler = Reassembler::new(max);
        loop {
            let len = buf.len();
            let want = if len == 0 { FIRST_READ } else { len };
            let want = want.min(max - len);
            buf.resize(len + want, 0);
            let n = stream.read(&mut buf[len..]).await;
            buf.truncate(len + *n.as_ref().unwrap_or(&0));
            match n {
                Ok(0) => return Err(DetectError::Closed(len)),
                Ok(_) => {}
                Err(e) => return Err(DetectError::Io(e)),
            }
            if let Some(hello) = reassembler.advance(buf)? {
                return Ok(hello);
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(DetectError::Timeout(timeout)))
}

/// Hidden entry points for the fuzz targets (`gateway/fuzz`).
#[doc(hidden)]
pub mod internal {
    pub use super::client_hello::parse_in_pieces;
}
