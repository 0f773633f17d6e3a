//! Shadow traffic (`[routes.shadow]`, issue 15 item 3) on the wire: copies reach the shadow target
//! with `x-flipgate-shadow: 1` and nobody else does; a shadow target that fails, is dead or hangs
//! never touches a live answer (the live answers arrive while the hanging target still holds every
//! copy: no timing involved); `max_in_flight` drops instead of queueing; outcomes land in the
//! shadow target's window (the admin API) and in `shadow_requests_total`, not in `requests_total`.
//!
//! Real upstreams on loopback. Plain HTTP/1.1 requests take the HTTP/1.1 engine, h2c ones
//! hyper's path; CI runs this file again with `FLIPGATE_HTTP1=hyper` (every connection hyper's).
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::TcpListener;
use tokio::sync::Notify;

const DEADLINE: Duration = Duration::from_secs(10);

/// How a recording upstream answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Ok,
    Fail,
    /// Waits until `release`, then answers 200.
    Hang,
}

/// One request as an upstream received it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    /// Every `x-flipgate-shadow` value.
    marks: Vec<String>,
    request_id: String,
    body: Bytes,
}

/// An upstream that records every request it receives.
#[derive(Clone)]
struct Recorder {
    name: &'static str,
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    holding: Arc<AtomicUsize>,
    release: Arc<Notify>,
    released: Arc<std::sync::atomic::AtomicBool>,
}

impl Recorder {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    fn holding(&self) -> usize {
        self.holding.load(Ordering::SeqCst)
    }
    fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
        self.release.notify_waiters();
    }
}

