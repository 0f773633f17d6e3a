//! Instance choice within a target: power of two choices on requests in flight (the default) or
//! round robin, both weighted, over the instances that may take new requests.
//!
//! Invariants:
//! - Lock-free and allocation-free: a choice reads relaxed atomics (in flight, drained, health)
//!   and a per-thread random state or the target's relaxed round-robin cursor; the weights are
//!   prefix sums computed when the snapshot is built.
//! - An instance is *usable* when it is not drained, passes its active checks and is not ejected.
//!   A drained instance is never chosen, whatever else holds. Ejection never empties a target:
//!   when every usable-but-for-ejection instance is ejected, one of them is used anyway (as
//!   before). `avoid` (the instance a connect just failed on, `policy::connect_retry`) is never
//!   chosen.
//! - The per-instance counters (`Load`: requests and tunnels in flight, drained) are shared by
//!   address across snapshots (`Upstream::new` takes them over from the previous upstream of the
//!   target), so a reload that adds an instance neither resets another's in-flight count nor
//!   forgets its drain.
//! - Power of two choices: two independent weighted draws; the one with fewer requests in flight
//!   per unit of weight wins (ties to the first). With every instance at 0 in flight this is a
//!   weighted random choice; under load it avoids the busiest instance without a global scan.
//!   Round robin: a weighted cursor (`weight` consecutive turns per instance).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

/// How a target spreads requests over its instances (`lb` in the target's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lb {
    /// Power of two choices on requests in flight (`"p2c"`, the default).
    #[default]
    P2c,
    /// Weighted round robin (`"round_robin"`).
    RoundRobin,
}

impl Lb {
    /// The route file's spelling.
    pub fn parse(s: &str) -> Option<Lb> {
        match s {
            "p2c" => Some(Lb::P2c),
            "round_robin" => Some(Lb::RoundRobin),
            _ => None,
        }
    }

    /// The route file's spelling, for status.
    pub fn as_str(self) -> &'static str {
        match self {
            Lb::P2c => "p2c",
            Lb::RoundRobin => "round_robin",
        }
    }
}

/// The counters of one instance that outlive a snapshot (see the module doc).
#[derive(Debug, Default)]
pub struct Load {
    /// Requests and tunnels in flight to the instance (always counted: balancing, drain).
    inflight: AtomicUsize,
    /// Drained by an operator: takes no new request.
    drained: AtomicBool,
}

impl Load {
    /// Requests and tunnels in flight.
    #[inline]
    pub fn inflight(&self) -> usize {
        self.inflight.load(Relaxed)
    }

    /// Takes one in-flight slot; returns the count before.
    #[inline]
    pub fn enter(&self) -> usize {
        self.inflight.fetch_add(1, Relaxed)
    }

    /// Gives one in-flight slot back.
    #[inline]
    pub fn leave(&self) {
        self.inflight.fetch_sub(1, Relaxed);
    }

    /// Whether the instance is drained.
    #[inline]
    pub fn drained(&self) -> bool {
        self.drained.load(Relaxed)
    }

    /// Sets the drain flag (by the snapshot builder, from the runtime state); returns whether it
    /// changed. A new drain moves `drain_epoch`, so pools sweep their idle connections.
    pub fn set_drained(&self, drained: bool) -> bool {
        let changed = self.drained.swap(drained, Relaxed) != drained;
        if changed && drained {
            DRAIN_EPOCH.fetch_add(1, Relaxed);
        }
        changed
    }
}

/// Moves whenever an instance is drained: a pool of idle connections that saw another value
/// closes its connections to drained instances (`serve::h1`'s per-thread pool, on its next use).
static DRAIN_EPOCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The current drain epoch (one relaxed load).
#[inline]
pub fn drain_epoch() -> u64 {
    DRAIN_EPOCH.load(Relaxed)
}

/// What a choice found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// This instance (index into the target's instances).
    Instance(usize),
    /// Some instance is not drained, but none passes its active checks (or is other than
    /// `avoid`): `503`, counted against the target as today.
    NoHealthy,
    /// Every instance (other than `avoid`) is drained: a local `503`, never the target's fault.
    Drained,
}

