//! Sliding-window outcome counters for one target, recorded from the request path.
//!
//! Invariants: recording is a handful of relaxed atomic operations, no allocation, and no lock but
//! one: the first bad outcome after the circuit task began waiting wakes it (`bad_since`), once. The
//! window is `BUCKETS` time buckets; each bucket remembers the tick it counts, and a stale bucket is
//! reset by the first recorder of a new tick (a concurrent recorder may lose a count at the boundary,
//! which is acceptable for rates). Time is passed in (milliseconds on a monotonic clock) so tests
//! drive it with tokio's paused clock. Each bucket, and the lifetime counters, also hold a latency
//! histogram with `LATENCY_BINS` log-spaced bins (two per power of two of milliseconds): one
//! bin-index computation (`latency_bin`: a leading-zeros count and a shift) and one relaxed add
//! per histogram per request.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use tokio::sync::Notify;

/// Process-wide count of recorded outcomes that can trip a circuit (errors and slow requests).
/// The circuit task evaluates as soon as it moves (`bad_since`), so a rollback does not wait for
/// the next full tick and the task needs no short timer to find out.
static BAD_OUTCOMES: AtomicU64 = AtomicU64::new(0);

/// Set by a circuit task about to wait in `bad_since`; the first bad outcome after it clears it and
/// wakes every task waiting (`BAD_NOTIFY`). So the request path pays one relaxed add and one atomic
/// swap per bad outcome, and takes the notifier's lock at most once per evaluation.
static BAD_ARMED: AtomicBool = AtomicBool::new(false);
static BAD_NOTIFY: Notify = Notify::const_new();

/// The current value of the bad-outcome counter (see `BAD_OUTCOMES`).
pub fn bad_outcomes() -> u64 {
    BAD_OUTCOMES.load(Relaxed)
}

/// Completes once the bad-outcome counter differs from `seen`.
pub async fn bad_since(seen: u64) {
    let mut notified = std::pin::pin!(BAD_NOTIFY.notified());
    loop {
        // Registered, then armed, then one more look: an outcome counted after the look finds
        // the flag set and wakes this waiter.
        notified.as_mut().enable();
        BAD_ARMED.store(true, SeqCst);
        if BAD_OUTCOMES.load(SeqCst) != seen {
            return;
        }
        notified.as_mut().await;
        notified.set(BAD_NOTIFY.notified());
    }
}

/// Buckets per window: the window slides in steps of `window / BUCKETS`.
pub const BUCKETS: usize = 10;

/// Latency histogram bins: bin 0 is under 1 ms, then two bins per power of two of milliseconds
/// (lower edges 1, 2, 3, 4, 6, 8, 12, 16, ... ms); the last bin takes everything from about 33 s.
pub const LATENCY_BINS: usize = 32;

/// Counts of requests per latency bin (`latency_bin`).
pub type Latencies = [u64; LATENCY_BINS];

/// The histogram bin of a latency in milliseconds.
#[inline]
pub fn latency_bin(ms: u64) -> usize {
    if ms == 0 {
        return 0;
    }
    let log = 63 - ms.leading_zeros() as usize;
    let half = if log == 0 {
        0
    } else {
        (ms >> (log - 1)) as usize & 1
    };
    (1 + 2 * log + half).min(LATENCY_BINS - 1)
}

/// The smallest latency (ms) bin `i` holds.
pub fn bin_floor_ms(i: usize) -> f64 {
    match i {
        0 => 0.0,
        _ => {
            let log = (i - 1) / 2;
            let half = (i - 1) % 2;
            let base = (1u64 << log) as f64;
            base + half as f64 * base / 2.0
        }
    }
}

/// The latency (ms) above every request of bin `i` (infinite for the last bin).
pub fn bin_ceiling_ms(i: usize) -> f64 {
    match i {
        _ if i + 1 >= LATENCY_BINS => f64::INFINITY,
        // Bin 2 is never used (there is no half step between 1 and 2 ms): bin 1 is [1, 2).
        1 => 2.0,
        _ => bin_floor_ms(i + 1),
    }
}

/// Totals over the current window.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    /// Requests slower than the circuit's latency bound.
    pub slow: u64,
}

impl Totals {
    /// The sum of two totals (this replica's and the rest of the fleet's).
    pub fn plus(self, o: Totals) -> Totals {
        Totals {
            requests: self.requests.saturating_add(o.requests),
            errors: self.errors.saturating_add(o.errors),
            slow: self.slow.saturating_add(o.slow),
        }
    }

