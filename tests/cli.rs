//! The deploy-script client commands, run as the real binary against a running gateway: output,
//! exit codes (0 ok, 1 failure with a one-line reason, 2 usage) and a deploy script's `&&`/`||`.
mod support;
use std::time::{Duration, Instant};

use support::*;

const TOKEN: &str = "cli-test-token";

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `flipgate ARGS` against `gw`'s admin API, with the token in `FLIPGATE_ADMIN_TOKEN` if given.
async fn fg(gw: &Gw, token: Option<&str>, args: &[&str]) -> Out {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flipgate"));
    cmd.args(args)
        .env_remove("FLIPGATE_ADMIN_TOKEN")
        .env("FLIPGATE_ADMIN", format!("http://{}", gw.admin))
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    if let Some(t) = token {
        cmd.env("FLIPGATE_ADMIN_TOKEN", t);
    }
    let o = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("client command finishes")
        .expect("binary runs");
    Out {
        code: o.status.code().expect("exited"),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn ok(o: &Out) {
    assert_eq!(o.code, 0, "stdout: {}\nstderr: {}", o.stdout, o.stderr);
}

/// Exit 1 with exactly one line naming the reason.
fn fails(o: &Out, contains: &str) {
    assert_eq!(o.code, 1, "stdout: {}\nstderr: {}", o.stdout, o.stderr);
    assert_eq!(o.stderr.trim_end().lines().count(), 1, "{}", o.stderr);
    assert!(
        o.stderr.contains(contains),
        "`{}` lacks `{contains}`",
        o.stderr
    );
}

async fn gw(blue: &Upstream, green: &Upstream, extra: &str) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let cfg = config("blue", &[("blue", blue.addr), ("green", green.addr)], extra)
        .replace("[admin]\n", "[admin]\ntoken_file = \"admin.token\"\n");
    Gw::start_in(dir, &cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_and_exit_codes() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let gw = gw(&blue, &green, "").await;
    let t = Some(TOKEN);
    let c = client();

    // status: a table, or the API's JSON; reads need no token.
    let o = fg(&gw, None, &["status"]).await;
    ok(&o);
    assert!(o.stdout.starts_with("ROUTE"), "{}", o.stdout);
    assert!(
        o.stdout.contains("bot") && o.stdout.contains("blue (file)"),
        "{}",
        o.stdout
    );
    let o = fg(&gw, None, &["status", "bot", "--json"]).await;
    ok(&o);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["live"], "blue");
    fails(
        &fg(&gw, None, &["status", "nope"]).await,
        "unknown route `nope` (404)",
    );

    // Mutations need the token.
    fails(&fg(&gw, None, &["flip", "bot"]).await, "(401)");
    fails(&fg(&gw, Some("wrong"), &["flip", "bot"]).await, "(401)");
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");

    // canary -> promote -> rollback, each taking effect for the next request.
    let o = fg(&gw, t, &["canary", "bot", "100"]).await;
    ok(&o);
    assert!(o.stdout.contains("green 100.00% (admin)"), "{}", o.stdout);
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "green");
    ok(&fg(&gw, t, &["canary", "bot", "0.5", "--target", "green"]).await);
    ok(&fg(&gw, t, &["promote", "bot"]).await);
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "green");
    ok(&fg(&gw, t, &["rollback", "bot"]).await);
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");
    fails(
        &fg(&gw, t, &["rollback", "bot"]).await,
        "nothing to roll back to",
    );
    fails(
        &fg(&gw, t, &["promote", "bot"]).await,
        "no running canary to promote (422)",
    );
    fails(
        &fg(&gw, t, &["canary", "bot", "150"]).await,
        "between 0 and 100, got 150 (422)",
    );
    fails(
        &fg(&gw, t, &["flip", "bot", "red"]).await,
        "no target `red`",
    );
    fails(
        &fg(&gw, t, &["flip", "nope"]).await,
        "unknown route `nope` (404)",
    );
    let o = fg(&gw, t, &["flip", "bot", "green"]).await;
    ok(&o);
    assert!(o.stdout.contains("green (admin)"), "{}", o.stdout);
    ok(&fg(&gw, t, &["reset", "bot"]).await);
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "green");

    // Usage errors: exit 2, nothing sent.
    let g = gw.generation();
    for args in [
        &["flip"][..],
        &["canary", "bot"],
        &["canary", "bot", "lots"],
        &["promote", "bot", "extra"],
        &["frobnicate"],
    ] {
        let o = fg(&gw, t, args).await;
        assert_eq!(o.code, 2, "{args:?}: {}", o.stderr);
    }
    assert_eq!(gw.generation(), g);

    ok(&fg(&gw, t, &["--help"]).await);

    // `--admin` without a scheme is the plain-HTTP admin listener at that address.
    let o = fg(
        &gw,
        None,
        &["status", "bot", "--admin", &gw.admin.to_string()],
    )
    .await;
    ok(&o);

    // An unreachable admin API is a failure, not a hang.
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flipgate"));
    let o = cmd
        .args(["status", "--admin", "http://127.0.0.1:9"])
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot reach admin API"));
    gw.stop().await;
}

