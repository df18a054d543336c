//! How a connection's bytes move after the ClientHello: small messages
//! copied through the stack, bulk through a buffer made when bulk starts
//! (or, with `--zero-copy on`, moved by `splice(2)` through a pipe).
//!
//! Each direction starts by copying: a read of up to 16 KiB into a stack
//! buffer, written straight on — two system calls per message (tokio skips
//! the read that would find the socket empty when a read comes back short),
//! and no memory of the connection's own while it moves only messages. A
//! read that fills the stack buffer means bulk: the direction then reads
//! into its bulk store, writes it all out, reads again — 64 KiB per read
//! and write by default, a quarter of HAProxy's system calls — until a read
//! brings less than 4 KiB: messages again, and the store is given back
//! once empty (a pipe is kept). A FIN already seen when a short read
//! starts ends the direction without a read of its own, and the second
//! direction to end leaves its FIN to the close, as HAProxy does: a new
//! connection's TLS handshake and one request take 24 system calls, as
//! many as HAProxy's. The rest (both directions in one task, idle timer,
//! counters, errors) is `proxy-core`'s [`splice_with`].
//!
//! Copy or splice: against a copy through 64 KiB, `splice(2)` saves little
//! of the gateway's own CPU (338–359 against 345–359 ms per GB on the
//! benchmark), and where the sender or the receiver is on the same host
//! (loopback, a pod's veth) it costs them more: the receiver 10–20 % more
//! CPU per GB, the sender up to 15 % more. On the benchmark's two shared
//! cores that made splicing move 0.90–1.02× HAProxy's bulk where the copy
//! moved 1.02–1.20× (`docs/benchmarks/gateway.md`, runs B2 and B3). So
//! copying is the default.
//!
//! Splicing needs Linux, and runs only once the replayed ClientHello is
//! written: the sockets' kernel queues then hold exactly what has not been
//! forwarded. Without a pipe (out of file descriptors, or not Linux) a
//! direction copies its bulk through a buffer of the pipe's size.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use isthmus_proxy_core::transport::{
    Direction, Pump, PumpError, SpliceError, SpliceStats, Transfer, splice_with,
};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// How a direction moves bulk, once a read filled the stack buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bulk {
    /// Copied through a buffer of this many bytes, made when bulk starts
    /// and given back when messages resume.
    Copy(usize),
    /// Moved by `splice(2)` through a pipe of this many bytes (rounded up
    /// by the kernel to a power of two pages), made when bulk first starts
    /// and kept (Linux; elsewhere copied through a buffer of that size).
    Splice(usize),
}

/// Moves bytes both ways between `client` and `server` until both closed,
/// `idle_timeout` without traffic, or an error: small messages copied
/// through the stack, bulk as `bulk` says.
///
/// # Errors
/// The first I/O error, naming the side (see [`SpliceError`]).
pub(crate) async fn splice_sockets<T: Transfer + ?Sized>(
    client: &mut TcpStream,
    server: &mut TcpStream,
    idle_timeout: Option<Duration>,
    bulk: Bulk,
    observer: &T,
) -> Result<SpliceStats, SpliceError> {
    let (up, down) = AdaptivePump::pair(bulk);
    splice_with(client, server, up, down, idle_timeout, observer).await
}

/// A copy read of at most this many bytes (HAProxy's `tune.bufsize`); one
/// that fills it sends the direction to its bulk store.
pub(super) const COPY_SIZE: usize = 16 * 1024;

/// A read into the bulk store shorter than this sends the direction back
/// to copying messages.
pub(super) const SMALL_READ: usize = 4 * 1024;

/// Where a direction's bulk waits between its read and its write.
#[derive(Debug)]
enum Store {
    Buffer(Box<[u8]>),
    #[cfg(any(target_os = "linux", target_os = "android"))]
    Pipe(pipe::Pipe),
}

impl Store {
    fn new(bulk: Bulk) -> Self {
        match bulk {
            Bulk::Copy(size) => Store::Buffer(vec![0; size.max(1)].into_boxed_slice()),
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Bulk::Splice(size) => match pipe::Pipe::new(size) {
                Ok(pipe) => Store::Pipe(pipe),
                Err(e) => {
                    tracing::debug!(error = %e, "no pipe for splice(2); copying instead");
                    Store::new(Bulk::Copy(size))
                }
            },
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            Bulk::Splice(size) => Store::new(Bulk::Copy(size)),
        }
    }

