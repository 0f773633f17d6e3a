//! The request body sent upstream: the client's body with the size limit, and for HTTP/2
//! upstreams a replay for a resend.
//!
//! Invariants: no boxing and no buffering: frames (data and trailers, so gRPC trailers survive)
//! pass through as they come. The limit is checked by counting frame lengths, so a body without
//! `Content-Length` is cut off at the limit with `RequestBodyError::TooLarge`, which the proxy
//! answers with 413 without blaming the target.
//! `BodyWatch` tells, when the exchange's deadline passes, whether flipgate was waiting on the
//! client's body (the client's fault: 408) or on the upstream (504): the last poll of the client's
//! body was pending, versus the upstream not taking more.
//!
//! Replay (`RequestBody::replayable`, for requests to HTTP/2 upstreams, whose streams an upstream
//! may refuse unprocessed, see `policy::resend`): the body still streams frame by frame as the
//! client sends it; a reference to each frame taken from the client (no copy) is kept as well,
//! while they total at most `REPLAY_MAX` data bytes, until the exchange has its response head
//! (`Replay` is dropped). `Replay::again` gives the body from its first byte (the kept frames, then
//! the rest of the client's body, the limit counting each byte once) as long as nothing taken from
//! the client was let go; the body it replaces ends with `RequestBodyError::Withdrawn` if it is
//! polled again. Past `REPLAY_MAX` nothing is kept and a refused request with that body is not sent
//! again.
//!
//! An `Expect: 100-continue` request's body is not polled while its `expect::Gate` is closed.
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::expect::Gate;
use super::tee::Tee;

/// Request body bytes kept to send a request again (HTTP/2 upstreams): the size up to which the
/// HTTP/1.1 engine relays bodies itself (`h1::head::MAX_BODY`), as nginx's default
/// `client_body_buffer_size` is a few pages.
pub const REPLAY_MAX: usize = 64 * 1024;

/// Why the request body could not be relayed: the client's side, never the target's.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// More bytes than `server.max_body_bytes`.
    #[error("request body exceeds the configured limit")]
    TooLarge,
    /// The client's body stream failed (aborted upload, bad chunking).
    #[error("client body: {0}")]
    Client(#[from] hyper::Error),
    /// flipgate withdrew the body from a sending whose exchange is over: it was sent again, or
    /// the upstream answered an `Expect: 100-continue` request without asking for it. Only ever
    /// seen by that sending's connection, never by a live exchange.
    #[error("request body withdrawn from a finished sending")]
    Withdrawn,
}

/// The body of every request flipgate sends upstream.
pub struct RequestBody(Src);

enum Src {
    /// No body (a bodyless request sent again).
    Empty,
    /// A body held whole (a shadow copy's, `serve::shadow`), sent as one frame.
    Full(Option<Bytes>),
    /// The client's body, streamed through.
    Client(Client),
    /// The client's body shared with its `Replay`: this body is the `attempt`-th sending of it
    /// (0 the first) and replays kept frame `next` next.
    Kept {
        shared: Arc<Mutex<Shared>>,
        attempt: u32,
        next: usize,
    },
}

/// The client's body, with the size limit and the watch.
struct Client {
    /// `None` once cut off at the limit.
    inner: Option<Incoming>,
    /// Bytes still allowed; `u64::MAX` when unlimited.
    remaining: u64,
    /// Whether the last poll of the client's body was pending (shared with `BodyWatch`).
    waiting: Option<Arc<AtomicBool>>,
    /// `Expect: 100-continue`: the body is not polled until this opens (`expect`).
    gate: Option<Gate>,
    /// A shadow copy's share of the body (`upstream::tee`): fed each data frame as it is taken.
    tee: Option<Tee>,
}

impl Client {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        if let Some(gate) = &mut self.gate {
            match gate.poll_open(cx) {
                // Waiting on the upstream, not the client: `waiting` stays false.
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => self.gate = None,
                Poll::Ready(Err(_)) => {
                    self.inner = None;
                    return Poll::Ready(Some(Err(RequestBodyError::Withdrawn)));
                }
            }
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let r = Pin::new(inner).poll_frame(cx);
        if let Some(w) = &self.waiting {
            w.store(r.is_pending(), Ordering::Relaxed);
        }
        match r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let n = d.len() as u64;
                    if n > self.remaining {
                        self.inner = None;
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge)));
                    }
                    self.remaining -= n;
                    if let Some(tee) = &mut self.tee {
                        tee.push(d);
                    }
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

/// A kept frame of the client's body.
#[derive(Clone)]
enum KeptFrame {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl KeptFrame {
    fn frame(&self) -> Frame<Bytes> {
        match self {
            KeptFrame::Data(d) => Frame::data(d.clone()),
            KeptFrame::Trailers(t) => Frame::trailers(t.clone()),
        }
    }
}

/// A replayable body's state, shared by its sendings and its `Replay`.
struct Shared {
    client: Client,
    /// Every frame taken from the client so far, while `complete`.
    kept: Vec<KeptFrame>,
    kept_bytes: usize,
    /// Nothing taken from the client was let go: `kept` replays the body so far.
    complete: bool,
    /// New frames are kept (the body is `complete` and its `Replay` alive).
    keeping: bool,
    /// The client's body failed (too large, aborted): there is nothing to send again.
    failed: bool,
    /// The current sending; earlier ones are withdrawn.
    attempt: u32,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Keeps a frame just taken from the client, or lets everything go past `REPLAY_MAX`.
    fn keep(&mut self, frame: &Frame<Bytes>) {
        if !self.keeping {
            return;
        }
        let kept = match frame.data_ref() {
            Some(d) => {
                self.kept_bytes += d.len();
                KeptFrame::Data(d.clone())
            }
            None => match frame.trailers_ref() {
                Some(t) => KeptFrame::Trailers(t.clone()),
                None => return,
            },
        };
        if self.kept_bytes > REPLAY_MAX {
            self.let_go();
            return;
        }
        self.kept.push(kept);
    }

