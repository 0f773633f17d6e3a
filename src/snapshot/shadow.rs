//! A route's shadow traffic as the data path reads it: the compiled `[routes.shadow]`.
//!
//! Invariants: a `RouteEntry` holds a `Shadow` only while its shadow target is not the route's
//! live target: a flip (admin, circuit, rollout) that makes it live pauses shadowing, and a flip
//! away resumes it, at the next snapshot, with no step of its own. The target is the route's own
//! `TargetEntry` (same upstream, window and metrics as when it serves live traffic), so a copy's
//! outcome lands in the window the analysis judges. The in-flight count is carried over from the
//! previous snapshot's shadow of the same route, so a reload never lets more than
//! `max_in_flight` copies out at once; a copy gives its place back when it ends, whatever
//! snapshot is in force then.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::observe::metrics::ShadowMetrics;
use crate::snapshot::TargetEntry;

/// The shadow traffic of one route.
pub struct Shadow {
    pub target: Arc<TargetEntry>,
    /// The target's index in the route's `targets`: a request that target serves is not copied.
    pub target_index: usize,
    /// Share of eligible requests copied, in basis points (`split::BUCKETS` = 100 %).
    pub basis_points: u16,
    pub methods: Box<[http::Method]>,
    /// Bound on a copy, from its start to its response's end.
    pub timeout: Duration,
    pub max_in_flight: u64,
    /// Largest declared request body copied with its request (0: bodyless requests only).
    pub max_body_bytes: u64,
    /// Copies out now (shared with earlier snapshots' `Shadow` of the route).
    pub in_flight: Arc<AtomicU64>,
    pub metrics: ShadowMetrics,
}

impl Shadow {
    /// Takes a place for one copy if fewer than `max_in_flight` are out; `None` when full (the
    /// copy is dropped, never queued).
    pub fn try_enter(&self) -> Option<Place> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_in_flight).then_some(n + 1)
            })
            .ok()?;
        Some(Place(self.in_flight.clone()))
    }
}

/// One copy's place under `max_in_flight`; given back when dropped.
pub struct Place(Arc<AtomicU64>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Compiles `[routes.shadow]` for a route whose live target is `live` (`None` while the shadow
/// target is live, or without the section). `previous`: the route's shadow in the snapshot before.
pub(super) fn build(
    route: &crate::config::Route,
    live: &str,
    targets: &[Arc<TargetEntry>],
    previous: Option<&Shadow>,
    metrics: &crate::observe::metrics::Metrics,
) -> Option<Arc<Shadow>> {
    let s = route.shadow.as_ref()?;
    if s.target == live {
        return None;
    }
    let target_index = targets.iter().position(|t| *t.name == *s.target)?;
    Some(Arc::new(Shadow {
        target: targets[target_index].clone(),
        target_index,
        basis_points: s.basis_points,
        methods: s.methods.clone().into_boxed_slice(),
        timeout: s.timeout,
        max_in_flight: s.max_in_flight,
        max_body_bytes: s.max_body_bytes,
        in_flight: previous.map_or_else(Default::default, |p| p.in_flight.clone()),
        metrics: metrics.shadow(&route.name, &s.target),
    }))
}
