//! `splice(2)` between the client and upstream sockets for bulk, a copy
//! through the stack for small messages (what HAProxy does with `option
//! splice-auto`).
//!
//! Each direction starts by copying: a read of up to 16 KiB into a stack
//! buffer, written straight on — two system calls per message (tokio skips
//! the read that would find the socket empty when a read comes back short),
//! and no pipe for a connection that never moves a full buffer. A read that
//! fills the buffer means bulk: the direction then moves socket → pipe →
//! socket inside the kernel, never through user space (64 KiB pipes by
//! default, as HAProxy's), until a read through the pipe brings less than
//! 4 KiB: messages again, copied once the pipe is empty. A FIN already
//! seen when a short read starts ends the direction without a read of its
//! own, and the second direction to end leaves its FIN to the close, as
//! HAProxy does: a new connection's TLS handshake and one request take
//! 24 system calls, as many as HAProxy's. The rest (both directions in one
//! task, idle timer, counters, errors) is `proxy-core`'s [`splice_with`].
//!
//! Linux only, and only once the replayed ClientHello is written: the
//! sockets' kernel queues then hold exactly what has not been forwarded.
//! Without a pipe (out of file descriptors) a direction keeps copying;
//! other systems use the user-space copy.

use isthmus_proxy_core::transport::{SpliceConfig, SpliceError, SpliceStats, Transfer, splice};
use tokio::net::TcpStream;

