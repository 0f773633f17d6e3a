//! HTTP/2 requests to plain HTTP/1.1 upstreams through the HTTP/1.1 engine's own upstream
//! connections: the stream's task writes the request head on a connection from the thread's idle
//! pool (`h1::upstreams`), reads the response head with the engine's parser (`h1::read_head`), and
//! the response body (`Own`) reads the rest from that connection and gives it back to the pool
//! when the body ended cleanly.
//!
//! Why: through hyper's pooled client a request crossed three tasks and two channels (the
//! stream's task, the client connection's dispatcher task, the h2 connection's task) and took the
//! pool's lock; under `h2load -c32 -m4` that client was over a third of flipgate's CPU
//! (docs/BENCHMARKS.md). Here a request costs one write and, usually, one read on the upstream
//! side, in the stream's own task.
//!
//! Invariants:
//! - Only what `serves` admits comes here: an HTTP/2 request to a plain HTTP/1.1 upstream, no
//!   upgrade, no CONNECT, not gRPC (its trailers need hyper's client), without a body or with one
//!   the engine would relay itself (a declared length within `MAX_BODY`, no `Expect`, not
//!   re-framed chunked for trailers). Everything else keeps hyper's client.
//! - A body is relayed as the client sends it, after the head, as the engine relays one; a
//!   request with a body is never resent (it is not kept), but a failed connect, before any of it
//!   was read, still moves it to another instance.
//! - The head is the forwarded request as hyper's path rewrote it (`policy::forward::apply`, the
//!   one policy), written field by field; the answer's head goes through the engine's one reading
//!   (`h1::head::parse_response`: framing, hop-by-hop fields) into a `HeaderMap`, and from there
//!   through hyper's path's `relay` like any answer.
//! - Failures and second tries follow the engine's rules, through the same functions: a failed
//!   connect moves to another instance once (`connect_retry`); a reused connection closed under
//!   the request before any byte of an answer is tried once more on a fresh one (`resend`); a
//!   head that does not parse is a reset (502); the exchange's deadline is `upstream_timeout` from
//!   the request's start (504).
//! - A connection goes back to the pool only when its response's framing ended cleanly with
//!   nothing after it (`Own::finish`); a body cut short, or dropped before its end, drops it.

use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::body::Held;
use super::Limits;
use crate::policy::connect_retry;
use crate::policy::error::{ClientErrorKind, ProxyError, UpstreamErrorKind};
use crate::policy::resend::{self, Unanswered};
use crate::serve::h1::chunked::Scanner;
use crate::serve::h1::head::{Framing, MAX_BODY};
use crate::serve::h1::{self, pool, upstreams, NoHead, Up};
use crate::snapshot::TargetEntry;
use crate::upstream::peer_gone;
use crate::upstream::tee::Tee;
use crate::upstream::Upstream;
use hyper::body::Incoming;

/// Whether this request goes through `send` (see the invariants).
pub(super) fn serves(
    version: http::Version,
    upstream: &Upstream,
    upgrade: bool,
    bodyless: bool,
    req: &http::request::Parts,
) -> bool {
    // A body goes only as the engine sends one: a declared length within `MAX_BODY`, and no
    // `Expect` (its `100 Continue` handshake is hyper's client's).
    let body_ok = bodyless
        || (super::declared_length(&req.headers).is_some_and(|n| n <= MAX_BODY)
            && !req.headers.contains_key(header::EXPECT)
            && !req.headers.contains_key(header::TRANSFER_ENCODING));
    version == http::Version::HTTP_2
        && body_ok
        && !upgrade
        && !upstream.http2
        && upstream.scheme == http::uri::Scheme::HTTP
        && req.method != Method::CONNECT
        && !crate::policy::grpc::is_grpc(&req.headers)
        && crate::serve::h1::enabled()
}

