//! Seeded simulations of the circuit's two error rules on synthetic traffic, for the tests and
//! `examples/analysis_table.rs` (the table in docs/analysis.md).
//!
//! Invariants: pure and deterministic for a seed; each rule is the production code path on
//! counts (`Evidence::accumulate` and `Evidence::call` for `sequential`, `threshold_reason` on a
//! 10-bucket sliding window like `window::Window` for `threshold`), evaluated once per
//! `interval_ms` of simulated time. Traffic arrives at an exact rate; each request goes to the
//! canary with probability `canary` and fails with its target's error rate, independently.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::analysis::{Call, Counts, Evidence};
use super::window::{Totals, BUCKETS};
use crate::config::analysis::{Analysis, Mode};
use crate::config::{Circuit, Compare};

/// The traffic of one simulated canary.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Requests per second to the route.
    pub rps: f64,
    /// Canary share (0.05 = 5 %).
    pub canary: f64,
    pub live_rate: f64,
    pub canary_rate: f64,
    /// How long a run lasts without a trip, seconds.
    pub horizon_s: u64,
    /// How often the circuit evaluates.
    pub interval_ms: u64,
}

/// What happened in one run: canary requests served when it tripped, and when it was first
/// proven not worse (sequential only).
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    pub tripped_at: Option<u64>,
    pub not_worse_at: Option<u64>,
    /// Canary requests served in the run (up to the trip or the horizon).
    pub requests: u64,
}

/// A circuit with `mode` and the defaults of the route file otherwise.
pub fn circuit(mode: Mode, compare: Compare, max_error_rate: f64, analysis: Analysis) -> Circuit {
    Circuit {
        window: std::time::Duration::from_secs(30),
        min_requests: 20,
        max_error_rate,
        bake: std::time::Duration::from_secs(300),
        compare,
        max_p99: None,
        mode,
        analysis,
    }
}

/// A Binomial(n, p) draw (inversion; split in halves while n·p is large).
pub fn binomial(rng: &mut SmallRng, n: u64, p: f64) -> u64 {
    if n == 0 || p <= 0.0 {
        return 0;
    }
    if p >= 1.0 {
        return n;
    }
    if n as f64 * p > 30.0 {
        let h = n / 2;
        return binomial(rng, h, p) + binomial(rng, n - h, p);
    }
    let q = 1.0 - p;
    let ratio = p / q;
    let mut prob = q.powf(n as f64);
    let mut cdf = prob;
    let u: f64 = rng.random();
    let mut k = 0;
    while u > cdf && k < n {
        prob *= ratio * (n - k) as f64 / (k + 1) as f64;
        k += 1;
        cdf += prob;
    }
    k
}

/// One run of `c` (either mode) on `sc` with `seed`.
pub fn run(c: &Circuit, sc: &Scenario, seed: u64) -> Outcome {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut ev = Evidence::start("canary", "canary", c.compare == Compare::Live, false);
    let width_ms = (c.window.as_millis() as u64 / BUCKETS as u64).max(1);
    // (tick, canary totals, live totals) per bucket, like `Window`.
    let mut buckets = [(0u64, Totals::default(), Totals::default()); BUCKETS];
    let mut out = Outcome::default();
    let steps = sc.horizon_s * 1000 / sc.interval_ms;
    for step in 1..=steps {
        let t_ms = step * sc.interval_ms;
        let n = (t_ms as f64 * sc.rps / 1000.0).floor() as u64
            - ((t_ms - sc.interval_ms) as f64 * sc.rps / 1000.0).floor() as u64;
        let nc = binomial(&mut rng, n, sc.canary);
        let nl = n - nc;
        let dc = Counts::new(nc, binomial(&mut rng, nc, sc.canary_rate));
        let dl = Counts::new(nl, binomial(&mut rng, nl, sc.live_rate));
        out.requests += nc;
        match c.mode {
            Mode::Sequential => {
                ev.accumulate(c, dc, dl, None);
                match ev.call(c) {
                    Call::Worse { .. } => {
                        out.tripped_at = Some(out.requests);
                        return out;
                    }
                    Call::NotWorse if out.not_worse_at.is_none() => {
                        out.not_worse_at = Some(out.requests)
                    }
                    _ => {}
                }
            }
            Mode::Threshold => {
                let tick = t_ms / width_ms + 1;
                let b = &mut buckets[(tick % BUCKETS as u64) as usize];
                if b.0 != tick {
                    *b = (tick, Totals::default(), Totals::default());
                }
                b.1.requests += dc.requests;
                b.1.errors += dc.errors;
                b.2.requests += dl.requests;
                b.2.errors += dl.errors;
                let oldest = tick.saturating_sub(BUCKETS as u64 - 1).max(1);
                let (mut cand, mut live) = (Totals::default(), Totals::default());
                for b in buckets.iter().filter(|b| b.0 >= oldest && b.0 <= tick) {
                    cand.requests += b.1.requests;
                    cand.errors += b.1.errors;
                    live.requests += b.2.requests;
                    live.errors += b.2.errors;
                }
                let vs_live = (c.compare == Compare::Live).then_some(live);
                if cand.requests >= c.min_requests
                    && super::threshold_reason(c, "canary", cand, vs_live).is_some()
                {
                    out.tripped_at = Some(out.requests);
                    return out;
                }
            }
        }
    }
    out
}

/// Many runs of one setting: how many tripped, and the canary requests to each decision.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub runs: u64,
    pub tripped: u64,
    /// Canary requests at each trip, sorted.
    pub trip_requests: Vec<u64>,
    /// Canary requests when first proven not worse, sorted.
    pub not_worse_requests: Vec<u64>,
}

impl Summary {
    /// The `q` quantile of `v` (sorted), if any.
    pub fn quantile(v: &[u64], q: f64) -> Option<u64> {
        (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * q).round() as usize])
    }
}

/// `runs` runs of `c` on `sc`, seeds `seed..seed + runs`.
pub fn many(c: &Circuit, sc: &Scenario, runs: u64, seed: u64) -> Summary {
    let mut s = Summary {
        runs,
        ..Default::default()
    };
    for i in 0..runs {
        let o = run(c, sc, seed.wrapping_add(i));
        if let Some(n) = o.tripped_at {
            s.tripped += 1;
            s.trip_requests.push(n);
        }
        if let Some(n) = o.not_worse_at {
            s.not_worse_requests.push(n);
        }
    }
    s.trip_requests.sort_unstable();
    s.not_worse_requests.sort_unstable();
    s
}
