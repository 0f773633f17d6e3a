//! The HTTP/1.1 engine: serves a downstream connection's common requests itself, relaying
//! heads (rewritten in one buffer, `head`) and bodies (verbatim) between the client and an
//! upstream connection taken from the thread's idle pool (`upstreams`), in the connection's one
//! task. The client side is plain TCP or TLS (ALPN `http/1.1` or none; `downstream::Downstream`,
//! the engine compiled once for each); the upstream side is always plain TCP.
//!
//! Why: hyper's server and client each parse into a `HeaderMap`, re-encode, and talk through a
//! channel and a second task per upstream connection; on one core that was ~25 % more CPU per
//! request than nginx (docs/BENCHMARKS.md). Here a request costs two reads and two writes, one
//! snapshot load and no allocation in the common case.
//!
//! Invariants:
//! - Only what `head::request` plans as `Forward` or `Local` is served here; on `Fallback` the
//!   connection, with every unconsumed byte put back in front (`rewind`), is returned to the
//!   server as a `HandOver`, which serves it with hyper until it closes (the engine never calls
//!   back into the server). So HTTP/2 prior knowledge, upgrades, chunked or large
//!   request bodies, `Expect`, HTTP/1.0, malformed heads and TLS/HTTP/2 upstreams behave exactly
//!   as they do on hyper's path. A TLS connection is handed over as the TLS stream (decrypted
//!   bytes put back), so hyper serves it as it serves any HTTPS connection.
//! - One request at a time: the request (head, then a `Content-Length` body of at most
//!   `head::MAX_BODY`) is sent, then the response is relayed; pipelined requests wait in the
//!   buffer. The upstream response's framing (`Content-Length`, chunked via `chunked::Scanner`,
//!   or until close) decides where it ends; an upstream connection is reused only when its
//!   response ended cleanly with nothing after it, and only as the one idle rule allows
//!   (`upstream::idle`: not idle `pool_idle_timeout` long, and silent since).
//! - A request is resent once on a fresh connection when a reused one was closed under it before
//!   any response byte (the upstream's keep-alive timeout racing us) and the resend rule allows
//!   it (`policy::resend`: bodyless and idempotent).
//! - An upstream that refuses a write (it closed or reset the connection) may have answered
//!   already: the sending stops and that answer is relayed (else 502); that upstream connection
//!   is never reused, and the client connection closes after the answer if its body was not all
//!   read.
//! - Timeouts: the head must arrive within the idle/header timeout (also the idle bound); the
//!   exchange up to the response head within `upstream_timeout`, as on hyper's path. One
//!   deadline per connection (`deadline::Deadline`), moved per phase; tokio's timer wheel is
//!   touched only when it comes closer (a head that arrives in pieces) or an armed one passes.
//! - Shutdown: an idle connection that has served a request closes at once; a new one (perhaps
//!   accepted during a reuse-port handover) gets its first request answered; a busy one finishes
//!   its response, sent with `connection: close`, then closes.
//! - Buffers come from a per-thread pool and go back whenever empty, so an idle kept-alive
//!   connection holds no buffer of the engine's (a TLS one still holds rustls's own).
//! - Upstream connections: an exchange takes the most recently used idle connection to its
//!   instance from the thread's pool (or opens one) and gives it back when it ended cleanly; at
//!   most `upstreams::KEEP` (`idle::MAX_IDLE_PER_THREAD`) idle ones per thread. So the upstream sees about as many connections
//!   as requests in flight, and an idle client connection holds none.
//! - The upstream side (`Up`, the thread's pools, `upstream`, `read_head`, the reads) is also what
//!   HTTP/2 streams to plain HTTP/1.1 upstreams use on hyper's path (`serve::proxy::direct`): one
//!   pool, one reading of an answer's head, for both.

pub mod chunked;
pub mod deadline;
pub mod downstream;
pub mod head;
pub mod rewind;

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::uri::Authority;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::policy::connect_retry;
use crate::policy::error::{connect_error, ClientErrorKind, ProxyError, UpstreamErrorKind};
use crate::policy::resend::{self, Unanswered};
use crate::serve::proxy::{record_answer, record_error, record_local, At, ConnInfo, Proxy};
use crate::upstream::peer_gone;
use deadline::Deadline;
use downstream::Downstream;
use head::{Framing, Head, Plan, UpstreamHead};

/// The head buffer is kept between requests up to this size (a small head costs no allocation;
/// a big one's buffer is not held by an idle connection).
const OUT_KEEP: usize = 4096;

use crate::upstream::MAX_RESPONSE_HEAD;