/// The weights of a target's instances, as prefix sums (the draw's table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weights {
    /// `cum[i]` = sum of the weights of instances `0..=i`.
    cum: Box<[u64]>,
    /// Every weight is the same: a draw is a plain modulo.
    uniform: bool,
}

impl Weights {
    /// From per-instance weights (each at least 1).
    pub fn new(weights: &[u32]) -> Weights {
        let mut total = 0u64;
        let cum = weights
            .iter()
            .map(|w| {
                total += u64::from((*w).max(1));
                total
            })
            .collect();
        Weights {
            cum,
            uniform: weights.windows(2).all(|w| w[0] == w[1]),
        }
    }

    fn total(&self) -> u64 {
        self.cum.last().copied().unwrap_or(0)
    }

    /// The weight of instance `i`.
    #[inline]
    pub fn of(&self, i: usize) -> u64 {
        self.cum[i] - if i == 0 { 0 } else { self.cum[i - 1] }
    }

    /// The instance that position `r` (`< total`) of the weighted line falls in.
    #[inline]
    fn at(&self, r: u64) -> usize {
        if self.uniform {
            let w = self.cum[0];
            return (r / w) as usize;
        }
        self.cum.partition_point(|c| *c <= r)
    }

    /// A weighted random instance.
    #[inline]
    fn draw(&self) -> usize {
        self.at(random() % self.total())
    }
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

/// A per-thread seed from the standard library's per-thread hash keys (no allocation, unlike
/// `rand`'s thread generator, so even a thread's first choice allocates nothing).
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(&h as *const _ as usize);
    h.finish() | 1
}

/// A per-thread xorshift64* draw: statistical quality enough to spread requests, one multiply.
#[inline]
fn random() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11
    })
}

/// Everything a choice reads about a target's instances.
pub struct Pool<'a> {
    pub lb: Lb,
    pub weights: &'a Weights,
    pub loads: &'a [std::sync::Arc<Load>],
    pub health: &'a [crate::upstream::health::InstanceHealth],
    /// The round-robin cursor.
    pub cursor: &'a AtomicUsize,
}

