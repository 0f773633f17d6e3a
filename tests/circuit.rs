//! Error-rate circuit: real gateways and upstreams on loopback (one of which fails a deterministic
//! share of requests via `fail_every`), plus control-plane-only tests on tokio's paused clock for
//! the time logic (window sliding, the task's own trip, the latency criterion).
mod support;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flipgate::control::circuit;
use flipgate::control::{Action, Control};
use support::*;

/// blue live, green canary at `percent` (0 = no canary section), with a circuit.
fn cfg(blue: &Upstream, green: &Upstream, percent: f64, circuit: &str) -> String {
    let canary = if percent > 0.0 {
        format!("[routes.canary]\ntarget = \"green\"\npercent = {percent}\n\n")
    } else {
        String::new()
    };
    config(
        "blue",
        &[("blue", blue.addr), ("green", green.addr)],
        &format!("{canary}[routes.circuit]\n{circuit}"),
    )
}

fn control(gw: &Gw) -> Arc<Control> {
    gw.gateway.as_ref().unwrap().control.clone()
}

fn route(gw: &Gw) -> flipgate::control::state::RouteState {
    control(gw)
        .snapshots()
        .load()
        .route("bot")
        .unwrap()
        .state
        .clone()
}

fn window(gw: &Gw, target: &str) -> flipgate::control::circuit::window::Totals {
    let snap = control(gw).snapshots().load_full();
    let r = snap.route("bot").unwrap();
    let t = r.targets.iter().find(|t| &*t.name == target).unwrap();
    t.window.totals(flipgate::clock::now_ms())
}

async fn status(c: &TestClient, gw: &Gw) -> serde_json::Value {
    get(c, &gw.admin_url("/api/v1/routes/bot"), &[])
        .await
        .json()
}

async fn post(c: &TestClient, gw: &Gw, verb: &str, body: &str) -> Resp {
    gw.act(c, verb, body).await
}

#[tokio::test]
async fn failing_canary_trips_at_the_threshold_and_traffic_returns_to_live() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    green.fail_every(2); // 50 % errors
    let gw = Gw::start(&cfg(
        &blue,
        &green,
        100.0,
        "window = \"60s\"\nmin_requests = 20\nmax_error_rate = 0.1\n",
    ))
    .await;
    let c = client();
    // Every request goes to the canary until the circuit trips. Below min_requests nothing trips
    // (the task runs all along); at min_requests the rate (50 %) is over 10 %, so it trips right at
    // the crossing: the very next evaluation, long before the window (60s) ends.
    for i in 1..=20u64 {
        let r = get(&c, &gw.url("/"), &[]).await;
        assert_eq!(r.headers["x-upstream"], "green", "request {i}");
        assert_eq!(window(&gw, "green").requests, i);
        if i < 20 {
            assert!(route(&gw).tripped.is_none(), "tripped below min_requests");
        }
    }
    circuit::check_all(&control(&gw)); // or the task already did
    let s = route(&gw);
    let trip = s.tripped.as_ref().expect("tripped at the threshold");
    assert_eq!(trip.target, "green");
    assert_eq!(trip.requests, 20);
    assert_eq!(trip.error_rate, 0.5);
    assert_eq!(s.canary_bp, 0);
    assert_eq!(s.canary_source, flipgate::control::state::Source::Circuit);
    assert_eq!(s.live, "blue");

    // All traffic is back on live, and stays there (it never re-promotes by itself).
    let green_hits = green.hits();
    for _ in 0..50 {
        assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");
    }
    circuit::check_all(&control(&gw));
    assert_eq!(green.hits(), green_hits);

    // Status tells why, when and where the value came from.
    let v = status(&c, &gw).await;
    assert_eq!(v["canary"]["percent"], 0.0);
    assert_eq!(v["canary"]["source"], "circuit");
    assert_eq!(v["circuit"]["state"], "tripped");
    assert_eq!(v["circuit"]["tripped"]["target"], "green");
    assert!(v["circuit"]["tripped"]["at"].as_u64().unwrap() > 0);
    assert!(v["circuit"]["tripped"]["reason"]
        .as_str()
        .unwrap()
        .contains("error rate 50.0%"));
    let metrics = get(&c, &gw.admin_url("/metrics"), &[]).await.text();
    assert!(metrics.contains("flipgate_circuit_tripped{route=\"bot\"} 1"));
    assert!(metrics.contains("flipgate_rollbacks_total{reason=\"circuit\",route=\"bot\"} 1"));

    // A deploy script's `promote` after a trip fails; its `|| rollback` changes nothing more.
    let r = post(&c, &gw, "promote", "").await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("tripped"));
    let r = post(&c, &gw, "rollback", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["live"], "blue");
    assert_eq!(r.json()["circuit"]["state"], "tripped");

    // An operator's flip clears the trip; the newly live target is watched during bake, from a
    // clean window.
    green.fail_every(0);
    let r = post(&c, &gw, "flip", r#"{"target":"green"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["live"], "green");
    assert!(v["circuit"]["tripped"].is_null());
    assert_eq!(v["circuit"]["state"], "watching");
    assert_eq!(v["circuit"]["candidate"], "green");
    assert_eq!(window(&gw, "green").requests, 0);
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "green");
    let metrics = get(&c, &gw.admin_url("/metrics"), &[]).await.text();
    assert!(metrics.contains("flipgate_circuit_tripped{route=\"bot\"} 0"));
    gw.stop().await;
}

