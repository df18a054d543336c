//! The splice driver (both directions polled together in one task, no
//! `split`, no locks, with a lazily re-armed idle timer) and the
//! user-space copy, [`Buffered`].

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::{
    Direction, Pump, PumpError, SpliceConfig, SpliceEnd, SpliceError, SpliceStats, Transfer,
};

/// One direction copied through a buffer of its own: read into it, write
/// it all out, on EOF flush and shut the writer down.
#[derive(Debug)]
pub struct Buffered {
    buf: Box<[u8]>,
    pos: usize,
    cap: usize,
    eof: bool,
    done: bool,
    need_flush: bool,
    written: u64,
}

impl Buffered {
    /// A copy through `size` bytes (at least one).
    pub fn new(size: usize) -> Self {
        Self {
            buf: vec![0; size.max(1)].into_boxed_slice(),
            pos: 0,
            cap: 0,
            eof: false,
            done: false,
            need_flush: false,
            written: 0,
        }
    }
}

impl<R, W> Pump<R, W> for Buffered
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    fn poll_pump<T: Transfer + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        direction: Direction,
        observer: &T,
    ) -> Poll<Result<(), PumpError>> {
        let mut reader = Pin::new(reader);
        let mut writer = Pin::new(writer);
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pos == self.cap && !self.eof {
                let mut buf = ReadBuf::new(&mut self.buf);
                match reader.as_mut().poll_read(cx, &mut buf) {
                    Poll::Pending => {
                        // Nothing more to read now: push out what was written.
                        if self.need_flush {
                            ready!(writer.as_mut().poll_flush(cx)).map_err(PumpError::Write)?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(PumpError::Read(e))),
                    Poll::Ready(Ok(())) => {
                        let n = buf.filled().len();
                        self.pos = 0;
                        self.cap = n;
                        self.eof = n == 0;
                    }
                }
            }
            while self.pos < self.cap {
                let n = ready!(
                    writer
                        .as_mut()
                        .poll_write(cx, &self.buf[self.pos..self.cap])
                )
                .map_err(PumpError::Write)?;
                if n == 0 {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "write returned zero bytes");
                    return Poll::Ready(Err(PumpError::Write(e)));
                }
                self.pos += n;
                self.written += n as u64;
                self.need_flush = true;
                observer.transferred(direction, n as u64);
            }
            if self.eof {
                ready!(writer.as_mut().poll_flush(cx)).map_err(PumpError::Write)?;
                // Pass the half-close on. A peer that is already gone has
                // nothing left to tell.
                match ready!(writer.as_mut().poll_shutdown(cx)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                    Err(e) => return Poll::Ready(Err(PumpError::Write(e))),
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }

    fn written(&self) -> u64 {
        self.written
    }
}

/// Copies `downstream` → `upstream` and `upstream` → `downstream` until
/// both sides have sent EOF (each EOF is passed on as a write shutdown of
/// the other side) or nothing moved for `config.idle_timeout`.
///
/// Every write is reported to `observer`. Dropping the future stops the
/// copy at once (what a forced shutdown does); the streams are left as
/// they are, to be closed by their owner.
///
/// # Errors
/// The first I/O error from either side, with the bytes moved until then.
pub async fn splice<D, U, T>(
    downstream: &mut D,
    upstream: &mut U,
    config: &SpliceConfig,
    observer: &T,
) -> Result<SpliceStats, SpliceError>
where
    D: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    T: Transfer + ?Sized,
{
    let up = Buffered::new(config.buffer_size);
    let down = Buffered::new(config.buffer_size);
    splice_with(
        downstream,
        upstream,
        up,
        down,
        config.idle_timeout,
        observer,
    )
    .await
}

/// [`splice`] with the given pumps: `up` moves `downstream` → `upstream`,
/// `down` the other way.
///
/// # Errors
/// The first error of either pump, naming the side whose read, write or
/// shutdown failed, with the bytes moved until then.
pub async fn splice_with<D, U, P, Q, T>(
    downstream: &mut D,
    upstream: &mut U,
    mut up: P,
    mut down: Q,
    idle_timeout: Option<Duration>,
    observer: &T,
) -> Result<SpliceStats, SpliceError>
where
    D: ?Sized,
    U: ?Sized,
    P: Pump<D, U>,
    Q: Pump<U, D>,
    T: Transfer + ?Sized,
{
    let mut idle: Option<Pin<Box<Sleep>>> = idle_timeout.map(|t| Box::pin(tokio::time::sleep(t)));
    let mut last_activity = Instant::now();
    let mut moved_until = 0;

    let result = poll_fn(|cx| {
        let to_up = up.poll_pump(cx, downstream, upstream, Direction::ToUpstream, observer);
        if let Poll::Ready(Err(e)) = to_up {
            return Poll::Ready(Err(match e {
                PumpError::Read(e) => ("downstream", e),
                PumpError::Write(e) => ("upstream", e),
            }));
        }
        let to_down = down.poll_pump(cx, upstream, downstream, Direction::ToDownstream, observer);
        if let Poll::Ready(Err(e)) = to_down {
            return Poll::Ready(Err(match e {
                PumpError::Read(e) => ("upstream", e),
                PumpError::Write(e) => ("downstream", e),
            }));
        }
        if to_up.is_ready() && to_down.is_ready() {
            return Poll::Ready(Ok(SpliceEnd::Closed));
        }
        if let (Some(sleep), Some(timeout)) = (idle.as_mut(), idle_timeout) {
            let moved = up.written() + down.written();
            if moved != moved_until {
                // Re-arming the timer on every chunk would cost a timer-wheel
                // update per read; remember the time and re-arm when it fires.
                moved_until = moved;
                last_activity = Instant::now();
            }
            while sleep.as_mut().poll(cx).is_ready() {
                let deadline = last_activity + timeout;
                if deadline <= Instant::now() {
                    return Poll::Ready(Ok(SpliceEnd::IdleTimeout));
                }
                sleep.as_mut().reset(deadline);
            }
        }
        Poll::Pending
    })
    .await;

    match result {
        Ok(end) => Ok(SpliceStats {
            to_upstream: up.written(),
            to_downstream: down.written(),
            end,
        }),
        Err((side, source)) => Err(SpliceError {
            side,
            to_upstream: up.written(),
            to_downstream: down.written(),
            source,
        }),
    }
}