/// What the engine needs from `[server]`, fixed for the connection's life.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Bound on receiving a whole request head: the first one from the accept, later ones from
    /// their first byte.
    pub header_timeout: Duration,
    /// Bound on waiting, between requests, for the first byte of the next one.
    pub idle_timeout: Duration,
    pub max_head_bytes: usize,
    pub max_headers: usize,
    /// A response body that moves no byte this long is cut (and hyper's path gets it as its
    /// write deadline after a hand-over).
    pub body_idle_timeout: Duration,
}

/// Whether the engine serves plain HTTP/1.1 connections (`FLIPGATE_HTTP1=hyper` turns it off, so
/// every connection is hyper's: an escape hatch and the A/B baseline).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FLIPGATE_HTTP1").map_or(true, |v| v != "hyper"))
}

/// Serves one downstream connection (plain, or TLS with ALPN `http/1.1` or none) until it closes.
pub async fn serve<D: Downstream>(
    stream: D,
    proxy: Arc<Proxy>,
    info: Arc<ConnInfo>,
    settings: Settings,
    stop: watch::Receiver<bool>,
) -> Option<HandOver<D>> {
    let stopped = *stop.borrow();
    let mut conn = Conn {
        stream,
        rbuf: BytesMut::new(),
        out: Vec::new(),
        proxy,
        info,
        settings,
        stop: Stop { rx: stop, stopped },
        served: false,
        unanswered: false,
    };
    let mut timer = pin!(Deadline::new(Instant::now()));
    // One waiter on the shutdown signal for the connection's life, polled while it is idle: a
    // `changed()` per wait joined and left the signal's waiter list once per request.
    let mut rx = conn.stop.rx.clone();
    let mut stopping = pin!(async move {
        let _ = rx.changed().await;
    });
    let last_word = LastWord(&mut conn);
    let next = last_word.0.run(timer.as_mut(), stopping.as_mut()).await;
    drop(last_word);
    match next {
        Next::Close => None,
        Next::Fallback => Some(HandOver {
            io: rewind::Rewind::new(conn.rbuf.freeze(), conn.stream),
            stop: conn.stop.rx,
        }),
    }
}

/// A connection cut while its request waits for the upstream's answer (the drain deadline
/// aborts the task, dropping this) still gets one: a 503 with `Connection: close`, written if the
/// socket takes it now. Nothing is written once a response has begun.
struct LastWord<'c, D: Downstream>(&'c mut Conn<D>);

impl<D: Downstream> Drop for LastWord<'_, D> {
    fn drop(&mut self) {
        let conn = &mut *self.0;
        if conn.unanswered {
            let status = http::StatusCode::SERVICE_UNAVAILABLE;
            head::local_response(&mut conn.out, status, SHUTTING_DOWN, true);
            downstream::write_now(&mut conn.stream, &conn.out);
        }
    }
}

/// The body of a request cut by shutdown before its answer (both engines).
pub const SHUTTING_DOWN: &str = "flipgate: shutting down before the upstream answered\n";

/// A connection the engine hands over to hyper (`server` serves it from here on): the socket
/// with every byte the engine read but did not consume put back in front, and the shutdown signal.
pub struct HandOver<D> {
    pub io: rewind::Rewind<D>,
    pub stop: watch::Receiver<bool>,
}

/// Tracks the shutdown signal without taking its lock per request.
struct Stop {
    rx: watch::Receiver<bool>,
    stopped: bool,
}

impl Stop {
    fn now(&mut self) -> bool {
        if !self.stopped {
            self.stopped = self.rx.has_changed().unwrap_or(true);
        }
        self.stopped
    }
}

enum Next {
    Close,
    Fallback,
}

/// An upstream connection: in use by one exchange (the engine's, or an HTTP/2 stream's through
/// `serve::proxy::direct`), or idle in this thread's `upstreams` pool.
pub(crate) struct Up {
    authority: Authority,
    /// Its instance's counters: a connection to a drained instance is not kept idle.
    load: Arc<crate::upstream::balance::Load>,
    pub(crate) stream: TcpStream,
    /// What was read from it and not yet relayed.
    pub(crate) buf: BytesMut,
    /// When it last went idle (into the pool).
    idle_since: Instant,
}

impl Drop for Up {
    fn drop(&mut self) {
        pool::give(&mut self.buf);
    }
}

struct Conn<D> {
    stream: D,
    rbuf: BytesMut,
    out: Vec<u8>,
    proxy: Arc<Proxy>,
    info: Arc<ConnInfo>,
    settings: Settings,
    stop: Stop,
    /// At least one request was answered. A shutdown closes an idle connection only then: a
    /// new one (perhaps accepted during the shutdown) gets its first request answered.
    served: bool,
    /// A request is out to the upstream and nothing of its answer has been written (`LastWord`).
    unanswered: bool,
}

