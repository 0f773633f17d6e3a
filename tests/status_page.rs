//! The status page at the admin `/`: self-contained (works air-gapped), fed by the JSON API, and
//! safe against markup in config names and event text. The browser test renders it in headless
//! Chromium (Debian's `chromium`) and SKIPS LOUDLY when no browser is installed; set
//! `FLIPGATE_SCREENSHOT_DIR` to keep laptop and phone screenshots.
mod support;

use std::time::Duration;

use support::*;

const XSS: &str = "<img src=x onerror=\"document.title='pwned'\">";

/// Two routes: `chatbot` with a sticky canary and a circuit, `webhooks` whose circuit has tripped.
async fn busy_gateway() -> (Gw, Vec<Upstream>) {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let bad = spawn_upstream("green-bad").await;
    bad.fail_every(1);
    let config = format!(
        r#"[server]
listen = "127.0.0.1:0"
upstream_timeout = "5s"

[admin]
listen = "127.0.0.1:0"

[state]
dir = "state"

[[routes]]
name = "chatbot"
hosts = ["bot.example.com", "*.bot.example.com"]
live = "blue"

[routes.targets]
blue = ["{blue}"]
green = ["{green}"]

[routes.canary]
target = "green"
percent = 20
sticky = "header:x-user-id"

[routes.circuit]
window = "30s"
min_requests = 1000
max_error_rate = 0.05
bake = "5m"

[[routes.rules]]
name = "beta-testers"
target = "green"
header = "x-user-tier"
values = ["beta"]

[[routes]]
name = "webhooks"
path_prefix = "/hooks"
live = "blue"

[routes.targets]
blue = ["{blue}"]
green = ["{bad}"]

[routes.canary]
target = "green"
percent = 100
sticky = "none"

[routes.circuit]
window = "30s"
min_requests = 5
max_error_rate = 0.1
bake = "1m"
"#,
        blue = blue.addr,
        green = green.addr,
        bad = bad.addr
    );
    let gw = Gw::start(&config).await;
    let c = client();
    for i in 0..40 {
        let user = format!("user-{i}");
        get(
            &c,
            &gw.url("/chat"),
            &[("host", "bot.example.com"), ("x-user-id", &user)],
        )
        .await;
    }
    for _ in 0..8 {
        get(&c, &gw.url("/hooks/github"), &[]).await;
    }
    wait_until(
        "webhooks circuit trips",
        Duration::from_secs(10),
        || async {
            let r = get(&c, &gw.admin_url("/api/v1/routes/webhooks"), &[]).await;
            r.json()["circuit"]["state"] == "tripped"
        },
    )
    .await;
    // A rejected reload whose error quotes hostile text from the file.
    let hostile = config.replacen(
        "live = \"blue\"",
        &format!("live = \"{}\"", XSS.replace('"', "\\\"")),
        1,
    );
    let mut attempt = 0;
    wait_until("hostile file rejected", Duration::from_secs(10), || {
        if attempt % 25 == 0 {
            gw.rewrite(&format!("{hostile}\n# attempt {attempt}\n"));
        }
        attempt += 1;
        let (c, gw) = (&c, &gw);
        async move {
            let r = get(c, &gw.admin_url("/api/v1/routes"), &[]).await;
            r.json()["config"]["last_reload"]["result"] == "failure"
        }
    })
    .await;
    (gw, vec![blue, green, bad])
}

