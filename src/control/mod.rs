//! The one writer: file config + runtime state -> new snapshot -> one `ArcSwap::store`.
//!
//! Invariants: every change (file reload, admin call, circuit trip, a decision taken in from the
//! state file, parked state expiring) takes the control lock, edits the per-route `RouteState`,
//! publishes a complete new snapshot with a higher generation and hands the new persisted form to
//! the state writer (`state::writer`), all before the lock is released; the data path never sees a
//! half-applied change. The lock is never held across disk I/O: the writer writes on its own
//! thread, so a trip, a reload or an admin call never waits behind another's fsync, and read views
//! (admin API, status page, `/readyz`) never take the lock at all: they read the published
//! snapshot, reload status and persistence status. A change is in force from its publish; an admin
//! call is answered once the state file holds it, or says that it does not (a write failure leaves
//! the decision in force and is retried). Only the process holding the state directory's lock
//! takes admin changes; another one (a `SO_REUSEPORT` upgrade's second process) follows what the
//! owner writes, with a three-way merge per route (the file as last read is the base: what the
//! owner changed wins, what it did not keeps this process's own trips), and takes over when the
//! owner exits. Every route in the config has a state entry. A route's runtime state is kept
//! across reloads and restarts only while that route's split in the file (`FileSplit`: live,
//! canary, target names) is unchanged (newest intent wins); when the file moves `live`, the target
//! it replaced becomes `previous` and the new one bakes. `rollback` never toggles: it consumes
//! `previous`, so a retried rollback cannot undo itself. Instance drains (`drain`) are part of a
//! route's state but not of its split: a split change in the file keeps them, and they follow the
//! instances the file lists. Nothing here runs on the request path.
//!
//! Runtime state is never lost to one read of a half-written file: when a reload (or a start)
//! would drop a route's runtime state (the route left the file, or its split changed), the state
//! is *parked*: kept beside the live states, and persisted with them through the state writer,
//! with the `FileSplit` it was made against and the length and hash of the file that set it aside,
//! and an event says so (`route_removed`, a warning). If a later file *begins with* that file (the
//! writer was still writing) and has the route back with the same split (compared by value, as
//! for the live states), the state is restored (`state_restored`). A deliberate edit is never
//! undone this way: a file that does not extend the one that set the state aside drops it, as does
//! `PARKED_GRACE`, and an operator action or a circuit trip on the route (they are newer
//! decisions). Dropping for good a state set aside by a route's removal is a warning and a
//! `state_dropped` event. A follower takes in the owner's parked states with the same three-way
//! merge (per route name) as its live states.
//!
//! With a shared store (`[state] backend = "etcd"`, `state::shared`; this side of it in `fleet`):
//! a change is computed under the lock, then written by compare-and-swap on the route key's
//! revision it was computed from *without* the lock, and applied only once the store took it (a
//! lost race: the winner's state is taken in and the change refused as `Raced`, which `act`
//! re-applies; an unreachable store: `StoreDown`, nothing applied). Keys the store's thread hands in (`take_in`) are served only
//! while they were made against the route's split in this process's file (else the file's split
//! serves and the route is listed as behind). A circuit trip is applied at once and handed to the
//! store conditioned on the revision it judged. The state file stays this process's local copy.

pub mod circuit;
pub mod drain;
pub mod events;
mod fleet;
use fleet::{behind, follow, saw};
pub mod health_check;
pub mod history;
pub mod reload;
pub mod rollout;
pub mod state;
pub mod wake;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::watch;

use crate::config::{Config, ConfigErrors, Route};
use crate::control::events::Events;
use crate::control::state::lock::{self, Attempt};
use crate::control::state::shared::{self, Cas};
use crate::control::state::writer::{pid_text, Ownership, PersistStatus, Writer};
use crate::control::state::{
    FileSplit, Loaded, Parked, Persisted, RouteState, Routes, Saved, Source, Store, Trip,
};
use crate::observe::metrics::Metrics;
use crate::snapshot::Snapshot;

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
    /// The change conflicts with work in progress (a rollout already running, none to pause).
    #[error("{0}")]
    Conflict(String),
    #[error("runtime state is owned by flipgate process {}, which runs on the same state.dir; this process follows its decisions and takes changes once it has exited: send this one there, or retry then", pid_text(*.0))]
    NotOwner(Option<u32>),
    #[error("changes are refused: {0}")]
    Blocked(String),
    /// Another replica changed the route at the same moment (a lost compare-and-swap); this
    /// replica now serves that change and applied nothing.
    #[error("{0}")]
    Raced(String),
    /// The shared state store did not take the change; nothing was applied.
    #[error("the shared state store is unreachable ({0}); nothing was applied: this replica keeps serving the last state it knows, retry when the store is back")]
    StoreDown(String),
}

