//! Zero lost requests, as a number (short form; `benches/zero_loss.sh` is the long one): keep-alive
//! load while 100 flips, 100 canary changes and 50 route-file reloads happen. Every response must
//! be a 200 from a target that may take traffic (`red` is in the file but never live nor canary),
//! and once the load and the gateway are gone, the process has the descriptors it started with.
//!
//! The gateway runs on a runtime of its own, shut down at the end, so its per-thread pools go with
//! its threads and the descriptor count can be compared exactly.
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

const DEADLINE: Duration = Duration::from_secs(20);
const CLIENTS: usize = 4;

/// Descriptors of sockets, files and pipes (what connections and the state and route files
/// use). Pollers (`anon_inode`) are left out: the route-file watcher's thread closes its own on
/// its way out, at a time of its choosing after the gateway stops.
fn settled_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|l| !l.to_string_lossy().starts_with("anon_inode:"))
        })
        .count()
}

fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split(' ').nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Starts and stops a gateway once, so what the process creates once for its whole life (the
/// signal driver's socket pair) is in the baseline.
fn warm_up() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let blue = spawn_upstream("blue").await;
        Gw::start(&config("blue", &[("blue", blue.addr)], ""))
            .await
            .stop()
            .await;
    });
    rt.shutdown_timeout(Duration::from_secs(5));
}

#[test]
fn no_request_is_lost_under_flips_canary_changes_and_reloads() {
    warm_up();
    let fds_before = settled_fds();
    let rss_before = rss();
    let gw_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (blue, green, red) = gw_rt.block_on(async {
        (
            spawn_upstream("blue").await,
            spawn_upstream("green").await,
            spawn_upstream("red").await,
        )
    });
    let file = |comment: &str| {
        format!(
            "# {comment}\n{}",
            config(
                "blue",
                &[
                    ("blue", blue.addr),
                    ("green", green.addr),
                    ("red", red.addr)
                ],
                "",
            )
        )
    };
    let gw = gw_rt.block_on(Gw::start(&file("a")));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..CLIENTS {
        let (ok, bad, stop, url) = (ok.clone(), bad.clone(), stop.clone(), gw.url("/"));
        load.push(load_rt.spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let r = get(&c, &url, &[]).await;
                if r.status == 200 && matches!(r.text().as_str(), "blue" | "green") {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    eprintln!("lost: {} {:?}", r.status, r.text());
                    bad.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    let (flips, canaries, reloads) = load_rt.block_on(async {
        let c = client();
        let json = [("content-type", "application/json")];
        let (mut flips, mut canaries, mut reloads) = (0, 0, 0);
        for i in 0..100u32 {
            let (live, other) = if i % 2 == 0 {
                ("green", "blue")
            } else {
                ("blue", "green")
            };
            let url = gw.admin_url("/api/v1/routes/bot/flip");
            let body = format!("{{\"target\": \"{live}\"}}");
            let r = send(&c, "POST", &url, &json, body).await;
            assert_eq!(r.status, 200, "flip: {}", r.text());
            flips += 1;
            let url = gw.admin_url("/api/v1/routes/bot/canary");
            let body = format!("{{\"percent\": {}, \"target\": \"{other}\"}}", 1 + i % 50);
            let r = send(&c, "POST", &url, &json, body).await;
            assert_eq!(r.status, 200, "canary: {}", r.text());
            canaries += 1;
            if i % 2 == 0 {
                let before = gw.generation();
                write_atomic(&gw.file, &file(&format!("reload {i}")));
                wait_until("the rewritten file is applied", DEADLINE, || async {
                    gw.generation() > before
                })
                .await;
                reloads += 1;
            }
        }
        (flips, canaries, reloads)
    });
    stop.store(true, Ordering::Relaxed);
    for l in load {
        load_rt.block_on(l).unwrap();
    }
    let (ok, bad) = (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
    eprintln!(
        "zero loss: {ok} requests answered 200 by an eligible target, {bad} lost, during {flips} flips, {canaries} canary changes and {reloads} reloads"
    );
    assert_eq!((flips, canaries, reloads), (100, 100, 50));
    assert!(ok > 0);
    assert_eq!(bad, 0, "every request answered by an eligible target");
    assert_eq!(red.hits(), 0, "the ineligible target never got a request");

    gw_rt.block_on(gw.stop());
    drop(load_rt);
    gw_rt.shutdown_timeout(Duration::from_secs(5));
    let fds_after = settled_fds();
    let rss_after = rss();
    eprintln!(
        "descriptors: {fds_before} before, {fds_after} after; RSS {} KiB before, {} KiB after",
        rss_before / 1024,
        rss_after / 1024
    );
    assert_eq!(fds_after, fds_before, "every descriptor was given back");
    assert!(
        rss_after < rss_before + 64 * 1024 * 1024,
        "memory came back near its starting level"
    );
}
