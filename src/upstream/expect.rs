//! `Expect: 100-continue` through flipgate (RFC 9110 §10.1.1): the client learns whether to send
//! its body from the upstream, not from flipgate.
//!
//! hyper's server sends the client `100 Continue` the first time the request body is polled, and
//! hyper's client polls the body as soon as it has written the request head, so flipgate used to
//! invite every upload at once, even when the upstream was about to refuse it (a 401, say) and
//! close: the client then uploaded into a closing connection, and could get a 502 instead of the
//! upstream's answer.
//!
//! Invariants:
//! - The expectation is forwarded, and the client's body is not polled (so the client gets no
//!   `100 Continue`) until the upstream asks for it with its own `100 Continue`
//!   (`hyper::ext::on_informational`), or `WAIT` has passed without it: an upstream that ignores
//!   the expectation must still get the body, and curl and Go's client wait as long before
//!   sending it anyway.
//! - An upstream that answers with a final status first gets no body: the client gets that answer
//!   and no `100 Continue`. Once the exchange is over (the response relayed, or it failed), the
//!   gate is shut: the body that was never sent ends with an error, so the upstream connection,
//!   which holds a request it will never complete, is closed rather than left waiting or reused.
//! - Only requests with a body to HTTP/1 upstreams are gated. hyper's HTTP/2 client reports no
//!   `1xx`, and an HTTP/2 upstream that answers early ends only its stream, so to an HTTP/2
//!   upstream the body is streamed at once, as before.
//! - No lock on the data path of other requests; a gated request allocates one `Arc` and, if it
//!   waits, one timer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{header, Request, StatusCode};
use tokio::time::Sleep;

/// How long the body waits for the upstream's `100 Continue` before it is sent anyway.
pub const WAIT: Duration = Duration::from_secs(1);

const WAITING: u8 = 0;
const OPEN: u8 = 1;
const SHUT: u8 = 2;

/// Shared by the exchange (`Expectation`), the body (`Gate`) and hyper's 1xx callback.
#[derive(Default)]
struct State {
    /// `WAITING`, then `OPEN` or `SHUT` for good.
    phase: AtomicU8,
    /// The body's task, woken when the phase leaves `WAITING`.
    waker: Mutex<Option<Waker>>,
}

impl State {
    fn leave_waiting(&self, to: u8) {
        if self
            .phase
            .compare_exchange(WAITING, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let waker = self
                .waker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// The exchange's side: opened by the upstream's `100 Continue`, shut when dropped (the
/// exchange is over) unless open by then.
pub struct Expectation(Arc<State>);

impl Drop for Expectation {
    fn drop(&mut self) {
        self.0.leave_waiting(SHUT);
    }
}

/// The body's side: whether the client's body may be polled.
pub struct Gate {
    state: Arc<State>,
    /// Started on the first poll, when hyper has written the request head.
    wait: Option<Pin<Box<Sleep>>>,
}

/// The gate was shut before it opened: the body is not to be sent.
#[derive(Debug)]
pub struct Shut;

impl Gate {
    /// Ready once the body may be sent; `Err(Shut)` if it never will be.
    pub fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Shut>> {
        let state = &self.state;
        let decided = || match state.phase.load(Ordering::Acquire) {
            OPEN => Poll::Ready(Ok(())),
            SHUT => Poll::Ready(Err(Shut)),
            _ => Poll::Pending,
        };
        if decided().is_ready() {
            return decided();
        }
        *state.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        // A change between the first look and the registration found no waker to wake.
        if decided().is_ready() {
            return decided();
        }
        let wait = self
            .wait
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WAIT)));
        if wait.as_mut().poll(cx).is_ready() {
            state.leave_waiting(OPEN);
            return decided();
        }
        Poll::Pending
    }
}

/// For a request with a body to an HTTP/1 upstream that carries `Expect: 100-continue`: asks
/// hyper to report the upstream's `100 Continue`, and returns the exchange's and the body's side
/// of the gate. `None` for any other request.
pub fn watch<B: http_body::Body>(req: &mut Request<B>) -> Option<(Expectation, Gate)> {
    let expects = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !expects || req.body().is_end_stream() {
        return None;
    }
    let state = Arc::new(State::default());
    let on_continue = state.clone();
    hyper::ext::on_informational(req, move |res| {
        if res.status() == StatusCode::CONTINUE {
            on_continue.leave_waiting(OPEN);
        }
    });
    let gate = Gate {
        state: state.clone(),
        wait: None,
    };
    Some((Expectation(state), gate))
}
