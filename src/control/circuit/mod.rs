//! Automatic rollback: the request path records outcomes into per-target windows; this module's
//! task decides.
//!
//! Invariants: the decision is a pure function of (route entry, windows, now), so tests drive it
//! with a paused clock (`check_all_at` takes both clocks). The request path never decides and never
//! locks: it bumps window counters and, on a bad outcome, one process-wide counter, waking the
//! task if it waits for one (`window::bad_since`: at most one wake-up per evaluation), so a trip
//! follows the crossing at once. The task ticks only while some route has a candidate to judge;
//! otherwise it waits for the next published snapshot (an idle proxy does not wake on a timer for
//! the circuit). The task only ever asks the control
//! plane to roll back (never to re-promote), with the route state its verdict was reached on; the
//! control plane drops the verdict if that state changed meanwhile, so a trip that races an
//! operator's action is never applied to the wrong target.

pub mod analysis;
pub mod simulate;
pub mod window;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::analysis::Mode;
use crate::config::{Circuit, Compare};
use crate::control::state::{RouteState, Trip};
use crate::control::wake::{self, Wake};
use crate::control::{current_candidate, unix_ms, Control};
use crate::snapshot::RouteEntry;
use analysis::{Call, Evidence};
use window::Totals;

/// How often the task evaluates every route regardless of new outcomes (rates also change as
/// outcomes age out of the window).
pub const TICK: Duration = Duration::from_millis(100);

/// The shortest time between two evaluations brought on by new errors or slow requests: a burst
/// of failures is judged at once, then at most every `POLL`.
pub const POLL: Duration = Duration::from_millis(5);

/// Share of requests that may exceed `max_p99` before the latency criterion trips (that is p99).
const SLOW_SHARE: f64 = 0.01;

/// Decides whether `route`'s candidate should be rolled back now: the threshold rule (in
/// `threshold` mode, once `min_requests` are in the window), `max_p99`, then the sequential
/// `evidence` the circuit task keeps for the route (`analysis`). Returns the candidate, why, and
/// the `rollbacks_total` reason (`circuit`, `sequential` or `latency`).
pub fn evaluate(
    route: &RouteEntry,
    evidence: Option<&Evidence>,
    now_ms: u64,
    now_unix_ms: u64,
) -> Option<(String, Trip, &'static str)> {
    let c = route.circuit.as_ref()?;
    if route.state.tripped.is_some() {
        return None;
    }
    let candidate = current_candidate(&route.state, now_unix_ms)?;
    let cand = route.targets.iter().find(|t| *t.name == *candidate)?;
    // With a shared store, the sum over the fleet (`Window::fleet`: zero without one).
    let t = cand.window.totals(now_ms).plus(cand.window.fleet());
    let role = if route.state.canary_bp > 0 {
        "canary"
    } else {
        "live target during bake"
    };
    let trip = |reason: String| Trip {
        reason,
        target: candidate.clone(),
        error_rate: t.error_rate(),
        requests: t.requests,
        at: crate::clock::unix_secs(),
    };
    if t.requests >= c.min_requests {
        let live = match c.compare {
            Compare::Live if candidate != route.state.live => {
                let live = &route.targets.get(route.split.live)?.window;
                Some(live.totals(now_ms).plus(live.fleet()))
            }
            _ => None,
        };
        if let Some(reason) = threshold_reason(c, role, t, live) {
            return Some((candidate.clone(), trip(reason), "circuit"));
        }
    }
    match evidence.filter(|e| e.candidate == candidate)?.call(c) {
        Call::Worse { kind, reason } => Some((candidate.clone(), trip(reason), kind)),
        _ => None,
    }
}

/// The threshold rules on a target's window totals `t` (in `threshold` mode: its error rate
/// against `max_error_rate`, or against `live`'s totals plus it; in either mode: `max_p99`).
/// Shared by the circuit and `analysis::verdict`; the caller checks `min_requests`.
pub(crate) fn threshold_reason(
    c: &Circuit,
    role: &str,
    t: Totals,
    live: Option<Totals>,
) -> Option<String> {
    let rate = t.error_rate();
    let window = humantime::format_duration(c.window);
    if c.mode == Mode::Threshold {
        match live {
            None if rate > c.max_error_rate => {
                return Some(format!(
                    "{role} error rate {:.1}% over {} requests in {window} exceeds {:.1}%",
                    rate * 100.0,
                    t.requests,
                    c.max_error_rate * 100.0
                ))
            }
            Some(live) if rate - live.error_rate() > c.max_error_rate => {
                return Some(format!(
                    "{role} error rate {:.1}% exceeds live's {:.1}% by more than {:.1} points ({} requests in {window})",
                    rate * 100.0,
                    live.error_rate() * 100.0,
                    c.max_error_rate * 100.0,
                    t.requests
                ))
            }
            _ => {}
        }
    }
    let p99 = c.max_p99?;
    (t.requests > 0 && t.slow as f64 / t.requests as f64 > SLOW_SHARE).then(|| {
        format!(
            "{role} p99 latency above {} ({} of {} requests slower)",
            humantime::format_duration(p99),
            t.slow,
            t.requests
        )
    })
}

