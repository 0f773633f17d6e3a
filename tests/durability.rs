//! Decisions are durable (issue 11, items 5, 7 and 9): a persistence failure is visible (API,
//! status, `/metrics`, `/readyz`) and retried until the decision is on disk; an unreadable state
//! file never discards decisions; an edit that leaves a route's split alone keeps its trip, and a
//! target that takes a new role is judged on a fresh window; stale temp files are cleaned up;
//! readers never wait on the writer's disk I/O; and of two processes on one state dir exactly one
//! writes, handing over when it exits. Real processes, real files, loopback sockets.
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flipgate::control::circuit;
use flipgate::control::Control;
use support::proc::Proc;
use support::*;

fn state_file(dir: &Path) -> PathBuf {
    dir.join("state/state.json")
}

fn read_state(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(state_file(dir)).unwrap()).unwrap()
}

fn names_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

async fn routes(c: &TestClient, p: &Proc) -> serde_json::Value {
    get(c, &p.admin_url("/api/v1/routes"), &[]).await.json()
}

async fn route(c: &TestClient, p: &Proc) -> serde_json::Value {
    get(c, &p.admin_url("/api/v1/routes/bot"), &[]).await.json()
}

/// Waits until the process's runtime state is in the state file and it is the writer.
async fn wait_persisted(c: &TestClient, p: &Proc) {
    wait_until("state persisted", Duration::from_secs(60), || async {
        let v = routes(c, p).await;
        v["state"]["persisted"] == true && v["state"]["role"] == "owner"
    })
    .await;
}

async fn post(c: &TestClient, p: &Proc, verb: &str, body: &str) -> Resp {
    admin_post(c, &p.admin_url(&format!("/api/v1/routes/bot/{verb}")), body).await
}

/// Sends requests until one is answered by `target` (the circuit moved traffic there).
async fn until_served_by(c: &TestClient, p: &Proc, path: &str, target: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = get(c, &p.url(path), &[]).await;
        if r.status == 200 && r.text() == target {
            return;
        }
        assert!(Instant::now() < deadline, "traffic never moved to {target}");
    }
}

const TRIPPING_CANARY: &str = "[routes.canary]\ntarget = \"green\"\npercent = 100\n\n[routes.circuit]\nwindow = \"60s\"\nmin_requests = 5\nmax_error_rate = 0.1\n";

// ---- 5a: a persistence failure is visible and retried until it succeeds ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_state_dir_is_visible_and_the_trip_is_persisted_once_it_heals() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    green.fail_every(1);
    let dir = tempfile::tempdir().unwrap();
    // The state directory cannot be created: its parent is a regular file.
    std::fs::write(dir.path().join("blocker"), "").unwrap();
    let file = dir.path().join("flipgate.toml");
    write_atomic(
        &file,
        &config(
            "blue",
            &[("blue", blue.addr), ("green", green.addr)],
            TRIPPING_CANARY,
        )
        .replace("dir = \"state\"", "dir = \"blocker/state\""),
    );
    let c = client();
    let p = Proc::start(&file);
    until_served_by(&c, &p, "/", "blue").await;
    let v = route(&c, &p).await;
    assert_eq!(v["circuit"]["state"], "tripped", "{v}");

    // Told everywhere: the API (route and process), /metrics, /readyz (still 200: traffic is
    // served correctly, only the record of decisions is missing).
    assert_eq!(v["persisted"], false, "{v}");
    let all = routes(&c, &p).await;
    assert_eq!(all["state"]["persisted"], false, "{all}");
    assert_eq!(all["state"]["role"], "owner", "{all}");
    assert!(
        all["state"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("blocker")),
        "{all}"
    );
    let metrics = get(&c, &p.admin_url("/metrics"), &[]).await.text();
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("flipgate_state_persist_failures_total "))
        .unwrap_or_else(|| panic!("no failure counter in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(failures >= 1.0, "{failures}");
    let ready = get(&c, &p.admin_url("/readyz"), &[]).await;
    assert_eq!(ready.status, 200);
    assert!(ready.text().contains("not persisted"), "{}", ready.text());
    assert!(p.logged("cannot persist runtime state"));

    // The disk heals: a background retry writes the trip without anyone acting.
    std::fs::remove_file(dir.path().join("blocker")).unwrap();
    wait_until(
        "trip persisted by a retry",
        Duration::from_secs(60),
        || async { routes(&c, &p).await["state"]["persisted"] == true },
    )
    .await;
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("blocker/state/state.json")).unwrap(),
    )
    .unwrap();
    assert!(
        saved["routes"]["bot"]["state"]["tripped"].is_object(),
        "{saved}"
    );
    assert!(!get(&c, &p.admin_url("/readyz"), &[])
        .await
        .text()
        .contains("not persisted"));
    p.kill9();

    // After a restart the canary stays off the failing target.
    let p = Proc::start(&file);
    let v = route(&c, &p).await;
    assert_eq!(v["circuit"]["state"], "tripped", "{v}");
    assert_eq!(v["canary"]["percent"], 0.0, "{v}");
    let hits = green.hits();
    for _ in 0..20 {
        assert_eq!(get(&c, &p.url("/"), &[]).await.text(), "blue");
    }
    assert_eq!(green.hits(), hits);
    p.kill9();
}

