//! Fault suite: peers that misbehave on the wire, each against a real gateway on loopback with a
//! raw upstream or a raw client, on whichever engine the run selects (CI runs it with the HTTP/1.1
//! engine and again with `FLIPGATE_HTTP1=hyper`). Every case is bounded (`DEADLINE` guards every
//! read) and checks both what the client sees and what the operator sees (metrics), and that the
//! gateway keeps serving others afterwards.
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DEADLINE: Duration = Duration::from_secs(10);

/// Sum of a metric family's samples whose labels contain `filter`.
async fn metric(gw: &Gw, family: &str, filter: &str) -> f64 {
    let text = get(&client(), &gw.admin_url("/metrics"), &[]).await.text();
    text.lines()
        .filter(|l| l.starts_with(family) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A raw upstream: reads each request head (bodies are not expected) and runs `answer` on the
/// connection, which may write anything, stall, or close. Counts accepted connections.
async fn raw_upstream<F, Fut>(answer: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let start = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                answer(s, start).await;
            });
        }
    });
    (addr, accepted)
}

/// A gateway with route `bot` over one target at `addr`, with extra `[server]` lines.
async fn gateway(addr: SocketAddr, server: &str) -> Gw {
    Gw::start(&with_server(&config("blue", &[("blue", addr)], ""), server)).await
}

/// Sends `req` on a fresh connection and reads until the gateway closes it (bounded).
async fn exchange(addr: SocketAddr, req: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("the gateway ended the exchange within the deadline");
    out
}

fn status(resp: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(resp);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"))
}

const GET_CLOSE: &str = "GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";

/// An upstream that accepts and never answers: 504 after `upstream_timeout`, counted against the
/// target as a timeout.
#[tokio::test]
async fn upstream_that_never_answers_is_504() {
    let (up, _) = raw_upstream(|s, _| async move {
        let _hold = s;
        std::future::pending::<()>().await;
    })
    .await;
    let cfg = config("blue", &[("blue", up)], "")
        .replace("upstream_timeout = \"5s\"", "upstream_timeout = \"300ms\"");
    let gw = Gw::start(&cfg).await;
    assert_eq!(status(&exchange(gw.addr, GET_CLOSE).await), 504);
    assert_eq!(
        metric(&gw, "flipgate_upstream_errors_total", "kind=\"timeout\"").await,
        1.0
    );
    gw.stop().await;
}

/// An upstream that answers garbage: 502, counted against the target as a reset.
#[tokio::test]
async fn upstream_that_answers_garbage_is_502() {
    let (up, _) = raw_upstream(|mut s, _| async move {
        let _ = s
            .write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\nnonsense\r\n")
            .await;
    })
    .await;
    let gw = gateway(up, "").await;
    assert_eq!(status(&exchange(gw.addr, GET_CLOSE).await), 502);
    assert_eq!(
        metric(&gw, "flipgate_upstream_errors_total", "kind=\"reset\"").await,
        1.0
    );
    gw.stop().await;
}

/// Issue 11 item 1 (b): an upstream that stops mid-body does not keep the client hanging: the
/// response is cut after `body_idle_timeout` (the client sees a short body and a close).
#[tokio::test]
async fn upstream_stalled_mid_body_is_cut_after_body_idle_timeout() {
    let (up, _) = raw_upstream(|mut s, _| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nfirst ten.")
            .await;
        std::future::pending::<()>().await;
    })
    .await;
    let gw = gateway(up, "body_idle_timeout = \"300ms\"").await;
    let out = exchange(gw.addr, GET_CLOSE).await;
    let text = String::from_utf8_lossy(&out);
    assert_eq!(status(&out), 200);
    assert!(text.ends_with("first ten."), "{text:?}");
    gw.stop().await;
}

