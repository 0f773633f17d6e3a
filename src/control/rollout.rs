//! The rollout ladder, run by the server: raise a canary step by step (5 %, 25 %, 50 %, then
//! promote) while it stays healthy, unattended, across CLI exits and restarts.
//!
//! Invariants:
//! - A rollout is part of its route's runtime state (`RouteState::rollout`), so every change to it
//!   goes through the control plane's one writer (`Control::change`): published, persisted and
//!   evented like an operator action, and restored after a restart. Its steps reuse the operator
//!   actions (`canary` for each step, `promote` for the last), so the split, metrics and bake
//!   follow exactly as if an operator had typed them.
//! - The decision is a pure function (`next`) of the rollout, the time and what was observed
//!   (requests and errors of the candidate in the step, the circuit's state); the task only
//!   observes and asks. A step advances only when its hold has passed (or, under `mode =
//!   "sequential"`, the circuit's evidence proves the candidate not worse in this step), the
//!   candidate served at least `min_requests` in it, and the circuit neither tripped nor would
//!   trip now.
//! - A circuit trip ends the rollout as `rolled_back` in the same state change that rolls the
//!   canary back (`end_on_trip`), so no later step can follow it. An operator's split change (flip,
//!   canary, promote, rollback) ends it as `aborted`, as does the route file changing the route's
//!   split. An ended rollout stays visible (result and reason) until the next one starts.
//! - Every change the task asks for carries the rollout it was decided on; if the state changed
//!   meanwhile (an operator, a trip, a reload) the request is dropped and the next tick decides
//!   afresh.
//! - Requests in a step are counted on the candidate's circuit window from a baseline taken when
//!   the step started (`StepBase`); a window made after that (the canary's role began, or the
//!   process restarted) counts whole. After a restart a running step starts over: hold and counts.
//! - Nothing here runs on the request path.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::control::circuit::window::Window;
use crate::control::state::{RouteState, Source};
use crate::control::wake::{self, Wake};
use crate::control::{apply, unix_ms, Action, Applied, Control, ControlError};
use crate::observe::metrics::Metrics;
use crate::snapshot::RouteEntry;

/// How often the task looks at every running rollout.
pub const TICK: Duration = Duration::from_millis(100);

/// Where a rollout stands. `running` and `paused` are in progress; the others are how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    Paused,
    Promoted,
    RolledBack,
    Aborted,
}

impl Phase {
    /// Still in progress (a new rollout is refused, operator split changes stop it).
    pub fn active(self) -> bool {
        matches!(self, Phase::Running | Phase::Paused)
    }

    /// The API's name, also the `result` label of `rollouts_total`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled_back",
            Phase::Aborted => "aborted",
        }
    }
}

/// Where a step's counts start: the candidate window's lifetime counts when the step started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepBase {
    /// `Window::id` of the window the counts were read from.
    pub window: u64,
    pub requests: u64,
    pub errors: u64,
}

/// A rollout of one route, as persisted with its runtime state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// The target being rolled out.
    pub target: String,
    /// Canary percent of each step; the last is 100 (reaching it promotes).
    pub steps: Vec<u8>,
    pub hold_ms: u64,
    /// Requests the candidate must serve in a step before it may advance.
    pub min_requests: u64,
    /// Index of the current step.
    pub step: usize,
    pub phase: Phase,
    /// Unix ms the rollout started (tells one rollout from the next).
    pub started_unix_ms: u64,
    /// Unix ms the current step's hold started.
    pub step_started_unix_ms: u64,
    /// While paused: how much of the hold had passed when it was paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_elapsed_ms: Option<u64>,
    #[serde(default)]
    pub base: StepBase,
    /// Why it ended (or the last notable change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_unix_ms: Option<u64>,
}

impl Rollout {
    /// The canary percent of the current step.
    pub fn percent(&self) -> u8 {
        self.steps.get(self.step).copied().unwrap_or(0)
    }

    /// How much of the current step's hold has passed at `now`.
    pub fn elapsed_ms(&self, now_unix_ms: u64) -> u64 {
        match self.paused_elapsed_ms {
            Some(e) => e,
            None => now_unix_ms.saturating_sub(self.step_started_unix_ms),
        }
    }

