//! Runtime overlay persistence: survives `kill -9` of the real binary, is dropped when the file's
//! split for a route changes (newest intent wins) or the route goes away, and a corrupt state file
//! never stops flipgate from serving the file's config. (A state file that cannot be read at all
//! is another matter: see `durability.rs`.) A route file written in several steps does not cost a
//! route its runtime state: what a half-written file would drop is set aside, with a warning and an
//! event, persisted like the rest of the state, and restored when the rest of the file arrives.
mod support;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flipgate::control::state::writer::Ownership;
use flipgate::control::state::{RouteState, Source};
use flipgate::control::{Action, Control, Durability, ReloadOutcome};
use support::proc::Proc;
use support::*;

fn read_state(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("state/state.json")).unwrap()).unwrap()
}

/// Waits until the state file satisfies `ok`, and returns it: the state writer writes on its own
/// thread, just after a change is published, so a change seen in the snapshot may not be on disk yet.
async fn wait_state(
    dir: &Path,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let read = || {
        std::fs::read_to_string(dir.join("state/state.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    };
    wait_until(what, Duration::from_secs(10), || async {
        read().is_some_and(|v| ok(&v))
    })
    .await;
    read().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tripped_state_and_admin_changes_survive_kill_9() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    green.fail_every(1);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    write_atomic(
        &file,
        &config(
            "blue",
            &[("blue", blue.addr), ("green", green.addr)],
            "[routes.canary]\ntarget = \"green\"\npercent = 100\n\n[routes.circuit]\nwindow = \"60s\"\nmin_requests = 5\nmax_error_rate = 0.1\n",
        ),
    );
    let c = client();
    let p = Proc::start(&file);

    // The failing canary trips.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = get(&c, &p.url("/"), &[]).await;
        if r.status == 200 {
            assert_eq!(r.text(), "blue");
            break;
        }
        assert!(Instant::now() < deadline, "never tripped");
    }
    let v = get(&c, &p.admin_url("/api/v1/routes/bot"), &[])
        .await
        .json();
    assert_eq!(v["circuit"]["state"], "tripped", "{v}");
    wait_until("trip persisted", Duration::from_secs(10), || async {
        read_state(dir.path())["routes"]["bot"]["state"]["tripped"].is_object()
    })
    .await;
    wait_until("trip logged at warn", Duration::from_secs(10), || async {
        p.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("WARN") && l.contains("circuit tripped on `green`"))
    })
    .await;
    p.kill9();

    // Restarted: still tripped, canary still off, nothing goes to green.
    let p = Proc::start(&file);
    assert!(p.logged("restored runtime state"));
    let v = get(&c, &p.admin_url("/api/v1/routes/bot"), &[])
        .await
        .json();
    assert_eq!(v["circuit"]["state"], "tripped", "{v}");
    assert_eq!(v["circuit"]["tripped"]["target"], "green");
    assert_eq!(v["live"], "blue");
    assert_eq!(v["canary"]["target"], "green", "{v}");
    assert_eq!(v["canary"]["percent"], 0.0);
    assert_eq!(v["canary"]["source"], "circuit");
    let hits = green.hits();
    for _ in 0..20 {
        assert_eq!(get(&c, &p.url("/"), &[]).await.text(), "blue");
    }
    assert_eq!(green.hits(), hits);

    // An admin change is durable the moment the call returns: kill -9 right after it.
    green.fail_every(0);
    let r = send(
        &c,
        "POST",
        &p.admin_url("/api/v1/routes/bot/flip"),
        &[("content-type", "application/json")],
        r#"{"target":"green"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    p.kill9();
    let p = Proc::start(&file);
    let v = get(&c, &p.admin_url("/api/v1/routes/bot"), &[])
        .await
        .json();
    assert_eq!(v["live"], "green", "{v}");
    assert_eq!(v["live_source"], "admin");
    assert_eq!(v["previous"], "blue");
    assert!(v["circuit"]["tripped"].is_null());
    assert_eq!(get(&c, &p.url("/"), &[]).await.text(), "green");
    p.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_state_file_is_kept_aside_and_the_file_config_serves() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    write_atomic(
        &file,
        &config("blue", &[("blue", blue.addr), ("green", green.addr)], ""),
    );
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    let garbage = "{\"version\": 1, \"routes\": {\"bot\": tru";
    std::fs::write(dir.path().join("state/state.json"), garbage).unwrap();

    let p = Proc::start(&file);
    assert!(
        p.logged("CORRUPT runtime state file ignored"),
        "{:?}",
        p.log.lock().unwrap()
    );
    let c = client();
    assert_eq!(get(&c, &p.url("/"), &[]).await.text(), "blue");
    let v = get(&c, &p.admin_url("/api/v1/routes/bot"), &[])
        .await
        .json();
    assert_eq!(v["live_source"], "file");
    let bad: Vec<_> = std::fs::read_dir(dir.path().join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("state.json.bad-"))
        .collect();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("state").join(&bad[0])).unwrap(),
        garbage
    );
    // The state file is valid again and changes persist normally.
    assert_eq!(read_state(dir.path())["version"], 1);
    let r = send(&c, "POST", &p.admin_url("/api/v1/routes/bot/flip"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        read_state(dir.path())["routes"]["bot"]["state"]["live"],
        "green"
    );
    p.kill9();
}

async fn wait_generation(gw: &Gw, above: u64) {
    wait_until("reload applied", Duration::from_secs(10), || async {
        gw.generation() > above
    })
    .await;
}

fn two_routes(blue: &Upstream, green: &Upstream, bot_extra: &str, other: bool) -> String {
    let mut cfg = config(
        "blue",
        &[("blue", blue.addr), ("green", green.addr)],
        bot_extra,
    );
    if other {
        cfg.push_str(&format!(
            "\n[[routes]]\nname = \"other\"\npath_prefix = \"/other\"\nlive = \"a\"\n[routes.targets]\na = [\"{}\"]\nb = [\"{}\"]\n",
            blue.addr, green.addr
        ));
    }
    cfg
}

#[tokio::test]
async fn overlay_follows_the_file_newest_intent_wins() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let circuit = "[routes.circuit]\nbake = \"5m\"\n";
    let gw = Gw::start(&two_routes(&blue, &green, circuit, true)).await;
    let c = client();
    let ctl = gw.gateway.as_ref().unwrap().control.clone();
    let state = |name: &str| ctl.snapshots().load().route(name).unwrap().state.clone();

    ctl.act(
        "bot",
        flipgate::control::Action::Flip {
            target: Some("green".into()),
        },
    )
    .unwrap();
    ctl.act("other", flipgate::control::Action::Flip { target: None })
        .unwrap();
    assert_eq!(state("bot").live, "green");
    // Let the gateway's tasks (the file watcher among them) start before the file changes.
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "green");

    // An unrelated change (the upstream timeout) keeps the overlay.
    let g = gw.generation();
    gw.rewrite(
        &two_routes(&blue, &green, circuit, true)
            .replace("upstream_timeout = \"5s\"", "upstream_timeout = \"7s\""),
    );
    wait_generation(&gw, g).await;
    assert_eq!(state("bot").live, "green");
    assert_eq!(
        state("bot").live_source,
        flipgate::control::state::Source::Admin
    );
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "green");

    // The route's split changes in the file (a canary appears): the overlay is dropped; live goes
    // back to the file's, and the runtime live it replaced is remembered as previous, baking.
    let g = gw.generation();
    gw.rewrite(&two_routes(
        &blue,
        &green,
        &format!("[routes.canary]\ntarget = \"green\"\npercent = 0\n\n{circuit}"),
        false,
    ));
    wait_generation(&gw, g).await;
    let s = state("bot");
    assert_eq!(s.live, "blue");
    assert_eq!(s.live_source, flipgate::control::state::Source::File);
    assert_eq!(s.previous.as_deref(), Some("green"));
    assert!(s.bake_until_unix_ms.is_some());
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");
    // The removed route's overlay is out of the routes in force, only set aside (in case the file
    // was half-written) until its grace ends or a file that does not complete this one arrives; the
    // state file says so once the writer has written it (just after publish).
    let saved = wait_state(gw.dir.path(), "the removal persisted", |v| {
        v["routes"]["other"].is_null()
    })
    .await;
    assert_eq!(saved["parked"]["other"]["state"]["live"], "b", "{saved}");
    assert_eq!(saved["routes"]["bot"]["state"]["live"], "blue");
    gw.stop().await;
}

