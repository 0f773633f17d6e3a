//! Monotonic milliseconds for counters and deadlines.
//!
//! Invariants: based on `tokio::time::Instant`, so tests on a paused clock move it; never goes
//! backwards within a process; 0 is the first time anyone asked.

use std::sync::OnceLock;

use tokio::time::Instant;

static BASE: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the process's clock base.
#[inline]
pub fn now_ms() -> u64 {
    let base = *BASE.get_or_init(Instant::now);
    Instant::now().saturating_duration_since(base).as_millis() as u64
}

/// Wall-clock seconds since the Unix epoch, for persisted and displayed timestamps.
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
