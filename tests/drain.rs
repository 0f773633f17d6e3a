//! Instances from a deploy script (issue 14, item 3): drain / undrain / wait-drained over the API
//! and the CLI, persisted across a restart; a rolling replacement of a three-instance pool under
//! steady keep-alive load loses no request; a killed instance causes no client error (the connect
//! retry); a drained instance's idle pooled connections are closed; every instance drained is a
//! local 503. Real upstreams on loopback; run with `FLIPGATE_HTTP1=hyper` too.
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// An upstream instance the test can stop: closing its listener and every connection it has.
struct Instance {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<TcpListener>,
    handover: tokio::sync::oneshot::Sender<()>,
}

impl Instance {
    /// Serves on a new port; answers `200` with its port as body.
    async fn start(addr: SocketAddr) -> Instance {
        Self::on(TcpListener::bind(addr).await.unwrap())
    }

    /// Serves on `listener` (a new process taking over its predecessor's socket).
    fn on(listener: TcpListener) -> Instance {
        let addr = listener.local_addr().unwrap();
        let (handover, mut stop) = tokio::sync::oneshot::channel();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stop => return listener,
                    r = listener.accept() => {
                        let Ok((stream, _)) = r else { continue };
                        let h = h.clone();
                        conns.spawn(async move {
                            let svc = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                                h.fetch_add(1, Ordering::SeqCst);
                                async move {
                                    Ok::<_, std::convert::Infallible>(http::Response::new(
                                        http_body_util::Full::new(bytes::Bytes::from(addr.port().to_string())),
                                    ))
                                }
                            });
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Instance {
            addr,
            hits,
            task,
            handover,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops it: listener closed (connects are refused), connections closed.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Stops serving and closes its connections, handing its listening socket on (as a restart
    /// by socket activation or `SO_REUSEPORT` does: the address never refuses a connect).
    async fn hand_over(self) -> TcpListener {
        let _ = self.handover.send(());
        self.task.await.unwrap()
    }
}

/// A route file with one route `bot` whose live target `blue` has `instances`.
fn pool_config(instances: &[SocketAddr], lb: &str) -> String {
    let list: Vec<String> = instances.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nupstream_timeout = \"5s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[state]\ndir = \"state\"\n\n[[routes]]\nname = \"bot\"\nlive = \"blue\"\n\n[routes.targets]\nblue = {{ instances = [{}]{lb} }}\n",
        list.join(", ")
    )
}

fn path(addr: SocketAddr, verb: &str) -> String {
    format!("/api/v1/routes/bot/targets/blue/instances/{addr}/{verb}")
}

/// The `instance_status` entry of `addr` in route `bot`'s target `blue`.
async fn status_of(gw: &Gw, addr: SocketAddr) -> serde_json::Value {
    let v = get(&client(), &gw.admin_url("/api/v1/routes/bot"), &[])
        .await
        .json();
    let target = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "blue")
        .unwrap()
        .clone();
    target["instance_status"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["addr"] == addr.to_string())
        .unwrap_or_else(|| panic!("{addr} not in {target}"))
        .clone()
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `flipgate ARGS` against `gw`'s admin API.
async fn fg(gw: &Gw, args: &[&str]) -> Out {
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_flipgate"))
        .args(args)
        .env_remove("FLIPGATE_ADMIN_TOKEN")
        .env("FLIPGATE_ADMIN", format!("http://{}", gw.admin))
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let o = tokio::time::timeout(Duration::from_secs(60), o)
        .await
        .expect("client command finishes")
        .expect("binary runs");
    Out {
        code: o.status.code().expect("exited"),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn code(o: &Out, want: i32) {
    assert_eq!(o.code, want, "stdout: {}\nstderr: {}", o.stdout, o.stderr);
}

/// Steady keep-alive load: `n` clients, each on its own pooled connection, sending until
/// stopped; counts answers and failures (any transport error or status other than 200).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: JoinSet<()>,
}

impl Load {
    fn start(url: String, n: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = JoinSet::new();
        for _ in 0..n {
            let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
            tasks.spawn(async move {
                let c = client();
                while !stop.load(Ordering::SeqCst) {
                    let req = http::Request::get(&url)
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap();
                    match c.request(req).await {
                        Ok(r) if r.status() == 200 => {
                            use http_body_util::BodyExt;
                            match r.into_body().collect().await {
                                Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                                Err(e) => {
                                    failed.lock().unwrap().push(format!("body: {e}"));
                                    0
                                }
                            };
                        }
                        Ok(r) => failed
                            .lock()
                            .unwrap()
                            .push(format!("status {}", r.status())),
                        Err(e) => failed.lock().unwrap().push(format!("error: {e:?}")),
                    }
                }
            });
        }
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    /// Waits until `more` further requests have been answered.
    async fn progress(&self, more: usize) {
        let target = self.ok() + more;
        wait_until("load makes progress", Duration::from_secs(20), || async {
            self.ok() >= target
        })
        .await;
    }

    async fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        while self.tasks.join_next().await.is_some() {}
        let failed = self.failed.lock().unwrap().clone();
        (self.ok(), failed)
    }
}

/// Drain, wait-drained, stop, start the replacement, undrain (in place, same port) or reload
/// (new port), one instance at a time, under steady keep-alive load: not one request lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_replacement_under_keep_alive_load_loses_nothing() {
    let mut pool = Vec::new();
    for _ in 0..3 {
        pool.push(Instance::start("127.0.0.1:0".parse().unwrap()).await);
    }
    let addrs = |pool: &[Instance]| pool.iter().map(|i| i.addr).collect::<Vec<_>>();
    let gw = Gw::start(&pool_config(&addrs(&pool), "")).await;
    let load = Load::start(gw.url("/"), 4);
    load.progress(50).await;

    for k in 0..3 {
        let old = pool[k].addr.to_string();
        code(&fg(&gw, &["drain", "bot", "blue", &old]).await, 0);
        let w = fg(
            &gw,
            &["wait-drained", "bot", "blue", &old, "--timeout", "20s"],
        )
        .await;
        code(&w, 0);
        assert!(w.stdout.contains("drained"), "{}", w.stdout);
        let hits = pool[k].hits();
        load.progress(30).await;
        assert_eq!(pool[k].hits(), hits, "a drained instance got a new request");
        let replaced = pool.remove(k);
        if k == 0 {
            // In place: the new process on the old address, then undrain.
            let listener = replaced.hand_over().await;
            pool.insert(k, Instance::on(listener));
            code(&fg(&gw, &["undrain", "bot", "blue", &old]).await, 0);
        } else {
            // On a new port: the route file swaps the address (the old one's drain goes with it).
            replaced.stop().await;
            pool.insert(k, Instance::start("127.0.0.1:0".parse().unwrap()).await);
            let generation = gw.generation();
            gw.rewrite(&pool_config(&addrs(&pool), ""));
            wait_until("reload applied", Duration::from_secs(20), || async {
                gw.generation() > generation
            })
            .await;
        }
        let before = pool[k].hits();
        wait_until(
            "the new instance takes requests",
            Duration::from_secs(20),
            || async { pool[k].hits() > before },
        )
        .await;
        assert_eq!(status_of(&gw, pool[k].addr).await["state"], "up");
    }
    load.progress(50).await;
    let (ok, failed) = load.finish().await;
    assert!(
        failed.is_empty(),
        "{} lost of {ok}: {failed:?}",
        failed.len()
    );
    gw.stop().await;
}

/// A killed instance (listener closed: connects are refused) costs no client a request: the
/// connect failure moves the request to another instance of the target.
#[tokio::test]
async fn a_killed_instance_causes_no_client_error() {
    let mut pool = Vec::new();
    for _ in 0..3 {
        pool.push(Instance::start("127.0.0.1:0".parse().unwrap()).await);
    }
    let addrs: Vec<SocketAddr> = pool.iter().map(|i| i.addr).collect();
    for lb in ["", ", lb = \"round_robin\""] {
        let gw = Gw::start(&pool_config(&addrs, lb)).await;
        let c = client();
        for _ in 0..30 {
            assert_eq!(get(&c, &gw.url("/"), &[]).await.status, 200);
        }
        gw.stop().await;
    }
    let killed = pool.remove(1);
    killed.stop().await;
    for lb in ["", ", lb = \"round_robin\""] {
        let gw = Gw::start(&pool_config(&addrs, lb)).await;
        let c = client();
        for i in 0..60 {
            // Fresh client connections too, so every engine path (engine, pinned, shared) is used.
            let c = if i % 2 == 0 { c.clone() } else { client() };
            let r = get(&c, &gw.url("/"), &[]).await;
            assert_eq!(r.status, 200, "request {i} ({lb}): {}", r.text());
        }
        assert!(
            metric(&gw, "flipgate_upstream_errors_total", "kind=\"connect\"").await >= 1.0,
            "the killed instance was tried"
        );
        gw.stop().await;
    }
}

/// Drain and undrain over the API and the CLI: guarded like any mutation, persisted (and
/// restored by a restart), errors for unknown route, target and instance; `wait-drained` exit
/// codes; a drained instance takes no new request while its in-flight one finishes.
#[tokio::test]
async fn drain_and_undrain_over_api_and_cli_persist_across_a_restart() {
    let a = spawn_upstream("a").await;
    let b = spawn_upstream("b").await;
    let cfg = pool_config(&[a.addr, b.addr], "");
    let gw = Gw::start(&cfg).await;
    let c = client();

    // Errors: unknown route 404, unknown target or instance 422; a form body is refused.
    let unknown = admin_post(
        &c,
        &gw.admin_url(&path(a.addr, "drain").replace("/bot/", "/nope/")),
        "",
    )
    .await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    let t = admin_post(
        &c,
        &gw.admin_url(&path(a.addr, "drain").replace("/blue/", "/red/")),
        "",
    )
    .await;
    assert_eq!(t.status, 422, "{}", t.text());
    let i = admin_post(
        &c,
        &gw.admin_url(&path("127.0.0.1:9".parse().unwrap(), "drain")),
        "",
    )
    .await;
    assert_eq!(i.status, 422, "{}", i.text());
    assert!(i.text().contains("no instance"), "{}", i.text());
    let form = send(
        &c,
        "POST",
        &gw.admin_url(&path(a.addr, "drain")),
        &[("content-type", "application/x-www-form-urlencoded")],
        "x=1",
    )
    .await;
    assert_eq!(form.status, 415, "{}", form.text());
    assert_eq!(status_of(&gw, a.addr).await["state"], "up");

    // A request in flight to `a` when it is drained finishes; no new one goes there.
    let held = {
        let url = gw.url("/hold");
        // p2c on two idle instances: keep asking until one request holds at `a`.
        let mut held = Vec::new();
        while a.holding.load(Ordering::SeqCst) == 0 {
            let url = url.clone();
            held.push(tokio::spawn(async move { get(&client(), &url, &[]).await }));
            let (a, b) = (a.holding.clone(), b.holding.clone());
            let n = held.len();
            wait_until("the request is held", Duration::from_secs(10), || {
                let (a, b) = (a.clone(), b.clone());
                async move { a.load(Ordering::SeqCst) + b.load(Ordering::SeqCst) >= n }
            })
            .await;
        }
        held
    };
    let r = admin_post(&c, &gw.admin_url(&path(a.addr, "drain")), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["persisted"], true);
    let s = status_of(&gw, a.addr).await;
    assert_eq!(s["state"], "draining", "{s}");
    assert!(s["in_flight"].as_u64().unwrap() >= 1, "{s}");
    // Still in flight: wait-drained times out (exit 1).
    let w = fg(
        &gw,
        &[
            "wait-drained",
            "bot",
            "blue",
            &a.addr.to_string(),
            "--timeout",
            "300ms",
        ],
    )
    .await;
    code(&w, 1);
    assert!(w.stderr.contains("in flight"), "{}", w.stderr);
    let hits = a.hits();
    for _ in 0..20 {
        assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "b");
    }
    assert_eq!(a.hits(), hits);
    a.release();
    b.release();
    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
    let w = fg(&gw, &["wait-drained", "bot", "blue", &a.addr.to_string()]).await;
    code(&w, 0);
    assert_eq!(status_of(&gw, a.addr).await["state"], "drained");
    // Bad usage: exit 2.
    code(&fg(&gw, &["wait-drained", "bot", "blue"]).await, 2);
    code(
        &fg(
            &gw,
            &[
                "wait-drained",
                "bot",
                "blue",
                &a.addr.to_string(),
                "--timeout",
                "soon",
            ],
        )
        .await,
        2,
    );
    // Not drained at all: nothing to wait for (exit 1).
    code(
        &fg(&gw, &["wait-drained", "bot", "blue", &b.addr.to_string()]).await,
        1,
    );

    // Restart: the drain is restored from the state file.
    let Gw { gateway, dir, .. } = gw;
    gateway.unwrap().shutdown().await;
    let gw = Gw::start_in(dir, &cfg).await;
    assert_eq!(status_of(&gw, a.addr).await["state"], "drained");
    for _ in 0..10 {
        assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "b");
    }
    // A reload that keeps the instance keeps its drain.
    let generation = gw.generation();
    gw.rewrite(&pool_config(&[b.addr, a.addr], ", lb = \"round_robin\""));
    wait_until("reload applied", Duration::from_secs(20), || async {
        gw.generation() > generation
    })
    .await;
    assert_eq!(status_of(&gw, a.addr).await["state"], "drained");

    // The CLI undrains (and drains); undrained, `a` takes requests again.
    let u = fg(&gw, &["undrain", "bot", "blue", &a.addr.to_string()]).await;
    code(&u, 0);
    assert!(u.stdout.contains("up"), "{}", u.stdout);
    let before = a.hits();
    for _ in 0..10 {
        assert_eq!(get(&c, &gw.url("/"), &[]).await.status, 200);
    }
    assert!(a.hits() > before);
    let d = fg(&gw, &["drain", "bot", "blue", &a.addr.to_string()]).await;
    code(&d, 0);
    assert!(d.stdout.contains("drained"), "{}", d.stdout);
    code(
        &fg(&gw, &["drain", "bot", "red", &a.addr.to_string()]).await,
        1,
    );
    code(&fg(&gw, &["drain", "bot", "blue"]).await, 2);

    // Every instance drained: a local 503, never the target's fault.
    code(
        &fg(&gw, &["drain", "bot", "blue", &b.addr.to_string()]).await,
        0,
    );
    let r = get(&c, &gw.url("/"), &[]).await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("drained"), "{}", r.text());
    assert_eq!(
        metric(&gw, "flipgate_local_errors_total", "kind=\"drained\"").await,
        1.0
    );
    let v = get(&c, &gw.admin_url("/api/v1/routes/bot"), &[])
        .await
        .json();
    assert_eq!(v["targets"][0]["window"]["errors"], 0, "{v}");
    gw.stop().await;
}

