//! Admin API: every error status answers JSON, unauthenticated mutations change nothing, a change
//! is persisted and visible to the very next request, in-flight requests finish where they started,
//! and flip/canary/promote/rollback/reset follow SPEC.md.
mod support;
use std::time::{Duration, Instant};

use support::*;

const TOKEN: &str = "s3cret-token";

/// A gateway over blue (live) and green whose admin API requires `TOKEN` (from a token file).
async fn gw_with_token(blue: &Upstream, green: &Upstream, extra: &str) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let cfg = config("blue", &[("blue", blue.addr), ("green", green.addr)], extra)
        .replace("[admin]\n", "[admin]\ntoken_file = \"admin.token\"\n");
    Gw::start_in(dir, &cfg).await
}

async fn post(c: &TestClient, gw: &Gw, path: &str, token: Option<&str>, body: &str) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    send(c, "POST", &gw.admin_url(path), &headers, body.to_string()).await
}

fn state_file(gw: &Gw) -> String {
    std::fs::read_to_string(gw.dir.path().join("state/state.json")).unwrap()
}

fn assert_json_error(r: &Resp, status: u16, contains: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/json",
        "{}",
        r.text()
    );
    let err = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        err.contains(contains),
        "error `{err}` should mention `{contains}`"
    );
}