/// Runs a deploy script (`sh -c`) with `$FG` the binary and the admin URL and token in the env.
async fn script(gw: &Gw, text: &str) -> tokio::process::Child {
    tokio::process::Command::new("sh")
        .arg("-c")
        .arg(text)
        .env("FG", env!("CARGO_BIN_EXE_flipgate"))
        .env("FLIPGATE_ADMIN", format!("http://{}", gw.admin))
        .env("FLIPGATE_ADMIN_TOKEN", TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn finish(child: tokio::process::Child) -> Out {
    let o = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("script finishes")
        .unwrap();
    Out {
        code: o.status.code().unwrap(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_script_promotes_a_healthy_canary() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let gw = gw(&blue, &green, "").await;
    let o = finish(
        script(
            &gw,
            "$FG canary bot 5 >/dev/null && $FG promote bot || { $FG rollback bot; exit 1; }",
        )
        .await,
    )
    .await;
    ok(&o);
    assert!(o.stdout.contains("green (admin)"), "{}", o.stdout);
    assert_eq!(get(&client(), &gw.url("/"), &[]).await.text(), "green");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_script_stops_when_the_canary_trips() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    green.fail_every(1);
    let gw = gw(
        &blue,
        &green,
        "[routes.circuit]\nwindow = \"60s\"\nmin_requests = 5\n",
    )
    .await;
    let c = client();
    // The script's bake step waits for the circuit's verdict instead of a fixed sleep; the test
    // plays the users. The canary fails and trips; `promote` then fails (exit 1, one line) and
    // `rollback` leaves live on blue.
    let child = script(
        &gw,
        "$FG canary bot 100 >/dev/null \
         && until $FG status bot | grep -q tripped; do sleep 0.05; done \
         && $FG promote bot || { $FG rollback bot; exit 1; }",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw
        .gateway
        .as_ref()
        .unwrap()
        .control
        .snapshots()
        .load()
        .routes[0]
        .state
        .tripped
        .is_none()
    {
        get(&c, &gw.url("/"), &[]).await;
        assert!(Instant::now() < deadline, "never tripped");
    }
    let o = finish(child).await;
    assert_eq!(o.code, 1, "stdout: {}\nstderr: {}", o.stdout, o.stderr);
    assert!(o.stderr.contains("is tripped"), "{}", o.stderr);
    assert!(o.stdout.contains("blue (file)"), "{}", o.stdout);
    assert!(
        o.stdout.contains("bot tripped: canary error rate 100.0%"),
        "{}",
        o.stdout
    );
    // The rollback says the circuit had done it already, and no line is wider than a terminal.
    assert!(
        o.stdout
            .contains("`bot` was already rolled back by the circuit; live is `blue`"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.lines().all(|l| l.chars().count() <= 100),
        "{}",
        o.stdout
    );
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");
    gw.stop().await;
}