    /// What is left of the current step's hold at `now`.
    pub fn hold_remaining_ms(&self, now_unix_ms: u64) -> u64 {
        self.hold_ms.saturating_sub(self.elapsed_ms(now_unix_ms))
    }

    /// Requests and errors of the candidate in the current step, read from its `window`.
    pub fn counts(&self, window: &Window) -> (u64, u64) {
        let (r, e) = window.lifetime();
        if window.id() == self.base.window {
            (
                r.saturating_sub(self.base.requests),
                e.saturating_sub(self.base.errors),
            )
        } else {
            // A window made after the step started: everything in it belongs to the step.
            (r, e)
        }
    }

    /// The state to show: `waiting_for_traffic` when running, the hold has passed and the
    /// candidate has not yet served `min_requests` in the step.
    pub fn state(&self, now_unix_ms: u64, requests: u64) -> &'static str {
        if self.phase == Phase::Running
            && self.hold_remaining_ms(now_unix_ms) == 0
            && requests < self.min_requests
        {
            "waiting_for_traffic"
        } else {
            self.phase.name()
        }
    }

    fn end(&mut self, phase: Phase, reason: String, now_unix_ms: u64) {
        self.phase = phase;
        self.reason = Some(reason);
        self.ended_unix_ms = Some(now_unix_ms);
        self.paused_elapsed_ms = None;
    }

    /// The ladder in a few words, for events and the CLI.
    pub fn ladder(&self) -> String {
        self.steps
            .iter()
            .map(|p| format!("{p}%"))
            .collect::<Vec<_>>()
            .join(" -> ")
    }
}

/// What a rollout is asked to do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: String,
    pub steps: Vec<u8>,
    pub hold: Duration,
    pub min_requests: u64,
    /// Refuse to start unless the target is judged healthy first (`--require-healthy`).
    pub require_healthy: bool,
}

/// What was observed of a running rollout's route at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub now_unix_ms: u64,
    /// Requests and errors of the candidate in the current step.
    pub requests: u64,
    pub errors: u64,
    /// The circuit's trip reason, if the route is tripped.
    pub tripped: Option<&'a str>,
    /// The circuit would trip on what it sees now (its task has not acted yet).
    pub circuit_would_trip: bool,
    /// The sequential test has proven the candidate not worse in this step (`mode =
    /// "sequential"`): the step may advance before its hold ends.
    pub not_worse: bool,
    /// The route's split is the one the rollout's step set (canary target at the step's percent).
    pub split_matches: bool,
}

/// What the rollout should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Nothing to do (not running).
    Nothing,
    /// Keep holding the step; `waiting_for_traffic` when only the request count is missing.
    Hold { waiting_for_traffic: bool },
    /// Go to step `step` (its percent is below 100).
    Advance { step: usize, percent: u8 },
    /// The next step is 100: promote the target.
    Promote,
    /// The circuit rolled the canary back: end as `rolled_back`.
    RolledBack(String),
    /// The split is no longer the rollout's: end as `aborted`.
    Aborted(String),
}

/// The rollout's decision. Pure: the caller supplies the time and what it observed.
pub fn next(r: &Rollout, o: &Observed) -> Next {
    if r.phase != Phase::Running {
        return Next::Nothing;
    }
    if let Some(reason) = o.tripped {
        return Next::RolledBack(format!("circuit tripped: {reason}"));
    }
    if !o.split_matches {
        return Next::Aborted(format!(
            "the route's split no longer has `{}` at {}% (changed outside the rollout)",
            r.target,
            r.percent()
        ));
    }
    if o.circuit_would_trip {
        return Next::Hold {
            waiting_for_traffic: false,
        };
    }
    if r.hold_remaining_ms(o.now_unix_ms) > 0 && !(o.not_worse && o.requests >= r.min_requests) {
        return Next::Hold {
            waiting_for_traffic: false,
        };
    }
    if o.requests < r.min_requests {
        return Next::Hold {
            waiting_for_traffic: true,
        };
    }
    let step = r.step + 1;
    match r.steps.get(step) {
        Some(100) | None => Next::Promote,
        Some(&percent) => Next::Advance { step, percent },
    }
}