impl ControlError {
    /// HTTP status for the admin API.
    pub fn status(&self) -> u16 {
        match self {
            ControlError::UnknownRoute(_) => 404,
            ControlError::UnknownTarget { .. } | ControlError::Rejected(_) => 422,
            ControlError::Conflict(_) | ControlError::Raced(_) => 409,
            ControlError::NotOwner(_) | ControlError::Blocked(_) | ControlError::StoreDown(_) => {
                503
            }
        }
    }
}

/// A state file that exists but cannot be read: flipgate does not start (serving the route file's
/// split instead could undo the decisions recorded there, such as a tripped circuit).
#[derive(Debug, thiserror::Error)]
#[error("cannot read runtime state file {}: {source}; not starting, because serving the route file's split instead could undo the decisions recorded there (a tripped circuit, a rollback). Fix the file's permissions or the disk, or move the file aside to start from the route file", path.display())]
pub struct StateError {
    pub path: std::path::PathBuf,
    pub source: std::io::Error,
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

/// An applied operator action: the generation that serves it, and the state version whose write
/// makes it durable (`Control::durable`).
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    pub generation: u64,
    pub version: u64,
}

/// Whether a state version reached the state file.
#[derive(Debug, Clone, PartialEq)]
pub enum Durability {
    Persisted,
    /// The write failed (why); the writer retries in the background.
    Failed(String),
    /// Not written within the wait (a slow or hung disk); the write goes on.
    Pending,
}

/// How long `Gateway` waits for the last write at shutdown.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

struct Inner {
    config: Arc<Config>,
    states: HashMap<String, RouteState>,
    /// Each route's split in the file in force: what its state is made against.
    splits: HashMap<String, FileSplit>,
    /// Runtime state the file stopped matching, by route name (see the module doc).
    parked: BTreeMap<String, Parked>,
    generation: u64,
    /// The persisted form last handed to the writer: an unchanged state is not written again.
    submitted: Option<Arc<Saved>>,
    /// The state file as this process last read it: the base of the three-way merge while
    /// another process owns it.
    base: Saved,
    /// With a shared store: each route's key as last seen (revision, value; `None`: absent).
    remote: HashMap<String, (i64, Option<Persisted>)>,
    /// With a shared store: routes whose state holds a circuit trip not yet written to it, and the
    /// key revision it was judged on. Until the key moves past it, the key does not replace the
    /// trip here; once it does, the trip was written or a newer decision won.
    trips_pending: HashMap<String, i64>,
}

/// The control plane's single entry point.
pub struct Control {
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// The generation of the last published snapshot, for tasks that wait for a change instead
    /// of polling (the circuit task while no route has a candidate to judge).
    published: watch::Sender<u64>,
    /// Published, so reading it never waits for a change in progress.
    last_reload: ArcSwap<ReloadStatus>,
    pub metrics: Arc<Metrics>,
    pub events: Arc<Events>,
    /// The circuit task's running sequential evidence per route (`circuit::analysis`).
    pub analysis: circuit::analysis::Board,
    /// Every target's recent rate, errors and p99, for charts (`history`, its own sampling task).
    pub history: Arc<history::History>,
    writer: Writer,
    /// The shared state store, when `[state] backend` is not `file` (set once, at start).
    shared: std::sync::OnceLock<Arc<dyn shared::Backend>>,
    /// Routes whose shared state was made against another split of the file (published, so
    /// status never waits for the control lock).
    behind: ArcSwap<Vec<String>>,
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
    /// Drain (`drain: true`) or undrain one instance of a target (`drain`).
    Drain {
        target: String,
        instance: String,
        drain: bool,
    },
}