/// The request body `send` relays: the client's stream, its declared length (what is left of it
/// to relay), and the shadow copy's tee when the request is copied.
pub(super) struct RequestBody {
    pub body: Incoming,
    pub len: u64,
    pub tee: Option<Tee>,
}

/// Sends the forwarded request `req` (and its body, as the client sends it) to instance `*index`
/// of `target` and returns the upstream's answer, its body still to come from the connection.
/// `index` and `held`'s slot follow the request when a failed connect moves it to another
/// instance.
pub(super) async fn send(
    req: &http::request::Parts,
    mut body: RequestBody,
    target: &TargetEntry,
    index: &mut usize,
    held: &mut Held,
    limits: &Limits,
    deadline: Instant,
) -> Result<Response<Own>, ProxyError> {
    let mut timer = pin!(tokio::time::sleep_until(deadline));
    let mut head = BytesMut::new();
    pool::fill(&mut head);
    write_head(&mut head, req);
    // The request's rule for a resend is the engine's: only without a body.
    let bodyless = body.len == 0;
    // What of the body already came with the head goes out in the same write, as on the engine.
    let first = (body.len > 0)
        .then(|| body.body.frame().now_or_never())
        .flatten();
    if let Some(Some(Ok(frame))) = first {
        if let Ok(data) = frame.into_data() {
            if data.len() as u64 > body.len {
                return Err(ProxyError::Client(ClientErrorKind::BodyAborted));
            }
            head.extend_from_slice(&data);
            if let Some(tee) = &mut body.tee {
                tee.push(&data);
            }
            body.len -= data.len() as u64;
        }
    }
    let head_method = req.method == Method::HEAD;
    let idempotent = resend::idempotent(req.method.as_str().as_bytes());
    let (mut resent, mut moved) = (0, false);
    let result = loop {
        let instance = &target.upstream.instances[*index];
        let load = target.upstream.load(*index);
        let (mut up, fresh) =
            match h1::upstream(instance, load, limits, Instant::now(), timer.as_mut()).await {
                Ok(x) => x,
                Err(e) if !moved && connect_retry::after(e) => {
                    let (limit, outlier) = (limits.max_upstream_connections, &limits.outlier);
                    match connect_retry::another(target, *index, outlier, limit) {
                        Some((i, slot)) => {
                            (*index, held.slot, moved) = (i, Some(slot), true);
                            continue;
                        }
                        None => break Err(e),
                    }
                }
                Err(e) => break Err(e),
            };
        // Only a reused connection can be closed under a request by the keep-alive race; the
        // body, read as it is sent, cannot be sent again.
        let may_resend =
            !fresh && resend::allowed(Unanswered::ClosedUnder, idempotent, bodyless, resent);
        let sent = tokio::select! {
            biased;
            r = h1::write_all(&up.stream, &head) => r,
            _ = timer.as_mut() => break Err(ProxyError::Upstream(UpstreamErrorKind::Timeout)),
        };
        // A write the upstream refused may still have been answered (the engine's rule): the
        // sending stops, the answer is read, and the connection is not kept.
        let mut reusable = match sent {
            Ok(()) => true,
            Err(_) if may_resend => {
                resent += 1;
                continue;
            }
            Err(e) if peer_gone(&e) => false,
            Err(_) => break Err(ProxyError::Upstream(UpstreamErrorKind::Reset)),
        };
        if reusable && body.len > 0 {
            match relay_body(&mut up, &mut body, timer.as_mut()).await {
                Ok(sent) => reusable = sent,
                Err(e) => break Err(e),
            }
        }
        match h1::read_head(&mut up, head_method, may_resend, timer.as_mut(), parts_of).await {
            Ok((resp, framing, kept)) => {
                let body = Own::new(up, framing, kept && reusable);
                break Ok(resp.map(|()| body));
            }
            Err(NoHead::Resend) => {
                tracing::debug!(%instance, "kept-alive upstream connection closed under a request; resending");
                resent += 1;
            }
            Err(NoHead::Failed(e)) => break Err(e),
        }
    };
    head.clear();
    pool::give(&mut head);
    result
}