    /// Error share of requests; 0 when there were none.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

#[derive(Default)]
struct Bucket {
    tick: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    slow: AtomicU64,
    latency: [AtomicU64; LATENCY_BINS],
}

/// Outcome counters of one target over a sliding window.
pub struct Window {
    /// Unique to this window in this process and across restarts (`control::rollout` uses it to
    /// tell whether a persisted count baseline was taken on this window).
    id: u64,
    /// Every outcome recorded into this window since it was made, never reset by sliding
    /// (requests, errors): what a rollout step counts from.
    lifetime: [AtomicU64; 2],
    /// Latency histogram of every request since the window was made (what the sequential latency
    /// test reads deltas from).
    lifetime_latency: [AtomicU64; LATENCY_BINS],
    width_ms: u64,
    /// Latency above which a request counts as slow; `u64::MAX` when unused.
    slow_ms: u64,
    buckets: [Bucket; BUCKETS],
    /// The other replicas' totals for this target (requests, errors, slow), set about once a
    /// second by the shared state store (`state::etcd`); zero without one.
    fleet: [AtomicU64; 3],
}

impl Window {
    /// A window of `length`, judging requests slower than `slow` (if any) as slow.
    pub fn new(length: Duration, slow: Option<Duration>) -> Window {
        let width_ms =
            (u64::try_from(length.as_millis()).unwrap_or(u64::MAX) / BUCKETS as u64).max(1);
        Window {
            id: next_id(),
            lifetime: Default::default(),
            lifetime_latency: Default::default(),
            width_ms,
            slow_ms: slow.map_or(u64::MAX, |d| {
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
            }),
            buckets: Default::default(),
            fleet: Default::default(),
        }
    }

    /// The other replicas' totals, as last set.
    pub fn fleet(&self) -> Totals {
        Totals {
            requests: self.fleet[0].load(Relaxed),
            errors: self.fleet[1].load(Relaxed),
            slow: self.fleet[2].load(Relaxed),
        }
    }

    /// Sets the other replicas' totals (the shared store's thread, never the request path).
    pub fn set_fleet(&self, t: Totals) {
        self.fleet[0].store(t.requests, Relaxed);
        self.fleet[1].store(t.errors, Relaxed);
        self.fleet[2].store(t.slow, Relaxed);
    }

    /// The window's length.
    pub fn length(&self) -> Duration {
        Duration::from_millis(self.width_ms * BUCKETS as u64)
    }

    /// Records one outcome at `now_ms`. `+1` offset keeps tick 0 distinct from "never used".
    #[inline]
    pub fn record(&self, now_ms: u64, error: bool, latency_ms: u64) {
        let tick = now_ms / self.width_ms + 1;
        let b = &self.buckets[(tick % BUCKETS as u64) as usize];
        let seen = b.tick.load(Relaxed);
        if seen != tick
            && b.tick
                .compare_exchange(seen, tick, Relaxed, Relaxed)
                .is_ok()
        {
            b.requests.store(0, Relaxed);
            b.errors.store(0, Relaxed);
            b.slow.store(0, Relaxed);
            for l in &b.latency {
                l.store(0, Relaxed);
            }
        }
        b.requests.fetch_add(1, Relaxed);
        let bin = latency_bin(latency_ms);
        b.latency[bin].fetch_add(1, Relaxed);
        self.lifetime_latency[bin].fetch_add(1, Relaxed);
        self.lifetime[0].fetch_add(1, Relaxed);
        if error {
            self.lifetime[1].fetch_add(1, Relaxed);
        }
        let slow = latency_ms > self.slow_ms;
        if error {
            b.errors.fetch_add(1, Relaxed);
        }
        if slow {
            b.slow.fetch_add(1, Relaxed);
        }
        if error || slow {
            BAD_OUTCOMES.fetch_add(1, SeqCst);
            if BAD_ARMED.swap(false, SeqCst) {
                BAD_NOTIFY.notify_waiters();
            }
        }
    }

    /// This window's identity (see the field).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Requests and errors recorded since this window was made (never slides, never cleared).
    pub fn lifetime(&self) -> (u64, u64) {
        (
            self.lifetime[0].load(Relaxed),
            self.lifetime[1].load(Relaxed),
        )
    }

    /// The latency histogram of every request since this window was made.
    pub fn lifetime_latency(&self) -> Latencies {
        std::array::from_fn(|i| self.lifetime_latency[i].load(Relaxed))
    }

