//! Upgraded connections (WebSocket and other `Upgrade`s), relayed byte for byte after the
//! upstream's `101`.
//!
//! Invariants: a tunnel stays on the target it opened on; flips never move it. Only when
//! `server.tunnel_max_lifetime_after_flip` is set does a tunnel look at new snapshots, by polling
//! the `ArcSwap` every `FLIP_POLL` (never on the request path): once its target no longer takes new
//! requests of its route (neither live nor an active canary), it gets that long, is re-checked
//! (a flip back keeps it), and is then closed (both sockets shut down). The open-tunnel gauge of the
//! target counts it from the moment both upgrades complete until it ends; it holds its upstream
//! in-flight slot for its whole life. On shutdown, `Tunnels::drain` lets open tunnels run until
//! they end by themselves or the drain deadline passes, then closes the rest.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus::IntGauge;
use tokio::sync::{watch, Notify};

use crate::snapshot::{Snapshot, TargetEntry};
use crate::upstream::InflightGuard;

/// How often a tunnel with a lifetime-after-flip checks whether its target was flipped away.
pub const FLIP_POLL: Duration = Duration::from_millis(500);

/// Every open tunnel of the process, so shutdown can wait for them and then close the rest.
pub struct Tunnels {
    open: std::sync::atomic::AtomicUsize,
    idle: Notify,
    close: watch::Sender<bool>,
}

impl Default for Tunnels {
    fn default() -> Tunnels {
        Tunnels {
            open: Default::default(),
            idle: Notify::new(),
            close: watch::Sender::new(false),
        }
    }
}

impl Tunnels {
    /// Open tunnels right now.
    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until every tunnel has ended or `deadline` passes; then closes what is left.
    pub async fn drain(&self, deadline: tokio::time::Instant) {
        let wait = async {
            loop {
                let idle = self.idle.notified();
                if self.open() == 0 {
                    return;
                }
                idle.await;
            }
        };
        if tokio::time::timeout_at(deadline, wait).await.is_err() {
            tracing::warn!(
                tunnels = self.open(),
                "drain timeout reached; closing open tunnels"
            );
        }
        let _ = self.close.send(true);
    }
}

/// Relays both directions until either side closes, the lifetime after a flip runs out, or
/// shutdown's drain deadline passes.
pub async fn relay(
    down: OnUpgrade,
    up: OnUpgrade,
    gauge: IntGauge,
    slot: Option<InflightGuard>,
    tunnels: Arc<Tunnels>,
    close_after_flip: Option<(Arc<ArcSwap<Snapshot>>, Arc<TargetEntry>, Duration)>,
) {
    let (Ok(down), Ok(up)) = tokio::join!(down, up) else {
        return;
    };
    let mut closing = tunnels.close.subscribe();
    if *closing.borrow_and_update() {
        return;
    }
    tunnels
        .open
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    gauge.inc();
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    let flipped = async {
        match &close_after_flip {
            None => std::future::pending().await,
            Some((snapshots, target, lifetime)) => {
                flipped_away(snapshots, target, *lifetime).await;
                tracing::info!(route = %target.route, target = %target.name, "closing tunnel: its target was flipped away");
            }
        }
    };
    let close = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => false,
        _ = flipped => true,
        _ = closing.changed() => true,
    };
    if close {
        use tokio::io::AsyncWriteExt;
        let _ = down.shutdown().await;
        let _ = up.shutdown().await;
    }
    gauge.dec();
    drop(slot);
    if tunnels
        .open
        .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
        == 1
    {
        tunnels.idle.notify_waiters();
    }
}

/// Resolves once `target` has not been serving its route for `lifetime` (checked at both ends).
async fn flipped_away(snapshots: &ArcSwap<Snapshot>, target: &TargetEntry, lifetime: Duration) {
    let mut tick = tokio::time::interval(FLIP_POLL.min(lifetime));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if serving(&snapshots.load(), target) {
            continue;
        }
        tokio::time::sleep(lifetime).await;
        if !serving(&snapshots.load(), target) {
            return;
        }
    }
}

/// Whether `target` still takes new requests of its route: live, or a canary above 0 %.
fn serving(snap: &Snapshot, target: &TargetEntry) -> bool {
    snap.route(&target.route).is_some_and(|r| {
        r.state.live == *target.name
            || (r.state.canary_bp > 0 && r.state.canary_target.as_deref() == Some(&*target.name))
    })
}