// ---- 5b: a state file that cannot be read is never discarded ----

/// Runs `flipgate run` and expects it to exit on its own; returns (exit code, stderr).
fn run_expecting_exit(file: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flipgate"))
        .args(["run", "-c"])
        .arg(file)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "flipgate kept running; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn unreadable_state_file_refuses_to_start_and_is_left_in_place() {
    let blue = spawn_upstream("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    write_atomic(&file, &config("blue", &[("blue", blue.addr)], ""));
    // A directory where the state file should be: reading it fails (as EIO or EACCES would).
    std::fs::create_dir_all(state_file(dir.path()).join("junk")).unwrap();
    let (code, stderr) = run_expecting_exit(&file);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot read runtime state file"),
        "{stderr}"
    );
    // Nothing was moved aside or replaced.
    assert!(state_file(dir.path()).join("junk").is_dir());
    let names = names_in(&dir.path().join("state"));
    assert!(
        !names.iter().any(|n| n.starts_with("state.json.bad-")),
        "{names:?}"
    );
}

// ---- 5c: the split's own fields decide; a new role starts a fresh window ----

fn control_on(dir: &Path, text: &str) -> Arc<Control> {
    let path = dir.join("flipgate.toml");
    std::fs::write(&path, text).unwrap();
    let config = flipgate::config::Config::load(&path).unwrap();
    Control::new(config, Arc::new(flipgate::observe::metrics::Metrics::new())).unwrap()
}

fn reload(control: &Control, dir: &Path, text: &str) {
    let path = dir.join("flipgate.toml");
    std::fs::write(&path, text).unwrap();
    match control.reload(flipgate::config::Config::load(&path)) {
        flipgate::control::ReloadOutcome::Applied { .. } => {}
        other => panic!("reload not applied: {other:?}"),
    }
}

fn canary_file(blue: &str, percent: u32) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"state\"\n[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [{blue}]\ngreen = [\"127.0.0.1:9\"]\n[routes.canary]\ntarget = \"green\"\npercent = {percent}\n[routes.circuit]\nwindow = \"30s\"\nmin_requests = 20\nmax_error_rate = 0.05\n"
    )
}

fn record(control: &Control, target: &str, n: u64, error: bool) {
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
        t.window.record(flipgate::clock::now_ms(), error, 1);
    }
}

fn bot_state(control: &Control) -> flipgate::control::state::RouteState {
    control
        .snapshots()
        .load()
        .route("bot")
        .unwrap()
        .state
        .clone()
}

