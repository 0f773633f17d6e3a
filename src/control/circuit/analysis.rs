//! Sequential analysis of a candidate: is it worse than its reference (live, or a fixed rate), or
//! proven not worse, with a false-trip probability bounded however often it is looked at.
//!
//! The statistics (docs/analysis.md has the derivations and the measured table):
//! - **Errors against live**: conditional on the errors seen in an interval, each one is the
//!   candidate's with probability `θ0` = the candidate's share of the interval's requests if both
//!   have the same error rate, `θ1 = ρθ0 / (ρθ0 + 1 − θ0)` if the candidate's is `ρ` times live's.
//!   The product over intervals of the likelihood ratio `θ1/θ0` per candidate error and
//!   `(1−θ1)/(1−θ0)` per live error is a nonnegative supermartingale under "equal rates" whatever
//!   the common rate is, and even if it drifts over time, so by Ville's inequality it ever reaches
//!   `1 / false_trip` with probability at most `false_trip`. `θ0` is the candidate's share of the
//!   requests since the evidence started (which is per split: the share is stable), so the bound
//!   is exact in the limit of a known share and approximate early on (the simulations measure it). `ρ` may
//!   change between intervals as long as it is chosen before the interval (it comes from live's
//!   counts so far: `detect`, or `detect_points` over live's estimated rate).
//! - **Errors against a fixed rate** (`max_error_rate`: a live target during bake, or `compare =
//!   "absolute"`): the Bernoulli SPRT of `p1` = "worse" against `p0 = max_error_rate`, a
//!   supermartingale under every rate `<= p0`.
//! - **Not worse**: the inverse likelihood ratio of the candidate's own outcomes, `p0` = live's
//!   estimated rate (or the fixed rate) against `p1` = worse; reaching `1 / (1 − power)` means a
//!   candidate worse by `detect` would get there with probability at most `1 − power`.
//! - **Latency**: a candidate request is "slower" when its histogram bin lies wholly above
//!   `max_latency_ratio` times the top of live's `latency_quantile` bin (live's recent window). A
//!   candidate whose quantile is within the ratio of live's is slower with probability at most
//!   `1 − q`; the SPRT of `2(1 − q)` (mixed over higher rates, like errors) against `1 − q` trips
//!   with probability at most `false_trip` (binning only ever counts fewer requests as slower,
//!   which keeps the bound).
//! - **Worse** is a mixture: half the weight on the alternative at `detect`, the rest on 2 to 64
//!   times its gap (`MIX`), so gross failures trip on a few errors; an average of e-processes is
//!   one, so the bound is unchanged.
//!
//! Invariants: every function here is pure (counts in, evidence out), nothing runs on the request
//! path. Evidence accumulates per candidate only while the same (candidate, its window, live,
//! live's window, split, settings) holds (`Key`); any change starts it afresh, so the bound holds
//! per candidate per split. Evidence is kept by the circuit task (`Board`), which alone updates it; the rollout task
//! and the admin API read it. `verdict` is a single look at the current windows (valid at
//! `false_trip` per look) for an operator's `--require-healthy`.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

use super::window::{bin_ceiling_ms, bin_floor_ms, Latencies, Totals};
use crate::config::analysis::{Analysis, Detect, Mode};
use crate::config::{Circuit, Compare};
use crate::observe::metrics::Metrics;
use crate::snapshot::RouteEntry;

/// "Worse" is never closer than this to the reference rate (a tenth of a percentage point): a
/// ratio of rates near zero would otherwise ask for more requests than any canary serves.
pub const MIN_GAP: f64 = 0.001;
/// The highest rate "worse" may mean (keeps every likelihood ratio finite).
const MAX_RATE: f64 = 0.999;

/// Requests and errors (for latency: requests and slower requests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
}

impl Counts {
    pub fn new(requests: u64, errors: u64) -> Counts {
        Counts {
            requests,
            errors: errors.min(requests),
        }
    }

    fn since(self, mark: Counts) -> Counts {
        Counts::new(
            self.requests.saturating_sub(mark.requests),
            self.errors.saturating_sub(mark.errors),
        )
    }