/// The canary percent a route's running rollout holds now (0 when none): `rollout_step`.
pub fn current_percent(s: &RouteState) -> i64 {
    s.rollout
        .as_ref()
        .filter(|r| r.phase.active())
        .map_or(0, |r| i64::from(r.percent()))
}

pub(crate) fn count(metrics: &Metrics, route: &str, phase: Phase) {
    metrics
        .rollouts
        .with_label_values(&[route, phase.name()])
        .inc();
}

/// An operator's action `kind` was applied to `s`: a split change stops a rollout in progress
/// (`aborted`, reason "operator KIND"). `reset` does not change the split and does not stop it.
/// Returns whether one stopped (counted once the change is in force: `Tally`).
pub(crate) fn interrupted(s: &mut RouteState, kind: &str, now_unix_ms: u64) -> bool {
    // A reset, and a drain (instances, not the split), leave a rollout alone.
    if matches!(kind, "reset" | "drain" | "undrain") {
        return false;
    }
    match s.rollout.as_mut().filter(|r| r.phase.active()) {
        Some(r) => {
            r.end(
                Phase::Aborted,
                format!(
                    "operator {kind}: the split was changed by hand, the rollout stopped there"
                ),
                now_unix_ms,
            );
            true
        }
        None => false,
    }
}

/// The circuit rolls `s` back: a rollout in progress ends as `rolled_back` in the same change
/// (returns whether one did; `count_rolled_back` counts it once the trip is in force).
pub(crate) fn end_on_trip(s: &mut RouteState, reason: &str, now_unix_ms: u64) -> bool {
    match s.rollout.as_mut().filter(|r| r.phase.active()) {
        Some(r) => {
            r.end(
                Phase::RolledBack,
                format!("circuit tripped: {reason}"),
                now_unix_ms,
            );
            true
        }
        None => false,
    }
}

/// Counts a rollout ended by a trip (`end_on_trip`), once the trip is in force.
pub(crate) fn count_rolled_back(metrics: &Metrics, route: &str) {
    count(metrics, route, Phase::RolledBack);
}

/// The route file changed the route's split: a rollout in progress ends as `aborted` (the file is
/// the newest intent); an ended one stays visible.
pub(crate) fn after_file_change(
    route: &str,
    old: Option<&Rollout>,
    now_unix_ms: u64,
    metrics: &Metrics,
) -> Option<Rollout> {
    let mut r = old?.clone();
    if r.phase.active() {
        r.end(
            Phase::Aborted,
            "the route file changed the route's split (newest intent wins)".into(),
            now_unix_ms,
        );
        count(metrics, route, Phase::Aborted);
    }
    Some(r)
}

/// The lifetime counts of `target`'s window in the published snapshot, as a step's baseline.
fn baseline(control: &Control, route: &str, target: &str) -> StepBase {
    let snap = control.snapshots().load();
    snap.route(route)
        .and_then(|r| r.targets.iter().find(|t| *t.name == *target))
        .map_or(StepBase::default(), |t| {
            let (requests, errors) = t.window.lifetime();
            StepBase {
                window: t.window.id(),
                requests,
                errors,
            }
        })
}

/// An operator's request about a rollout in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Pause,
    Resume,
    Abort,
}

