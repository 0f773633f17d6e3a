//! JSON views of the routing in force, shared by the admin API, the CLI and the status page.
//!
//! Invariants: built from one snapshot load, so a view is consistent with itself; every value says
//! where it came from (file, admin, circuit), and whether it is in the state file (`persisted`).
//! Building a view never waits for the control plane or the disk.

use serde::{Deserialize, Serialize};

use crate::control::circuit::window::Totals;
use crate::control::state::writer::{Ownership, PersistStatus};
use crate::control::state::{Source, Trip};
use crate::control::{current_candidate, unix_ms, ReloadStatus};
use crate::snapshot::{RouteEntry, Snapshot};

/// `GET /api/v1/routes`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RoutesView {
    pub generation: u64,
    pub config: ConfigView,
    /// Persistence of the runtime state (absent from servers that predate it).
    #[serde(default)]
    pub state: Option<StateView>,
    pub routes: Vec<RouteView>,
}

/// Whether the runtime state in force is in the state file, and which process writes it.
#[derive(Debug, Serialize, Deserialize)]
pub struct StateView {
    /// Every decision in force is in the state file (it would survive a restart).
    pub persisted: bool,
    /// `owner`: this process writes the state file. `follower`: another process (`owner_pid`)
    /// holds the state directory's lock; this one follows its decisions and refuses changes.
    /// `blocked`: this process took over but cannot read the state file; changes are refused.
    pub role: String,
    /// The process that writes the state file, when known.
    pub owner_pid: Option<u32>,
    /// Why the state is not persisted, or why changes are refused.
    pub error: Option<String>,
    /// The shared state store (`[state] backend = "etcd"`) and its health; absent with the file
    /// backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<crate::control::state::shared::StoreStatus>,
}

impl StateView {
    pub fn new(s: &PersistStatus) -> StateView {
        let (role, owner_pid) = match &s.ownership {
            Ownership::Owner => ("owner", Some(std::process::id())),
            Ownership::Follower { pid } => ("follower", *pid),
            Ownership::Blocked { .. } => ("blocked", Some(std::process::id())),
        };
        StateView {
            persisted: s.persisted(),
            role: role.into(),
            owner_pid,
            error: s.error.clone(),
            store: None,
        }
    }
}

/// The route file in force and the last reload attempt.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConfigView {
    pub path: String,
    pub last_reload: ReloadView,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReloadView {
    pub result: String,
    pub error: Option<String>,
    pub at: u64,
}

/// One route.
#[derive(Debug, Serialize, Deserialize)]
pub struct RouteView {
    pub name: String,
    pub generation: u64,
    pub hosts: Vec<String>,
    pub path_prefix: String,
    pub live: String,
    pub live_source: Source,
    pub previous: Option<String>,
    pub canary: Option<CanaryView>,
    /// Share of new requests per target, in percent.
    pub split: Vec<Share>,
    pub targets: Vec<TargetView>,
    pub circuit: CircuitView,
    /// Cohort rules in file order (tried after preview, before the split), with what each matched.
    #[serde(default)]
    pub rules: Vec<RuleView>,
    /// This route's state is in the state file (false while any decision in force is not).
    #[serde(default = "yes")]
    pub persisted: bool,
    /// The route's rollout: in progress, or how the last one ended (`admin::rollout`).
    #[serde(default)]
    pub rollout: Option<crate::admin::rollout::RolloutView>,
    /// What a rollout of this route uses where the call names nothing (`[routes.rollout]`).
    #[serde(default)]
    pub rollout_defaults: Option<crate::admin::rollout::DefaultsView>,
    /// The circuit's running evidence (`admin::analysis`); filled by the admin handler.
    #[serde(default)]
    pub analysis: Option<crate::admin::analysis::AnalysisView>,
    /// Shadow traffic (`[routes.shadow]`), when the route has it.
    #[serde(default)]
    pub shadow: Option<ShadowView>,
}

