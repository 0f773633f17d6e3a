//! The client side of an engine connection: a plain TCP socket or a server-side TLS stream over
//! one, behind one small trait (`Downstream`) so the engine is compiled once per kind (generic,
//! no boxing or dynamic dispatch per read or write).
//!
//! Invariants:
//! - `try_fill` never waits: it reads what is available now into the buffer's spare room, or
//!   returns `WouldBlock`. `readable` waits, holding no buffer of the engine's, until `try_fill`
//!   may make progress (data, the end of the stream, or an error). A `WouldBlock` followed by
//!   `readable` never loses a wake-up.
//! - TCP: `try_fill` is one `recv` system call, none when the reactor has seen nothing new, and a
//!   short read clears the readiness (`h1::try_read`), exactly as before the trait existed.
//! - TLS: reads go through rustls (`poll_fill_buf`, which decrypts into rustls's own buffer); what
//!   rustls already decrypted is taken before the socket is read again. Writes through rustls
//!   may leave ciphertext queued in it, so the engine flushes after every write (`send`); on TCP
//!   the flush is a no-op. Under rustls the socket is a `Tcp`, whose reads clear the readiness
//!   after a short read as `h1::try_read` does, so a request costs no `recv` that returns
//!   `EAGAIN` on TLS either (also on hyper's TLS path, which uses the same transport).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A TLS client connection as the server accepts it.
pub type TlsStream = tokio_rustls::server::TlsStream<Tcp>;

/// A client connection the engine can serve.
pub trait Downstream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// One non-blocking read into `buf`'s spare room (`Ok(0)` at the end of the stream,
    /// `WouldBlock` when nothing is available now).
    fn try_fill(&mut self, buf: &mut BytesMut) -> io::Result<usize>;

    /// Waits until `try_fill` may make progress.
    fn readable(&mut self) -> impl Future<Output = io::Result<()>> + Send;

    /// Writes all of `buf` and flushes it (ciphertext rustls queued when the socket was full goes
    /// out).
    fn send_all(&mut self, buf: &[u8]) -> impl Future<Output = io::Result<()>> + Send {
        async move {
            self.write_all(buf).await?;
            self.flush().await
        }
    }

    /// Reads what is available into `buf`'s spare room, waiting when there is nothing.
    fn fill(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<usize>> + Send {
        async move {
            loop {
                match self.try_fill(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable().await?,
                    r => return r,
                }
            }
        }
    }
}

impl Downstream for TcpStream {
    #[inline]
    fn try_fill(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        super::try_read(self, buf)
    }

    #[inline]
    fn readable(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        super::read_ready(self)
    }

    /// One direct `send` per write (`h1::write_all`); a TCP stream has nothing to flush.
    #[inline]
    fn send_all(&mut self, buf: &[u8]) -> impl Future<Output = io::Result<()>> + Send {
        super::write_all(self, buf)
    }
}

impl Downstream for TlsStream {
    fn try_fill(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        // Polled with a waker that does nothing: `readable` polls again with the task's own
        // before the task sleeps, so the registration it leaves behind is never the one relied on.
        let mut cx = Context::from_waker(Waker::noop());
        let mut n = 0;
        loop {
            let room = buf.capacity() - buf.len();
            if room == 0 {
                return Ok(n);
            }
            match Pin::new(&mut *self).poll_fill_buf(&mut cx) {
                Poll::Ready(Ok([])) => return Ok(n),
                Poll::Ready(Ok(data)) => {
                    let take = data.len().min(room);
                    buf.extend_from_slice(&data[..take]);
                    Pin::new(&mut *self).consume(take);
                    n += take;
                }
                // An error after some bytes comes back on the next read (rustls keeps it).
                Poll::Ready(Err(e)) if n == 0 => return Err(e),
                Poll::Ready(Err(_)) => return Ok(n),
                Poll::Pending if n == 0 => return Err(io::ErrorKind::WouldBlock.into()),
                Poll::Pending => return Ok(n),
            }
        }
    }

    fn readable(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        // Ready once rustls holds decrypted bytes (left in place) or the stream ended or failed.
        std::future::poll_fn(move |cx| match Pin::new(&mut *self).poll_fill_buf(cx) {
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        })
    }
}

/// Writes what the socket takes now, without waiting, and flushes as far as it can: a last word
/// from a `Drop`, where there is no task to wait in.
pub fn write_now<D: Downstream>(stream: &mut D, mut buf: &[u8]) {
    let mut cx = Context::from_waker(Waker::noop());
    while !buf.is_empty() {
        match Pin::new(&mut *stream).poll_write(&mut cx, buf) {
            Poll::Ready(Ok(n)) if n > 0 => buf = &buf[n..],
            _ => return,
        }
    }
    let _ = Pin::new(&mut *stream).poll_flush(&mut cx);
}

/// The TCP socket under a TLS connection: a short read is taken to have drained the socket (the
/// readiness is cleared, as in `h1::try_read`), so rustls's next read costs no system call until
/// the reactor sees new bytes. Writes go straight to the socket.
pub struct Tcp(TcpStream);

impl Tcp {
    pub fn new(stream: TcpStream) -> Tcp {
        Tcp(stream)
    }

    pub fn get_ref(&self) -> &TcpStream {
        &self.0
    }
}

impl AsyncRead for Tcp {
    #[allow(unsafe_code)]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let stream = &self.get_mut().0;
        loop {
            ready!(stream.poll_read_ready(cx))?;
            // SAFETY: only `recv` writes to the unfilled room, and only initialised bytes.
            match super::try_recv(stream, unsafe { buf.unfilled_mut() }) {
                Ok(n) => {
                    // SAFETY: `recv` initialised the first `n` bytes of the unfilled room.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The readiness was stale (and is now cleared): wait for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Tcp {
    #[inline]
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