    /// The latency histogram of the buckets still inside the window at `now_ms`.
    pub fn latency(&self, now_ms: u64) -> Latencies {
        let mut out = [0; LATENCY_BINS];
        self.live_buckets(now_ms, |b| {
            for (o, l) in out.iter_mut().zip(&b.latency) {
                *o += l.load(Relaxed);
            }
        });
        out
    }

    fn live_buckets(&self, now_ms: u64, mut f: impl FnMut(&Bucket)) {
        let now_tick = now_ms / self.width_ms + 1;
        let oldest = now_tick.saturating_sub(BUCKETS as u64 - 1).max(1);
        for b in &self.buckets {
            let tick = b.tick.load(Relaxed);
            if tick >= oldest && tick <= now_tick {
                f(b);
            }
        }
    }

    /// Sums the buckets still inside the window at `now_ms`.
    pub fn totals(&self, now_ms: u64) -> Totals {
        let now_tick = now_ms / self.width_ms + 1;
        // Tick 0 means "never used" (or cleared), whatever the time.
        let oldest = now_tick.saturating_sub(BUCKETS as u64 - 1).max(1);
        let mut t = Totals::default();
        for b in &self.buckets {
            let tick = b.tick.load(Relaxed);
            if tick >= oldest && tick <= now_tick {
                t.requests += b.requests.load(Relaxed);
                t.errors += b.errors.load(Relaxed);
                t.slow += b.slow.load(Relaxed);
            }
        }
        t
    }

    /// Forgets everything (after a trip or an operator action the new candidate starts clean).
    pub fn clear(&self) {
        for b in &self.buckets {
            b.tick.store(0, Relaxed);
            b.requests.store(0, Relaxed);
            b.errors.store(0, Relaxed);
            b.slow.store(0, Relaxed);
            for l in &b.latency {
                l.store(0, Relaxed);
            }
        }
        self.set_fleet(Totals::default());
    }
}

/// A window id no other window of this or an earlier process has: the process's start time and
/// id in the high bits, a counter in the low ones.
fn next_id() -> u64 {
    use std::sync::OnceLock;
    static BASE: OnceLock<u64> = OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        xxhash_rust::xxh3::xxh3_64(
            &[
                nanos.to_le_bytes(),
                u64::from(std::process::id()).to_le_bytes(),
            ]
            .concat(),
        ) << 24
    });
    base.wrapping_add(N.fetch_add(1, Relaxed) & 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slides() {
        let w = Window::new(Duration::from_secs(10), Some(Duration::from_millis(100)));
        for i in 0..10 {
            w.record(i * 1000, i % 2 == 0, 150);
        }
        assert_eq!(
            w.totals(9_000),
            Totals {
                requests: 10,
                errors: 5,
                slow: 10
            }
        );
        assert_eq!(w.totals(14_000).requests, 5);
        assert_eq!(w.totals(30_000).requests, 0);
        w.record(31_000, true, 1);
        w.clear();
        assert_eq!(w.totals(31_000), Totals::default());
        w.record(30_000, false, 1);
        assert_eq!(
            w.totals(30_000),
            Totals {
                requests: 1,
                errors: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn latency_bins_are_log_spaced_and_contain_their_values() {
        for ms in [
            0u64, 1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 300, 1000, 65_000, 10_000_000,
        ] {
            let b = latency_bin(ms);
            assert!(bin_floor_ms(b) <= ms as f64, "{ms} in bin {b}");
            assert!((ms as f64) < bin_ceiling_ms(b), "{ms} in bin {b}");
        }
        assert_eq!(latency_bin(300), latency_bin(257));
        assert_ne!(latency_bin(300), latency_bin(400));
        let w = Window::new(Duration::from_secs(10), None);
        w.record(0, false, 300);
        w.record(0, false, 0);
        assert_eq!(w.latency(0)[latency_bin(300)], 1);
        assert_eq!(w.lifetime_latency()[0], 1);
        assert_eq!(w.latency(60_000).iter().sum::<u64>(), 0);
    }

    #[test]
    fn cleared_early_in_the_process_counts_nothing() {
        let w = Window::new(Duration::from_secs(60), None);
        w.record(10, true, 1);
        w.clear();
        assert_eq!(w.totals(20), Totals::default());
        w.record(30, false, 1);
        assert_eq!(w.totals(30).requests, 1);
    }
}
