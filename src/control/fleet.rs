//! The shared state store's side of the control plane (`[state] backend = "etcd"`,
//! `state::shared`): changes written by compare-and-swap, keys taken in from the store's thread,
//! routes whose stored state another file split made.
//!
//! Invariants: as the parent module's (one writer under the control lock, every change published
//! whole). A change is computed under the lock and written to the store *without* it, on the key
//! revision it was computed from, and applied only once the store took it. A key is served only
//! while it was made against this process's file split and names only its targets (`follow`);
//! otherwise the file's split serves and the route is listed as behind. A circuit trip of this
//! process not yet written (`trips_pending`) outranks the key it was judged on.

use std::collections::HashMap;
use std::sync::Arc;

use super::{
    describe, persisted_routes, state_fits, unix_ms, Applied, Control, ControlError, Inner,
};
use crate::config::Route;
use crate::control::drain;
use crate::control::state::shared::{self, Cas, StoreStatus};
use crate::control::state::{FileSplit, Persisted, RouteState, Routes};

impl Control {
    /// Connects the shared state store (once, at start, before serving).
    pub fn set_shared(&self, backend: Arc<dyn shared::Backend>) {
        let _ = self.shared.set(backend);
        self.metrics.state_backend_up.set(0);
    }

    /// The shared state store's health, when there is one.
    pub fn store_status(&self) -> Option<StoreStatus> {
        self.shared.get().map(|b| {
            let mut s = b.status();
            s.routes_behind = (**self.behind.load()).clone();
            s
        })
    }

    /// The state in force, each route with the split it was made against (to seed an empty
    /// shared store).
    pub fn persisted_now(&self) -> Routes {
        let mut routes = persisted_routes(&self.lock());
        for p in routes.values_mut() {
            p.trip_pending_at = None;
        }
        routes
    }

    /// Takes in a route's key as the shared store has it now (revision `rev`; `None`: absent):
    /// served if it was made against this replica's file split, else kept until the file catches
    /// up. Older revisions than one already seen are ignored. Called by the store's thread.
    pub fn take_in(&self, route: &str, rev: i64, value: Option<Persisted>) {
        let mut inner = self.lock();
        if inner.remote.get(route).is_some_and(|(r, _)| *r >= rev) {
            return;
        }
        let resolved = saw(&mut inner, route, rev, value);
        self.behind.store(Arc::new(behind(&inner)));
        if resolved {
            self.record(&mut inner);
        }
        if follow(&mut inner, route) {
            self.events.push(
                "adopt",
                Some(route),
                format!(
                    "followed the fleet's shared state: {}",
                    describe(&inner.states[route])
                ),
            );
            self.publish(&mut inner);
            self.record(&mut inner);
        }
    }

    /// Each route's key revision in the shared store as last seen (what a trip is conditioned on).
    pub fn revisions(&self) -> HashMap<String, i64> {
        let inner = self.lock();
        inner
            .remote
            .iter()
            .map(|(n, (rev, _))| (n.clone(), *rev))
            .collect()
    }

    /// Circuit trips not yet written to the shared store (restored from the state file at start):
    /// route, the key revision each was judged on, and the state to write.
    pub fn trips_pending(&self) -> Vec<(String, i64, Persisted)> {
        let inner = self.lock();
        let routes = persisted_routes(&inner);
        inner
            .trips_pending
            .iter()
            .filter_map(|(name, at)| {
                let mut p = routes.get(name)?.clone();
                p.trip_pending_at = None;
                Some((name.clone(), *at, p))
            })
            .collect()
    }

    /// Routes whose stored state was made against another split of the route file.
    pub fn routes_behind(&self) -> Vec<String> {
        (**self.behind.load()).clone()
    }

