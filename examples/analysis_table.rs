//! Prints the table in docs/analysis.md: canary requests to a decision and false-trip rates of the
//! circuit's `sequential` mode against `threshold` mode, at 1, 10 and 100 req/s.
//!
//! Run: `cargo run --release --example analysis_table [RUNS]` (default 2000 runs per cell; seeded,
//! so the same RUNS prints the same table).

use flipgate::config::analysis::{Analysis, Mode};
use flipgate::config::Compare;
use flipgate::control::circuit::simulate::{self, Scenario, Summary};

fn main() {
    let runs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let rules = [
        (
            "sequential (detect 2.0, false_trip 0.001, power 0.8)",
            simulate::circuit(Mode::Sequential, Compare::Live, 0.05, Analysis::default()),
        ),
        (
            "threshold (compare live, max_error_rate 0.05: the default)",
            simulate::circuit(Mode::Threshold, Compare::Live, 0.05, Analysis::default()),
        ),
        (
            "threshold (compare live, max_error_rate 0.01)",
            simulate::circuit(Mode::Threshold, Compare::Live, 0.01, Analysis::default()),
        ),
    ];
    println!("{runs} seeded runs per cell; 5 % canary, live 2 % errors, one hour per run, evaluated every 250 ms, window 30 s, min_requests 20.\n");
    println!("| req/s | rule | false trips (canary 2 %) | proven not worse (canary 2 %), median requests | canary 4 % (2x): tripped within 1 h | 2x: canary requests to trip, median / p90 |");
    println!("|---|---|---|---|---|---|");
    for rps in [1.0, 10.0, 100.0] {
        for (name, c) in &rules {
            let sc = |rate| Scenario {
                rps,
                canary: 0.05,
                live_rate: 0.02,
                canary_rate: rate,
                horizon_s: 3600,
                interval_ms: 250,
            };
            let equal = simulate::many(c, &sc(0.02), runs, 1);
            let worse = simulate::many(c, &sc(0.04), runs, 1_000_000);
            let q =
                |v: &[u64], p| Summary::quantile(v, p).map_or("-".to_string(), |n| n.to_string());
            let nw = if c.mode == Mode::Sequential {
                format!(
                    "{} ({:.1} % of runs)",
                    q(&equal.not_worse_requests, 0.5),
                    equal.not_worse_requests.len() as f64 * 100.0 / runs as f64
                )
            } else {
                "n/a".into()
            };
            println!(
                "| {rps} | {name} | {:.2} % | {nw} | {:.1} % | {} / {} |",
                equal.tripped as f64 * 100.0 / runs as f64,
                worse.tripped as f64 * 100.0 / runs as f64,
                q(&worse.trip_requests, 0.5),
                q(&worse.trip_requests, 0.9),
            );
        }
    }
}
