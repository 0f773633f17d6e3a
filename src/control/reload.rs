//! Hot reload: watch the route file's directory, debounce, and hand the new file to the control
//! plane; SIGHUP and a slow poll do the same.
//!
//! Invariants: the *directory* is watched, not the file, so editors that save by rename and
//! Kubernetes ConfigMap `..data` symlink swaps are seen; a burst of events becomes one reload after
//! `DEBOUNCE` of quiet, or `DEBOUNCE_MAX` after its first event if it does not stop. The same bytes
//! are never re-applied or re-reported: the last attempted content hash is remembered, so a broken
//! file is logged once, not on every poll. The file is read once per attempt and at most
//! `config::MAX_FILE_BYTES` of it. The poll is the safety net for missed events (inotify queue
//! overflow, a watched directory replaced), and ends the grace of runtime state set aside for a
//! half-written file (`Control::expire_parked`). Nothing here can tell a finished file from a
//! writer's pause: a valid beginning of a file is applied like any file (the control plane keeps
//! the runtime state it would drop); operators write the file by rename (docs/operations.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::config;
use crate::control::{Control, ReloadOutcome};

/// Quiet time after the last file event before reloading (an editor's save is a burst of events
/// within a few milliseconds).
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// Longest wait after the first event of a burst: files changed without pause (a tool rewriting
/// the file every 100 ms) are still applied at this pace, never starved by the debounce.
pub const DEBOUNCE_MAX: Duration = Duration::from_millis(200);
/// Fallback poll interval.
pub const POLL: Duration = Duration::from_secs(5);

/// After a first file event: waits until events stop for `DEBOUNCE`, at most `DEBOUNCE_MAX`.
async fn debounce(rx: &mut mpsc::UnboundedReceiver<()>) {
    let latest = tokio::time::Instant::now() + DEBOUNCE_MAX;
    loop {
        let quiet = (tokio::time::Instant::now() + DEBOUNCE).min(latest);
        tokio::select! {
            Some(()) = rx.recv() => continue,
            _ = tokio::time::sleep_until(quiet) => return,
        }
    }
}

/// Reads the file and applies it unless its bytes were already tried. Returns the outcome, or
/// `None` when skipped.
pub fn reload_if_changed(
    control: &Control,
    path: &Path,
    last_tried: &mut Option<u64>,
) -> Option<ReloadOutcome> {
    // Read once, bounded (`config::read`): what is hashed is what is parsed. A file that cannot be
    // read (missing, too big, not UTF-8) is identified by its error, so it is reported once, not on
    // every poll.
    let text = config::read(path);
    let hash = Some(match &text {
        Ok(t) => xxhash_rust::xxh3::xxh3_64(t.as_bytes()),
        Err(e) => xxhash_rust::xxh3::xxh3_64(e.to_string().as_bytes()),
    });
    if hash == *last_tried {
        return None;
    }
    *last_tried = hash;
    let outcome = control.reload(text.and_then(|t| config::parse(path, &t)));
    match &outcome {
        ReloadOutcome::Applied { generation, .. } => {
            tracing::info!(file = %path.display(), generation, "route file reloaded")
        }
        ReloadOutcome::Rejected(errors) => {
            for e in &errors.0 {
                tracing::error!(error = %e, "route file rejected; the previous config keeps serving");
            }
        }
        ReloadOutcome::Unchanged => {}
    }
    Some(outcome)
}

/// Watches `path` until shutdown.
pub async fn run(control: Arc<Control>, path: PathBuf, mut shutdown: watch::Receiver<bool>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let watcher = {
        let tx = tx.clone();
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Reads are not changes: our own read of the file would otherwise wake us again.
            if res.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|_| w))
    };
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the route file's directory; relying on SIGHUP and polling");
            None
        }
    };
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    // Seeded from the config actually in force, so an edit made between start and this task's
    // first run is still applied.
    let mut last_tried = Some(control.config().content_hash);
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let hup_fut = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup_fut = std::future::pending::<Option<()>>();
        let forced = tokio::select! {
            _ = shutdown.changed() => return,
            Some(()) = rx.recv() => {
                debounce(&mut rx).await;
                false
            }
            _ = hup_fut => { tracing::info!("SIGHUP: reloading the route file"); true }
            _ = poll.tick() => false,
        };
        if forced {
            last_tried = None;
        }
        let c = control.clone();
        let p = path.clone();
        let mut lt = last_tried;
        last_tried = tokio::task::spawn_blocking(move || {
            reload_if_changed(&c, &p, &mut lt);
            // Runtime state set aside for a half-written file ends its grace even if the file
            // never changes again.
            c.expire_parked(crate::control::unix_ms());
            lt
        })
        .await
        .unwrap_or(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_wait_and_a_stream_never_starves() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        // A burst: a few events within milliseconds, then quiet.
        let t0 = Instant::now();
        for _ in 0..3 {
            tx.send(()).unwrap();
        }
        debounce(&mut rx).await;
        assert_eq!(t0.elapsed(), DEBOUNCE);

        // Events every 30 ms without end: the wait still ends at DEBOUNCE_MAX.
        let writer = tokio::spawn(async move {
            loop {
                if tx.send(()).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        });
        let t0 = Instant::now();
        debounce(&mut rx).await;
        assert!(t0.elapsed() <= DEBOUNCE_MAX, "{:?}", t0.elapsed());
        writer.abort();
    }
}