#[tokio::test]
async fn failing_new_live_target_is_flipped_back_during_bake() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    green.fail_every(1);
    let gw = Gw::start(&cfg(
        &blue,
        &green,
        0.0,
        "window = \"60s\"\nmin_requests = 10\nmax_error_rate = 0.2\nbake = \"5m\"\n",
    ))
    .await;
    let c = client();
    let r = post(&c, &gw, "flip", "").await;
    assert_eq!(r.json()["live"], "green");
    assert_eq!(r.json()["circuit"]["state"], "watching");
    // Requests fail on green until the task (not the test) rolls back to blue.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut failed = 0;
    loop {
        let r = get(&c, &gw.url("/"), &[]).await;
        if r.status == 200 {
            assert_eq!(r.text(), "blue");
            break;
        }
        failed += 1;
        assert!(Instant::now() < deadline, "bake never tripped");
    }
    assert!(failed >= 10, "tripped before min_requests: {failed}");
    let s = route(&gw);
    assert_eq!(s.live, "blue");
    assert_eq!(s.live_source, flipgate::control::state::Source::Circuit);
    assert!(
        s.previous.is_none(),
        "the failed target is not a rollback target"
    );
    assert_eq!(s.tripped.as_ref().unwrap().target, "green");
    assert!(s.tripped.as_ref().unwrap().reason.contains("during bake"));
    for _ in 0..20 {
        assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");
    }
    // Reset clears the trip but keeps the split (blue), and nothing is watched any more.
    let r = post(&c, &gw, "reset", "").await;
    assert_eq!(r.json()["live"], "blue");
    assert_eq!(r.json()["circuit"]["state"], "idle");
    gw.stop().await;
}

#[tokio::test]
async fn below_min_requests_nothing_trips() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    green.fail_every(1); // 100 % errors
    let gw = Gw::start(&cfg(
        &blue,
        &green,
        100.0,
        "window = \"60s\"\nmin_requests = 20\nmax_error_rate = 0.05\n",
    ))
    .await;
    let c = client();
    for _ in 0..19 {
        assert_eq!(get(&c, &gw.url("/"), &[]).await.status, 500);
    }
    assert_eq!(circuit::check_all(&control(&gw)), 0);
    let s = route(&gw);
    assert!(s.tripped.is_none());
    assert_eq!(s.canary_bp, 10_000);
    assert_eq!(status(&c, &gw).await["circuit"]["state"], "watching");
    // The 20th failure crosses the threshold.
    get(&c, &gw.url("/"), &[]).await;
    circuit::check_all(&control(&gw));
    assert!(route(&gw).tripped.is_some());
    gw.stop().await;
}

