//! Sequential analysis on loopback: real gateways and upstreams (`tests/support`), one failing a
//! deterministic share of requests (`fail_every`) or answering 300 ms late, the circuit evaluated
//! by `check_all` after each request where the count at the trip matters, and by its own task
//! otherwise (waited on with deadlines). `--require-healthy` is exercised through the CLI binary
//! and the admin API, the idle target fed through the route's preview header or by shadow copies.
mod support;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flipgate::control::circuit;
use flipgate::control::Control;
use http_body_util::Full;
use support::*;

fn control(gw: &Gw) -> Arc<Control> {
    gw.gateway.as_ref().unwrap().control.clone()
}

fn tripped(gw: &Gw) -> Option<flipgate::control::state::Trip> {
    control(gw)
        .snapshots()
        .load()
        .route("bot")
        .unwrap()
        .state
        .tripped
        .clone()
}

/// blue live and green a 5 % sticky canary failing every other request, under `circuit`; sends
/// the same users (`x-user-id` 0, 1, ...) one by one, judging after each, until the circuit
/// trips. Returns the gateway and the canary's requests at the trip.
async fn canary_requests_to_trip(circuit_lines: &str) -> (Gw, u64) {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    green.fail_every(2);
    let gw = Gw::start(&config(
        "blue",
        &[("blue", blue.addr), ("green", green.addr)],
        &format!(
            "[routes.canary]\ntarget = \"green\"\npercent = 5.0\nsticky = \"header:x-user-id\"\n\n\
             [routes.circuit]\nwindow = \"60s\"\nmin_requests = 20\nmax_error_rate = 0.1\ncompare = \"live\"\n{circuit_lines}"
        ),
    ))
    .await;
    let c = client();
    for user in 0..20_000u64 {
        get(&c, &gw.url("/"), &[("x-user-id", &user.to_string())]).await;
        circuit::check_all(&control(&gw));
        if let Some(t) = tripped(&gw) {
            return (gw, t.requests);
        }
    }
    panic!("no trip in 20,000 requests");
}

#[tokio::test]
async fn sequential_trips_a_failing_canary_on_fewer_requests_than_the_threshold() {
    let (gw_t, threshold) = canary_requests_to_trip("").await;
    let (gw_s, sequential) = canary_requests_to_trip("mode = \"sequential\"\n").await;
    println!("canary requests at the trip: sequential {sequential}, threshold {threshold}");
    assert_eq!(threshold, 20, "the threshold waits for min_requests");
    assert!(
        sequential < threshold,
        "sequential tripped after {sequential} canary requests, threshold after {threshold}"
    );
    let trip = tripped(&gw_s).unwrap();
    assert!(trip.reason.contains("sequential test"), "{}", trip.reason);
    assert_eq!(
        metric(&gw_s, "flipgate_rollbacks_total", "reason=\"sequential\"").await,
        1.0
    );
    assert_eq!(
        metric(&gw_t, "flipgate_rollbacks_total", "reason=\"circuit\"").await,
        1.0
    );
    // The route's view carries the analysis; after the trip nothing is judged.
    let v = get(&client(), &gw_s.admin_url("/api/v1/routes/bot"), &[])
        .await
        .json();
    assert_eq!(v["analysis"]["mode"], "sequential");
    assert_eq!(v["analysis"]["detect"], "2x");
    assert!(v["analysis"]["candidate"].is_null());
    let text = get(&client(), &gw_s.admin_url("/metrics"), &[])
        .await
        .text();
    assert!(text.contains("flipgate_analysis_evidence{kind=\"errors\",route=\"bot\"}"));
    gw_t.stop().await;
    gw_s.stop().await;
}