    fn add(&mut self, o: Counts) {
        self.requests += o.requests;
        self.errors += o.errors;
    }

    fn rate(self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

impl From<Totals> for Counts {
    fn from(t: Totals) -> Counts {
        Counts::new(t.requests, t.errors)
    }
}

/// The natural log of the e-value at which a candidate is called worse: `ln(1 / false_trip)`.
pub fn worse_bar(a: &Analysis) -> f64 {
    (1.0 / a.false_trip).ln()
}

/// The natural log of the e-value at which it is called not worse: `ln(1 / (1 - power))`.
pub fn not_worse_bar(a: &Analysis) -> f64 {
    (1.0 / (1.0 - a.power)).ln()
}

/// The error rate "worse than `reference`" means.
pub fn worse_rate(a: &Analysis, reference: f64) -> f64 {
    let r = match a.detect {
        Detect::Ratio(x) => reference * x,
        Detect::Points(p) => reference + p / 100.0,
    };
    r.max(reference + MIN_GAP).min(MAX_RATE)
}

/// A rate estimate that is never 0 or 1 (Jeffreys: half an error in one request before any data).
pub fn estimate(c: Counts) -> f64 {
    (c.errors as f64 + 0.5) / (c.requests as f64 + 1.0)
}

/// Components of the "worse" mixture: the alternative at `detect`, then at 2, 4, ... 64 times its
/// gap from the reference, so a grossly failing candidate trips on a few errors while one worse by
/// exactly `detect` loses only `ln 2` of evidence (half the weight stays on it).
pub const MIX: usize = 7;

/// Log likelihood ratios of the mixture's components.
pub type Mix = [f64; MIX];

/// The weight of component `k` (they sum to 1, so the mixture stays an e-process).
fn weight(k: usize) -> f64 {
    if k == 0 {
        0.5
    } else {
        0.5 / (MIX - 1) as f64
    }
}

/// The log of the mixture's e-value: `ln Σ w_k e^{m_k}`.
pub fn log_mix(m: &Mix) -> f64 {
    let max = m.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return max;
    }
    max + m
        .iter()
        .enumerate()
        .map(|(k, x)| weight(k) * (x - max).exp())
        .sum::<f64>()
        .ln()
}

/// The mixture's alternative rates over `p0`: the gap from `p0` to `p1` doubled per component,
/// capped at `cap`.
fn alternatives(p0: f64, p1: f64, cap: f64) -> [f64; MIX] {
    std::array::from_fn(|k| (p0 + (p1 - p0) * (1u64 << k) as f64).min(cap).max(p1))
}

/// Log likelihood ratios of each "worse" rate against `p0` for `c`'s outcomes.
fn mix_llr(c: Counts, p0: f64, p1: f64, cap: f64) -> Mix {
    alternatives(p0, p1, cap).map(|q| bernoulli_llr(c, p0, q))
}

/// Evidence that a candidate is worse than the fixed rate `p0` (per mixture component).
pub fn errors_vs_rate(a: &Analysis, cand: Counts, p0: f64) -> Mix {
    mix_llr(cand, p0, worse_rate(a, p0), MAX_RATE)
}

/// Log likelihood ratio of rate `p1` against `p0` for `c`'s outcomes.
pub fn bernoulli_llr(c: Counts, p0: f64, p1: f64) -> f64 {
    let bad = c.errors as f64;
    let good = (c.requests - c.errors) as f64;
    bad * (p1 / p0).ln() + good * ((1.0 - p1) / (1.0 - p0)).ln()
}

/// Evidence that the candidate's error rate is worse than live's from one interval's errors (log
/// e-value increments per mixture component, conditional on the errors): `share` is the
/// candidate's share of the requests (since the evidence started: the split is stable while it
/// accumulates), `live_before` what live served before the interval (the ratio each component
/// means comes from it).
pub fn errors_vs_live(
    a: &Analysis,
    cand: Counts,
    live: Counts,
    share: f64,
    live_before: Counts,
) -> Mix {
    if cand.errors + live.errors == 0 || !(share > 0.0 && share < 1.0) {
        return [0.0; MIX];
    }
    let theta0 = share;
    let p = estimate(live_before);
    alternatives(p, worse_rate(a, p), MAX_RATE).map(|q| {
        let rho = q / p;
        let theta1 = rho * theta0 / (rho * theta0 + 1.0 - theta0);
        cand.errors as f64 * (theta1 / theta0).ln()
            + live.errors as f64 * ((1.0 - theta1) / (1.0 - theta0)).ln()
    })
}

/// Evidence that the candidate is *not* worse than a reference rate `p0` (log e-value increment).
pub fn not_worse_than(a: &Analysis, cand: Counts, p0: f64) -> f64 {
    -bernoulli_llr(cand, p0, worse_rate(a, p0))
}

/// The rates of "slower" requests under "within the ratio" (`1 - q`) and under "slower" (twice).
pub fn latency_rates(a: &Analysis) -> (f64, f64) {
    let p0 = 1.0 - a.latency_quantile;
    (p0, (2.0 * p0).min((1.0 + p0) / 2.0))
}

/// Live's requests needed before its quantile is trusted as a bar.
fn latency_min_live(a: &Analysis) -> u64 {
    (2.0 / (1.0 - a.latency_quantile)).ceil() as u64
}

/// The latency (ms) above which a candidate request counts as slower: `max_latency_ratio` times
/// the top of the bin holding live's `latency_quantile`. `None` when the test is off, live has
/// served too few requests, or its quantile is in the open-ended last bin.
pub fn latency_bar_ms(a: &Analysis, live: &Latencies) -> Option<f64> {
    let ratio = a.max_latency_ratio?;
    let n: u64 = live.iter().sum();
    if n < latency_min_live(a) {
        return None;
    }
    let rank = (a.latency_quantile * n as f64).ceil() as u64;
    let mut seen = 0;
    for (i, c) in live.iter().enumerate() {
        seen += c;
        if seen >= rank.max(1) {
            let top = bin_ceiling_ms(i);
            return top.is_finite().then_some(top * ratio);
        }
    }
    None
}

/// The candidate's requests in `hist`, and those wholly above `bar_ms` (as `errors`).
pub fn slower(hist: &Latencies, bar_ms: f64) -> Counts {
    let requests = hist.iter().sum();
    let slow = hist
        .iter()
        .enumerate()
        .filter(|(i, _)| bin_floor_ms(*i) > bar_ms)
        .map(|(_, c)| c)
        .sum();
    Counts::new(requests, slow)
}

/// Evidence that the candidate is slower (log e-value increments per mixture component) from
/// `slow` (see `slower`); component 0 is the point alternative the "not worse" side uses.
pub fn latency_llr(a: &Analysis, slow: Counts) -> Mix {
    let (p0, p1) = latency_rates(a);
    mix_llr(slow, p0, p1, 0.99)
}

fn add(m: &mut Mix, d: Mix) {
    for (x, y) in m.iter_mut().zip(d) {
        *x += y;
    }
}

/// Kullback-Leibler divergence of Bernoulli(`p`) from Bernoulli(`q`): the expected evidence per
/// request.
fn kl(p: f64, q: f64) -> f64 {
    p * (p / q).ln() + (1.0 - p) * ((1.0 - p) / (1.0 - q)).ln()
}

/// What the evidence is kept for: any change starts it afresh.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Key {
    candidate: String,
    candidate_window: u64,
    live: String,
    live_window: u64,
    canary_bp: u16,
    against_live: bool,
}

