//! `[routes.circuit]`'s analysis keys: `mode`, `detect` / `detect_points`, `false_trip`, `power`,
//! `max_latency_ratio`, `latency_quantile` (the statistics are in `control::circuit::analysis`).
//!
//! Invariants: a validated `Analysis` has `detect > 1` or `0 < detect_points < 100` (never both),
//! `0 < false_trip <= 0.2`, `0.5 <= power < 1`, `max_latency_ratio >= 1` when set and
//! `0.5 <= latency_quantile <= 0.999`; in `sequential` mode the error rate "worse" means for a
//! target judged against a fixed rate (`max_error_rate`, during bake or with `compare =
//! "absolute"`) is below 1, so every likelihood ratio the test forms is finite. Nothing here is seen
//! by the data path.

use toml::Spanned;

use super::error::Sink;
use super::raw::RawCircuit;

/// How the circuit judges the candidate's errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Today's rule: the error rate over the window against `max_error_rate` (default).
    #[default]
    Threshold,
    /// An always-valid sequential test (`control::circuit::analysis`).
    Sequential,
}

impl Mode {
    /// The name in the route file and the API.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Threshold => "threshold",
            Mode::Sequential => "sequential",
        }
    }
}

/// What counts as "worse": a rate ratio, or percentage points above the reference rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Detect {
    Ratio(f64),
    Points(f64),
}

/// The sequential test's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Analysis {
    pub detect: Detect,
    /// Bound on the probability that a candidate as good as its reference is ever called worse.
    pub false_trip: f64,
    /// Probability of not calling a candidate "not worse" when it is worse by `detect`; the
    /// "not worse" bar is `1 / (1 - power)`.
    pub power: f64,
    /// Trip when the candidate's `latency_quantile` is slower than this times live's.
    pub max_latency_ratio: Option<f64>,
    pub latency_quantile: f64,
}

impl Default for Analysis {
    fn default() -> Analysis {
        Analysis {
            detect: Detect::Ratio(2.0),
            false_trip: 0.001,
            power: 0.8,
            max_latency_ratio: None,
            latency_quantile: 0.9,
        }
    }
}

/// Validates the analysis keys of `c` (taking them out). `f` names a field; `max_error_rate` is
/// the circuit's (the fixed reference rate of the sequential test).
pub fn validate(
    sink: &mut Sink,
    f: &dyn Fn(&str) -> String,
    c: &mut RawCircuit,
    max_error_rate: f64,
) -> (Mode, Analysis) {
    let mut a = Analysis::default();
    let mode_span = c.mode.as_ref().map_or(0..0, |m| m.span());
    let mode = match c.mode.take() {
        None => Mode::Threshold,
        Some(s) => match s.get_ref().as_str() {
            "threshold" => Mode::Threshold,
            "sequential" => Mode::Sequential,
            other => {
                sink.push(
                    s.span(),
                    f("circuit.mode"),
                    format!(
                        "unknown mode `{}`; expected \"threshold\" or \"sequential\"",
                        super::error::quote(other)
                    ),
                );
                Mode::Threshold
            }
        },
    };
    let ratio = bounded(
        sink,
        f,
        c.detect.take(),
        "circuit.detect",
        &|x| x > 1.0 && x <= 1000.0,
        "an error-rate ratio above 1.0 (2.0 = twice the reference rate) and at most 1000",
    );
    let points = bounded(
        sink,
        f,
        c.detect_points.take(),
        "circuit.detect_points",
        &|x| x > 0.0 && x < 100.0,
        "percentage points above 0 and below 100 (1.0 = one point above the reference rate)",
    );
    let mut detect_span = None;
    match (ratio, points) {
        (Some(_), Some((_, span))) => {
            sink.push(
                span,
                f("circuit.detect_points"),
                "set either `detect` (a ratio) or `detect_points` (percentage points), not both",
            );
        }
        (Some((x, span)), None) => {
            a.detect = Detect::Ratio(x);
            detect_span = Some(span);
        }
        (None, Some((x, span))) => {
            a.detect = Detect::Points(x);
            detect_span = Some(span);
        }
        (None, None) => {}
    }
    if let Some((x, _)) = bounded(
        sink,
        f,
        c.false_trip.take(),
        "circuit.false_trip",
        &|x| x > 0.0 && x <= 0.2,
        "a probability above 0 and at most 0.2 (0.001 = one false trip in a thousand candidates)",
    ) {
        a.false_trip = x;
    }
    if let Some((x, _)) = bounded(
        sink,
        f,
        c.power.take(),
        "circuit.power",
        &|x| (0.5..1.0).contains(&x),
        "a probability from 0.5 to below 1 (0.8 = a candidate worse by `detect` is called \"not worse\" at most 20% of the time)",
    ) {
        a.power = x;
    }
    a.max_latency_ratio = bounded(
        sink,
        f,
        c.max_latency_ratio.take(),
        "circuit.max_latency_ratio",
        &|x| (1.0..=100.0).contains(&x),
        "a latency ratio from 1.0 to 100 (1.5 = trip when the candidate is 1.5x slower than live)",
    )
    .map(|(x, _)| x);
    if let Some((x, _)) = bounded(
        sink,
        f,
        c.latency_quantile.take(),
        "circuit.latency_quantile",
        &|x| (0.5..=0.999).contains(&x),
        "a quantile from 0.5 to 0.999 (0.9 = p90)",
    ) {
        a.latency_quantile = x;
    }
    if mode == Mode::Sequential {
        let worse = match a.detect {
            Detect::Ratio(r) => max_error_rate * r,
            Detect::Points(p) => max_error_rate + p / 100.0,
        };
        if max_error_rate <= 0.0 || worse >= 1.0 {
            let (span, field) = match detect_span {
                Some(s) => (
                    s,
                    match a.detect {
                        Detect::Ratio(_) => "circuit.detect",
                        Detect::Points(_) => "circuit.detect_points",
                    },
                ),
                None => (mode_span, "circuit.mode"),
            };
            sink.push(
                span,
                f(field),
                format!(
                    "in sequential mode `max_error_rate` ({max_error_rate}) is the rate a target judged on its own (during bake, or with compare = \"absolute\") may have, and \"worse\" is {worse:.4}; it needs 0 < max_error_rate and a \"worse\" rate below 1.0"
                ),
            );
        }
    }
    (mode, a)
}

/// A number setting that must satisfy `ok`: its value and span, or an error saying `want`.
fn bounded(
    sink: &mut Sink,
    f: &dyn Fn(&str) -> String,
    v: Option<Spanned<f64>>,
    field: &str,
    ok: &dyn Fn(f64) -> bool,
    want: &str,
) -> Option<(f64, std::ops::Range<usize>)> {
    let v = v?;
    let x = *v.get_ref();
    if x.is_finite() && ok(x) {
        Some((x, v.span()))
    } else {
        sink.push(v.span(), f(field), format!("must be {want}, got {x}"));
        None
    }
}
