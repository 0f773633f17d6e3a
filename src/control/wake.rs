//! When the control plane's periodic tasks (circuit, health checks, rollouts) wake up.
//!
//! Invariants: a task ticks only while it has something to do (`active`, judged on the current
//! snapshot); otherwise it sleeps until the control plane publishes a new snapshot, so an idle
//! proxy wakes on no timer of these tasks. The published generation is marked seen *before*
//! `active` is judged, so a snapshot published in between is never missed. After such a change the
//! interval is reset to fire at once: work that became due is done without waiting a period.

use tokio::sync::watch;
use tokio::time::Interval;

/// Why a task woke.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    /// Its interval ticked while it had something to do.
    Tick,
    /// A new snapshot was published while it had nothing to do: judge again.
    Changed,
    /// Shut down (or the control plane is gone).
    Stop,
}

/// Waits for the next tick of `tick` if `active()` holds, else for the next published snapshot;
/// or for shutdown either way.
pub async fn next(
    tick: &mut Interval,
    published: &mut watch::Receiver<u64>,
    shutdown: &mut watch::Receiver<bool>,
    active: impl FnOnce() -> bool,
) -> Wake {
    next_or(tick, published, shutdown, active, std::future::pending()).await
}

/// `next`, also ending (as a `Tick`) when `early` completes while the task is active.
pub async fn next_or(
    tick: &mut Interval,
    published: &mut watch::Receiver<u64>,
    shutdown: &mut watch::Receiver<bool>,
    active: impl FnOnce() -> bool,
    early: impl std::future::Future<Output = ()>,
) -> Wake {
    published.borrow_and_update();
    let active = active();
    tokio::select! {
        _ = tick.tick(), if active => Wake::Tick,
        _ = early, if active => Wake::Tick,
        r = published.changed(), if !active => match r {
            Ok(()) => {
                tick.reset_immediately();
                Wake::Changed
            }
            Err(_) => Wake::Stop,
        },
        _ = shutdown.changed() => Wake::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_a_publish_and_active_ticks() {
        let (publish, mut published) = watch::channel(0u64);
        let (stop, mut shutdown) = watch::channel(false);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.tick().await; // the first tick is immediate
                           // Idle: an hour of (virtual) time passes without a wake.
        let idle = next(&mut tick, &mut published, &mut shutdown, || false);
        assert!(tokio::time::timeout(Duration::from_secs(3600), idle)
            .await
            .is_err());
        // A publish during the wait wakes it, and the interval then fires at once.
        let (woke, ()) = tokio::join!(
            next(&mut tick, &mut published, &mut shutdown, || false),
            async {
                tokio::task::yield_now().await;
                publish.send_replace(1);
            }
        );
        assert_eq!(woke, Wake::Changed);
        let start = tokio::time::Instant::now();
        assert_eq!(
            next(&mut tick, &mut published, &mut shutdown, || true).await,
            Wake::Tick
        );
        assert_eq!(start.elapsed(), Duration::ZERO);
        // Shutdown ends either wait.
        stop.send_replace(true);
        assert_eq!(
            next(&mut tick, &mut published, &mut shutdown, || false).await,
            Wake::Stop
        );
    }
}