#[tokio::test]
async fn restart_restores_the_overlay_unless_the_split_changed_meanwhile() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let cfg = config("blue", &[("blue", blue.addr), ("green", green.addr)], "");
    let gw = Gw::start(&cfg).await;
    let c = client();
    let r = gw.act(&c, "flip", "").await;
    assert_eq!(r.status, 200);

    // Graceful restart with the same file: restored.
    let Gw { gateway, dir, .. } = gw;
    gateway.unwrap().shutdown().await;
    let gw = Gw::start_in(dir, &cfg).await;
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "green");

    // Restart after the file's split changed while down (a new target): the file wins.
    let Gw { gateway, dir, .. } = gw;
    gateway.unwrap().shutdown().await;
    let changed = config(
        "blue",
        &[
            ("blue", blue.addr),
            ("green", green.addr),
            ("red", green.addr),
        ],
        "",
    );
    let gw = Gw::start_in(dir, &changed).await;
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");
    let v = get(&c, &gw.admin_url("/api/v1/routes/bot"), &[])
        .await
        .json();
    assert_eq!(v["live_source"], "file");
    assert_eq!(v["previous"], "green");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_from_the_named_env_var_and_the_loopback_rule() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    let cfg = config("blue", &[("blue", blue.addr), ("green", green.addr)], "");

    // No token configured and a non-loopback admin address: refuses to start, exit 1, one line.
    write_atomic(
        &file,
        &cfg.replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            "[admin]\nlisten = \"0.0.0.0:0\"",
        ),
    );
    let o = Command::new(env!("CARGO_BIN_EXE_flipgate"))
        .args(["run", "-c"])
        .arg(&file)
        .env_remove("FLIPGATE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no admin token is configured"), "{err}");

    // Token from the env var named by admin.token_env.
    write_atomic(
        &file,
        &cfg.replace(
            "[admin]\n",
            "[admin]\ntoken_env = \"FG_TEST_ADMIN_TOKEN\"\n",
        ),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flipgate"));
    cmd.env("FG_TEST_ADMIN_TOKEN", "from-env");
    let p = Proc::start_with(cmd, &file);
    let c = client();
    let url = p.admin_url("/api/v1/routes/bot/flip");
    let r = send(&c, "POST", &url, &[], "").await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = send(&c, "POST", &url, &[("authorization", "Bearer nope")], "").await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = send(
        &c,
        "POST",
        &url,
        &[("authorization", "Bearer from-env")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&c, &p.url("/"), &[]).await.text(), "green");
    p.kill9();
}