impl Pool<'_> {
    /// Chooses an instance for a new request at `now_ms`, never `avoid` (see the module doc).
    #[inline]
    pub fn pick(&self, now_ms: u64, avoid: Option<usize>) -> Pick {
        let n = self.loads.len();
        let usable = |i: usize| {
            Some(i) != avoid
                && !self.loads[i].drained()
                && self.health[i].checks_pass()
                && !self.health[i].ejected(now_ms)
        };
        let first = match self.lb {
            Lb::P2c => {
                let (a, b) = (self.weights.draw(), self.weights.draw());
                match (usable(a), usable(b)) {
                    (true, true) => return Pick::Instance(self.lighter(a, b)),
                    (true, false) => return Pick::Instance(a),
                    (false, true) => return Pick::Instance(b),
                    (false, false) => a,
                }
            }
            Lb::RoundRobin => {
                let turn = self.cursor.fetch_add(1, Relaxed) as u64;
                let i = self.weights.at(turn % self.weights.total());
                if usable(i) {
                    return Pick::Instance(i);
                }
                i
            }
        };
        // Both draws missed: the next usable instance in order, then the fallbacks.
        let mut ejected = None;
        let mut drained = true;
        for k in 0..n {
            let i = (first + k) % n;
            if Some(i) == avoid || self.loads[i].drained() {
                continue;
            }
            drained = false;
            let h = &self.health[i];
            if !h.checks_pass() {
                continue;
            }
            if !h.ejected(now_ms) {
                return Pick::Instance(i);
            }
            ejected.get_or_insert(i);
        }
        match (ejected, drained) {
            (Some(i), _) => Pick::Instance(i),
            (None, true) => Pick::Drained,
            (None, false) => Pick::NoHealthy,
        }
    }

    /// Of two instances, the one with fewer in flight per unit of weight (`a` on a tie).
    #[inline]
    fn lighter(&self, a: usize, b: usize) -> usize {
        let la = self.loads[a].inflight() as u64 * self.weights.of(b);
        let lb = self.loads[b].inflight() as u64 * self.weights.of(a);
        if lb < la {
            b
        } else {
            a
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::health::InstanceHealth;
    use std::sync::Arc;

    struct Fixture {
        weights: Weights,
        loads: Vec<Arc<Load>>,
        health: Vec<InstanceHealth>,
        cursor: AtomicUsize,
    }

    fn fixture(weights: &[u32]) -> Fixture {
        Fixture {
            weights: Weights::new(weights),
            loads: weights.iter().map(|_| Arc::default()).collect(),
            health: weights.iter().map(|_| InstanceHealth::default()).collect(),
            cursor: AtomicUsize::new(0),
        }
    }

    impl Fixture {
        fn pool(&self, lb: Lb) -> Pool<'_> {
            Pool {
                lb,
                weights: &self.weights,
                loads: &self.loads,
                health: &self.health,
                cursor: &self.cursor,
            }
        }
    }

    fn counts(f: &Fixture, lb: Lb, n: usize) -> Vec<usize> {
        let mut c = vec![0; f.loads.len()];
        for _ in 0..n {
            match f.pool(lb).pick(0, None) {
                Pick::Instance(i) => c[i] += 1,
                other => panic!("{other:?}"),
            }
        }
        c
    }

    #[test]
    fn weights_share_requests_on_both_policies() {
        let f = fixture(&[1, 3]);
        let rr = counts(&f, Lb::RoundRobin, 4000);
        assert_eq!(rr, vec![1000, 3000]);
        let p2c = counts(&f, Lb::P2c, 40_000);
        // With nothing in flight p2c is a weighted draw (the first of two on a tie).
        assert!(p2c[1] > 2 * p2c[0], "{p2c:?}");
    }

    #[test]
    fn p2c_avoids_the_busy_instance() {
        let f = fixture(&[1, 1, 1]);
        for _ in 0..100 {
            f.loads[0].enter();
        }
        let c = counts(&f, Lb::P2c, 3000);
        // Instance 0 only wins when both draws fall on it (1 in 9).
        assert!(c[0] < 600, "{c:?}");
    }

    #[test]
    fn drained_instances_are_never_chosen_and_all_drained_is_its_own_answer() {
        let f = fixture(&[1, 1, 1]);
        f.loads[1].set_drained(true);
        for lb in [Lb::P2c, Lb::RoundRobin] {
            assert_eq!(counts(&f, lb, 300)[1], 0);
        }
        f.loads[0].set_drained(true);
        f.loads[2].set_drained(true);
        assert_eq!(f.pool(Lb::P2c).pick(0, None), Pick::Drained);
        assert_eq!(f.pool(Lb::RoundRobin).pick(0, None), Pick::Drained);
    }

    #[test]
    fn avoid_is_never_chosen() {
        let f = fixture(&[1, 1]);
        for lb in [Lb::P2c, Lb::RoundRobin] {
            for _ in 0..100 {
                assert_eq!(f.pool(lb).pick(0, Some(0)), Pick::Instance(1));
            }
        }
        let one = fixture(&[1]);
        assert_eq!(one.pool(Lb::P2c).pick(0, Some(0)), Pick::Drained);
    }

    #[test]
    fn ejection_never_empties_a_target() {
        let f = fixture(&[1, 1]);
        let outlier = crate::upstream::health::Outlier::default();
        for h in &f.health {
            for _ in 0..outlier.consecutive_failures {
                h.record(true, 0, &outlier);
            }
        }
        assert!(matches!(f.pool(Lb::P2c).pick(1, None), Pick::Instance(_)));
        f.loads[0].set_drained(true);
        assert_eq!(f.pool(Lb::P2c).pick(1, None), Pick::Instance(1));
    }
}