fn window_requests(control: &Control, target: &str) -> u64 {
    let snap = control.snapshots().load_full();
    let t = snap
        .route("bot")
        .unwrap()
        .targets
        .iter()
        .find(|t| &*t.name == target)
        .unwrap()
        .clone();
    t.window.totals(flipgate::clock::now_ms()).requests
}

#[tokio::test(start_paused = true)]
async fn adding_an_instance_keeps_the_trip() {
    let dir = tempfile::tempdir().unwrap();
    let control = control_on(dir.path(), &canary_file("\"127.0.0.1:9\"", 10));
    record(&control, "green", 20, true);
    assert_eq!(circuit::check_all(&control), 1);
    assert!(bot_state(&control).tripped.is_some());

    // Scaling the live target out is not a new intent for the split.
    reload(
        &control,
        dir.path(),
        &canary_file("\"127.0.0.1:9\", \"127.0.0.1:10\"", 10),
    );
    let s = bot_state(&control);
    assert!(s.tripped.is_some(), "{s:?}");
    assert_eq!(s.canary_bp, 0, "the tripped canary was re-armed: {s:?}");
}

#[tokio::test(start_paused = true)]
async fn a_canary_re_armed_by_the_file_is_judged_on_a_fresh_window() {
    let dir = tempfile::tempdir().unwrap();
    let control = control_on(dir.path(), &canary_file("\"127.0.0.1:9\"", 10));
    record(&control, "green", 20, true);
    assert_eq!(circuit::check_all(&control), 1);

    // The file states a new intent (20 %): the trip is dropped and the canary runs again, judged
    // only on what it does from now on, not on the errors that tripped it.
    reload(&control, dir.path(), &canary_file("\"127.0.0.1:9\"", 20));
    let s = bot_state(&control);
    assert!(s.tripped.is_none());
    assert_eq!(s.canary_bp, 2000);
    assert_eq!(window_requests(&control, "green"), 0);
    assert_eq!(circuit::check_all(&control), 0);
    record(&control, "green", 20, false);
    assert_eq!(circuit::check_all(&control), 0);

    // The file makes green live: it bakes on its own outcomes as live, not its canary-phase ones.
    record(&control, "green", 5, true);
    let flipped =
        canary_file("\"127.0.0.1:9\"", 20).replacen("live = \"blue\"", "live = \"green\"", 1);
    let flipped = flipped.replace("target = \"green\"", "target = \"blue\"");
    reload(&control, dir.path(), &format!("{flipped}bake = \"5m\"\n"));
    assert_eq!(bot_state(&control).live, "green");
    assert_eq!(window_requests(&control, "green"), 0);
}

// ---- stale temp files ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_temp_files_are_removed_at_start() {
    let blue = spawn_upstream("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    write_atomic(&file, &config("blue", &[("blue", blue.addr)], ""));
    // What writers killed mid-write leave behind.
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    for pid in [4242, 777_777] {
        std::fs::write(
            dir.path().join(format!("state/.state.json.tmp-{pid}")),
            "{\"version\": 1, \"rou",
        )
        .unwrap();
    }
    let p = Proc::start(&file);
    let c = client();
    wait_persisted(&c, &p).await;
    let names = names_in(&dir.path().join("state"));
    assert!(
        !names.iter().any(|n| n.starts_with(".state.json.tmp-")),
        "{names:?}"
    );
    assert_eq!(read_state(dir.path())["version"], 1);
    p.kill9();
}

