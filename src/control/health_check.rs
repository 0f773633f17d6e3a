//! The active health-check task: every target with `health_check` gets each instance checked
//! every `health_interval` with `GET path` (2xx/3xx pass), the result recorded in the instance's
//! health (`upstream::health`, with its rise/fall hysteresis).
//!
//! Invariants: one task for the process, reading the current snapshot each tick (so a reload's
//! targets are checked from the next tick); while no target has checks it sleeps until the next
//! published snapshot instead of ticking; a check never outlives its `timeout`; it stops on the
//! shutdown signal.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::control::wake::{self, Wake};
use crate::upstream::health::{Change, FALL, RISE};

/// How often the task looks for due checks.
const TICK: Duration = Duration::from_millis(250);

/// The active health check task: every target with `health_check` gets each instance checked every
/// `health_interval` with `GET path` (2xx/3xx pass). Runs until shutdown.
pub async fn run(
    snapshots: std::sync::Arc<arc_swap::ArcSwap<crate::snapshot::Snapshot>>,
    mut published: tokio::sync::watch::Receiver<u64>,
    clients: crate::upstream::Clients,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let checked = || {
            snapshots
                .load()
                .routes
                .iter()
                .any(|r| r.targets.iter().any(|t| t.upstream.health_check.is_some()))
        };
        match wake::next(&mut tick, &mut published, &mut shutdown, checked).await {
            Wake::Stop => return,
            Wake::Changed => continue,
            Wake::Tick => {}
        }
        let snap = snapshots.load_full();
        let now = crate::clock::now_ms();
        for route in &snap.routes {
            for target in &route.targets {
                let up = &target.upstream;
                let Some(hc) = &up.health_check else { continue };
                if up.next_check_ms.load(Relaxed) > now {
                    continue;
                }
                up.next_check_ms
                    .store(crate::clock::add_ms(now, hc.interval), Relaxed);
                for i in 0..up.instances.len() {
                    tokio::spawn(check(target.clone(), clients.clone(), i));
                }
            }
        }
    }
}

async fn check(
    target: std::sync::Arc<crate::snapshot::TargetEntry>,
    clients: crate::upstream::Clients,
    i: usize,
) {
    let up = &target.upstream;
    let Some(hc) = &up.health_check else { return };
    let instance = &up.instances[i];
    let mut req = http::Request::new(crate::upstream::body::RequestBody::empty());
    *req.uri_mut() = up.uri(instance, Some(hc.path.clone()));
    if up.http2 {
        *req.version_mut() = http::Version::HTTP_2;
    }
    req.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("flipgate-health-check"),
    );
    let client = clients.for_upstream(up);
    let ok = match tokio::time::timeout(hc.timeout, client.request(req)).await {
        Ok(Ok(resp)) => {
            let s = resp.status();
            s.is_success() || s.is_redirection()
        }
        _ => false,
    };
    match up.health[i].record_check(ok, RISE, FALL) {
        Change::Unhealthy => {
            tracing::warn!(route = %target.route, target = %target.name, %instance, "instance failed its health checks; taken out of rotation")
        }
        Change::Healthy => {
            tracing::info!(route = %target.route, target = %target.name, %instance, "instance passes its health checks again")
        }
        _ => {}
    }
}