    /// Bytes one read may bring.
    fn capacity(&self) -> usize {
        match self {
            Store::Buffer(buf) => buf.len(),
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Store::Pipe(pipe) => pipe.capacity,
        }
    }
}

/// One direction: small reads copied through the stack, bulk through a
/// store made when first needed (fill the empty store from the reader,
/// write it all to the writer, repeat); on EOF shut the writer down.
///
/// Reading into the store only when it is empty means a reader's
/// `EAGAIN` always means "socket empty", never "store full", so clearing
/// the socket's readiness on it is right (no lost wakeup, no busy loop).
/// A read that comes back short clears it too (tokio's `poll_read`): a
/// short TCP read took all there was.
#[derive(Debug)]
pub(super) struct AdaptivePump {
    /// How bulk moves.
    via: Bulk,
    store: Option<Store>,
    /// The last read filled what it was offered: read into the store next.
    bulk: bool,
    /// What a copy read got that the writer has not taken yet (only
    /// when the writer pushed back).
    pending: Vec<u8>,
    pending_from: usize,
    /// Bytes read into the store, not yet written out, from `from` (a
    /// buffer's offset; a pipe's are always at its head).
    queued: usize,
    from: usize,
    eof: bool,
    done: bool,
    written: u64,
    /// Bytes written from the store (the rest was copied through the stack).
    stored: u64,
    /// Set by the first of the connection's two pumps to finish.
    one_finished: Arc<AtomicBool>,
}

impl AdaptivePump {
    /// The two directions of one connection, whose bulk moves as `via`
    /// says. The second to reach EOF does not shut its writer down: both
    /// sockets are closed right after (the gateway's connection ends with
    /// the splice), and closing sends the FIN — one system call less per
    /// connection, and none that fails with `ENOTCONN` on a peer already
    /// gone.
    pub(super) fn pair(via: Bulk) -> (Self, Self) {
        let one_finished = Arc::new(AtomicBool::new(false));
        (
            Self::new(via, one_finished.clone()),
            Self::new(via, one_finished),
        )
    }

    /// A pump whose bulk moves as `via` says; `one_finished` is shared with
    /// the other direction's.
    pub(super) fn new(via: Bulk, one_finished: Arc<AtomicBool>) -> Self {
        Self {
            via,
            store: None,
            bulk: false,
            pending: Vec::new(),
            pending_from: 0,
            queued: 0,
            from: 0,
            eof: false,
            done: false,
            written: 0,
            stored: 0,
            one_finished,
        }
    }

    /// Whether the direction holds a bulk store now, and the bytes that
    /// went through one.
    #[cfg(test)]
    pub(super) fn stored(&self) -> (bool, u64) {
        (self.store.is_some(), self.stored)
    }

    /// `bytes[*from..]` → `writer`, advancing `from`, until all is written
    /// or the writer pushes back.
    fn poll_write_from<T: Transfer + ?Sized>(
        cx: &mut Context<'_>,
        writer: &mut TcpStream,
        bytes: &[u8],
        from: &mut usize,
        written: &mut u64,
        direction: Direction,
        observer: &T,
    ) -> Poll<io::Result<()>> {
        while *from < bytes.len() {
            let n = ready!(Pin::new(&mut *writer).poll_write(cx, &bytes[*from..]))?;
            if n == 0 {
                let e = io::Error::new(io::ErrorKind::WriteZero, "write returned 0 bytes");
                return Poll::Ready(Err(e));
            }
            *from += n;
            *written += n as u64;
            observer.transferred(direction, n as u64);
        }
        Poll::Ready(Ok(()))
    }

