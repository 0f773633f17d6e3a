//! Connection-pinned upstream connections: a downstream HTTP/1 connection keeps its own plain
//! HTTP/1.1 connection to each upstream instance it used, and sends its next requests there.
//!
//! Why: the process-wide pooled client costs, on every request, a pool lock, a key hash and clone,
//! and a spawned task that waits for the connection to be idle again before it goes back to the
//! pool. A downstream HTTP/1 connection has at most one request in flight, so a connection it owns
//! needs none of that: the request is handed straight to hyper's connection. This is what nginx
//! and HAProxy achieve with their own pools, and on one core it is the difference between ~0.85x
//! and ~1.0x of nginx's throughput (see docs/BENCHMARKS.md).
//!
//! Invariants: used only for HTTP/1.x downstream requests without upgrade to plain-HTTP/1.1
//! upstreams (h2, TLS and upgrades stay on the shared clients). The slot never waits: a `try_lock`
//! takes the connections out, one puts them back; nothing is allocated per request (an entry is
//! allocated once per upstream connection). No `unsafe`. A request
//! that finds the slot empty opens a connection. A kept connection is reused only as the one idle
//! rule allows (`upstream::idle`): not idle for `pool_idle_timeout` since its last response head
//! arrived (the slot does not see the body end; the next request of an HTTP/1 downstream comes
//! only after it, so the stamp is never later than the upstream's own keep-alive clock), and
//! silent since (no byte, close or reset: the slot shares the socket with hyper's connection task
//! to check it, and hyper's task also fails a connection that reads anything while idle);
//! otherwise it is closed and replaced. A request that hyper reports as never sent is retried once
//! on a fresh connection, so an upstream closing an idle keep-alive connection never becomes a
//! client error. At most `MAX_INSTANCES`
//! connections are kept per downstream connection; they close when it closes, and one to an
//! instance that was drained (`upstream::balance`) closes at the connection's next request. At most `MAX_PINNED`
//! exist process-wide (a relaxed counter touched only on connect and close), so thousands of idle
//! clients do not pin thousands of upstream connections and file descriptors: past the cap a
//! request is handed back and goes through the shared pool.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::policy::error::{body_error, connect_error, ProxyError, UpstreamErrorKind};
use crate::policy::resend::{self, Unanswered};
use crate::upstream::balance::Load;
use crate::upstream::body::{RequestBody, RequestBodyError};
use crate::upstream::idle::Idle;
use crate::upstream::UpstreamStream;

/// Upstream instances one downstream connection keeps a connection to; more are replaced oldest
/// first.
const MAX_INSTANCES: usize = 4;

/// Pinned upstream connections in the process; past this, requests use the shared pool.
pub const MAX_PINNED: usize = 1024;

/// Open pinned upstream connections.
static PINNED: AtomicUsize = AtomicUsize::new(0);

/// Why a pinned request failed, with the side's classification for metrics and the circuit.
#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    #[error("connect to {0}: {1}")]
    Connect(Authority, std::io::Error),
    #[error("connect to {0}: timed out")]
    ConnectTimeout(Authority),
    #[error("upstream {0}: {1}")]
    Http(Authority, hyper::Error),
}

impl PinnedError {
    /// How the request failed, if in a way the resend rule may allow (`resend::allowed`).
    pub fn unanswered(&self) -> Option<Unanswered> {
        match self {
            PinnedError::Http(_, e) => resend::unanswered(e),
            _ => None,
        }
    }

    /// Which side failed: the client's request body (too large, or the client went away) or
    /// the upstream, as `policy::error::classify` does for the shared clients.
    pub fn classify(&self) -> ProxyError {
        let e = match self {
            PinnedError::Connect(_, e) => return connect_error(e),
            PinnedError::ConnectTimeout(_) => {
                return ProxyError::Upstream(UpstreamErrorKind::Timeout)
            }
            PinnedError::Http(_, e) => e,
        };
        let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(s) = src {
            if let Some(b) = s.downcast_ref::<RequestBodyError>() {
                return body_error(b);
            }
            src = s.source();
        }
        ProxyError::Upstream(if e.is_timeout() {
            UpstreamErrorKind::Timeout
        } else {
            UpstreamErrorKind::Reset
        })
    }
}

/// The upstream connections of one downstream connection.
#[derive(Default)]
struct Conns {
    entries: Vec<Entry>,
}

/// One pinned upstream connection.
struct Entry {
    instance: Authority,
    /// Its instance's counters: once the instance is drained, the connection is closed.
    load: Arc<Load>,
    sender: http1::SendRequest<RequestBody>,
    /// The socket hyper's connection task does its I/O on, looked at while idle (`idle::silent`);
    /// gone once that task has ended.
    stream: Weak<TcpStream>,
    /// When its last response head arrived (or it was opened): the start of its idle time.
    idle_since: Instant,
}

/// A downstream connection's pinned upstream connections: a take/put slot that never waits. An
/// HTTP/1 connection has one request at a time, so `try_lock` always finds it free (one atomic
/// exchange each way, as an `AtomicPtr` swap would cost, without `unsafe`); were it ever busy, the
/// request would simply open its own connection.
#[derive(Default)]
pub struct Slot(std::sync::Mutex<Conns>);

impl Slot {
    fn take(&self) -> Conns {
        self.0
            .try_lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }

    fn put(&self, conns: Conns) {
        if let Ok(mut c) = self.0.try_lock() {
            *c = conns;
        }
    }

