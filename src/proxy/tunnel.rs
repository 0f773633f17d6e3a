//! Upgraded connections (WebSocket and other `Upgrade`s), relayed byte for byte after the
//! upstream's `101`.
//!
//! Invariants: a tunnel stays on the target it opened on; flips never move it. Only when
//! `server.tunnel_max_lifetime_after_flip` is set does a tunnel look at new snapshots, by polling
//! the `ArcSwap` every `FLIP_POLL` (never on the request path): once its target no longer takes new
//! requests of its route (neither live nor an active canary), it gets that long, is re-checked
//! (a flip back keeps it), and is then closed (both sockets shut down). The open-tunnel gauge of the
//! target counts it from the moment both upgrades complete until it ends; it holds its upstream
//! in-flight slot for its whole life.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus::IntGauge;

use crate::snapshot::{Snapshot, TargetEntry};
use crate::upstream::InflightGuard;

/// How often a tunnel with a lifetime-after-flip checks whether its target was flipped away.
pub const FLIP_POLL: Duration = Duration::from_millis(500);

/// Relays both directions until either side closes, or the lifetime after a flip runs out.
pub async fn relay(
    down: OnUpgrade,
    up: OnUpgrade,
    gauge: IntGauge,
    slot: InflightGuard,
    close_after_flip: Option<(Arc<ArcSwap<Snapshot>>, Arc<TargetEntry>, Duration)>,
) {
    let (Ok(down), Ok(up)) = tokio::join!(down, up) else {
        return;
    };
    gauge.inc();
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
    match close_after_flip {
        None => {
            let _ = copy.await;
        }
        Some((snapshots, target, lifetime)) => {
            tokio::select! {
                _ = copy => {}
                _ = flipped_away(&snapshots, &target, lifetime) => {
                    tracing::info!(route = %target.route, target = %target.name, "closing tunnel: its target was flipped away");
                    use tokio::io::AsyncWriteExt;
                    let _ = down.shutdown().await;
                    let _ = up.shutdown().await;
                }
            }
        }
    }
    gauge.dec();
    drop(slot);
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