/// How one try of an exchange on an upstream connection went wrong.
enum Attempt {
    /// The kept-alive connection was closed under a request that may be resent: try once more.
    Resend,
    Failed(Failed),
}

/// Why an exchange ended without a response from the upstream.
enum Failed {
    /// Answer with this error (the upstream failed before its response head, the client stopped
    /// sending its body, or a local resource ran out).
    Answer(ProxyError),
    /// The client went away or broke its side: nothing to answer.
    Client,
}

impl<D: Downstream> Conn<D> {
    async fn run(
        &mut self,
        mut timer: Pin<&mut Deadline>,
        mut stopping: Pin<&mut impl Future<Output = ()>>,
    ) -> Next {
        loop {
            let next = self.next_head(timer.as_mut(), stopping.as_mut());
            let Some((plan, start)) = next.await else {
                return Next::Close;
            };
            let keep = match plan {
                Plan::Fallback => return Next::Fallback,
                Plan::Local {
                    error,
                    head_len,
                    close,
                } => {
                    self.rbuf.advance(head_len);
                    let close = close || self.stop.now();
                    head::local_response(&mut self.out, error.status(), error.body(), close);
                    self.stream.send_all(&self.out).await.is_ok() && !close
                }
                Plan::Forward(f) => {
                    self.rbuf.advance(f.head_len);
                    self.exchange(f, start, timer.as_mut()).await
                }
            };
            self.served = true;
            if !keep {
                // On TLS the shutdown writes a close_notify, which a client that stopped reading
                // would hold forever; it gets the write deadline.
                let idle = self.settings.body_idle_timeout;
                let _ = tokio::time::timeout(idle, self.stream.shutdown()).await;
                return Next::Close;
            }
            if self.rbuf.is_empty() {
                pool::give(&mut self.rbuf);
            }
            if self.out.capacity() > OUT_KEEP {
                self.out = Vec::new();
            }
        }
    }

    /// Waits for the next complete request head and plans it; `None` when the connection should
    /// close (client closed, timeout, shutdown while idle).
    /// `stopping` completes when shutdown begins; it is not polled again after that.
    async fn next_head(
        &mut self,
        mut timer: Pin<&mut Deadline>,
        mut stopping: Pin<&mut impl Future<Output = ()>>,
    ) -> Option<(Plan, Instant)> {
        // Between requests a kept-alive connection may stay idle for `idle_timeout`; a head once
        // begun (and the first one, counted from the accept) must be whole within `header_timeout`.
        let mut idle = self.served && self.rbuf.is_empty();
        let wait = match idle {
            true => self.settings.idle_timeout,
            false => self.settings.header_timeout,
        };
        timer
            .as_mut()
            .set(crate::clock::deadline(Instant::now(), wait));
        loop {
            if !self.rbuf.is_empty() {
                let start = Instant::now();
                match head::request(
                    &self.proxy,
                    &self.info,
                    &self.rbuf,
                    &mut self.out,
                    self.settings.max_head_bytes,
                    self.settings.max_headers,
                    start,
                ) {
                    Head::Plan(p) => return Some((p, start)),
                    // A head arriving whole never needed the header deadline (moving the
                    // deadline closer is what costs).
                    Head::Partial if idle => {
                        idle = false;
                        timer
                            .as_mut()
                            .set(crate::clock::deadline(start, self.settings.header_timeout));
                    }
                    Head::Partial => {}
                }
            } else if self.served && self.stop.now() {
                return None;
            }
            pool::fill(&mut self.rbuf);
            match self.stream.try_fill(&mut self.rbuf) {
                Ok(0) => return None,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return None,
            }
            if self.rbuf.is_empty() {
                pool::give(&mut self.rbuf);
            }
            tokio::select! {
                biased;
                r = self.stream.readable() => r.ok()?,
                _ = stopping.as_mut(), if idle => return None,
                _ = timer.as_mut() => return None,
            }
        }
    }