/// Moves bytes both ways between `client` and `server` until both closed,
/// the idle timeout, or an error: small messages copied through the stack
/// and bulk with `splice(2)` through pipes of `zero_copy` bytes if given
/// (Linux), else with the user-space copy (buffers of `config.buffer_size`).
///
/// # Errors
/// The first I/O error, naming the side (see [`SpliceError`]).
pub(crate) async fn splice_sockets<T: Transfer + ?Sized>(
    client: &mut TcpStream,
    server: &mut TcpStream,
    config: &SpliceConfig,
    zero_copy: Option<usize>,
    observer: &T,
) -> Result<SpliceStats, SpliceError> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(pipe_size) = zero_copy {
        use isthmus_proxy_core::transport::splice_with;
        let (up, down) = pipe::PipePump::pair(pipe_size);
        return splice_with(client, server, up, down, config.idle_timeout, observer).await;
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = zero_copy;
    splice(client, server, config, observer).await
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod pipe {
    use std::future::Future;
    use std::io;
    use std::mem::MaybeUninit;
    use std::os::fd::OwnedFd;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll, ready};

    use isthmus_proxy_core::transport::{Direction, Pump, PumpError, Transfer};
    use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
    use nix::unistd::pipe2;
    use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
    use tokio::net::TcpStream;

    /// Move pages instead of copying them where the kernel can; never block
    /// on the pipe (the sockets are non-blocking already).
    const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);

    /// A copy read of at most this many bytes (HAProxy's `tune.bufsize`);
    /// one that fills it sends the direction through the pipe.
    pub(super) const COPY_SIZE: usize = 16 * 1024;

    /// A read through the pipe shorter than this sends the direction back
    /// to copying.
    pub(super) const SMALL_READ: usize = 4 * 1024;

    /// A non-blocking pipe.
    #[derive(Debug)]
    pub(super) struct Pipe {
        /// The read end, drained into the writer.
        out: OwnedFd,
        /// The write end, filled from the reader.
        into: OwnedFd,
        capacity: usize,
    }

    impl Pipe {
        /// A pipe holding `size` bytes (rounded up by the kernel to a power
        /// of two pages; the system default of 64 KiB if `size` is beyond
        /// `/proc/sys/fs/pipe-max-size` or the user's pipe budget).
        pub(super) fn new(size: usize) -> io::Result<Self> {
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

        /// Bytes the pipe holds.
        #[cfg(test)]
        pub(super) fn capacity(&self) -> usize {
            self.capacity
        }
    }

    /// One direction: small reads copied through the stack, bulk through a
    /// pipe made when first needed (fill the empty pipe from the reader,
    /// drain it all into the writer, repeat); on EOF shut the writer down.
    ///
    /// Reading into the pipe only when it is empty means a reader's
    /// `EAGAIN` always means "socket empty", never "pipe full", so clearing
    /// the socket's readiness on it is right (no lost wakeup, no busy
    /// loop). A copy read that comes back short clears it too (tokio's
    /// `poll_read`): a short TCP read took all there was.
    #[derive(Debug)]
    pub(super) struct PipePump {
        /// Size asked for the pipe.
        size: usize,
        pipe: Option<Pipe>,
        /// Making the pipe failed (descriptors): copy from now on.
        no_pipe: bool,
        /// The last read filled what it was offered: read into the pipe next.
        bulk: bool,
        /// What a copy read got that the writer has not taken yet (only
        /// when the writer pushed back).
        pending: Vec<u8>,
        pending_from: usize,
        /// Bytes read into the pipe, not yet written out.
        queued: usize,
        eof: bool,
        done: bool,
        written: u64,
        /// Bytes written from the pipe (the rest was copied).
        spliced: u64,
        /// Set by the first of the connection's two pumps to finish.
        one_finished: Arc<AtomicBool>,
    }

    impl PipePump {
        /// The two directions of one connection, whose pipes (when bulk
        /// comes) hold `size` bytes. The second to reach EOF does not shut
        /// its writer down: both sockets are closed right after (the
        /// gateway's connection ends with the splice), and closing sends
        /// the FIN — one system call less per connection, and none that
        /// fails with `ENOTCONN` on a peer already gone.
        pub(super) fn pair(size: usize) -> (Self, Self) {
            let one_finished = Arc::new(AtomicBool::new(false));
            (
                Self::new(size, one_finished.clone()),
                Self::new(size, one_finished),
            )
        }

        /// A pump whose pipe (when bulk comes) holds `size` bytes;
        /// `one_finished` is shared with the other direction's.
        pub(super) fn new(size: usize, one_finished: Arc<AtomicBool>) -> Self {
            Self {
                size,
                pipe: None,
                no_pipe: false,
                bulk: false,
                pending: Vec::new(),
                pending_from: 0,
                queued: 0,
                eof: false,
                done: false,
                written: 0,
                spliced: 0,
                one_finished,
            }
        }

        /// Whether the pipe was made, and the bytes that went through it.
        #[cfg(test)]
        pub(super) fn spliced(&self) -> (bool, u64) {
            (self.pipe.is_some(), self.spliced)
        }

        /// The pipe, made on first use; `None` if it cannot be.
        fn pipe(&mut self) -> Option<&Pipe> {
            if self.pipe.is_none() && !self.no_pipe {
                match Pipe::new(self.size) {
                    Ok(pipe) => self.pipe = Some(pipe),
                    Err(e) => {
                        tracing::debug!(error = %e, "no pipe for splice(2); copying instead");
                        self.no_pipe = true;
                    }
                }
            }
            self.pipe.as_ref()
        }

        /// `bytes[*from..]` → `writer`, advancing `from`, until all is
        /// written or the writer pushes back.
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

        /// What a copy read got → `writer`; what the writer does not take
        /// now waits in `pending`.
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
            let (pending, from, written) =
                (&self.pending, &mut self.pending_from, &mut self.written);
            ready!(Self::poll_write_from(
                cx, writer, pending, from, written, direction, observer
            ))?;
            // Rare (a writer that pushed back): give the memory back.
            self.pending = Vec::new();
            self.pending_from = 0;
            Poll::Ready(Ok(()))
        }

        /// Pipe → `writer` until the pipe is empty.
        fn poll_drain<T: Transfer + ?Sized>(
            &mut self,
            cx: &mut Context<'_>,
            writer: &TcpStream,
            direction: Direction,
            observer: &T,
        ) -> Poll<io::Result<()>> {
            while self.queued > 0 {
                let Some(pipe) = &self.pipe else {
                    return Poll::Ready(Err(io::Error::other("bytes queued without a pipe")));
                };
                ready!(writer.poll_write_ready(cx))?;
                let moved = writer.try_io(Interest::WRITABLE, || {
                    Ok(splice(&pipe.out, None, writer, None, self.queued, FLAGS)?)
                });
                match moved {
                    Ok(0) => {
                        let e = io::Error::new(io::ErrorKind::WriteZero, "splice wrote 0 bytes");
                        return Poll::Ready(Err(e));
                    }
                    Ok(n) => {
                        self.queued -= n;
                        self.spliced += n as u64;
                        self.written += n as u64;
                        observer.transferred(direction, n as u64);
                    }
                    // Readiness is cleared: the next poll waits for it.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            Poll::Ready(Ok(()))
        }

        /// Reader → empty pipe; `Ready(Ok(n))` with the bytes moved (0 at
        /// EOF), `Ready(Err(WouldBlock))` when the socket had none after all.
        fn poll_fill(
            &mut self,
            cx: &mut Context<'_>,
            reader: &TcpStream,
        ) -> Poll<io::Result<usize>> {
            ready!(reader.poll_read_ready(cx))?;
            let Some(pipe) = &self.pipe else {
                return Poll::Ready(Err(io::Error::other("no pipe to read into")));
            };
            Poll::Ready(reader.try_io(Interest::READABLE, || {
                Ok(splice(
                    reader,
                    None,
                    &pipe.into,
                    None,
                    pipe.capacity,
                    FLAGS,
                )?)
            }))
        }
    }

    /// Whether `stream`'s readiness already holds the peer's FIN (no
    /// system call: tokio's readiness state; registers no waker unless the
    /// stream is not ready at all, and then the read that follows waits
    /// for readiness anyway).
    fn read_closed(cx: &mut Context<'_>, stream: &TcpStream) -> bool {
        let ready = std::pin::pin!(stream.ready(Interest::READABLE));
        matches!(ready.poll(cx), Poll::Ready(Ok(r)) if r.is_read_closed())
    }

    impl Pump<TcpStream, TcpStream> for PipePump {
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
                ready!(self.poll_drain(cx, writer, direction, observer))
                    .map_err(PumpError::Write)?;
                if self.eof {
                    // Pass the half-close on, unless the other direction
                    // is over too (then the sockets close now); a peer
                    // already gone has nothing left to tell.
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
                if self.bulk && self.pipe().is_some() {
                    match ready!(self.poll_fill(cx, reader)) {
                        Ok(0) => self.eof = true,
                        Ok(n) => {
                            self.queued = n;
                            // A bulk sender is often just behind the proxy,
                            // so its reads come back short too; only a
                            // small one (or less than a tiny pipe holds)
                            // means messages again.
                            let pipe = self.pipe.as_ref().map_or(COPY_SIZE, |p| p.capacity);
                            self.bulk = n >= SMALL_READ.min(pipe);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(PumpError::Read(e))),
                    }
                    continue;
                }
                // The peer's FIN already seen before this read (epoll's
                // RDHUP, which tokio keeps until the socket is dropped):
                // a short read then took everything before it, so EOF
                // needs no read of its own (HAProxy's way; saves one
                // `recvfrom` per direction and connection).
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
                // (`pending` if the writer pushes back), then the
                // half-close.
                self.eof = closed_before && !self.bulk;
                ready!(self.poll_write_read(cx, writer, read, direction, observer))
                    .map_err(PumpError::Write)?;
            }
        }

        fn written(&self) -> u64 {
            self.written
        }
    }
}

#[cfg(test)]
mod tests;
