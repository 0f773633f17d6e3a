//! The one writer: file config + runtime state -> new snapshot -> one `ArcSwap::store`.
//!
//! Invariants: every change (file reload, admin call, circuit trip) takes the same lock, edits the
//! per-route `RouteState`, persists it (temp file + fsync + rename) and publishes a complete new
//! snapshot with a higher generation, all before the lock is released; the data path never sees a
//! half-applied change. Reloads and admin calls persist first, so whatever the API has shown is
//! durable; a circuit trip publishes first, because moving traffic off a failing target must not
//! wait for an fsync. Every route in the config has a
//! state entry. A route's runtime state is kept across reloads and restarts only while that route's
//! split section in the file is unchanged (newest intent wins); when the file moves `live`, the
//! target it replaced becomes `previous` and the new one bakes. `rollback` never toggles: it
//! consumes `previous`, so a retried rollback cannot undo itself. Nothing here runs on the request
//! path; persistence does blocking I/O, so async callers use `spawn_blocking`.
//!
//! Runtime state is never lost to one read of a half-written file: when a reload (or a start)
//! would drop a route's runtime state (the route left the file, or its split section changed), the
//! state is *parked*, persisted beside the live states with the split fingerprint it was made
//! against and the length and hash of the file that set it aside, and an event says so
//! (`route_removed`, a warning). If a later file *begins with* that file (the writer was still
//! writing) and has the route back with the same split section, the state is restored
//! (`state_restored`). A deliberate edit is never undone this way: a file that does not extend the
//! one that set the state aside drops it, as does `PARKED_GRACE`, and an operator action or a
//! circuit trip on the route (they are newer decisions). Dropping for good a state set aside by a
//! route's removal is a warning and a `state_dropped` event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::{Config, ConfigErrors, Route};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::state::{Parked, Persisted, RouteState, Saved, Source, Store, Trip};

