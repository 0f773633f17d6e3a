//! A downstream connection's write deadline, for connections hyper serves: a client that stops
//! reading (its receive window full, so our writes stay pending) is cut after
//! `server.body_idle_timeout` without progress, instead of holding its upstream connection and
//! in-flight slot for ever.
//!
//! Invariants: reads pass through untouched (their deadlines are hyper's header timer and the
//! exchange's timeouts). The timer is armed when a write or flush first returns `Pending` and
//! disarmed by any progress, so a connection whose writes complete at once never touches it; a
//! write still pending when it fires fails with `TimedOut`, which ends the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pin_project! {
    /// `io` whose writes fail once they have made no progress for `idle`.
    pub struct WriteDeadline<T> {
        #[pin]
        io: T,
        idle: Duration,
        armed: bool,
        #[pin]
        timer: Sleep,
    }
}

impl<T> WriteDeadline<T> {
    pub fn new(io: T, idle: Duration) -> WriteDeadline<T> {
        WriteDeadline {
            io,
            idle,
            armed: false,
            timer: tokio::time::sleep(idle),
        }
    }
}

/// Turns a pending write into `TimedOut` once the deadline has passed; any result disarms.
fn bounded<R>(
    r: Poll<io::Result<R>>,
    cx: &mut Context<'_>,
    armed: &mut bool,
    idle: Duration,
    mut timer: Pin<&mut Sleep>,
) -> Poll<io::Result<R>> {
    if r.is_ready() {
        *armed = false;
        return r;
    }
    if !*armed {
        *armed = true;
        timer.as_mut().reset(Instant::now() + idle);
    }
    match timer.poll(cx) {
        Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client stopped reading: body_idle_timeout",
        ))),
        Poll::Pending => Poll::Pending,
    }
}

impl<T: AsyncRead> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.io.poll_write(cx, buf);
        bounded(r, cx, this.armed, *this.idle, this.timer)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.io.poll_write_vectored(cx, bufs);
        bounded(r, cx, this.armed, *this.idle, this.timer)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let r = this.io.poll_flush(cx);
        bounded(r, cx, this.armed, *this.idle, this.timer)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let r = this.io.poll_shutdown(cx);
        bounded(r, cx, this.armed, *this.idle, this.timer)
    }
}
