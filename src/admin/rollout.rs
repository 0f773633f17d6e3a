//! The rollout endpoints (`POST /api/v1/routes/{name}/rollout` and `.../rollout/{pause,resume,
//! abort}`) and the `rollout` part of a route's view.
//!
//! Invariants: requests reach here only through the admin guard like every mutation (token, Host,
//! Origin, Content-Type: `mutation_target` names them); a body is judged by the same rules as the
//! route file's `[routes.rollout]` (`config::rollout`), with that section's values as defaults;
//! the change is made by `Control` (published, persisted) and answered once durable, or with
//! `persisted: false`, like every other mutation. A start answers 202 (the ladder runs on in the
//! server); pause, resume and abort answer 200; both with the route's view, whose `rollout` field
//! is the rollout.

use serde::{Deserialize, Serialize};

use crate::control::rollout::{Op, Plan, Rollout};
use crate::snapshot::RouteEntry;

/// `POST .../rollout` body. Every field but `target` defaults to the route file's section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    pub target: String,
    pub steps: Option<Vec<i64>>,
    pub hold: Option<String>,
    pub min_requests_per_step: Option<u64>,
    /// Refuse (409) unless the target is judged healthy first.
    #[serde(default)]
    pub require_healthy: bool,
}

/// What a rollout request asks for.
#[derive(Debug)]
pub enum Request {
    Start(StartBody),
    Op(Op),
}

/// Parses a rollout request (`verb` is `rollout` or `rollout/SUB`); errors are 400 (bad JSON)
/// or 404 (unknown sub-action). Pure, like `parse_action`.
pub fn parse(verb: &str, body: &[u8]) -> Result<Request, (http::StatusCode, String)> {
    use http::StatusCode;
    let empty = body.iter().all(|b| b.is_ascii_whitespace());
    match verb {
        "rollout" => {
            if empty {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "bad JSON body: expected {\"target\": NAME}".into(),
                ));
            }
            serde_json::from_slice(body)
                .map(Request::Start)
                .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))
        }
        "rollout/pause" | "rollout/resume" | "rollout/abort" => {
            if !empty && serde_json::from_slice::<serde_json::Value>(body).is_err() {
                return Err((StatusCode::BAD_REQUEST, "bad JSON body".into()));
            }
            Ok(Request::Op(match verb {
                "rollout/pause" => Op::Pause,
                "rollout/resume" => Op::Resume,
                _ => Op::Abort,
            }))
        }
        _ => Err((StatusCode::NOT_FOUND, format!("unknown action `{verb}`"))),
    }
}

/// The plan a start body asks for on `route` (the file's section fills what it leaves out), or
/// the 422 message.
pub fn plan(route: &crate::config::Route, b: StartBody) -> Result<Plan, String> {
    let d = &route.rollout;
    let steps = match b.steps {
        None => d.steps.clone(),
        Some(s) => crate::config::rollout::check_steps(&s).map_err(|(_, m)| m)?,
    };
    let hold = match b.hold {
        None => d.hold,
        Some(h) => crate::config::rollout::parse_hold(&h)?,
    };
    Ok(Plan {
        target: b.target,
        steps,
        hold,
        min_requests: b.min_requests_per_step.unwrap_or(d.min_requests_per_step),
        require_healthy: b.require_healthy,
    })
}

/// A route's rollout defaults (`[routes.rollout]`, or the implicit ones).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DefaultsView {
    pub steps: Vec<u8>,
    pub hold_ms: u64,
    pub min_requests_per_step: u64,
}

impl DefaultsView {
    pub fn of(d: &crate::config::rollout::RolloutDefaults) -> DefaultsView {
        DefaultsView {
            steps: d.steps.clone(),
            hold_ms: u64::try_from(d.hold.as_millis()).unwrap_or(u64::MAX),
            min_requests_per_step: d.min_requests_per_step,
        }
    }
}

/// A route's rollout, as the API, the CLI and the status page show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutView {
    pub target: String,
    /// Canary percent of each step.
    pub steps: Vec<u8>,
    /// Index (from 0) of the current step.
    pub step: usize,
    /// Canary percent of the current step.
    pub percent: u8,
    /// `running`, `paused`, `waiting_for_traffic`, `promoted`, `rolled_back` or `aborted`.
    pub state: String,
    pub started_unix_ms: u64,
    /// When the current step's hold started (after a restart: when it started over).
    pub step_started_unix_ms: u64,
    pub hold_ms: u64,
    /// What is left of the current step's hold (0 once it has passed, or after the end).
    pub hold_remaining_ms: u64,
    pub min_requests_per_step: u64,
    /// The candidate's requests and errors in the current step.
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    /// Why it ended.
    pub reason: Option<String>,
    pub ended_unix_ms: Option<u64>,
}

impl RolloutView {
    /// The view of `r`'s rollout, if it has one.
    pub fn of(r: &RouteEntry) -> Option<RolloutView> {
        let ro: &Rollout = r.state.rollout.as_ref()?;
        let now = crate::control::unix_ms();
        let active = ro.phase.active();
        let (requests, errors) = if active {
            r.targets
                .iter()
                .find(|t| *t.name == *ro.target)
                .map_or((0, 0), |t| ro.counts(&t.window))
        } else {
            (0, 0)
        };
        Some(RolloutView {
            target: ro.target.clone(),
            steps: ro.steps.clone(),
            step: ro.step,
            percent: ro.percent(),
            state: ro.state(now, requests).to_string(),
            started_unix_ms: ro.started_unix_ms,
            step_started_unix_ms: ro.step_started_unix_ms,
            hold_ms: ro.hold_ms,
            hold_remaining_ms: if active { ro.hold_remaining_ms(now) } else { 0 },
            min_requests_per_step: ro.min_requests,
            requests,
            errors,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            reason: ro.reason.clone(),
            ended_unix_ms: ro.ended_unix_ms,
        })
    }

    /// Still in progress.
    pub fn active(&self) -> bool {
        matches!(
            self.state.as_str(),
            "running" | "paused" | "waiting_for_traffic"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        assert!(matches!(
            parse(
                "rollout",
                br#"{"target": "green", "steps": [5, 100], "hold": "1s"}"#
            ),
            Ok(Request::Start(_))
        ));
        assert_eq!(parse("rollout", b"").unwrap_err().0, 400);
        assert_eq!(
            parse("rollout", br#"{"target": "g", "x": 1}"#)
                .unwrap_err()
                .0,
            400
        );
        assert!(matches!(
            parse("rollout/pause", b""),
            Ok(Request::Op(Op::Pause))
        ));
        assert_eq!(parse("rollout/halt", b"").unwrap_err().0, 404);
    }
}