/// Lifetime counts at the last update.
#[derive(Debug, Clone, Default)]
struct Marks {
    cand: Counts,
    cand_latency: Latencies,
    live: Counts,
}

/// The running evidence about one route's candidate (natural logs of e-values).
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub candidate: String,
    /// `canary` or `live target during bake`.
    pub role: &'static str,
    /// `live` or `fixed_rate`.
    pub against: &'static str,
    /// The candidate's requests and errors since the evidence started.
    pub seen: Counts,
    /// The reference's (live's) in the same time; empty against a fixed rate.
    pub reference: Counts,
    /// Evidence that the candidate is worse: the log of the mixture's e-value.
    pub errors_worse: f64,
    pub errors_not_worse: f64,
    /// Against live with `max_latency_ratio` set: evidence that the candidate is slower (mixture),
    /// and that it is not.
    pub latency: Option<f64>,
    pub latency_not_worse: Option<f64>,
    #[serde(skip)]
    errors_mix: Mix,
    #[serde(skip)]
    latency_mix: Mix,
    /// Candidate requests judged for latency, and how many were slower.
    pub latency_seen: Counts,
    #[serde(skip)]
    key: Key,
    /// The settings it was accumulated under (a reload that changes them starts afresh).
    #[serde(skip)]
    settings: (Analysis, f64),
    #[serde(skip)]
    marks: Marks,
}

