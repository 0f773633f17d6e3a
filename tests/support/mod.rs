//! Test support: real upstream servers and real gateways on `127.0.0.1:0`, real files on disk,
//! and condition waits with deadlines (never sleeps as synchronisation).
#![allow(dead_code)]

pub mod browser;
pub mod proc;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// A test upstream ("bot"). Behaviour by path:
/// - `/headers`: JSON object of the request headers it received;
/// - `/echo`: the request body, byte for byte;
/// - `/hold`: waits until `release()` is called, then answers;
/// - `/status/NNN`: answers with that status;
/// - anything else: 200 with the upstream's name as body.
///
/// `fail_every(n)`: every n-th request (by count) answers 500 instead (0 = never).
#[derive(Clone)]
pub struct Upstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    fail_every: Arc<AtomicU64>,
    release: Arc<Notify>,
    /// Requests currently waiting in `/hold`.
    pub holding: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn fail_every(&self, n: u64) {
        self.fail_every.store(n, Ordering::SeqCst);
    }
    /// Lets every request waiting in `/hold` (and the next ones) answer.
    pub fn release(&self) {
        self.release.notify_waiters();
        self.release.notify_one();
    }
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

pub async fn spawn_upstream(name: &'static str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let up = Upstream {
        name,
        addr,
        hits: Arc::default(),
        fail_every: Arc::default(),
        release: Arc::new(Notify::new()),
        holding: Arc::default(),
    };
    let u = up.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let u = u.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    let u = u.clone();
                    async move { Ok::<_, Infallible>(upstream_answer(&u, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    up
}

async fn upstream_answer(
    u: &Upstream,
    req: http::Request<Incoming>,
) -> http::Response<Full<Bytes>> {
    let n = u.hits.fetch_add(1, Ordering::SeqCst) as u64 + 1;
    let every = u.fail_every.load(Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let mut status = 200u16;
    let body: Bytes = if path == "/headers" {
        let map: HashMap<String, String> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        serde_json::to_vec(&map).unwrap().into()
    } else if path == "/echo" {
        req.into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default()
    } else if path == "/hold" {
        u.holding.fetch_add(1, Ordering::SeqCst);
        u.release.notified().await;
        u.holding.fetch_sub(1, Ordering::SeqCst);
        Bytes::from(u.name)
    } else if let Some(code) = path.strip_prefix("/status/") {
        status = code.parse().unwrap_or(500);
        Bytes::from(u.name)
    } else {
        Bytes::from(u.name)
    };
    if every > 0 && n % every == 0 {
        status = 500;
    }
    let mut resp = http::Response::new(Full::new(body));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
    resp.headers_mut()
        .insert("x-upstream", u.name.parse().unwrap());
    resp.headers_mut()
        .insert("connection", "keep-alive, x-hop".parse().unwrap());
    resp.headers_mut()
        .insert("x-hop", "should-be-stripped".parse().unwrap());
    resp
}

/// A running gateway on loopback with its route file in a temporary directory.
pub struct Gw {
    pub gateway: Option<flipgate::Gateway>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub file: PathBuf,
}

impl Gw {
    /// Writes `config` (which should listen on 127.0.0.1:0 for both listeners) and starts.
    pub async fn start(config: &str) -> Gw {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, config).await
    }

    pub async fn start_in(dir: tempfile::TempDir, config: &str) -> Gw {
        let file = dir.path().join("flipgate.toml");
        write_atomic(&file, config);
        let gateway = flipgate::Gateway::start(&file)
            .await
            .expect("gateway starts");
        Gw {
            addr: gateway.addr,
            admin: gateway.admin_addr,
            gateway: Some(gateway),
            dir,
            file,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// POSTs an operator action (`flip`, `canary`, …) for route `bot`, without a token, as a
    /// deploy script would (a body is declared JSON).
    pub async fn act(&self, c: &TestClient, verb: &str, body: &str) -> Resp {
        admin_post(
            c,
            &self.admin_url(&format!("/api/v1/routes/bot/{verb}")),
            body,
        )
        .await
    }

    pub fn generation(&self) -> u64 {
        self.gateway
            .as_ref()
            .unwrap()
            .control
            .snapshots()
            .load()
            .generation
    }

    /// Rewrites the route file atomically (temp file + rename, as editors do).
    pub fn rewrite(&self, config: &str) {
        write_atomic(&self.file, config);
    }

    pub async fn stop(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await;
        }
    }
}

/// Writes a file by temp file + rename.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension(format!("tmp{}", rand_suffix()));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn rand_suffix() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// A route file with one route `bot` over the given targets, listening on port 0.
pub fn config(live: &str, targets: &[(&str, SocketAddr)], extra: &str) -> String {
    let mut t = String::new();
    for (name, addr) in targets {
        t.push_str(&format!("{name} = [\"{addr}\"]\n"));
    }
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nupstream_timeout = \"5s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[state]\ndir = \"state\"\n\n[[routes]]\nname = \"bot\"\nlive = \"{live}\"\n\n[routes.targets]\n{t}\n{extra}"
    )
}

pub type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response read whole.
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// POSTs an admin action as a deploy script would: without a token, a body declared JSON.
pub async fn admin_post(c: &TestClient, url: &str, body: &str) -> Resp {
    let json: &[(&str, &str)] = if body.is_empty() {
        &[]
    } else {
        &[("content-type", "application/json")]
    };
    send(c, "POST", url, json, body.to_string()).await
}

pub async fn send(
    c: &TestClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Resp {
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = c
        .request(b.body(Full::new(body.into())).unwrap())
        .await
        .expect("request sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body,
    }
}

pub async fn get(c: &TestClient, url: &str, headers: &[(&str, &str)]) -> Resp {
    send(c, "GET", url, headers, Bytes::new()).await
}

/// Polls `cond` until it returns true or the deadline passes (then panics with `what`).
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = std::time::Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        if std::time::Instant::now() > end {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Adds lines to the `[server]` table of a route file made by `config`.
pub fn with_server(config: &str, lines: &str) -> String {
    config.replacen("[server]\n", &format!("[server]\n{lines}\n"), 1)
}

/// Sums the samples of a gateway's metric family whose line contains `filter`.
pub async fn metric(gw: &Gw, family: &str, filter: &str) -> f64 {
    let text = get(&client(), &gw.admin_url("/metrics"), &[]).await.text();
    text.lines()
        .filter(|l| l.starts_with(family) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