/// A raw HTTP/1.1 upstream that answers every request on a connection with a small 200 and
/// reports, per accepted connection, when the peer closed it (EOF).
async fn raw_upstream() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (a, cl) = (accepted.clone(), closed.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            a.fetch_add(1, Ordering::SeqCst);
            let cl = cl.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nraw";
                        if s.write_all(resp).await.is_err() {
                            break;
                        }
                    }
                }
                cl.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, accepted, closed)
}

/// Idle pooled connections to an instance are closed once it is drained: the upstream sees EOF on
/// the connection it accepted. The engine's per-thread pool closes them at its thread's next
/// exchange; on hyper's path the connection pinned to a client connection closes at that client
/// connection's next request. (hyper's shared pool, for HTTP/2 and TLS, drops its idle ones at
/// `pool_idle_timeout` and never uses them for the drained instance meanwhile.)
#[tokio::test]
async fn a_drained_instance_s_idle_pooled_connections_close() {
    let (raw, accepted, closed) = raw_upstream().await;
    let other = spawn_upstream("other").await;
    let gw = Gw::start(&pool_config(&[raw, other.addr], "")).await;
    // One keep-alive client connection, until the raw instance has served it.
    let c = client();
    while accepted.load(Ordering::SeqCst) == 0 {
        assert_eq!(get(&c, &gw.url("/"), &[]).await.status, 200);
    }
    assert_eq!(closed.load(Ordering::SeqCst), 0);
    let r = admin_post(&client(), &gw.admin_url(&path(raw, "drain")), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The next exchange (on the pool's thread, this test's only one; on the same client
    // connection) closes it.
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "other");
    wait_until(
        "the drained instance's pooled connection is closed",
        Duration::from_secs(10),
        || async { closed.load(Ordering::SeqCst) == accepted.load(Ordering::SeqCst) },
    )
    .await;
    gw.stop().await;
}

/// The route file's balancing fields: `lb` per target, `weight` per instance in the table form.
#[test]
fn lb_and_weights_parse_from_the_table_form() {
    let text = "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = { instances = [{ addr = \"10.0.0.1:80\", weight = 3 }, \"10.0.0.2:80\"], lb = \"round_robin\" }\ngreen = [\"10.0.1.1:80\"]\n";
    let cfg = flipgate::config::parse(std::path::Path::new("t.toml"), text).unwrap();
    let blue = &cfg.routes[0].targets[0];
    assert_eq!(blue.weights, vec![3, 1]);
    assert_eq!(blue.lb, flipgate::upstream::balance::Lb::RoundRobin);
    let green = &cfg.routes[0].targets[1];
    assert_eq!(green.weights, vec![1]);
    assert_eq!(green.lb, flipgate::upstream::balance::Lb::P2c);
}
