//! The state file's writer: one thread per process, the only code that writes `state.json`.
//!
//! Invariants: it runs on its own OS thread, never on the async runtime, and the control plane
//! hands it a state and goes on: no lock a reader, the data path or a circuit trip needs is held
//! while it writes. It writes only while this process holds the state directory's lock (`lock`),
//! and always the newest state it was handed (an older one is never written after a newer one).
//! A failed write leaves every decision in force; it is counted
//! (`flipgate_state_persist_failures_total`), logged, shown in `PersistStatus`, and retried with
//! `backoff` until it succeeds; a newer state is tried at once. A process that finds the lock held
//! follows: it writes nothing, hands what the owner writes to the control plane (`Adopter`), polls
//! the lock every `FOLLOW_POLL`, and when the owner exits takes over, re-reading the file first. A
//! file it cannot read then is never overwritten (it may hold the old owner's last decisions):
//! changes stay refused (`Ownership::Blocked`) until a read succeeds.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::lock::{self, Attempt, DirLock};
use super::{Loaded, Saved, Store};
use crate::control::events::Events;

/// First wait before retrying a failed write (or a failed read at takeover).
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between retries.
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often a follower checks whether the owner has exited and what it wrote.
pub const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Wait before the next retry after `failures` failures in a row: 1 s, doubling, at most 30 s.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX)
}

/// Who writes the state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// This process (it holds the lock, or nobody can: then every write retries the lock).
    Owner,
    /// Another process holds the lock (its PID when known); this one writes nothing and refuses
    /// changes.
    Follower { pid: Option<u32> },
    /// This process took the lock over but cannot read the state file the previous owner left;
    /// it refuses changes until it can.
    Blocked { reason: String },
}

/// Where persistence stands; published for readers (admin API, `/readyz`) and for callers waiting
/// on a version.
#[derive(Debug, Clone, PartialEq)]
pub struct PersistStatus {
    /// Newest state version handed to the writer.
    pub latest: u64,
    /// Newest version known to be in the state file.
    pub durable: u64,
    /// Newest version whose write failed.
    pub failed: u64,
    /// The last failure (write, lock or read at takeover), until a write succeeds.
    pub error: Option<String>,
    pub ownership: Ownership,
    /// The writer has stopped (after a last flush) and released the lock.
    pub stopped: bool,
}

impl PersistStatus {
    /// Whether every decision in force is in the state file.
    pub fn persisted(&self) -> bool {
        self.durable >= self.latest
    }
}

/// Hands the control plane what the state file holds: `Some(saved)` when it was read (`None`:
/// nothing new to take in), and whether this process just became the owner (then it must hand
/// the writer the state in force). Returns false once the control plane is gone.
pub type Adopter = Box<dyn Fn(Option<Saved>, bool) -> bool + Send + Sync>;

/// The control plane's handle on the writer thread.
pub struct Writer {
    shared: Arc<Shared>,
}

struct Shared {
    slot: Mutex<Slot>,
    /// Wakes the thread: a new state, or stop.
    wake: Condvar,
    status: watch::Sender<PersistStatus>,
    adopter: OnceLock<Adopter>,
}

/// What the control plane handed over.
struct Slot {
    version: u64,
    latest: Option<Arc<Saved>>,
    stop: bool,
}

