//! The one writer: file config + runtime state -> new snapshot -> one `ArcSwap::store`.
//!
//! Invariants: every change (file reload, admin call, circuit trip) takes the same lock, edits the
//! per-route `RouteState`, persists it (temp file + fsync + rename) and publishes a complete new
//! snapshot with a higher generation, all before the lock is released; the data path never sees a
//! half-applied change. Reloads and admin calls persist first, so whatever the API has shown is
//! durable; a circuit trip publishes first, because moving traffic off a failing target must not
//! wait for an fsync. Every route in the config has a
//! state entry. A route's runtime state is kept across reloads and restarts only while that route's
//! split in the file (`FileSplit`: live, canary, target names) is unchanged (newest intent wins); when the file moves `live`, the
//! target it replaced becomes `previous` and the new one bakes. `rollback` never toggles: it
//! consumes `previous`, so a retried rollback cannot undo itself. Nothing here runs on the request
//! path; persistence does blocking I/O, so async callers use `spawn_blocking`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::{Config, ConfigErrors, Route};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::state::{FileSplit, Persisted, RouteState, Source, Store, Trip};

/// Why a control call was refused; maps to an HTTP status in the admin API.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("unknown route `{0}`")]
    UnknownRoute(String),
    #[error("route `{route}` has no target `{target}`; its targets are: {known}")]
    UnknownTarget {
        route: String,
        target: String,
        known: String,
    },
    #[error("{0}")]
    Rejected(String),
    #[error("applied, but the runtime state could not be persisted (it will not survive a restart): {0}")]
    Persist(std::io::Error),
}

impl ControlError {
    /// HTTP status for the admin API.
    pub fn status(&self) -> u16 {
        match self {
            ControlError::UnknownRoute(_) => 404,
            ControlError::UnknownTarget { .. } | ControlError::Rejected(_) => 422,
            ControlError::Persist(_) => 500,
        }
    }
}

/// What a reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// Same bytes as the config in force.
    Unchanged,
    /// Published as `generation`; `restart_needed` lists settings that only take effect on restart.
    Applied {
        generation: u64,
        restart_needed: Vec<&'static str>,
    },
    /// Rejected; the previous config keeps serving.
    Rejected(ConfigErrors),
}

/// The last reload attempt, for status.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    pub result: &'static str,
    pub error: Option<String>,
    /// Unix seconds.
    pub at: u64,
}

struct Inner {
    config: Arc<Config>,
    states: HashMap<String, RouteState>,
    /// Each route's split in the file in force: what its state is made against.
    splits: HashMap<String, FileSplit>,
    generation: u64,
    store: Store,
    last_reload: ReloadStatus,
}

/// The control plane's single entry point.
pub struct Control {
    snapshot: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub events: Events,
    inner: Mutex<Inner>,
}

/// An operator action.
#[derive(Debug, Clone)]
pub enum Action {
    Flip {
        target: Option<String>,
    },
    Canary {
        percent: f64,
        target: Option<String>,
    },
    Promote,
    Rollback,
    Reset,
}

