//! Smoke test: a request goes through to the live target and a flip moves the next one.
mod support;
use support::*;

#[tokio::test]
async fn routes_to_live_then_flips() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let gw = Gw::start(&config(
        "blue",
        &[("blue", blue.addr), ("green", green.addr)],
        "",
    ))
    .await;
    let c = client();
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");
    let r = send(
        &c,
        "POST",
        &gw.admin_url("/api/v1/routes/bot/flip"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "green");
    gw.stop().await;
}