    /// What a copy read got → `writer`; what the writer does not take now
    /// waits in `pending`.
    fn poll_write_read<T: Transfer + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut TcpStream,
        read: &[u8],
        direction: Direction,
        observer: &T,
    ) -> Poll<io::Result<()>> {
        let mut from = 0;
        let written = &mut self.written;
        let result =
            Self::poll_write_from(cx, writer, read, &mut from, written, direction, observer);
        if result.is_pending() {
            self.pending.extend_from_slice(&read[from..]);
            self.pending_from = 0;
        }
        result
    }

    /// `pending` → `writer` until it is empty.
    fn poll_write_pending<T: Transfer + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut TcpStream,
        direction: Direction,
        observer: &T,
    ) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let (pending, from, written) = (&self.pending, &mut self.pending_from, &mut self.written);
        ready!(Self::poll_write_from(
            cx, writer, pending, from, written, direction, observer
        ))?;
        // Rare (a writer that pushed back): give the memory back.
        self.pending = Vec::new();
        self.pending_from = 0;
        Poll::Ready(Ok(()))
    }

    /// Store → `writer` until the store is empty.
    fn poll_drain<T: Transfer + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut TcpStream,
        direction: Direction,
        observer: &T,
    ) -> Poll<io::Result<()>> {
        while self.queued > 0 {
            let n = match &self.store {
                Some(Store::Buffer(buf)) => {
                    let bytes = &buf[self.from..self.from + self.queued];
                    ready!(Pin::new(&mut *writer).poll_write(cx, bytes))?
                }
                #[cfg(any(target_os = "linux", target_os = "android"))]
                Some(Store::Pipe(pipe)) => match ready!(pipe.poll_drain(cx, writer, self.queued)) {
                    Ok(n) => n,
                    // Readiness is cleared: the next poll waits for it.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                },
                None => return Poll::Ready(Err(io::Error::other("bytes queued without a store"))),
            };
            if n == 0 {
                let e = io::Error::new(io::ErrorKind::WriteZero, "write returned 0 bytes");
                return Poll::Ready(Err(e));
            }
            self.queued -= n;
            self.from += n;
            self.stored += n as u64;
            self.written += n as u64;
            observer.transferred(direction, n as u64);
        }
        Poll::Ready(Ok(()))
    }

    /// Reader → the empty store (made if there is none); `Ready(Ok(n))`
    /// with the bytes moved (0 at EOF), `Ready(Err(WouldBlock))` when the
    /// socket had none after all.
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut TcpStream,
    ) -> Poll<io::Result<usize>> {
        let via = self.via;
        match self.store.get_or_insert_with(|| Store::new(via)) {
            Store::Buffer(buf) => {
                let mut buf = ReadBuf::new(buf);
                ready!(Pin::new(&mut *reader).poll_read(cx, &mut buf))?;
                Poll::Ready(Ok(buf.filled().len()))
            }
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Store::Pipe(pipe) => pipe.poll_fill(cx, reader),
        }
    }
}

/// Whether `stream`'s readiness already holds the peer's FIN (no system
/// call: tokio's readiness state; registers no waker unless the stream is
/// not ready at all, and then the read that follows waits for readiness
/// anyway).
fn read_closed(cx: &mut Context<'_>, stream: &TcpStream) -> bool {
    use std::future::Future;
    let ready = std::pin::pin!(stream.ready(Interest::READABLE));
    matches!(ready.poll(cx), Poll::Ready(Ok(r)) if r.is_read_closed())
}

