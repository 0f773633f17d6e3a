//! A bounded log of recent control-plane events (flips, rollbacks, trips, reloads) for the status
//! page and the API.
//!
//! Invariants: holds at most `CAPACITY` events, oldest dropped first; written only by the control
//! plane (never by the data path), read by the admin API.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

const CAPACITY: usize = 100;

/// One thing that happened to the routing.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unix seconds.
    pub at: u64,
    /// Unix milliseconds (the same instant, for the charts' time axis).
    pub at_ms: u64,
    /// `flip`, `promote`, `canary`, `rollback`, `trip`, `reset`, `reload`, `reload_rejected`,
    /// `route_removed`, `state_restored`, `state_dropped`; about the state file: `persist_failed`,
    /// `persisted` (again, after failures), `state_corrupt`, `takeover` (this process became its
    /// writer), `adopt` (a follower took in what the owner wrote).
    pub kind: &'static str,
    /// The route, when the event concerns one.
    pub route: Option<String>,
    pub message: String,
}

/// Recent events, newest last.
#[derive(Default)]
pub struct Events {
    inner: Mutex<VecDeque<Event>>,
}

impl Events {
    /// Appends an event and logs it; control-plane events are always logged, a failed state write
    /// as an error, those that need an operator's eye (a rejected file, a trip, a route gone from
    /// the file with what it held) as warnings.
    pub fn push(&self, kind: &'static str, route: Option<&str>, message: String) {
        if kind == "persist_failed" {
            tracing::error!(event = kind, route = route.unwrap_or(""), "{message}");
        } else if matches!(
            kind,
            "reload_rejected" | "trip" | "route_removed" | "state_dropped"
        ) {
            tracing::warn!(event = kind, route = route.unwrap_or(""), "{message}");
        } else {
            tracing::info!(event = kind, route = route.unwrap_or(""), "{message}");
        }
        let mut q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == CAPACITY {
            q.pop_front();
        }
        let at_ms = crate::control::unix_ms();
        q.push_back(Event {
            at: at_ms / 1000,
            at_ms,
            kind,
            route: route.map(str::to_string),
            message,
        });
    }

    /// A copy of the recent events, newest last.
    pub fn recent(&self) -> Vec<Event> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}