    fn let_go(&mut self) {
        self.complete = false;
        self.keeping = false;
        self.kept = Vec::new();
    }
}

/// Sends a replayable request body again (see the module doc); dropping it ends the keeping.
pub struct Replay(Arc<Mutex<Shared>>);

impl Replay {
    /// The body again from its first byte, withdrawing it from the sending before; `None` when
    /// part of what was taken from the client is no longer kept, or the client's body failed.
    pub fn again(&self) -> Option<RequestBody> {
        let mut s = lock(&self.0);
        if !s.complete || s.failed {
            return None;
        }
        s.attempt += 1;
        Some(RequestBody(Src::Kept {
            shared: self.0.clone(),
            attempt: s.attempt,
            next: 0,
        }))
    }
}

impl Drop for Replay {
    /// No resend can come any more: nothing new is kept, and what is kept goes unless a resend
    /// is still replaying it (then that body lets it go as it passes).
    fn drop(&mut self) {
        let mut s = lock(&self.0);
        s.keeping = false;
        s.complete = false;
        if s.attempt == 0 {
            s.kept = Vec::new();
        }
    }
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
    /// Wraps the client's body with `limit` bytes allowed (0 = unlimited), and a watch on it;
    /// with `gate`, the body is not polled until the gate opens.
    pub fn new(inner: Incoming, limit: u64, gate: Option<Gate>) -> (RequestBody, BodyWatch) {
        let (mut client, watch) = Self::client(inner, limit);
        client.gate = gate;
        (RequestBody(Src::Client(client)), watch)
    }

    /// As `new`, keeping what a resend needs (see the module doc).
    pub fn replayable(inner: Incoming, limit: u64) -> (RequestBody, BodyWatch, Replay) {
        let (client, watch) = Self::client(inner, limit);
        let shared = Arc::new(Mutex::new(Shared {
            client,
            kept: Vec::new(),
            kept_bytes: 0,
            complete: true,
            keeping: true,
            failed: false,
            attempt: 0,
        }));
        let body = RequestBody(Src::Kept {
            shared: shared.clone(),
            attempt: 0,
            next: 0,
        });
        (body, watch, Replay(shared))
    }

    fn client(inner: Incoming, limit: u64) -> (Client, BodyWatch) {
        let waiting = (!inner.is_end_stream()).then(Arc::default);
        let watch = BodyWatch(waiting.clone());
        let client = Client {
            inner: Some(inner),
            remaining: if limit == 0 { u64::MAX } else { limit },
            waiting,
            gate: None,
            tee: None,
        };
        (client, watch)
    }

    /// No body (used to resend a bodyless request).
    pub fn empty() -> RequestBody {
        RequestBody(Src::Empty)
    }

    /// `bytes` as the whole body (a shadow copy's).
    pub fn full(bytes: Bytes) -> RequestBody {
        RequestBody(Src::Full(Some(bytes)))
    }

    /// Feeds the client's body, as it is taken, to a shadow copy's `tee`.
    pub fn tee(&mut self, tee: Tee) {
        match &mut self.0 {
            Src::Client(c) => c.tee = Some(tee),
            Src::Kept { shared, .. } => lock(shared).client.tee = Some(tee),
            Src::Empty | Src::Full(_) => {}
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
        match &mut self.get_mut().0 {
            Src::Empty => Poll::Ready(None),
            Src::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Src::Client(c) => c.poll_frame(cx),
            Src::Kept {
                shared,
                attempt,
                next,
            } => {
                let mut s = lock(shared);
                if s.attempt != *attempt {
                    return Poll::Ready(Some(Err(RequestBodyError::Withdrawn)));
                }
                if let Some(f) = s.kept.get(*next) {
                    let f = f.frame();
                    *next += 1;
                    return Poll::Ready(Some(Ok(f)));
                }
                if !s.keeping && !s.kept.is_empty() {
                    // Replayed, and no resend can come any more.
                    s.kept = Vec::new();
                }
                let r = s.client.poll_frame(cx);
                match &r {
                    Poll::Ready(Some(Ok(frame))) => s.keep(frame),
                    Poll::Ready(Some(Err(_))) => {
                        s.failed = true;
                        s.let_go();
                    }
                    _ => {}
                }
                *next = s.kept.len();
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Src::Empty => true,
            Src::Full(b) => b.is_none(),
            Src::Client(c) => c.is_end_stream(),
            Src::Kept {
                shared,
                attempt,
                next,
            } => {
                let s = lock(shared);
                s.attempt != *attempt || (*next >= s.kept.len() && s.client.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Src::Empty => SizeHint::with_exact(0),
            Src::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Src::Client(c) => c.size_hint(),
            Src::Kept { shared, next, .. } => {
                let s = lock(shared);
                let ahead: u64 = s
                    .kept
                    .get(*next..)
                    .unwrap_or_default()
                    .iter()
                    .map(|f| match f {
                        KeptFrame::Data(d) => d.len() as u64,
                        KeptFrame::Trailers(_) => 0,
                    })
                    .sum();
                let rest = s.client.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(ahead + rest.lower());
                if let Some(upper) = rest.upper() {
                    hint.set_upper(ahead + upper);
                }
                hint
            }
        }
    }
}