impl Control {
    /// Starts a rollout of `route` to `plan.target`: its first step is applied now (as `canary`,
    /// or as a flip when the ladder is just `[100]`). Refused with 409 while one is in progress;
    /// with 422 for a bad target (unknown, or already live).
    pub fn rollout_start(&self, route: &str, plan: Plan) -> Result<Applied, ControlError> {
        let base = baseline(self, route, &plan.target);
        self.change_counted(route, |r, s, now, tally| {
            if let Some(cur) = s.rollout.as_ref().filter(|c| c.phase.active()) {
                return Err(ControlError::Conflict(format!(
                    "route `{}` already has a rollout of `{}` in progress (step {} of {}, {}%); pause, resume or abort it first",
                    r.name,
                    cur.target,
                    cur.step + 1,
                    cur.steps.len(),
                    cur.percent()
                )));
            }
            if plan.require_healthy {
                self.require_healthy(&r.name, &plan.target)?;
            }
            if plan.steps.is_empty() {
                return Err(ControlError::Rejected("a ladder needs at least one step".into()));
            }
            let first = plan.steps[0];
            let mut ro = Rollout {
                target: plan.target.clone(),
                steps: plan.steps.clone(),
                hold_ms: u64::try_from(plan.hold.as_millis()).unwrap_or(u64::MAX),
                min_requests: plan.min_requests,
                step: 0,
                phase: Phase::Running,
                started_unix_ms: now,
                step_started_unix_ms: now,
                paused_elapsed_ms: None,
                base,
                reason: None,
                ended_unix_ms: None,
            };
            let message = if first == 100 {
                apply(
                    r,
                    s,
                    &Action::Flip {
                        target: Some(plan.target.clone()),
                    },
                    now,
                    tally,
                )?;
                ro.end(
                    Phase::Promoted,
                    "the ladder is a single 100% step: promoted at once".into(),
                    now,
                );
                tally.rollout_ended(Phase::Promoted);
                format!("rollout of `{}`: single 100% step, promoted", plan.target)
            } else {
                apply(
                    r,
                    s,
                    &Action::Canary {
                        percent: f64::from(first),
                        target: Some(plan.target.clone()),
                    },
                    now,
                    tally,
                )?;
                format!(
                    "rollout of `{}` started: {}, hold {} per step, at least {} requests per step; step 1 at {first}%",
                    plan.target,
                    ro.ladder(),
                    humantime::format_duration(plan.hold),
                    plan.min_requests
                )
            };
            s.rollout = Some(ro);
            Ok(("rollout", message))
        })
    }

    /// Pauses, resumes or aborts `route`'s rollout. Pausing keeps the step's percent and stops
    /// its hold; resuming continues the hold where it stopped; aborting rolls the canary back to
    /// 0 % (`rollbacks_total{reason="rollout"}`) and ends the rollout as `aborted`. 409 when there
    /// is no rollout in progress (or, to resume, none paused).
    pub fn rollout_op(&self, route: &str, op: Op) -> Result<Applied, ControlError> {
        self.change_counted(route, |r, s, now, tally| {
            let name = r.name.as_str();
            let Some(ro) = s.rollout.as_mut().filter(|x| x.phase.active()) else {
                return Err(ControlError::Conflict(format!(
                    "route `{name}` has no rollout in progress"
                )));
            };
            match op {
                Op::Pause => {
                    if ro.phase == Phase::Running {
                        ro.paused_elapsed_ms = Some(ro.elapsed_ms(now).min(ro.hold_ms));
                        ro.phase = Phase::Paused;
                    }
                    Ok((
                        "rollout",
                        format!(
                            "rollout of `{}` paused at step {} ({}%)",
                            ro.target,
                            ro.step + 1,
                            ro.percent()
                        ),
                    ))
                }
                Op::Resume => {
                    if ro.phase != Phase::Paused {
                        return Err(ControlError::Conflict(format!(
                            "route `{name}`'s rollout is not paused"
                        )));
                    }
                    let done = ro.paused_elapsed_ms.take().unwrap_or(0);
                    ro.step_started_unix_ms = now.saturating_sub(done);
                    ro.phase = Phase::Running;
                    Ok((
                        "rollout",
                        format!(
                            "rollout of `{}` resumed at step {} ({}%)",
                            ro.target,
                            ro.step + 1,
                            ro.percent()
                        ),
                    ))
                }
                Op::Abort => {
                    let target = ro.target.clone();
                    ro.end(Phase::Aborted, "aborted by the operator".into(), now);
                    tally.rollout_ended(Phase::Aborted);
                    if s.canary_bp > 0 && s.canary_target.as_deref() == Some(target.as_str()) {
                        s.canary_bp = 0;
                        s.canary_source = Source::Admin;
                        tally.rollback("rollout");
                    }
                    Ok((
                        "rollout",
                        format!(
                            "rollout of `{target}` aborted; canary rolled back to 0%, all traffic to `{}`",
                            s.live
                        ),
                    ))
                }
            }
        })
    }