    /// Relays one request and its response. Returns whether the client connection stays open.
    async fn exchange(
        &mut self,
        mut f: head::Forward,
        start: Instant,
        mut timer: Pin<&mut Deadline>,
    ) -> bool {
        timer
            .as_mut()
            .set(crate::clock::deadline(start, f.limits.timeout));
        self.unanswered = true;
        let sent = self.send(&mut f, start, timer.as_mut()).await;
        self.unanswered = false;
        let head::Forward {
            body_len,
            target,
            index,
            instance,
            limits,
            close,
            access,
            slot,
            ..
        } = f;
        let close = close || self.stop.now();
        let (mut up, resp) = match sent {
            Ok(x) => x,
            Err(Failed::Client) => {
                let e = ProxyError::Client(ClientErrorKind::BodyAborted);
                record_error(&target, index, &limits, e, start);
                return false;
            }
            Err(Failed::Answer(e)) => {
                tracing::debug!(route = %target.route, target = %target.name, %instance, ?e, "upstream request failed");
                let at = At::Target {
                    target: &target,
                    index,
                    limits: &limits,
                };
                record_local(at, e, start, access);
                // The request body may not all have been read: the connection cannot be reused.
                let close = close || body_len > 0;
                head::local_response(&mut self.out, e.status(), e.body(), close);
                return self.stream.send_all(&self.out).await.is_ok() && !close;
            }
        };
        let answered = record_answer(&target, index, &limits, resp.status, start);
        if let Some(a) = access {
            let status = http::StatusCode::from_u16(resp.status).unwrap_or(http::StatusCode::OK);
            a.finish(&target, status, start);
        }
        let idle = limits.body_idle_timeout;
        let done = self
            .relay_body(&mut up, resp.framing, idle, answered, timer)
            .await;
        drop(slot);
        if done && resp.reusable && up.buf.is_empty() {
            pool::give(&mut up.buf);
            upstreams::give(up);
        }
        done && !close && !resp.close && resp.framing != Framing::Close
    }

    /// Sends the request (head in `out`, then its body) and reads the response head into `out`.
    /// A failed connect moves the request to another instance of its target once
    /// (`policy::connect_retry`): `f`'s instance and in-flight slot then name that one.
    async fn send(
        &mut self,
        f: &mut head::Forward,
        start: Instant,
        mut timer: Pin<&mut Deadline>,
    ) -> Result<(Up, head::Response), Failed> {
        let (head_method, close) = (f.head_method, f.close);
        let mut body_left = f.body_len;
        let take = body_left.min(self.rbuf.len() as u64) as usize;
        self.out.extend_from_slice(&self.rbuf[..take]);
        if let Some(tee) = &mut f.tee {
            tee.push(&self.rbuf[..take]);
        }
        self.rbuf.advance(take);
        body_left -= take as u64;
        let mut resent = 0;
        let mut moved = false;
        // The request's start is this poll's clock reading; a retry reads the clock again.
        let mut first = Some(start);
        loop {
            let instance = &f.instance;
            let load = f.target.upstream.load(f.index);
            let now = first.take().unwrap_or_else(Instant::now);
            let up = upstream(instance, load, &f.limits, now, timer.as_mut()).await;
            let (mut up, fresh) = match up {
                Ok(x) => x,
                Err(e) if !moved && connect_retry::after(e) => {
                    let limit = f.limits.max_upstream_connections;
                    let outlier = &f.limits.outlier;
                    let Some((i, slot)) =
                        connect_retry::another(&f.target, f.index, outlier, limit)
                    else {
                        return Err(Failed::Answer(e));
                    };
                    f.index = i;
                    f.instance = f.target.upstream.instances[i].clone();
                    f.slot = Some(slot);
                    moved = true;
                    continue;
                }
                Err(e) => return Err(Failed::Answer(e)),
            };
            // Only a reused connection can be closed under a request by the keep-alive race.
            let may_resend = !fresh
                && resend::allowed(
                    Unanswered::ClosedUnder,
                    f.idempotent,
                    f.body_len == 0,
                    resent,
                );
            match self
                .attempt(
                    &mut up,
                    &mut body_left,
                    &mut f.tee,
                    head_method,
                    close,
                    may_resend,
                    timer.as_mut(),
                )
                .await
            {
                Ok(r) => return Ok((up, r)),
                // The connection is in an unknown state: never reused (`up` is dropped).
                Err(e) => match e {
                    Attempt::Resend => {
                        tracing::debug!(%instance, "kept-alive upstream connection closed under a request; resending");
                        resent += 1;
                    }
                    Attempt::Failed(f) => return Err(f),
                },
            }
        }
    }