#[tokio::test]
async fn compare_live_ignores_a_shared_outage_but_not_a_worse_canary() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    blue.fail_every(2);
    green.fail_every(2);
    let gw = Gw::start(&cfg(
        &blue,
        &green,
        50.0,
        "window = \"60s\"\nmin_requests = 20\nmax_error_rate = 0.2\ncompare = \"live\"\n",
    ))
    .await;
    let c = client();
    for _ in 0..200 {
        get(&c, &gw.url("/"), &[]).await;
    }
    assert!(window(&gw, "green").requests >= 20);
    assert!(window(&gw, "green").error_rate() > 0.4);
    assert_eq!(circuit::check_all(&control(&gw)), 0);
    assert!(
        route(&gw).tripped.is_none(),
        "shared outage blamed the canary"
    );
    assert_eq!(route(&gw).canary_bp, 5_000);

    // Now only the canary gets worse: 100 % vs 50 % is 50 points over live, more than 20.
    green.fail_every(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while route(&gw).tripped.is_none() {
        get(&c, &gw.url("/"), &[]).await;
        assert!(Instant::now() < deadline, "worse canary never tripped");
    }
    assert!(route(&gw)
        .tripped
        .unwrap()
        .reason
        .contains("exceeds live's"));
    gw.stop().await;
}

#[tokio::test]
async fn measure_error_onset_to_rollback() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let gw = Gw::start(&cfg(
        &blue,
        &green,
        50.0,
        "window = \"30s\"\nmin_requests = 20\nmax_error_rate = 0.05\n",
    ))
    .await;
    let c = client();
    for _ in 0..20 {
        assert_eq!(get(&c, &gw.url("/"), &[]).await.status, 200);
    }
    // Onset: green starts failing every request. One client keeps sending; the circuit task
    // decides on its own.
    green.fail_every(1);
    let onset = Instant::now();
    let mut sent = 0u64;
    let mut failed = 0u64;
    let mut crossed = None;
    let deadline = onset + Duration::from_secs(30);
    while route(&gw).tripped.is_none() {
        let r = get(&c, &gw.url("/"), &[]).await;
        sent += 1;
        if r.status != 200 {
            failed += 1;
        }
        if crossed.is_none() && window(&gw, "green").error_rate() > 0.05 {
            crossed = Some(onset.elapsed());
        }
        assert!(Instant::now() < deadline, "never tripped");
    }
    let tripped = onset.elapsed();
    for _ in 0..20 {
        assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");
    }
    eprintln!(
        "MEASURE error onset -> rollback {tripped:?} (threshold crossed after {crossed:?}; {sent} requests sent, {failed} failed = {:.1}% of requests during the incident; min_requests 20, poll {:?}, window 30s => rollback took {:.4} of one window)",
        failed as f64 * 100.0 / sent as f64,
        circuit::POLL,
        tripped.as_secs_f64() / 30.0
    );
    gw.stop().await;
}

// ---- control plane only, on tokio's paused clock ----

fn paused_control(dir: &std::path::Path, circuit: &str) -> Arc<Control> {
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"state\"\n[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:9\"]\ngreen = [\"127.0.0.1:9\"]\n[routes.canary]\ntarget = \"green\"\npercent = 10\n[routes.circuit]\n{circuit}"
    );
    let path = dir.join("flipgate.toml");
    std::fs::write(&path, &text).unwrap();
    let config = flipgate::config::Config::load(&path).unwrap();
    Control::new(config, Arc::new(flipgate::observe::metrics::Metrics::new())).unwrap()
}

/// The circuit the task tests judge: 20 requests in 30 s, trips above 5 % errors.
const JUDGED: &str = "window = \"30s\"\nmin_requests = 20\nmax_error_rate = 0.05\n";

/// Starts the circuit task; sending `true` on the returned sender stops it.
fn spawn_task(
    control: &Arc<Control>,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, rx) = tokio::sync::watch::channel(false);
    (stop, tokio::spawn(circuit::run(control.clone(), rx)))
}

fn record(control: &Control, target: &str, n: u64, error: bool, latency_ms: u64) {
    let snap = control.snapshots().load_full();
    let t = snap
        .route("bot")
        .unwrap()
        .targets
        .iter()
        .find(|t| &*t.name == target)
        .unwrap()
        .clone();
    for _ in 0..n {
        t.window
            .record(flipgate::clock::now_ms(), error, latency_ms);
    }
}

fn tripped(control: &Control) -> Option<flipgate::control::state::Trip> {
    control
        .snapshots()
        .load()
        .route("bot")
        .unwrap()
        .state
        .tripped
        .clone()
}