/// Issue 11 item 1 (a): clients that ask for a large response and never read do not hold their
/// upstream connections for ever: with `max_upstream_connections = 1`, another client is served
/// once the stalled one is cut after `body_idle_timeout`.
#[tokio::test]
async fn client_that_never_reads_is_cut_and_frees_its_upstream() {
    const BIG: usize = 64 * 1024 * 1024;
    let (up, _) = raw_upstream(|mut s, start| async move {
        let body = if start.contains("/big") {
            vec![b'x'; BIG]
        } else {
            b"small".to_vec()
        };
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.write_all(&body).await;
        // Keep-alive is not needed: one request per upstream connection.
    })
    .await;
    let gw = gateway(
        up,
        "body_idle_timeout = \"300ms\"\nmax_upstream_connections = 1",
    )
    .await;
    let mut stalled = TcpStream::connect(gw.addr).await.unwrap();
    stalled
        .write_all(b"GET /big HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    // The stalled client reads only the first bytes, then nothing.
    let mut first = [0u8; 64];
    let n = tokio::time::timeout(DEADLINE, stalled.read(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    // Meanwhile another client is refused (503, the one slot is held: flipgate's own limit),
    // then served once the stalled one is cut.
    let c = client();
    wait_until("another client is served", DEADLINE, || async {
        get(&c, &gw.url("/small"), &[]).await.status == 200
    })
    .await;
    assert_eq!(
        metric(&gw, "flipgate_upstream_errors_total", "").await,
        0.0,
        "a client that does not read is never the target's fault"
    );
    drop(stalled);
    gw.stop().await;
}

/// Long-lived streams keep working while they move: a Server-Sent-Events style response whose
/// events come more often than `body_idle_timeout` but whose whole life is longer than it.
#[tokio::test]
async fn streaming_response_that_keeps_moving_is_not_cut() {
    let (up, _) = raw_upstream(|mut s, _| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        for i in 0..8 {
            // The scenario's pacing (not synchronisation): 8 events 250 ms apart, 2 s in all,
            // against a 1 s idle timeout.
            tokio::time::sleep(Duration::from_millis(250)).await;
            let event = format!("data: token {i}\n\n");
            let chunk = format!("{:x}\r\n{event}\r\n", event.len());
            if s.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
        let _ = s.write_all(b"0\r\n\r\n").await;
    })
    .await;
    let gw = gateway(up, "body_idle_timeout = \"1s\"").await;
    let out = exchange(gw.addr, GET_CLOSE).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("data: token 7"), "{text}");
    assert!(text.ends_with("0\r\n\r\n"), "complete: {text:?}");
    gw.stop().await;
}

/// Many idle keep-alive connections do not stop others from being served: 1,000 idle clients
/// (each having made one request) while a fresh client is served. (Memory per idle connection is
/// measured by `benches/compare.sh`, with the proxy in a process of its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_while_others_are_served() {
    let blue = spawn_upstream("blue").await;
    let gw = Gw::start(&config("blue", &[("blue", blue.addr)], "")).await;
    let mut idle = Vec::new();
    for _ in 0..1000 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        idle.push(s);
    }
    assert_eq!(get(&client(), &gw.url("/"), &[]).await.text(), "blue");
    drop(idle);
    gw.stop().await;
}

/// Route-file faults: a truncated file, junk bytes, a directory in its place. Each is rejected
/// (`config_reloads_total{result="failure"}`) and the last good config keeps serving; a good file
/// afterwards is picked up again.
#[tokio::test]
async fn broken_route_files_keep_the_last_good_config_serving() {
    let blue = spawn_upstream("blue").await;
    let good = config("blue", &[("blue", blue.addr)], "");
    let gw = Gw::start(&good).await;
    let c = client();
    let control = gw.gateway.as_ref().unwrap().control.clone();
    let failures = || {
        control
            .metrics
            .config_reloads
            .with_label_values(&["failure"])
            .get()
    };
    let cut = good.find("[routes.targets]").unwrap() + 9;
    type Breaker<'a> = Box<dyn Fn(&std::path::Path) + 'a>;
    let cases: [(&str, Breaker); 3] = [
        (
            "truncated mid-table",
            Box::new(|p| write_atomic(p, &good[..cut])),
        ),
        (
            "junk bytes",
            Box::new(|p| {
                let tmp = p.with_extension("junk");
                std::fs::write(&tmp, [0xff, 0xfe, 0x00, 0x9c, b'[', 0x80]).unwrap();
                std::fs::rename(&tmp, p).unwrap();
            }),
        ),
        (
            "a directory",
            Box::new(|p| {
                std::fs::remove_file(p).unwrap();
                std::fs::create_dir(p).unwrap();
            }),
        ),
    ];
    for (what, break_it) in cases {
        let before = failures();
        break_it(&gw.file);
        wait_until(&format!("{what} rejected"), DEADLINE, || async {
            failures() > before
        })
        .await;
        let r = get(&c, &gw.url("/"), &[]).await;
        assert_eq!((r.status, r.text().as_str()), (200, "blue"), "{what}");
        if gw.file.is_dir() {
            std::fs::remove_dir(&gw.file).unwrap();
        }
        let generation = gw.generation();
        write_atomic(&gw.file, &format!("# after {what}\n{good}"));
        wait_until(&format!("good file after {what}"), DEADLINE, || async {
            gw.generation() > generation
        })
        .await;
    }
    gw.stop().await;
}

/// The route file replaced 100 times a second (atomic renames, as a ConfigMap or a deploy tool
/// does) under keep-alive load: every request is answered 200 by the live target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_file_rewritten_100_times_a_second_under_load_loses_nothing() {
    let blue = spawn_upstream("blue").await;
    let good = config("blue", &[("blue", blue.addr)], "");
    let gw = Gw::start(&good).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, bad, url) = (stop.clone(), ok.clone(), bad.clone(), gw.url("/"));
        load.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let r = get(&c, &url, &[]).await;
                let counter = if (r.status, r.text().as_str()) == (200, "blue") {
                    &ok
                } else {
                    &bad
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let generation = gw.generation();
    for i in 0..200 {
        write_atomic(&gw.file, &format!("# rewrite {i}\n{good}"));
        // The scenario's pace (not synchronisation): 100 rewrites a second for 2 s.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let (ok, bad) = (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
    eprintln!(
        "100 rewrites/s: {ok} requests ok, {bad} failed, {} reloads applied",
        gw.generation() - generation
    );
    assert!(ok > 0);
    assert_eq!(bad, 0);
    assert!(gw.generation() > generation, "rewrites were applied");
    gw.stop().await;
}