    /// One try of `send` on upstream connection `up`.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &mut self,
        up: &mut Up,
        body_left: &mut u64,
        tee: &mut Option<crate::upstream::tee::Tee>,
        head_method: bool,
        close: bool,
        may_resend: bool,
        mut timer: Pin<&mut Deadline>,
    ) -> Result<head::Response, Attempt> {
        const TIMEOUT: Attempt = Attempt::Failed(Failed::Answer(ProxyError::Upstream(
            UpstreamErrorKind::Timeout,
        )));
        const RESET: Attempt = Attempt::Failed(Failed::Answer(ProxyError::Upstream(
            UpstreamErrorKind::Reset,
        )));
        // The deadline passing while flipgate waits on the client's body is the client's fault.
        const BODY_TIMEOUT: Attempt = Attempt::Failed(Failed::Answer(ProxyError::Client(
            ClientErrorKind::BodyTimeout,
        )));
        // A write the upstream refuses (it closed or reset the connection: `peer_gone`) ends the
        // sending, not the exchange: an upstream may answer before it has read the whole request (a 401 to an
        // upload) and close, and that answer is what the client gets. The upstream connection is
        // then not reused, and a client whose body was not all read is closed after the answer.
        let sent_or_gone = |r: std::io::Result<()>| match r {
            Ok(()) => Ok(true),
            Err(e) if peer_gone(&e) => Ok(false),
            Err(_) => Err(RESET),
        };
        let mut sent = tokio::select! {
            biased;
            r = write_all(&up.stream, &self.out) => sent_or_gone(r)?,
            _ = timer.as_mut() => return Err(TIMEOUT),
        };
        if !sent && may_resend {
            return Err(Attempt::Resend);
        }
        // The rest of the body, as the client sends it.
        while sent && *body_left > 0 {
            pool::fill(&mut self.rbuf);
            let n = tokio::select! {
                biased;
                r = self.stream.fill(&mut self.rbuf) => match r {
                    Ok(0) | Err(_) => return Err(Attempt::Failed(Failed::Client)),
                    Ok(n) => n,
                },
                _ = timer.as_mut() => return Err(BODY_TIMEOUT),
            };
            let take = (n as u64).min(*body_left) as usize;
            sent = tokio::select! {
                biased;
                r = write_all(&up.stream, &self.rbuf[..take]) => sent_or_gone(r)?,
                _ = timer.as_mut() => return Err(TIMEOUT),
            };
            if sent {
                if let Some(tee) = tee {
                    tee.push(&self.rbuf[..take]);
                }
                self.rbuf.advance(take);
                *body_left -= take as u64;
            }
        }
        // The response head.
        let (stop, out, left) = (&mut self.stop, &mut self.out, *body_left);
        let head = read_head(up, head_method, may_resend, timer, |p| {
            // Decided when the head is written: a shutdown meanwhile closes after it.
            let close = close || stop.now() || left > 0;
            head::client_head(p, out, close)
        });
        match head.await {
            Ok(mut r) => {
                r.reusable &= sent;
                Ok(r)
            }
            Err(NoHead::Resend) => Err(Attempt::Resend),
            Err(NoHead::Failed(e)) => Err(Attempt::Failed(Failed::Answer(e))),
        }
    }

    /// Relays the response body (the head is in `out`) from upstream `up` to the client. Returns
    /// whether the whole body was relayed. The body is cut when no byte moves for `idle`
    /// (`server.body_idle_timeout`): an upstream stalled mid-body, or a client that stopped
    /// reading, never holds the connections (and the upstream slot) longer than that.
    async fn relay_body(
        &mut self,
        up: &mut Up,
        framing: Framing,
        idle: Duration,
        now: Instant,
        mut timer: Pin<&mut Deadline>,
    ) -> bool {
        let mut left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut scanner = chunked::Scanner::default();
        // Whatever part of the body came with the head goes out in the same write.
        let Ok((n, mut complete)) = body_part(&up.buf, framing, &mut left, &mut scanner) else {
            return false;
        };
        self.out.extend_from_slice(&up.buf[..n]);
        up.buf.advance(n);
        // The exchange's deadline usually still leaves at least half of `idle`: then the timer
        // is not moved at all.
        refresh(timer.as_mut(), idle, now);
        if !write_within(&mut self.stream, &self.out, timer.as_mut()).await {
            return false;
        }
        self.out.clear();
        while !complete {
            pool::fill(&mut up.buf);
            refresh(timer.as_mut(), idle, Instant::now());
            let r = tokio::select! {
                biased;
                r = read_some(&up.stream, &mut up.buf) => r,
                _ = timer.as_mut() => {
                    tracing::debug!(authority = %up.authority, "response body idle: cut");
                    return false;
                }
            };
            match r {
                Ok(n) if n > 0 => {}
                // Until-close framing ends here; any other is cut short.
                _ => return framing == Framing::Close,
            }
            let Ok((n, c)) = body_part(&up.buf, framing, &mut left, &mut scanner) else {
                return false;
            };
            if !write_within(&mut self.stream, &up.buf[..n], timer.as_mut()).await {
                return false;
            }
            up.buf.advance(n);
            complete = c;
        }
        true
    }
}