    /// Sends `req` to `instance` on this downstream connection's own upstream connection, opening
    /// one if needed. Returns once the response head has arrived; the body streams afterwards and
    /// the connection takes the next request when it is done. `Err(req)`: no connection to
    /// `instance` and no room for another pinned one (`MAX_PINNED`); use the shared pool.
    pub async fn send(
        &self,
        instance: &Authority,
        load: &Arc<Load>,
        connect_timeout: Duration,
        idle: Idle,
        req: Request<RequestBody>,
    ) -> Result<Result<Response<Incoming>, PinnedError>, Request<RequestBody>> {
        let mut conns = self.take();
        let result = conns.send(instance, load, connect_timeout, idle, req).await;
        self.put(conns);
        result
    }
}

impl Entry {
    /// Whether this connection may carry a new request at `now` (the one idle rule).
    fn reusable(&self, idle: &Idle, now: Instant) -> bool {
        !self.sender.is_closed()
            && self
                .stream
                .upgrade()
                .is_some_and(|s| idle.reusable(&s, self.idle_since, now))
    }
}

impl Conns {
    async fn send(
        &mut self,
        instance: &Authority,
        load: &Arc<Load>,
        connect_timeout: Duration,
        idle: Idle,
        mut req: Request<RequestBody>,
    ) -> Result<Result<Response<Incoming>, PinnedError>, Request<RequestBody>> {
        self.entries.retain(|e| !e.load.drained());
        let mut retried = false;
        let now = Instant::now();
        loop {
            let i = match self.entries.iter().position(|e| e.instance == *instance) {
                Some(i) if self.entries[i].reusable(&idle, now) => i,
                found => {
                    if let Some(i) = found {
                        self.entries.remove(i);
                    }
                    if self.entries.len() >= MAX_INSTANCES {
                        self.entries.remove(0);
                    }
                    if PINNED.load(Relaxed) >= MAX_PINNED {
                        return Err(req);
                    }
                    let (sender, stream) = match connect(instance, connect_timeout).await {
                        Ok(s) => s,
                        Err(e) => return Ok(Err(e)),
                    };
                    self.entries.push(Entry {
                        instance: instance.clone(),
                        load: load.clone(),
                        sender,
                        stream,
                        idle_since: now,
                    });
                    self.entries.len() - 1
                }
            };
            let sender = &mut self.entries[i].sender;
            if let Err(e) = sender.ready().await {
                // Closed while idle: nothing was sent, so a fresh connection is safe.
                self.entries.remove(i);
                if retried {
                    return Ok(Err(PinnedError::Http(instance.clone(), e)));
                }
                retried = true;
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.entries[i].idle_since = Instant::now();
                    return Ok(Ok(resp));
                }
                Err(mut e) => {
                    self.entries.remove(i);
                    match e.take_message() {
                        Some(back) if !retried => {
                            retried = true;
                            req = back;
                        }
                        _ => {
                            let e = PinnedError::Http(instance.clone(), e.into_error());
                            return Ok(Err(e));
                        }
                    }
                }
            }
        }
    }
}

async fn connect(
    instance: &Authority,
    timeout: Duration,
) -> Result<(http1::SendRequest<RequestBody>, Weak<TcpStream>), PinnedError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(instance.as_str())).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(PinnedError::Connect(instance.clone(), e)),
        Err(_) => return Err(PinnedError::ConnectTimeout(instance.clone())),
    };
    let _ = stream.set_nodelay(true);
    let (io, stream) = UpstreamStream::shared(stream);
    let (sender, conn) = http1::Builder::new()
        .max_buf_size(crate::upstream::MAX_RESPONSE_HEAD)
        .handshake(io)
        .await
        .map_err(|e| PinnedError::Http(instance.clone(), e))?;
    PINNED.fetch_add(1, Relaxed);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "pinned upstream connection ended with an error");
        }
        PINNED.fetch_sub(1, Relaxed);
    });
    Ok((sender, stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An upstream that answers every request head with `ok`; counts the connections it accepted.
    async fn upstream() -> (Authority, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, Relaxed);
                tokio::spawn(async move {
                    let (mut buf, mut chunk) = (Vec::new(), [0u8; 1024]);
                    loop {
                        while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..i + 4);
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if s.write_all(ok).await.is_err() {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        (addr.to_string().parse().unwrap(), accepted)
    }

    async fn get(slot: &Slot, instance: &Authority, idle: Idle) {
        let req = Request::get("/").body(RequestBody::empty()).unwrap();
        let resp = slot
            .send(
                instance,
                &Default::default(),
                Duration::from_secs(5),
                idle,
                req,
            )
            .await
            .unwrap_or_else(|_| panic!("no room to pin"))
            .unwrap();
        assert_eq!(resp.status(), 200);
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap();
    }

    /// The pinned slot applies the one idle rule's expiry: a connection idle less than
    /// `pool_idle_timeout` is reused, one idle that long is closed and replaced (paused clock).
    #[tokio::test(start_paused = true)]
    async fn a_pinned_connection_idle_for_pool_idle_timeout_is_replaced() {
        let (instance, accepted) = upstream().await;
        let idle = Idle::new(Duration::from_secs(4));
        let slot = Slot::default();
        get(&slot, &instance, idle).await;
        tokio::time::advance(Duration::from_millis(3999)).await;
        get(&slot, &instance, idle).await;
        assert_eq!(accepted.load(Relaxed), 1, "reused while fresh");
        tokio::time::advance(Duration::from_secs(4)).await;
        get(&slot, &instance, idle).await;
        assert_eq!(accepted.load(Relaxed), 2, "expired: a new connection");
        assert_eq!(slot.take().entries.len(), 1, "the expired one was dropped");
    }
}