/// A route's shadow traffic: what the file says and whether copies go out now.
#[derive(Debug, Serialize, Deserialize)]
pub struct ShadowView {
    pub target: String,
    pub percent: f64,
    pub methods: Vec<String>,
    pub timeout_ms: u64,
    pub max_in_flight: u64,
    /// Copies out now.
    pub in_flight: u64,
    /// False while the shadow target is live (shadowing paused).
    pub active: bool,
}

impl ShadowView {
    fn of(cfg: &crate::config::Route, r: &RouteEntry) -> Option<ShadowView> {
        let s = cfg.shadow.as_ref()?;
        let compiled = r.shadow.as_deref();
        Some(ShadowView {
            target: s.target.clone(),
            percent: f64::from(s.basis_points) / 100.0,
            methods: s.methods.iter().map(|m| m.to_string()).collect(),
            timeout_ms: s.timeout.as_millis() as u64,
            max_in_flight: s.max_in_flight,
            in_flight: compiled.map_or(0, |c| {
                c.in_flight.load(std::sync::atomic::Ordering::Relaxed)
            }),
            active: compiled.is_some(),
        })
    }
}

fn yes() -> bool {
    true
}

/// One cohort rule and the requests it sent to its target.
#[derive(Debug, Serialize, Deserialize)]
pub struct RuleView {
    pub name: String,
    pub target: String,
    /// `header`, `cookie` or `source`.
    pub kind: String,
    /// The header or cookie name; none for a source rule.
    pub field: Option<String>,
    /// The exact values (header, cookie) or the CIDRs (source) that match.
    pub values: Vec<String>,
    /// Requests this rule matched since the process started (`flipgate_rule_requests_total`).
    pub matched: u64,
}

