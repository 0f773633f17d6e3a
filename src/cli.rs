//! Command-line interface: argument definitions and the deploy-script client commands.
//!
//! Invariants: exit codes are 0 on success, 1 on failure with a one-line reason on stderr (the
//! server's `error` text when it gave one), 2 on bad usage (clap's own). Client commands talk only
//! to the admin API, so they work against any replica from anywhere the API is reachable.

pub mod rollout;
pub mod watch;

use std::path::PathBuf;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::admin::view::{RouteView, RoutesView};

mod instances;

/// flipgate: blue/green and canary reverse proxy for bot services.
#[derive(Parser, Debug)]
#[command(name = "flipgate", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve traffic from a route file (hot-reloaded).
    Run {
        #[arg(short, long, default_value = "config/flipgate.toml")]
        config: PathBuf,
    },
    /// Self-contained demo: built-in blue and green bots behind the proxy.
    Demo(crate::demo::DemoArgs),
    /// Validate a route file and print a summary; errors as FILE:LINE:COL: message.
    Check { file: PathBuf },
    /// Show routes: live, canary, previous, circuit, error rates.
    Status {
        route: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// A live view: each target's request rate, error rate and p99 over the last 15 minutes
        /// as sparklines, with events marked, redrawn every 2 s until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// With --watch: stop after this many frames.
        #[arg(long, requires = "watch")]
        count: Option<u64>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make TARGET (default: the canary target, else the only other target) live.
    Flip {
        route: String,
        target: Option<String>,
        /// Refuse (exit 1, with the reason) unless TARGET is judged healthy on its recent
        /// traffic against live's (preview or shadow requests; see docs/analysis.md).
        #[arg(long)]
        require_healthy: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Send PERCENT (0..=100) of new requests to the canary target.
    Canary {
        route: String,
        percent: f64,
        #[arg(long)]
        target: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make the canary target live.
    Promote {
        route: String,
        /// Refuse (exit 1, with the reason) unless the canary is judged healthy against live.
        #[arg(long)]
        require_healthy: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Undo: canary to 0 %, or live back to the previous target.
    Rollback {
        route: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Clear a tripped circuit (keeps the current split).
    Reset {
        route: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stop sending new requests to one instance (its in-flight requests finish).
    Drain(instances::InstanceArgs),
    /// Send new requests to a drained instance again.
    Undrain(instances::InstanceArgs),
    /// Wait until a drained instance has no request or tunnel in flight (exit 1 on timeout).
    WaitDrained(instances::WaitArgs),
    /// Roll TARGET out step by step (run by the server); follow it until it promotes (exit 0) or
    /// rolls back or is aborted (exit 1).
    Rollout(rollout::RolloutArgs),
    /// Pause the route's rollout (its current step holds).
    Pause {
        route: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Resume the route's paused rollout.
    Resume {
        route: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Abort the route's rollout: its canary back to 0 %.
    Abort {
        route: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Where the admin API is and how to authenticate.
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// Admin API base URL (`http://` is assumed when there is no scheme).
    #[arg(long, env = "FLIPGATE_ADMIN", default_value = "http://127.0.0.1:9901")]
    pub admin: String,
    /// Bearer token for mutating calls.
    #[arg(long, env = "FLIPGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// A failed client command: its one-line reason.
#[derive(Debug)]
pub struct Failure(pub String);

pub(crate) async fn call(
    admin: &AdminArgs,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<Bytes, Failure> {
    let base = admin.admin.trim_end_matches('/');
    // `--admin 127.0.0.1:9901` means the plain-HTTP admin listener at that address.
    let scheme = if base.contains("://") { "" } else { "http://" };
    let uri: http::Uri = format!("{scheme}{base}{path}")
        .parse()
        .map_err(|e| Failure(format!("bad --admin URL `{}`: {e}", admin.admin)))?;
    let mut req = http::Request::builder().method(method).uri(uri);
    if let Some(t) = &admin.token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    // The admin API refuses a body that is not declared JSON (a web form could send one).
    if body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Failure(e.to_string()))?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| Failure(format!("admin API at {base} did not answer within 30s")))?
        .map_err(|e| Failure(format!("cannot reach admin API at {base}: {e}")))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| Failure(format!("reading admin response: {e}")))?
        .to_bytes();
    if !status.is_success() {
        let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
        return Err(Failure(format!("{} ({})", msg, status.as_u16())));
    }
    Ok(bytes)
}

/// Runs a client command; returns what to print on success.
pub async fn client(cmd: Command) -> Result<String, Failure> {
    use http::Method;
    let post = |route: &str, verb: &str| format!("/api/v1/routes/{}/{verb}", encode(route));
    let (admin, path, body) = match cmd {
        Command::Status {
            route,
            watch: true,
            count,
            admin,
            ..
        } => {
            watch::run(&admin, route.as_deref(), count).await?;
            return Ok(String::new());
        }
        Command::Status {
            route, json, admin, ..
        } => {
            let path = match &route {
                Some(r) => format!("/api/v1/routes/{}", encode(r)),
                None => "/api/v1/routes".to_string(),
            };
            let bytes = call(&admin, Method::GET, &path, None).await?;
            if json {
                return Ok(String::from_utf8_lossy(&bytes).into_owned());
            }
            let routes = if route.is_some() {
                vec![serde_json::from_slice::<RouteView>(&bytes)
                    .map_err(|e| Failure(format!("unexpected answer: {e}")))?]
            } else {
                let view = serde_json::from_slice::<RoutesView>(&bytes)
                    .map_err(|e| Failure(format!("unexpected answer: {e}")))?;
                let store = view.state.and_then(|s| s.store);
                return Ok(
                    table(&view.routes) + &store.map_or_else(String::new, |s| store_note(&s))
                );
            };
            return Ok(table(&routes));
        }
        Command::Flip {
            route,
            target,
            require_healthy,
            admin,
        } => {
            let mut b = serde_json::json!({});
            if let Some(t) = target {
                b["target"] = t.into();
            }
            if require_healthy {
                b["require_healthy"] = true.into();
            }
            let body = (b != serde_json::json!({})).then_some(b);
            (admin, post(&route, "flip"), body)
        }
        Command::Canary {
            route,
            percent,
            target,
            admin,
        } => {
            let mut b = serde_json::json!({ "percent": percent });
            if let Some(t) = target {
                b["target"] = t.into();
            }
            (admin, post(&route, "canary"), Some(b))
        }
        Command::Promote {
            route,
            require_healthy,
            admin,
        } => {
            let body = require_healthy.then(|| serde_json::json!({ "require_healthy": true }));
            (admin, post(&route, "promote"), body)
        }
        Command::Rollback { route, admin } => (admin, post(&route, "rollback"), None),
        Command::Reset { route, admin } => (admin, post(&route, "reset"), None),
        Command::Drain(a) => return instances::drain(a, true).await,
        Command::Undrain(a) => return instances::drain(a, false).await,
        Command::WaitDrained(a) => return instances::wait_drained(a).await,
        Command::Pause { route, admin } => (admin, post(&route, "rollout/pause"), None),
        Command::Resume { route, admin } => (admin, post(&route, "rollout/resume"), None),
        Command::Abort { route, admin } => (admin, post(&route, "rollout/abort"), None),
        Command::Run { .. } | Command::Demo(_) | Command::Check { .. } | Command::Rollout(_) => {
            unreachable!("not a client command")
        }
    };
    let rollback = path.ends_with("/rollback");
    let bytes = call(&admin, Method::POST, &path, body).await?;
    let view: RouteView =
        serde_json::from_slice(&bytes).map_err(|e| Failure(format!("unexpected answer: {e}")))?;
    // A rollback of a route the circuit already rolled back changes nothing: say so.
    let note = match &view.circuit.tripped {
        Some(_) if rollback => format!(
            "`{}` was already rolled back by the circuit; live is `{}`\n",
            view.name, view.live
        ),
        _ => String::new(),
    };
    Ok(note + &table(&[view]))
}

pub(crate) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A readable table of routes.
pub fn table(routes: &[RouteView]) -> String {
    let mut rows = vec![[
        "ROUTE".to_string(),
        "LIVE".into(),
        "CANARY".into(),
        "PREVIOUS".into(),
        "CIRCUIT".into(),
        "ERRORS (window)".into(),
    ]];
    for r in routes {
        let canary = r.canary.as_ref().map_or("-".to_string(), |c| {
            format!("{} {:.2}% ({:?})", c.target, c.percent, c.source).to_lowercase()
        });
        // The reason can be long: it goes under the table, wrapped, so rows keep to a terminal.
        let circuit = match &r.circuit.tripped {
            Some(_) => "tripped".to_string(),
            None => r.circuit.state.clone(),
        };
        let errors = r
            .targets
            .iter()
            .map(|t| {
                format!(
                    "{} {}/{} {:.1}%",
                    t.name,
                    t.window.errors,
                    t.window.requests,
                    t.window.error_rate * 100.0
                )
            })
            .collect::<Vec<_>>()
            .join("  ");
        rows.push([
            r.name.clone(),
            format!(
                "{} ({})",
                r.live,
                format!("{:?}", r.live_source).to_lowercase()
            ),
            canary,
            r.previous.clone().unwrap_or_else(|| "-".into()),
            circuit,
            errors,
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for r in routes {
        if let Some(t) = &r.circuit.tripped {
            out.push_str(&wrap(&format!("{} tripped: {}", r.name, t.reason), WIDTH));
        }
        if let Some(ro) = r.rollout.as_ref().filter(|ro| ro.active()) {
            out.push_str(&wrap(&rollout::summary(&r.name, ro), WIDTH));
        }
        for rule in &r.rules {
            let field = rule
                .field
                .as_deref()
                .map_or(String::new(), |f| format!(" {f}"));
            out.push_str(&wrap(
                &format!(
                    "{} rule {}: {}{field} in [{}] -> {}, {} matched",
                    r.name,
                    rule.name,
                    rule.kind,
                    rule.values.join(", "),
                    rule.target,
                    rule.matched
                ),
                WIDTH,
            ));
        }
    }
    if routes.iter().any(|r| !r.persisted) {
        out.push_str("warning: runtime state not persisted: the decisions shown are in force but would not survive a restart (see /readyz)\n");
    }
    out
}

/// Warnings about the shared state store (`[state] backend = "etcd"`), empty while all is well.
fn store_note(s: &crate::control::state::shared::StoreStatus) -> String {
    let mut out = String::new();
    if !s.up {
        out.push_str(&wrap(
            &format!(
                "warning: shared state store ({}) unreachable: {}; this replica serves the last state it knows and refuses changes",
                s.backend,
                s.error.as_deref().unwrap_or("unknown")
            ),
            WIDTH,
        ));
    }
    if !s.routes_behind.is_empty() {
        out.push_str(&wrap(
            &format!(
                "warning: this replica's route file has another split than the fleet's state for {}; it serves its own file for them",
                s.routes_behind.join(", ")
            ),
            WIDTH,
        ));
    }
    out
}

/// Width the table's notes are wrapped to (a terminal's usual).
const WIDTH: usize = 100;

/// `text` as lines of at most `width` characters (a longer word gets a line of its own), the
/// lines after the first indented.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            out.push_str(&line);
            out.push('\n');
            line = "    ".into();
        }
        if !line.trim().is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// `flipgate check`: a summary of a valid file.
pub fn summary(c: &crate::config::Config) -> String {
    let mut out = format!(
        "{}: OK, {} route(s); listen {}, admin {}\n",
        c.path.display(),
        c.routes.len(),
        c.server.listen,
        c.admin.listen
    );
    for r in &c.routes {
        let hosts = if r.hosts.is_empty() {
            "*".to_string()
        } else {
            r.hosts
                .iter()
                .map(|h| match h {
                    crate::config::HostPattern::Exact(e) => e.clone(),
                    crate::config::HostPattern::Wildcard(w) => format!("*{w}"),
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let targets = r
            .targets
            .iter()
            .map(|t| format!("{}({})", t.name, t.instances.len()))
            .collect::<Vec<_>>()
            .join(" ");
        let canary = r.canary.as_ref().map_or("none".to_string(), |c| {
            format!(
                "{} {:.2}% sticky={:?}",
                c.target,
                c.basis_points as f64 / 100.0,
                c.sticky
            )
        });
        let circuit = r.circuit.as_ref().map_or("off".to_string(), |c| {
            let compare = match c.compare {
                crate::config::Compare::Absolute => "absolute",
                crate::config::Compare::Live => "live",
            };
            let p99 = c.max_p99.map_or("off".to_string(), |d| {
                humantime::format_duration(d).to_string()
            });
            let a = &c.analysis;
            let mut analysis = String::new();
            if c.mode == crate::config::analysis::Mode::Sequential {
                let detect = match a.detect {
                    crate::config::analysis::Detect::Ratio(x) => format!("{x}x"),
                    crate::config::analysis::Detect::Points(p) => format!("+{p}pt"),
                };
                analysis.push_str(&format!(
                    " mode sequential detect {detect} false_trip {} power {}",
                    a.false_trip, a.power
                ));
            }
            if let Some(r) = a.max_latency_ratio {
                analysis.push_str(&format!(" latency {r}x p{}", a.latency_quantile * 100.0));
            }
            format!(
                "window {} min {} max {:.1}% compare {compare} max_p99 {p99} bake {}{analysis}",
                humantime::format_duration(c.window),
                c.min_requests,
                c.max_error_rate * 100.0,
                humantime::format_duration(c.bake)
            )
        });
        out.push_str(&format!(
            "  {}  host {}  prefix {}  live {}  canary {}  targets {}  circuit {}\n",
            r.name, hosts, r.path_prefix, r.live, canary, targets, circuit
        ));
        for rule in &r.rules {
            let matches = match &rule.matcher {
                crate::config::RuleMatch::Header { name, values } => {
                    format!("header {name} in [{}]", values.join(", "))
                }
                crate::config::RuleMatch::Cookie { name, values } => {
                    format!("cookie {name} in [{}]", values.join(", "))
                }
                crate::config::RuleMatch::Source(nets) => {
                    let nets: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
                    format!("source in [{}]", nets.join(", "))
                }
            };
            out.push_str(&format!(
                "    rule {}: {matches} -> {}\n",
                rule.name, rule.target
            ));
        }
        if let Some(s) = &r.shadow {
            let methods: Vec<&str> = s.methods.iter().map(|m| m.as_str()).collect();
            out.push_str(&format!(
                "    shadow {} {:.2}% of {} {} (timeout {}, max_in_flight {}): copies carry x-flipgate-shadow: 1, the bot must skip side effects\n",
                s.target,
                f64::from(s.basis_points) / 100.0,
                match s.max_body_bytes {
                    0 => "bodyless".to_string(),
                    n => format!("bodies up to {n} bytes,"),
                },
                methods.join(","),
                humantime::format_duration(s.timeout),
                s.max_in_flight
            ));
        }
    }
    out
}
