//! The charts of the evidence: `GET /api/v1/history` (each target's request rate, error rate and
//! p99, with events as markers), `flipgate status --watch` (sparklines) and the status page's
//! charts in headless Chromium (laptop and phone width, no console errors, drawn from the API's
//! numbers). The gateway runs as a real process with a short sample interval
//! (`FLIPGATE_HISTORY_INTERVAL_MS`); the browser part SKIPS LOUDLY when no Chromium is installed.
//! Set `FLIPGATE_SCREENSHOT_DIR` to keep the screenshots.
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::proc::Proc;
use support::*;

/// Sample interval for the test process: 400 ms, so 180 points span 72 s, longer than the test.
const INTERVAL_MS: &str = "400";

/// Paced traffic to the gateway until dropped (a request every 5 ms from each of two tasks).
struct Load(Arc<AtomicBool>);

impl Load {
    fn start(url: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..2 {
            let (stop, url) = (stop.clone(), url.clone());
            tokio::spawn(async move {
                let c = client();
                let mut pace = tokio::time::interval(Duration::from_millis(5));
                while !stop.load(Ordering::SeqCst) {
                    pace.tick().await;
                    let req = http::Request::get(&url)
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap();
                    if let Ok(r) = c.request(req).await {
                        let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                    }
                }
            });
        }
        Load(stop)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn history(p: &Proc) -> Value {
    get(&client(), &p.admin_url("/api/v1/history"), &[])
        .await
        .json()
}

fn route<'a>(h: &'a Value, name: &str) -> &'a Value {
    h["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("route {name} in {h:#}"))
}

fn target<'a>(h: &'a Value, name: &str) -> &'a Value {
    route(h, "bot")["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("target {name} in {h:#}"))
}

fn last(series: &Value) -> Option<f64> {
    series.as_array()?.iter().rev().find_map(Value::as_f64)
}

async fn fg(admin: std::net::SocketAddr, args: &[&str]) -> (i32, String, String) {
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
    (
        o.status.code().expect("exited"),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_api_watch_and_status_page_charts() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    green.fail_every(4);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    write_atomic(
        &file,
        &config(
            "blue",
            &[("blue", blue.addr), ("green", green.addr)],
            "[routes.canary]\ntarget = \"green\"\npercent = 50\nsticky = \"none\"\n",
        ),
    );
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flipgate"));
    cmd.current_dir(dir.path())
        .env("FLIPGATE_HISTORY_INTERVAL_MS", INTERVAL_MS);
    let p = Proc::start_with(cmd, &file);
    let load = Load::start(p.url("/"));

    // Both targets' rates show up in the history, with the canary's errors and a p99.
    wait_until(
        "non-zero rates for blue and green",
        Duration::from_secs(30),
        || async {
            let h = history(&p).await;
            // Before the first sample the history has no routes.
            h["routes"].as_array().is_some_and(|r| !r.is_empty())
                && ["blue", "green"]
                    .iter()
                    .all(|t| last(&target(&h, t)["rate"]).is_some_and(|r| r > 0.0))
        },
    )
    .await;
    let h = history(&p).await;
    assert_eq!(h["interval_ms"], 400);
    assert_eq!(h["capacity"], 180);
    let points = h["t"].as_array().unwrap().len();
    for t in ["blue", "green"] {
        for series in ["rate", "error_rate", "p99_ms"] {
            assert_eq!(
                target(&h, t)[series].as_array().unwrap().len(),
                points,
                "{t} {series} aligned with t"
            );
        }
        assert!(last(&target(&h, t)["p99_ms"]).is_some(), "{t} has a p99");
    }
    let green_errors = target(&h, "green")["error_rate"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_f64)
        .fold(0.0, f64::max);
    assert!(green_errors > 0.1, "green fails every 4th: {green_errors}");
    assert_eq!(
        last(&target(&h, "blue")["error_rate"]),
        Some(0.0),
        "blue never fails"
    );

    // A flip is marked on the time axis.
    let r = admin_post(
        &client(),
        &p.admin_url("/api/v1/routes/bot/flip"),
        r#"{"target":"green"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until("a flip marker", Duration::from_secs(10), || async {
        let h = history(&p).await;
        route(&h, "bot")["markers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["kind"] == "flip" && m["message"].as_str().unwrap().contains("green"))
    })
    .await;
    // The flip sent all traffic to green: a later point has blue at zero.
    wait_until(
        "blue's rate falls to zero",
        Duration::from_secs(10),
        || async { last(&target(&history(&p).await, "blue")["rate"]) == Some(0.0) },
    )
    .await;

    // `status --watch --count 2`: two plain frames (stdout is a pipe), a sparkline per target.
    let (code, out, err) = fg(p.admin, &["status", "--watch", "--count", "2"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        !out.contains('\x1b'),
        "no terminal codes into a pipe:\n{out}"
    );
    assert_eq!(out.matches("redrawn every 2s").count(), 2, "{out}");
    for t in ["blue", "green"] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(t))
            .unwrap_or_else(|| panic!("a line for {t}:\n{out}"));
        assert!(
            line.chars().filter(|c| ('▁'..='█').contains(c)).count() >= 3,
            "{t} has sparklines: {line}"
        );
    }
    assert!(out.contains("flip: flipped live blue -> green"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("events") && l.contains('^')),
        "the flip is marked under the sparklines:\n{out}"
    );
    let (code, _, err) = fg(p.admin, &["status", "nope", "--watch", "--count", "1"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("unknown route `nope`"), "{err}");

    status_page(&p).await;
    drop(load);
}

/// The value of attribute `name` in the tag `tag` (as Chromium serialises it).
fn attr<'a>(tag: &'a str, name: &str) -> &'a str {
    let start = tag
        .find(&format!(" {name}=\""))
        .unwrap_or_else(|| panic!("{name} in {tag}"))
        + name.len()
        + 3;
    &tag[start..start + tag[start..].find('"').unwrap()]
}

async fn status_page(p: &Proc) {
    let Some(bin) = browser::chromium("the status page's charts were not rendered") else {
        return;
    };
    let url = p.admin_url("/");
    let (dom, stderr) = browser::run(bin, &url, &["--dump-dom".to_string()]).await;
    assert!(
        dom.contains("data-loaded=\"1\"") && !dom.contains("data-error="),
        "the page rendered without an exception.\nDOM:\n{dom}\nstderr:\n{stderr}"
    );
    let problems = browser::console_problems(&stderr);
    assert!(problems.is_empty(), "console errors: {problems:#?}");
    assert!(
        dom.contains("class=\"mark\"") && dom.contains("data-kind=\"flip\""),
        "the flip is marked on the charts:\n{dom}"
    );
    // Every series the page drew matches the API: its last value at the time the page says, and
    // the number of points it drew since the page's first point.
    let h = history(p).await;
    let t: Vec<u64> = h["t"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let charts_tag = &dom[dom.find("class=\"charts\"").expect("charts drawn")..];
    let first: u64 = attr(
        &charts_tag[..charts_tag.find('>').unwrap()],
        "data-history-first",
    )
    .parse()
    .unwrap();
    let mut drawn = 0;
    for tag in dom.split("<path ").skip(1) {
        let tag = &tag[..tag.find('>').unwrap()];
        if !tag.contains("class=\"series\"") {
            continue;
        }
        let (name, metric) = (attr(tag, "data-target"), attr(tag, "data-metric"));
        let series = target(&h, name)[metric].as_array().unwrap();
        let points: usize = attr(tag, "data-points").parse().unwrap();
        let t_last: u64 = attr(tag, "data-t-last").parse().unwrap();
        let value: f64 = attr(tag, "data-last").parse().unwrap();
        let at = t.iter().position(|x| *x == t_last).unwrap_or_else(|| {
            panic!("{name} {metric}: the page's last point {t_last} is in the API's t")
        });
        // (serde_json's float parsing may be one unit in the last place off: compare closely.)
        let api = series[at].as_f64().expect("a value where the page has one");
        assert!(
            (api - value).abs() <= 1e-9 * api.abs().max(1.0),
            "{name} {metric}: the page drew the API's value: {value} vs {api}"
        );
        let from = t
            .iter()
            .position(|x| *x == first)
            .expect("the page's first point is still in the history (72 s span)");
        let api_points = series[from..=at].iter().filter(|v| !v.is_null()).count();
        assert_eq!(points, api_points, "{name} {metric}: points drawn");
        drawn += 1;
    }
    assert_eq!(drawn, 6, "two targets x three metrics drawn:\n{dom}");

    browser::screenshots(
        bin,
        &url,
        "charts",
        &[("laptop", "1366,900"), ("phone", "390,1400")],
    )
    .await;
}