#[tokio::test]
async fn every_error_status_is_json() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let gw = gw_with_token(&blue, &green, "").await;
    let c = client();
    let t = Some(TOKEN);

    let r = post(&c, &gw, "/api/v1/routes/bot/flip", None, "").await;
    assert_json_error(&r, 401, "bearer token");
    let r = post(&c, &gw, "/api/v1/routes/bot/flip", Some("wrong"), "").await;
    assert_json_error(&r, 401, "bearer token");
    let r = post(&c, &gw, "/api/v1/routes/bot/flip", Some("s3cret-toke"), "").await;
    assert_json_error(&r, 401, "bearer token");

    let r = get(&c, &gw.admin_url("/api/v1/routes/nope"), &[]).await;
    assert_json_error(&r, 404, "unknown route `nope`");
    let r = post(&c, &gw, "/api/v1/routes/nope/flip", t, "").await;
    assert_json_error(&r, 404, "unknown route `nope`");
    let r = post(&c, &gw, "/api/v1/routes/bot/explode", t, "").await;
    assert_json_error(&r, 404, "unknown action");
    let r = get(&c, &gw.admin_url("/api/v1/nothing"), &[]).await;
    assert_json_error(&r, 404, "no such endpoint");

    let r = post(&c, &gw, "/api/v1/routes/bot/flip", t, r#"{"target":"red"}"#).await;
    assert_json_error(&r, 422, "no target `red`");
    let r = post(
        &c,
        &gw,
        "/api/v1/routes/bot/canary",
        t,
        r#"{"percent":101}"#,
    )
    .await;
    assert_json_error(&r, 422, "between 0 and 100");
    let r = post(&c, &gw, "/api/v1/routes/bot/canary", t, r#"{"percent":-1}"#).await;
    assert_json_error(&r, 422, "between 0 and 100");
    let r = post(
        &c,
        &gw,
        "/api/v1/routes/bot/canary",
        t,
        r#"{"percent":5,"target":"blue"}"#,
    )
    .await;
    assert_json_error(&r, 422, "is the live target");
    let r = post(&c, &gw, "/api/v1/routes/bot/rollback", t, "").await;
    assert_json_error(&r, 422, "nothing to roll back to");
    let r = post(&c, &gw, "/api/v1/routes/bot/promote", t, "").await;
    assert_json_error(&r, 422, "no running canary");

    let r = post(&c, &gw, "/api/v1/routes/bot/canary", t, r#"{"percent":"#).await;
    assert_json_error(&r, 400, "bad JSON");
    let r = post(
        &c,
        &gw,
        "/api/v1/routes/bot/canary",
        t,
        r#"{"percent":"5"}"#,
    )
    .await;
    assert_json_error(&r, 400, "bad JSON");
    let r = post(&c, &gw, "/api/v1/routes/bot/canary", t, "").await;
    assert_json_error(&r, 400, "bad JSON");
    let r = post(
        &c,
        &gw,
        "/api/v1/routes/bot/flip",
        t,
        r#"{"targte":"green"}"#,
    )
    .await;
    assert_json_error(&r, 400, "unknown field");
    let r = post(&c, &gw, "/api/v1/routes/bot/reset", t, "{oops").await;
    assert_json_error(&r, 400, "bad JSON");

    let r = send(&c, "DELETE", &gw.admin_url("/api/v1/routes/bot"), &[], "").await;
    assert_json_error(&r, 405, "method not allowed");

    // None of that changed anything.
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");
    let v = get(&c, &gw.admin_url("/api/v1/routes/bot"), &[])
        .await
        .json();
    assert_eq!(v["live"], "blue");
    assert_eq!(v["live_source"], "file");
    gw.stop().await;
}

#[tokio::test]
async fn unauthenticated_post_changes_nothing() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let gw = gw_with_token(&blue, &green, "").await;
    let c = client();
    let generation = gw.generation();
    let before = state_file(&gw);
    for verb in ["flip", "promote", "rollback", "reset"] {
        let r = post(&c, &gw, &format!("/api/v1/routes/bot/{verb}"), None, "").await;
        assert_eq!(r.status, 401, "{verb}: {}", r.text());
    }
    let r = post(
        &c,
        &gw,
        "/api/v1/routes/bot/canary",
        Some("Bearer"),
        r#"{"percent":50}"#,
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(gw.generation(), generation);
    assert_eq!(state_file(&gw), before);
    for _ in 0..20 {
        assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");
    }
    assert_eq!(green.hits(), 0);
    // Reads need no token.
    let r = get(&c, &gw.admin_url("/api/v1/routes"), &[]).await;
    assert_eq!(r.status, 200);
    // With the token the same call works (the scheme is case-insensitive).
    let auth = format!("bearer {TOKEN}");
    let r = send(
        &c,
        "POST",
        &gw.admin_url("/api/v1/routes/bot/flip"),
        &[("authorization", auth.as_str())],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["live"], "green");
    gw.stop().await;
}

#[tokio::test]
async fn no_token_refuses_non_loopback_admin() {
    let blue = spawn_upstream("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    let cfg = config("blue", &[("blue", blue.addr)], "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"0.0.0.0:0\"",
    );
    write_atomic(&file, &cfg);
    match flipgate::Gateway::start(&file).await {
        Err(flipgate::StartError::Admin(e)) => {
            assert!(e.to_string().contains("no admin token"), "{e}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("must refuse an unauthenticated non-loopback admin listener"),
    }
}

#[tokio::test]
async fn change_is_durable_and_visible_to_the_next_request() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let gw = gw_with_token(&blue, &green, "").await;
    let c = client();
    let t = Some(TOKEN);

    // A request in flight on blue when the flip lands finishes on blue.
    let held = {
        let c = c.clone();
        let url = gw.url("/hold");
        tokio::spawn(async move { get(&c, &url, &[]).await })
    };
    wait_until("request held by blue", Duration::from_secs(5), || async {
        blue.holding.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;

    let mut latencies = Vec::new();
    for i in 0..20 {
        let to = if i % 2 == 0 { "green" } else { "blue" };
        let r = post(
            &c,
            &gw,
            "/api/v1/routes/bot/flip",
            t,
            &format!(r#"{{"target":"{to}"}}"#),
        )
        .await;
        let returned = Instant::now();
        assert_eq!(r.status, 200, "{}", r.text());
        // Durable before the call returned.
        let state: serde_json::Value = serde_json::from_str(&state_file(&gw)).unwrap();
        assert_eq!(state["routes"]["bot"]["state"]["live"], to);
        // The very next request follows it.
        let next = get(&c, &gw.url("/"), &[]).await;
        latencies.push(returned.elapsed());
        assert_eq!(next.text(), to, "flip {i}");
    }
    blue.release();
    let r = held.await.unwrap();
    assert_eq!(r.text(), "blue", "in-flight request finishes on its target");

    latencies.sort();
    eprintln!(
        "MEASURE flip-to-effect (API returned -> first response from the new target, {} flips): median {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    gw.stop().await;
}

#[tokio::test]
async fn flip_canary_promote_rollback_reset_follow_spec() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let gw = gw_with_token(&blue, &green, "").await;
    let c = client();
    let t = Some(TOKEN);
    let gen0 = gw.generation();

    // Canary 100 % to green (default target: the only other one); status says where it came from.
    let r = post(
        &c,
        &gw,
        "/api/v1/routes/bot/canary",
        t,
        r#"{"percent":100}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["canary"]["target"], "green");
    assert_eq!(v["canary"]["percent"], 100.0);
    assert_eq!(v["canary"]["source"], "admin");
    assert_eq!(v["live_source"], "file");
    assert!(v["generation"].as_u64().unwrap() > gen0);
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "green");

    // Rollback during a canary: percent to 0, live untouched.
    let r = post(&c, &gw, "/api/v1/routes/bot/rollback", t, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["canary"]["percent"], 0.0);
    assert_eq!(r.json()["canary"]["source"], "admin");
    assert_eq!(r.json()["live"], "blue");
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");

    // Canary then promote: green live, blue previous, canary gone.
    post(&c, &gw, "/api/v1/routes/bot/canary", t, r#"{"percent":5}"#).await;
    let r = post(&c, &gw, "/api/v1/routes/bot/promote", t, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["live"], "green");
    assert_eq!(v["live_source"], "admin");
    assert_eq!(v["previous"], "blue");
    assert!(v["canary"].is_null());
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "green");

    // Rollback after a promote: live back to previous; previous is consumed, so a retried
    // rollback cannot undo the rollback.
    let r = post(&c, &gw, "/api/v1/routes/bot/rollback", t, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["live"], "blue");
    assert!(r.json()["previous"].is_null());
    let r = post(&c, &gw, "/api/v1/routes/bot/rollback", t, "").await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");

    // Flip with no body: the only other target.
    let r = post(&c, &gw, "/api/v1/routes/bot/flip", t, "").await;
    assert_eq!(r.json()["live"], "green");
    assert_eq!(r.json()["previous"], "blue");
    // Reset on an untripped route is harmless and keeps the split.
    let r = post(&c, &gw, "/api/v1/routes/bot/reset", t, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["live"], "green");

    // Everything is in the event log.
    let ev = get(&c, &gw.admin_url("/api/v1/events"), &[]).await.json();
    let kinds: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in ["canary", "rollback", "promote", "flip", "reset"] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn status_reports_window_counts_sources_and_generation() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    blue.fail_every(4);
    let gw = gw_with_token(
        &blue,
        &green,
        "[routes.circuit]\nwindow = \"60s\"\nmin_requests = 1000\n",
    )
    .await;
    let c = client();
    for _ in 0..8 {
        get(&c, &gw.url("/"), &[]).await;
    }
    let all = get(&c, &gw.admin_url("/api/v1/routes"), &[]).await.json();
    assert_eq!(all["generation"].as_u64().unwrap(), gw.generation());
    let v = &all["routes"][0];
    assert_eq!(v["name"], "bot");
    assert_eq!(v["live"], "blue");
    assert_eq!(v["live_source"], "file");
    assert_eq!(v["circuit"]["state"], "idle");
    let blue_t = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "blue")
        .unwrap();
    assert_eq!(blue_t["window"]["requests"], 8);
    assert_eq!(blue_t["window"]["errors"], 2);
    assert_eq!(blue_t["window"]["error_rate"], 0.25);
    gw.stop().await;
}

#[tokio::test]
async fn unwritable_state_dir_still_applies_and_says_so() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let dir = tempfile::tempdir().unwrap();
    // The state directory cannot be created: its parent is a regular file.
    std::fs::write(dir.path().join("blocker"), "").unwrap();
    let cfg = config("blue", &[("blue", blue.addr), ("green", green.addr)], "")
        .replace("dir = \"state\"", "dir = \"blocker/state\"");
    let gw = Gw::start_in(dir, &cfg).await;
    let c = client();
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");
    let r = post(&c, &gw, "/api/v1/routes/bot/flip", None, "").await;
    assert_json_error(&r, 500, "will not survive a restart");
    assert_eq!(r.json()["persisted"], false);
    // The operator's change is in force anyway, and the views say it is not on disk.
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "green");
    let v = get(&c, &gw.admin_url("/api/v1/routes/bot"), &[])
        .await
        .json();
    assert_eq!(v["live"], "green");
    assert_eq!(v["persisted"], false, "{v}");
    gw.stop().await;
}
