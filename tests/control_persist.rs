//! Runtime overlay persistence: survives `kill -9` of the real binary, is dropped when the file's
//! split for a route changes (newest intent wins) or the route goes away, and a corrupt state file
//! never stops flipgate from serving the file's config. (A state file that cannot be read at all
//! is another matter: see `durability.rs`.)
mod support;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::proc::Proc;
use support::*;

fn read_state(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("state/state.json")).unwrap()).unwrap()
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
        &[],
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
    assert_eq!(state("bot").live_source, flipgate::state::Source::Admin);
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
    assert_eq!(s.live_source, flipgate::state::Source::File);
    assert_eq!(s.previous.as_deref(), Some("green"));
    assert!(s.bake_until_unix_ms.is_some());
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");
    // The removed route's overlay is gone from the state file too (written just after publish).
    wait_until("reload persisted", Duration::from_secs(10), || async {
        ctl.persist_status().persisted()
    })
    .await;
    let saved = read_state(gw.dir.path());
    assert!(saved["routes"]["other"].is_null(), "{saved}");
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