#[tokio::test]
async fn the_api_shows_the_running_evidence() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let gw = Gw::start(&config(
        "blue",
        &[("blue", blue.addr), ("green", green.addr)],
        "[routes.canary]\ntarget = \"green\"\npercent = 50.0\n\n[routes.circuit]\nmode = \"sequential\"\ncompare = \"live\"\nmax_latency_ratio = 1.5\n",
    ))
    .await;
    let c = client();
    for _ in 0..40 {
        get(&c, &gw.url("/"), &[]).await;
    }
    circuit::check_all(&control(&gw));
    for _ in 0..40 {
        get(&c, &gw.url("/"), &[]).await;
    }
    circuit::check_all(&control(&gw));
    let v = get(&c, &gw.admin_url("/api/v1/routes/bot"), &[])
        .await
        .json();
    let a = &v["analysis"];
    assert_eq!(a["candidate"], "green", "{a}");
    assert_eq!(a["against"], "live");
    assert!(a["requests_seen"].as_u64().unwrap() > 0, "{a}");
    assert!(a["errors"]["worse_at"].as_f64().unwrap() > 2.99);
    assert!(a["errors"]["not_worse_at"].as_f64().unwrap() > 0.69);
    assert!(a["latency"]["worse"].is_number(), "{a}");
    // Both targets are healthy, so how far the evidence got in 80 requests depends on the split
    // and on loopback timing; what must hold is that the decision is the one the shown evidence
    // and bars imply.
    let at = |kind: &str, side: &str| a[kind][side].as_f64().unwrap();
    let reached = |kind: &str, side: &str| at(kind, side) >= at(kind, &format!("{side}_at"));
    let expected = if reached("errors", "worse") || reached("latency", "worse") {
        "worse"
    } else if reached("errors", "not_worse") && reached("latency", "not_worse") {
        "not_worse"
    } else {
        "undecided"
    };
    assert_eq!(a["decision"], expected, "{a}");
    assert!(!reached("errors", "worse"), "no request failed: {a}");
    gw.stop().await;
}

/// An upstream answering 200 `name` after `delay`: the slow deployment of a bot.
async fn slow_upstream(name: &'static str, delay: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(name))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_slow_canary_trips_on_latency() {
    let blue = spawn_upstream("blue").await;
    let green = slow_upstream("green", Duration::from_millis(300)).await;
    let gw = Gw::start(&config(
        "blue",
        &[("blue", blue.addr), ("green", green)],
        "[routes.canary]\ntarget = \"green\"\npercent = 50.0\nsticky = \"header:x-user-id\"\n\n\
         [routes.circuit]\nmode = \"sequential\"\ncompare = \"live\"\nmax_latency_ratio = 1.5\nlatency_quantile = 0.9\n",
    ))
    .await;
    let c = client();
    let mut user = 0u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Batches of 20 concurrent users (half of them on the slow canary) until the task trips it.
    while tripped(&gw).is_none() {
        assert!(std::time::Instant::now() < deadline, "no latency trip");
        let batch = (0..20).map(|_| {
            user += 1;
            let (c, url, id) = (c.clone(), gw.url("/"), user.to_string());
            async move { get(&c, &url, &[("x-user-id", &id)]).await }
        });
        for r in futures_util::future::join_all(batch).await {
            assert_eq!(r.status, 200);
        }
    }
    let trip = tripped(&gw).unwrap();
    assert_eq!(trip.target, "green");
    assert!(
        trip.reason.contains("slower than 1.5x live's p90"),
        "{}",
        trip.reason
    );
    assert_eq!(trip.error_rate, 0.0);
    assert_eq!(
        metric(&gw, "flipgate_rollbacks_total", "reason=\"latency\"").await,
        1.0
    );
    gw.stop().await;
}