// ---- 7: readers never wait on the writer's disk I/O ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_traffic_and_trips_go_on_while_a_flip_is_stuck_on_the_disk() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let bad = spawn_upstream("bad").await;
    bad.fail_every(1);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    // One runtime thread: anything that blocks it stops all traffic.
    let mut cfg = with_server(
        &config("blue", &[("blue", blue.addr), ("green", green.addr)], ""),
        "workers = 1",
    );
    cfg.push_str(&format!(
        "\n[[routes]]\nname = \"other\"\npath_prefix = \"/other\"\nlive = \"a\"\n[routes.targets]\na = [\"{}\"]\nb = [\"{}\"]\n{}",
        blue.addr,
        bad.addr,
        TRIPPING_CANARY.replace("\"green\"", "\"b\"")
    ));
    write_atomic(&file, &cfg);
    let p = Proc::start(&file);
    let c = client();
    wait_persisted(&c, &p).await;

    // A disk that does not answer: the writer's temp file is a FIFO nobody reads, so opening it
    // blocks until the test opens the other end.
    let fifo = dir
        .path()
        .join(format!("state/.state.json.tmp-{}", p.child.id()));
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);

    let flip = {
        let c = c.clone();
        let url = p.admin_url("/api/v1/routes/bot/flip");
        tokio::spawn(async move {
            send(
                &c,
                "POST",
                &url,
                &[("content-type", "application/json")],
                r#"{"target":"green"}"#,
            )
            .await
        })
    };
    // The flip is in force while its write is stuck; the read view says it is not on disk yet.
    wait_until("flip applied", Duration::from_secs(10), || async {
        let v = route(&c, &p).await;
        v["live"] == "green" && v["persisted"] == false
    })
    .await;
    // Status, traffic and a circuit trip all go on.
    assert_eq!(get(&c, &p.url("/"), &[]).await.text(), "green");
    assert_eq!(routes(&c, &p).await["routes"].as_array().unwrap().len(), 2);
    until_served_by(&c, &p, "/other", "blue").await;
    let other = get(&c, &p.admin_url("/api/v1/routes/other"), &[])
        .await
        .json();
    assert_eq!(other["circuit"]["state"], "tripped", "{other}");
    assert!(
        !flip.is_finished(),
        "the flip was answered before its write finished"
    );

    // The disk answers (a FIFO cannot be fsynced, so that attempt fails); a retry writes both.
    let reader = std::thread::spawn(move || std::fs::read(&fifo).unwrap());
    let r = flip.await.unwrap();
    assert!(r.status == 200 || r.status == 500, "{}", r.text());
    reader.join().unwrap();
    wait_persisted(&c, &p).await;
    let saved = read_state(dir.path());
    assert_eq!(saved["routes"]["bot"]["state"]["live"], "green", "{saved}");
    assert!(
        saved["routes"]["other"]["state"]["tripped"].is_object(),
        "{saved}"
    );
    p.kill9();
}

// ---- 9: two processes, one state dir ----

