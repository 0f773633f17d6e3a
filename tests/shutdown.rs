//! Graceful shutdown and zero-downtime restarts with the real binary and a real SIGTERM: a request
//! in flight completes; with `reuse_port` a second process takes new connections on the same port
//! while the first drains, and no connection is refused or reset in between.
mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const DEADLINE: Duration = Duration::from_secs(20);

struct Flipgate {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Starts the real binary on `config` and waits for its "flipgate serving" line.
async fn start(config: &str) -> Flipgate {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    write_atomic(&file, config);
    let mut child = Command::new(env!("CARGO_BIN_EXE_flipgate"))
        .args(["run", "-c"])
        .arg(&file)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("flipgate serving") {
                let a = line
                    .split("addr=")
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .next()
                    .unwrap();
                return a.trim_matches('"').parse::<SocketAddr>().unwrap();
            }
        }
        panic!("flipgate exited before serving");
    })
    .await
    .expect("flipgate serving within the deadline");
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Flipgate {
        child,
        addr,
        _dir: dir,
    }
}

fn sigterm(p: &Flipgate) {
    let pid = p.child.id().expect("running").to_string();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {pid}");
}

async fn exits_cleanly(p: &mut Flipgate) {
    let status = tokio::time::timeout(DEADLINE, p.child.wait())
        .await
        .expect("flipgate exits after draining")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

fn file_config(
    live: &str,
    targets: &[(&str, SocketAddr)],
    listen: &str,
    admin: &str,
    reuse_port: bool,
) -> String {
    let cfg = config(live, targets, "")
        .replace(
            "listen = \"127.0.0.1:0\"\nupstream",
            &format!("listen = \"{listen}\"\nupstream"),
        )
        .replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            &format!("[admin]\nlisten = \"{admin}\""),
        );
    with_server(
        &cfg,
        &format!("reuse_port = {reuse_port}\ndrain_timeout = \"15s\""),
    )
}

/// Two distinct free ports (both held while the second is chosen, so they differ).
fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// One request on a fresh connection; the body, or why it failed.
async fn one_request(addr: SocketAddr) -> Result<String, String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&out).into_owned();
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!("answer: {text}"));
    }
    Ok(text
        .rsplit("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string())
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish() {
    let blue = spawn_upstream("blue").await;
    let mut fg = start(&file_config(
        "blue",
        &[("blue", blue.addr)],
        "127.0.0.1:0",
        "127.0.0.1:0",
        false,
    ))
    .await;
    let url = format!("http://{}/hold", fg.addr);
    let in_flight = tokio::spawn(async move { get(&client(), &url, &[]).await });
    wait_until("request held upstream", DEADLINE, || async {
        blue.holding.load(Ordering::SeqCst) == 1
    })
    .await;

    sigterm(&fg);
    let addr = fg.addr;
    wait_until("listener closed", DEADLINE, || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    blue.release();
    let r = in_flight.await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "blue"));
    assert_eq!(
        r.headers.get("connection").map(|v| v.to_str().unwrap()),
        Some("close")
    );
    exits_cleanly(&mut fg).await;
}

#[tokio::test]
async fn reuse_port_hands_over_without_a_refused_connection() {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    // The same admin port too: a new process can start on the same route file.
    let (listen, admin) = free_ports();
    let (listen, admin) = (format!("127.0.0.1:{listen}"), format!("127.0.0.1:{admin}"));
    let targets = [("blue", blue.addr), ("green", green.addr)];
    let mut old = start(&file_config("blue", &targets, &listen, &admin, true)).await;
    let addr = old.addr;
    // A slow request keeps the old process draining for as long as the test wants.
    let url = format!("http://{addr}/hold");
    let held = tokio::spawn(async move { get(&client(), &url, &[]).await });
    wait_until("request held on the old process", DEADLINE, || async {
        blue.holding.load(Ordering::SeqCst) == 1
    })
    .await;

    // A bounded client loop: one fresh connection per request, recording every outcome.
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<Result<String, String>>>> = Arc::default();
    let seen_green = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, results, seen_green) = (stop.clone(), results.clone(), seen_green.clone());
        tokio::spawn(async move {
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let r = one_request(addr).await;
                if r.as_deref() == Ok("green") {
                    seen_green.fetch_add(1, Ordering::SeqCst);
                }
                results.lock().unwrap().push(r);
            }
        })
    };

    let _new = start(&file_config("green", &targets, &listen, &admin, true)).await;
    wait_until("the new process takes connections", DEADLINE, || async {
        seen_green.load(Ordering::SeqCst) > 0
    })
    .await;
    sigterm(&old);
    // While the old process drains, new connections keep succeeding (on the new process).
    let at_term = results.lock().unwrap().len();
    wait_until(
        "requests served while the old process drains",
        DEADLINE,
        || async { results.lock().unwrap().len() >= at_term + 100 },
    )
    .await;
    assert!(
        old.child.try_wait().unwrap().is_none(),
        "old process still draining"
    );
    blue.release();
    let r = held.await.unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "blue"),
        "the drained request completes"
    );
    exits_cleanly(&mut old).await;
    let after_exit = results.lock().unwrap().len();
    wait_until(
        "requests after the old process exited",
        DEADLINE,
        || async { results.lock().unwrap().len() >= after_exit + 50 },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();

    let results = results.lock().unwrap();
    let failures: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} failed: {:?}",
        failures.len(),
        results.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        results[after_exit..]
            .iter()
            .all(|r| r.as_deref() == Ok("green")),
        "only the new process answers after the old one exits"
    );
    let blue_n = results
        .iter()
        .filter(|r| r.as_deref() == Ok("blue"))
        .count();
    eprintln!(
        "handover: {} requests, {} by the old process, {} by the new, 0 failed",
        results.len(),
        blue_n,
        results.len() - blue_n
    );
}

/// Issue 11 item 6: at the drain deadline every connection still open is closed, whichever path
/// serves it (the HTTP/1.1 engine, or hyper with `FLIPGATE_HTTP1=hyper`): a request held upstream
/// past the deadline ends with its connection closed, and shutdown returns. Issue 17 item 5: the
/// client is not left with nothing: no answer had begun, so it gets a 503 with `Connection: close`.
#[tokio::test]
async fn drain_deadline_closes_every_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let blue = spawn_upstream("blue").await;
    let gw = Gw::start(&with_server(
        &config("blue", &[("blue", blue.addr)], ""),
        "drain_timeout = \"300ms\"",
    ))
    .await;
    let mut held = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    held.write_all(b"GET /hold HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    wait_until("request held upstream", DEADLINE, || async {
        blue.holding.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::timeout(DEADLINE, gw.stop())
        .await
        .expect("shutdown bounded by the drain timeout");
    let mut out = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, held.read_to_end(&mut out)).await;
    assert!(
        closed.is_ok(),
        "the held connection was closed at the deadline"
    );
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(
        text.ends_with("flipgate: shutting down before the upstream answered\n"),
        "{text}"
    );
    blue.release();
}