impl Control {
    /// Starts from a validated config, restoring runtime state from `config.state.dir`, and starts
    /// the state writer. Fails only when the state file exists but cannot be read.
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<Arc<Control>, StateError> {
        let store = Store::new(&config.state.dir);
        let events = Arc::new(Events::default());
        let attempt = lock::try_lock(store.dir());
        let owner = !matches!(attempt, Attempt::HeldBy(_));
        match &attempt {
            Attempt::Locked(_) => {
                let n = store.remove_stale_tmp();
                if n > 0 {
                    tracing::info!(dir = %store.dir().display(), removed = n, "removed temp files left by earlier writers");
                }
            }
            Attempt::HeldBy(pid) => tracing::warn!(
                dir = %store.dir().display(),
                owner = %pid_text(*pid),
                "runtime state is owned by another flipgate process on the same state.dir; this process serves its decisions, writes nothing and refuses changes until it exits, then takes over"
            ),
            Attempt::Failed(e) => tracing::warn!(
                dir = %store.dir().display(),
                error = %e,
                "cannot lock the state directory; every write will try again"
            ),
        }
        let (persisted, seen) = match store.read() {
            Err(source) => {
                return Err(StateError {
                    path: store.file(),
                    source,
                })
            }
            Ok(Loaded::Absent) => (Saved::default(), None),
            Ok(Loaded::Saved(saved, hash)) => (saved, Some(hash)),
            Ok(Loaded::Corrupt(why, hash)) => {
                // A file that reads but does not parse can never be used: keep a copy, start from
                // the route file. (A follower leaves the file to its owner.)
                let kept = if owner {
                    store
                        .quarantine()
                        .map_or_else(|e| format!("not kept: {e}"), |p| p.display().to_string())
                } else {
                    "left to the owning process".into()
                };
                tracing::error!(
                    path = %store.file().display(),
                    error = why,
                    kept_copy = kept,
                    "CORRUPT runtime state file ignored; serving the route file's split"
                );
                events.push(
                    "state_corrupt",
                    None,
                    format!("runtime state file {} is corrupt ({why}); serving the route file's split (copy: {kept})", store.file().display()),
                );
                (Saved::default(), Some(hash))
            }
        };
        let writer = Writer::spawn(
            store,
            attempt,
            seen,
            metrics.state_persist_failures.clone(),
            events.clone(),
        );
        let now = unix_ms();
        for route in &config.routes {
            let restored = persisted
                .routes
                .get(&route.name)
                .filter(|p| p.made_against(route) && state_fits(route, &p.state));
            if let Some(p) = restored {
                let s = &p.state;
                tracing::info!(route = %route.name, live = %s.live, tripped = s.tripped.is_some(), "restored runtime state");
            }
        }
        let (states, splits, parked) = reconcile(
            &config,
            &persisted.routes,
            persisted.parked.clone(),
            now,
            &metrics,
            &events,
        );
        // Trips a shared store has not taken yet, for the routes whose state was restored.
        let trips_pending: HashMap<String, i64> = persisted
            .routes
            .iter()
            .filter(|(name, p)| states.get(*name) == Some(&p.state))
            .filter_map(|(name, p)| Some((name.clone(), p.trip_pending_at?)))
            .collect();
        let control = Arc::new(Control {
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::empty())),
            published: watch::Sender::new(0),
            last_reload: ArcSwap::from_pointee(ReloadStatus {
                result: "success",
                error: None,
                at: crate::clock::unix_secs(),
            }),
            metrics,
            events,
            analysis: Default::default(),
            history: Arc::new(history::History::new(history::interval_from_env())),
            writer,
            shared: std::sync::OnceLock::new(),
            behind: ArcSwap::from_pointee(Vec::new()),
            inner: Mutex::new(Inner {
                config: Arc::new(config),
                states,
                splits,
                parked,
                generation: 0,
                submitted: None,
                base: persisted,
                remote: HashMap::new(),
                trips_pending,
            }),
        });
        let weak = Arc::downgrade(&control);
        control
            .writer
            .set_adopter(Box::new(move |disk, takeover| match weak.upgrade() {
                Some(c) => {
                    c.adopt(disk, takeover);
                    true
                }
                None => false,
            }));
        {
            let mut inner = control.lock();
            control.publish(&mut inner);
            control.record(&mut inner);
        }
        control.metrics.config_last_reload_success.set(1);
        Ok(control)
    }

    /// The handle the data path loads from.
    pub fn snapshots(&self) -> Arc<ArcSwap<Snapshot>> {
        self.snapshot.clone()
    }

    /// Changes whenever a new snapshot is published (its generation).
    pub fn published(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// The config in force (from the published snapshot: never waits for a change in progress).
    pub fn config(&self) -> Arc<Config> {
        self.snapshot.load().config.clone()
    }

    /// The last reload attempt.
    pub fn last_reload(&self) -> ReloadStatus {
        (**self.last_reload.load()).clone()
    }

    /// Where persistence of the runtime state stands.
    pub fn persist_status(&self) -> PersistStatus {
        self.writer.status()
    }

    /// Waits (at most `within`) until state `version` is in the state file, or its write failed.
    pub async fn durable(&self, version: u64, within: Duration) -> Durability {
        let mut rx = self.writer.subscribe();
        let outcome = tokio::time::timeout(
            within,
            rx.wait_for(|s| s.durable >= version || s.failed >= version || s.stopped),
        )
        .await;
        match outcome {
            Ok(Ok(s)) if s.durable >= version => Durability::Persisted,
            Ok(Ok(s)) => Durability::Failed(
                s.error
                    .clone()
                    .unwrap_or_else(|| "the state writer has stopped".into()),
            ),
            Ok(Err(_)) => Durability::Failed("the state writer has stopped".into()),
            Err(_) => Durability::Pending,
        }
    }

    /// Waits (at most `within`) for the outcome of the first write after start, so a process that
    /// says it is serving has its state on disk or knows it has not. A follower writes nothing.
    pub async fn settle(&self, within: Duration) -> Durability {
        if !self.writer.writes() {
            return Durability::Persisted;
        }
        let latest = self.writer.status().latest;
        self.durable(latest, within).await
    }

    /// Stops the state writer after it has written what is pending, releasing the state
    /// directory's lock (waits at most a few seconds for a slow disk).
    pub async fn close(&self) {
        if let Some(store) = self.shared.get() {
            store.stop();
        }
        self.writer.stop();
        let mut rx = self.writer.subscribe();
        let _ = tokio::time::timeout(CLOSE_WAIT, rx.wait_for(|s| s.stopped)).await;
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
                self.last_reload.store(Arc::new(ReloadStatus {
                    result: "failure",
                    error: Some(text.clone()),
                    at: crate::clock::unix_secs(),
                }));
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
            // A reload that reads the config in force (SIGHUP, an identical rewrite) succeeded:
            // counted as such, as the gauge says.
            self.metrics
                .config_reloads
                .with_label_values(&["success"])
                .inc();
            if self.last_reload.load().result != "success" {
                // The file is back to the config in force: the failure is over.
                self.last_reload.store(Arc::new(ReloadStatus {
                    result: "success",
                    error: None,
                    at: crate::clock::unix_secs(),
                }));
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
        let current = persisted_routes(&inner);
        let (states, splits, parked) = reconcile(
            &new,
            &current,
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
            for r in &old_route.rules {
                let kept = new
                    .route(&old_route.name)
                    .is_some_and(|n| n.rules.iter().any(|x| x.name == r.name));
                if !kept {
                    self.metrics.forget_rule(&old_route.name, &r.name);
                }
            }
        }
        inner.config = Arc::new(new);
        inner.states = states;
        inner.splits = splits;
        inner.parked = parked;
        // A route whose file split now matches the shared store's state follows the store.
        let names: Vec<String> = inner.remote.keys().cloned().collect();
        for name in names {
            follow(&mut inner, &name);
        }
        self.behind.store(Arc::new(behind(&inner)));
        self.last_reload.store(Arc::new(ReloadStatus {
            result: "success",
            error: None,
            at: crate::clock::unix_secs(),
        }));
        let generation = self.publish(&mut inner);
        // An edit that leaves every route's split alone (a new route prefix, a timeout) changes
        // nothing persisted, and `record` writes nothing.
        self.record(&mut inner);
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

    /// Applies an operator action to a route: published before this returns, so the very next
    /// request follows it, and handed to the state writer; `Control::durable` with the returned
    /// version says when it is on disk. Refused (nothing changes) while another process owns the
    /// state, or while the state file left by one cannot be read. A split change (flip, canary,
    /// promote, rollback) stops a running rollout of the route (`rollout::interrupted`).
    pub fn act(&self, route: &str, action: Action) -> Result<Applied, ControlError> {
        self.act_checked(route, action, false)
    }

    /// `act`, and with `require_healthy` a flip or promote is first refused (409, nothing
    /// changes) unless the target about to take the traffic is judged healthy on its window
    /// (`circuit::analysis::verdict`), with the verdict's reason.
    pub fn act_checked(
        &self,
        route: &str,
        action: Action,
        require_healthy: bool,
    ) -> Result<Applied, ControlError> {
        // With a shared store, a replica that lost a race re-applies the action to the state the
        // winner wrote (it has taken it in), a few times at most.
        let mut tries = 0;
        loop {
            tries += 1;
            let result = self.change_counted(route, |r, s, now, tally| {
                if require_healthy {
                    let to = match &action {
                        Action::Flip { target: Some(t) } => Some(t.clone()),
                        Action::Flip { target: None } => default_other(r, s, "").ok(),
                        Action::Promote => s.canary_target.clone().filter(|_| s.canary_bp > 0),
                        _ => None,
                    };
                    if let Some(to) = to.filter(|t| *t != s.live) {
                        self.require_healthy(&r.name, &to)?;
                    }
                }
                let (kind, message) = apply(r, s, &action, now, tally)?;
                if rollout::interrupted(s, kind, now) {
                    tally.rollout_ended(rollout::Phase::Aborted);
                }
                Ok((kind, message))
            });
            match result {
                Err(ControlError::Raced(_)) if tries < CAS_TRIES => {}
                other => return other,
            }
        }
    }

    /// Refuses (409, with the verdict) unless `target` of `route` is judged healthy now.
    pub(crate) fn require_healthy(&self, route: &str, target: &str) -> Result<(), ControlError> {
        let snap = self.snapshots().load();
        // An unknown target is the action's own error (422) to report.
        let Some(entry) = snap
            .route(route)
            .filter(|e| e.targets.iter().any(|t| *t.name == *target))
        else {
            return Ok(());
        };
        let v = circuit::analysis::verdict(entry, target, crate::clock::now_ms());
        if v.healthy() {
            Ok(())
        } else {
            Err(ControlError::Conflict(format!(
                "refused (--require-healthy): `{target}`: {}",
                v.message()
            )))
        }
    }

    /// `change`, with `f` telling what metrics count in a `Tally`, counted once the change is in
    /// force (never for a refused one).
    pub(crate) fn change_counted(
        &self,
        route: &str,
        f: impl FnOnce(
            &Route,
            &mut RouteState,
            u64,
            &mut Tally,
        ) -> Result<(&'static str, String), ControlError>,
    ) -> Result<Applied, ControlError> {
        let mut tally = Tally::default();
        let applied = self.change(route, |r, s, now| f(r, s, now, &mut tally))?;
        tally.count(&self.metrics, route);
        Ok(applied)
    }

    /// Changes one route's state with `f` (route, its state, now in unix ms), which says what it
    /// did (event kind and message) or refuses (then nothing changes). Like `act`: published,
    /// handed to the state writer, refused while another process owns the state.
    pub(crate) fn change(
        &self,
        route: &str,
        f: impl FnOnce(&Route, &mut RouteState, u64) -> Result<(&'static str, String), ControlError>,
    ) -> Result<Applied, ControlError> {
        match self.shared.get() {
            Some(store) => self.change_shared(store.as_ref(), route, f),
            None => self.change_local(route, f),
        }
    }

    /// The file in force and `route`'s state as an operator's change starts from, if this process
    /// may change it: the route exists and this process owns the runtime state.
    fn editable(
        &self,
        inner: &Inner,
        route: &str,
    ) -> Result<(Arc<Config>, RouteState), ControlError> {
        let config = inner.config.clone();
        let r = config
            .route(route)
            .ok_or_else(|| ControlError::UnknownRoute(route.into()))?;
        match self.writer.status().ownership {
            Ownership::Owner => {}
            Ownership::Follower { pid } => return Err(ControlError::NotOwner(pid)),
            Ownership::Blocked { reason } => return Err(ControlError::Blocked(reason)),
        }
        let s = inner
            .states
            .get(route)
            .cloned()
            .unwrap_or_else(|| RouteState::from_file(r));
        Ok((config, s))
    }

    fn change_local(
        &self,
        route: &str,
        f: impl FnOnce(&Route, &mut RouteState, u64) -> Result<(&'static str, String), ControlError>,
    ) -> Result<Applied, ControlError> {
        let mut inner = self.lock();
        let (config, mut s) = self.editable(&inner, route)?;
        let r = config.route(route).expect("editable checked the route");
        let now = unix_ms();
        let (kind, message) = f(r, &mut s, now)?;
        inner.states.insert(route.to_string(), s);
        // The operator decided on the state in force: a parked, older one must not come back.
        inner.parked.remove(route);
        let generation = self.publish(&mut inner);
        let version = self.record(&mut inner);
        self.events.push(kind, Some(route), message);
        Ok(Applied {
            generation,
            version,
        })
    }

    /// Rolls a route back on behalf of its circuit. `seen` is the route state the verdict was
    /// reached on: if anything changed since (an operator acted, a reload), the verdict is stale and
    /// dropped; the next evaluation judges the new state. Returns whether it tripped. Never waits
    /// for the disk: the trip is published, then handed to the state writer. A process that does
    /// not own the state trips too (its traffic must move), but only in memory.
    pub fn trip(
        &self,
        route: &str,
        seen: &RouteState,
        candidate: &str,
        trip: Trip,
        kind: &str,
        now_unix_ms: u64,
    ) -> bool {
        let mut inner = self.lock();
        let Some(r) = inner.config.route(route).cloned() else {
            return false;
        };
        let current = inner
            .states
            .get(route)
            .cloned()
            .unwrap_or_else(|| RouteState::from_file(&r));
        if current != *seen
            || current_candidate(&current, now_unix_ms).as_deref() != Some(candidate)
            || current.tripped.is_some()
        {
            return false;
        }
        let mut s = current.clone();
        let live_moved = if s.canary_bp > 0 && s.canary_target.as_deref() == Some(candidate) {
            s.canary_bp = 0;
            s.canary_source = Source::Circuit;
            false
        } else if let Some(prev) = s.previous.take() {
            s.live = prev;
            s.live_source = Source::Circuit;
            s.bake_until_unix_ms = None;
            true
        } else {
            return false;
        };
        let message = format!(
            "circuit tripped on `{candidate}`: {}; rolled back, live is now `{}`",
            trip.reason, s.live
        );
        let rollout_ended = rollout::end_on_trip(&mut s, &trip.reason, now_unix_ms);
        s.tripped = Some(trip);
        if let Some(store) = self.shared.get() {
            let rev = inner.remote.get(route).map_or(0, |(rev, _)| *rev);
            let split = inner
                .splits
                .get(route)
                .cloned()
                .unwrap_or_else(|| FileSplit::of(&r));
            let value = Persisted::new(&r, split, s.clone());
            if store.status().up {
                // Fleet-wide first: a compare-and-swap on the revision the verdict was reached
                // on, so of all the replicas judging the same sums exactly one rolls back, and a
                // verdict on a state an operator changed since is dropped.
                drop(inner);
                match store.cas(route, rev, &value) {
                    Cas::Accepted(new_rev) => {
                        // Counted before it is published, as for a trip in force at once.
                        self.count_trip(route, kind, live_moved, rollout_ended);
                        inner = self.lock();
                        saw(&mut inner, route, new_rev, Some(value));
                        if follow(&mut inner, route) {
                            self.publish(&mut inner);
                            self.record(&mut inner);
                        }
                        drop(inner);
                        self.events.push("trip", Some(route), message);
                        return true;
                    }
                    Cas::Conflict(now_rev, now) => {
                        // Another replica's trip, or a newer decision: that state serves here.
                        self.take_in(route, now_rev, now.map(|p| *p));
                        return false;
                    }
                    // Unreachable after all: trip here, write it when the store is back.
                    Cas::Down(_) => {
                        inner = self.lock();
                        if inner.states.get(route) != Some(&current) {
                            return false;
                        }
                        store.trip(route, rev, value);
                        inner.trips_pending.insert(route.to_string(), rev);
                    }
                }
            } else {
                // The store is away: in force here at once (it only moves traffic to the safe
                // side), written when the store is back unless the route's key moved meanwhile.
                store.trip(route, rev, value);
                inner.trips_pending.insert(route.to_string(), rev);
            }
        }
        self.count_trip(route, kind, live_moved, rollout_ended);
        inner.states.insert(route.to_string(), s);
        // A newer decision than any parked state of the route: it must not come back.
        inner.parked.remove(route);
        self.publish(&mut inner);
        self.record(&mut inner);
        drop(inner);
        self.events.push("trip", Some(route), message);
        true
    }

    /// The metrics of a trip in force: a rollback by the circuit, a flip if it moved the live
    /// target, a rollout ended as rolled back.
    fn count_trip(&self, route: &str, kind: &str, live_moved: bool, rollout_ended: bool) {
        if live_moved {
            self.metrics.flips.with_label_values(&[route]).inc();
        }
        self.metrics
            .rollbacks
            .with_label_values(&[route, kind])
            .inc();
        if rollout_ended {
            rollout::count_rolled_back(&self.metrics, route);
        }
    }

    /// Takes in what the state file's owner wrote (`disk`, when read) with a three-way merge per
    /// route (its state, and its parked state), and at `takeover` makes this process the owner,
    /// handing the writer the state in force. Called by the writer thread.
    fn adopt(&self, disk: Option<Saved>, takeover: bool) {
        let mut inner = self.lock();
        let mut changed = false;
        if let Some(disk) = disk {
            let config = inner.config.clone();
            let now = unix_ms();
            for route in &config.routes {
                let theirs = disk.routes.get(&route.name);
                // Unchanged in the file since this process last read it: the owner decided
                // nothing new there, so this process's own decisions (trips) stand.
                if theirs == inner.base.routes.get(&route.name) {
                    continue;
                }
                let old = theirs.map(|p| (&p.state, p.made_against(route)));
                let s = merge(route, old, now, &self.metrics, &self.events);
                if inner.states.get(&route.name) != Some(&s) {
                    self.events.push(
                        "adopt",
                        Some(&route.name),
                        format!(
                            "followed the state file's owner: live `{}`, canary {}",
                            s.live,
                            match (&s.canary_target, s.canary_bp) {
                                (Some(t), bp) if bp > 0 =>
                                    format!("`{t}` at {:.2}%", bp as f64 / 100.0),
                                _ => "off".into(),
                            }
                        ),
                    );
                    inner.states.insert(route.name.clone(), s);
                    changed = true;
                }
            }
            // Parked state likewise: what the owner set aside, restored or dropped since this
            // process last read the file wins; where it did nothing new, this process's own
            // stands. (Parked state serves no traffic: nothing to publish.)
            let names: BTreeSet<String> = disk
                .parked
                .keys()
                .chain(inner.base.parked.keys())
                .cloned()
                .collect();
            for name in names {
                let theirs = disk.parked.get(&name);
                if theirs == inner.base.parked.get(&name) {
                    continue;
                }
                match theirs {
                    Some(p) => inner.parked.insert(name, p.clone()),
                    None => inner.parked.remove(&name),
                };
            }
            inner.base = disk;
        }
        if takeover {
            self.writer.became_owner();
            // Written now even if unchanged: until now this process wrote nothing.
            inner.submitted = None;
        }
        if changed {
            self.publish(&mut inner);
        }
        self.record(&mut inner);
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
            self.metrics
                .rollout_step
                .with_label_values(&[&route.name])
                .set(rollout::current_percent(&route.state));
        }
        self.metrics.config_generation.set(inner.generation as i64);
        self.snapshot.store(Arc::new(snap));
        self.published.send_replace(inner.generation);
        inner.generation
    }

    /// Hands the persisted form of the state in force to the writer unless it is unchanged;
    /// returns the version that makes it durable.
    fn record(&self, inner: &mut Inner) -> u64 {
        let saved = Saved {
            routes: persisted_routes(inner),
            parked: inner.parked.clone(),
        };
        // A follower whose state is exactly what the owner wrote has nothing unpersisted.
        let on_disk = !self.writer.writes() && saved == inner.base;
        // Unchanged since it was handed over: nothing to do, unless a follower now finds it in
        // the owner's file (both set the same state aside, the owner's write read after this
        // process's own change): handed over again, as on disk.
        let found_on_disk = on_disk && !self.writer.status().persisted();
        if inner.submitted.as_deref() == Some(&saved) && !found_on_disk {
            return self.writer.status().latest;
        }
        let saved = Arc::new(saved);
        inner.submitted = Some(saved.clone());
        self.writer.submit(saved, on_disk)
    }

    /// Drops parked runtime state older than `PARKED_GRACE` (a warning and a `state_dropped` event
    /// for each state a route's removal set aside) and hands the rest to the state writer (nothing
    /// here waits for the disk). The reload watcher calls it on every poll, so nothing stays parked
    /// long past its grace when the file never changes again. Returns how many were dropped.
    pub fn expire_parked(&self, now_unix_ms: u64) -> usize {
        let mut inner = self.lock();
        let config = inner.config.clone();
        let dropped = expire(&mut inner.parked, &config, now_unix_ms, &self.events);
        if dropped > 0 {
            self.record(&mut inner);
        }
        dropped
    }
}

/// How many times `act` re-applies an action after losing a compare-and-swap race.
const CAS_TRIES: u32 = 3;

/// The persisted form of the route states in force: each with the split it was made against.
fn persisted_routes(inner: &Inner) -> Routes {
    inner
        .states
        .iter()
        .filter_map(|(name, state)| {
            let route = inner.config.route(name)?;
            let split = inner.splits.get(name)?.clone();
            let mut p = Persisted::new(route, split, state.clone());
            p.trip_pending_at = inner.trips_pending.get(name).copied();
            Some((name.clone(), p))
        })
        .collect()
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
pub(crate) fn state_fits(route: &Route, s: &RouteState) -> bool {
    let ok = |t: &str| route.target_index(t).is_some();
    ok(&s.live)
        && s.canary_target.as_deref().is_none_or(ok)
        && s.previous.as_deref().is_none_or(ok)
        && s.canary_bp <= 10_000
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

/// Route states, the splits they are made against and parked states, after reading `config`.
pub(crate) type Reconciled = (
    HashMap<String, RouteState>,
    HashMap<String, FileSplit>,
    BTreeMap<String, Parked>,
);

/// The runtime state that follows from reading `config` over the state in force (`current`: each
/// route's state with the split it was made against, as persisted) and the parked states.
/// Unchanged routes (same `FileSplit`) keep their state. A route whose parked state was set aside
/// by a file that `config`'s file begins with (it was written in steps, and the earlier steps were
/// applied) and that is back with the same split gets that state back. Every other route follows
/// the file (`merge`), and runtime state the file no longer matches is parked, not dropped. A
/// parked state whose file was not completed but replaced, or whose grace has passed, is dropped.
pub(crate) fn reconcile(
    config: &Config,
    current: &Routes,
    mut parked: BTreeMap<String, Parked>,
    now_unix_ms: u64,
    metrics: &Metrics,
    events: &Events,
) -> Reconciled {
    expire(&mut parked, config, now_unix_ms, events);
    let grace = humantime::format_duration(PARKED_GRACE);
    let park = |p: &Persisted, route_removed: bool| {
        Parked::of(
            p,
            now_unix_ms,
            config.text.len(),
            config.content_hash,
            route_removed,
        )
    };
    let mut new_states = HashMap::new();
    let mut new_splits = HashMap::new();
    for route in &config.routes {
        let name = route.name.as_str();
        new_splits.insert(name.to_string(), FileSplit::of(route));
        let cur = current.get(name);
        if let Some(c) = cur {
            if c.made_against(route) && state_fits(route, &c.state) {
                let mut s = c.state.clone();
                drain::prune(route, &mut s);
                new_states.insert(name.to_string(), s);
                continue;
            }
        }
        let comes_back = parked
            .get(name)
            .is_some_and(|p| p.made_against(route) && state_fits(route, &p.state));
        let s = if comes_back {
            let p = parked.remove(name).expect("checked above");
            if cur.is_some_and(|c| c.state.live != p.state.live) {
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
            let old = cur
                .map(|c| (&c.state, c.made_against(route)))
                .or_else(|| parked.get(name).map(|p| (&p.state, p.made_against(route))));
            merge(route, old, now_unix_ms, metrics, events)
        };
        // The state in force no longer matches the file: newest intent wins, but if this file
        // turns out to be only the beginning of the next one, the state comes back. A state
        // already parked for the route came from an earlier step of the same writing (`expire`
        // dropped any other): it is the one to keep.
        if let Some(c) = cur.filter(|c| has_runtime_state(&c.state)) {
            if !comes_back {
                tracing::info!(route = %name, "runtime state ({}) set aside for {grace} in case the route file was only half-written", describe(&c.state));
            }
            parked
                .entry(name.to_string())
                .or_insert_with(|| park(c, false));
        }
        let mut s = s;
        drain::prune(route, &mut s);
        new_states.insert(name.to_string(), s);
    }
    // `current` is sorted by name, so the events are too.
    for (name, c) in current.iter().filter(|(n, _)| config.route(n).is_none()) {
        let message = if has_runtime_state(&c.state) {
            parked.entry(name.clone()).or_insert_with(|| park(c, true));
            format!(
                "route `{name}` removed from the route file; its runtime state ({}) is kept for {grace} in case the file was only half-written and the route returns (write the file by rename)",
                describe(&c.state)
            )
        } else {
            format!("route `{name}` removed from the route file (it had no runtime state)")
        };
        events.push("route_removed", Some(name), message);
    }
    (new_states, new_splits, parked)
}

/// Drops parked states that can no longer come back: their grace has passed, or `config`'s file
/// does not begin with the file that set them aside (it was replaced, not completed). A state set
/// aside because its route left the file is lost for good here: a warning and a `state_dropped`
/// event (the `route_removed` event said it was kept). Returns how many were dropped.
fn expire(
    parked: &mut BTreeMap<String, Parked>,
    config: &Config,
    now_unix_ms: u64,
    events: &Events,
) -> usize {
    let grace = humantime::format_duration(PARKED_GRACE);
    let dropped: Vec<(String, &'static str)> = parked
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
        let mut s = old.clone();
        drain::prune(route, &mut s);
        return s;
    }
    let name = route.name.as_str();
    let mut s = RouteState::from_file(route);
    drain::carry(route, old, &mut s);
    s.rollout = rollout::after_file_change(name, old.rollout.as_ref(), now_unix_ms, metrics);
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

/// What a change did that metrics count, counted by `change_counted` only once the change is in
/// force: a change refused (a shared store's lost race, retried; a stale rollout step) counts
/// nothing, and a retried one is counted once.
#[derive(Default)]
pub(crate) struct Tally {
    flips: u64,
    /// `rollbacks_total` reasons, one entry per rollback.
    rollbacks: Vec<&'static str>,
    /// How a rollout the change ended ended (`rollouts_total`).
    rollout_ended: Option<rollout::Phase>,
}

impl Tally {
    pub(crate) fn flip(&mut self) {
        self.flips += 1;
    }

    pub(crate) fn rollback(&mut self, reason: &'static str) {
        self.rollbacks.push(reason);
    }

    pub(crate) fn rollout_ended(&mut self, phase: rollout::Phase) {
        self.rollout_ended = Some(phase);
    }

    fn count(&self, metrics: &Metrics, route: &str) {
        if self.flips > 0 {
            metrics.flips.with_label_values(&[route]).inc_by(self.flips);
        }
        for reason in &self.rollbacks {
            metrics.rollbacks.with_label_values(&[route, reason]).inc();
        }
        if let Some(phase) = self.rollout_ended {
            rollout::count(metrics, route, phase);
        }
    }
}

fn apply(
    route: &Route,
    s: &mut RouteState,
    action: &Action,
    now_unix_ms: u64,
    tally: &mut Tally,
) -> Result<(&'static str, String), ControlError> {
    let name = route.name.as_str();
    match action {
        Action::Drain {
            target,
            instance,
            drain: d,
        } => drain::apply(route, s, target, instance, *d),
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
            tally.flip();
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
            tally.flip();
            Ok(("promote", format!("promoted canary: live {from} -> {t}")))
        }
        Action::Rollback => {
            if s.canary_bp > 0 {
                s.canary_bp = 0;
                s.canary_source = Source::Admin;
                tally.rollback("admin");
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
            tally.rollback("admin");
            tally.flip();
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
    if old.state.etcd != new.state.etcd {
        v.push("state.backend/state.etcd");
    }
    v
}
