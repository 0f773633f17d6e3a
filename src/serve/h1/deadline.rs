//! A connection's one deadline, moved on every phase of every request without touching tokio's
//! timer wheel in the common case.
//!
//! Invariants:
//! - `at` is the deadline that counts; the future completes only once `at` has passed.
//! - The armed `Sleep` never fires later than `at`: a deadline moved earlier re-arms it at once; a
//!   deadline moved later only records `at`, and when the armed `Sleep` fires first it is re-armed
//!   to `at` instead of completing. So the wheel is touched when a deadline comes closer or an
//!   armed one passes (about once per timeout period per busy connection), not once per phase:
//!   a request moves the deadline three or four times (idle, head, exchange, body), always later
//!   on a kept-alive connection, and each re-arm took a lock and a wheel removal and insertion.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::time::{Instant, Sleep};

pin_project_lite::pin_project! {
    /// A deadline that completes (as a future) once `at` has passed.
    pub struct Deadline {
        #[pin]
        sleep: Sleep,
        at: Instant,
    }
}

impl Deadline {
    /// A deadline at `at`.
    pub fn new(at: Instant) -> Self {
        Deadline {
            sleep: tokio::time::sleep_until(at),
            at,
        }
    }

    /// Moves the deadline to `at` (earlier or later).
    #[inline]
    pub fn set(self: Pin<&mut Self>, at: Instant) {
        let this = self.project();
        *this.at = at;
        if at < this.sleep.deadline() {
            this.sleep.reset(at);
        }
    }

    /// The deadline that counts.
    #[inline]
    pub fn at(&self) -> Instant {
        self.at
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            ready!(this.sleep.as_mut().poll(cx));
            if this.sleep.deadline() >= *this.at {
                return Poll::Ready(());
            }
            // Armed for an earlier deadline that was since moved later.
            this.sleep.as_mut().reset(*this.at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::time::Duration;

    fn fired(d: Pin<&mut Deadline>) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        d.poll(&mut cx).is_ready()
    }

    #[tokio::test(start_paused = true)]
    async fn completes_at_the_deadline_that_counts_moved_either_way() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut d = pin!(Deadline::new(t0 + 10 * s));
        // Later: the armed sleep fires at 10 s and is re-armed, not completed.
        d.as_mut().set(t0 + 30 * s);
        tokio::time::advance(10 * s).await;
        assert!(!fired(d.as_mut()), "moved later: not yet");
        tokio::time::advance(19 * s).await;
        assert!(!fired(d.as_mut()));
        tokio::time::advance(s).await;
        assert!(fired(d.as_mut()), "at 30 s");
        // After it fired: later again, then earlier.
        d.as_mut().set(t0 + 60 * s);
        assert!(!fired(d.as_mut()));
        d.as_mut().set(t0 + 35 * s);
        tokio::time::advance(4 * s).await;
        assert!(!fired(d.as_mut()));
        tokio::time::advance(s).await;
        assert!(fired(d.as_mut()), "moved earlier: at 35 s");
        assert_eq!(d.at(), t0 + 35 * s);
    }

    #[tokio::test(start_paused = true)]
    async fn awaiting_it_wakes_at_the_moved_deadline() {
        let t0 = Instant::now();
        let mut d = pin!(Deadline::new(t0 + Duration::from_secs(1)));
        d.as_mut().set(t0 + Duration::from_secs(5));
        d.as_mut().await;
        assert!(Instant::now() >= t0 + Duration::from_secs(5));
    }
}