/// What the evidence says now.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// Roll back: `kind` is `sequential` (errors) or `latency` (the `rollbacks_total` reason).
    Worse {
        kind: &'static str,
        reason: String,
    },
    /// Proven not worse (errors, and latency when compared) at the configured power.
    NotWorse,
    Undecided,
}

/// The role of the route's candidate, for reasons.
fn role(route: &RouteEntry) -> &'static str {
    if route.state.canary_bp > 0 {
        "canary"
    } else {
        "live target during bake"
    }
}

impl Evidence {
    /// Advances `prev` (if it was about the same candidate) with what `route`'s windows recorded
    /// since; `None` when the route has nothing to judge (no circuit, no candidate, tripped).
    pub fn update(
        prev: Option<Evidence>,
        route: &RouteEntry,
        now_ms: u64,
        now_unix_ms: u64,
    ) -> Option<Evidence> {
        let c = route.circuit.as_ref()?;
        if route.state.tripped.is_some() {
            return None;
        }
        let candidate = crate::control::current_candidate(&route.state, now_unix_ms)?;
        let cand = route.targets.iter().find(|t| *t.name == *candidate)?;
        let live = route.targets.get(route.split.live)?;
        let against_live = c.compare == Compare::Live && candidate != route.state.live;
        let key = Key {
            candidate: candidate.clone(),
            candidate_window: cand.window.id(),
            live: live.name.to_string(),
            live_window: live.window.id(),
            canary_bp: route.state.canary_bp,
            against_live,
        };
        let (r, e) = cand.window.lifetime();
        let (lr, le) = live.window.lifetime();
        let now = Marks {
            cand: Counts::new(r, e),
            cand_latency: cand.window.lifetime_latency(),
            live: Counts::new(lr, le),
        };
        let settings = (c.analysis, c.max_error_rate);
        let Some(mut ev) = prev.filter(|p| p.key == key && p.settings == settings) else {
            // A new candidate (or split): start from here.
            let mut ev = Evidence::start(
                &candidate,
                role(route),
                against_live,
                c.analysis.max_latency_ratio.is_some(),
            );
            ev.key = key;
            ev.settings = settings;
            ev.marks = now;
            return Some(ev);
        };
        let dc = now.cand.since(ev.marks.cand);
        let dl = now.live.since(ev.marks.live);
        let slow = match (
            ev.latency,
            latency_bar_ms(&c.analysis, &live.window.latency(now_ms)),
        ) {
            (Some(_), Some(bar)) => {
                let hist: Latencies = std::array::from_fn(|i| {
                    now.cand_latency[i].saturating_sub(ev.marks.cand_latency[i])
                });
                Some(slower(&hist, bar))
            }
            _ => None,
        };
        ev.accumulate(c, dc, dl, slow);
        ev.marks = now;
        Some(ev)
    }

