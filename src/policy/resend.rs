//! The one resend rule: which upstream attempts that failed before any response flipgate sends
//! again, for every path (the HTTP/1.1 engine, the pinned connections, hyper's shared clients).
//!
//! Invariants:
//! - A request is sent again only when the failure shows the upstream did not process it, or
//!   processing it twice is harmless (`allowed`):
//!   - `Unanswered::Unprocessed`, the upstream said so: an HTTP/2 GOAWAY whose last-stream-id is
//!     below the request's stream (or that came before the stream was opened), or `RST_STREAM`
//!     with `REFUSED_STREAM` (RFC 9113 §6.8, §8.7). Any method.
//!   - `Unanswered::ClosedUnder`: a kept-alive connection closed under the request before any
//!     byte of a response, the upstream's idle timeout racing its reuse. It may have been
//!     processed, so only an idempotent method (`idempotent`, RFC 9110 §9.2.2).
//! - Its body is sent again whole or not at all: the request has none, or every byte taken from
//!   the client so far is still kept (`body::Replay`, HTTP/2 upstreams, up to
//!   `body::REPLAY_MAX`).
//! - A bounded number of times (`budget`): once after `ClosedUnder`; up to three times in all
//!   after `Unprocessed`, which is always safe, and which a busy upstream can repeat: when more
//!   requests are in flight than it serves per connection (nginx's `keepalive_requests`), the new
//!   connection takes more streams than it will process and refuses some again. A resend goes out
//!   on another connection (the failed one is closed, or has said GOAWAY, so no pool hands it out
//!   again), except after `REFUSED_STREAM`, whose connection stays usable and may carry it again.
//!   Every sending is within the exchange's one `upstream_timeout`.
//! - A failure that was resent is not recorded anywhere; the resend's outcome is recorded like any
//!   other. A request still unprocessed after its resends, or whose body could not be replayed, is
//!   `classify`'d as `LocalErrorKind::Refused` (503), never against the target.
//! - A request never written at all (hyper hands it back, `pinned`) is not a resend: it is written
//!   on another connection as hyper's own pool does.

use http::{HeaderMap, Method, Request, Uri, Version};

use crate::upstream::body::{Replay, RequestBody};

/// How an attempt failed before any response, in the ways that may allow a resend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// The upstream said it did not process the request (HTTP/2 GOAWAY, `REFUSED_STREAM`).
    Unprocessed,
    /// A kept-alive connection closed under the request before any response byte.
    ClosedUnder,
}

/// How many times in all a request may be sent again after failing `why`.
#[inline]
pub fn budget(why: Unanswered) -> u32 {
    match why {
        Unanswered::Unprocessed => 3,
        Unanswered::ClosedUnder => 1,
    }
}

/// Whether a request that failed `why`, and was sent again `resent` times already, may be sent
/// again: `idempotent` is its method's (`idempotent`), `replayable` whether its body can be sent
/// again whole (it has none, or a complete `Replay`).
#[inline]
pub fn allowed(why: Unanswered, idempotent: bool, replayable: bool, resent: u32) -> bool {
    replayable
        && resent < budget(why)
        && match why {
            Unanswered::Unprocessed => true,
            Unanswered::ClosedUnder => idempotent,
        }
}

/// Whether some failure of the upstream's protocol could allow a resend (HTTP/1.1 has no
/// refusal): whether to keep what a resend needs.
#[inline]
pub fn possible(http2: bool, idempotent: bool, replayable: bool) -> bool {
    allowed(Unanswered::ClosedUnder, idempotent, replayable, 0)
        || (http2 && allowed(Unanswered::Unprocessed, idempotent, replayable, 0))
}

/// The methods whose requests flipgate may send twice when it cannot know whether the first one
/// was processed. (`PUT` is idempotent too, but it carries a body, which is not kept for this.)
#[inline]
pub fn idempotent(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"DELETE")
}

/// How a request failed on one of hyper's clients, if in a way `allowed` may resend: walks the
/// error's causes for the HTTP/2 refusal (`refused`) or hyper's report of a connection closed
/// before the response (or of a request cancelled with its connection).
pub fn unanswered(e: &(dyn std::error::Error + 'static)) -> Option<Unanswered> {
    let mut src = Some(e);
    while let Some(s) = src {
        if let Some(h) = s.downcast_ref::<h2::Error>() {
            return refused(h).then_some(Unanswered::Unprocessed);
        }
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return Some(Unanswered::ClosedUnder);
            }
        }
        src = s.source();
    }
    None
}

/// Whether an HTTP/2 error says the upstream did not process the stream: a GOAWAY it sent (the
/// stream was above its last-stream-id, or opened after it), or its `REFUSED_STREAM`.
pub fn refused(e: &h2::Error) -> bool {
    e.is_remote() && (e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// What is kept of a request sent to one of hyper's clients so it can be sent again: its head
/// and, for a body, the body's `Replay`, which keeps the body while this lives.
pub struct Kept {
    method: Method,
    pub uri: Uri,
    headers: HeaderMap,
    version: Version,
    replay: Option<Replay>,
    /// Times sent again so far.
    resent: u32,
}

impl Kept {
    /// Keeps a copy of `req`'s head when some failure could allow a resend (`possible`), or
    /// when it may be moved to another instance after a failed connect (`movable`,
    /// `connect_retry`): it has no body, or its body is kept in `replay`.
    pub fn of(
        req: &Request<RequestBody>,
        http2: bool,
        replay: Option<Replay>,
        movable: bool,
    ) -> Option<Kept> {
        let bodyless = replay.is_none() && http_body::Body::is_end_stream(req.body());
        let idem = idempotent(req.method().as_str().as_bytes());
        let whole = bodyless || replay.is_some();
        (possible(http2, idem, whole) || (movable && whole)).then(|| Kept {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
            version: req.version(),
            replay,
            resent: 0,
        })
    }

    /// The request again, for another instance after its connect failed (`connect_retry`, which
    /// allows it once whatever the method), when its body can still be replayed whole. Not a
    /// resend: it takes nothing of the resend budget.
    pub fn elsewhere(&mut self) -> Option<Request<RequestBody>> {
        self.build()
    }

    /// The request again, when its last sending failed `why` in a way that allows it
    /// (`allowed`) and its body can still be replayed whole.
    pub fn again(&mut self, why: Option<Unanswered>) -> Option<Request<RequestBody>> {
        let idem = idempotent(self.method.as_str().as_bytes());
        if !allowed(why?, idem, true, self.resent) {
            return None;
        }
        let req = self.build()?;
        self.resent += 1;
        Some(req)
    }

    fn build(&self) -> Option<Request<RequestBody>> {
        let body = match &self.replay {
            None => RequestBody::empty(),
            Some(r) => r.again()?,
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        *req.version_mut() = self.version;
        Some(req)
    }
}