async fn recorder(name: &'static str, mode: Mode) -> Recorder {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = Recorder {
        name,
        addr: listener.local_addr().unwrap(),
        seen: Default::default(),
        holding: Default::default(),
        release: Arc::new(Notify::new()),
        released: Default::default(),
    };
    let rec = r.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let rec = rec.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    let rec = rec.clone();
                    async move { Ok::<_, Infallible>(answer(&rec, mode, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    r
}

async fn answer(
    rec: &Recorder,
    mode: Mode,
    req: http::Request<Incoming>,
) -> http::Response<Full<Bytes>> {
    let (req, body) = req.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let h = &req.headers;
    rec.seen.lock().unwrap().push(Seen {
        body,
        method: req.method.to_string(),
        path: req.uri.path().to_string(),
        marks: h
            .get_all("x-flipgate-shadow")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect(),
        request_id: h
            .get("x-request-id")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default(),
    });
    let status = match mode {
        Mode::Ok => 200,
        Mode::Fail => 500,
        Mode::Hang => {
            rec.holding.fetch_add(1, Ordering::SeqCst);
            let released = rec.release.notified();
            if !rec.released.load(Ordering::SeqCst) {
                released.await;
            }
            rec.holding.fetch_sub(1, Ordering::SeqCst);
            200
        }
    };
    let mut resp = http::Response::new(Full::new(Bytes::from(rec.name)));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
    resp
}

/// A port nothing listens on (bound, then closed): connections are refused.
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn shadow_config(blue: SocketAddr, green: SocketAddr, shadow: &str) -> String {
    config(
        "blue",
        &[("blue", blue), ("green", green)],
        &format!("[routes.shadow]\ntarget = \"green\"\n{shadow}"),
    )
}

fn h2c() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// The shadow target's circuit window, from the admin API: (requests, errors).
async fn window(gw: &Gw, target: &str) -> (u64, u64) {
    let v = get(&client(), &gw.admin_url("/api/v1/routes/bot"), &[])
        .await
        .json();
    let t = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == target)
        .unwrap_or_else(|| panic!("no target {target}: {v}"))
        .clone();
    (
        t["window"]["requests"].as_u64().unwrap(),
        t["window"]["errors"].as_u64().unwrap(),
    )
}

/// The route's `shadow` in the admin API.
async fn shadow_view(gw: &Gw) -> serde_json::Value {
    let v = get(&client(), &gw.admin_url("/api/v1/routes/bot"), &[])
        .await
        .json();
    v["shadow"].clone()
}

async fn shadowed(gw: &Gw, code: &str) -> f64 {
    let filter = format!("code=\"{code}\",route=\"bot\",target=\"green\"");
    metric(gw, "flipgate_shadow_requests_total", &filter).await
}

/// percent = 100: every GET (HTTP/1.1 and h2c) is copied to the shadow target with the mark and
/// the live request's id; live answers are the live target's; the mark never reaches live, even
/// when the client sends one; a POST is not copied (default methods); the copies' outcomes are in
/// the shadow target's window and in `shadow_requests_total`, not in its `requests_total`.
#[tokio::test]
async fn every_get_is_copied_with_the_mark_and_only_the_shadow_target_sees_it() {
    let blue = recorder("blue", Mode::Ok).await;
    let green = recorder("green", Mode::Ok).await;
    let gw = Gw::start(&shadow_config(blue.addr, green.addr, "percent = 100\n")).await;
    let (c, c2) = (client(), h2c());
    let mut ids = Vec::new();
    for i in 0..20 {
        let path = format!("/get/{i}");
        let url = gw.url(&path);
        let forged: &[(&str, &str)] = match i % 3 {
            0 => &[],
            1 => &[("x-flipgate-shadow", "1")],
            _ => &[
                ("x-flipgate-shadow", "0"),
                ("connection", "x-flipgate-shadow"),
            ],
        };
        let r = match i % 2 {
            0 => get(&c, &url, forged).await,
            _ => get(&c2, &url, forged).await,
        };
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.text(), "blue", "{path}: the live answer is live's");
    }
    for i in 0..3 {
        let r = send(&c, "POST", &gw.url(&format!("/post/{i}")), &[], "body").await;
        assert_eq!(r.status, 200);
        let r = send(&c, "POST", &gw.url("/post-empty"), &[], "").await;
        assert_eq!(r.status, 200);
    }
    // A last GET after the POSTs: once its copy is in, every copy sent before it was decided.
    get(&c, &gw.url("/last"), &[]).await;
    wait_until("21 copies at green", DEADLINE, || async {
        green.count() >= 21 && shadowed(&gw, "2xx").await == 21.0
    })
    .await;
    for s in blue.seen() {
        assert!(s.marks.is_empty(), "live saw the mark: {s:?}");
        ids.push((s.path.clone(), s.request_id.clone()));
    }
    assert_eq!(blue.count(), 27, "every live request reached live once");
    let copies = green.seen();
    assert_eq!(copies.len(), 21, "{copies:?}");
    for s in &copies {
        assert_eq!(s.method, "GET", "only GETs are copied: {s:?}");
        assert_eq!(s.marks, ["1"], "exactly one mark, flipgate's: {s:?}");
        let live = ids.iter().find(|(p, _)| *p == s.path).expect("copied path");
        assert_eq!(live.1, s.request_id, "the copy carries live's request id");
    }
    // Outcomes: the shadow target's window and the shadow metric, not requests_total.
    assert_eq!(window(&gw, "green").await, (21, 0));
    let requests = metric(&gw, "flipgate_requests_total", "target=\"green\"").await;
    assert_eq!(requests, 0.0, "copies are not live requests");
    assert_eq!(
        metric(&gw, "flipgate_requests_total", "target=\"blue\"").await,
        27.0
    );
    gw.stop().await;
}