/// Relays the request body from the client's stream to `up` as it comes (the tee takes each
/// part the upstream took). `Ok(false)`: the upstream refused a write (its answer may follow).
/// The deadline passing while the client's body is awaited is the client's (`BodyTimeout`), as
/// is a body that ends short or breaks (`BodyAborted`).
async fn relay_body(
    up: &mut Up,
    body: &mut RequestBody,
    mut timer: Pin<&mut tokio::time::Sleep>,
) -> Result<bool, ProxyError> {
    const ABORTED: ProxyError = ProxyError::Client(ClientErrorKind::BodyAborted);
    let mut left = body.len;
    while left > 0 {
        let frame = tokio::select! {
            biased;
            f = body.body.frame() => f,
            _ = timer.as_mut() => return Err(ProxyError::Client(ClientErrorKind::BodyTimeout)),
        };
        let data = match frame {
            Some(Ok(f)) => match f.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers: an HTTP/1.1 length-delimited body has none
            },
            None | Some(Err(_)) => return Err(ABORTED),
        };
        if data.len() as u64 > left {
            return Err(ABORTED);
        }
        let written = tokio::select! {
            biased;
            r = h1::write_all(&up.stream, &data) => r,
            _ = timer.as_mut() => return Err(ProxyError::Upstream(UpstreamErrorKind::Timeout)),
        };
        match written {
            Ok(()) => {}
            Err(e) if peer_gone(&e) => return Ok(false),
            Err(_) => return Err(ProxyError::Upstream(UpstreamErrorKind::Reset)),
        }
        if let Some(tee) = &mut body.tee {
            tee.push(&data);
        }
        left -= data.len() as u64;
    }
    Ok(true)
}

