//! `[routes.rollout]`: the defaults of a route's rollout ladder, and the rules every ladder obeys
//! wherever it comes from (the route file, the admin API, the CLI).
//!
//! Invariants: a validated ladder is non-empty, strictly increasing, every step in 1..=100 and the
//! last step is 100 (reaching it promotes); a hold is a positive duration of at most a day
//! (sub-second holds are allowed: tests and very busy routes use them). The same functions judge
//! the file and an API body, so the two can never disagree. Nothing here is seen by the data path.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::error::{quote, Sink};

/// The hold of a step when neither the file nor the call names one.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(120);
/// The ladder when neither the file nor the call names one.
pub const DEFAULT_STEPS: [u8; 4] = [5, 25, 50, 100];
/// The longest hold (a day, like every other timeout).
pub const MAX_HOLD: Duration = super::MAX_TIMEOUT;

/// `[routes.rollout]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    pub steps: Option<Spanned<Vec<Spanned<i64>>>>,
    pub hold: Option<Spanned<String>>,
    pub min_requests_per_step: Option<Spanned<i64>>,
}

/// A route's rollout defaults, validated. A route without the section has the defaults
/// (`DEFAULT_STEPS`, `DEFAULT_HOLD`, the circuit's `min_requests`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutDefaults {
    /// Canary percent of each step; the last is 100.
    pub steps: Vec<u8>,
    pub hold: Duration,
    /// Requests the candidate must serve in a step before it may advance.
    pub min_requests_per_step: u64,
}

impl RolloutDefaults {
    /// The defaults of a route without a `[routes.rollout]` section: `min_requests` is the
    /// circuit's (0 without a circuit: then only the hold gates a step).
    pub fn implicit(circuit_min_requests: Option<u64>) -> RolloutDefaults {
        RolloutDefaults {
            steps: DEFAULT_STEPS.to_vec(),
            hold: DEFAULT_HOLD,
            min_requests_per_step: circuit_min_requests.unwrap_or(0),
        }
    }
}

/// Checks a ladder: which step is wrong (its index, or `None` for the whole list) and why.
pub fn check_steps(steps: &[i64]) -> Result<Vec<u8>, (Option<usize>, String)> {
    if steps.is_empty() {
        return Err((
            None,
            "a ladder needs at least one step (the last is 100)".into(),
        ));
    }
    let mut out = Vec::with_capacity(steps.len());
    for (i, &p) in steps.iter().enumerate() {
        if !(1..=100).contains(&p) {
            return Err((
                Some(i),
                format!("step {p} is out of range: each step is a canary percent from 1 to 100"),
            ));
        }
        if let Some(&prev) = out.last() {
            if p <= i64::from(prev) {
                return Err((
                    Some(i),
                    format!("steps must be strictly increasing: {p} follows {prev}"),
                ));
            }
        }
        out.push(p as u8);
    }
    if out.last() != Some(&100) {
        return Err((
            Some(steps.len() - 1),
            format!(
                "the last step must be 100 (reaching it promotes), got {}",
                out.last().copied().unwrap_or(0)
            ),
        ));
    }
    Ok(out)
}

/// Parses a hold ("2m", "100ms"): positive, at most `MAX_HOLD`.
pub fn parse_hold(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("hold must be greater than zero".into()),
        Ok(d) if d > MAX_HOLD => Err(format!(
            "hold `{}` is longer than the maximum of {}",
            quote(s),
            humantime::format_duration(MAX_HOLD)
        )),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "`{}` is not a duration ({}); examples: \"100ms\", \"30s\", \"2m\"",
            quote(s),
            quote(&e.to_string())
        )),
    }
}

/// Validates a route's `[routes.rollout]`; errors go to `sink` under `routes[NAME].rollout.*`.
pub(super) fn validate(
    sink: &mut Sink,
    route: &str,
    raw: Option<Spanned<RawRollout>>,
    circuit_min_requests: Option<u64>,
) -> RolloutDefaults {
    let mut d = RolloutDefaults::implicit(circuit_min_requests);
    let Some(raw) = raw else { return d };
    let f = |field: &str| format!("routes[{}].rollout.{field}", quote(route));
    let raw = raw.into_inner();
    if let Some(steps) = raw.steps {
        let values: Vec<i64> = steps.get_ref().iter().map(|s| *s.get_ref()).collect();
        match check_steps(&values) {
            Ok(v) => d.steps = v,
            Err((at, msg)) => {
                let span = at.map_or(steps.span(), |i| steps.get_ref()[i].span());
                sink.push(span, f("steps"), msg);
            }
        }
    }
    if let Some(hold) = raw.hold {
        match parse_hold(hold.get_ref()) {
            Ok(h) => d.hold = h,
            Err(msg) => sink.push(hold.span(), f("hold"), msg),
        }
    }
    if let Some(n) = raw.min_requests_per_step {
        match u64::try_from(*n.get_ref()) {
            Ok(v) => d.min_requests_per_step = v,
            Err(_) => sink.push(
                n.span(),
                f("min_requests_per_step"),
                format!("must be at least 0, got {}", n.get_ref()),
            ),
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladders() {
        assert_eq!(
            check_steps(&[5, 25, 50, 100]).unwrap(),
            vec![5, 25, 50, 100]
        );
        assert_eq!(check_steps(&[100]).unwrap(), vec![100]);
        assert_eq!(check_steps(&[]).unwrap_err().0, None);
        assert_eq!(check_steps(&[5, 5, 100]).unwrap_err().0, Some(1));
        assert_eq!(check_steps(&[0, 100]).unwrap_err().0, Some(0));
        assert_eq!(check_steps(&[5, 101]).unwrap_err().0, Some(1));
        assert_eq!(check_steps(&[5, 50]).unwrap_err().0, Some(1));
    }

    #[test]
    fn holds() {
        assert_eq!(parse_hold("100ms").unwrap(), Duration::from_millis(100));
        assert!(parse_hold("0s").is_err());
        assert!(parse_hold("2 fortnights").is_err());
        assert!(parse_hold("2d").is_err());
    }
}