    /// Fresh evidence about `candidate` (`role`: `canary` or `live target during bake`), judged
    /// against live or a fixed rate, with or without the latency test.
    pub fn start(
        candidate: &str,
        role: &'static str,
        against_live: bool,
        latency: bool,
    ) -> Evidence {
        Evidence {
            candidate: candidate.to_string(),
            role,
            against: if against_live { "live" } else { "fixed_rate" },
            seen: Counts::default(),
            reference: Counts::default(),
            errors_worse: 0.0,
            errors_not_worse: 0.0,
            latency: (against_live && latency).then_some(0.0),
            latency_not_worse: (against_live && latency).then_some(0.0),
            errors_mix: [0.0; MIX],
            latency_mix: [0.0; MIX],
            latency_seen: Counts::default(),
            key: Key::default(),
            settings: (Analysis::default(), 0.0),
            marks: Marks::default(),
        }
    }

    /// Adds one interval: the candidate's requests and errors `dc`, live's `dl`, and (with the
    /// latency test, when live's bar is known) the candidate's requests and slower ones `slow`.
    /// Pure: the simulations drive it directly.
    pub fn accumulate(&mut self, c: &Circuit, dc: Counts, dl: Counts, slow: Option<Counts>) {
        let a = &c.analysis;
        if self.against == "live" {
            let cand_all = self.seen.requests + dc.requests;
            let all = cand_all + self.reference.requests + dl.requests;
            let share = if all == 0 {
                0.0
            } else {
                cand_all as f64 / all as f64
            };
            add(
                &mut self.errors_mix,
                errors_vs_live(a, dc, dl, share, self.reference),
            );
            self.reference.add(dl);
            self.errors_not_worse += not_worse_than(a, dc, estimate(self.reference));
            if let (Some(_), Some(slow)) = (self.latency, slow) {
                add(&mut self.latency_mix, latency_llr(a, slow));
                self.latency = Some(log_mix(&self.latency_mix));
                self.latency_not_worse = Some(-self.latency_mix[0]);
                self.latency_seen.add(slow);
            }
        } else {
            let m = errors_vs_rate(a, dc, c.max_error_rate);
            self.errors_not_worse -= m[0];
            add(&mut self.errors_mix, m);
        }
        self.errors_worse = log_mix(&self.errors_mix);
        self.seen.add(dc);
    }

    /// What the evidence says under `c`'s settings (errors decide only in sequential mode; the
    /// latency test in either).
    pub fn call(&self, c: &Circuit) -> Call {
        let a = &c.analysis;
        let worse = worse_bar(a);
        let role = self.role;
        if c.mode == Mode::Sequential && self.errors_worse >= worse {
            let reference = if self.against == "live" {
                format!(
                    "live's {:.2}% over {} requests",
                    self.reference.rate() * 100.0,
                    self.reference.requests
                )
            } else {
                format!("the fixed rate {:.2}%", c.max_error_rate * 100.0)
            };
            return Call::Worse {
                kind: "sequential",
                reason: format!(
                    "{role} error rate {:.2}% over {} requests is worse than {reference} (sequential test: evidence 10^{:.2} reached 10^{:.2} = 1/false_trip)",
                    self.seen.rate() * 100.0,
                    self.seen.requests,
                    self.errors_worse / std::f64::consts::LN_10,
                    worse / std::f64::consts::LN_10
                ),
            };
        }
        if let Some(l) = self.latency.filter(|l| *l >= worse) {
            return Call::Worse {
                kind: "latency",
                reason: format!(
                    "{role} is slower than {}x live's p{:.0}: {} of {} requests slower (evidence 10^{:.2} reached 10^{:.2} = 1/false_trip)",
                    a.max_latency_ratio.unwrap_or(1.0),
                    a.latency_quantile * 100.0,
                    self.latency_seen.errors,
                    self.latency_seen.requests,
                    l / std::f64::consts::LN_10,
                    worse / std::f64::consts::LN_10
                ),
            };
        }
        let not_worse = not_worse_bar(a);
        if c.mode == Mode::Sequential
            && self.errors_not_worse >= not_worse
            && self.latency_not_worse.is_none_or(|l| l >= not_worse)
        {
            return Call::NotWorse;
        }
        Call::Undecided
    }
}

/// The evidence of every route with a candidate, kept by the circuit task.
#[derive(Default)]
pub struct Board(Mutex<HashMap<String, Evidence>>);

