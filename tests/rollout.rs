//! The rollout ladder, run by the server, end to end on loopback with real upstream bots: a healthy
//! canary climbs every step and promotes (the CLI exits 0); a canary failing half its requests is
//! rolled back by the circuit in the first step that has its requests and no step follows (the CLI
//! exits 1); without traffic a step waits and says so; pause holds, resume continues, abort rolls
//! back; an operator's own split change stops it; a `kill -9` and restart resumes the same step;
//! `--dry-run` changes nothing. Holds are short ("100ms"); every wait is a condition with a
//! deadline.
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::proc::Proc;
use support::*;

const DEADLINE: Duration = Duration::from_secs(30);

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `flipgate ARGS` against the admin API at `admin` (stdout is a pipe: plain lines).
async fn fg(admin: std::net::SocketAddr, args: &[&str]) -> Out {
    let o = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_flipgate"))
            .args(args)
            .env_remove("FLIPGATE_ADMIN_TOKEN")
            .env("FLIPGATE_ADMIN", format!("http://{admin}"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the command finishes")
    .expect("the binary runs");
    Out {
        code: o.status.code().expect("exited"),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Steady traffic to the gateway's route `bot` until dropped; counts the answers.
struct Load {
    stop: Arc<AtomicBool>,
    pub sent: Arc<AtomicU64>,
}

impl Load {
    fn start(addr: std::net::SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        for _ in 0..2 {
            let (stop, sent) = (stop.clone(), sent.clone());
            tokio::spawn(async move {
                let c = client();
                let url = format!("http://{addr}/");
                while !stop.load(Ordering::SeqCst) {
                    let req = http::Request::get(&url)
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap();
                    if let Ok(r) = c.request(req).await {
                        let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        Load { stop, sent }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn cfg(blue: &Upstream, green: &Upstream, min_requests: u32, rollout: &str) -> String {
    config(
        "blue",
        &[("blue", blue.addr), ("green", green.addr)],
        &format!(
            "[routes.circuit]\nwindow = \"30s\"\nmin_requests = {min_requests}\nmax_error_rate = 0.05\n{rollout}"
        ),
    )
}

async fn route(admin: std::net::SocketAddr) -> serde_json::Value {
    get(&client(), &format!("http://{admin}/api/v1/routes/bot"), &[])
        .await
        .json()
}

async fn rollout_state(admin: std::net::SocketAddr) -> String {
    route(admin).await["rollout"]["state"]
        .as_str()
        .unwrap_or("none")
        .to_string()
}

async fn post(admin: std::net::SocketAddr, verb: &str, body: &str) -> Resp {
    admin_post(
        &client(),
        &format!("http://{admin}/api/v1/routes/bot/{verb}"),
        body,
    )
    .await
}

async fn events(gw: &Gw) -> String {
    get(&client(), &gw.admin_url("/api/v1/events"), &[])
        .await
        .text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_climbs_every_step_and_promotes() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let gw = Gw::start(&cfg(
        &blue,
        &green,
        5,
        "[routes.rollout]\nsteps = [5, 25, 50, 100]\nhold = \"100ms\"\n",
    ))
    .await;
    let _load = Load::start(gw.addr);
    let o = fg(gw.admin, &["rollout", "bot", "--to", "green"]).await;
    assert_eq!(o.code, 0, "{o}");
    // One plain line per change: every step was taken, in order, then the promotion.
    let mut at = 0;
    for needle in [
        "step 1/4 5%",
        "step 2/4 25%",
        "step 3/4 50%",
        "promoted: `green` is live",
    ] {
        let i = o.stdout[at..]
            .find(needle)
            .unwrap_or_else(|| panic!("`{needle}` missing or out of order: {o}"));
        at += i + needle.len();
    }
    assert!(
        !o.stdout.contains('\r'),
        "piped output has no live line: {o}"
    );
    let v = route(gw.admin).await;
    assert_eq!(v["live"], "green");
    assert_eq!(v["previous"], "blue");
    assert_eq!(v["rollout"]["state"], "promoted");
    assert_eq!(v["rollout"]["step"], 3);
    assert_eq!(
        metric(&gw, "flipgate_rollouts_total", "result=\"promoted\"").await,
        1.0
    );
    assert_eq!(
        metric(&gw, "flipgate_rollout_step", "route=\"bot\"").await,
        0.0
    );
    let c = client();
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "green");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_half_its_requests_is_rolled_back_in_its_first_step() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    green.fail_every(2);
    // min_requests_per_step defaults to the circuit's min_requests (10).
    let gw = Gw::start(&cfg(
        &blue,
        &green,
        10,
        "[routes.rollout]\nsteps = [5, 25, 50, 100]\nhold = \"100ms\"\n",
    ))
    .await;
    let _load = Load::start(gw.addr);
    let o = fg(gw.admin, &["rollout", "bot", "--to", "green"]).await;
    assert_eq!(o.code, 1, "{o}");
    assert!(
        o.stderr.contains("rolled back") && o.stderr.contains("circuit tripped"),
        "{o}"
    );
    assert!(
        !o.stdout.contains("step 2/4"),
        "no step after the first: {o}"
    );
    let v = route(gw.admin).await;
    assert_eq!(v["live"], "blue");
    assert_eq!(v["canary"]["percent"], 0.0);
    assert_eq!(v["rollout"]["state"], "rolled_back");
    assert_eq!(v["rollout"]["step"], 0);
    assert!(v["circuit"]["tripped"].is_object());
    assert!(!events(&gw).await.contains("step 2 of 4"));
    assert_eq!(
        metric(&gw, "flipgate_rollouts_total", "result=\"rolled_back\"").await,
        1.0
    );
    assert_eq!(
        metric(&gw, "flipgate_rollbacks_total", "reason=\"circuit\"").await,
        1.0
    );
    // Ended is ended: traffic goes on, and the ladder never takes another step.
    let sent = _load.sent.load(Ordering::SeqCst);
    wait_until("more traffic after the trip", DEADLINE, || async {
        _load.sent.load(Ordering::SeqCst) > sent + 200
    })
    .await;
    let v = route(gw.admin).await;
    assert_eq!(v["rollout"]["step"], 0);
    assert_eq!(v["canary"]["percent"], 0.0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_traffic_a_step_waits_pause_holds_resume_continues_abort_rolls_back() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let gw = Gw::start(&cfg(&blue, &green, 5, "")).await;
    let admin = gw.admin;

    // Bad requests change nothing.
    let r = post(admin, "rollout", r#"{"target": "green", "steps": [5, 50]}"#).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("last step must be 100"), "{}", r.text());
    let r = post(admin, "rollout", r#"{"target": "grene"}"#).await;
    assert_eq!(r.status, 422, "{}", r.text());
    let r = post(admin, "rollout", r#"{"target": "blue"}"#).await;
    assert_eq!(r.status, 422, "live is no rollout target: {}", r.text());
    let r = post(admin, "rollout/pause", "").await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(route(admin).await["rollout"].is_null());

    let r = post(
        admin,
        "rollout",
        r#"{"target": "green", "steps": [5, 25, 100], "hold": "100ms", "min_requests_per_step": 3}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let v = r.json();
    assert_eq!(v["rollout"]["percent"], 5);
    assert_eq!(v["canary"]["percent"], 5.0);
    let r = post(admin, "rollout", r#"{"target": "green"}"#).await;
    assert_eq!(r.status, 409, "one at a time: {}", r.text());
    assert_eq!(
        metric(&gw, "flipgate_rollout_step", "route=\"bot\"").await,
        5.0
    );

    // No traffic: the hold passes, the step waits and says so.
    wait_until("waiting_for_traffic", DEADLINE, || async {
        rollout_state(admin).await == "waiting_for_traffic"
    })
    .await;
    let c = client();
    wait_until("the wait is an event", DEADLINE, || async {
        events(&gw).await.contains("waiting for traffic at step 1")
    })
    .await;
    assert_eq!(route(admin).await["rollout"]["step"], 0);
    let o = fg(admin, &["status"]).await;
    assert!(
        o.stdout
            .contains("bot rollout of green: step 1/3 at 5%, waiting for traffic"),
        "{o}"
    );

    // Paused, traffic enough for the step does not move it.
    let o = fg(admin, &["pause", "bot"]).await;
    assert_eq!(o.code, 0, "{o}");
    assert_eq!(rollout_state(admin).await, "paused");
    let h = "x-flipgate-target";
    wait_until("the paused step has its requests", DEADLINE, || async {
        // Preview from loopback reaches green directly and counts in its window.
        get(&c, &gw.url("/"), &[(h, "green")]).await;
        route(admin).await["rollout"]["requests"].as_u64().unwrap() >= 3
    })
    .await;
    let v = route(admin).await;
    assert_eq!(v["rollout"]["state"], "paused");
    assert_eq!(v["rollout"]["step"], 0);

    // Resumed, it takes the next step.
    let o = fg(admin, &["resume", "bot"]).await;
    assert_eq!(o.code, 0, "{o}");
    wait_until("the next step", DEADLINE, || async {
        route(admin).await["rollout"]["step"] == 1
    })
    .await;
    assert_eq!(route(admin).await["canary"]["percent"], 25.0);

    // Abort: the canary goes back to 0 %, blue keeps serving.
    let o = fg(admin, &["abort", "bot"]).await;
    assert_eq!(o.code, 0, "{o}");
    let v = route(admin).await;
    assert_eq!(v["rollout"]["state"], "aborted");
    assert_eq!(v["canary"]["percent"], 0.0);
    assert_eq!(v["live"], "blue");
    assert_eq!(
        metric(&gw, "flipgate_rollbacks_total", "reason=\"rollout\"").await,
        1.0
    );
    assert_eq!(
        metric(&gw, "flipgate_rollouts_total", "result=\"aborted\"").await,
        1.0
    );
    assert_eq!(
        metric(&gw, "flipgate_rollout_step", "route=\"bot\"").await,
        0.0
    );
    // The ended rollout is followed no further: `--watch` reports how it ended.
    let o = fg(admin, &["rollout", "bot", "--watch"]).await;
    assert_eq!(o.code, 1, "{o}");
    assert!(o.stderr.contains("aborted by the operator"), "{o}");

    // An operator's own split change stops a running rollout.
    let r = post(
        admin,
        "rollout",
        r#"{"target": "green", "hold": "1h", "steps": [10, 100]}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let r = post(admin, "canary", r#"{"percent": 30}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["rollout"]["state"], "aborted");
    assert!(
        v["rollout"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("operator canary"),
        "{v}"
    );
    assert_eq!(v["canary"]["percent"], 30.0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_the_plan_and_changes_nothing() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let gw = Gw::start(&cfg(
        &blue,
        &green,
        5,
        "[routes.rollout]\nsteps = [10, 50, 100]\nhold = \"2m\"\n",
    ))
    .await;
    let before = gw.generation();
    let o = fg(gw.admin, &["rollout", "bot", "--to", "green", "--dry-run"]).await;
    assert_eq!(o.code, 0, "{o}");
    for needle in [
        "step 1  10%  hold 2m",
        "step 2  50%  hold 2m",
        "step 3  100%  promote `green`",
        "earliest finish:",
        "(in 4m)",
        "nothing was changed",
    ] {
        assert!(o.stdout.contains(needle), "`{needle}`: {o}");
    }
    let o = fg(
        gw.admin,
        &[
            "rollout",
            "bot",
            "--to",
            "green",
            "--steps",
            "5,100",
            "--hold",
            "30s",
            "--dry-run",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{o}");
    assert!(o.stdout.contains("(in 30s)"), "{o}");
    assert_eq!(gw.generation(), before, "a dry run publishes nothing");
    let v = route(gw.admin).await;
    assert!(v["rollout"].is_null());
    assert!(v["canary"].is_null(), "{v}");
    // Bad usage is exit 2, and changes nothing either.
    for args in [
        &["rollout", "bot"][..],
        &["rollout", "bot", "--to", "green", "--steps", "5,50"],
        &["rollout", "bot", "--to", "green", "--steps", "50,5,100"],
        &["rollout", "bot", "--to", "green", "--hold", "0s"],
    ] {
        let o = fg(gw.admin, args).await;
        assert_eq!(o.code, 2, "{args:?}: {o}");
    }
    assert_eq!(gw.generation(), before);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_and_restart_resumes_the_same_step_with_its_hold_restarted() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    write_atomic(&file, &cfg(&blue, &green, 3, ""));
    let p = Proc::start(&file);
    // Detached: the server runs the ladder; the CLI returns at once.
    let o = fg(
        p.admin,
        &[
            "rollout",
            "bot",
            "--to",
            "green",
            "--steps",
            "5,25,50,100",
            "--hold",
            "100ms",
            "--min-requests",
            "3",
            "--detach",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{o}");
    assert!(o.stdout.contains("detached"), "{o}");
    // Up to the second step with traffic (straight to green by preview, which counts in its
    // window); then traffic stops, so it stays there, waiting for traffic.
    let c = client();
    let h = "x-flipgate-target";
    wait_until("the second step", DEADLINE, || async {
        get(&c, &p.url("/"), &[(h, "green")]).await;
        route(p.admin).await["rollout"]["step"] == 1
    })
    .await;
    wait_until("the step is in the state file", DEADLINE, || async {
        route(p.admin).await["persisted"] == true
    })
    .await;
    let before = route(p.admin).await["rollout"].clone();
    assert_eq!(before["step"], 1, "{before}");
    assert_eq!(before["percent"], 25);
    p.kill9();

    let p = Proc::start(&file);
    let v = route(p.admin).await;
    assert_eq!(v["rollout"]["step"], 1, "{v}");
    assert_eq!(v["rollout"]["started_unix_ms"], before["started_unix_ms"]);
    assert_eq!(v["canary"]["percent"], 25.0);
    wait_until("the step's hold started over", DEADLINE, || async {
        route(p.admin).await["rollout"]["step_started_unix_ms"]
            .as_u64()
            .unwrap()
            > before["step_started_unix_ms"].as_u64().unwrap()
    })
    .await;
    let v = route(p.admin).await;
    assert_eq!(v["rollout"]["step"], 1, "the same step: {v}");
    assert!(
        ["running", "waiting_for_traffic"].contains(&v["rollout"]["state"].as_str().unwrap()),
        "{v}"
    );
    // And it goes on from there to the end.
    wait_until("promoted after the restart", DEADLINE, || async {
        get(&c, &p.url("/"), &[(h, "green")]).await;
        route(p.admin).await["rollout"]["state"] == "promoted"
    })
    .await;
    assert_eq!(route(p.admin).await["live"], "green");
}

/// The status page shows the ladder with the current step highlighted and the time left (rendered
/// in headless Chromium; skipped loudly when none is installed, as in `status_page.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_ladder_and_the_time_left() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let gw = Gw::start(&cfg(&blue, &green, 5, "")).await;
    let r = post(
        gw.admin,
        "rollout",
        r#"{"target": "green", "steps": [5, 25, 50, 100], "hold": "1h"}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let page = get(&client(), &gw.admin_url("/"), &[]).await.text();
    assert!(page.contains("rolloutView") && page.contains("aria-current"));
    let Some(bin) = browser::chromium("the status page was not rendered") else {
        return;
    };
    let (dom, _) = browser::run(bin, &gw.admin_url("/"), &["--dump-dom".to_string()]).await;
    assert!(dom.contains("data-loaded=\"1\""), "{dom}");
    for want in [
        "<li class=\"current\" aria-current=\"step\">5%</li>",
        "<li class=\"\">25%</li>",
        "running",
        "step 1/4 at 5%",
    ] {
        assert!(dom.contains(want), "rendered page lacks `{want}`:\n{dom}");
    }
    // The hold's time left, rounded to the second: "60m" when the page rendered within half a
    // second of the start, else "59m …s".
    let left = ["60m left", "59m "].iter().any(|w| dom.contains(w)) && dom.contains(" left");
    assert!(left, "rendered page lacks the hold's time left:\n{dom}");
    gw.stop().await;
}

/// A route file that changes the route's split is the newest intent: a rollout in progress ends
/// as `aborted` and says why; one that leaves the split alone (here: new rollout defaults) keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_edit_of_the_split_ends_a_rollout_and_other_edits_keep_it() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let text = cfg(&blue, &green, 5, "");
    let gw = Gw::start(&text).await;
    let r = post(
        gw.admin,
        "rollout",
        r#"{"target": "green", "steps": [5, 100], "hold": "1h"}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let g = gw.generation();
    gw.rewrite(&format!("{text}[routes.rollout]\nhold = \"5m\"\n"));
    wait_until("the edit is applied", DEADLINE, || async {
        gw.generation() > g
    })
    .await;
    let v = route(gw.admin).await;
    assert_eq!(v["rollout"]["state"], "running", "{v}");
    assert_eq!(v["rollout_defaults"]["hold_ms"], 300_000);
    gw.rewrite(&text.replace("live = \"blue\"", "live = \"green\""));
    wait_until("the rollout ends", DEADLINE, || async {
        rollout_state(gw.admin).await == "aborted"
    })
    .await;
    let v = route(gw.admin).await;
    assert_eq!(v["live"], "green");
    assert!(
        v["rollout"]["reason"]
            .as_str()
            .unwrap()
            .contains("route file changed"),
        "{v}"
    );
    assert_eq!(
        metric(&gw, "flipgate_rollout_step", "route=\"bot\"").await,
        0.0
    );
    gw.stop().await;
}