impl Shared {
    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Writer {
    /// Starts the writer thread. `first` is the lock attempt made at start; `seen` the hash of the
    /// state file as the control plane read it then (a follower adopts only changes).
    pub fn spawn(
        store: Store,
        first: Attempt,
        seen: Option<u64>,
        failures: prometheus::IntCounter,
        events: Arc<Events>,
    ) -> Writer {
        let (phase, ownership) = match first {
            Attempt::Locked(l) => (Phase::Owner(Some(l)), Ownership::Owner),
            Attempt::Failed(_) => (Phase::Owner(None), Ownership::Owner),
            Attempt::HeldBy(pid) => (Phase::Follower, Ownership::Follower { pid }),
        };
        let (status, _) = watch::channel(PersistStatus {
            latest: 0,
            durable: 0,
            failed: 0,
            error: None,
            ownership,
            stopped: false,
        });
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot {
                version: 0,
                latest: None,
                stop: false,
            }),
            wake: Condvar::new(),
            status,
            adopter: OnceLock::new(),
        });
        let thread = Thread {
            shared: shared.clone(),
            store,
            failures_total: failures,
            events,
            phase,
            failures: 0,
            next: None,
            attempted: 0,
            seen,
            noted: None,
        };
        std::thread::Builder::new()
            .name("flipgate-state".into())
            .spawn(move || thread.run())
            .expect("can start the state writer thread");
        Writer { shared }
    }

    /// Connects the control plane (once, right after it is built).
    pub fn set_adopter(&self, adopter: Adopter) {
        let _ = self.shared.adopter.set(adopter);
        self.shared.wake.notify_all();
    }

    /// Hands over a new state to write; returns its version. `on_disk`: the state file already
    /// holds exactly this (a follower taking in what the owner wrote), so nothing is written.
    pub fn submit(&self, saved: Arc<Saved>, on_disk: bool) -> u64 {
        let mut slot = self.shared.slot();
        slot.version += 1;
        let version = slot.version;
        slot.latest = Some(saved);
        self.shared.status.send_modify(|s| {
            s.latest = version;
            if on_disk {
                s.durable = version;
            }
        });
        drop(slot);
        self.shared.wake.notify_all();
        version
    }

    /// Where persistence stands now.
    pub fn status(&self) -> PersistStatus {
        self.shared.status.borrow().clone()
    }

    /// Changes of `status`, to wait on a version.
    pub fn subscribe(&self) -> watch::Receiver<PersistStatus> {
        self.shared.status.subscribe()
    }

    /// Whether this process writes the state file (else changes are refused).
    pub fn writes(&self) -> bool {
        self.shared.status.borrow().ownership == Ownership::Owner
    }

    /// Marks this process as the owner; the adopter calls it at takeover, under the control lock,
    /// so no change is accepted on the old footing after it.
    pub fn became_owner(&self) {
        self.shared
            .status
            .send_modify(|s| s.ownership = Ownership::Owner);
    }

    /// Asks the thread to write what is pending (if it owns the file), release the lock and stop;
    /// `PersistStatus::stopped` says when it has.
    pub fn stop(&self) {
        self.shared.slot().stop = true;
        self.shared.wake.notify_all();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Phase {
    /// This process writes; the lock is `None` while it could not be taken (the directory cannot
    /// be created), and every write tries again.
    Owner(Option<DirLock>),
    /// Another process holds the lock.
    Follower,
    /// Holds the lock, waiting to read the state file the previous owner left.
    TakingOver(DirLock),
}

enum Job {
    Write(u64, Arc<Saved>),
    /// Follower: poll the lock and the file. Taking over: try reading the file again.
    Tick,
    /// Stop, after writing this if anything is pending.
    Stop(Option<(u64, Arc<Saved>)>),
}

enum WriteError {
    /// Another process took the lock while this one could not.
    Taken(Option<u32>),
    Io(String),
}

struct Thread {
    shared: Arc<Shared>,
    store: Store,
    failures_total: prometheus::IntCounter,
    events: Arc<Events>,
    phase: Phase,
    /// Failures in a row; 0 while healthy.
    failures: u32,
    /// Owner: when to retry after a failure (`None`: not failing). Otherwise: the next tick.
    next: Option<Instant>,
    /// Version of the last write attempt.
    attempted: u64,
    /// Hash of the state file as last read: a follower adopts only changes.
    seen: Option<u64>,
    /// The last problem a follower logged, so it is logged once, not every poll.
    noted: Option<String>,
}

impl Thread {
    fn run(mut self) {
        loop {
            match self.next_job() {
                Job::Write(version, saved) => self.write(version, &saved),
                Job::Tick => {
                    if !self.tick() {
                        break;
                    }
                }
                Job::Stop(last) => {
                    if let Some((version, saved)) = last {
                        self.write(version, &saved);
                    }
                    break;
                }
            }
        }
        let Thread { shared, phase, .. } = self;
        drop(phase); // releases the lock
        shared.status.send_modify(|s| s.stopped = true);
    }

    fn next_job(&mut self) -> Job {
        let shared = self.shared.clone();
        let mut slot = shared.slot();
        loop {
            let durable = shared.status.borrow().durable;
            let pending = slot
                .latest
                .clone()
                .filter(|_| slot.version > durable)
                .map(|r| (slot.version, r));
            let now = Instant::now();
            if slot.stop {
                return Job::Stop(pending.filter(|_| matches!(self.phase, Phase::Owner(_))));
            }
            let wait = match self.phase {
                Phase::Owner(_) => match pending {
                    Some((v, r)) if v > self.attempted || self.next.is_none_or(|t| now >= t) => {
                        return Job::Write(v, r)
                    }
                    Some(_) => self.next.map(|t| t.saturating_duration_since(now)),
                    None => None,
                },
                // Nothing to adopt into before the control plane is connected.
                _ if shared.adopter.get().is_none() => None,
                Phase::Follower | Phase::TakingOver(_) => match self.next {
                    Some(t) if now < t => Some(t - now),
                    _ => return Job::Tick,
                },
            };
            slot = match wait {
                Some(d) => {
                    shared
                        .wake
                        .wait_timeout(slot, d)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => shared.wake.wait(slot).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }

    fn write(&mut self, version: u64, saved: &Saved) {
        self.attempted = version;
        match self.try_write(saved) {
            Ok(()) => {
                if self.failures > 0 {
                    self.events.push(
                        "persisted",
                        None,
                        format!(
                            "runtime state written to {} after {} failed attempts; every decision in force is durable again",
                            self.store.file().display(),
                            self.failures
                        ),
                    );
                }
                self.failures = 0;
                self.next = None;
                self.shared.status.send_modify(|s| {
                    s.durable = s.durable.max(version);
                    s.error = None;
                });
            }
            Err(WriteError::Taken(pid)) => {
                let what = format!(
                    "the state directory {} was locked by flipgate process {} while this process could not lock it; following that process",
                    self.store.dir().display(),
                    pid_text(pid)
                );
                self.events.push("persist_failed", None, what.clone());
                self.phase = Phase::Follower;
                self.next = None;
                self.shared.status.send_modify(|s| {
                    s.failed = s.failed.max(version);
                    s.error = Some(what);
                    s.ownership = Ownership::Follower { pid };
                });
            }
            Err(WriteError::Io(what)) => {
                let retry = self.failed();
                let message = format!(
                    "cannot persist runtime state ({what}); decisions stay in force but will not survive a restart until a retry succeeds (next in {})",
                    humantime::format_duration(retry)
                );
                if self.failures == 1 {
                    self.events.push("persist_failed", None, message);
                } else {
                    tracing::error!("{message}");
                }
                self.shared.status.send_modify(|s| {
                    s.failed = s.failed.max(version);
                    s.error = Some(what);
                });
            }
        }
    }

    /// Counts a failure and schedules the retry; returns the wait.
    fn failed(&mut self) -> Duration {
        self.failures += 1;
        self.failures_total.inc();
        let retry = backoff(self.failures);
        self.next = Some(Instant::now() + retry);
        retry
    }

    fn try_write(&mut self, saved: &Saved) -> Result<(), WriteError> {
        let Phase::Owner(held) = &mut self.phase else {
            return Err(WriteError::Io("this process does not own the state".into()));
        };
        if held.is_none() {
            match lock::try_lock(self.store.dir()) {
                Attempt::Locked(l) => {
                    remove_stale_tmp(&self.store);
                    *held = Some(l);
                }
                Attempt::HeldBy(pid) => return Err(WriteError::Taken(pid)),
                Attempt::Failed(e) => {
                    return Err(WriteError::Io(format!(
                        "cannot lock the state directory {}: {e}",
                        self.store.dir().display()
                    )))
                }
            }
        }
        self.store.save(saved).map_err(|e| {
            WriteError::Io(format!("cannot write {}: {e}", self.store.file().display()))
        })
    }

    /// One follower poll, or one read attempt at takeover. Returns false once the control plane is
    /// gone.
    fn tick(&mut self) -> bool {
        match std::mem::replace(&mut self.phase, Phase::Follower) {
            Phase::Follower => {
                self.next = Some(Instant::now() + FOLLOW_POLL);
                match lock::try_lock(self.store.dir()) {
                    Attempt::Locked(l) => {
                        remove_stale_tmp(&self.store);
                        tracing::info!(dir = %self.store.dir().display(), "the state directory's owner has exited; taking over");
                        self.phase = Phase::TakingOver(l);
                        self.next = None;
                        true
                    }
                    Attempt::HeldBy(pid) => {
                        self.shared.status.send_if_modified(|s| {
                            let now = Ownership::Follower { pid };
                            let changed = s.ownership != now;
                            s.ownership = now;
                            changed
                        });
                        self.follow()
                    }
                    Attempt::Failed(e) => {
                        self.note(format!(
                            "cannot open the state directory's lock in {}: {e}",
                            self.store.dir().display()
                        ));
                        true
                    }
                }
            }
            Phase::TakingOver(l) => self.take_over(l),
            owner @ Phase::Owner(_) => {
                self.phase = owner;
                true
            }
        }
    }

    /// Follower: hands over what the owner wrote, if it changed. A file that cannot be read or
    /// parsed is no news: the decisions in force stay.
    fn follow(&mut self) -> bool {
        match self.store.read() {
            Ok(Loaded::Saved(saved, hash)) if Some(hash) != self.seen => {
                self.seen = Some(hash);
                self.noted = None;
                self.adopt(Some(saved), false)
            }
            Ok(Loaded::Corrupt(why, hash)) if Some(hash) != self.seen => {
                self.seen = Some(hash);
                self.note(format!(
                    "the state file {} is corrupt ({why}); keeping the decisions in force",
                    self.store.file().display()
                ));
                true
            }
            Ok(_) => true,
            Err(e) => {
                self.note(format!(
                    "cannot read the state file {}: {e}; keeping the decisions in force",
                    self.store.file().display()
                ));
                true
            }
        }
    }

    fn take_over(&mut self, held: DirLock) -> bool {
        let file = self.store.file();
        let disk = match self.store.read() {
            Ok(Loaded::Saved(saved, _)) => Some(saved),
            Ok(Loaded::Absent) => None,
            Ok(Loaded::Corrupt(why, _)) => {
                let kept = self
                    .store
                    .quarantine()
                    .map_or_else(|e| format!("not kept: {e}"), |p| p.display().to_string());
                tracing::error!(path = %file.display(), error = why, kept_copy = kept, "CORRUPT runtime state file left by the previous owner; keeping the decisions this process followed");
                None
            }
            Err(e) => {
                let reason = format!(
                    "cannot read the state file {} the previous owner left: {e}; changes are refused until it can be read (overwriting it could undo that owner's last decisions)",
                    file.display()
                );
                let retry = self.failed();
                if self.failures == 1 {
                    self.events.push("persist_failed", None, reason.clone());
                } else {
                    tracing::error!(retry_in = %humantime::format_duration(retry), "{reason}");
                }
                self.shared.status.send_modify(|s| {
                    s.ownership = Ownership::Blocked {
                        reason: reason.clone(),
                    };
                    s.failed = s.failed.max(s.latest);
                    s.error = Some(reason);
                });
                self.phase = Phase::TakingOver(held);
                return true;
            }
        };
        self.phase = Phase::Owner(Some(held));
        self.failures = 0;
        self.next = None;
        self.events.push(
            "takeover",
            None,
            format!(
                "this process now writes the runtime state in {} (the previous owner exited)",
                self.store.dir().display()
            ),
        );
        // The adopter marks this process the owner and hands over the state in force to write.
        self.adopt(disk, true)
    }

    fn adopt(&self, disk: Option<Saved>, takeover: bool) -> bool {
        match self.shared.adopter.get() {
            Some(adopt) => adopt(disk, takeover),
            None => true,
        }
    }

    /// Logs a follower's problem once (until it changes).
    fn note(&mut self, what: String) {
        if self.noted.as_ref() != Some(&what) {
            tracing::warn!("{what}");
            self.noted = Some(what);
        }
    }
}

fn remove_stale_tmp(store: &Store) {
    let n = store.remove_stale_tmp();
    if n > 0 {
        tracing::info!(dir = %store.dir().display(), removed = n, "removed temp files left by earlier writers");
    }
}

/// A PID for messages.
pub fn pid_text(pid: Option<u32>) -> String {
    pid.map_or_else(|| "(unknown PID)".to_string(), |p| p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_up_to_thirty() {
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(u32::MAX), RETRY_MAX);
    }
}