/// The upstream's request head: the request line in origin form, then every field as forwarded.
/// A bodyless request whose method means to send one says so (`content-length: 0`), as hyper's
/// client does.
fn write_head(out: &mut BytesMut, req: &http::request::Parts) {
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(
        req.uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &req.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let sends_body = matches!(req.method, Method::POST | Method::PUT | Method::PATCH);
    if sends_body && !req.headers.contains_key(header::CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The answer's head as hyper's path takes it: status, the fields the client gets
/// (`Parsed::kept`), the upstream's version (for `Via`); with its framing and whether the
/// connection may carry another request.
type Head = (Response<()>, Framing, bool);

fn parts_of(p: &h1::head::Parsed<'_, '_>) -> Head {
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::from_u16(p.status).unwrap_or(StatusCode::BAD_GATEWAY);
    *resp.version_mut() = match p.version {
        1 => http::Version::HTTP_11,
        _ => http::Version::HTTP_10,
    };
    let headers = resp.headers_mut();
    for (name, value) in p.kept() {
        // httparse checked both; a name `http` refuses (none are known) is left out.
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    (resp, p.framing, p.reusable)
}

/// An answer's body read from the engine's upstream connection, de-framed (`Content-Length`,
/// chunked, or until close). The connection goes back to the thread's pool when the body ended
/// cleanly (`finish`), else it is closed.
pub struct Own {
    up: Option<Up>,
    framing: Framing,
    /// Bytes of a `Content-Length` body not yet handed on.
    left: u64,
    chunks: Scanner,
    /// A chunked body's trailer section as read so far (its field lines and the empty line).
    trailers: Vec<u8>,
    /// The connection may carry another request once this body is through.
    reusable: bool,
}

/// Why an answer's body read from the upstream ended early.
#[derive(Debug, thiserror::Error)]
pub enum OwnBodyError {
    #[error("upstream closed the connection before the end of the body")]
    Closed,
    #[error("upstream body: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream body: {0}")]
    Chunked(#[from] crate::serve::h1::chunked::ChunkError),
    #[error("upstream body: malformed or oversized trailers")]
    Trailers,
}

impl Own {
    fn new(up: Up, framing: Framing, reusable: bool) -> Own {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut body = Own {
            up: Some(up),
            framing,
            left,
            chunks: Scanner::default(),
            trailers: Vec::new(),
            reusable,
        };
        if matches!(framing, Framing::Empty | Framing::Length(0)) {
            body.finish();
        }
        body
    }

    /// The body ended as its framing says: the connection is kept if nothing follows it.
    fn finish(&mut self) {
        if let Some(mut up) = self.up.take() {
            if self.reusable && up.buf.is_empty() {
                pool::give(&mut up.buf);
                upstreams::give(up);
            }
        }
    }

    /// The next frame of the body from what is buffered, if any; finishes the body at its end.
    fn next_frame(&mut self) -> Result<Option<Frame<Bytes>>, OwnBodyError> {
        let Some(up) = self.up.as_mut() else {
            return Ok(None);
        };
        let (data, done) = match self.framing {
            Framing::Empty => (0, true),
            Framing::Length(_) => {
                let n = self.left.min(up.buf.len() as u64);
                self.left -= n;
                (n as usize, self.left == 0)
            }
            Framing::Chunked => loop {
                let trailer = self.chunks.in_trailers();
                let (framing, n) = self.chunks.data(&up.buf)?;
                if trailer {
                    self.trailers.extend_from_slice(&up.buf[..framing]);
                    if self.trailers.len() > crate::upstream::MAX_RESPONSE_HEAD {
                        return Err(OwnBodyError::Trailers);
                    }
                }
                up.buf.advance(framing);
                if n > 0 || self.chunks.done() || up.buf.is_empty() {
                    break (n, self.chunks.done());
                }
            },
            Framing::Close => (up.buf.len(), false),
        };
        let frame = (data > 0).then(|| Frame::data(Bytes::copy_from_slice(&up.buf[..data])));
        up.buf.advance(data);
        if !done {
            return Ok(frame);
        }
        self.finish();
        if frame.is_some() || self.trailers.len() <= 2 {
            return Ok(frame);
        }
        // The trailer fields, as hyper's client hands them on.
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let parsed = httparse::parse_headers(&self.trailers, &mut fields);
        let Ok(httparse::Status::Complete((_, fields))) = parsed else {
            return Err(OwnBodyError::Trailers);
        };
        let mut map = http::HeaderMap::with_capacity(fields.len());
        for f in fields {
            let name = HeaderName::from_bytes(f.name.as_bytes());
            let value = HeaderValue::from_bytes(f.value);
            let (Ok(name), Ok(value)) = (name, value) else {
                return Err(OwnBodyError::Trailers);
            };
            map.append(name, value);
        }
        self.trailers = Vec::new();
        Ok(Some(Frame::trailers(map)))
    }
}

impl http_body::Body for Own {
    type Data = Bytes;
    type Error = OwnBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, OwnBodyError>>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.next_frame()? {
                return Poll::Ready(Some(Ok(frame)));
            }
            let Some(up) = this.up.as_mut() else {
                return Poll::Ready(None);
            };
            if !up.buf.is_empty() {
                continue; // framing consumed, data may follow
            }
            pool::fill(&mut up.buf);
            match h1::try_read(&up.stream, &mut up.buf) {
                Ok(0) if this.framing == Framing::Close => {
                    this.up = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.up = None;
                    return Poll::Ready(Some(Err(OwnBodyError::Closed)));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if up.buf.is_empty() {
                        pool::give(&mut up.buf);
                    }
                    if let Err(e) = ready!(up.stream.poll_read_ready(cx)) {
                        this.up = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                }
                Err(e) => {
                    this.up = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.up.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.up, self.framing) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), Framing::Length(_)) => SizeHint::with_exact(self.left),
            _ => SizeHint::default(),
        }
    }
}
