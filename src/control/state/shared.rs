//! The control plane's view of a shared state store (`[state] backend = "etcd"`), whatever its
//! build: `Backend` is what `Control` calls, the `etcd` module (feature `etcd`) implements it.
//!
//! Invariants: one key per route holds its `Persisted` state (the state and the file split it was
//! made against), and every write is a compare-and-swap on the revision of that key the writer
//! last saw (0: absent), so two replicas acting at once cannot interleave. `cas` blocks its caller
//! at most the store's timeout and never runs on the async runtime's workers (callers are the
//! blocking pool or the store's own thread). A `Down` answer means nothing was written.

use serde::Serialize;

use super::Persisted;

/// The outcome of a compare-and-swap on one route's key.
#[derive(Debug)]
pub enum Cas {
    /// Written; the key's new revision.
    Accepted(i64),
    /// The key moved since `rev`: its revision and value now (`None`: deleted or absent).
    Conflict(i64, Option<Box<Persisted>>),
    /// The store could not be reached or did not answer in time (why); nothing was written.
    Down(String),
}

/// The shared store's health, for status, the API and `/readyz`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct StoreStatus {
    /// `etcd`.
    pub backend: String,
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// This replica's name in the fleet.
    pub replica: String,
    /// The store answered the last request and the watch is running.
    pub up: bool,
    /// Why it is down.
    pub error: Option<String>,
    /// Routes whose stored state was made against another split of the route file than this
    /// replica's (its file is behind or ahead of the fleet's): they serve this replica's file.
    #[serde(default)]
    pub routes_behind: Vec<String>,
    /// Circuit trips taken while the store was down, written once it is back.
    #[serde(default)]
    pub trips_pending: Vec<String>,
}

/// A shared state store as the control plane uses it.
pub trait Backend: Send + Sync {
    /// Writes `value` as route `route`'s state if its key is still at revision `rev`. Blocks at most
    /// the store's timeout.
    fn cas(&self, route: &str, rev: i64, value: &Persisted) -> Cas;
    /// Writes a circuit trip (made on the state at revision `rev`) in the background: now, or when
    /// the store is back; dropped if the key moved meanwhile (a newer decision wins).
    fn trip(&self, route: &str, rev: i64, value: Persisted);
    /// Health and what is pending.
    fn status(&self) -> StoreStatus;
    /// Stops the store's thread (at shutdown).
    fn stop(&self);
}