#[tokio::test]
async fn page_is_self_contained_and_its_json_has_what_it_shows() {
    let (gw, _ups) = busy_gateway().await;
    let c = client();
    let page = get(&c, &gw.admin_url("/"), &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let html = page.text();
    // The charts' SVG namespace is a name, never fetched.
    let fetched = html.replace("\"http://www.w3.org/2000/svg\"", "");
    for external in ["http://", "https://", "//cdn", "@import", "<link", "src=\""] {
        assert!(
            !fetched.contains(external),
            "status page must work air-gapped; found `{external}`"
        );
    }
    assert!(
        !html.contains("innerHTML") && !html.contains("insertAdjacentHTML"),
        "the page must build the DOM from text, never from markup"
    );
    assert!(
        html.contains("/api/v1/routes")
            && html.contains("/api/v1/events")
            && html.contains("/api/v1/history")
    );

    let routes = get(&c, &gw.admin_url("/api/v1/routes"), &[]).await.json();
    assert!(routes["generation"].as_u64().unwrap() >= 1);
    // What the page's persistence banner and badges read.
    assert_eq!(routes["state"]["role"], "owner", "{routes}");
    assert!(routes["state"]["persisted"].is_boolean(), "{routes}");
    assert!(routes["routes"][0]["persisted"].is_boolean(), "{routes}");
    assert!(html.contains("st.persisted") && html.contains("r.persisted"));
    assert!(routes["config"]["path"].is_string());
    let last = &routes["config"]["last_reload"];
    assert_eq!(last["result"], "failure");
    assert!(last["error"].as_str().unwrap().contains(XSS));
    let chat = &routes["routes"][0];
    assert_eq!(chat["name"], "chatbot");
    assert_eq!(chat["live"], "blue");
    assert_eq!(chat["live_source"], "file");
    assert_eq!(chat["canary"]["target"], "green");
    assert_eq!(chat["canary"]["percent"], 20.0);
    assert_eq!(chat["canary"]["sticky"], "header:x-user-id");
    assert_eq!(chat["split"][0]["target"], "blue");
    assert_eq!(chat["split"][0]["percent"], 80.0);
    assert_eq!(chat["split"][1]["percent"], 20.0);
    assert_eq!(chat["circuit"]["state"], "watching");
    let requests: u64 = chat["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert!(t["window"]["seconds"].as_f64().unwrap() > 0.0);
            assert!(t["instances"][0].is_string());
            assert!(t["instance_health"][0].is_string(), "{t}");
            t["window"]["requests"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(requests, 40);
    let hooks = &routes["routes"][1];
    assert_eq!(hooks["circuit"]["state"], "tripped");
    let trip = &hooks["circuit"]["tripped"];
    assert_eq!(trip["target"], "green");
    assert!(trip["reason"].as_str().unwrap().contains("error rate"));
    assert!(trip["at"].as_u64().is_some());
    assert_eq!(hooks["split"][0]["percent"], 100.0, "rolled back to blue");

    let events = get(&c, &gw.admin_url("/api/v1/events"), &[]).await.json();
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(e["at"].as_u64().is_some() && e["message"].is_string());
            e["kind"].as_str().unwrap()
        })
        .collect();
    assert!(kinds.contains(&"trip"), "{kinds:?}");
    assert!(kinds.contains(&"reload_rejected"), "{kinds:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renders_in_headless_chromium_without_errors_or_injection() {
    let Some(bin) = browser::chromium("the status page was not rendered") else {
        return;
    };
    let (gw, _ups) = busy_gateway().await;
    let url = gw.admin_url("/");

    let (dom, stderr) = browser::run(bin, &url, &["--dump-dom".to_string()]).await;
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the page rendered the API data (no exception in rendering).\nDOM:\n{dom}\nstderr:\n{stderr}"
    );
    let problems = browser::console_problems(&stderr);
    assert!(problems.is_empty(), "console errors: {problems:#?}");
    for want in [
        "data-route=\"chatbot\"",
        "data-route=\"webhooks\"",
        "data-target=\"green\"",
        "tripped",
        "reload_rejected",
        "sticky header:x-user-id",
        "class=\"i-",
        "data-rule=\"beta-testers\"",
    ] {
        assert!(dom.contains(want), "rendered page lacks `{want}`:\n{dom}");
    }
    // The hostile text from the rejected file is shown as text, never parsed as markup.
    assert!(
        dom.contains("&lt;img src=x onerror="),
        "the rejected reload's error is shown (escaped):\n{dom}"
    );
    assert!(
        !dom.contains("<img"),
        "markup from events was injected:\n{dom}"
    );
    assert!(
        dom.contains("<title>flipgate status</title>"),
        "a script from events ran (it renames the page):\n{dom}"
    );

    browser::screenshots(
        bin,
        &url,
        "status",
        &[("laptop", "1366,900"), ("phone", "390,1600")],
    )
    .await;
    gw.stop().await;
}