impl RuleView {
    fn all(cfg: &crate::config::Route, r: &RouteEntry) -> Vec<RuleView> {
        use crate::config::RuleMatch;
        cfg.rules
            .iter()
            .zip(r.rules.list.iter())
            .map(|(c, compiled)| {
                let (field, values) = match &c.matcher {
                    RuleMatch::Header { name, values } => (Some(name.to_string()), values.clone()),
                    RuleMatch::Cookie { name, values } => (Some(name.clone()), values.clone()),
                    RuleMatch::Source(nets) => (None, nets.iter().map(|n| n.to_string()).collect()),
                };
                RuleView {
                    name: c.name.clone(),
                    target: c.target.clone(),
                    kind: c.matcher.kind().into(),
                    field,
                    values,
                    matched: compiled.requests.get(),
                }
            })
            .collect()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CanaryView {
    pub target: String,
    pub percent: f64,
    pub sticky: String,
    pub source: Source,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Share {
    pub target: String,
    pub percent: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TargetView {
    pub name: String,
    pub instances: Vec<String>,
    /// Per instance (same order): `up`, `ejected` (passive outlier ejection) or `down` (failing
    /// active health checks).
    #[serde(default)]
    pub instance_health: Vec<String>,
    /// Per instance (same order): state (`up`, `ejected`, `down`, `draining`, `drained`),
    /// requests and tunnels in flight, and weight (`admin::instances`).
    #[serde(default)]
    pub instance_status: Vec<crate::admin::instances::InstanceView>,
    /// How requests are spread over the instances: `p2c` or `round_robin`.
    #[serde(default)]
    pub lb: String,
    /// Outcomes in the circuit's current window.
    pub window: WindowView,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WindowView {
    pub seconds: f64,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CircuitView {
    /// `off` (no circuit configured), `idle` (nothing to watch), `watching`, `tripped`.
    pub state: String,
    pub candidate: Option<String>,
    pub tripped: Option<Trip>,
    pub window_seconds: Option<f64>,
    pub min_requests: Option<u64>,
    pub max_error_rate: Option<f64>,
    pub bake_until_unix_ms: Option<u64>,
}

impl RoutesView {
    pub fn new(snap: &Snapshot, last: &ReloadStatus, state: &PersistStatus) -> RoutesView {
        RoutesView {
            generation: snap.generation,
            config: ConfigView {
                path: snap.config.path.display().to_string(),
                last_reload: ReloadView {
                    result: last.result.to_string(),
                    error: last.error.clone(),
                    at: last.at,
                },
            },
            state: Some(StateView::new(state)),
            routes: snap
                .routes
                .iter()
                .map(|r| RouteView::new(snap, r, state.persisted()))
                .collect(),
        }
    }
}

impl RouteView {
    pub fn new(snap: &Snapshot, r: &RouteEntry, persisted: bool) -> RouteView {
        let cfg = snap
            .config
            .route(&r.name)
            .expect("snapshot routes come from its config");
        let s = &r.state;
        let now_ms = crate::clock::now_ms();
        let canary = s
            .canary_target
            .as_ref()
            // A canary stopped at runtime (rollback, circuit) stays visible at 0 % with who
            // stopped it; a promoted one (now live) does not.
            .filter(|t| s.canary_bp > 0 || (s.canary_source != Source::File && **t != s.live))
            .map(|t| CanaryView {
                target: t.clone(),
                percent: s.canary_bp as f64 / 100.0,
                sticky: match cfg.canary.as_ref().map(|c| &c.sticky) {
                    Some(crate::config::Sticky::Header(h)) => format!("header:{h}"),
                    Some(crate::config::Sticky::Cookie(c)) => format!("cookie:{c}"),
                    _ => "none".into(),
                },
                source: s.canary_source,
            });
        let split = r
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let bp = r.split.basis_points as f64 / 100.0;
                let percent = if r.split.basis_points > 0 && i == r.split.canary {
                    bp
                } else if i == r.split.live {
                    100.0 - if r.split.basis_points > 0 { bp } else { 0.0 }
                } else {
                    0.0
                };
                Share {
                    target: t.name.to_string(),
                    percent,
                }
            })
            .collect();
        let targets = r
            .targets
            .iter()
            .map(|t| {
                let tot: Totals = t.window.totals(now_ms);
                TargetView {
                    name: t.name.to_string(),
                    instances: t.upstream.instances.iter().map(|a| a.to_string()).collect(),
                    instance_health: t
                        .upstream
                        .health
                        .iter()
                        .map(|h| {
                            if !h.checks_pass() {
                                "down"
                            } else if h.ejected(now_ms) {
                                "ejected"
                            } else {
                                "up"
                            }
                            .to_string()
                        })
                        .collect(),
                    instance_status: crate::admin::instances::views(&t.upstream, now_ms),
                    lb: t.upstream.lb.as_str().into(),
                    window: WindowView {
                        seconds: t.window.length().as_secs_f64(),
                        requests: tot.requests,
                        errors: tot.errors,
                        error_rate: tot.error_rate(),
                    },
                }
            })
            .collect();
        let candidate = current_candidate(s, unix_ms());
        let circuit = match &r.circuit {
            None => CircuitView {
                state: "off".into(),
                candidate: None,
                tripped: None,
                window_seconds: None,
                min_requests: None,
                max_error_rate: None,
                bake_until_unix_ms: None,
            },
            Some(c) => CircuitView {
                state: if s.tripped.is_some() {
                    "tripped"
                } else if candidate.is_some() {
                    "watching"
                } else {
                    "idle"
                }
                .into(),
                candidate,
                tripped: s.tripped.clone(),
                window_seconds: Some(c.window.as_secs_f64()),
                min_requests: Some(c.min_requests),
                max_error_rate: Some(c.max_error_rate),
                bake_until_unix_ms: s.bake_until_unix_ms,
            },
        };
        RouteView {
            name: r.name.to_string(),
            generation: snap.generation,
            hosts: cfg
                .hosts
                .iter()
                .map(|h| match h {
                    crate::config::HostPattern::Exact(e) => e.clone(),
                    crate::config::HostPattern::Wildcard(w) => format!("*{w}"),
                })
                .collect(),
            path_prefix: cfg.path_prefix.clone(),
            live: s.live.clone(),
            live_source: s.live_source,
            previous: s.previous.clone(),
            canary,
            split,
            targets,
            circuit,
            rules: RuleView::all(cfg, r),
            persisted,
            rollout: crate::admin::rollout::RolloutView::of(r),
            rollout_defaults: Some(crate::admin::rollout::DefaultsView::of(&cfg.rollout)),
            analysis: None,
            shadow: ShadowView::of(cfg, r),
        }
    }
}