impl Board {
    /// Advances every route's evidence to `now` (the circuit task, before it decides) and sets
    /// `flipgate_analysis_evidence`.
    pub fn update(&self, routes: &[RouteEntry], now_ms: u64, now_unix_ms: u64, metrics: &Metrics) {
        let mut board = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = HashMap::with_capacity(board.len());
        for r in routes {
            let ev = Evidence::update(board.remove(&*r.name), r, now_ms, now_unix_ms);
            let log10 = |x: f64| x / std::f64::consts::LN_10;
            let (errors, latency) = ev.as_ref().map_or((0.0, 0.0), |e| {
                (log10(e.errors_worse), log10(e.latency.unwrap_or(0.0)))
            });
            if r.circuit.is_some() {
                metrics.analysis_evidence(&r.name, errors, latency);
            }
            if let Some(ev) = ev {
                next.insert(r.name.to_string(), ev);
            }
        }
        *board = next;
    }

    /// Drops `route`'s evidence: its candidate was just rolled back, so nothing is judged until
    /// the next update finds a new one (the API and the gauge must not show a tripped candidate
    /// still being judged).
    pub fn forget(&self, route: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(route);
    }

    /// The running evidence about `route`'s candidate, if any.
    pub fn get(&self, route: &str) -> Option<Evidence> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(route)
            .cloned()
    }
}

/// The judgement of a target about to receive traffic (`--require-healthy`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Healthy {
        evidence: String,
    },
    Failing {
        reason: String,
    },
    NotEnoughEvidence {
        seen: u64,
        needed: u64,
        reason: String,
    },
}

impl Verdict {
    pub fn healthy(&self) -> bool {
        matches!(self, Verdict::Healthy { .. })
    }

    /// One line for an operator.
    pub fn message(&self) -> String {
        match self {
            Verdict::Healthy { evidence } => format!("healthy: {evidence}"),
            Verdict::Failing { reason } => format!("failing: {reason}"),
            Verdict::NotEnoughEvidence {
                seen,
                needed,
                reason,
            } => format!(
                "not enough evidence: {seen} requests seen, about {needed} needed ({reason})"
            ),
        }
    }
}

