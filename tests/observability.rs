//! Observability: exact per-target counts and split gauges on `/metrics` (checked by
//! `promtool check metrics` when installed), reload failures counted and shown in events, the
//! alert rules accepted by `promtool check rules`, the Grafana dashboard well-formed, and the access
//! log (one JSON or logfmt line per request with route, target, reason, status and times).
mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

/// One sample of the text exposition: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").expect("label pair");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (n.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        out.push(Sample {
            name,
            labels,
            value: value.parse().expect("numeric value"),
        });
    }
    out
}

/// The value of the one series `name` whose labels include `want`; panics if none or several.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    let hits: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(hits.len(), 1, "series {name}{want:?}: found {hits:?}");
    hits[0].value
}

fn promtool() -> Option<&'static str> {
    let ok = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Some("promtool")
    } else {
        eprintln!(
            "SKIPPED: promtool not installed (Debian package `prometheus`); .ci/run installs it"
        );
        None
    }
}

async fn scrape(c: &TestClient, gw: &Gw) -> (String, Vec<Sample>) {
    let r = get(c, &gw.admin_url("/metrics"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text();
    let samples = parse_metrics(&text);
    (text, samples)
}

#[tokio::test]
async fn metrics_count_each_target_exactly_and_follow_a_flip() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let gw = Gw::start(&config(
        "blue",
        &[("blue", blue.addr), ("green", green.addr)],
        "",
    ))
    .await;
    let c = client();
    for _ in 0..7 {
        assert_eq!(get(&c, &gw.url("/"), &[]).await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(get(&c, &gw.url("/status/503"), &[]).await.status, 503);
    }
    assert_eq!(get(&c, &gw.url("/status/404"), &[]).await.status, 404);

    let (_, m) = scrape(&c, &gw).await;
    let bot = |t: &'static str| [("route", "bot"), ("target", t)];
    let req = |m: &[Sample], t: &'static str, code: &'static str| {
        value(
            m,
            "flipgate_requests_total",
            &[("route", "bot"), ("target", t), ("code", code)],
        )
    };
    assert_eq!(req(&m, "blue", "2xx"), 7.0);
    assert_eq!(req(&m, "blue", "5xx"), 2.0);
    assert_eq!(req(&m, "blue", "4xx"), 1.0);
    assert_eq!(req(&m, "green", "2xx"), 0.0);
    assert_eq!(
        value(
            &m,
            "flipgate_upstream_errors_total",
            &[("route", "bot"), ("target", "blue"), ("kind", "status_5xx")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            "flipgate_upstream_errors_total",
            &[("route", "bot"), ("target", "blue"), ("kind", "connect")]
        ),
        0.0
    );
    assert_eq!(
        value(&m, "flipgate_request_duration_seconds_count", &bot("blue")),
        10.0
    );
    assert_eq!(
        value(
            &m,
            "flipgate_request_duration_seconds_bucket",
            &[("route", "bot"), ("target", "blue"), ("le", "+Inf")]
        ),
        10.0
    );
    // Buckets span proxy latencies: 100 µs .. 10 s.
    for le in ["0.0001", "10"] {
        value(
            &m,
            "flipgate_request_duration_seconds_bucket",
            &[("route", "bot"), ("target", "blue"), ("le", le)],
        );
    }
    assert_eq!(value(&m, "flipgate_split_percent", &bot("blue")), 100.0);
    assert_eq!(value(&m, "flipgate_split_percent", &bot("green")), 0.0);
    assert_eq!(value(&m, "flipgate_live_target", &bot("blue")), 1.0);
    assert_eq!(
        value(&m, "flipgate_circuit_tripped", &[("route", "bot")]),
        0.0
    );
    assert_eq!(
        value(
            &m,
            "flipgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    let generation_before = value(&m, "flipgate_config_generation", &[]);
    #[cfg(target_os = "linux")]
    assert!(
        value(&m, "process_resident_memory_bytes", &[]) > 0.0,
        "process collector metrics are exposed under their usual names"
    );

    let r = gw.act(&c, "flip", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    for _ in 0..3 {
        assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "green");
    }
    let (_, m) = scrape(&c, &gw).await;
    assert_eq!(req(&m, "green", "2xx"), 3.0);
    assert_eq!(req(&m, "blue", "2xx"), 7.0, "a flip loses no counts");
    assert_eq!(value(&m, "flipgate_split_percent", &bot("blue")), 0.0);
    assert_eq!(value(&m, "flipgate_split_percent", &bot("green")), 100.0);
    assert_eq!(value(&m, "flipgate_live_target", &bot("blue")), 0.0);
    assert_eq!(value(&m, "flipgate_live_target", &bot("green")), 1.0);
    assert_eq!(value(&m, "flipgate_flips_total", &[("route", "bot")]), 1.0);
    assert_eq!(
        value(&m, "flipgate_config_generation", &[]),
        generation_before + 1.0
    );

    // A canary splits the gauges; a rollback counts with its reason.
    let r = gw
        .act(&c, "canary", r#"{"percent": 12.5, "target": "blue"}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, m) = scrape(&c, &gw).await;
    assert_eq!(value(&m, "flipgate_split_percent", &bot("blue")), 12.5);
    assert_eq!(value(&m, "flipgate_split_percent", &bot("green")), 87.5);
    let r = gw.act(&c, "rollback", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (text, m) = scrape(&c, &gw).await;
    assert_eq!(value(&m, "flipgate_split_percent", &bot("blue")), 0.0);
    assert_eq!(
        value(
            &m,
            "flipgate_rollbacks_total",
            &[("route", "bot"), ("reason", "admin")]
        ),
        1.0
    );
    // Label values come from the config only: request paths never appear.
    assert!(!text.contains("/status/"));
    promtool_check_metrics(&text);
    gw.stop().await;
}

fn promtool_check_metrics(text: &str) {
    let Some(tool) = promtool() else { return };
    let mut child = std::process::Command::new(tool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics rejected /metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn rejected_reload_is_counted_and_explained() {
    let blue = spawn_upstream("blue").await;
    let good = config("blue", &[("blue", blue.addr)], "");
    let gw = Gw::start(&good).await;
    let c = client();
    let bad = good.replace("live = \"blue\"", "live = \"<b>nope</b>\"");
    // The watcher may start after a write right after start-up, and then takes that file as the
    // one in force; so write new bytes now and then (not on every poll: that would keep the
    // debounce from ever settling).
    let mut attempt = 0;
    wait_until("the bad file is rejected", Duration::from_secs(10), || {
        if attempt % 25 == 0 {
            gw.rewrite(&format!("{bad}\n# attempt {attempt}\n"));
        }
        attempt += 1;
        let (c, gw) = (&c, &gw);
        async move {
            let (_, m) = scrape(c, gw).await;
            value(
                &m,
                "flipgate_config_reloads_total",
                &[("result", "failure")],
            ) >= 1.0
        }
    })
    .await;
    let (_, m) = scrape(&c, &gw).await;
    assert_eq!(value(&m, "flipgate_config_last_reload_success", &[]), 0.0);
    assert_eq!(
        value(
            &m,
            "flipgate_config_reloads_total",
            &[("result", "success")]
        ),
        0.0
    );
    let routes = get(&c, &gw.admin_url("/api/v1/routes"), &[]).await.json();
    assert_eq!(routes["config"]["last_reload"]["result"], "failure");
    let err = routes["config"]["last_reload"]["error"].as_str().unwrap();
    assert!(err.contains("<b>nope</b>"), "{err}");
    let events = get(&c, &gw.admin_url("/api/v1/events"), &[]).await.json();
    let rejected = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "reload_rejected")
        .expect("a reload_rejected event");
    assert!(rejected["message"].as_str().unwrap().contains("live"));
    // Still serving the last good config.
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");
    gw.stop().await;
}

#[test]
fn alert_rules_pass_promtool() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus/flipgate-alerts.yml");
    assert!(rules.exists(), "{} is missing", rules.display());
    let Some(tool) = promtool() else { return };
    let out = std::process::Command::new(tool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(tool)
        .args(["test", "rules", "flipgate-alerts.test.yml"])
        .current_dir(rules.parent().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules (the alerts fire as their tests expect):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn grafana_dashboard_is_importable_json_over_our_metrics() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/grafana/flipgate.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert!(
        d["schemaVersion"].as_u64().unwrap() >= 36,
        "Grafana 10+ schema"
    );
    assert_eq!(d["uid"], "flipgate");
    let panels = d["panels"].as_array().unwrap();
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    for metric in [
        "flipgate_split_percent",
        "flipgate_requests_total",
        "flipgate_request_duration_seconds_bucket",
        "flipgate_config_reloads_total",
        "flipgate_circuit_tripped",
        "flipgate_analysis_evidence",
        "flipgate_shadow_requests_total",
        "flipgate_state_backend_up",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no panel queries {metric}"
        );
    }
    let annotations: Vec<&str> = d["annotations"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["expr"].as_str())
        .collect();
    assert!(annotations
        .iter()
        .any(|e| e.contains("flipgate_flips_total")));
    assert!(annotations
        .iter()
        .any(|e| e.contains("flipgate_rollbacks_total")));
    // Every metric named anywhere exists in the exposition (no typos).
    let m = flipgate::observe::metrics::Metrics::new();
    m.target("r", "t");
    m.split_percent.with_label_values(&["r", "t"]).set(0.0);
    m.live_target.with_label_values(&["r", "t"]).set(0);
    m.circuit_tripped.with_label_values(&["r"]).set(0);
    m.rollout_step.with_label_values(&["r"]).set(0);
    m.rollouts.with_label_values(&["r", "promoted"]).reset();
    m.rule("r", "x");
    m.shadow("r", "t");
    m.analysis_evidence("r", 0.0, 0.0);
    let known = m.render();
    for name in text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("flipgate_"))
    {
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_count")
            .trim_end_matches("_sum");
        assert!(
            known.contains(&format!("# TYPE {base} ")),
            "dashboard names unknown metric {name}"
        );
    }
}

/// Collects what the access-log layer writes.
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Runs on a current-thread runtime so the thread-local subscriber sees the proxy's events.
#[tokio::test(flavor = "current_thread")]
async fn access_log_json_then_logfmt_then_off() {
    use tracing_subscriber::prelude::*;
    let buf = Buf::default();
    let w = buf.clone();
    let _guard = tracing_subscriber::registry()
        .with(flipgate::observe::access_log::layer(move || w.clone()))
        .set_default();

    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let targets = [("blue", blue.addr), ("green", green.addr)];
    let with_log = |log: &str| {
        let c = config("blue", &targets, "");
        c.replacen(
            "[state]",
            &format!("[log]\n{log}\n\n[state]"),
            1,
        )
        .replace(
            "[routes.targets]",
            "[routes.canary]\ntarget = \"green\"\npercent = 50\nsticky = \"header:x-user\"\n\n[routes.preview]\nheader = \"x-flipgate-target\"\nallow_from = [\"127.0.0.0/8\"]\n\n[routes.targets]",
        )
    };
    let gw = Gw::start(&with_log("access = \"json\"")).await;
    let c = client();
    get(
        &c,
        &gw.url("/a?token=secret"),
        &[("x-request-id", "req-1"), ("x-flipgate-target", "green")],
    )
    .await;
    get(
        &c,
        &gw.url("/b"),
        &[("x-request-id", "req-2"), ("x-user", "u1")],
    )
    .await;
    get(
        &c,
        &gw.url("/status/503"),
        &[("x-request-id", "req-3"), ("x-flipgate-target", "blue")],
    )
    .await;
    let lines = buf.lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let v: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(v[0]["request_id"], "req-1");
    assert_eq!(v[0]["route"], "bot");
    assert_eq!(v[0]["target"], "green");
    assert_eq!(v[0]["reason"], "preview");
    assert_eq!(v[0]["status"], 200);
    assert_eq!(v[0]["path"], "/a", "query strings are not logged");
    assert_eq!(v[1]["reason"], "sticky");
    assert_eq!(v[2]["status"], 503);
    assert_eq!(v[2]["target"], "blue");
    for l in &v {
        let up = l["upstream_ms"].as_f64().unwrap();
        let total = l["total_ms"].as_f64().unwrap();
        assert!(up >= 0.0 && total >= up, "{l}");
    }

    // The format is chosen in the route file and follows a reload.
    let generation = gw.generation();
    gw.rewrite(&with_log("access = \"logfmt\""));
    wait_until("logfmt config applied", Duration::from_secs(10), || async {
        gw.generation() > generation
    })
    .await;
    get(
        &c,
        &gw.url("/c"),
        &[("x-request-id", "req-4"), ("x-flipgate-target", "blue")],
    )
    .await;
    let lines = buf.lines();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let l = &lines[3];
    assert!(l.starts_with("ts="), "{l}");
    assert!(
        l.contains(" request_id=req-4 client=127.0.0.1 method=GET path=/c route=bot target=blue reason=preview status=200 upstream_ms="),
        "{l}"
    );

    // A request without a request id gets the generated one, the same one the upstream saw.
    let r = get(&c, &gw.url("/headers"), &[("x-flipgate-target", "blue")]).await;
    let sent = r.json()["x-request-id"].as_str().unwrap().to_string();
    assert!(buf.lines()[4].contains(&format!("request_id={sent} ")));

    // Off: nothing more is written.
    let generation = gw.generation();
    gw.rewrite(&with_log("access = \"off\""));
    wait_until("access log off", Duration::from_secs(10), || async {
        gw.generation() > generation
    })
    .await;
    for _ in 0..5 {
        get(&c, &gw.url("/"), &[]).await;
    }
    assert_eq!(buf.lines().len(), 5);
    // Sampled at 0: nothing either.
    let generation = gw.generation();
    gw.rewrite(&with_log("access = \"json\"\nsample = 0.0"));
    wait_until("sample 0 applied", Duration::from_secs(10), || async {
        gw.generation() > generation
    })
    .await;
    for _ in 0..5 {
        get(&c, &gw.url("/"), &[]).await;
    }
    assert_eq!(buf.lines().len(), 5);
    gw.stop().await;
}

/// Issue 17 item 7: a reload that reads the config in force counts as a success, as the gauge
/// says: here the last good file written back over a broken one (SIGHUP takes the same path).
#[tokio::test]
async fn restoring_the_config_in_force_counts_as_a_successful_reload() {
    let blue = spawn_upstream("blue").await;
    let text = config("blue", &[("blue", blue.addr)], "");
    let gw = Gw::start(&text).await;
    let metrics = gw.gateway.as_ref().unwrap().control.metrics.clone();
    let count = |result: &str| metrics.config_reloads.with_label_values(&[result]).get();
    let failures = count("failure");
    gw.rewrite("[[routes]\n");
    wait_until(
        "the broken file is counted",
        Duration::from_secs(10),
        || async { count("failure") > failures },
    )
    .await;
    assert_eq!(metrics.config_last_reload_success.get(), 0);
    let before = count("success");
    gw.rewrite(&text);
    wait_until(
        "the restored file is counted",
        Duration::from_secs(10),
        || async { count("success") > before },
    )
    .await;
    assert_eq!(metrics.config_last_reload_success.get(), 1);
    gw.stop().await;
}