/// An upstream connection to `instance` for an exchange: the most recently used idle one of
/// this thread, or a new one (`true`: a request failing on it is not resent). Fails as the
/// request is answered: the connect's error, or a timeout (`connect_timeout`, or `timer`, the
/// exchange's deadline). `now`: a clock reading taken since the caller last awaited.
pub(crate) async fn upstream(
    instance: &Authority,
    load: &Arc<crate::upstream::balance::Load>,
    limits: &crate::serve::proxy::Limits,
    now: Instant,
    timer: Pin<&mut impl Future<Output = ()>>,
) -> Result<(Up, bool), ProxyError> {
    const TIMEOUT: ProxyError = ProxyError::Upstream(UpstreamErrorKind::Timeout);
    let rule = crate::upstream::idle::Idle::new(limits.pool_idle_timeout);
    if let Some(up) = upstreams::take(instance, rule, now) {
        return Ok((up, false));
    }
    let connect = TcpStream::connect(instance.as_str());
    let stream = tokio::select! {
        biased;
        r = tokio::time::timeout(limits.connect_timeout, connect) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%instance, error = %e, "upstream connect failed");
                return Err(connect_error(&e));
            }
            Err(_) => return Err(TIMEOUT),
        },
        _ = timer => return Err(TIMEOUT),
    };
    let _ = stream.set_nodelay(true);
    let up = Up {
        authority: instance.clone(),
        load: load.clone(),
        stream,
        buf: BytesMut::new(),
        idle_since: Instant::now(),
    };
    Ok((up, true))
}

/// Why an upstream connection gave no response head.
pub(crate) enum NoHead {
    /// It was closed before any byte of an answer and the caller allowed a resend (a reused
    /// connection closed under the request: the keep-alive race).
    Resend,
    /// Answer with this: `Reset` (closed, reset, or not a valid head), or `Timeout` (`timer`).
    Failed(ProxyError),
}

/// Reads the upstream's final response head from `up` (interim 1xx ones are skipped) and hands it
/// to `emit`, which writes the client's; the head's bytes are consumed from `up.buf`, what
/// follows them stays there. The one reading of an upstream's answer for both engines' own
/// exchanges (the HTTP/1.1 engine's, `serve::proxy::direct`'s).
pub(crate) async fn read_head<T>(
    up: &mut Up,
    head_method: bool,
    may_resend: bool,
    mut timer: Pin<&mut impl Future<Output = ()>>,
    mut emit: impl FnMut(&head::Parsed<'_, '_>) -> T,
) -> Result<T, NoHead> {
    const RESET: NoHead = NoHead::Failed(ProxyError::Upstream(UpstreamErrorKind::Reset));
    loop {
        if !up.buf.is_empty() {
            match head::parse_response(&up.buf, head_method, &mut emit) {
                UpstreamHead::Ready((n, t)) => {
                    up.buf.advance(n);
                    return Ok(t);
                }
                UpstreamHead::Interim(n) => {
                    up.buf.advance(n);
                    continue;
                }
                UpstreamHead::Invalid => return Err(RESET),
                UpstreamHead::Partial if up.buf.len() > MAX_RESPONSE_HEAD => return Err(RESET),
                UpstreamHead::Partial => {}
            }
        }
        pool::fill(&mut up.buf);
        let r = tokio::select! {
            biased;
            r = read_some(&up.stream, &mut up.buf) => r,
            _ = timer.as_mut() => {
                return Err(NoHead::Failed(ProxyError::Upstream(UpstreamErrorKind::Timeout)))
            }
        };
        match r {
            Ok(n) if n > 0 => {}
            // Closed before any byte of an answer: the keep-alive race.
            _ if up.buf.is_empty() && may_resend => return Err(NoHead::Resend),
            _ => return Err(RESET),
        }
    }
}

/// Moves `timer` to `idle` from now unless it already stands between half of `idle` and `idle`
/// from `now`: progress keeps a body alive, and the deadline moves at most once per half `idle`
/// (with the defaults, the exchange's deadline already stands there and is not moved at all).
fn refresh(timer: Pin<&mut Deadline>, idle: Duration, now: Instant) {
    let deadline = timer.at();
    if deadline < now + idle / 2 || deadline > now + idle {
        timer.set(now + idle);
    }
}

/// Writes all of `buf` to the client unless `timer` fires first (a client that stopped reading).
async fn write_within<D: Downstream>(
    stream: &mut D,
    buf: &[u8],
    timer: Pin<&mut Deadline>,
) -> bool {
    tokio::select! {
        biased;
        r = stream.send_all(buf) => r.is_ok(),
        _ = timer => {
            tracing::debug!("client stopped reading a response body: cut");
            false
        }
    }
}