fn events(v: &serde_json::Value) -> Vec<(String, String)> {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The full file and where route `other` starts in it: what a writer that pauses there has
/// written so far is a valid file without `other`.
fn split_before_other(full: &str) -> (&str, &str) {
    full.split_at(full.find("\n[[routes]]\nname = \"other\"").unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_file_written_in_two_steps_keeps_the_flipped_routes_state() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let full = two_routes(&blue, &green, "", true);
    let gw = Gw::start(&full).await;
    let c = client();
    let ctl = gw.gateway.as_ref().unwrap().control.clone();
    let r = send(
        &c,
        "POST",
        &gw.admin_url("/api/v1/routes/other/flip"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&c, &gw.url("/other"), &[]).await.text(), "green");

    // `{ cat part1; sleep; cat part2; } > flipgate.toml`: the same bytes again, written in place in
    // two steps. The pause lasts until flipgate has applied the first part.
    let (part1, part2) = split_before_other(&full);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&gw.file)
        .unwrap();
    f.write_all(part1.as_bytes()).unwrap();
    wait_until(
        "the first part applied",
        Duration::from_secs(10),
        || async { ctl.snapshots().load().route("other").is_none() },
    )
    .await;
    wait_state(gw.dir.path(), "the set-aside state persisted", |v| {
        v["parked"]["other"]["state"]["live"] == "b" && v["routes"]["other"].is_null()
    })
    .await;
    f.write_all(part2.as_bytes()).unwrap();
    drop(f);
    wait_until(
        "the whole file applied",
        Duration::from_secs(10),
        || async { ctl.snapshots().load().route("other").is_some() },
    )
    .await;

    // The operator's flip is still in force, and durable.
    let s = ctl.snapshots().load().route("other").unwrap().state.clone();
    assert_eq!(s.live, "b");
    assert_eq!(s.live_source, flipgate::control::state::Source::Admin);
    assert_eq!(s.previous.as_deref(), Some("a"));
    assert_eq!(get(&c, &gw.url("/other"), &[]).await.text(), "green");
    let saved = wait_state(gw.dir.path(), "the restored state persisted", |v| {
        v["routes"]["other"].is_object()
    })
    .await;
    assert_eq!(saved["routes"]["other"]["state"]["live"], "b", "{saved}");
    assert_eq!(saved["routes"]["other"]["state"]["live_source"], "admin");
    assert!(saved["parked"].is_null(), "{saved}");

    let ev = events(&get(&c, &gw.admin_url("/api/v1/events"), &[]).await.json());
    let removed = ev
        .iter()
        .find(|(k, _)| k == "route_removed")
        .expect("a route_removed event");
    assert!(
        removed
            .1
            .contains("route `other` removed from the route file")
            && removed.1.contains("live `b` (admin)")
            && removed.1.contains("kept for 10m"),
        "{removed:?}"
    );
    assert!(
        ev.iter()
            .any(|(k, m)| k == "state_restored" && m.contains("route `other`")),
        "{ev:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_route_warns_and_its_set_aside_state_survives_kill_9() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    let full = two_routes(&blue, &green, "", true);
    write_atomic(&file, &full);
    let c = client();
    let p = Proc::start(&file);
    let r = send(
        &c,
        "POST",
        &p.admin_url("/api/v1/routes/other/flip"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The writer stops after the first part (a generator that died, a slow pipe).
    let (part1, part2) = split_before_other(&full);
    std::fs::write(&file, part1).unwrap();
    wait_until("the removal reported", Duration::from_secs(10), || async {
        let v = get(&c, &p.admin_url("/api/v1/events"), &[]).await.json();
        events(&v).iter().any(|(k, _)| k == "route_removed")
    })
    .await;
    wait_until(
        "the removal logged as a warning",
        Duration::from_secs(10),
        || async {
            p.log.lock().unwrap().iter().any(|l| {
                l.contains("WARN")
                    && l.contains("route `other` removed from the route file")
                    && l.contains("kept for 10m")
            })
        },
    )
    .await;
    wait_state(dir.path(), "the set-aside state persisted", |v| {
        v["parked"]["other"]["state"]["live"] == "b"
    })
    .await;
    p.kill9();

    // The rest of the file arrives while flipgate is down: the state comes back at start.
    std::fs::write(&file, format!("{part1}{part2}")).unwrap();
    let p = Proc::start(&file);
    let v = get(&c, &p.admin_url("/api/v1/routes/other"), &[])
        .await
        .json();
    assert_eq!(v["live"], "b", "{v}");
    assert_eq!(v["live_source"], "admin", "{v}");
    assert_eq!(get(&c, &p.url("/other"), &[]).await.text(), "green");
    p.kill9();
}

#[tokio::test]
async fn a_deliberate_edit_is_never_undone_by_a_set_aside_state() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let original = two_routes(&blue, &green, "", true);
    let gw = Gw::start(&original).await;
    let c = client();
    let ctl = gw.gateway.as_ref().unwrap().control.clone();
    let state = |name: &str| ctl.snapshots().load().route(name).unwrap().state.clone();
    let r = gw.act(&c, "flip", r#"{"target":"green"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "green");

    // The flip is written into the file (live = "green"), then that edit is reverted: the revert is
    // a file rollback to blue, not a return of the admin flip set aside by the first edit.
    let g = gw.generation();
    gw.rewrite(&original.replacen("live = \"blue\"", "live = \"green\"", 1));
    wait_generation(&gw, g).await;
    assert_eq!(
        state("bot").live_source,
        flipgate::control::state::Source::File
    );
    let g = gw.generation();
    gw.rewrite(&original);
    wait_generation(&gw, g).await;
    let s = state("bot");
    assert_eq!(s.live, "blue");
    assert_eq!(s.live_source, flipgate::control::state::Source::File);
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");

    // A route removed on purpose and written back later does not get its old flip back either:
    // the file that removed it was replaced, not completed.
    let r = send(
        &c,
        "POST",
        &gw.admin_url("/api/v1/routes/other/flip"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (without_other, _) = split_before_other(&original);
    let g = gw.generation();
    gw.rewrite(without_other);
    wait_generation(&gw, g).await;
    let g = gw.generation();
    gw.rewrite(&original.replace("upstream_timeout = \"5s\"", "upstream_timeout = \"7s\""));
    wait_generation(&gw, g).await;
    assert_eq!(state("other").live, "a");
    assert_eq!(
        state("other").live_source,
        flipgate::control::state::Source::File
    );
    let ev = events(&get(&c, &gw.admin_url("/api/v1/events"), &[]).await.json());
    assert!(
        ev.iter().any(|(k, m)| k == "state_dropped"
            && m.contains("route `other`")
            && m.contains("does not complete")),
        "{ev:?}"
    );
    let saved = wait_state(gw.dir.path(), "the edit persisted", |v| {
        v["routes"]["other"]["state"]["live_source"] == "file"
    })
    .await;
    assert!(saved["parked"].is_null(), "{saved}");
    gw.stop().await;
}

#[tokio::test]
async fn a_set_aside_state_is_dropped_with_a_warning_after_its_grace() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let full = two_routes(&blue, &green, "", true);
    let gw = Gw::start(&full).await;
    let c = client();
    let ctl = gw.gateway.as_ref().unwrap().control.clone();
    let r = send(
        &c,
        "POST",
        &gw.admin_url("/api/v1/routes/other/flip"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (part1, _) = split_before_other(&full);
    let g = gw.generation();
    gw.rewrite(part1);
    wait_generation(&gw, g).await;
    wait_state(gw.dir.path(), "the set-aside state persisted", |v| {
        v["parked"]["other"].is_object()
    })
    .await;

    // Within the grace nothing is dropped; past it, the state goes, reported.
    let now = flipgate::control::unix_ms();
    assert_eq!(ctl.expire_parked(now), 0);
    let grace = flipgate::control::PARKED_GRACE.as_millis() as u64;
    assert_eq!(ctl.expire_parked(now + grace + 1_000), 1);
    let ev = events(&get(&c, &gw.admin_url("/api/v1/events"), &[]).await.json());
    assert!(
        ev.iter().any(|(k, m)| k == "state_dropped"
            && m.contains("route `other`")
            && m.contains("did not come back")),
        "{ev:?}"
    );
    // Handed to the state writer like every change, without holding the control lock for the disk.
    wait_state(gw.dir.path(), "the drop persisted", |v| {
        v["parked"].is_null()
    })
    .await;

    // The rest of the file now brings the route back as the file says.
    let g = gw.generation();
    gw.rewrite(&full);
    wait_generation(&gw, g).await;
    let s = ctl.snapshots().load().route("other").unwrap().state.clone();
    assert_eq!(s.live, "a");
    assert_eq!(s.live_source, flipgate::control::state::Source::File);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_cut_inside_its_targets_gets_its_flip_back() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let full = config("blue", &[("blue", blue.addr), ("green", green.addr)], "");
    let gw = Gw::start(&full).await;
    let c = client();
    let ctl = gw.gateway.as_ref().unwrap().control.clone();
    let r = gw.act(&c, "flip", r#"{"target":"green"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "green");

    // The writer pauses after the `blue` target: a valid file whose route has no `green`.
    let cut = full.find("green = [").unwrap();
    let (part1, part2) = full.split_at(cut);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&gw.file)
        .unwrap();
    f.write_all(part1.as_bytes()).unwrap();
    wait_until(
        "the first part applied",
        Duration::from_secs(10),
        || async {
            let snap = ctl.snapshots().load();
            snap.route("bot").is_some_and(|r| r.targets.len() == 1)
        },
    )
    .await;
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");
    f.write_all(part2.as_bytes()).unwrap();
    drop(f);
    wait_until(
        "the whole file applied",
        Duration::from_secs(10),
        || async {
            let snap = ctl.snapshots().load();
            snap.route("bot").is_some_and(|r| r.targets.len() == 2)
        },
    )
    .await;
    let s = ctl.snapshots().load().route("bot").unwrap().state.clone();
    assert_eq!(s.live, "green");
    assert_eq!(s.live_source, flipgate::control::state::Source::Admin);
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "green");
    gw.stop().await;
}

// ---- Set-aside state through the state writer, compared by the file's split ----

/// A route file with route `bot` and, after it, route `other` whose target `b` has `b_instances`.
fn in_process_file(b_instances: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"state\"\n\n[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:9\"]\ngreen = [\"127.0.0.1:9\"]\n\n[[routes]]\nname = \"other\"\npath_prefix = \"/other\"\nlive = \"a\"\n[routes.targets]\na = [\"127.0.0.1:9\"]\nb = [{b_instances}]\n"
    )
}

/// A control plane on `dir/flipgate.toml` holding `text` (no listener, no reload watcher).
fn control_in(dir: &Path, text: &str) -> Arc<Control> {
    let path = dir.join("flipgate.toml");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
        write_atomic(&path, text);
    }
    let config = flipgate::config::Config::load(&path).unwrap();
    Control::new(config, Arc::new(flipgate::observe::metrics::Metrics::new())).unwrap()
}

/// What the reload watcher does when `dir/flipgate.toml` holds `text`.
fn apply_file(control: &Control, dir: &Path, text: &str) {
    let path = dir.join("flipgate.toml");
    write_atomic(&path, text);
    match control.reload(flipgate::config::Config::load(&path)) {
        ReloadOutcome::Applied { .. } => {}
        other => panic!("reload not applied: {other:?}"),
    }
}

fn other_state(control: &Control) -> Option<RouteState> {
    control
        .snapshots()
        .load()
        .route("other")
        .map(|r| r.state.clone())
}

async fn flip_other(control: &Control) {
    let applied = control.act("other", Action::Flip { target: None }).unwrap();
    assert_eq!(
        control
            .durable(applied.version, Duration::from_secs(10))
            .await,
        Durability::Persisted
    );
}

#[tokio::test]
async fn a_set_aside_state_comes_back_when_the_rest_of_the_file_scales_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let full = in_process_file("\"127.0.0.1:9\"");
    let ctl = control_in(dir.path(), &full);
    flip_other(&ctl).await;

    // The writer pauses before `other`; what it then writes scales `other`'s target `b` out. The
    // split (live, target names) is the one the flip was made against: scaling states no new intent.
    let (part1, _) = split_before_other(&full);
    apply_file(&ctl, dir.path(), part1);
    assert!(other_state(&ctl).is_none());
    let saved = wait_state(dir.path(), "the set-aside state persisted", |v| {
        v["parked"]["other"].is_object()
    })
    .await;
    let parked = &saved["parked"]["other"];
    assert_eq!(parked["state"]["live"], "b", "{saved}");
    assert_eq!(parked["split"]["targets"], serde_json::json!(["a", "b"]));
    assert!(parked["fingerprint"].is_u64(), "{saved}");
    let scaled = full.replace(
        "b = [\"127.0.0.1:9\"]",
        "b = [\"127.0.0.1:9\", \"127.0.0.1:10\"]",
    );
    assert!(scaled.starts_with(part1) && scaled != full);
    apply_file(&ctl, dir.path(), &scaled);
    let s = other_state(&ctl).unwrap();
    assert_eq!((s.live.as_str(), s.live_source), ("b", Source::Admin));
    assert!(ctl
        .events
        .recent()
        .iter()
        .any(|e| e.kind == "state_restored" && e.route.as_deref() == Some("other")));
    let saved = wait_state(dir.path(), "the restored state persisted", |v| {
        v["routes"]["other"].is_object()
    })
    .await;
    assert_eq!(saved["routes"]["other"]["state"]["live"], "b", "{saved}");
    assert!(saved["parked"].is_null(), "{saved}");
    ctl.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_takes_in_what_the_owner_set_aside_and_keeps_it_at_takeover() {
    let dir = tempfile::tempdir().unwrap();
    let full = in_process_file("\"127.0.0.1:9\"");
    // Two processes on one state dir, as in a SO_REUSEPORT upgrade (the lock is per open file,
    // so two control planes in one test process exclude each other the same way).
    let owner = control_in(dir.path(), &full);
    let follower = control_in(dir.path(), &full);
    assert!(matches!(
        follower.persist_status().ownership,
        Ownership::Follower { .. }
    ));
    flip_other(&owner).await;
    wait_until(
        "the follower follows the flip",
        Duration::from_secs(10),
        || async { other_state(&follower).is_some_and(|s| s.live == "b") },
    )
    .await;

    // Both read the half-written file (each watches it) and set the flip aside, each at its own
    // moment; the follower takes in what the owner set aside, so it has nothing unpersisted.
    let (part1, part2) = split_before_other(&full);
    apply_file(&owner, dir.path(), part1);
    apply_file(&follower, dir.path(), part1);
    wait_state(dir.path(), "the owner persisted the set-aside state", |v| {
        v["parked"]["other"].is_object()
    })
    .await;
    wait_until(
        "the follower has what the owner wrote",
        Duration::from_secs(10),
        || async { follower.persist_status().persisted() },
    )
    .await;

    // The owner exits; the follower takes over and writes what it holds, the set-aside flip
    // included, and the rest of the file brings the flip back.
    owner.close().await;
    wait_until("takeover", Duration::from_secs(10), || async {
        let s = follower.persist_status();
        s.ownership == Ownership::Owner && s.persisted()
    })
    .await;
    let saved = read_state(dir.path());
    assert_eq!(saved["parked"]["other"]["state"]["live"], "b", "{saved}");
    apply_file(&follower, dir.path(), &format!("{part1}{part2}"));
    let s = other_state(&follower).unwrap();
    assert_eq!((s.live.as_str(), s.live_source), ("b", Source::Admin));
    let saved = wait_state(dir.path(), "the restored state persisted", |v| {
        v["routes"]["other"].is_object()
    })
    .await;
    assert_eq!(saved["routes"]["other"]["state"]["live"], "b", "{saved}");
    assert!(saved["parked"].is_null(), "{saved}");
    follower.close().await;
}
