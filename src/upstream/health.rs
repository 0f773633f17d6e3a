//! Instance health state: passive outlier ejection from real traffic, and the verdict of the
//! active checks (run by `control::health_check`).
//!
//! Invariants: all state is relaxed atomics per instance, written by the request path (outcomes) and
//! the check task, read by instance selection; no locks. An instance is *available* when its last
//! active checks allow it (or none are configured) and it is not ejected. Ejection follows
//! `consecutive_failures` upstream faults in a row and lasts `ejection`, doubling for repeat offenders
//! up to 8x; one success resets the streak. Time is passed in (monotonic milliseconds), so tests
//! drive it without sleeping.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Passive ejection policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlier {
    /// Faults in a row that eject an instance; 0 disables ejection.
    pub consecutive_failures: u32,
    /// Base ejection time.
    pub ejection: Duration,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive_failures: 5,
            ejection: Duration::from_secs(10),
        }
    }
}

/// Health of one upstream instance.
#[derive(Debug)]
pub struct InstanceHealth {
    streak: AtomicU32,
    ejections: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// Result of active checks (true when none are configured).
    active_ok: AtomicBool,
    active_fails: AtomicU32,
    active_passes: AtomicU32,
}

impl Default for InstanceHealth {
    fn default() -> Self {
        InstanceHealth {
            streak: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            active_ok: AtomicBool::new(true),
            active_fails: AtomicU32::new(0),
            active_passes: AtomicU32::new(0),
        }
    }
}

/// What a recorded outcome did, for logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Ejected(Duration),
    Unhealthy,
    Healthy,
}

impl InstanceHealth {
    /// Whether new requests may go to this instance at `now_ms`.
    #[inline]
    pub fn available(&self, now_ms: u64) -> bool {
        self.active_ok.load(Relaxed) && self.ejected_until_ms.load(Relaxed) <= now_ms
    }

    /// Records a request outcome (`fault` = connect failure, reset, timeout or 5xx).
    #[inline]
    pub fn record(&self, fault: bool, now_ms: u64, policy: &Outlier) -> Change {
        if !fault {
            if self.streak.load(Relaxed) != 0 {
                self.streak.store(0, Relaxed);
            }
            if self.ejections.load(Relaxed) != 0 && self.ejected_until_ms.load(Relaxed) <= now_ms {
                self.ejections.store(0, Relaxed);
            }
            return Change::None;
        }
        if policy.consecutive_failures == 0 {
            return Change::None;
        }
        let streak = self.streak.fetch_add(1, Relaxed) + 1;
        if streak < policy.consecutive_failures || self.ejected_until_ms.load(Relaxed) > now_ms {
            return Change::None;
        }
        self.streak.store(0, Relaxed);
        let n = self.ejections.fetch_add(1, Relaxed).min(3);
        let d = policy.ejection.saturating_mul(1 << n);
        self.ejected_until_ms
            .store(crate::clock::add_ms(now_ms, d), Relaxed);
        Change::Ejected(d)
    }

    /// Records an active check result with hysteresis: `fall` failures in a row mark it unhealthy,
    /// `rise` passes in a row mark it healthy again.
    pub fn record_check(&self, ok: bool, rise: u32, fall: u32) -> Change {
        if ok {
            self.active_fails.store(0, Relaxed);
            let passes = self.active_passes.fetch_add(1, Relaxed) + 1;
            if !self.active_ok.load(Relaxed) && passes >= rise {
                self.active_ok.store(true, Relaxed);
                return Change::Healthy;
            }
        } else {
            self.active_passes.store(0, Relaxed);
            let fails = self.active_fails.fetch_add(1, Relaxed) + 1;
            if self.active_ok.load(Relaxed) && fails >= fall {
                self.active_ok.store(false, Relaxed);
                return Change::Unhealthy;
            }
        }
        Change::None
    }

    /// Whether active checks currently pass.
    pub fn checks_pass(&self) -> bool {
        self.active_ok.load(Relaxed)
    }

    /// Whether the instance is ejected at `now_ms`.
    pub fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Relaxed) > now_ms
    }
}

/// Consecutive passes that bring an instance back, and failures that take it out.
pub const RISE: u32 = 2;
pub const FALL: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_after_streak_and_backs_off() {
        let h = InstanceHealth::default();
        let p = Outlier::default();
        for _ in 0..4 {
            assert_eq!(h.record(true, 0, &p), Change::None);
        }
        assert_eq!(
            h.record(true, 0, &p),
            Change::Ejected(Duration::from_secs(10))
        );
        assert!(!h.available(5_000));
        assert!(h.available(10_000));
        for _ in 0..4 {
            h.record(true, 10_000, &p);
        }
        assert_eq!(
            h.record(true, 10_000, &p),
            Change::Ejected(Duration::from_secs(20))
        );
        assert!(h.available(30_000));
        h.record(false, 30_000, &p);
        for _ in 0..4 {
            h.record(true, 30_000, &p);
        }
        assert_eq!(
            h.record(true, 30_000, &p),
            Change::Ejected(Duration::from_secs(10))
        );
    }

    #[test]
    fn success_resets_the_streak() {
        let h = InstanceHealth::default();
        let p = Outlier::default();
        for _ in 0..10 {
            h.record(true, 0, &p);
            h.record(true, 0, &p);
            h.record(false, 0, &p);
        }
        assert!(h.available(0));
    }

    #[test]
    fn active_checks_have_hysteresis() {
        let h = InstanceHealth::default();
        assert_eq!(h.record_check(false, 2, 2), Change::None);
        assert_eq!(h.record_check(false, 2, 2), Change::Unhealthy);
        assert!(!h.available(0));
        assert_eq!(h.record_check(true, 2, 2), Change::None);
        assert_eq!(h.record_check(true, 2, 2), Change::Healthy);
        assert!(h.available(0));
    }
}
