//! Upstream connection reuse for HTTP/1 clients (the engine's per-thread pool in `src/h1`, and
//! `src/pinned.rs` on hyper's path, where each client connection keeps its own): kept-alive
//! upstream connections are reused, and an upstream that closes connections never turns into a
//! client error. The upstream here is a raw TCP server so the test sees every connection.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::*;

/// Answers every request with `ok`; with `close`, says `Connection: close` and closes after each.
async fn raw_upstream(close: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    let head = if close { "connection: close\r\n" } else { "" };
                    let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{head}\r\nok");
                    if s.write_all(resp.as_bytes()).await.is_err() || close {
                        let _ = s.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Sends `n` GETs one after another on one raw keep-alive connection; returns the statuses.
async fn on_one_connection(gw: SocketAddr, n: usize) -> Vec<u16> {
    let mut s = TcpStream::connect(gw).await.unwrap();
    let mut statuses = Vec::new();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    for _ in 0..n {
        s.write_all(b"GET /x HTTP/1.1\r\nhost: bot\r\n\r\n")
            .await
            .unwrap();
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if buf.len() >= end + 4 + len {
                    statuses.push(head[9..12].parse().unwrap());
                    buf.drain(..end + 4 + len);
                    break;
                }
            }
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "gateway closed the client connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    statuses
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let (up, accepted) = raw_upstream(false).await;
    let gw = Gw::start(&config("blue", &[("blue", up)], "")).await;
    assert_eq!(on_one_connection(gw.addr, 20).await, vec![200; 20]);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "20 requests, one upstream connection"
    );
    let (a, b) = tokio::join!(
        on_one_connection(gw.addr, 10),
        on_one_connection(gw.addr, 10)
    );
    assert_eq!((a, b), (vec![200; 10], vec![200; 10]));
    // The engine shares idle connections among client connections (one more at most, when the
    // two overlap); hyper's path pins one per client connection (one more each).
    let n = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=3).contains(&n),
        "{n} upstream connections for 2 clients"
    );
    gw.stop().await;
}

#[tokio::test]
async fn upstream_closing_its_connection_is_not_a_client_error() {
    let (up, accepted) = raw_upstream(true).await;
    let gw = Gw::start(&config("blue", &[("blue", up)], "")).await;
    assert_eq!(on_one_connection(gw.addr, 10).await, vec![200; 10]);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        10,
        "a fresh connection after each close"
    );
    gw.stop().await;
}

#[tokio::test]
async fn refused_upstream_is_a_502_on_the_pinned_path() {
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = gone.local_addr().unwrap();
    drop(gone);
    let gw = Gw::start(&config("blue", &[("blue", addr)], "")).await;
    assert_eq!(on_one_connection(gw.addr, 2).await, vec![502, 502]);
    gw.stop().await;
}

/// The one idle rule's silence check, on both paths that keep a client's upstream connection:
/// an upstream that writes on an idle kept-alive connection (a stray response) has that
/// connection closed before reuse, and the same client's next request goes out on a fresh one and
/// gets its own answer, never the stray bytes (`upstream::idle::silent`, called by the engine's
/// pool and, with `FLIPGATE_HTTP1=hyper`, by the pinned slot).
#[tokio::test]
async fn an_upstream_that_writes_while_idle_is_not_reused_for_the_same_client() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let go = Arc::new(tokio::sync::Notify::new());
    let written = Arc::new(tokio::sync::Notify::new());
    let (go2, written2) = (go.clone(), written.clone());
    tokio::spawn(async move {
        for conn in 0.. {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (go, written) = (go2.clone(), written2.clone());
            tokio::spawn(async move {
                let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let path = head.split(' ').nth(1).unwrap_or("").to_string();
                        let body = format!("conn {conn} {path}");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                        if path == "/first" {
                            go.notified().await;
                            let stray = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nLEAKED";
                            let _ = s.write_all(stray).await;
                            written.notify_one();
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    let gw = Gw::start(&config("blue", &[("blue", up)], "")).await;
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    let mut call = async |path: &str| {
        let req = format!("GET {path} HTTP/1.1\r\nhost: bot\r\n\r\n");
        c.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if buf.len() >= end + 4 + len {
                    return String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                }
            }
            let n = c.read(&mut chunk).await.unwrap();
            assert!(n > 0, "gateway closed the client connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    assert_eq!(call("/first").await, "conn 0 /first");
    go.notify_one();
    written.notified().await;
    assert_eq!(call("/second").await, "conn 1 /second");
    assert_eq!(
        call("/third").await,
        "conn 1 /third",
        "the fresh one is kept"
    );
    gw.stop().await;
}
