//! WebSockets through the proxy with a real client (`tokio-tungstenite`): tunnelled only after the
//! upstream's `101`, pinned to the target they opened on across flips, counted per target, and
//! closed after `tunnel_max_lifetime_after_flip` once their target is flipped away.
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket echo upstream answering every text message with `NAME:message`.
async fn spawn_ws_echo(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        if ws.send(Message::text(format!("{name}:{t}"))).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(gw: &Gw) -> Ws {
    let (ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/chat", gw.addr))
        .await
        .expect("WebSocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    ws
}

async fn ask(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
        other => panic!("no echo: {other:?}"),
    }
}

async fn tunnels(gw: &Gw, target: &str) -> i64 {
    let m = get(&client(), &gw.admin_url("/metrics"), &[]).await.text();
    let prefix = format!("flipgate_open_tunnels{{route=\"bot\",target=\"{target}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

async fn flip(gw: &Gw) {
    let r = gw.act(&client(), "flip", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn echo_survives_a_flip_and_new_sockets_follow_it() {
    let blue = spawn_ws_echo("blue").await;
    let green = spawn_ws_echo("green").await;
    let gw = Gw::start(&config("blue", &[("blue", blue), ("green", green)], "")).await;

    let mut old = connect(&gw).await;
    for i in 0..5 {
        assert_eq!(ask(&mut old, &format!("m{i}")).await, format!("blue:m{i}"));
    }
    wait_until("blue tunnel counted", Duration::from_secs(5), || async {
        tunnels(&gw, "blue").await == 1
    })
    .await;

    flip(&gw).await;
    let mut new = connect(&gw).await;
    assert_eq!(
        ask(&mut new, "hi").await,
        "green:hi",
        "new sockets go to the new live target"
    );
    assert_eq!(
        ask(&mut old, "still").await,
        "blue:still",
        "open sockets stay where they opened"
    );
    wait_until("one tunnel per target", Duration::from_secs(5), || async {
        tunnels(&gw, "blue").await == 1 && tunnels(&gw, "green").await == 1
    })
    .await;

    old.close(None).await.unwrap();
    drop(old);
    wait_until(
        "closed tunnel uncounted",
        Duration::from_secs(5),
        || async { tunnels(&gw, "blue").await == 0 },
    )
    .await;
    drop(new);
    gw.stop().await;
}

#[tokio::test]
async fn non_101_answer_is_relayed_as_a_normal_response() {
    // A plain HTTP upstream answers the upgrade request with 200.
    let plain = spawn_upstream("blue").await;
    let gw = Gw::start(&config("blue", &[("blue", plain.addr)], "")).await;
    match tokio_tungstenite::connect_async(format!("ws://{}/chat", gw.addr)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.body().as_deref(), Some(&b"blue"[..]));
            assert!(resp.headers().get("upgrade").is_none());
        }
        other => panic!("expected a plain HTTP answer, got {other:?}"),
    }
    assert_eq!(tunnels(&gw, "blue").await, 0, "nothing was tunnelled");
    assert_eq!(get(&client(), &gw.url("/"), &[]).await.text(), "blue");
    gw.stop().await;
}

#[tokio::test]
async fn lifetime_after_flip_drains_old_target_sockets() {
    let blue = spawn_ws_echo("blue").await;
    let green = spawn_ws_echo("green").await;
    let cfg = with_server(
        &config("blue", &[("blue", blue), ("green", green)], ""),
        "tunnel_max_lifetime_after_flip = \"300ms\"",
    );
    let gw = Gw::start(&cfg).await;
    let mut old = connect(&gw).await;
    assert_eq!(ask(&mut old, "a").await, "blue:a");

    flip(&gw).await;
    let mut new = connect(&gw).await;
    // The old socket is closed by the proxy with a close frame: 1001 Going Away.
    assert_eq!(close_code(&mut old).await, Some(CloseCode::Away));
    wait_until("blue tunnels drained", Duration::from_secs(5), || async {
        tunnels(&gw, "blue").await == 0
    })
    .await;
    // The live target's socket is untouched.
    assert_eq!(ask(&mut new, "b").await, "green:b");
    assert_eq!(tunnels(&gw, "green").await, 1);
    drop(new);
    gw.stop().await;
}

#[tokio::test]
async fn shutdown_lets_open_tunnels_finish() {
    let blue = spawn_ws_echo("blue").await;
    let gw = Gw::start(&config("blue", &[("blue", blue)], "")).await;
    let mut ws = connect(&gw).await;
    assert_eq!(ask(&mut ws, "before").await, "blue:before");
    let stopping = tokio::spawn(gw.stop());
    // The listener is closed and plain connections drained, but the tunnel keeps working...
    assert_eq!(ask(&mut ws, "during").await, "blue:during");
    assert!(!stopping.is_finished());
    // ...and shutdown completes as soon as it ends.
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown completes once the tunnel ended")
        .unwrap();
}

#[tokio::test]
async fn shutdown_closes_tunnels_at_the_drain_deadline() {
    let blue = spawn_ws_echo("blue").await;
    let gw = Gw::start(&with_server(
        &config("blue", &[("blue", blue)], ""),
        "drain_timeout = \"300ms\"",
    ))
    .await;
    let mut ws = connect(&gw).await;
    assert_eq!(ask(&mut ws, "a").await, "blue:a");
    tokio::time::timeout(Duration::from_secs(10), gw.stop())
        .await
        .expect("shutdown bounded by the drain timeout");
    assert_eq!(
        close_code(&mut ws).await,
        Some(CloseCode::Away),
        "tunnel closed by shutdown with 1001 Going Away"
    );
}

/// A tunnel in which nothing moves for `tunnel_idle_timeout` is closed (1001), while one that
/// keeps talking is not.
#[tokio::test]
async fn idle_tunnel_is_closed_after_tunnel_idle_timeout() {
    let blue = spawn_ws_echo("blue").await;
    let gw = Gw::start(&with_server(
        &config("blue", &[("blue", blue)], ""),
        "tunnel_idle_timeout = \"300ms\"",
    ))
    .await;
    let mut ws = connect(&gw).await;
    assert_eq!(ask(&mut ws, "a").await, "blue:a");
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Away));
    wait_until(
        "the idle tunnel is gone",
        Duration::from_secs(5),
        || async { tunnels(&gw, "blue").await == 0 },
    )
    .await;
    gw.stop().await;
}

/// The close code the proxy ends `ws` with: `None` for a bare TCP close or an error.
async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .expect("the tunnel was closed within the deadline")
}