/// A shadow target that answers 500, refuses connections or hangs leaves every live answer 2xx,
/// and the live answers do not wait for it: the hanging target still holds every copy when the
/// last live answer is in. Failures are counted against the shadow target's window.
#[tokio::test]
async fn a_failing_dead_or_hanging_shadow_target_never_touches_live() {
    for mode in ["fail", "dead", "hang"] {
        let blue = recorder("blue", Mode::Ok).await;
        let green = match mode {
            "fail" => Some(recorder("green", Mode::Fail).await),
            "hang" => Some(recorder("green", Mode::Hang).await),
            _ => None,
        };
        let green_addr = match &green {
            Some(g) => g.addr,
            None => dead_addr().await,
        };
        let file = shadow_config(blue.addr, green_addr, "percent = 100\ntimeout = \"60s\"\n");
        let gw = Gw::start(&file).await;
        let (c, c2) = (client(), h2c());
        for i in 0..10 {
            let url = gw.url(&format!("/{mode}/{i}"));
            let r = match i % 2 {
                0 => get(&c, &url, &[]).await,
                _ => get(&c2, &url, &[]).await,
            };
            assert_eq!(r.status, 200, "{mode}: live answer {i}");
            assert_eq!(r.text(), "blue");
        }
        match mode {
            "hang" => {
                let green = green.as_ref().unwrap();
                wait_until("every copy held", DEADLINE, || async {
                    green.holding() == 10
                })
                .await;
                assert_eq!(shadowed(&gw, "2xx").await, 0.0, "no copy answered yet");
                green.release();
                wait_until("the copies answered", DEADLINE, || async {
                    shadowed(&gw, "2xx").await == 10.0
                })
                .await;
                assert_eq!(window(&gw, "green").await, (10, 0));
            }
            "fail" => {
                wait_until("10 failed copies", DEADLINE, || async {
                    shadowed(&gw, "5xx").await == 10.0
                })
                .await;
                assert_eq!(window(&gw, "green").await, (10, 10));
            }
            _ => {
                wait_until("10 failed copies", DEADLINE, || async {
                    shadowed(&gw, "error").await == 10.0
                })
                .await;
                assert_eq!(window(&gw, "green").await, (10, 10));
            }
        }
        assert_eq!(blue.count(), 10);
        assert_eq!(window(&gw, "blue").await, (10, 0), "{mode}: live is clean");
        gw.stop().await;
    }
}

