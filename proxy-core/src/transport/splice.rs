//! The copy loop: one buffer per direction, polled together in one task
//! (no `split`, no locks), with a lazily re-armed idle timer.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::{Direction, SpliceConfig, SpliceEnd, SpliceError, SpliceStats, Transfer};

/// Which stream an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Reader,
    Writer,
}

/// One direction: read into the buffer, write it all out, on EOF flush and
/// shut the writer down.
struct Half {
    buf: Box<[u8]>,
    pos: usize,
    cap: usize,
    eof: bool,
    done: bool,
    need_flush: bool,
    written: u64,
    /// Set whenever a byte moved; the caller clears it.
    moved: bool,
}

impl Half {
    fn new(size: usize) -> Self {
        Self {
            buf: vec![0; size.max(1)].into_boxed_slice(),
            pos: 0,
            cap: 0,
            eof: false,
            done: false,
            need_flush: false,
            written: 0,
            moved: false,
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        direction: Direction,
        observer: &(impl Transfer + ?Sized),
    ) -> Poll<Result<(), (Side, io::Error)>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
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
                            ready!(writer.as_mut().poll_flush(cx))
                                .map_err(|e| (Side::Writer, e))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((Side::Reader, e))),
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
                .map_err(|e| (Side::Writer, e))?;
                if n == 0 {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "write returned zero bytes");
                    return Poll::Ready(Err((Side::Writer, e)));
                }
                self.pos += n;
                self.written += n as u64;
                self.need_flush = true;
                self.moved = true;
                observer.transferred(direction, n as u64);
            }
            if self.eof {
                ready!(writer.as_mut().poll_flush(cx)).map_err(|e| (Side::Writer, e))?;
                // Pass the half-close on. A peer that is already gone has
                // nothing left to tell.
                match ready!(writer.as_mut().poll_shutdown(cx)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                    Err(e) => return Poll::Ready(Err((Side::Writer, e))),
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
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
    let mut up = Half::new(config.buffer_size);
    let mut down = Half::new(config.buffer_size);
    let mut idle: Option<Pin<Box<Sleep>>> =
        config.idle_timeout.map(|t| Box::pin(tokio::time::sleep(t)));
    let mut last_activity = Instant::now();

    let result = poll_fn(|cx| {
        let to_up = up.poll_copy(
            cx,
            Pin::new(&mut *downstream),
            Pin::new(&mut *upstream),
            Direction::ToUpstream,
            observer,
        );
        if let Poll::Ready(Err((side, e))) = to_up {
            let side = if side == Side::Reader {
                "downstream"
            } else {
                "upstream"
            };
            return Poll::Ready(Err((side, e)));
        }
        let to_down = down.poll_copy(
            cx,
            Pin::new(&mut *upstream),
            Pin::new(&mut *downstream),
            Direction::ToDownstream,
            observer,
        );
        if let Poll::Ready(Err((side, e))) = to_down {
            let side = if side == Side::Reader {
                "upstream"
            } else {
                "downstream"
            };
            return Poll::Ready(Err((side, e)));
        }
        if to_up.is_ready() && to_down.is_ready() {
            return Poll::Ready(Ok(SpliceEnd::Closed));
        }
        if let (Some(sleep), Some(timeout)) = (idle.as_mut(), config.idle_timeout) {
            if std::mem::take(&mut up.moved) | std::mem::take(&mut down.moved) {
                // Re-arming the timer on every chunk would cost a timer-wheel
                // update per read; remember the time and re-arm when it fires.
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
            to_upstream: up.written,
            to_downstream: down.written,
            end,
        }),
        Err((side, source)) => Err(SpliceError {
            side,
            to_upstream: up.written,
            to_downstream: down.written,
            source,
        }),
    }
}