/// Judges `target` of `route` on its current window against live's (or, with `compare =
/// "absolute"`, against `max_error_rate`), with the route's circuit settings or the defaults. A
/// single look: a target as good as live is refused as failing with probability at most
/// `false_trip` per look. The live target itself is healthy (nothing changes for it).
pub fn verdict(route: &RouteEntry, target: &str, now_ms: u64) -> Verdict {
    let default;
    let c = match route.circuit.as_ref() {
        Some(c) => c,
        None => {
            default = Circuit {
                window: route
                    .targets
                    .first()
                    .map_or(std::time::Duration::from_secs(30), |t| t.window.length()),
                min_requests: 20,
                max_error_rate: 0.05,
                bake: std::time::Duration::ZERO,
                compare: Compare::Live,
                max_p99: None,
                mode: Mode::Sequential,
                analysis: Analysis::default(),
            };
            &default
        }
    };
    let a = &c.analysis;
    let Some(t) = route.targets.iter().find(|t| *t.name == *target) else {
        return Verdict::Failing {
            reason: format!("route `{}` has no target `{target}`", route.name),
        };
    };
    let Some(live) = route.targets.get(route.split.live) else {
        return Verdict::Failing {
            reason: "the route has no live target".into(),
        };
    };
    if live.name == t.name {
        return Verdict::Healthy {
            evidence: format!("`{target}` is already live"),
        };
    }
    let window = humantime::format_duration(t.window.length());
    // With a shared store, the fleet's sums (`Window::fleet`: zero without one).
    let ct = t.window.totals(now_ms).plus(t.window.fleet());
    let lt = live.window.totals(now_ms).plus(live.window.fleet());
    let (cand, reference) = (Counts::from(ct), Counts::from(lt));
    let against_live = c.compare == Compare::Live;
    if let Some(why) = super::threshold_reason(c, "target", ct, against_live.then_some(lt)) {
        if ct.requests >= c.min_requests {
            return Verdict::Failing { reason: why };
        }
    }
    let p0 = if against_live {
        estimate(reference)
    } else {
        c.max_error_rate
    };
    let worse = log_mix(&if against_live {
        let all = cand.requests + reference.requests;
        let share = if all == 0 {
            0.0
        } else {
            cand.requests as f64 / all as f64
        };
        errors_vs_live(a, cand, reference, share, reference)
    } else {
        errors_vs_rate(a, cand, p0)
    });
    let bar = worse_bar(a);
    let vs = if against_live {
        format!(
            "live's {:.2}% over {} requests",
            reference.rate() * 100.0,
            reference.requests
        )
    } else {
        format!("the fixed rate {:.2}%", p0 * 100.0)
    };
    if worse >= bar {
        return Verdict::Failing {
            reason: format!(
                "error rate {:.2}% over {} requests in the last {window} is worse than {vs} (evidence 10^{:.2} >= 10^{:.2})",
                cand.rate() * 100.0,
                cand.requests,
                worse / std::f64::consts::LN_10,
                bar / std::f64::consts::LN_10
            ),
        };
    }
    let nw_bar = not_worse_bar(a);
    let not_worse = not_worse_than(a, cand, p0);
    let mut needed = c
        .min_requests
        .max((nw_bar / kl(p0, worse_rate(a, p0))).ceil() as u64);
    let mut latency_ok = true;
    if a.max_latency_ratio.is_some() {
        match latency_bar_ms(a, &live.window.latency(now_ms)) {
            None => latency_ok = false,
            Some(lbar) => {
                let slow = slower(&t.window.latency(now_ms), lbar);
                let m = latency_llr(a, slow);
                let l = log_mix(&m);
                if l >= bar {
                    return Verdict::Failing {
                        reason: format!(
                            "{} of {} requests in the last {window} slower than {lbar:.0} ms ({}x live's p{:.0}; evidence 10^{:.2} >= 10^{:.2})",
                            slow.errors,
                            slow.requests,
                            a.max_latency_ratio.unwrap_or(1.0),
                            a.latency_quantile * 100.0,
                            l / std::f64::consts::LN_10,
                            bar / std::f64::consts::LN_10
                        ),
                    };
                }
                latency_ok = -m[0] >= nw_bar;
                let (q0, q1) = latency_rates(a);
                needed = needed.max((nw_bar / kl(q0, q1)).ceil() as u64);
            }
        }
    }
    if cand.requests >= c.min_requests && not_worse >= nw_bar && latency_ok {
        return Verdict::Healthy {
            evidence: format!(
                "error rate {:.2}% over {} requests in the last {window}, not worse than {vs} (evidence 10^{:.2} >= 10^{:.2})",
                cand.rate() * 100.0,
                cand.requests,
                not_worse / std::f64::consts::LN_10,
                nw_bar / std::f64::consts::LN_10
            ),
        };
    }
    Verdict::NotEnoughEvidence {
        seen: cand.requests,
        needed: needed.max(cand.requests + 1),
        reason: format!(
            "in the last {window}: error rate {:.2}% against {vs}; neither worse nor proven not worse yet",
            cand.rate() * 100.0
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::simulate::{self, Scenario};
    use super::*;
    use crate::config::analysis::Mode;

    fn sequential(false_trip: f64) -> Circuit {
        simulate::circuit(
            Mode::Sequential,
            Compare::Live,
            0.05,
            Analysis {
                false_trip,
                ..Analysis::default()
            },
        )
    }

    fn canary(rate: f64) -> Scenario {
        Scenario {
            rps: 100.0,
            canary: 0.05,
            live_rate: 0.02,
            canary_rate: rate,
            horizon_s: 300,
            interval_ms: 1000,
        }
    }

    /// The upper end of a binomial count's 99.9 % range: mean plus 3.1 standard deviations.
    fn margin(runs: u64, p: f64) -> u64 {
        let mean = runs as f64 * p;
        (mean + 3.1 * (mean * (1.0 - p)).sqrt()).ceil() as u64
    }

    #[test]
    fn no_errors_no_evidence_and_worse_is_never_within_a_tenth_of_a_point() {
        let a = Analysis::default();
        let c = Counts::new(100, 0);
        assert_eq!(
            errors_vs_live(&a, c, Counts::new(1000, 0), 0.1, c),
            [0.0; MIX]
        );
        assert!((worse_rate(&a, 0.02) - 0.04).abs() < 1e-12);
        assert!((worse_rate(&a, 0.0) - MIN_GAP).abs() < 1e-12);
        // Errors all on the candidate's side at a 5 % share: evidence of worse grows.
        let worse = errors_vs_live(
            &a,
            Counts::new(50, 5),
            Counts::new(950, 0),
            0.05,
            Counts::new(1000, 10),
        );
        assert!(worse.iter().all(|x| *x > 0.0));
        let better = errors_vs_live(
            &a,
            Counts::new(50, 0),
            Counts::new(950, 20),
            0.05,
            Counts::new(1000, 10),
        );
        assert!(better.iter().all(|x| *x < 0.0));
        // The mixture: half its weight on the first component, never more than the best one.
        assert!((log_mix(&[0.0; MIX])).abs() < 1e-12);
        let mut m = [0.0; MIX];
        m[0] = 10.0;
        assert!((log_mix(&m) - (10.0 + 0.5f64.ln())).abs() < 1e-3);
    }

    #[test]
    fn latency_bar_is_the_ratio_over_lives_quantile_bin() {
        let a = Analysis {
            max_latency_ratio: Some(1.5),
            ..Analysis::default()
        };
        let mut live = [0u64; super::super::window::LATENCY_BINS];
        live[super::super::window::latency_bin(10)] = 19;
        assert_eq!(latency_bar_ms(&a, &live), None, "too few live requests");
        live[super::super::window::latency_bin(10)] = 100;
        let bar = latency_bar_ms(&a, &live).unwrap();
        assert!((bar - 12.0 * 1.5).abs() < 1e-9, "{bar}");
        let mut cand = [0u64; super::super::window::LATENCY_BINS];
        cand[super::super::window::latency_bin(300)] = 7;
        cand[super::super::window::latency_bin(10)] = 3;
        assert_eq!(slower(&cand, bar), Counts::new(10, 7));
        assert!(log_mix(&latency_llr(&a, Counts::new(10, 7))) > 0.0);
        assert!(latency_llr(&a, Counts::new(10, 0))[0] < 0.0);
    }

    /// 10,000 seeded runs of a canary as good as live (2 % errors each, 5 % canary, 100 req/s,
    /// five minutes each, evaluated every second): it trips in at most `false_trip` of them.
    #[test]
    fn equal_rates_trip_at_most_false_trip_of_the_time() {
        for false_trip in [0.01, 0.001] {
            let s = simulate::many(&sequential(false_trip), &canary(0.02), 10_000, 1);
            assert!(
                s.tripped <= margin(10_000, false_trip),
                "false_trip {false_trip}: {} of 10000 tripped",
                s.tripped
            );
        }
    }

    /// Twice live's error rate (4 % against 2 %) at a 5 % canary and 100 req/s: tripped in at
    /// least 95 % of the runs within ten minutes (3,000 canary requests), and within 1,500 canary
    /// requests (five minutes) in at least `power` (80 %) of them.
    #[test]
    fn twice_the_error_rate_decides_within_n_requests() {
        let sc = Scenario {
            horizon_s: 600,
            ..canary(0.04)
        };
        let s = simulate::many(&sequential(0.001), &sc, 10_000, 7);
        let p80 = Summary::quantile(&s.trip_requests, 0.8).unwrap_or(u64::MAX);
        let p50 = Summary::quantile(&s.trip_requests, 0.5).unwrap_or(u64::MAX);
        assert!(s.tripped >= 9_500, "{} of 10000 tripped", s.tripped);
        assert!(p80 <= 1_500, "p50 {p50}, p80 {p80} canary requests");
    }

    use super::super::simulate::Summary;
}
