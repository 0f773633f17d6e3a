//! Core gateway behaviour on loopback with real upstreams: split, sticky canary, hot reload,
//! preview, header hygiene, body integrity, error statuses, and in-flight requests across changes.

mod support;

use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(10);

async fn target_of(c: &TestClient, gw: &Gw, user: &str) -> String {
    get(c, &gw.url("/"), &[("x-user-id", user)]).await.text()
}

fn canary_cfg(blue: &Upstream, green: &Upstream, percent: f64) -> String {
    config(
        "blue",
        &[("blue", blue.addr), ("green", green.addr)],
        &format!("[routes.canary]\ntarget = \"green\"\npercent = {percent:.1}\nsticky = \"header:x-user-id\"\n"),
    )
}

#[tokio::test]
async fn sticky_canary_share_stability_and_monotonic_growth() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let gw = Gw::start(&canary_cfg(&blue, &green, 20.0)).await;
    let c = client();

    let mut at20 = Vec::with_capacity(3000);
    for u in 0..3000 {
        at20.push(target_of(&c, &gw, &format!("user-{u}")).await);
    }
    let canary = at20.iter().filter(|t| *t == "green").count();
    assert!(
        (510..=690).contains(&canary),
        "20% canary gave {canary} of 3000"
    );

    for (u, before) in at20.iter().enumerate().take(300) {
        assert_eq!(
            &target_of(&c, &gw, &format!("user-{u}")).await,
            before,
            "user-{u} moved"
        );
    }

    let generation = gw.generation();
    gw.rewrite(&canary_cfg(&blue, &green, 40.0));
    wait_until("40% file applied", WAIT, || async {
        gw.generation() > generation
    })
    .await;
    let mut moved_back = 0;
    let mut at40 = 0;
    for (u, before) in at20.iter().enumerate() {
        let t = target_of(&c, &gw, &format!("user-{u}")).await;
        if before == "green" && t == "blue" {
            moved_back += 1;
        }
        at40 += (t == "green") as usize;
    }
    assert_eq!(
        moved_back, 0,
        "raising the percent moved users back to live"
    );
    assert!(
        (1050..=1350).contains(&at40),
        "40% canary gave {at40} of 3000"
    );
    gw.stop().await;
}

#[tokio::test]
async fn requests_without_sticky_key_are_split_per_request() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let gw = Gw::start(&canary_cfg(&blue, &green, 50.0)).await;
    let c = client();
    for _ in 0..200 {
        get(&c, &gw.url("/"), &[]).await;
    }
    assert!(
        blue.hits() > 50 && green.hits() > 50,
        "blue {} green {}",
        blue.hits(),
        green.hits()
    );
    gw.stop().await;
}