/// How long runtime state set aside by a reload is kept for its route to come back: long enough for
/// any writer that pauses mid-file and for an operator to undo a mistaken edit, short enough that a
/// route removed on purpose does not come back with a stale flip much later.
pub const PARKED_GRACE: Duration = Duration::from_secs(10 * 60);

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
    /// Fingerprint of each route's split section, as of the config in force.
    fingerprints: HashMap<String, u64>,
    /// Runtime state the file stopped matching, by route name (see the module doc).
    parked: HashMap<String, Parked>,
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
        let saved = store.load();
        let events = Events::default();
        let now = unix_ms();
        let (old_states, old_fps): (HashMap<_, _>, HashMap<_, _>) = saved
            .routes
            .into_iter()
            .map(|(name, p)| ((name.clone(), p.state), (name, p.fingerprint)))
            .unzip();
        for route in &config.routes {
            let restored = old_states.get(&route.name).filter(|s| {
                old_fps.get(&route.name) == Some(&route.split_fingerprint()) && state_fits(route, s)
            });
            if let Some(s) = restored {
                tracing::info!(route = %route.name, live = %s.live, tripped = s.tripped.is_some(), "restored runtime state");
            }
        }
        let (states, fingerprints, parked) = reconcile(
            &config,
            &old_states,
            &old_fps,
            saved.parked.into_iter().collect(),
            now,
            &metrics,
            &events,
        );
        let control = Arc::new(Control {
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::empty())),
            metrics,
            events,
            inner: Mutex::new(Inner {
                config: Arc::new(config),
                states,
                fingerprints,
                parked,
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
                // The event holds the first error only: events are kept (and polled by the
                // status page) long after; the whole, bounded list is in `last_reload`.
                let more = match errors.0.len() {
                    1 => String::new(),
                    n => format!(" (and {} more: see last_reload)", n - 1),
                };
                self.events.push(
                    "reload_rejected",
                    None,
                    format!(
                        "route file rejected, previous config keeps serving: {}{more}",
                        errors.first()
                    ),
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
        let (states, fingerprints, parked) = reconcile(
            &new,
            &inner.states,
            &inner.fingerprints,
            inner.parked.clone(),
            unix_ms(),
            &self.metrics,
            &self.events,
        );
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
        let unchanged =
            states == inner.states && fingerprints == inner.fingerprints && parked == inner.parked;
        inner.config = Arc::new(new);
        inner.states = states;
        inner.fingerprints = fingerprints;
        inner.parked = parked;
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
        // The candidate and whether it is judged as a canary (else: baking as live).
        let role = |s: &RouteState| current_candidate(s, now).map(|c| (c, s.canary_bp > 0));
        let before = role(&s);
        let (kind, message) = apply(r, &mut s, &action, now, &self.metrics)?;
        let after = role(&s);
        if after.is_some() && after != before {
            // A new candidate, or one in a new role (a promoted canary), is judged on its own
            // outcomes from the operator's action on; raising a canary's percent keeps its window.
            self.clear_window(route, after.as_ref().map(|(c, _)| c.as_str()));
        }
        inner.states.insert(route.to_string(), s);
        // The operator decided on the state in force: a parked, older one must not come back.
        inner.parked.remove(route);
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
        inner.parked.remove(route);
        // Traffic first: a rollback must not wait for an fsync. (Crashing in between loses only the
        // record of the trip; the candidate then restarts with an empty window and trips again.)
        self.publish(&mut inner);
        if let Err(e) = self.persist(&inner) {
            tracing::error!(error = %e, "cannot persist the circuit's rollback; it will not survive a restart");
        }
        self.events.push("trip", Some(route), message);
        true
    }

    fn clear_window(&self, route: &str, target: Option<&str>) {
        let snap = self.snapshot.load();
        if let Some(t) = snap
            .route(route)
            .and_then(|e| e.targets.iter().find(|t| Some(&*t.name) == target))
        {
            t.window.clear();
        }
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
                let fingerprint = *inner.fingerprints.get(name)?;
                Some((
                    name.clone(),
                    Persisted {
                        fingerprint,
                        state: state.clone(),
                    },
                ))
            })
            .collect();
        let parked = inner
            .parked
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        inner.store.save(&Saved { routes, parked })
    }

    /// Drops parked runtime state older than `PARKED_GRACE` (a warning and a `state_dropped` event
    /// for each state a route's removal set aside) and persists the rest. The reload watcher calls
    /// it on every poll, so nothing stays parked long past its grace when the file never changes
    /// again. Returns how many were dropped.
    pub fn expire_parked(&self, now_unix_ms: u64) -> usize {
        let mut inner = self.lock();
        let config = inner.config.clone();
        let dropped = expire(&mut inner.parked, &config, now_unix_ms, &self.events);
        if dropped > 0 {
            if let Err(e) = self.persist(&inner) {
                tracing::error!(error = %e, "cannot write runtime state; changes will not survive a restart");
            }
        }
        dropped
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

/// Route states, their split fingerprints and parked states, after reading `config`.
type Reconciled = (
    HashMap<String, RouteState>,
    HashMap<String, u64>,
    HashMap<String, Parked>,
);

/// The runtime state that follows from reading `config` over the state in force (`states` with the
/// fingerprints they were made against) and the parked states. Unchanged routes keep their state.
/// A route whose parked state was set aside by a file that `config`'s file begins with (it was
/// written in steps, and the earlier steps were applied) and that is back with the same split
/// section gets that state back. Every other route follows the file (`merge`), and runtime state
/// the file no longer matches is parked, not dropped. A parked state whose file was not completed
/// but replaced, or whose grace has passed, is dropped.
fn reconcile(
    config: &Config,
    states: &HashMap<String, RouteState>,
    fingerprints: &HashMap<String, u64>,
    mut parked: HashMap<String, Parked>,
    now_unix_ms: u64,
    metrics: &Metrics,
    events: &Events,
) -> Reconciled {
    expire(&mut parked, config, now_unix_ms, events);
    let grace = humantime::format_duration(PARKED_GRACE);
    let park = |s: &RouteState, fingerprint: u64, route_removed: bool| Parked {
        fingerprint,
        state: s.clone(),
        since_unix_ms: now_unix_ms,
        displaced_by_len: config.text.len(),
        displaced_by_hash: config.content_hash,
        route_removed,
    };
    let mut new_states = HashMap::new();
    let mut new_fps = HashMap::new();
    for route in &config.routes {
        let name = route.name.as_str();
        let fp = route.split_fingerprint();
        new_fps.insert(name.to_string(), fp);
        let cur = states.get(name).zip(fingerprints.get(name).copied());
        if let Some((s, f)) = cur {
            if f == fp && state_fits(route, s) {
                new_states.insert(name.to_string(), s.clone());
                continue;
            }
        }
        let comes_back = parked
            .get(name)
            .is_some_and(|p| p.fingerprint == fp && state_fits(route, &p.state));
        let s = if comes_back {
            let p = parked.remove(name).expect("checked above");
            if cur.is_some_and(|(s, _)| s.live != p.state.live) {
                metrics.flips.with_label_values(&[name]).inc();
            }
            events.push(
                "state_restored",
                Some(name),
                format!(
                    "route `{name}` is back in the route file as its runtime state was made against (the file was written in steps); restored: {}",
                    describe(&p.state)
                ),
            );
            p.state
        } else {
            // Back with another split, it follows the file as if it had never left.
            let old = cur.or_else(|| parked.get(name).map(|p| (&p.state, p.fingerprint)));
            merge(route, fp, old, now_unix_ms, metrics, events)
        };
        // The state in force no longer matches the file: newest intent wins, but if this file
        // turns out to be only the beginning of the next one, the state comes back. A state
        // already parked for the route came from an earlier step of the same writing (`expire`
        // dropped any other): it is the one to keep.
        if let Some((old, f)) = cur.filter(|(s, _)| has_runtime_state(s)) {
            if !comes_back {
                tracing::info!(route = %name, "runtime state ({}) set aside for {grace} in case the route file was only half-written", describe(old));
            }
            parked
                .entry(name.to_string())
                .or_insert_with(|| park(old, f, false));
        }
        new_states.insert(name.to_string(), s);
    }
    let mut gone: Vec<_> = states
        .iter()
        .filter(|(n, _)| config.route(n).is_none())
        .collect();
    gone.sort_by(|a, b| a.0.cmp(b.0));
    for (name, s) in gone {
        let message = if has_runtime_state(s) {
            let fp = fingerprints.get(name).copied().unwrap_or_default();
            parked
                .entry(name.clone())
                .or_insert_with(|| park(s, fp, true));
            format!(
                "route `{name}` removed from the route file; its runtime state ({}) is kept for {grace} in case the file was only half-written and the route returns (write the file by rename)",
                describe(s)
            )
        } else {
            format!("route `{name}` removed from the route file (it had no runtime state)")
        };
        events.push("route_removed", Some(name), message);
    }
    (new_states, new_fps, parked)
}

/// Drops parked states that can no longer come back: their grace has passed, or `config`'s file
/// does not begin with the file that set them aside (it was replaced, not completed). A state set
/// aside because its route left the file is lost for good here: a warning and a `state_dropped`
/// event (the `route_removed` event said it was kept). Returns how many were dropped.
fn expire(
    parked: &mut HashMap<String, Parked>,
    config: &Config,
    now_unix_ms: u64,
    events: &Events,
) -> usize {
    let grace = humantime::format_duration(PARKED_GRACE);
    let mut dropped: Vec<(String, &'static str)> = parked
        .iter()
        .filter_map(|(n, p)| {
            if crate::clock::add_ms(p.since_unix_ms, PARKED_GRACE) <= now_unix_ms {
                Some((n.clone(), "the route did not come back within the grace"))
            } else if !config
                .text
                .starts_with_file(p.displaced_by_len, p.displaced_by_hash)
            {
                Some((
                    n.clone(),
                    "the route file was replaced by one that does not complete the file that removed it",
                ))
            } else {
                None
            }
        })
        .collect();
    dropped.sort();
    for (name, why) in &dropped {
        let Some(p) = parked.remove(name) else {
            continue;
        };
        if p.route_removed {
            events.push(
                "state_dropped",
                Some(name),
                format!(
                    "runtime state of route `{name}` dropped: {why} ({grace}); it was: {}",
                    describe(&p.state)
                ),
            );
        } else {
            // Its split changed in the file, which was reported then; the route follows the file.
            tracing::info!(route = %name, reason = why, "set-aside runtime state dropped");
        }
    }
    dropped.len()
}

/// Whether a state says more than the route file alone: a runtime override, a trip or a `previous`
/// to roll back to. Only such a state is worth keeping when the file stops matching it.
fn has_runtime_state(s: &RouteState) -> bool {
    s.live_source != Source::File
        || s.canary_source != Source::File
        || s.tripped.is_some()
        || s.previous.is_some()
}

/// A state in a few words, for events.
fn describe(s: &RouteState) -> String {
    let source = |src: Source| match src {
        Source::File => "file",
        Source::Admin => "admin",
        Source::Circuit => "circuit",
    };
    let mut out = format!("live `{}` ({})", s.live, source(s.live_source));
    if let Some(c) = &s.canary_target {
        out.push_str(&format!(
            ", canary `{c}` {:.2}% ({})",
            s.canary_bp as f64 / 100.0,
            source(s.canary_source)
        ));
    }
    if let Some(p) = &s.previous {
        out.push_str(&format!(", previous `{p}`"));
    }
    if s.tripped.is_some() {
        out.push_str(", tripped");
    }
    out
}

/// The state of `route` after its file section is (re)read: `old` (with the fingerprint it was
/// made against) is kept while the split section is unchanged; otherwise the file wins, and if that
/// moved `live`, the replaced target becomes `previous` and the new live target bakes.
fn merge(
    route: &Route,
    fp: u64,
    old: Option<(&RouteState, u64)>,
    now_unix_ms: u64,
    metrics: &Metrics,
    events: &Events,
) -> RouteState {
    let Some((old, old_fp)) = old else {
        return RouteState::from_file(route);
    };
    if old_fp == fp && state_fits(route, old) {
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
        .map(|c| crate::clock::add_ms(now_unix_ms, c.bake))
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
    if old.admin.allowed_hosts != new.admin.allowed_hosts {
        v.push("admin.allowed_hosts");
    }
    if old.state.dir != new.state.dir {
        v.push("state.dir");
    }
    v
}