/// Runs `flipgate ARGS --admin ADDR`; (exit code, stdout + stderr).
async fn fg(gw: &Gw, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flipgate"))
        .args(args)
        .arg("--admin")
        .arg(gw.admin.to_string())
        .env_remove("FLIPGATE_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn require_healthy_refuses_failing_or_unproven_targets_and_allows_a_healthy_one() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let red = spawn_upstream("red").await;
    red.fail_every(2);
    let gw = Gw::start(&config(
        "blue",
        &[("blue", blue.addr), ("green", green.addr), ("red", red.addr)],
        "[routes.preview]\n\n[routes.circuit]\ncompare = \"live\"\nwindow = \"60s\"\nmin_requests = 20\ndetect_points = 1.0\n",
    ))
    .await;
    let c = client();

    // Nothing seen of green yet: refused, with how much is missing.
    let (code, out) = fg(&gw, &["flip", "bot", "green", "--require-healthy"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("not enough evidence: 0 requests seen"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1, "one line: {out}");

    // Live serves users; testers reach green and red through the preview header.
    for _ in 0..300 {
        assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");
    }
    for _ in 0..300 {
        let r = get(&c, &gw.url("/"), &[("x-flipgate-target", "green")]).await;
        assert_eq!(r.text(), "green");
    }
    for _ in 0..40 {
        get(&c, &gw.url("/"), &[("x-flipgate-target", "red")]).await;
    }

    // Red fails half its requests: refused as failing, by the CLI and by the API (409).
    let (code, out) = fg(&gw, &["flip", "bot", "red", "--require-healthy"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("`red`: failing: target error rate 50.0%"),
        "{out}"
    );
    let r = gw
        .act(&c, "flip", r#"{"target": "red", "require_healthy": true}"#)
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    let r = gw
        .act(
            &c,
            "rollout",
            r#"{"target": "red", "require_healthy": true}"#,
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    // A canary on red can be started, but not promoted with the flag (as a canary it starts a
    // fresh window: judged on what it does in that role, it has no evidence yet).
    assert_eq!(
        gw.act(&c, "canary", r#"{"percent": 1, "target": "red"}"#)
            .await
            .status,
        200
    );
    let r = gw.act(&c, "promote", r#"{"require_healthy": true}"#).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("refused (--require-healthy): `red`: not enough evidence"),
        "{}",
        r.text()
    );
    assert_eq!(gw.act(&c, "rollback", "").await.status, 200);
    let v = get(&c, &gw.admin_url("/api/v1/routes/bot"), &[])
        .await
        .json();
    assert_eq!(v["live"], "blue", "nothing refused changed the route");

    // Green served 300 requests without an error, as live did: allowed.
    let (code, out) = fg(&gw, &["flip", "bot", "green", "--require-healthy"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "green");
    gw.stop().await;
}

#[tokio::test]
async fn a_rollout_step_proven_not_worse_advances_before_its_hold_ends() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let gw = Gw::start(&config(
        "blue",
        &[("blue", blue.addr), ("green", green.addr)],
        "[routes.circuit]\nmode = \"sequential\"\ncompare = \"live\"\nmin_requests = 20\ndetect_points = 1.0\n",
    ))
    .await;
    let c = client();
    let r = gw
        .act(
            &c,
            "rollout",
            r#"{"target": "green", "steps": [50, 100], "hold": "1h", "min_requests_per_step": 20}"#,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    // An hour's hold, but both targets serve cleanly: the evidence proves green not worse (about
    // 160 clean canary requests at these settings) and the rollout promotes long before.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = get(&c, &gw.admin_url("/api/v1/routes/bot"), &[])
            .await
            .json();
        if v["rollout"]["state"] == "promoted" {
            assert_eq!(v["live"], "green");
            break;
        }
        assert_eq!(v["rollout"]["state"], "running", "{v}");
        assert!(std::time::Instant::now() < deadline, "not promoted: {v}");
        for _ in 0..20 {
            assert_eq!(get(&c, &gw.url("/"), &[]).await.status, 200);
        }
    }
    gw.stop().await;
}

/// Dark launch, end to end: green only ever receives shadow copies of live's requests. While
/// green fails half of them, every live answer is still blue's 200 and `flip --require-healthy`
/// refuses green as failing; a green that answers its copies cleanly is allowed by the same
/// command.
#[tokio::test]
async fn a_failing_shadow_target_blocks_require_healthy_and_a_healthy_one_allows_it() {
    for failing in [true, false] {
        let blue = spawn_upstream("blue").await;
        let green = spawn_upstream("green").await;
        if failing {
            green.fail_every(2);
        }
        let gw = Gw::start(&config(
            "blue",
            &[("blue", blue.addr), ("green", green.addr)],
            "[routes.shadow]\ntarget = \"green\"\npercent = 100\n\n\
             [routes.circuit]\ncompare = \"live\"\nwindow = \"60s\"\nmin_requests = 20\ndetect_points = 1.0\n",
        ))
        .await;
        let c = client();
        for _ in 0..300 {
            let r = get(&c, &gw.url("/"), &[]).await;
            assert_eq!((r.status, r.text()), (200, "blue".to_string()));
        }
        let green_window = || async {
            let v = get(&client(), &gw.admin_url("/api/v1/routes/bot"), &[])
                .await
                .json();
            let t = v["targets"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["name"] == "green")
                .unwrap()
                .clone();
            (
                t["window"]["requests"].as_u64().unwrap(),
                t["window"]["errors"].as_u64().unwrap(),
            )
        };
        wait_until(
            "300 copies judged at green",
            Duration::from_secs(20),
            || async { green_window().await.0 >= 300 },
        )
        .await;
        let judged = green_window().await;
        let (code, out) = fg(&gw, &["flip", "bot", "green", "--require-healthy"]).await;
        if failing {
            assert_eq!(judged, (300, 150));
            assert_eq!(code, 1, "{out}");
            assert!(out.contains("`green`: failing"), "{out}");
            assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");
        } else {
            assert_eq!(judged, (300, 0));
            assert_eq!(code, 0, "{out}");
            assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "green");
        }
        gw.stop().await;
    }
}
