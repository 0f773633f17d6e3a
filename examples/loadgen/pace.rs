//! The open loop's clock: request k is due at `start + k / rate`, released on the generator's
//! own thread.
//!
//! tokio's timers have a granularity of one millisecond, far coarser than the gap between two
//! requests at tens of thousands a second, so the pacer sleeps on a `timerfd` (nanosecond
//! expiries, no timer slack) registered with the runtime's reactor. An earlier pacer was a
//! thread of its own sleeping in `nanosleep`: every release then cost two context switches
//! and a cross-thread wake of the runtime, which on a small VM was most of the generator's CPU
//! and, on a load CPU shared with the upstream, became the queue the measurement saw.
//!
//! Invariants: a request is never released before its due time; each is released once, to
//! connection `k % conns`, in order; dropping the senders at the end stops every connection.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::UnboundedSender;

/// A one-shot monotonic timer with sub-millisecond precision, awaited through the reactor.
struct Timer(AsyncFd<OwnedFd>);

impl Timer {
    fn new() -> io::Result<Timer> {
        // SAFETY: timerfd_create has no memory arguments; a valid descriptor is owned here.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is owned by nothing else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the OwnedFd keeps the descriptor open, and the same one, as long as the
        // AsyncFd that owns it.
        let registered =
            unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) };
        Ok(Timer(registered.map_err(io::Error::from)?))
    }

    /// Returns at `at` or a little after (the reactor's wake-up), never before.
    async fn sleep_until(&self, at: Instant) -> io::Result<()> {
        loop {
            let now = Instant::now();
            if at <= now {
                return Ok(());
            }
            self.arm(at - now)?;
            let mut ready = self.0.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a buffer of 8.
            let n = unsafe {
                libc::read(
                    self.0.as_raw_fd(),
                    expirations.as_mut_ptr().cast(),
                    expirations.len(),
                )
            };
            // Read or not (EAGAIN: a stale edge), the next wait needs a new expiry's edge.
            ready.clear_ready();
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock {
                    return Err(e);
                }
            }
        }
    }

    fn arm(&self, after: Duration) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                // A zero it_value disarms: never ask for less than a nanosecond.
                tv_nsec: after.subsec_nanos().max(1) as libc::c_long,
            },
        };
        // SAFETY: spec is a valid itimerspec; the old value is not asked for.
        let rc =
            unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Releases request k at `start + k / rate`, round-robin over the connections, until `end`.
pub async fn pace(conns: Vec<UnboundedSender<Instant>>, rate: u64, start: Instant, end: Instant) {
    let timer = Timer::new().expect("timerfd for the pacer");
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut k: u64 = 0;
    loop {
        let due = start + period * k as u32;
        if due >= end {
            break;
        }
        timer.sleep_until(due).await.expect("pacer timer");
        // Release everything that is due now, then sleep again.
        let now = Instant::now();
        loop {
            let due = start + period * k as u32;
            if due > now || due >= end {
                break;
            }
            let _ = conns[(k % conns.len() as u64) as usize].send(due);
            k += 1;
        }
    }
    // Dropping the senders ends every connection's loop.
}