/// How many of the buffered bytes belong to the response body, and whether it ends within them.
pub(crate) fn body_part(
    buf: &[u8],
    framing: Framing,
    left: &mut u64,
    scanner: &mut chunked::Scanner,
) -> Result<(usize, bool), chunked::ChunkError> {
    Ok(match framing {
        Framing::Empty => (0, true),
        Framing::Length(_) => {
            let n = (*left).min(buf.len() as u64);
            *left -= n;
            (n as usize, *left == 0)
        }
        Framing::Chunked => {
            let n = scanner.scan(buf)?;
            (n, scanner.done())
        }
        Framing::Close => (buf.len(), false),
    })
}

/// Reads what is available into `buf`'s spare capacity, waiting for readiness when there is none.
pub(crate) async fn read_some(stream: &TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    loop {
        match try_read(stream, buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => read_ready(stream).await?,
            r => return r,
        }
    }
}

/// Writes all of `buf` to `stream`, waiting for room when the socket is full. Each `send` is
/// made directly (`rustix`), not through libc's wrapper, whose cancellation-point bookkeeping
/// cost as much CPU as the rest of the call's user-space part (docs/BENCHMARKS.md); the
/// readiness is cleared on `WouldBlock` as tokio's own writes do.
pub(crate) async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    use std::io::ErrorKind;
    while !buf.is_empty() {
        let r = stream.try_io(Interest::WRITABLE, || {
            Ok(rustix::net::send(
                stream,
                buf,
                rustix::net::SendFlags::NOSIGNAL,
            )?)
        });
        match r {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::future::poll_fn(|cx| stream.poll_write_ready(cx)).await?
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Waits until the reactor has seen `stream` readable. Through the stream's one reader waker
/// slot, which the task keeps between waits: `TcpStream::readable` joins and leaves the socket's
/// waiter list (a lock each way) on every wait. One task reads a connection at a time.
pub(crate) fn read_ready(stream: &TcpStream) -> impl Future<Output = std::io::Result<()>> + '_ {
    std::future::poll_fn(move |cx| stream.poll_read_ready(cx))
}

/// One non-blocking read into `buf`'s spare room (`WouldBlock`, without a system call, when the
/// reactor has seen nothing new). A short read, less than the room, is taken to have drained the
/// socket: the readiness is cleared as if the next read had returned `WouldBlock`, which saves that
/// system call on every request (nginx does the same with edge-triggered epoll). Readiness the
/// reactor recorded after the read began is kept (tokio compares its event tick), so no wake-up is
/// lost; a peer's close stays visible (`closed`).
#[allow(unsafe_code)]
pub(crate) fn try_read(stream: &TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    let n = try_recv(stream, buf.spare_capacity_mut())?;
    // SAFETY: `recv` initialised the first `n` bytes of the spare room.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// `try_read` into any room: returns how many bytes `recv` initialised at its start.
fn try_recv(stream: &TcpStream, room: &mut [std::mem::MaybeUninit<u8>]) -> std::io::Result<usize> {
    let mut short = None;
    let len = room.len();
    let r = stream.try_io(Interest::READABLE, || {
        let flags = rustix::net::RecvFlags::empty();
        let n = rustix::net::recv(stream, &mut *room, flags)?.0 .0.len();
        if n > 0 && n < len {
            short = Some(n);
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (r, short) {
        (Err(e), Some(n)) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(n),
        (r, _) => r,
    }
}

/// Per-thread pool of idle upstream connections, most recently used first, as nginx's upstream
/// `keepalive`: the upstream sees about as many connections as there are requests in flight, not
/// one per client connection, and an idle client connection holds none. A connection to a
/// drained instance is never kept: one that ends its exchange after the drain is closed then, and
/// those already idle are closed by the thread's next use of the pool after the drain (one
/// relaxed load per use notices it, `balance::drain_epoch`).
pub(crate) mod upstreams {
    use super::Up;
    use crate::upstream::idle::{self, Idle};
    use http::uri::Authority;
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;
    use tokio::time::Instant;

    /// Idle connections kept per thread; past it the least recently used one is closed.
    const KEEP: usize = idle::MAX_IDLE_PER_THREAD;

    thread_local! {
        static IDLE: RefCell<VecDeque<Up>> = const { RefCell::new(VecDeque::new()) };
        /// The drain epoch this thread's pool was last swept at.
        static SWEPT: Cell<u64> = const { Cell::new(0) };
    }

    /// Closes the idle connections to drained instances if an instance was drained since the
    /// last sweep.
    fn sweep(idle: &mut VecDeque<Up>, dropped: &mut Vec<Up>) {
        let epoch = crate::upstream::balance::drain_epoch();
        if SWEPT.with(|s| s.replace(epoch)) == epoch {
            return;
        }
        let mut i = 0;
        while i < idle.len() {
            if idle[i].load.drained() {
                dropped.extend(idle.remove(i));
            } else {
                i += 1;
            }
        }
    }

    /// The most recently used idle connection to `authority` that the idle rule lets carry a
    /// request (`upstream::idle`: not expired, silent); unusable ones met on the way, and every
    /// connection of the thread that has expired (they sit oldest first), are closed.
    /// `now`: a clock reading taken since the caller last awaited (so no connection was given
    /// back after it).
    pub(super) fn take(authority: &Authority, rule: Idle, now: Instant) -> Option<Up> {
        let mut dropped = Vec::new();
        let found = IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            sweep(&mut idle, &mut dropped);
            while idle
                .front()
                .is_some_and(|u| rule.expired(u.idle_since, now))
            {
                dropped.extend(idle.pop_front());
            }
            // Every connection left is younger than the expired ones: only silence is checked.
            while let Some(i) = idle.iter().rposition(|u| u.authority == *authority) {
                let up = idle.remove(i)?;
                if idle::silent(&up.stream) {
                    return Some(up);
                }
                dropped.push(up);
            }
            None
        });
        drop(dropped);
        found
    }

    /// Keeps a connection whose last exchange ended cleanly, for the next request to its upstream.
    pub(crate) fn give(mut up: Up) {
        up.idle_since = Instant::now();
        let mut dropped = Vec::new();
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            sweep(&mut idle, &mut dropped);
            if up.load.drained() {
                dropped.push(up);
                return;
            }
            dropped.extend((idle.len() >= KEEP).then(|| idle.pop_front()).flatten());
            idle.push_back(up);
        });
        drop(dropped);
    }
}

/// Per-thread pool of I/O buffers, so requests allocate none and idle connections hold none.
pub(crate) mod pool {
    use bytes::BytesMut;
    use std::cell::RefCell;

    /// Size of a pooled buffer; reads never ask for less spare room than `MIN_SPARE`.
    const SIZE: usize = 16 * 1024;
    const MIN_SPARE: usize = 2048;
    /// Buffers kept per thread.
    const KEEP: usize = 128;

    thread_local! {
        static POOL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    /// Makes sure `buf` has room to read into, taking a pooled buffer when it has none.
    pub fn fill(buf: &mut BytesMut) {
        if buf.capacity() == 0 {
            *buf = POOL
                .with(|p| p.borrow_mut().pop())
                .unwrap_or_else(|| BytesMut::with_capacity(SIZE));
        } else if buf.capacity() - buf.len() < MIN_SPARE {
            buf.reserve(SIZE);
        }
    }

    /// Returns an empty buffer to the pool (a non-empty one is left alone).
    pub fn give(buf: &mut BytesMut) {
        if buf.capacity() == 0 || !buf.is_empty() {
            return;
        }
        let mut b = std::mem::take(buf);
        // An emptied buffer reclaims the room its consumed bytes took (no allocation).
        b.reserve(SIZE);
        if b.capacity() <= 2 * SIZE {
            POOL.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < KEEP {
                    p.push(b);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A connected pair: an `Up` for the pool and the upstream's end of it.
    async fn pair() -> (Up, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stream = TcpStream::connect(addr).await.unwrap();
        let (peer, _) = l.accept().await.unwrap();
        let up = Up {
            authority: addr.to_string().parse().unwrap(),
            load: Default::default(),
            stream,
            buf: BytesMut::new(),
            idle_since: Instant::now(),
        };
        (up, peer)
    }

    /// `pool_idle_timeout` is honoured: a connection idle that long is closed, not reused.
    #[tokio::test(start_paused = true)]
    async fn idle_connections_expire_after_pool_idle_timeout() {
        let idle = Duration::from_secs(90);
        let rule = crate::upstream::idle::Idle::new(idle);
        let (up, _peer) = pair().await;
        let authority = up.authority.clone();
        upstreams::give(up);
        tokio::time::advance(idle - Duration::from_secs(1)).await;
        let up = upstreams::take(&authority, rule, Instant::now()).expect("still fresh");
        upstreams::give(up);
        tokio::time::advance(idle).await;
        assert!(
            upstreams::take(&authority, rule, Instant::now()).is_none(),
            "expired"
        );
    }

    /// An idle connection on which the upstream wrote anything is never handed out.
    #[tokio::test]
    async fn an_idle_connection_that_became_readable_is_discarded() {
        let (up, mut peer) = pair().await;
        let authority = up.authority.clone();
        peer.write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            .await
            .unwrap();
        up.stream.readable().await.unwrap();
        upstreams::give(up);
        let rule = crate::upstream::idle::Idle::new(Duration::from_secs(60));
        assert!(upstreams::take(&authority, rule, Instant::now()).is_none());
    }
}