    /// Carries out the task's decision `next` for the rollout `seen`; dropped (false) when the
    /// route's rollout is no longer exactly `seen`.
    fn rollout_drive(&self, route: &str, seen: &Rollout, next: Next) -> bool {
        let target = seen.target.clone();
        let base = match &next {
            Next::Advance { .. } => baseline(self, route, &target),
            _ => StepBase::default(),
        };
        self.change_counted(route, |r, s, now, tally| {
            if s.rollout.as_ref() != Some(seen) {
                return Err(ControlError::Rejected("stale".into()));
            }
            let message = match &next {
                Next::Advance { step, percent } => {
                    apply(
                        r,
                        s,
                        &Action::Canary {
                            percent: f64::from(*percent),
                            target: Some(target.clone()),
                        },
                        now,
                        tally,
                    )?;
                    let ro = s.rollout.as_mut().expect("checked above");
                    ro.step = *step;
                    ro.step_started_unix_ms = now;
                    ro.base = base;
                    format!(
                        "rollout of `{target}`: step {} of {} at {percent}%",
                        step + 1,
                        ro.steps.len()
                    )
                }
                Next::Promote => {
                    apply(r, s, &Action::Promote, now, tally)?;
                    let ro = s.rollout.as_mut().expect("checked above");
                    ro.step = ro.steps.len().saturating_sub(1);
                    ro.end(
                        Phase::Promoted,
                        format!("every step held healthy; `{target}` promoted"),
                        now,
                    );
                    tally.rollout_ended(Phase::Promoted);
                    format!("rollout of `{target}`: promoted, `{target}` is live")
                }
                Next::RolledBack(why) | Next::Aborted(why) => {
                    let phase = if matches!(next, Next::RolledBack(_)) {
                        Phase::RolledBack
                    } else {
                        Phase::Aborted
                    };
                    let ro = s.rollout.as_mut().expect("checked above");
                    ro.end(phase, why.clone(), now);
                    tally.rollout_ended(phase);
                    format!("rollout of `{target}` {}: {why}", phase.name())
                }
                Next::Nothing | Next::Hold { .. } => {
                    return Err(ControlError::Rejected("nothing to do".into()))
                }
            };
            Ok(("rollout", message))
        })
        .is_ok()
    }

    /// Restarts the running step of `route`'s rollout `seen` (after a restart of flipgate): its
    /// hold and its counts start over now.
    fn rollout_restart_step(&self, route: &str, seen: &Rollout) -> bool {
        let base = baseline(self, route, &seen.target);
        self.change(route, |_, s, now| {
            let Some(ro) = s.rollout.as_mut().filter(|r| *r == seen) else {
                return Err(ControlError::Rejected("stale".into()));
            };
            ro.step_started_unix_ms = now;
            ro.base = base;
            Ok((
                "rollout",
                format!(
                    "rollout of `{}` resumed after a restart at step {} ({}%); its hold starts over",
                    ro.target,
                    ro.step + 1,
                    ro.percent()
                ),
            ))
        })
        .is_ok()
    }
}

/// What the task observes of `r`'s running rollout `ro` at `now`.
fn observe<'a>(
    r: &'a RouteEntry,
    ro: &Rollout,
    evidence: Option<&crate::control::circuit::analysis::Evidence>,
    now_ms: u64,
    now_unix_ms: u64,
) -> Observed<'a> {
    let s = &r.state;
    let (requests, errors) = r
        .targets
        .iter()
        .find(|t| *t.name == *ro.target)
        .map_or((0, 0), |t| ro.counts(&t.window));
    Observed {
        now_unix_ms,
        requests,
        errors,
        tripped: s.tripped.as_ref().map(|t| t.reason.as_str()),
        circuit_would_trip: crate::control::circuit::evaluate(r, evidence, now_ms, now_unix_ms)
            .is_some(),
        not_worse: match (evidence, r.circuit.as_ref()) {
            (Some(e), Some(c)) => {
                e.candidate == ro.target
                    && e.call(c) == crate::control::circuit::analysis::Call::NotWorse
            }
            _ => false,
        },
        split_matches: s.canary_target.as_deref() == Some(ro.target.as_str())
            && s.live != ro.target
            && s.canary_bp == u16::from(ro.percent()) * 100,
    }
}

