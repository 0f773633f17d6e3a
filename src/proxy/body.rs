//! Body types: the request body sent upstream (with the size limit) and the response body sent
//! downstream (the upstream's streamed through, or a small local one).
//!
//! Invariants: no boxing and no buffering: frames (data and trailers, so gRPC trailers survive)
//! pass through as they come; a local body is one `Bytes` chunk. The request limit is checked by
//! counting frame lengths, so a body without `Content-Length` is cut off at the limit with
//! `RequestBodyError::TooLarge`, which the proxy answers with 413 without blaming the target. A
//! response body holds the upstream in-flight slot until it is finished or dropped.
//! `BodyWatch` tells, when the exchange's deadline passes, whether flipgate was waiting on the
//! client's body (the client's fault: 408) or on the upstream (504): the last poll of the client's
//! body was pending, versus the upstream not taking more.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::upstream::InflightGuard;

/// Why the request body could not be relayed: the client's side, never the target's.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// More bytes than `server.max_body_bytes`.
    #[error("request body exceeds the configured limit")]
    TooLarge,
    /// The client's body stream failed (aborted upload, bad chunking).
    #[error("client body: {0}")]
    Client(#[from] hyper::Error),
}

/// The body of every request flipgate sends upstream.
pub struct RequestBody {
    /// `None` for a retry of a request that had no body.
    inner: Option<Incoming>,
    /// Bytes still allowed; `u64::MAX` when unlimited.
    remaining: u64,
    /// Whether the last poll of the client's body was pending (shared with `BodyWatch`).
    waiting: Option<Arc<AtomicBool>>,
}

/// Whether an exchange is waiting on the client's request body. Empty (no allocation) for a
/// request without a body.
#[derive(Default)]
pub struct BodyWatch(Option<Arc<AtomicBool>>);

impl BodyWatch {
    /// True when the body is unfinished and the client has not sent what was last asked for.
    pub fn waiting_on_client(&self) -> bool {
        self.0.as_ref().is_some_and(|w| w.load(Ordering::Relaxed))
    }
}

impl RequestBody {
    /// Wraps the client's body with `limit` bytes allowed (0 = unlimited), and a watch on it.
    pub fn new(inner: Incoming, limit: u64) -> (RequestBody, BodyWatch) {
        let waiting = (!inner.is_end_stream()).then(Arc::default);
        let watch = BodyWatch(waiting.clone());
        let body = RequestBody {
            inner: Some(inner),
            remaining: if limit == 0 { u64::MAX } else { limit },
            waiting,
        };
        (body, watch)
    }

    /// No body (used to resend a bodyless request once after an idle-connection race).
    pub fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            remaining: 0,
            waiting: None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let r = Pin::new(inner).poll_frame(cx);
        if let Some(w) = &this.waiting {
            w.store(r.is_pending(), Ordering::Relaxed);
        }
        match r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let n = d.len() as u64;
                    if n > this.remaining {
                        this.inner = None;
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge)));
                    }
                    this.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// Why a response body ended early.
#[derive(Debug, thiserror::Error)]
pub enum ResponseBodyError {
    #[error("upstream body: {0}")]
    Upstream(#[from] hyper::Error),
    /// No byte for `server.body_idle_timeout`.
    #[error("upstream body moved no byte for {0:?}")]
    Idle(std::time::Duration),
}

/// Body of every response flipgate sends.
pub enum ProxyBody {
    /// The upstream's body, holding its in-flight slot (if limits are on) until done.
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

/// The upstream's response body on its way to the client: cut when it moves no byte for `idle`.
/// The timer is made only once the body first has to wait, so a body that arrives with its head
/// costs none.
pub struct UpstreamBody {
    body: Incoming,
    slot: Option<InflightGuard>,
    idle: std::time::Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A gRPC call whose status comes in the trailers: recorded when they arrive.
    grpc: Option<GrpcOutcome>,
}

/// A gRPC call waiting for its `grpc-status`, to record against its target.
pub struct GrpcOutcome {
    pub target: Arc<crate::snapshot::TargetEntry>,
    pub index: usize,
    pub outlier: crate::health::Outlier,
    /// Time to the response head (the latency the window records).
    pub elapsed: std::time::Duration,
}

impl GrpcOutcome {
    /// Records the call's status code: the metric, and whether it failed (the route's
    /// `grpc_error_codes`) in the instance's health and the circuit window.
    pub fn finish(self, code: u8) {
        let t = &self.target;
        t.metrics.grpc(code);
        let failed = super::grpc::is_error(t.grpc_errors, code);
        super::record_outcome(t, self.index, &self.outlier, failed, self.elapsed);
    }
}

impl ProxyBody {
    /// The upstream's body, cut after `idle` without a byte.
    pub fn upstream(
        body: Incoming,
        slot: Option<InflightGuard>,
        idle: std::time::Duration,
        grpc: Option<GrpcOutcome>,
    ) -> ProxyBody {
        ProxyBody::Upstream(UpstreamBody {
            body,
            slot,
            idle,
            timer: None,
            grpc,
        })
    }

    /// A local body from static or owned bytes.
    pub fn full(b: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Some(b.into()))
    }

    /// No body.
    pub fn empty() -> ProxyBody {
        ProxyBody::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(u) => {
                let r = Pin::new(&mut u.body).poll_frame(cx);
                match &r {
                    Poll::Pending => {
                        let idle = u.idle;
                        let timer = u
                            .timer
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                        if timer.as_mut().poll(cx).is_ready() {
                            u.slot.take();
                            if let Some(g) = u.grpc.take() {
                                g.finish(super::grpc::UNKNOWN);
                            }
                            return Poll::Ready(Some(Err(ResponseBodyError::Idle(idle))));
                        }
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(t) = &mut u.timer {
                            t.as_mut().reset(tokio::time::Instant::now() + u.idle);
                        }
                        if let Some(trailers) = frame.trailers_ref() {
                            if let Some(g) = u.grpc.take() {
                                let code = super::grpc::status(trailers);
                                g.finish(code.unwrap_or(super::grpc::UNKNOWN));
                            }
                        }
                    }
                    Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                        u.slot.take();
                        // Ended (or broke) without a status: UNKNOWN, as gRPC clients see it.
                        if let Some(g) = u.grpc.take() {
                            g.finish(super::grpc::UNKNOWN);
                        }
                    }
                }
                r.map(|o| o.map(|r| r.map_err(ResponseBodyError::Upstream)))
            }
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(u) => u.body.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(u) => u.body.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}