impl Pump<TcpStream, TcpStream> for AdaptivePump {
    fn poll_pump<T: Transfer + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut TcpStream,
        writer: &mut TcpStream,
        direction: Direction,
        observer: &T,
    ) -> Poll<Result<(), PumpError>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Whatever was read goes out first, in the order it came.
            ready!(self.poll_write_pending(cx, writer, direction, observer))
                .map_err(PumpError::Write)?;
            ready!(self.poll_drain(cx, writer, direction, observer)).map_err(PumpError::Write)?;
            if !self.bulk && matches!(self.store, Some(Store::Buffer(_))) {
                // Messages again: the buffer's memory goes back.
                self.store = None;
            }
            if self.eof {
                // Pass the half-close on, unless the other direction is
                // over too (then the sockets close now); a peer already
                // gone has nothing left to tell.
                if !self.one_finished.load(Ordering::Relaxed) {
                    match ready!(Pin::new(&mut *writer).poll_shutdown(cx)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                        Err(e) => return Poll::Ready(Err(PumpError::Write(e))),
                    }
                }
                self.one_finished.store(true, Ordering::Relaxed);
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            if self.bulk {
                match ready!(self.poll_fill(cx, reader)) {
                    Ok(0) => self.eof = true,
                    Ok(n) => {
                        self.queued = n;
                        self.from = 0;
                        // A bulk sender is often just behind the proxy, so
                        // its reads come back short too; only a small one
                        // (or less than a tiny store holds) means messages
                        // again.
                        let capacity = self.store.as_ref().map_or(COPY_SIZE, Store::capacity);
                        self.bulk = n >= SMALL_READ.min(capacity);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(PumpError::Read(e))),
                }
                continue;
            }
            // The peer's FIN already seen before this read (epoll's RDHUP,
            // which tokio keeps until the socket is dropped): a short read
            // then took everything before it, so EOF needs no read of its
            // own (HAProxy's way; saves one `recvfrom` per direction and
            // connection).
            let closed_before = read_closed(cx, reader);
            let mut stack = [MaybeUninit::<u8>::uninit(); COPY_SIZE];
            let mut buf = ReadBuf::uninit(&mut stack);
            ready!(Pin::new(&mut *reader).poll_read(cx, &mut buf)).map_err(PumpError::Read)?;
            let read = buf.filled();
            if read.is_empty() {
                self.eof = true;
                continue;
            }
            self.bulk = read.len() == COPY_SIZE;
            // Set before the write: what was read goes out first
            // (`pending` if the writer pushes back), then the half-close.
            self.eof = closed_before && !self.bulk;
            ready!(self.poll_write_read(cx, writer, read, direction, observer))
                .map_err(PumpError::Write)?;
        }
    }

    fn written(&self) -> u64 {
        self.written
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
pub(super) mod pipe {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::task::{Context, Poll, ready};

    use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
    use nix::unistd::pipe2;
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    /// Move pages instead of copying them where the kernel can; never block
    /// on the pipe (the sockets are non-blocking already).
    const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);

    /// A non-blocking pipe.
    #[derive(Debug)]
    pub(in crate::proxy) struct Pipe {
        /// The read end, drained into the writer.
        out: OwnedFd,
        /// The write end, filled from the reader.
        into: OwnedFd,
        /// Bytes the pipe holds.
        pub(in crate::proxy) capacity: usize,
    }

    impl Pipe {
        /// A pipe holding `size` bytes (rounded up by the kernel to a power
        /// of two pages; the system default of 64 KiB if `size` is beyond
        /// `/proc/sys/fs/pipe-max-size` or the user's pipe budget).
        pub(in crate::proxy) fn new(size: usize) -> io::Result<Self> {
            let (out, into) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
            let wanted = i32::try_from(size.max(1)).unwrap_or(i32::MAX);
            let capacity = match fcntl(&into, FcntlArg::F_SETPIPE_SZ(wanted)) {
                Ok(n) => n,
                Err(_) => fcntl(&into, FcntlArg::F_GETPIPE_SZ)?,
            };
            Ok(Self {
                out,
                into,
                capacity: usize::try_from(capacity).unwrap_or(1).max(1),
            })
        }

        /// Up to `queued` bytes of the pipe → `writer`; `Err(WouldBlock)`
        /// when the writer had no room after all (readiness cleared).
        pub(super) fn poll_drain(
            &self,
            cx: &mut Context<'_>,
            writer: &TcpStream,
            queued: usize,
        ) -> Poll<io::Result<usize>> {
            ready!(writer.poll_write_ready(cx))?;
            Poll::Ready(writer.try_io(Interest::WRITABLE, || {
                Ok(splice(&self.out, None, writer, None, queued, FLAGS)?)
            }))
        }

        /// Reader → the empty pipe; `Ready(Ok(n))` with the bytes moved (0
        /// at EOF), `Ready(Err(WouldBlock))` when the socket had none after
        /// all.
        pub(super) fn poll_fill(
            &self,
            cx: &mut Context<'_>,
            reader: &TcpStream,
        ) -> Poll<io::Result<usize>> {
            ready!(reader.poll_read_ready(cx))?;
            Poll::Ready(reader.try_io(Interest::READABLE, || {
                Ok(splice(
                    reader,
                    None,
                    &self.into,
                    None,
                    self.capacity,
                    FLAGS,
                )?)
            }))
        }
    }
}

#[cfg(test)]
mod tests;
