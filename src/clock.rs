//! Monotonic milliseconds for counters and deadlines.
//!
//! Invariants: based on `tokio::time::Instant`, so tests on a paused clock move it; never goes
//! backwards within a process; 0 is the first time anyone asked. Adding a duration to a clock
//! reading goes through `deadline` or `add_ms`, which saturate: no setting can make it panic or wrap.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

static BASE: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the process's clock base.
#[inline]
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// `now_ms` for a clock reading already taken (a request's end, say): one clock read serves
/// both the latency and the counters' time.
#[inline]
pub fn ms_at(at: Instant) -> u64 {
    let base = *BASE.get_or_init(Instant::now);
    at.saturating_duration_since(base).as_millis() as u64
}

/// Wall-clock seconds since the Unix epoch, for persisted and displayed timestamps.
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// About thirty years: what "never" means for a deadline (as tokio's own far future).
const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `from + d`, or a far-future instant when that sum does not fit (`Instant + Duration` panics).
pub fn deadline(from: Instant, d: Duration) -> Instant {
    from.checked_add(d)
        .or_else(|| from.checked_add(FAR))
        .unwrap_or(from)
}

/// `ms + d` in milliseconds, saturating at `u64::MAX` instead of wrapping.
pub fn add_ms(ms: u64, d: Duration) -> u64 {
    ms.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_with_any_duration_saturate_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(
            deadline(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert!(deadline(now, Duration::MAX) >= now + Duration::from_secs(365 * 24 * 3600));
        assert_eq!(add_ms(5, Duration::from_millis(7)), 12);
        assert_eq!(add_ms(u64::MAX - 1, Duration::from_secs(1)), u64::MAX);
        assert_eq!(add_ms(1, Duration::MAX), u64::MAX);
    }
}