fn sigterm(p: &mut Proc) -> std::process::ExitStatus {
    // SAFETY: signalling our own child process by its id.
    assert_eq!(unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) }, 0);
    p.child.wait().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_writer_per_state_dir_and_the_lock_is_handed_over() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    write_atomic(
        &file,
        &config(
            "blue",
            &[("blue", blue.addr), ("green", green.addr)],
            "[routes.canary]\ntarget = \"green\"\npercent = 0\n",
        ),
    );
    let c = client();
    let a = Proc::start(&file);
    wait_persisted(&c, &a).await;
    let r = post(&c, &a, "flip", r#"{"target":"green"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // B starts on the same file and state dir (as in a SO_REUSEPORT upgrade) while A runs: it
    // serves A's decisions but writes nothing and refuses changes.
    let foreign_tmp = dir.path().join("state/.state.json.tmp-999999");
    std::fs::write(&foreign_tmp, "in flight, for all B knows").unwrap();
    let mut b = Proc::start(&file);
    let a_pid = a.child.id();
    let v = routes(&c, &b).await;
    assert_eq!(v["state"]["role"], "follower", "{v}");
    assert_eq!(v["state"]["owner_pid"], a_pid, "{v}");
    assert_eq!(v["routes"][0]["live"], "green", "{v}");
    assert_eq!(get(&c, &b.url("/"), &[]).await.text(), "green");
    let before = std::fs::read(state_file(dir.path())).unwrap();
    let r = post(&c, &b, "flip", r#"{"target":"blue"}"#).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains(&a_pid.to_string()), "{}", r.text());
    assert_eq!(route(&c, &b).await["live"], "green");
    assert_eq!(std::fs::read(state_file(dir.path())).unwrap(), before);
    assert!(
        foreign_tmp.exists(),
        "a follower must not touch the owner's files"
    );
    let ready = get(&c, &b.admin_url("/readyz"), &[]).await;
    assert_eq!(ready.status, 200);
    assert!(
        ready.text().contains(&a_pid.to_string()),
        "{}",
        ready.text()
    );

    // B follows what A decides.
    let r = post(&c, &a, "canary", r#"{"percent": 10, "target": "blue"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until("B follows A's canary", Duration::from_secs(10), || async {
        route(&c, &b).await["canary"]["percent"] == 10.0
    })
    .await;

    // A dies: B takes the lock over, cleans up, and its decisions persist.
    a.kill9();
    wait_persisted(&c, &b).await;
    assert!(!foreign_tmp.exists());
    let r = post(&c, &b, "rollback", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let saved = read_state(dir.path());
    assert_eq!(saved["routes"]["bot"]["state"]["canary_bp"], 0, "{saved}");
    assert_eq!(saved["routes"]["bot"]["state"]["live"], "green", "{saved}");

    // Second handover, on a graceful exit: C follows B, B gets SIGTERM, C takes over.
    let c_proc = Proc::start(&file);
    assert_eq!(routes(&c, &c_proc).await["state"]["role"], "follower");
    assert!(sigterm(&mut b).success());
    wait_persisted(&c, &c_proc).await;
    let r = post(&c, &c_proc, "flip", r#"{"target":"blue"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    c_proc.kill9();
    let d = Proc::start(&file);
    let v = route(&c, &d).await;
    assert_eq!(v["live"], "blue", "{v}");
    assert_eq!(v["previous"], "green", "{v}");
    d.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_unreadable_at_takeover_is_waited_for_not_overwritten() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    write_atomic(
        &file,
        &config("blue", &[("blue", blue.addr), ("green", green.addr)], ""),
    );
    let c = client();
    let a = Proc::start(&file);
    wait_persisted(&c, &a).await;
    assert_eq!(post(&c, &a, "flip", "").await.status, 200);
    let b = Proc::start(&file);
    assert_eq!(route(&c, &b).await["live"], "green");

    // The state file becomes unreadable (a directory stands in for EIO), then the owner dies.
    let kept = dir.path().join("state/kept.json");
    std::fs::rename(state_file(dir.path()), &kept).unwrap();
    std::fs::create_dir(state_file(dir.path())).unwrap();
    a.kill9();
    wait_until(
        "B holds the lock but cannot read",
        Duration::from_secs(10),
        || async { routes(&c, &b).await["state"]["role"] == "blocked" },
    )
    .await;
    // Nothing is discarded: B keeps serving the decision it followed and refuses changes.
    assert_eq!(get(&c, &b.url("/"), &[]).await.text(), "green");
    let r = post(&c, &b, "flip", r#"{"target":"blue"}"#).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        state_file(dir.path()).is_dir(),
        "the unreadable file was replaced"
    );
    let ready = get(&c, &b.admin_url("/readyz"), &[]).await;
    assert_eq!(ready.status, 200);
    assert!(ready.text().contains("cannot read"), "{}", ready.text());

    // Readable again: B adopts it, writes, and takes changes.
    std::fs::remove_dir(state_file(dir.path())).unwrap();
    std::fs::rename(&kept, state_file(dir.path())).unwrap();
    wait_persisted(&c, &b).await;
    let r = post(&c, &b, "flip", r#"{"target":"blue"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        read_state(dir.path())["routes"]["bot"]["state"]["live"],
        "blue"
    );
    b.kill9();
}

// ---- the disk fills up; kill -9 in the middle of a flip ----

/// A tiny tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at a new directory under `parent`; `None` (and a loud note) where
    /// mounting is not allowed (not root, or no CAP_SYS_ADMIN in the container).
    fn mount(parent: &Path, size: &str) -> Option<Tmpfs> {
        let at = parent.join("tmpfs");
        std::fs::create_dir_all(&at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)");
            return None;
        }
        Some(Tmpfs(at))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// `state.dir` on a full disk (a tiny tmpfs filled up): a flip is in force and answered 500 with
/// `persisted: false`, the failures are counted, and once space is freed a background retry
/// writes it, so it survives `kill -9`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_disk_keeps_the_decision_and_persists_it_once_space_is_freed() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(dir.path(), "64k") else {
        return;
    };
    let state = fs.0.join("state");
    let file = dir.path().join("flipgate.toml");
    write_atomic(
        &file,
        &config("blue", &[("blue", blue.addr), ("green", green.addr)], "")
            .replace("dir = \"state\"", &format!("dir = \"{}\"", state.display())),
    );
    let c = client();
    let p = Proc::start(&file);
    wait_persisted(&c, &p).await;
    // Fill the disk to the last block.
    let filler = fs.0.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![b'x'; 4096];
    while std::io::Write::write_all(&mut f, &block).is_ok() {}
    let _ = std::io::Write::write_all(&mut f, b"x");
    drop(f);

    let r = post(&c, &p, "flip", r#"{"target": "green"}"#).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["persisted"], false, "{}", r.text());
    until_served_by(&c, &p, "/", "green").await;
    let metrics = get(&c, &p.admin_url("/metrics"), &[]).await.text();
    assert!(
        !metrics.contains("flipgate_state_persist_failures_total 0\n"),
        "failures counted"
    );

    std::fs::remove_file(&filler).unwrap();
    wait_until(
        "the flip persisted by a retry",
        Duration::from_secs(60),
        || async { routes(&c, &p).await["state"]["persisted"] == true },
    )
    .await;
    p.kill9();
    let p = Proc::start(&file);
    until_served_by(&c, &p, "/", "green").await;
    p.kill9();
    drop(fs);
}

/// `kill -9` while flips are being made: after each restart the state is one of the decisions
/// (the old live target or the new one), never a mix or a broken file, and no temp file is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_flip_leaves_one_decision_or_the_other() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    write_atomic(
        &file,
        &config("blue", &[("blue", blue.addr), ("green", green.addr)], ""),
    );
    let c = client();
    for round in 0..10 {
        let p = Proc::start(&file);
        let target = if round % 2 == 0 { "green" } else { "blue" };
        let url = p.admin_url("/api/v1/routes/bot/flip");
        let body = format!(r#"{{"target": "{target}"}}"#);
        let json = [("content-type", "application/json")];
        // The flip is sent, and the process killed without waiting for the answer.
        let flip = {
            let c = c.clone();
            tokio::spawn(async move { send(&c, "POST", &url, &json, body).await })
        };
        tokio::task::yield_now().await;
        p.kill9();
        let _ = flip.await;
        let p = Proc::start(&file);
        let served = get(&c, &p.url("/"), &[]).await.text();
        assert!(
            served == "blue" || served == "green",
            "round {round}: {served}"
        );
        if let Ok(text) = std::fs::read_to_string(dir.path().join("state/state.json")) {
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("round {round}: a broken state file ({e}): {text}"));
            assert_eq!(v["routes"]["bot"]["state"]["live"], served, "round {round}");
        }
        p.kill9();
    }
    let left: Vec<_> = names_in(&dir.path().join("state"))
        .into_iter()
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(left.len() <= 1, "temp files left behind: {left:?}");
}
