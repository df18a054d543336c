//! Moving bytes between two connections once a proxy has decided where they
//! go: the gateway's SNI passthrough and the sidecar's TCP proxy both end in
//! [`splice`].
//!
//! [`splice`] copies both ways through one fixed buffer per direction (no
//! allocation per read), passes a half-close on (EOF from one side shuts
//! down the write half of the other, the other direction keeps flowing),
//! ends both directions after an idle timeout, and reports every chunk to a
//! [`Transfer`] observer so byte counters move while a long connection is
//! still open.
//!
//! How one direction moves its bytes is a [`Pump`]: [`Buffered`] copies
//! through user space and works on any stream; a proxy that knows both
//! ends are sockets can bring its own (the gateway's `splice(2)` through a
//! pipe) and keep the rest — both directions in one task, the idle timer,
//! counters and errors — from [`splice_with`].

mod splice;
#[cfg(test)]
mod tests;

use std::io;
use std::task::{Context, Poll};
use std::time::Duration;

pub use splice::{Buffered, splice, splice_with};

/// Default buffer size per direction: what HAProxy's `tune.bufsize` and
/// Envoy's per-connection buffer limits use by default.
pub const DEFAULT_BUFFER_SIZE: usize = 16 * 1024;

/// How a splice behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpliceConfig {
    /// Bytes buffered per direction (one read at most this large).
    pub buffer_size: usize,
    /// Both directions end when no byte moved either way for this long.
    /// `None` never times out.
    pub idle_timeout: Option<Duration>,
}

impl Default for SpliceConfig {
    /// 16 KiB per direction, 1 h idle timeout (Envoy's TCP proxy default).
    fn default() -> Self {
        Self {
            buffer_size: DEFAULT_BUFFER_SIZE,
            idle_timeout: Some(Duration::from_secs(3600)),
        }
    }
}

/// Which way bytes moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the first stream given to [`splice`] (the downstream client) to
    /// the second (the upstream).
    ToUpstream,
    /// From the second stream to the first.
    ToDownstream,
}

/// Sees every chunk a splice writes, as it is written (metrics, access logs).
pub trait Transfer {
    /// `bytes` were written in `direction`.
    fn transferred(&self, direction: Direction, bytes: u64);
}

/// No observer.
impl Transfer for () {
    fn transferred(&self, _: Direction, _: u64) {}
}

/// One direction of a splice: moves bytes from `reader` to `writer`, and
/// once the reader reached EOF and everything read was written, shuts the
/// writer's write half down.
pub trait Pump<R: ?Sized, W: ?Sized> {
    /// Moves what can be moved now and reports every write to `observer`.
    /// `Pending` once waiting for the reader or the writer (with `cx`
    /// registered); `Ready(Ok(()))` once the EOF was passed on, and again on
    /// every later call.
    fn poll_pump<T: Transfer + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        direction: Direction,
        observer: &T,
    ) -> Poll<Result<(), PumpError>>;

    /// Bytes written to the writer so far.
    fn written(&self) -> u64;
}

/// Which end of a [`Pump`] failed.
#[derive(Debug)]
pub enum PumpError {
    /// Reading from the reader.
    Read(io::Error),
    /// Writing to the writer, or shutting it down.
    Write(io::Error),
}

/// How a splice ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Both sides closed their write halves (EOF each way).
    Closed,
    /// No byte moved for the idle timeout.
    IdleTimeout,
}

/// What a splice moved, and how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpliceStats {
    /// Bytes written to the upstream (the second stream).
    pub to_upstream: u64,
    /// Bytes written to the downstream (the first stream).
    pub to_downstream: u64,
    /// Why it ended.
    pub end: SpliceEnd,
}

/// A splice that failed: which side, and what was moved until then.
#[derive(Debug, thiserror::Error)]
#[error("{side} connection failed after {to_upstream} bytes up, {to_downstream} bytes down")]
pub struct SpliceError {
    /// `downstream` or `upstream`: whose read, write or shutdown failed.
    pub side: &'static str,
    /// Bytes written to the upstream until then.
    pub to_upstream: u64,
    /// Bytes written to the downstream until then.
    pub to_downstream: u64,
    /// The I/O error.
    #[source]
    pub source: io::Error,
}
