//! `splice(2)` between the client and upstream sockets: bytes go socket →
//! pipe → socket inside the kernel, never through a user-space buffer
//! (what HAProxy does with `option splice-auto`). One pipe per direction
//! (64 KiB by default, as HAProxy's), driven by tokio's readiness of each socket;
//! the rest (both directions in one task, idle timer, counters, errors) is
//! `proxy-core`'s [`splice_with`].
//!
//! Linux only, and only once the replayed ClientHello is written: the
//! sockets' kernel queues then hold exactly what has not been forwarded.
//! Without pipes (out of file descriptors, other systems) the user-space
//! copy runs instead.

use isthmus_proxy_core::transport::{SpliceConfig, SpliceError, SpliceStats, Transfer, splice};
use tokio::net::TcpStream;

/// Moves bytes both ways between `client` and `server` until both closed,
/// the idle timeout, or an error: with `splice(2)` through pipes of
/// `zero_copy` bytes if given and the system allows, else with the
/// user-space copy (buffers of `config.buffer_size`).
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
        match (
            pipe::PipePump::new(pipe_size),
            pipe::PipePump::new(pipe_size),
        ) {
            (Ok(up), Ok(down)) => {
                return splice_with(client, server, up, down, config.idle_timeout, observer).await;
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "no pipe for splice(2); copying instead");
            }
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = zero_copy;
    splice(client, server, config, observer).await
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod pipe {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::pin::Pin;
    use std::task::{Context, Poll, ready};

    use isthmus_proxy_core::transport::{Direction, Pump, PumpError, Transfer};
    use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
    use nix::unistd::pipe2;
    use tokio::io::{AsyncWrite, Interest};
    use tokio::net::TcpStream;

    /// Move pages instead of copying them where the kernel can; never block
    /// on the pipe (the sockets are non-blocking already).
    const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);

    /// One direction through a pipe: fill the empty pipe from the reader,
    /// drain it all into the writer, repeat; on EOF shut the writer down.
    ///
    /// Reading only into an empty pipe means a reader's `EAGAIN` always
    /// means "socket empty", never "pipe full", so clearing the socket's
    /// readiness on it is right (no lost wakeup, no busy loop).
    #[derive(Debug)]
    pub(super) struct PipePump {
        /// The pipe's read end, drained into the writer.
        out: OwnedFd,
        /// The pipe's write end, filled from the reader.
        into: OwnedFd,
        capacity: usize,
        /// Bytes read into the pipe, not yet written out.
        queued: usize,
        eof: bool,
        done: bool,
        written: u64,
    }

    impl PipePump {
        /// A non-blocking pipe holding `size` bytes (rounded up by the
        /// kernel to a power of two pages; the system default of 64 KiB if
        /// `size` is beyond `/proc/sys/fs/pipe-max-size` or the user's
        /// pipe budget).
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
                queued: 0,
                eof: false,
                done: false,
                written: 0,
            })
        }

        /// Bytes the pipe holds.
        #[cfg(test)]
        pub(super) fn capacity(&self) -> usize {
            self.capacity
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
                ready!(writer.poll_write_ready(cx))?;
                let moved = writer.try_io(Interest::WRITABLE, || {
                    Ok(splice(&self.out, None, writer, None, self.queued, FLAGS)?)
                });
                match moved {
                    Ok(0) => {
                        let e = io::Error::new(io::ErrorKind::WriteZero, "splice wrote 0 bytes");
                        return Poll::Ready(Err(e));
                    }
                    Ok(n) => {
                        self.queued -= n;
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
                ready!(self.poll_drain(cx, writer, direction, observer))
                    .map_err(PumpError::Write)?;
                if self.eof {
                    // Pass the half-close on; a peer already gone has
                    // nothing left to tell.
                    match ready!(Pin::new(&mut *writer).poll_shutdown(cx)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                        Err(e) => return Poll::Ready(Err(PumpError::Write(e))),
                    }
                    self.done = true;
                    return Poll::Ready(Ok(()));
                }
                ready!(reader.poll_read_ready(cx)).map_err(PumpError::Read)?;
                let reader: &TcpStream = reader;
                let moved = reader.try_io(Interest::READABLE, || {
                    Ok(splice(
                        reader,
                        None,
                        &self.into,
                        None,
                        self.capacity,
                        FLAGS,
                    )?)
                });
                match moved {
                    Ok(0) => self.eof = true,
                    Ok(n) => self.queued = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(PumpError::Read(e))),
                }
            }
        }

        fn written(&self) -> u64 {
            self.written
        }
    }
}

#[cfg(test)]
mod tests;
