//! Automatic rollback: the request path records outcomes into per-target windows; this module's
//! task decides.
//!
//! Invariants: the decision is a pure function of (route entry, windows, now), so tests drive it
//! with a paused clock. The task only ever asks the control plane to roll back (never to
//! re-promote), and the control plane re-checks that the candidate is unchanged before acting, so a
//! trip that races an operator's action is dropped rather than applied to the wrong target.

pub mod window;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Compare;
use crate::control::{current_candidate, unix_ms, Control};
use crate::snapshot::RouteEntry;
use crate::state::Trip;

/// How often the task evaluates every route.
pub const TICK: Duration = Duration::from_millis(250);

/// Share of requests that may exceed `max_p99` before the latency criterion trips (that is p99).
const SLOW_SHARE: f64 = 0.01;

/// Decides whether `route`'s candidate should be rolled back now. Returns the candidate and why.
pub fn evaluate(route: &RouteEntry, now_ms: u64, now_unix_ms: u64) -> Option<(String, Trip)> {
    let c = route.circuit.as_ref()?;
    if route.state.tripped.is_some() {
        return None;
    }
    let candidate = current_candidate(&route.state, now_unix_ms)?;
    let cand = route.targets.iter().find(|t| *t.name == *candidate)?;
    let t = cand.window.totals(now_ms);
    if t.requests < c.min_requests {
        return None;
    }
    let rate = t.error_rate();
    let window = humantime::format_duration(c.window);
    let mut reason = None;
    match c.compare {
        Compare::Absolute if rate > c.max_error_rate => {
            reason = Some(format!(
                "error rate {:.1}% over {} requests in {window} exceeds {:.1}%",
                rate * 100.0,
                t.requests,
                c.max_error_rate * 100.0
            ));
        }
        Compare::Live if candidate != route.state.live => {
            let live = route.targets.get(route.split.live)?.window.totals(now_ms);
            let live_rate = live.error_rate();
            if rate - live_rate > c.max_error_rate {
                reason = Some(format!(
                    "error rate {:.1}% exceeds live's {:.1}% by more than {:.1} points ({} requests in {window})",
                    rate * 100.0,
                    live_rate * 100.0,
                    c.max_error_rate * 100.0,
                    t.requests
                ));
            }
        }
        Compare::Live if rate > c.max_error_rate => {
            // During bake the live target is the candidate: nothing to compare with, judge absolutely.
            reason = Some(format!(
                "error rate {:.1}% over {} requests in {window} exceeds {:.1}% during bake",
                rate * 100.0,
                t.requests,
                c.max_error_rate * 100.0
            ));
        }
        _ => {}
    }
    if reason.is_none() {
        if let Some(p99) = c.max_p99 {
            if t.slow as f64 / t.requests as f64 > SLOW_SHARE {
                reason = Some(format!(
                    "p99 latency above {} ({} of {} requests slower)",
                    humantime::format_duration(p99),
                    t.slow,
                    t.requests
                ));
            }
        }
    }
    let reason = reason?;
    Some((
        candidate.clone(),
        Trip {
            reason,
            target: candidate,
            error_rate: rate,
            requests: t.requests,
            at: crate::clock::unix_secs(),
        },
    ))
}

/// Evaluates every route once; returns how many tripped.
pub fn check_all(control: &Control) -> usize {
    let snap = control.snapshots().load_full();
    let now_ms = crate::clock::now_ms();
    let now_unix = unix_ms();
    let mut tripped = 0;
    for route in &snap.routes {
        if let Some((candidate, trip)) = evaluate(route, now_ms, now_unix) {
            if control.trip(&route.name, &candidate, trip) {
                tripped += 1;
            }
        }
    }
    tripped
}

/// The circuit task: evaluates every `TICK` until shutdown.
pub async fn run(control: Arc<Control>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let c = control.clone();
                // Tripping persists state (blocking I/O); keep it off the async workers.
                let _ = tokio::task::spawn_blocking(move || check_all(&c)).await;
            }
            _ = shutdown.changed() => return,
        }
    }
}
