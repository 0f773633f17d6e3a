//! The `analysis` part of a route's view: the circuit's mode and the running sequential evidence
//! about its candidate (`control::circuit::analysis`), in log10 units, with the bars at which it
//! decides.
//!
//! Invariants: read-only; built from the published snapshot and the circuit task's evidence board
//! (never computed here, so the API shows exactly what the circuit decides on). A route without a
//! circuit has no `analysis`.

use serde::{Deserialize, Serialize};

use crate::config::analysis::Detect;
use crate::control::circuit::analysis::{self as stats, Call, Evidence};
use crate::snapshot::RouteEntry;

const LN10: f64 = std::f64::consts::LN_10;

/// One kind of evidence (`errors`, `latency`), as log10 e-values.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KindView {
    /// Evidence that the candidate is worse; it trips at `worse_at`.
    pub worse: f64,
    pub worse_at: f64,
    /// Evidence that it is not worse; it is proven not worse at `not_worse_at`.
    pub not_worse: f64,
    pub not_worse_at: f64,
}

/// `analysis` of a route's view.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AnalysisView {
    /// `threshold` or `sequential`.
    pub mode: String,
    /// What "worse" means: `2x` (rate ratio) or `+1 point`.
    pub detect: String,
    pub false_trip: f64,
    pub power: f64,
    /// The candidate judged now, if any.
    pub candidate: Option<String>,
    /// `live` or `fixed_rate`.
    pub against: Option<String>,
    /// The candidate's requests and errors since the evidence started (this candidate and split).
    pub requests_seen: u64,
    pub errors_seen: u64,
    /// The reference's (live's) requests in the same time.
    pub reference_requests: u64,
    pub errors: Option<KindView>,
    /// Only against live with `max_latency_ratio` set.
    pub latency: Option<KindView>,
    /// `worse`, `not_worse` or `undecided` (in threshold mode errors never decide here).
    pub decision: String,
}

/// The analysis view of `r` given the circuit task's evidence `ev`; `None` without a circuit.
pub fn view(r: &RouteEntry, ev: Option<&Evidence>) -> Option<AnalysisView> {
    let c = r.circuit.as_ref()?;
    // A tripped route judges nothing, whatever the board still holds for a moment.
    let ev = ev.filter(|_| r.state.tripped.is_none());
    let a = &c.analysis;
    let worse_at = stats::worse_bar(a) / LN10;
    let not_worse_at = stats::not_worse_bar(a) / LN10;
    let kind = |worse: f64, not_worse: f64| KindView {
        worse: worse / LN10,
        worse_at,
        not_worse: not_worse / LN10,
        not_worse_at,
    };
    Some(AnalysisView {
        mode: c.mode.name().into(),
        detect: match a.detect {
            Detect::Ratio(x) => format!("{x}x"),
            Detect::Points(p) => format!("+{p} points"),
        },
        false_trip: a.false_trip,
        power: a.power,
        candidate: ev.map(|e| e.candidate.clone()),
        against: ev.map(|e| e.against.to_string()),
        requests_seen: ev.map_or(0, |e| e.seen.requests),
        errors_seen: ev.map_or(0, |e| e.seen.errors),
        reference_requests: ev.map_or(0, |e| e.reference.requests),
        errors: ev.map(|e| kind(e.errors_worse, e.errors_not_worse)),
        latency: ev.and_then(|e| Some(kind(e.latency?, e.latency_not_worse?))),
        decision: match ev.map(|e| e.call(c)) {
            Some(Call::Worse { .. }) => "worse",
            Some(Call::NotWorse) => "not_worse",
            _ => "undecided",
        }
        .into(),
    })
}