impl Control {
    /// Starts from a validated config, restoring runtime state from `config.state.dir`.
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Arc<Control> {
        let store = Store::new(&config.state.dir);
        let persisted = store.load();
        let events = Events::default();
        let now = unix_ms();
        let mut states = HashMap::new();
        let mut splits = HashMap::new();
        for route in &config.routes {
            let old = persisted
                .get(&route.name)
                .map(|p| (&p.state, p.made_against(route)));
            if let Some((s, true)) = old {
                if state_fits(route, s) {
                    tracing::info!(route = %route.name, live = %s.live, tripped = s.tripped.is_some(), "restored runtime state");
                }
            }
            let s = merge(route, old, now, &metrics, &events);
            states.insert(route.name.clone(), s);
            splits.insert(route.name.clone(), FileSplit::of(route));
        }
        for name in persisted.keys().filter(|n| config.route(n).is_none()) {
            tracing::info!(route = %name, "dropping runtime state of a route that is no longer in the file");
        }
        let control = Arc::new(Control {
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::empty())),
            metrics,
            events,
            inner: Mutex::new(Inner {
                config: Arc::new(config),
                states,
                splits,
                generation: 0,
                store,
                last_reload: ReloadStatus {
                    result: "success",
                    error: None,
                    at: crate::clock::unix_secs(),
                },
            }),
        });
        {
            let mut inner = control.lock();
            if let Err(e) = control.persist(&inner) {
                tracing::error!(error = %e, "cannot write runtime state; changes will not survive a restart");
            }
            control.publish(&mut inner);
        }
        control.metrics.config_last_reload_success.set(1);
        control
    }

    /// The handle the data path loads from.
    pub fn snapshots(&self) -> Arc<ArcSwap<Snapshot>> {
        self.snapshot.clone()
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.lock().config.clone()
    }

    /// The last reload attempt.
    pub fn last_reload(&self) -> ReloadStatus {
        self.lock().last_reload.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a freshly read route file (or its errors).
    pub fn reload(&self, loaded: Result<Config, ConfigErrors>) -> ReloadOutcome {
        let mut inner = self.lock();
        let new = match loaded {
            Ok(c) => c,
            Err(errors) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["failure"])
                    .inc();
                self.metrics.config_last_reload_success.set(0);
                let text = errors.to_string();
                inner.last_reload = ReloadStatus {
                    result: "failure",
                    error: Some(text.clone()),
                    at: crate::clock::unix_secs(),
                };
                self.events.push(
                    "reload_rejected",
                    None,
                    format!("route file rejected, previous config keeps serving: {text}"),
                );
                return ReloadOutcome::Rejected(errors);
            }
        };
        if new.content_hash == inner.config.content_hash && new.path == inner.config.path {
            if inner.last_reload.result != "success" {
                // The file is back to the config in force: the failure is over.
                inner.last_reload = ReloadStatus {
                    result: "success",
                    error: None,
                    at: crate::clock::unix_secs(),
                };
                self.metrics.config_last_reload_success.set(1);
            }
            return ReloadOutcome::Unchanged;
        }
        let restart_needed = restart_needed(&inner.config, &new);
        for what in &restart_needed {
            tracing::warn!(
                setting = what,
                "changed in the route file but only takes effect after a restart"
            );
        }
        let now = unix_ms();
        let mut states = HashMap::new();
        let mut splits = HashMap::new();
        for route in &new.routes {
            let split = FileSplit::of(route);
            let old = inner.states.get(&route.name).map(|s| {
                let same = inner.splits.get(&route.name) == Some(&split);
                (s, same)
            });
            let s = merge(route, old, now, &self.metrics, &self.events);
            states.insert(route.name.clone(), s);
            splits.insert(route.name.clone(), split);
        }
        for gone in inner.states.keys().filter(|n| new.route(n).is_none()) {
            tracing::info!(route = %gone, "route removed from the file; its runtime state is dropped");
        }
        for old_route in &inner.config.routes {
            for t in &old_route.targets {
                let kept = new
                    .route(&old_route.name)
                    .is_some_and(|r| r.target_index(&t.name).is_some());
                if !kept {
                    self.metrics.forget_target(&old_route.name, &t.name);
                }
            }
        }
        // An edit that leaves every route's split alone (a new route prefix, a timeout) needs no
        // fsync: the persisted state would be byte-for-byte the same.
        let unchanged = states == inner.states && splits == inner.splits;
        inner.config = Arc::new(new);
        inner.states = states;
        inner.splits = splits;
        inner.last_reload = ReloadStatus {
            result: "success",
            error: None,
            at: crate::clock::unix_secs(),
        };
        if !unchanged {
            if let Err(e) = self.persist(&inner) {
                tracing::error!(error = %e, "cannot write runtime state; changes will not survive a restart");
            }
        }
        let generation = self.publish(&mut inner);
        self.metrics
            .config_reloads
            .with_label_values(&["success"])
            .inc();
        self.metrics.config_last_reload_success.set(1);
        self.events.push(
            "reload",
            None,
            format!("route file applied as generation {generation}"),
        );
        ReloadOutcome::Applied {
            generation,
            restart_needed,
        }
    }

    /// Applies an operator action to a route; returns the new generation. The change is persisted
    /// and published before this returns, so the very next request follows it. A persistence
    /// failure still applies the change (the route must follow the operator) but is reported.
    pub fn act(&self, route: &str, action: Action) -> Result<u64, ControlError> {
        let mut inner = self.lock();
        let config = inner.config.clone();
        let r = config
            .route(route)
            .ok_or_else(|| ControlError::UnknownRoute(route.into()))?;
        let mut s = inner
            .states
            .get(route)
            .cloned()
            .unwrap_or_else(|| RouteState::from_file(r));
        let now = unix_ms();
        // A target this gives a new role (live, running canary) gets a fresh window when the
        // snapshot is built; raising a canary's percent keeps its window.
        let (kind, message) = apply(r, &mut s, &action, now, &self.metrics)?;
        inner.states.insert(route.to_string(), s);
        let persisted = self.persist(&inner);
        let generation = self.publish(&mut inner);
        self.events.push(kind, Some(route), message);
        persisted.map_err(ControlError::Persist)?;
        Ok(generation)
    }

    /// Rolls a route back on behalf of its circuit. `seen` is the route state the verdict was
    /// reached on: if anything changed since (an operator acted, a reload), the verdict is stale and
    /// dropped; the next evaluation judges the new state. Returns whether it tripped.
    pub fn trip(
        &self,
        route: &str,
        seen: &RouteState,
        candidate: &str,
        trip: Trip,
        now_unix_ms: u64,
    ) -> bool {
        let mut inner = self.lock();
        let Some(r) = inner.config.route(route).cloned() else {
            return false;
        };
        let mut s = inner
            .states
            .get(route)
            .cloned()
            .unwrap_or_else(|| RouteState::from_file(&r));
        if s != *seen
            || current_candidate(&s, now_unix_ms).as_deref() != Some(candidate)
            || s.tripped.is_some()
        {
            return false;
        }
        if s.canary_bp > 0 && s.canary_target.as_deref() == Some(candidate) {
            s.canary_bp = 0;
            s.canary_source = Source::Circuit;
        } else if let Some(prev) = s.previous.take() {
            s.live = prev;
            s.live_source = Source::Circuit;
            s.bake_until_unix_ms = None;
            self.metrics.flips.with_label_values(&[route]).inc();
        } else {
            return false;
        }
        self.metrics
            .rollbacks
            .with_label_values(&[route, "circuit"])
            .inc();
        let message = format!(
            "circuit tripped on `{candidate}`: {}; rolled back, live is now `{}`",
            trip.reason, s.live
        );
        s.tripped = Some(trip);
        inner.states.insert(route.to_string(), s);
        // Traffic first: a rollback must not wait for an fsync. (Crashing in between loses only the
        // record of the trip; the candidate then restarts with an empty window and trips again.)
        self.publish(&mut inner);
        if let Err(e) = self.persist(&inner) {
            tracing::error!(error = %e, "cannot persist the circuit's rollback; it will not survive a restart");
        }
        self.events.push("trip", Some(route), message);
        true
    }

    fn publish(&self, inner: &mut Inner) -> u64 {
        inner.generation += 1;
        let old = self.snapshot.load_full();
        let snap = Snapshot::build(
            inner.generation,
            inner.config.clone(),
            &inner.states,
            &old,
            &self.metrics,
        );
        for route in &snap.routes {
            let s = &route.split;
            let canary_share = if s.basis_points > 0 {
                s.basis_points as f64 / 100.0
            } else {
                0.0
            };
            for (i, t) in route.targets.iter().enumerate() {
                let share = if i == s.canary && s.basis_points > 0 {
                    canary_share
                } else if i == s.live {
                    100.0 - canary_share
                } else {
                    0.0
                };
                self.metrics
                    .split_percent
                    .with_label_values(&[&route.name, &t.name])
                    .set(share);
                self.metrics
                    .live_target
                    .with_label_values(&[&route.name, &t.name])
                    .set((i == s.live) as i64);
            }
            self.metrics
                .circuit_tripped
                .with_label_values(&[&route.name])
                .set(route.state.tripped.is_some() as i64);
        }
        self.metrics.config_generation.set(inner.generation as i64);
        self.snapshot.store(Arc::new(snap));
        inner.generation
    }

    fn persist(&self, inner: &Inner) -> std::io::Result<()> {
        let routes = inner
            .states
            .iter()
            .filter_map(|(name, state)| {
                let route = inner.config.route(name)?;
                let split = inner.splits.get(name)?.clone();
                Some((name.clone(), Persisted::new(route, split, state.clone())))
            })
            .collect();
        inner.store.save(&routes)
    }
}