#[tokio::test]
async fn file_edits_flip_and_broken_files_keep_serving() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let targets = [("blue", blue.addr), ("green", green.addr)];
    let gw = Gw::start(&config("blue", &targets, "")).await;
    let c = client();
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");

    // Flip by editing the file (temp file + rename).
    gw.rewrite(&config("green", &targets, ""));
    wait_until("flip by file edit", WAIT, || async {
        get(&c, &gw.url("/"), &[]).await.text() == "green"
    })
    .await;

    // Broken files: each is rejected and green keeps serving.
    let control = gw.gateway.as_ref().unwrap().control.clone();
    let unknown_target = config("purple", &targets, "");
    let broken: [(&str, Option<&str>); 4] = [
        ("syntax error", Some("[[routes]\nname = ")),
        ("empty file", Some("")),
        ("unknown target", Some(&unknown_target)),
        ("file deleted", None),
    ];
    for (what, text) in broken {
        let failures_before = control
            .metrics
            .config_reloads
            .with_label_values(&["failure"])
            .get();
        match text {
            Some(t) => gw.rewrite(t),
            None => std::fs::remove_file(&gw.file).unwrap(),
        }
        wait_until(&format!("{what} rejected"), WAIT, || async {
            control
                .metrics
                .config_reloads
                .with_label_values(&["failure"])
                .get()
                > failures_before
        })
        .await;
        assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "green", "{what}");
        assert_eq!(control.last_reload().result, "failure", "{what}");
    }

    // A good file again is picked up.
    gw.rewrite(&config("blue", &targets, ""));
    wait_until("recovery", WAIT, || async {
        get(&c, &gw.url("/"), &[]).await.text() == "blue"
    })
    .await;
    assert_eq!(control.last_reload().result, "success");
    gw.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn kubernetes_configmap_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let targets = [("blue", blue.addr), ("green", green.addr)];

    // The kubelet's layout: flipgate.toml -> ..data/flipgate.toml, ..data -> ..2026_v1 (a dir).
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("..v1")).unwrap();
    std::fs::write(
        root.join("..v1/flipgate.toml"),
        config("blue", &targets, ""),
    )
    .unwrap();
    symlink("..v1", root.join("..data")).unwrap();
    symlink("..data/flipgate.toml", root.join("flipgate.toml")).unwrap();
    let file = root.join("flipgate.toml");
    let gateway = flipgate::Gateway::start(&file).await.unwrap();
    let url = format!("http://{}/", gateway.addr);
    let c = client();
    assert_eq!(get(&c, &url, &[]).await.text(), "blue");

    // New version: new timestamped dir, new symlink renamed over ..data (atomic swap).
    std::fs::create_dir(root.join("..v2")).unwrap();
    std::fs::write(
        root.join("..v2/flipgate.toml"),
        config("green", &targets, ""),
    )
    .unwrap();
    symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..v1")).unwrap();
    wait_until("symlink swap applied", WAIT, || async {
        get(&c, &url, &[]).await.text() == "green"
    })
    .await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn preview_from_allowed_clients_only_and_never_forwarded() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let targets = [("blue", blue.addr), ("green", green.addr)];
    let allowed = config(
        "blue",
        &targets,
        "[routes.preview]\nheader = \"x-flipgate-target\"\nallow_from = [\"127.0.0.0/8\"]\n",
    );
    let gw = Gw::start(&allowed).await;
    let c = client();
    let h = [("x-flipgate-target", "green")];
    assert_eq!(get(&c, &gw.url("/"), &h).await.text(), "green");
    let seen = get(&c, &gw.url("/headers"), &h).await.json();
    assert!(
        seen.get("x-flipgate-target").is_none(),
        "preview header forwarded: {seen}"
    );
    assert_eq!(
        get(&c, &gw.url("/"), &[("x-flipgate-target", "nope")])
            .await
            .text(),
        "blue"
    );
    gw.stop().await;

    let denied = config(
        "blue",
        &targets,
        "[routes.preview]\nallow_from = [\"10.0.0.0/8\"]\n",
    );
    let gw = Gw::start(&denied).await;
    assert_eq!(
        get(&c, &gw.url("/"), &h).await.text(),
        "blue",
        "preview honoured from a non-allowed client"
    );
    let seen = get(&c, &gw.url("/headers"), &h).await.json();
    assert!(
        seen.get("x-flipgate-target").is_none(),
        "preview header forwarded: {seen}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn header_hygiene_both_ways() {
    let blue = spawn_upstream("blue").await;
    let gw = Gw::start(&config("blue", &[("blue", blue.addr)], "")).await;
    let c = client();
    let r = get(
        &c,
        &gw.url("/headers"),
        &[
            ("host", "bot.example.com"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9v"),
            ("te", "trailers"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-request-id", "req-123"),
            ("x-app", "kept"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = r.json();
    for gone in ["x-secret-hop", "keep-alive", "proxy-authorization"] {
        assert!(seen.get(gone).is_none(), "{gone} forwarded: {seen}");
    }
    // The client takes trailers: so does flipgate, from its upstream (docs/limits.md, "Trailers").
    assert_eq!(seen["te"], "trailers", "{seen}");
    assert_eq!(seen["connection"], "te", "{seen}");
    assert_eq!(seen["x-app"], "kept");
    assert_eq!(seen["host"], "bot.example.com");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "bot.example.com");
    assert_eq!(seen["x-request-id"], "req-123");
    assert!(
        seen["via"].as_str().unwrap().contains("1.1 flipgate"),
        "{seen}"
    );
    // The response's hop-by-hop headers are stripped too, and a request id is generated if absent.
    assert!(
        r.headers.get("x-hop").is_none(),
        "upstream hop-by-hop header relayed"
    );
    let seen = get(&c, &gw.url("/headers"), &[]).await.json();
    assert_eq!(seen["x-request-id"].as_str().unwrap().len(), 32);
    gw.stop().await;
}

#[tokio::test]
async fn one_mib_body_arrives_byte_for_byte() {
    let blue = spawn_upstream("blue").await;
    let gw = Gw::start(&config("blue", &[("blue", blue.addr)], "")).await;
    let body: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let r = send(
        &client(),
        "POST",
        &gw.url("/echo"),
        &[("content-type", "application/octet-stream")],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.body == body,
        "body changed in transit ({} bytes back)",
        r.body.len()
    );
    gw.stop().await;
}

#[tokio::test]
async fn dead_upstream_is_502_and_unknown_host_is_404() {
    // A port that was just bound and released: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = config("blue", &[("blue", dead)], "").replace(
        "name = \"bot\"",
        "name = \"bot\"\nhosts = [\"bot.example.com\"]",
    );
    let gw = Gw::start(&cfg).await;
    let c = client();
    let r = get(&c, &gw.url("/"), &[("host", "bot.example.com")]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    let r = get(&c, &gw.url("/"), &[("host", "other.example.com")]).await;
    assert_eq!(r.status, 404, "{}", r.text());
    // And the process keeps serving.
    assert_eq!(
        get(&c, &gw.url("/"), &[("host", "BOT.example.com:8080")])
            .await
            .status,
        502
    );
    gw.stop().await;
}

#[tokio::test]
async fn in_flight_requests_finish_on_their_target_across_reload_and_flip() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let targets = [("blue", blue.addr), ("green", green.addr)];
    let gw = Gw::start(&config("blue", &targets, "")).await;
    let c = client();

    // Started before a file flip.
    let held = tokio::spawn({
        let (c, url) = (c.clone(), gw.url("/hold"));
        async move { get(&c, &url, &[]).await }
    });
    wait_until("request held at blue", WAIT, || async {
        blue.holding.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    gw.rewrite(&config("green", &targets, ""));
    wait_until("file flip", WAIT, || async {
        get(&c, &gw.url("/"), &[]).await.text() == "green"
    })
    .await;

    // Started before an admin flip back.
    let held2 = tokio::spawn({
        let (c, url) = (c.clone(), gw.url("/hold"));
        async move { get(&c, &url, &[]).await }
    });
    wait_until("request held at green", WAIT, || async {
        green.holding.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    let r = gw.act(&c, "flip", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        get(&c, &gw.url("/"), &[]).await.text(),
        "blue",
        "the very next request follows the flip"
    );

    blue.release();
    green.release();
    let r = held.await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "blue"));
    let r = held2.await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "green"));
    gw.stop().await;
}

#[tokio::test]
async fn readyz_and_routes_api_show_what_is_in_force() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let gw = Gw::start(&config(
        "blue",
        &[("blue", blue.addr), ("green", green.addr)],
        "",
    ))
    .await;
    let c = client();
    assert_eq!(get(&c, &gw.admin_url("/healthz"), &[]).await.status, 200);
    assert_eq!(get(&c, &gw.admin_url("/readyz"), &[]).await.status, 200);
    let v = get(&c, &gw.admin_url("/api/v1/routes"), &[]).await.json();
    assert_eq!(v["routes"][0]["name"], "bot");
    assert_eq!(v["routes"][0]["live"], "blue");
    assert_eq!(v["config"]["last_reload"]["result"], "success");
    let g = v["generation"].as_u64().unwrap();
    gw.rewrite("[[routes]\n");
    wait_until("rejection visible in the API", WAIT, || async {
        let v = get(&c, &gw.admin_url("/api/v1/routes/bot"), &[])
            .await
            .json();
        let all = get(&c, &gw.admin_url("/api/v1/routes"), &[]).await.json();
        v["live"] == "blue" && all["config"]["last_reload"]["result"] == "failure"
    })
    .await;
    let all = get(&c, &gw.admin_url("/api/v1/routes"), &[]).await.json();
    assert_eq!(
        all["generation"].as_u64().unwrap(),
        g,
        "a rejected file must not publish"
    );
    assert!(all["config"]["last_reload"]["error"]
        .as_str()
        .unwrap()
        .contains("flipgate.toml:1:"));
    assert_eq!(
        get(&c, &gw.admin_url("/api/v1/routes/nope"), &[])
            .await
            .status,
        404
    );
    gw.stop().await;
}

#[tokio::test]
async fn changed_listen_address_is_reported_as_needing_a_restart() {
    let blue = spawn_upstream("blue").await;
    let gw = Gw::start(&config("blue", &[("blue", blue.addr)], "")).await;
    let control = gw.gateway.as_ref().unwrap().control.clone();
    let moved = config("blue", &[("blue", blue.addr)], "").replace(
        "listen = \"127.0.0.1:0\"\nupstream_timeout",
        "listen = \"127.0.0.1:1\"\nupstream_timeout",
    );
    let parsed = flipgate::config::parse(&gw.file, &moved).unwrap();
    match control.reload(Ok(parsed)) {
        flipgate::control::ReloadOutcome::Applied { restart_needed, .. } => {
            assert_eq!(restart_needed, vec!["server.listen"])
        }
        other => panic!("unexpected outcome {other:?}"),
    }
    // Still serving on the original listener.
    assert_eq!(get(&client(), &gw.url("/"), &[]).await.text(), "blue");
    gw.stop().await;
}

// Cohort rules (`[[routes.rules]]`, issue 14): before the split, after preview, first match wins.

/// Route `bot`: live blue, canary green at 0 %, then `rules`.
fn rules_cfg(blue: &Upstream, green: &Upstream, rules: &str) -> String {
    config(
        "blue",
        &[("blue", blue.addr), ("green", green.addr)],
        &format!("[routes.canary]\ntarget = \"green\"\npercent = 0.0\n\n[routes.preview]\nheader = \"x-flipgate-target\"\n\n{rules}"),
    )
}

const BETA_RULE: &str = "[[routes.rules]]\nname = \"beta-testers\"\ntarget = \"green\"\nheader = \"x-user-tier\"\nvalues = [\"beta\", \"staff\"]\n";

async fn route_view(c: &TestClient, gw: &Gw) -> serde_json::Value {
    get(c, &gw.admin_url("/api/v1/routes/bot"), &[])
        .await
        .json()
}

#[tokio::test]
async fn a_header_rule_sends_beta_testers_to_green_while_everyone_else_follows_the_split() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let gw = Gw::start(&rules_cfg(&blue, &green, BETA_RULE)).await;
    let c = client();
    for i in 0..20 {
        let user = format!("user-{i}");
        assert_eq!(
            get(&c, &gw.url("/"), &[("x-user-id", &user)]).await.text(),
            "blue"
        );
        assert_eq!(
            get(&c, &gw.url("/"), &[("x-user-tier", "free")])
                .await
                .text(),
            "blue"
        );
        assert_eq!(
            get(&c, &gw.url("/"), &[("x-user-tier", "beta")])
                .await
                .text(),
            "green"
        );
    }
    assert_eq!(
        get(&c, &gw.url("/"), &[("X-User-Tier", "staff")])
            .await
            .text(),
        "green",
        "field names are case-insensitive"
    );
    assert_eq!(
        get(&c, &gw.url("/"), &[("x-user-tier", "Beta")])
            .await
            .text(),
        "blue",
        "values are exact"
    );
    // Preview (an explicit tester request) comes before the rules.
    assert_eq!(
        get(
            &c,
            &gw.url("/"),
            &[("x-user-tier", "beta"), ("x-flipgate-target", "blue")]
        )
        .await
        .text(),
        "blue"
    );

    // 21 matched: counted by the metric and the API, and in green's circuit window.
    assert_eq!(
        metric(&gw, "flipgate_rule_requests_total", "rule=\"beta-testers\"").await,
        21.0
    );
    let v = route_view(&c, &gw).await;
    let rule = &v["rules"][0];
    assert_eq!(rule["name"], "beta-testers");
    assert_eq!(rule["target"], "green");
    assert_eq!(rule["kind"], "header");
    assert_eq!(rule["field"], "x-user-tier");
    assert_eq!(rule["values"], serde_json::json!(["beta", "staff"]));
    assert_eq!(rule["matched"], 21);
    let green_window = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "green")
        .unwrap()["window"]["requests"]
        .as_u64()
        .unwrap();
    assert_eq!(
        green_window, 21,
        "rule traffic counts in its target's window"
    );
    // The split is untouched: green still gets 0 % of the rest.
    let green_share = v["split"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["target"] == "green")
        .unwrap()["percent"]
        .as_f64()
        .unwrap();
    assert_eq!(green_share, 0.0);
    // `flipgate status` lists the rule with what it matched.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flipgate"))
        .args(["status", "--admin", &gw.admin.to_string()])
        .env_remove("FLIPGATE_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(
            "bot rule beta-testers: header x-user-tier in [beta, staff] -> green, 21 matched"
        ),
        "{said}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_cookie_rule_matches_the_exact_cookie_in_any_cookie_field() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let rule = "[[routes.rules]]\nname = \"cohort\"\ntarget = \"green\"\ncookie = \"tier\"\nvalues = [\"beta\"]\n";
    let gw = Gw::start(&rules_cfg(&blue, &green, rule)).await;
    let c = client();
    let to = |cookie: &'static str| {
        let (c, url) = (c.clone(), gw.url("/"));
        async move { get(&c, &url, &[("cookie", cookie)]).await.text() }
    };
    assert_eq!(to("tier=beta").await, "green");
    assert_eq!(to("theme=dark;  tier=beta ; lang=en").await, "green");
    assert_eq!(to("tier=free; other=beta").await, "blue");
    assert_eq!(to("xtier=beta").await, "blue");
    assert_eq!(to("tier=betas").await, "blue");
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");
    // Two Cookie fields (as HTTP/2 clients send them): the one that has `tier` decides.
    assert_eq!(
        get(
            &c,
            &gw.url("/"),
            &[("cookie", "a=1"), ("cookie", "tier=beta")]
        )
        .await
        .text(),
        "green"
    );
    assert_eq!(
        metric(&gw, "flipgate_rule_requests_total", "rule=\"cohort\"").await,
        3.0
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_source_rule_matches_the_client_network_and_rules_survive_reloads() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let source = |cidr: &str| {
        format!("[[routes.rules]]\nname = \"office\"\ntarget = \"green\"\nsource = [\"{cidr}\"]\n")
    };
    let gw = Gw::start(&rules_cfg(&blue, &green, &source("10.0.0.0/8"))).await;
    let c = client();
    // The loopback client is not in 10.0.0.0/8.
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");
    assert_eq!(route_view(&c, &gw).await["rules"][0]["kind"], "source");

    // A runtime decision, then a reload that changes only the rules: the decision stays (rules
    // are not part of the split), and the new rule applies.
    assert_eq!(
        gw.act(&c, "canary", "{\"percent\": 0.01}").await.status,
        200
    );
    let generation = gw.generation();
    gw.rewrite(&rules_cfg(&blue, &green, &source("127.0.0.0/8")));
    wait_until("the 127.0.0.0/8 rule applied", WAIT, || async {
        gw.generation() > generation
    })
    .await;
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "green");
    let v = route_view(&c, &gw).await;
    assert_eq!(v["canary"]["percent"], 0.01, "{v}");
    assert_eq!(v["canary"]["source"], "admin", "{v}");
    assert_eq!(v["rules"][0]["values"], serde_json::json!(["127.0.0.0/8"]));

    // A bad rule file is rejected whole: the old rules keep serving.
    let control = gw.gateway.as_ref().unwrap().control.clone();
    let bad = rules_cfg(
        &blue,
        &green,
        "[[routes.rules]]\nname = \"office\"\ntarget = \"purple\"\nsource = [\"127.0.0.0/8\"]\n",
    );
    let failures = || {
        control
            .metrics
            .config_reloads
            .with_label_values(&["failure"])
            .get()
    };
    let before = failures();
    gw.rewrite(&bad);
    wait_until("the bad rule file rejected", WAIT, || async {
        failures() > before
    })
    .await;
    let error = control.last_reload().error.clone().unwrap_or_default();
    assert!(
        error.contains("routes[bot].rules[office].target")
            && error.contains("unknown target `purple`"),
        "{error}"
    );
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "green");

    // Rules removed (and the canary stopped): everyone follows the split again, and the rule's
    // series is gone.
    assert_eq!(gw.act(&c, "rollback", "").await.status, 200);
    let generation = gw.generation();
    gw.rewrite(&rules_cfg(&blue, &green, ""));
    wait_until("rules removed", WAIT, || async {
        gw.generation() > generation
    })
    .await;
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");
    let text = get(&c, &gw.admin_url("/metrics"), &[]).await.text();
    assert!(!text.contains("rule=\"office\""), "{text}");
    assert_eq!(route_view(&c, &gw).await["rules"], serde_json::json!([]));
    gw.stop().await;
}
