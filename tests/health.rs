//! Instance health on loopback: passive outlier ejection takes a dead instance out of rotation,
//! active checks take out an instance that answers its health path with errors, and a target with
//! no instance passing its checks answers 503.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(10);

fn dead_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn pool(instances: &[SocketAddr], options: &str) -> String {
    let list = instances
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\noutlier_failures = 3\noutlier_ejection = \"1h\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"state\"\n[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = {{ instances = [{list}]{options} }}\n"
    )
}

async fn instance_health(c: &TestClient, gw: &Gw) -> Vec<String> {
    let v = get(c, &gw.admin_url("/api/v1/routes/bot"), &[])
        .await
        .json();
    serde_json::from_value(v["targets"][0]["instance_health"].clone()).unwrap()
}

/// A dead instance (connects refused) costs no client a request: each failed connect moves the
/// request to the other instance (`policy::connect_retry`) and counts in the dead one's health,
/// which ejects it after `outlier_failures` in a row.
#[tokio::test]
async fn dead_instance_is_ejected_after_consecutive_failures() {
    let up = spawn_upstream("alive").await;
    let gw = Gw::start(&pool(&[up.addr, dead_addr()], "")).await;
    let c = client();
    let mut sent = 0;
    while instance_health(&c, &gw).await != ["up", "ejected"] {
        assert!(sent < 500, "the dead instance is never ejected");
        assert_eq!(get(&c, &gw.url("/"), &[]).await.status, 200);
        sent += 1;
    }
    assert_eq!(
        metric(&gw, "flipgate_upstream_errors_total", "kind=\"connect\"").await,
        3.0,
        "the dead instance should fail exactly `outlier_failures` times"
    );
    for _ in 0..20 {
        assert_eq!(get(&c, &gw.url("/"), &[]).await.status, 200);
    }
    assert_eq!(
        metric(&gw, "flipgate_upstream_errors_total", "kind=\"connect\"").await,
        3.0
    );
    gw.stop().await;
}

#[tokio::test]
async fn ejection_never_empties_a_target() {
    let gw = Gw::start(&pool(&[dead_addr()], "")).await;
    let c = client();
    for _ in 0..6 {
        // Still tried (and still 502, counted against the target), never 503.
        assert_eq!(get(&c, &gw.url("/"), &[]).await.status, 502);
    }
    gw.stop().await;
}

#[tokio::test]
async fn failing_active_checks_take_an_instance_out_and_bring_it_back() {
    let good = spawn_upstream("good").await;
    let bad = spawn_upstream("bad").await;
    bad.fail_every(1);
    let gw = Gw::start(&pool(
        &[good.addr, bad.addr],
        ", health_check = \"/healthz\", health_interval = \"100ms\"",
    ))
    .await;
    let c = client();
    wait_until("bad instance marked down", WAIT, || async {
        instance_health(&c, &gw).await == ["up", "down"]
    })
    .await;
    for _ in 0..20 {
        let r = get(&c, &gw.url("/"), &[]).await;
        assert_eq!((r.status, r.text().as_str()), (200, "good"));
    }
    bad.fail_every(0);
    wait_until("bad instance back up", WAIT, || async {
        instance_health(&c, &gw).await == ["up", "up"]
    })
    .await;
    gw.stop().await;
}

/// Checks added by a reload start without a restart (the task sleeps while no target has checks
/// and wakes for the new snapshot).
#[tokio::test]
async fn checks_added_by_a_reload_start_at_once() {
    let good = spawn_upstream("good").await;
    let bad = spawn_upstream("bad").await;
    bad.fail_every(1);
    let gw = Gw::start(&pool(&[good.addr, bad.addr], "")).await;
    let c = client();
    assert_eq!(instance_health(&c, &gw).await, ["up", "up"]);
    gw.rewrite(&pool(
        &[good.addr, bad.addr],
        ", health_check = \"/healthz\", health_interval = \"100ms\"",
    ));
    wait_until("bad instance marked down", WAIT, || async {
        instance_health(&c, &gw).await == ["up", "down"]
    })
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn no_instance_passing_checks_is_503() {
    let bad = spawn_upstream("bad").await;
    bad.fail_every(1);
    let gw = Gw::start(&pool(
        &[bad.addr],
        ", health_check = \"/healthz\", health_interval = \"100ms\"",
    ))
    .await;
    let c = client();
    wait_until("instance marked down", WAIT, || async {
        instance_health(&c, &gw).await == ["down"]
    })
    .await;
    let r = get(&c, &gw.url("/"), &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    gw.stop().await;
}
