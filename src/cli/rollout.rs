//! `flipgate rollout`: start a rollout ladder on the server and follow it to its end, attach to
//! one (`--watch`), or print its plan (`--dry-run`).
//!
//! Invariants: the ladder runs in the server; this command only starts it and reads the route's
//! view, so `--detach`, Ctrl-C or a lost connection never stop or change it. Exit 0 when the
//! rollout promoted, 1 when it rolled back or was aborted (the reason on stderr) or the call
//! failed, 2 on bad usage (clap's, and a ladder or hold the route file's rules refuse). Progress:
//! one line per change (step or state) when stdout is not a terminal; a line rewritten in place on
//! a terminal. `--dry-run` reads the route and changes nothing.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Args;

use super::{call, encode, AdminArgs, Failure};
use crate::admin::rollout::RolloutView;
use crate::admin::view::RouteView;

/// How often a following CLI reads the route.
const POLL: Duration = Duration::from_millis(200);
/// How long a following CLI keeps trying while the admin API is unreachable (a restart).
const UNREACHABLE_FOR: Duration = Duration::from_secs(60);

/// `flipgate rollout ROUTE ...`.
#[derive(Args, Debug, Clone)]
pub struct RolloutArgs {
    pub route: String,
    /// The target to roll out (required unless --watch).
    #[arg(long, required_unless_present = "watch", conflicts_with = "watch")]
    pub to: Option<String>,
    /// Canary percent of each step, strictly increasing, ending at 100 (default: the route
    /// file's `[routes.rollout]`, else 5,25,50,100).
    #[arg(long, value_parser = parse_steps)]
    pub steps: Option<Steps>,
    /// How long each step holds before the next (default: the route file's, else 2m).
    #[arg(long, value_parser = parse_hold)]
    pub hold: Option<Hold>,
    /// Requests the target must serve in a step before it advances (default: the route file's
    /// `min_requests_per_step`, else the circuit's `min_requests`).
    #[arg(long)]
    pub min_requests: Option<u64>,
    /// Refuse to start (exit 1, with the reason) unless the target is judged healthy on its
    /// recent traffic against live's (preview or shadow requests; see docs/analysis.md).
    #[arg(long, conflicts_with = "watch")]
    pub require_healthy: bool,
    /// Start it and return at once (the server runs the ladder).
    #[arg(long, conflicts_with_all = ["watch", "dry_run"])]
    pub detach: bool,
    /// Print the plan and the earliest finish time; change nothing.
    #[arg(long, conflicts_with = "watch")]
    pub dry_run: bool,
    /// Follow the route's rollout in progress until it ends.
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// A ladder as given on the command line, checked.
#[derive(Debug, Clone)]
pub struct Steps(pub Vec<u8>, pub String);

/// A hold as given on the command line, checked.
#[derive(Debug, Clone)]
pub struct Hold(pub Duration, pub String);

fn parse_steps(s: &str) -> Result<Steps, String> {
    let values = s
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<i64>()
                .map_err(|_| format!("`{p}` is not a whole percent"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    crate::config::rollout::check_steps(&values)
        .map(|v| Steps(v, s.to_string()))
        .map_err(|(_, m)| m)
}

fn parse_hold(s: &str) -> Result<Hold, String> {
    crate::config::rollout::parse_hold(s).map(|d| Hold(d, s.to_string()))
}

/// Runs `flipgate rollout`; returns the exit code.
pub async fn run(a: RolloutArgs) -> u8 {
    match drive(a).await {
        Ok(code) => code,
        Err(Failure(why)) => {
            eprintln!("flipgate: {why}");
            1
        }
    }
}

async fn get_route(admin: &AdminArgs, route: &str) -> Result<RouteView, Failure> {
    let bytes = call(
        admin,
        http::Method::GET,
        &format!("/api/v1/routes/{}", encode(route)),
        None,
    )
    .await?;
    serde_json::from_slice(&bytes).map_err(|e| Failure(format!("unexpected answer: {e}")))
}

async fn drive(a: RolloutArgs) -> Result<u8, Failure> {
    if a.watch {
        return follow(&a.admin, &a.route, None).await;
    }
    let target = a.to.clone().unwrap_or_default();
    if a.dry_run {
        let view = get_route(&a.admin, &a.route).await?;
        print!("{}", plan(&view, &a, &target)?);
        return Ok(0);
    }
    let mut body = serde_json::json!({ "target": target });
    if let Some(s) = &a.steps {
        body["steps"] = s.0.clone().into();
    }
    if let Some(h) = &a.hold {
        body["hold"] = h.1.clone().into();
    }
    if let Some(n) = a.min_requests {
        body["min_requests_per_step"] = n.into();
    }
    if a.require_healthy {
        body["require_healthy"] = true.into();
    }
    let bytes = call(
        &a.admin,
        http::Method::POST,
        &format!("/api/v1/routes/{}/rollout", encode(&a.route)),
        Some(body),
    )
    .await?;
    let view: RouteView =
        serde_json::from_slice(&bytes).map_err(|e| Failure(format!("unexpected answer: {e}")))?;
    let ro = view
        .rollout
        .ok_or_else(|| Failure("the server answered without a rollout".into()))?;
    println!(
        "rollout of `{}` on `{}` started: {}",
        ro.target,
        view.name,
        ladder(&ro.steps)
    );
    if a.detach {
        println!(
            "detached; follow it with `flipgate rollout {} --watch`",
            view.name
        );
        return Ok(0);
    }
    follow(&a.admin, &a.route, Some(ro.started_unix_ms)).await
}

fn ladder(steps: &[u8]) -> String {
    steps
        .iter()
        .map(|p| format!("{p}%"))
        .collect::<Vec<_>>()
        .join(" -> ")
}

fn human(ms: u64) -> String {
    // Whole seconds above a minute, milliseconds below a second.
    let d = if ms >= 60_000 {
        Duration::from_secs(ms / 1000)
    } else if ms >= 1000 {
        Duration::from_millis(ms / 100 * 100)
    } else {
        Duration::from_millis(ms)
    };
    humantime::format_duration(d).to_string()
}

/// The `--dry-run` text: each step with its percent and hold, and the earliest finish.
fn plan(view: &RouteView, a: &RolloutArgs, target: &str) -> Result<String, Failure> {
    if !view.targets.iter().any(|t| t.name == target) {
        let known: Vec<&str> = view.targets.iter().map(|t| t.name.as_str()).collect();
        return Err(Failure(format!(
            "route `{}` has no target `{target}`; its targets are: {}",
            view.name,
            known.join(", ")
        )));
    }
    if view.live == target {
        return Err(Failure(format!(
            "`{target}` is already live on route `{}`",
            view.name
        )));
    }
    if let Some(r) = view.rollout.as_ref().filter(|r| r.active()) {
        return Err(Failure(format!(
            "route `{}` already has a rollout of `{}` in progress",
            view.name, r.target
        )));
    }
    let d = view.rollout_defaults.as_ref();
    let steps = a
        .steps
        .as_ref()
        .map(|s| s.0.clone())
        .or_else(|| d.map(|d| d.steps.clone()))
        .unwrap_or_else(|| crate::config::rollout::DEFAULT_STEPS.to_vec());
    let hold_ms = a.hold.as_ref().map_or_else(
        || d.map_or(120_000, |d| d.hold_ms),
        |h| h.0.as_millis() as u64,
    );
    let min = a
        .min_requests
        .or_else(|| d.map(|d| d.min_requests_per_step))
        .unwrap_or(0);
    let mut out = format!(
        "plan for route `{}`: roll out `{target}` (live now: `{}`), {}\n",
        view.name,
        view.live,
        ladder(&steps)
    );
    let mut total = 0u64;
    for (i, p) in steps.iter().enumerate() {
        if *p == 100 {
            out.push_str(&format!("  step {}  100%  promote `{target}`\n", i + 1));
        } else {
            total = total.saturating_add(hold_ms);
            out.push_str(&format!(
                "  step {}  {p}%  hold {}, then at least {min} requests to `{target}` in the step\n",
                i + 1,
                human(hold_ms)
            ));
        }
    }
    let finish = std::time::SystemTime::now() + Duration::from_millis(total);
    out.push_str(&format!(
        "earliest finish: {} (in {}), if every step gets its requests in time and the circuit stays closed\n",
        humantime::format_rfc3339_seconds(finish),
        human(total)
    ));
    out.push_str("dry run: nothing was changed\n");
    Ok(out)
}

/// One progress line.
fn line(view: &RouteView, ro: &RolloutView) -> String {
    let mut s = format!(
        "{}: step {}/{} {}%  {}",
        view.name,
        ro.step + 1,
        ro.steps.len(),
        ro.percent,
        ro.state,
    );
    if ro.active() {
        s.push_str(&format!(
            "  requests {}/{}  errors {:.1}%  hold {} left",
            ro.requests,
            ro.min_requests_per_step,
            ro.error_rate * 100.0,
            human(ro.hold_remaining_ms)
        ));
    }
    s
}

/// The status table's note on a rollout in progress.
pub fn summary(route: &str, ro: &RolloutView) -> String {
    format!(
        "{route} rollout of {}: step {}/{} at {}%, {}, {}/{} requests, {:.1}% errors, hold {} left",
        ro.target,
        ro.step + 1,
        ro.steps.len(),
        ro.percent,
        ro.state.replace('_', " "),
        ro.requests,
        ro.min_requests_per_step,
        ro.error_rate * 100.0,
        human(ro.hold_remaining_ms)
    )
}

/// Lines for steps taken between two reads (a short hold passes between polls): every step
/// taken gets its line.
fn passed(view: &RouteView, ro: &RolloutView, from: usize) -> Vec<String> {
    (from..ro.step)
        .filter_map(|i| ro.steps.get(i).map(|p| (i, p)))
        .filter(|(_, p)| **p < 100)
        .map(|(i, p)| {
            format!(
                "{}: step {}/{} {p}%  passed",
                view.name,
                i + 1,
                ro.steps.len()
            )
        })
        .collect()
}

/// Follows the route's rollout (the one started at `started`, or whichever is there) until it
/// ends; returns the exit code.
async fn follow(admin: &AdminArgs, route: &str, started: Option<u64>) -> Result<u8, Failure> {
    let tty = std::io::stdout().is_terminal();
    let mut last: Option<(String, usize)> = None;
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        let view = match get_route(admin, route).await {
            Ok(v) => {
                unreachable_since = None;
                v
            }
            Err(Failure(why)) => {
                let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > UNREACHABLE_FOR {
                    return Err(Failure(format!(
                        "{why}; the rollout goes on in the server: attach again with `flipgate rollout {route} --watch`"
                    )));
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        let Some(ro) = view.rollout.clone() else {
            return Err(Failure(format!("route `{route}` has no rollout")));
        };
        if started.is_some_and(|s| s != ro.started_unix_ms) {
            return Err(Failure(format!(
                "the rollout on route `{route}` was replaced by another one"
            )));
        }
        let key = (ro.state.clone(), ro.step);
        let text = line(&view, &ro);
        // Steps that began and ended between two reads.
        let from = last.as_ref().map_or(ro.step, |(_, s)| s + 1);
        for l in passed(&view, &ro, from) {
            if tty {
                print!("\r\x1b[2K");
            }
            println!("{l}");
        }
        if tty {
            print!("\r\x1b[2K{text}");
            if last.as_ref() != Some(&key) && last.is_some() && !ro.active() {
                println!();
            }
        } else if last.as_ref() != Some(&key) {
            println!("{text}");
        }
        let _ = std::io::stdout().flush();
        last = Some(key);
        if !ro.active() {
            if tty {
                println!();
            }
            let reason = ro.reason.clone().unwrap_or_default();
            return Ok(if ro.state == "promoted" {
                println!("promoted: `{}` is live on `{}`", ro.target, view.name);
                0
            } else {
                eprintln!(
                    "flipgate: rollout of `{}` {}: {reason}",
                    ro.target,
                    ro.state.replace('_', " ")
                );
                1
            });
        }
        tokio::time::sleep(POLL).await;
    }
}