/// Milliseconds since the Unix epoch (bake deadlines survive restarts, so they are wall-clock).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The target the circuit watches now: the canary while its percent is above 0, else the live
/// target while it bakes after a flip or promote.
pub fn current_candidate(s: &RouteState, now_unix_ms: u64) -> Option<String> {
    if s.canary_bp > 0 {
        return s.canary_target.clone();
    }
    match s.bake_until_unix_ms {
        Some(until) if now_unix_ms < until => Some(s.live.clone()),
        _ => None,
    }
}

/// Checks that a state only names targets of `route`.
fn state_fits(route: &Route, s: &RouteState) -> bool {
    let ok = |t: &str| route.target_index(t).is_some();
    ok(&s.live) && s.canary_target.as_deref().is_none_or(ok) && s.previous.as_deref().is_none_or(ok)
}

fn target_of(route: &Route, name: &str) -> Result<String, ControlError> {
    if route.target_index(name).is_some() {
        Ok(name.to_string())
    } else {
        Err(ControlError::UnknownTarget {
            route: route.name.clone(),
            target: name.to_string(),
            known: route
                .targets
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// The only target other than live, if there is exactly one.
fn only_other(route: &Route, live: &str) -> Option<String> {
    let mut others = route.targets.iter().filter(|t| t.name != live);
    match (others.next(), others.next()) {
        (Some(t), None) => Some(t.name.clone()),
        _ => None,
    }
}

/// The state of `route` after its file section is (re)read: `old` (with whether it was made
/// against the split the file has now) is kept while the split is unchanged; otherwise the file
/// wins, and if that moved `live`, the replaced target becomes `previous` and the new live target
/// bakes.
fn merge(
    route: &Route,
    old: Option<(&RouteState, bool)>,
    now_unix_ms: u64,
    metrics: &Metrics,
    events: &Events,
) -> RouteState {
    let Some((old, same_split)) = old else {
        return RouteState::from_file(route);
    };
    if same_split && state_fits(route, old) {
        return old.clone();
    }
    let name = route.name.as_str();
    let mut s = RouteState::from_file(route);
    if old.live_source != Source::File || old.canary_source != Source::File || old.tripped.is_some()
    {
        tracing::info!(route = %name, live = %old.live, tripped = old.tripped.is_some(), "route's split changed in the file; runtime overrides dropped (newest intent wins)");
    }
    if old.live != s.live && route.target_index(&old.live).is_some() {
        s.previous = Some(old.live.clone());
        s.bake_until_unix_ms = bake_until(route, now_unix_ms);
        metrics.flips.with_label_values(&[name]).inc();
        if old.previous.as_deref() == Some(s.live.as_str()) {
            metrics.rollbacks.with_label_values(&[name, "file"]).inc();
        }
        events.push(
            "flip",
            Some(name),
            format!("route file flipped live {} -> {}", old.live, s.live),
        );
    } else if old.live == s.live {
        s.previous = old
            .previous
            .clone()
            .filter(|p| *p != s.live && route.target_index(p).is_some());
        s.bake_until_unix_ms = old.bake_until_unix_ms.filter(|_| s.previous.is_some());
    }
    if old.canary_bp > 0 && s.canary_bp == 0 && old.live == s.live {
        metrics.rollbacks.with_label_values(&[name, "file"]).inc();
    }
    s
}

fn bake_until(route: &Route, now_unix_ms: u64) -> Option<u64> {
    route
        .circuit
        .as_ref()
        .map(|c| now_unix_ms + c.bake.as_millis() as u64)
}

/// The target an action means when none is named: the canary target, else the only other one.
fn default_other(route: &Route, s: &RouteState, hint: &str) -> Result<String, ControlError> {
    s.canary_target
        .clone()
        .filter(|c| *c != s.live)
        .or_else(|| only_other(route, &s.live))
        .ok_or_else(|| {
            ControlError::Rejected(format!(
                "route `{}` has no canary and more than one other target; {hint}",
                route.name
            ))
        })
}

fn apply(
    route: &Route,
    s: &mut RouteState,
    action: &Action,
    now_unix_ms: u64,
    metrics: &Metrics,
) -> Result<(&'static str, String), ControlError> {
    let name = route.name.as_str();
    match action {
        Action::Flip { target } => {
            let to = match target {
                Some(t) => target_of(route, t)?,
                None => default_other(route, s, "name the target to flip to")?,
            };
            let had_canary = s.canary_bp > 0;
            s.tripped = None;
            s.canary_bp = 0;
            s.canary_source = Source::Admin;
            if to == s.live {
                let note = if had_canary { "; canary stopped" } else { "" };
                return Ok(("flip", format!("`{to}` is already live{note}")));
            }
            let from = std::mem::replace(&mut s.live, to.clone());
            s.previous = Some(from.clone());
            s.live_source = Source::Admin;
            s.bake_until_unix_ms = bake_until(route, now_unix_ms);
            metrics.flips.with_label_values(&[name]).inc();
            Ok(("flip", format!("flipped live {from} -> {to}")))
        }
        Action::Canary { percent, target } => {
            let bp = crate::config::percent_to_bp(*percent).ok_or_else(|| {
                ControlError::Rejected(format!("percent must be between 0 and 100, got {percent}"))
            })?;
            let t = match target {
                Some(t) => target_of(route, t)?,
                None => default_other(route, s, "name the canary target")?,
            };
            if t == s.live {
                return Err(ControlError::Rejected(format!(
                    "`{t}` is the live target; a canary must be another target"
                )));
            }
            s.canary_target = Some(t.clone());
            s.canary_bp = bp;
            s.canary_source = Source::Admin;
            s.tripped = None;
            Ok((
                "canary",
                format!("canary `{t}` at {:.2}%", bp as f64 / 100.0),
            ))
        }
        Action::Promote => {
            if let Some(trip) = &s.tripped {
                return Err(ControlError::Rejected(format!(
                    "route `{name}` is tripped ({}); not promoting `{}`; start a new canary or flip explicitly",
                    trip.reason, trip.target
                )));
            }
            let t = s
                .canary_target
                .clone()
                .filter(|c| *c != s.live && s.canary_bp > 0)
                .ok_or_else(|| {
                    ControlError::Rejected(format!(
                        "route `{name}` has no running canary to promote"
                    ))
                })?;
            let from = std::mem::replace(&mut s.live, t.clone());
            s.previous = Some(from.clone());
            s.live_source = Source::Admin;
            s.canary_bp = 0;
            s.canary_source = Source::Admin;
            s.bake_until_unix_ms = bake_until(route, now_unix_ms);
            metrics.flips.with_label_values(&[name]).inc();
            Ok(("promote", format!("promoted canary: live {from} -> {t}")))
        }
        Action::Rollback => {
            if s.canary_bp > 0 {
                s.canary_bp = 0;
                s.canary_source = Source::Admin;
                metrics.rollbacks.with_label_values(&[name, "admin"]).inc();
                return Ok((
                    "rollback",
                    format!("canary rolled back to 0%; all traffic to `{}`", s.live),
                ));
            }
            if let Some(trip) = &s.tripped {
                // The circuit already rolled back; a deploy script's `|| rollback` must not undo more.
                return Ok((
                    "rollback",
                    format!(
                        "already rolled back by the circuit ({}); live is `{}`",
                        trip.reason, s.live
                    ),
                ));
            }
            let prev = s.previous.take().ok_or_else(|| {
                ControlError::Rejected(format!(
                    "route `{name}` has nothing to roll back to: no running canary and no previous live target"
                ))
            })?;
            let from = std::mem::replace(&mut s.live, prev.clone());
            s.live_source = Source::Admin;
            s.bake_until_unix_ms = None;
            metrics.rollbacks.with_label_values(&[name, "admin"]).inc();
            metrics.flips.with_label_values(&[name]).inc();
            Ok(("rollback", format!("rolled back live {from} -> {prev}")))
        }
        Action::Reset => {
            let was = s.tripped.take();
            Ok((
                "reset",
                match was {
                    Some(t) => format!("circuit reset (was tripped: {})", t.reason),
                    None => "circuit reset (was not tripped)".to_string(),
                },
            ))
        }
    }
}

fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    if old.server.listen != new.server.listen {
        v.push("server.listen");
    }
    if old.server.workers != new.server.workers {
        v.push("server.workers");
    }
    if old.server.tls.as_ref().map(|t| t.listen) != new.server.tls.as_ref().map(|t| t.listen) {
        v.push("server.tls.listen");
    }
    if old.admin.listen != new.admin.listen {
        v.push("admin.listen");
    }
    if old.admin.token_env != new.admin.token_env || old.admin.token_file != new.admin.token_file {
        v.push("admin.token_env/admin.token_file");
    }
    if old.state.dir != new.state.dir {
        v.push("state.dir");
    }
    v
}