    /// `change` with a shared store: the new state is computed under the control lock, written to
    /// the store with a compare-and-swap on the revision it was computed from (without the lock),
    /// and in force only once the store took it. A lost race takes in the winner's state and is
    /// a `Conflict`; an unreachable store a `StoreDown`; either way nothing is applied.
    pub(super) fn change_shared(
        &self,
        store: &dyn shared::Backend,
        route: &str,
        f: impl FnOnce(&Route, &mut RouteState, u64) -> Result<(&'static str, String), ControlError>,
    ) -> Result<Applied, ControlError> {
        // Known to be away: refused before anything is computed (or counted).
        let health = store.status();
        if !health.up && self.config().route(route).is_some() {
            return Err(ControlError::StoreDown(
                health.error.unwrap_or_else(|| "unreachable".into()),
            ));
        }
        let (rev, value, kind, message) = {
            let inner = self.lock();
            let (config, mut s) = self.editable(&inner, route)?;
            let r = config.route(route).expect("editable checked the route");
            let (kind, message) = f(r, &mut s, unix_ms())?;
            let split = inner
                .splits
                .get(route)
                .cloned()
                .unwrap_or_else(|| FileSplit::of(r));
            let rev = inner.remote.get(route).map_or(0, |(rev, _)| *rev);
            (rev, Persisted::new(r, split, s), kind, message)
        };
        match store.cas(route, rev, &value) {
            Cas::Accepted(new_rev) => {
                let mut inner = self.lock();
                saw(&mut inner, route, new_rev, Some(value));
                // Served like any key taken in (the watch may have done it already, or brought
                // a newer one): only while it fits the split of the file in force, which a
                // reload may have changed meanwhile.
                self.behind.store(Arc::new(behind(&inner)));
                let generation = if follow(&mut inner, route) {
                    self.publish(&mut inner)
                } else {
                    inner.generation
                };
                let version = self.record(&mut inner);
                self.events.push(kind, Some(route), message);
                Ok(Applied {
                    generation,
                    version,
                })
            }
            Cas::Conflict(now_rev, now) => {
                self.take_in(route, now_rev, now.map(|p| *p));
                Err(ControlError::Raced(format!(
                    "route `{route}` was changed through another replica meanwhile; this replica now serves that change: check it and retry"
                )))
            }
            Cas::Down(why) => Err(ControlError::StoreDown(why)),
        }
    }
}

/// Records a route's key at revision `rev` (`value`: `None` when absent) unless a newer one was
/// seen; a pending trip judged on an older revision is resolved by it (written, or overtaken by a
/// newer decision). Returns whether a pending trip was resolved.
pub(super) fn saw(inner: &mut Inner, route: &str, rev: i64, value: Option<Persisted>) -> bool {
    if inner.remote.get(route).is_none_or(|(r, _)| *r < rev) {
        inner.remote.insert(route.to_string(), (rev, value));
    }
    let resolved = inner.trips_pending.get(route).is_some_and(|at| *at < rev);
    if resolved {
        inner.trips_pending.remove(route);
    }
    resolved
}

/// Routes whose shared state was made against another split than this replica's file has.
pub(super) fn behind(inner: &Inner) -> Vec<String> {
    let mut v: Vec<String> = inner
        .remote
        .iter()
        .filter(|(name, (_, p))| {
            let Some(r) = inner.config.route(name) else {
                return false;
            };
            p.as_ref().is_some_and(|p| !p.made_against(r))
        })
        .map(|(n, _)| n.clone())
        .collect();
    v.sort();
    v
}

/// Serves route `name`'s state from the shared store's key if it was made against the route's
/// split in this replica's file (and names only its targets); returns whether the state changed.
pub(super) fn follow(inner: &mut Inner, name: &str) -> bool {
    let Some(route) = inner.config.route(name) else {
        return false;
    };
    let Some((rev, Some(p))) = inner.remote.get(name) else {
        return false;
    };
    // A trip of this replica not yet written, judged on this very key: it is the newer decision.
    if inner.trips_pending.get(name).is_some_and(|at| at >= rev) {
        return false;
    }
    if !p.made_against(route) || !state_fits(route, &p.state) {
        return false;
    }
    let mut s = p.state.clone();
    drain::prune(route, &mut s);
    if inner.states.get(name) == Some(&s) {
        return false;
    }
    inner.states.insert(name.to_string(), s);
    inner.parked.remove(name);
    true
}