/// Evaluates every route once at the current time; returns how many tripped.
pub fn check_all(control: &Control) -> usize {
    check_all_at(control, crate::clock::now_ms(), unix_ms())
}

/// Evaluates every route once at the given monotonic and wall-clock times (tests pass both).
pub fn check_all_at(control: &Control, now_ms: u64, now_unix_ms: u64) -> usize {
    pending(control, now_ms, now_unix_ms)
        .into_iter()
        .filter(|p| p.clone().apply(control, now_unix_ms))
        .count()
}

/// A verdict: roll `route` back away from `candidate`, reached on route state `seen`.
#[derive(Clone)]
struct Pending {
    route: String,
    seen: RouteState,
    candidate: String,
    trip: Trip,
    /// The `rollbacks_total` reason.
    kind: &'static str,
}

impl Pending {
    fn apply(self, control: &Control, now_unix_ms: u64) -> bool {
        let applied = control.trip(
            &self.route,
            &self.seen,
            &self.candidate,
            self.trip,
            self.kind,
            now_unix_ms,
        );
        if applied {
            control.analysis.forget(&self.route);
        }
        applied
    }
}

/// The trips the current snapshot calls for, after advancing the sequential evidence to now.
/// Cheap and non-blocking (the evidence board's lock is only ever taken off the request path).
fn pending(control: &Control, now_ms: u64, now_unix_ms: u64) -> Vec<Pending> {
    let snap = control.snapshots().load();
    control
        .analysis
        .update(&snap.routes, now_ms, now_unix_ms, &control.metrics);
    snap.routes
        .iter()
        .filter_map(|r| {
            let ev = control.analysis.get(&r.name);
            evaluate(r, ev.as_ref(), now_ms, now_unix_ms).map(|(candidate, trip, kind)| Pending {
                route: r.name.to_string(),
                seen: r.state.clone(),
                candidate,
                trip,
                kind,
            })
        })
        .collect()
}

/// The circuit task: while some route has a candidate to judge, evaluates every route every
/// `TICK`, and as soon as an error or slow request is recorded (`window::bad_since`), at most once
/// per `POLL`; while none has (the steady state: no canary, no bake), it sleeps until the control
/// plane publishes a new snapshot, so an idle proxy wakes on no timer of the circuit's. No short
/// timer runs while a canary is judged either (it woke a proxy 200 times a second). Evaluation is
/// a few atomic loads per watched target, done inline; only an actual trip (which takes the
/// control lock and builds a snapshot) goes to the blocking pool. A trip never waits for the disk:
/// the state writer persists it afterwards.
pub async fn run(control: Arc<Control>, mut shutdown: watch::Receiver<bool>) {
    let mut published = control.published();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Evaluate on the first wake, whatever was recorded before the task started.
    let mut seen = u64::MAX;
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        let active = || watching(&control, unix_ms());
        let bad = window::bad_since(seen);
        match wake::next_or(&mut tick, &mut published, &mut shutdown, active, bad).await {
            Wake::Stop => return,
            // Something changed: evaluate at the next poll, whatever the counters say. The
            // evidence follows the new snapshot now, since the task may sleep from here on (no
            // candidate left to judge) and must not leave the last one's on show.
            Wake::Changed => {
                seen = u64::MAX;
                let snap = control.snapshots().load();
                control.analysis.update(
                    &snap.routes,
                    crate::clock::now_ms(),
                    unix_ms(),
                    &control.metrics,
                );
                continue;
            }
            Wake::Tick => {}
        }
        // New bad outcomes are judged at once, but during a burst of them at most once per POLL.
        if window::bad_outcomes() != seen {
            let now = tokio::time::Instant::now();
            if let Some(due) = last.map(|l| l + POLL).filter(|&due| due > now) {
                tokio::time::sleep_until(due).await;
            }
        }
        seen = window::bad_outcomes();
        last = Some(tokio::time::Instant::now());
        let now_unix = unix_ms();
        let trips = pending(&control, crate::clock::now_ms(), now_unix);
        if trips.is_empty() {
            continue;
        }
        let c = control.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for p in trips {
                p.apply(&c, now_unix);
            }
        })
        .await;
    }
}

/// Whether any route has a circuit and, now, a candidate it could roll back (a canary, or a live
/// target still baking) and is not tripped: only then is there anything to evaluate.
fn watching(control: &Control, now_unix_ms: u64) -> bool {
    control.snapshots().load().routes.iter().any(|r| {
        r.circuit.is_some()
            && r.state.tripped.is_none()
            && current_candidate(&r.state, now_unix_ms).is_some()
    })
}
