//! The one idle rule for kept-alive upstream connections, written once and applied by all three
//! places that keep them: the HTTP/1.1 engine's per-thread pool (`serve::h1::upstreams`), the connections
//! pinned to a downstream connection (`serve::proxy::pinned::Slot`), and hyper-util's shared pool
//! (`upstream::Clients`, built from the same values by `Idle::configure`).
//!
//! Invariants:
//! - Expiry: a connection idle for `server.pool_idle_timeout` or longer is closed, never reused
//!   (`Idle::expired`). "Idle since" is stamped no later than the upstream's own keep-alive clock
//!   starts (the end of its last response, or for a pinned connection, whose body the slot does
//!   not see, the arrival of its last response head), so a connection is never reused after the
//!   upstream had more than `pool_idle_timeout` to close it.
//! - Silence: a connection is reused only if the upstream sent nothing, closed nothing and reset
//!   nothing since its last response ended (STYLE habit 18, as hyper's pool and Pingora's
//!   `idle_poll`). A byte that arrives while no request is outstanding (a second response from a
//!   buggy upstream, an unsolicited `408` before an idle close, a late body for a `HEAD`) would
//!   otherwise be read as the next request's answer by another client (`silent`).
//! - Caps: hyper-util's pool keeps at most `MAX_IDLE_PER_HOST` idle connections per instance;
//!   the engine at most `MAX_IDLE_PER_THREAD` per worker thread, all instances together (a
//!   per-instance count would cost a scan on every give); a downstream connection pins at most
//!   `serve::proxy::pinned::MAX_INSTANCES`, and the process at most `serve::proxy::pinned::MAX_PINNED`.
//! - Time is passed in (`now`), so the rule is tested on tokio's paused clock. Nothing here
//!   allocates or takes a lock; `silent` costs no system call while the reactor has seen nothing.

use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle connections hyper-util's shared pool keeps per upstream instance.
pub const MAX_IDLE_PER_HOST: usize = 1024;

/// Idle connections the HTTP/1.1 engine keeps per worker thread, all instances together; past it
/// the least recently used one is closed.
pub const MAX_IDLE_PER_THREAD: usize = 256;

/// The idle policy in force: `server.pool_idle_timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Idle {
    timeout: Duration,
}

impl Idle {
    /// The policy for `pool_idle_timeout`.
    #[inline]
    pub fn new(pool_idle_timeout: Duration) -> Idle {
        Idle {
            timeout: pool_idle_timeout,
        }
    }

    /// Whether a connection idle since `since` must be closed at `now` rather than reused.
    #[inline]
    pub fn expired(&self, since: Instant, now: Instant) -> bool {
        now.saturating_duration_since(since) >= self.timeout
    }

    /// Whether an idle connection may carry a new request at `now`: not expired, and silent.
    #[inline]
    pub fn reusable(&self, stream: &TcpStream, since: Instant, now: Instant) -> bool {
        !self.expired(since, now) && silent(stream)
    }

    /// Applies the policy to hyper-util's pool, whose own timer enforces the expiry and whose
    /// connection tasks read while idle (an unexpected byte or EOF ends the connection, so the
    /// pool never hands it out).
    pub fn configure(&self, b: &mut hyper_util::client::legacy::Builder) {
        b.pool_idle_timeout(self.timeout)
            .pool_max_idle_per_host(MAX_IDLE_PER_HOST);
    }
}

/// Whether an idle upstream connection stayed silent: the peer has not closed or reset it, and
/// has sent nothing since its last response ended. Any readability disqualifies it. Costs no
/// system call while the reactor has seen nothing; when it has, one non-blocking read decides (a
/// stale readiness reads `WouldBlock`, which also clears it). A byte read here is lost, but the
/// connection is then closed anyway.
///
/// Asked through the stream's reader waker slot (`poll_read_ready`), which no task uses while the
/// connection is idle: no waiter is queued and dequeued.
pub fn silent(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Ok(())) => matches!(
            stream.try_read(&mut [0u8; 1]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        ),
        Poll::Ready(Err(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (theirs, _) = l.accept().await.unwrap();
        (ours, theirs)
    }

    /// Expiry is `>= pool_idle_timeout` since the connection went idle, on the paused clock.
    #[tokio::test(start_paused = true)]
    async fn a_connection_expires_at_pool_idle_timeout() {
        let idle = Idle::new(Duration::from_secs(4));
        let (ours, _theirs) = pair().await;
        let since = Instant::now();
        tokio::time::advance(Duration::from_millis(3999)).await;
        assert!(!idle.expired(since, Instant::now()));
        assert!(idle.reusable(&ours, since, Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(idle.expired(since, Instant::now()));
        assert!(!idle.reusable(&ours, since, Instant::now()));
    }

    /// A connection on which the upstream wrote, or that it closed, is not silent.
    #[tokio::test]
    async fn a_byte_or_a_close_while_idle_disqualifies() {
        let (ours, mut theirs) = pair().await;
        assert!(silent(&ours));
        theirs.write_all(b"H").await.unwrap();
        ours.readable().await.unwrap();
        assert!(!silent(&ours));

        let (ours, theirs) = pair().await;
        drop(theirs);
        ours.readable().await.unwrap();
        assert!(!silent(&ours));
    }
}
