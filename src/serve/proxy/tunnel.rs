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
//! they end by themselves or the drain deadline passes, then closes the rest. A tunnel in which no
//! byte moves either way for `server.tunnel_idle_timeout` is closed too. When flipgate closes a
//! WebSocket tunnel itself, each side gets a close frame (1001 Going Away) if its stream stands
//! between frames (`Frames` follows the frame headers), then a TCP close.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus::IntGauge;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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

/// What a tunnel needs besides its two upgraded connections.
pub struct Setup {
    pub gauge: IntGauge,
    pub slot: Option<InflightGuard>,
    pub tunnels: Arc<Tunnels>,
    pub close_after_flip: Option<(Arc<ArcSwap<Snapshot>>, Arc<TargetEntry>, Duration)>,
    /// `server.tunnel_idle_timeout`: no byte either way this long closes the tunnel.
    pub idle: Duration,
    /// The upgrade is to WebSocket: closing sends close frames (1001 Going Away).
    pub websocket: bool,
}

/// Why flipgate closed a tunnel itself.
#[derive(Debug, Clone, Copy)]
enum Close {
    Flipped,
    Drain,
    Idle,
}

/// Relays both directions until both sides have closed (a side's close is passed on as a
/// half-close), either fails, or flipgate closes the tunnel: its target was flipped away for the
/// lifetime after a flip, shutdown's drain deadline passed, or nothing moved for `idle`. A
/// WebSocket closed by flipgate gets a close frame (1001 Going Away) on each side whose stream
/// stands between two frames (a frame cut in half cannot be followed by another), then both
/// sockets are shut down.
pub async fn relay(down: OnUpgrade, up: OnUpgrade, setup: Setup) {
    let Setup {
        gauge,
        slot,
        tunnels,
        close_after_flip,
        idle,
        websocket,
    } = setup;
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
    let (mut down_r, mut down_w) = tokio::io::split(TokioIo::new(down));
    let (mut up_r, mut up_w) = tokio::io::split(TokioIo::new(up));
    let (mut to_up, mut to_down) = (Frames::default(), Frames::default());
    let last = AtomicU64::new(crate::clock::now_ms());
    let flipped = async {
        match &close_after_flip {
            None => std::future::pending().await,
            Some((snapshots, target, lifetime)) => {
                flipped_away(snapshots, target, *lifetime).await;
                tracing::info!(route = %target.route, target = %target.name, "closing tunnel: its target was flipped away");
            }
        }
    };
    let close = {
        let both = async {
            tokio::try_join!(
                pump(&mut down_r, &mut up_w, &mut to_up, &last),
                pump(&mut up_r, &mut down_w, &mut to_down, &last),
            )
        };
        tokio::select! {
            _ = both => None,
            _ = flipped => Some(Close::Flipped),
            _ = closing.changed() => Some(Close::Drain),
            _ = idle_for(&last, idle) => Some(Close::Idle),
        }
    };
    if let Some(why) = close {
        tracing::debug!(?why, websocket, "closing tunnel");
        // Bounded: a peer that does not read must not hold the close.
        let _ = tokio::time::timeout(CLOSE_WRITE, async {
            if websocket {
                if to_down.at_boundary() {
                    let _ = down_w.write_all(&GOING_AWAY_FROM_SERVER).await;
                }
                if to_up.at_boundary() {
                    let _ = up_w.write_all(&going_away_from_client()).await;
                }
            }
            let _ = down_w.shutdown().await;
            let _ = up_w.shutdown().await;
        })
        .await;
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

/// How long closing a tunnel may spend writing close frames and shutting down.
const CLOSE_WRITE: Duration = Duration::from_secs(1);

/// A WebSocket close frame from the server side (unmasked): status 1001 Going Away.
const GOING_AWAY_FROM_SERVER: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// The same close frame as a client sends it (masked, RFC 6455 §5.3).
fn going_away_from_client() -> [u8; 8] {
    let m: [u8; 4] = rand::random();
    [0x88, 0x82, m[0], m[1], m[2], m[3], 0x03 ^ m[0], 0xE9 ^ m[1]]
}

/// Copies one direction until its reader ends (then half-closes the writer), noting progress.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    frames: &mut Frames,
    last: &AtomicU64,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        last.store(crate::clock::now_ms(), Relaxed);
        // Until the write completes the peer may hold part of a frame: no boundary then.
        frames.writing = true;
        to.write_all(&buf[..n]).await?;
        frames.writing = false;
        frames.feed(&buf[..n]);
        last.store(crate::clock::now_ms(), Relaxed);
    }
}

/// Resolves once nothing has moved for `idle` (progress in `last`, in `clock::now_ms`).
async fn idle_for(last: &AtomicU64, idle: Duration) {
    let idle_ms = idle.as_millis() as u64;
    loop {
        let since = crate::clock::now_ms().saturating_sub(last.load(Relaxed));
        if since >= idle_ms {
            return;
        }
        tokio::time::sleep(Duration::from_millis(idle_ms - since)).await;
    }
}

/// Where a WebSocket byte stream stands relative to its frames (RFC 6455 §5.2): only the frame
/// headers are looked at, payloads are skipped by length.
#[derive(Default)]
struct Frames {
    /// Payload bytes of the current frame still to come.
    payload: u64,
    /// The bytes of a frame header seen so far (at most 14).
    head: [u8; 14],
    head_len: usize,
    /// A write of these bytes is under way (it may have been cut part way).
    writing: bool,
}

impl Frames {
    /// Whether the stream stands between two frames.
    fn at_boundary(&self) -> bool {
        self.payload == 0 && self.head_len == 0 && !self.writing
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.payload > 0 {
                let n = (self.payload).min(data.len() as u64);
                self.payload -= n;
                data = &data[n as usize..];
                continue;
            }
            self.head[self.head_len] = data[0];
            self.head_len += 1;
            data = &data[1..];
            if let Some(payload) = self.header_complete() {
                self.payload = payload;
                self.head_len = 0;
            }
        }
    }

    /// The payload length once the header in `head` is complete.
    fn header_complete(&self) -> Option<u64> {
        let h = &self.head[..self.head_len];
        if h.len() < 2 {
            return None;
        }
        let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
        let (ext, len) = match h[1] & 0x7F {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(n as u64)),
        };
        if h.len() < 2 + ext + mask {
            return None;
        }
        Some(len.unwrap_or_else(|| {
            h[2..2 + ext]
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | b as u64)
        }))
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