/// The rollout task: every `TICK` while a rollout runs (otherwise it waits for the next published
/// snapshot), decides for each running rollout and asks the control plane for the change (on the
/// blocking pool: it takes the control lock). On its first look at a
/// running rollout whose step started before this process did, restarts that step. A process
/// that does not own the runtime state (a `SO_REUSEPORT` upgrade's second process) only follows:
/// it drives nothing until it takes over.
pub async fn run(control: Arc<Control>, mut shutdown: watch::Receiver<bool>) {
    let boot = unix_ms();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // (route, rollout start, step) already told to be waiting for traffic: said once per step.
    let mut waiting: HashSet<(String, u64, usize)> = HashSet::new();
    let mut published = control.published();
    loop {
        // With no rollout running there is nothing to step (`wake`).
        let running = || {
            control.snapshots().load().routes.iter().any(|r| {
                r.state
                    .rollout
                    .as_ref()
                    .is_some_and(|x| x.phase == Phase::Running)
            })
        };
        match wake::next(&mut tick, &mut published, &mut shutdown, running).await {
            Wake::Stop => return,
            Wake::Changed => continue,
            Wake::Tick => {}
        }
        // Only the process that owns the runtime state changes it; another one follows.
        if !matches!(
            control.persist_status().ownership,
            crate::control::state::writer::Ownership::Owner
        ) {
            continue;
        }
        let now_unix = unix_ms();
        let now_ms = crate::clock::now_ms();
        let snap = control.snapshots().load_full();
        let mut asks: Vec<(String, Rollout, Option<Next>)> = Vec::new();
        for r in &snap.routes {
            let Some(ro) = r
                .state
                .rollout
                .as_ref()
                .filter(|x| x.phase == Phase::Running)
            else {
                continue;
            };
            if ro.step_started_unix_ms < boot {
                asks.push((r.name.to_string(), ro.clone(), None));
                continue;
            }
            let evidence = control.analysis.get(&r.name);
            let o = observe(r, ro, evidence.as_ref(), now_ms, now_unix);
            match next(ro, &o) {
                Next::Nothing => {}
                Next::Hold {
                    waiting_for_traffic,
                } => {
                    let key = (r.name.to_string(), ro.started_unix_ms, ro.step);
                    if waiting_for_traffic && waiting.insert(key) {
                        control.events.push(
                            "rollout",
                            Some(&r.name),
                            format!(
                                "rollout of `{}` waiting for traffic at step {} ({}%): {} of {} requests in the step",
                                ro.target,
                                ro.step + 1,
                                ro.percent(),
                                o.requests,
                                ro.min_requests
                            ),
                        );
                    }
                }
                n => asks.push((r.name.to_string(), ro.clone(), Some(n))),
            }
        }
        waiting.retain(|(route, started, step)| {
            snap.route(route)
                .and_then(|r| r.state.rollout.as_ref())
                .is_some_and(|ro| ro.started_unix_ms == *started && ro.step == *step)
        });
        if asks.is_empty() {
            continue;
        }
        let c = control.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for (route, seen, next) in asks {
                match next {
                    None => c.rollout_restart_step(&route, &seen),
                    Some(n) => c.rollout_drive(&route, &seen, n),
                };
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder() -> Rollout {
        Rollout {
            target: "green".into(),
            steps: vec![5, 25, 50, 100],
            hold_ms: 1_000,
            min_requests: 20,
            step: 0,
            phase: Phase::Running,
            started_unix_ms: 10_000,
            step_started_unix_ms: 10_000,
            paused_elapsed_ms: None,
            base: StepBase::default(),
            reason: None,
            ended_unix_ms: None,
        }
    }

    fn seen(now: u64, requests: u64) -> Observed<'static> {
        Observed {
            now_unix_ms: now,
            requests,
            errors: 0,
            tripped: None,
            circuit_would_trip: false,
            not_worse: false,
            split_matches: true,
        }
    }

    const HOLD: Next = Next::Hold {
        waiting_for_traffic: false,
    };
    const WAIT: Next = Next::Hold {
        waiting_for_traffic: true,
    };

    #[test]
    fn a_step_needs_its_hold_and_its_traffic() {
        let r = ladder();
        assert_eq!(next(&r, &seen(10_500, 100)), HOLD);
        assert_eq!(next(&r, &seen(11_000, 19)), WAIT);
        assert_eq!(r.state(11_000, 19), "waiting_for_traffic");
        assert_eq!(r.state(10_999, 19), "running");
        assert_eq!(
            next(&r, &seen(11_000, 20)),
            Next::Advance {
                step: 1,
                percent: 25
            }
        );
    }

    #[test]
    fn proven_not_worse_advances_before_the_hold_ends() {
        let r = ladder();
        let mut o = seen(10_100, 19);
        o.not_worse = true;
        // Its requests are still needed.
        assert_eq!(next(&r, &o), HOLD);
        o.requests = 20;
        assert_eq!(
            next(&r, &o),
            Next::Advance {
                step: 1,
                percent: 25
            }
        );
        // A verdict about to trip wins over it.
        o.circuit_would_trip = true;
        assert_eq!(next(&r, &o), HOLD);
    }

    #[test]
    fn the_last_step_promotes() {
        let mut r = ladder();
        r.step = 2;
        assert_eq!(next(&r, &seen(20_000, 20)), Next::Promote);
    }

    #[test]
    fn a_trip_ends_it_and_a_pending_verdict_holds_it() {
        let r = ladder();
        let mut o = seen(20_000, 100);
        o.circuit_would_trip = true;
        assert_eq!(next(&r, &o), HOLD);
        o.tripped = Some("canary error rate 50%");
        assert!(matches!(next(&r, &o), Next::RolledBack(why) if why.contains("50%")));
        let mut o = seen(20_000, 100);
        o.split_matches = false;
        assert!(matches!(next(&r, &o), Next::Aborted(_)));
    }

    #[test]
    fn paused_holds_and_keeps_its_elapsed_hold() {
        let mut r = ladder();
        r.phase = Phase::Paused;
        r.paused_elapsed_ms = Some(400);
        assert_eq!(next(&r, &seen(99_000, 1_000)), Next::Nothing);
        assert_eq!(r.hold_remaining_ms(99_000), 600);
        assert_eq!(r.state(99_000, 0), "paused");
    }

    #[test]
    fn counts_start_at_the_steps_baseline() {
        let w = Window::new(Duration::from_secs(30), None);
        for i in 0..10 {
            w.record(0, i % 2 == 0, 1);
        }
        let mut r = ladder();
        r.base = StepBase {
            window: w.id(),
            requests: 4,
            errors: 2,
        };
        assert_eq!(r.counts(&w), (6, 3));
        // A window made after the step started counts whole.
        r.base.window = w.id().wrapping_add(1);
        assert_eq!(r.counts(&w), (10, 5));
    }

    #[test]
    fn percent_gauge_is_zero_unless_in_progress() {
        let route = crate::config::parse(
            std::path::Path::new("t.toml"),
            "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\ngreen = [\"127.0.0.1:2\"]\n",
        )
        .unwrap()
        .routes
        .remove(0);
        let mut s = RouteState::from_file(&route);
        assert_eq!(current_percent(&s), 0);
        s.rollout = Some(ladder());
        assert_eq!(current_percent(&s), 5);
        assert!(interrupted(&mut s, "flip", 1));
        assert_eq!(current_percent(&s), 0);
        let ro = s.rollout.as_ref().unwrap();
        assert_eq!(ro.phase, Phase::Aborted);
        assert!(ro.reason.as_deref().unwrap().starts_with("operator flip"));
    }
}