#[tokio::test(start_paused = true)]
async fn errors_age_out_of_the_sliding_window() {
    let dir = tempfile::tempdir().unwrap();
    let control = paused_control(
        dir.path(),
        "window = \"10s\"\nmin_requests = 20\nmax_error_rate = 0.1\n",
    );
    // 20 failures, then the window slides past them: nothing left to judge.
    record(&control, "green", 20, true, 1);
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(circuit::check_all(&control), 0);
    // Half the window later, 10 old failures would still count; here 20 fresh successes and 1
    // failure (4.8 %) stay under 10 %.
    record(&control, "green", 20, false, 1);
    record(&control, "green", 1, true, 1);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(circuit::check_all(&control), 0);
    // 2 more failures in the same window: 3 of 23 = 13 % > 10 %.
    record(&control, "green", 2, true, 1);
    assert_eq!(circuit::check_all(&control), 1);
    assert_eq!(tripped(&control).unwrap().requests, 23);
}

#[tokio::test(start_paused = true)]
async fn the_task_trips_on_its_own_within_a_tick() {
    let dir = tempfile::tempdir().unwrap();
    let control = paused_control(dir.path(), JUDGED);
    let (stop, task) = spawn_task(&control);
    record(&control, "green", 20, true, 1);
    let start = tokio::time::Instant::now();
    // Virtual time: each sleep auto-advances the paused clock.
    while tripped(&control).is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "task never tripped"
        );
    }
    // Within one poll of the failures being recorded, not a whole tick.
    assert!(
        start.elapsed() <= circuit::POLL * 2,
        "{:?}",
        start.elapsed()
    );
    // Persisted right after it was published.
    let file = dir.path().join("state/state.json");
    wait_until("trip persisted", Duration::from_secs(5), || async {
        std::fs::read_to_string(&file).is_ok_and(|s| s.contains("\"tripped\": {"))
    })
    .await;
    let _ = stop.send(true);
    task.await.unwrap();
}

/// While a canary is judged the task runs no short timer (a 5 ms poll woke a sidecar with a canary
/// configured 200 times a second): the first errors wake it as they are recorded, and are judged
/// at once, not at the next tick or poll.
#[tokio::test(start_paused = true)]
async fn errors_are_judged_as_soon_as_recorded_between_ticks() {
    let dir = tempfile::tempdir().unwrap();
    let control = paused_control(dir.path(), JUDGED);
    let (stop, task) = spawn_task(&control);
    // Healthy traffic, then the task idles between ticks: half-way to the next one (and 1 ms past
    // a multiple of the old 5 ms poll), record the failures.
    record(&control, "green", 20, false, 1);
    let offset = circuit::TICK * 10 + circuit::TICK / 2 + Duration::from_millis(1);
    tokio::time::sleep(offset).await;
    assert!(tripped(&control).is_none());
    record(&control, "green", 20, true, 1);
    let start = tokio::time::Instant::now();
    while tripped(&control).is_none() {
        // Lets the woken task run; the paused clock moves only when every task waits.
        tokio::time::sleep(Duration::from_micros(100)).await;
        assert!(start.elapsed() < Duration::from_secs(30), "never tripped");
    }
    assert!(
        start.elapsed() < circuit::POLL / 2,
        "judged {:?} after the errors (tick {:?})",
        start.elapsed(),
        circuit::TICK
    );
    let _ = stop.send(true);
    task.await.unwrap();
}