/// `max_in_flight`: copies past the cap are dropped and counted at once, never queued (the
/// hanging target holds exactly the cap); a place given back takes the next copy.
#[tokio::test]
async fn max_in_flight_drops_instead_of_queueing() {
    let blue = recorder("blue", Mode::Ok).await;
    let green = recorder("green", Mode::Hang).await;
    let file = shadow_config(blue.addr, green.addr, "percent = 100\nmax_in_flight = 2\n");
    let gw = Gw::start(&file).await;
    let c = client();
    for i in 0..5 {
        let r = get(&c, &gw.url(&format!("/{i}")), &[]).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(shadowed(&gw, "dropped").await, 3.0, "3 over the cap");
    wait_until("the cap held", DEADLINE, || async { green.holding() == 2 }).await;
    green.release();
    wait_until("the held copies answered", DEADLINE, || async {
        shadowed(&gw, "2xx").await == 2.0
    })
    .await;
    assert_eq!(green.count(), 2, "dropped copies were never sent");
    get(&c, &gw.url("/again"), &[]).await;
    wait_until("a copy after the places came back", DEADLINE, || async {
        shadowed(&gw, "2xx").await == 3.0
    })
    .await;
    assert_eq!(shadowed(&gw, "dropped").await, 3.0);
    gw.stop().await;
}

/// A copy the shadow target does not answer within the shadow's `timeout` is given up and counted
/// `timeout`, and as an error in the shadow target's window; live answers were never held.
#[tokio::test]
async fn a_copy_past_its_timeout_is_counted_as_a_timeout() {
    let blue = recorder("blue", Mode::Ok).await;
    let green = recorder("green", Mode::Hang).await;
    let file = shadow_config(blue.addr, green.addr, "percent = 100\ntimeout = \"50ms\"\n");
    let gw = Gw::start(&file).await;
    let c = client();
    for i in 0..3 {
        let r = get(&c, &gw.url(&format!("/{i}")), &[]).await;
        assert_eq!(r.status, 200);
    }
    wait_until("3 copies timed out", DEADLINE, || async {
        shadowed(&gw, "timeout").await == 3.0
    })
    .await;
    assert_eq!(window(&gw, "green").await, (3, 3));
    assert_eq!(shadowed(&gw, "2xx").await, 0.0);
    green.release();
    gw.stop().await;
}

/// A flip that makes the shadow target live pauses shadowing (live traffic is not copied to
/// the old live target); a flip back resumes it.
#[tokio::test]
async fn shadowing_pauses_while_its_target_is_live() {
    let blue = recorder("blue", Mode::Ok).await;
    let green = recorder("green", Mode::Ok).await;
    let gw = Gw::start(&shadow_config(blue.addr, green.addr, "percent = 100\n")).await;
    let c = client();
    let r = gw.act(&c, "flip", r#"{"target":"green"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(shadow_view(&gw).await["active"], false, "paused");
    for i in 0..5 {
        let r = get(&c, &gw.url(&format!("/flipped/{i}")), &[]).await;
        assert_eq!(r.text(), "green");
    }
    let r = gw.act(&c, "flip", r#"{"target":"blue"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = shadow_view(&gw).await;
    assert_eq!(v["active"], true, "resumed: {v}");
    assert_eq!(v["target"], "green");
    assert_eq!(v["percent"], 100.0);
    assert_eq!(v["methods"], serde_json::json!(["GET", "HEAD"]));
    get(&c, &gw.url("/back"), &[]).await;
    wait_until("the copy after the flip back", DEADLINE, || async {
        shadowed(&gw, "2xx").await == 1.0
    })
    .await;
    assert!(blue.seen().iter().all(|s| s.marks.is_empty()));
    let copies: Vec<_> = green
        .seen()
        .into_iter()
        .filter(|s| !s.marks.is_empty())
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(copies[0].path, "/back");
    assert_eq!(green.count(), 6);
    gw.stop().await;
}

/// A fractional percent copies about that share (a loose bound: sampling, not timing).
#[tokio::test]
async fn percent_samples_a_share() {
    let blue = recorder("blue", Mode::Ok).await;
    let green = recorder("green", Mode::Ok).await;
    let gw = Gw::start(&shadow_config(blue.addr, green.addr, "percent = 50.5\n")).await;
    let c = client();
    for i in 0..200 {
        get(&c, &gw.url(&format!("/{i}")), &[]).await;
    }
    // P(outside 50..150 of 200 at p = 0.505) is about 1e-12.
    wait_until("copies settled", DEADLINE, || async {
        shadowed(&gw, "2xx").await == green.count() as f64
    })
    .await;
    let n = green.count();
    assert!((50..=150).contains(&n), "{n} of 200 copied at 50.5 %");
    gw.stop().await;
}

/// `max_body_bytes`: a POST whose declared body fits is copied with exactly the bytes live got
/// (HTTP/1.1 through the engine, h2c through hyper's path); a larger one is not copied; a client
/// that stops mid-body gets no copy sent (counted `dropped`), and live is unaffected throughout.
#[tokio::test]
async fn bodies_up_to_max_body_bytes_are_copied_whole() {
    let blue = recorder("blue", Mode::Ok).await;
    let green = recorder("green", Mode::Ok).await;
    let gw = Gw::start(&shadow_config(
        blue.addr,
        green.addr,
        "percent = 100\nmethods = [\"POST\"]\nmax_body_bytes = 4096\n",
    ))
    .await;
    let (c, c2) = (client(), h2c());
    let small: String = (0..3000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let big = "x".repeat(5000);
    for (i, body) in [small.as_str(), big.as_str(), small.as_str(), big.as_str()]
        .into_iter()
        .enumerate()
    {
        let url = gw.url(&format!("/post/{i}"));
        let r = match i < 2 {
            true => send(&c, "POST", &url, &[], body.to_string()).await,
            false => send(&c2, "POST", &url, &[], body.to_string()).await,
        };
        assert_eq!((r.status, r.text()), (200, "blue".to_string()), "{i}");
    }
    wait_until("2 copies at green", DEADLINE, || async {
        shadowed(&gw, "2xx").await == 2.0
    })
    .await;
    let copies = green.seen();
    let paths: Vec<&str> = copies.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(
        paths.contains(&"/post/0") && paths.contains(&"/post/2"),
        "{paths:?}"
    );
    for s in &copies {
        assert_eq!(s.method, "POST");
        assert_eq!(
            s.body,
            small.as_bytes(),
            "the copy's body is live's: {}",
            s.path
        );
        assert_eq!(s.marks, ["1"]);
    }
    for s in blue.seen() {
        let want = if s.path.ends_with('0') || s.path.ends_with('2') {
            &small
        } else {
            &big
        };
        assert_eq!(
            s.body,
            want.as_bytes(),
            "live's body is untouched: {}",
            s.path
        );
    }

    // A client that declares 100 bytes, sends 10 and goes away: live fails on its own, the copy
    // is never sent.
    let mut raw = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    raw.write_all(b"POST /cut HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    drop(raw);
    wait_until("the copy counted dropped", DEADLINE, || async {
        shadowed(&gw, "dropped").await == 1.0
    })
    .await;
    assert_eq!(shadowed(&gw, "2xx").await, 2.0);
    assert!(green.seen().iter().all(|s| s.path != "/cut"));
    gw.stop().await;
}
