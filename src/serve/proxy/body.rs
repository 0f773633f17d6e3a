//! The response body sent downstream: the upstream's streamed through, or a small local one.
//!
//! Invariants: no boxing and no buffering: frames (data and trailers, so gRPC trailers survive)
//! pass through as they come; a local body is one `Bytes` chunk. A response body holds the
//! upstream in-flight slot until it is finished or dropped, and an `Expect: 100-continue`
//! exchange's side of its gate (`Held`), so the gate is shut only once the response is through.
//!
//! A response body that moves no byte for `server.body_idle_timeout` is cut (its timer is made
//! only once it first has to wait); a gRPC call whose status comes in the trailers is recorded
//! against its target when they arrive (`GrpcOutcome`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;

use crate::policy::grpc;
use crate::upstream::expect::Expectation;
use crate::upstream::InflightGuard;

/// What an upstream's response body holds until it is finished or dropped.
#[derive(Default)]
pub struct Held {
    /// The in-flight slot (balancing and drain count it; `max_upstream_connections` bounds it).
    pub slot: Option<InflightGuard>,
    /// An `Expect: 100-continue` exchange's side of the gate: shut when the response is through,
    /// ending a body the upstream never asked for (and so its connection) only then.
    pub expect: Option<Expectation>,
}

/// Why a response body ended early.
#[derive(Debug, thiserror::Error)]
pub enum ResponseBodyError {
    #[error("upstream body: {0}")]
    Upstream(#[from] hyper::Error),
    #[error("{0}")]
    Own(#[from] super::direct::OwnBodyError),
    /// No byte for `server.body_idle_timeout`.
    #[error("upstream body moved no byte for {0:?}")]
    Idle(std::time::Duration),
}

/// Body of every response flipgate sends. Not boxed: a box is an allocation per request, and the
/// body is moved only into hyper's stream or connection.
#[allow(clippy::large_enum_variant)]
pub enum ProxyBody {
    /// The upstream's body, with what it holds until done.
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

/// Where an upstream's response body comes from: hyper's client, or the engine's own upstream
/// connection (`direct`, HTTP/2 streams to HTTP/1.1 upstreams).
pub enum Source {
    Hyper(Incoming),
    Own(super::direct::Own),
}

impl Body for Source {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        match self.get_mut() {
            Source::Hyper(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(ResponseBodyError::Upstream),
            Source::Own(b) => Pin::new(b).poll_frame(cx).map_err(ResponseBodyError::Own),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Source::Hyper(b) => b.is_end_stream(),
            Source::Own(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Hyper(b) => b.size_hint(),
            Source::Own(b) => b.size_hint(),
        }
    }
}

/// The upstream's response body on its way to the client: cut when it moves no byte for `idle`.
/// The timer is made only once the body first has to wait, so a body that arrives with its head
/// costs none.
pub struct UpstreamBody {
    body: Source,
    held: Held,
    idle: std::time::Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A gRPC call whose status comes in the trailers: recorded when they arrive.
    grpc: Option<GrpcOutcome>,
}

/// A gRPC call waiting for its `grpc-status`, to record against its target.
pub struct GrpcOutcome {
    pub target: Arc<crate::snapshot::TargetEntry>,
    pub index: usize,
    pub outlier: crate::upstream::health::Outlier,
    /// Time to the response head (the latency the window records).
    pub elapsed: std::time::Duration,
}

impl GrpcOutcome {
    /// Records the call's status code: the metric, and whether it failed (the route's
    /// `grpc_error_codes`) in the instance's health and the circuit window.
    pub fn finish(self, code: u8) {
        let t = &self.target;
        t.metrics.grpc(code);
        let failed = grpc::is_error(t.grpc_errors, code);
        let now_ms = crate::clock::now_ms();
        super::record_outcome(t, self.index, &self.outlier, failed, self.elapsed, now_ms);
    }
}

impl ProxyBody {
    /// The upstream's body, cut after `idle` without a byte.
    pub fn upstream(
        body: Source,
        held: Held,
        idle: std::time::Duration,
        grpc: Option<GrpcOutcome>,
    ) -> ProxyBody {
        ProxyBody::Upstream(UpstreamBody {
            body,
            held,
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
                            u.held = Held::default();
                            if let Some(g) = u.grpc.take() {
                                g.finish(grpc::UNKNOWN);
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
                                let code = grpc::status(trailers);
                                g.finish(code.unwrap_or(grpc::UNKNOWN));
                            }
                        }
                    }
                    Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                        u.held = Held::default();
                        // Ended (or broke) without a status: UNKNOWN, as gRPC clients see it.
                        if let Some(g) = u.grpc.take() {
                            g.finish(grpc::UNKNOWN);
                        }
                    }
                }
                r
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