/// With no candidate to judge the task waits for the control plane instead of polling; a canary
/// set later wakes it, and errors then trip within a poll as before.
#[tokio::test(start_paused = true)]
async fn the_task_waits_while_nothing_is_judged_and_wakes_for_a_new_canary() {
    use flipgate::control::Action;
    let dir = tempfile::tempdir().unwrap();
    let control = paused_control(dir.path(), JUDGED);
    control.act("bot", Action::Rollback).unwrap();
    let (stop, task) = spawn_task(&control);
    // Nothing is judged: green's errors are not a candidate's.
    record(&control, "green", 20, true, 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(tripped(&control).is_none());
    control
        .act(
            "bot",
            Action::Canary {
                percent: 10.0,
                target: Some("green".into()),
            },
        )
        .unwrap();
    // The canary starts on a fresh window; its errors trip within a poll.
    record(&control, "green", 20, true, 1);
    let start = tokio::time::Instant::now();
    while tripped(&control).is_none() {
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(start.elapsed() < Duration::from_secs(30), "never tripped");
    }
    assert!(
        start.elapsed() <= circuit::POLL * 2,
        "{:?}",
        start.elapsed()
    );
    let _ = stop.send(true);
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn latency_criterion_trips_on_p99() {
    let dir = tempfile::tempdir().unwrap();
    let control = paused_control(
        dir.path(),
        "window = \"30s\"\nmin_requests = 20\nmax_error_rate = 0.5\nmax_p99 = \"800ms\"\n",
    );
    // 1 slow request in 100 is the p99 itself: fine.
    record(&control, "green", 99, false, 100);
    record(&control, "green", 1, false, 900);
    assert_eq!(circuit::check_all(&control), 0);
    // A second one puts p99 above the bound.
    record(&control, "green", 1, false, 900);
    assert_eq!(circuit::check_all(&control), 1);
    assert!(tripped(&control).unwrap().reason.contains("p99 latency"));
}

#[tokio::test(start_paused = true)]
async fn a_trip_racing_an_operator_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let control = paused_control(dir.path(), JUDGED);
    record(&control, "green", 20, true, 1);
    let snap = control.snapshots().load_full();
    let (candidate, trip, kind) = circuit::evaluate(
        snap.route("bot").unwrap(),
        None,
        flipgate::clock::now_ms(),
        flipgate::control::unix_ms(),
    )
    .expect("would trip");
    // The operator promotes first; the stale verdict about the canary must not roll back the
    // promotion.
    let seen = snap.route("bot").unwrap().state.clone();
    control.act("bot", Action::Promote).unwrap();
    assert_eq!(kind, "circuit");
    assert!(!control.trip(
        "bot",
        &seen,
        &candidate,
        trip,
        kind,
        flipgate::control::unix_ms()
    ));
    // And the promoted target bakes from a clean window, not on its canary-phase failures.
    assert_eq!(circuit::check_all(&control), 0);
    let s = control
        .snapshots()
        .load()
        .route("bot")
        .unwrap()
        .state
        .clone();
    assert_eq!(s.live, "green");
    assert!(s.tripped.is_none());
}

#[tokio::test]
async fn upstream_4xx_and_client_aborts_are_not_errors() {
    use tokio::io::AsyncWriteExt;
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let gw = Gw::start(&cfg(
        &blue,
        &green,
        100.0,
        "window = \"60s\"\nmin_requests = 5\nmax_error_rate = 0.1\n",
    ))
    .await;
    let c = client();
    for code in [400, 404, 429, 499] {
        for _ in 0..5 {
            let r = get(&c, &gw.url(&format!("/status/{code}")), &[]).await;
            assert_eq!(r.status, code);
        }
    }
    // A client that gives up while green is still working on its request.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /hold HTTP/1.1\r\nhost: bot\r\n\r\n")
        .await
        .unwrap();
    wait_until("request reached green", Duration::from_secs(5), || async {
        green.holding.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    drop(s);
    green.release();
    circuit::check_all(&control(&gw));
    let w = window(&gw, "green");
    assert_eq!(w.errors, 0, "{w:?}");
    assert!(w.requests >= 20);
    assert!(route(&gw).tripped.is_none());
    gw.stop().await;
}

#[tokio::test(start_paused = true)]
async fn bake_ends_after_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let control = paused_control(
        dir.path(),
        "window = \"30s\"\nmin_requests = 20\nmax_error_rate = 0.05\nbake = \"5m\"\n",
    );
    control
        .act(
            "bot",
            Action::Flip {
                target: Some("green".into()),
            },
        )
        .unwrap();
    let until = control
        .snapshots()
        .load()
        .route("bot")
        .unwrap()
        .state
        .bake_until_unix_ms
        .expect("baking");
    record(&control, "green", 20, true, 1);
    let now_ms = flipgate::clock::now_ms();
    // After the bake the new live target is no longer judged: no rollback.
    assert_eq!(circuit::check_all_at(&control, now_ms, until), 0);
    assert!(tripped(&control).is_none());
    // During the bake it is.
    assert_eq!(circuit::check_all_at(&control, now_ms, until - 1), 1);
    assert_eq!(
        control.snapshots().load().route("bot").unwrap().state.live,
        "blue"
    );
}
