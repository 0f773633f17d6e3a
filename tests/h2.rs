//! HTTP/2 on both sides: h2c clients, an HTTP/2 upstream with gRPC-style trailers, and the
//! HTTP/1 <-> HTTP/2 header translation of RFC 9113 §8.2.2. (h2 over TLS by ALPN: `tests/tls.rs`.)
mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

/// An h2c-only upstream that answers like a gRPC server: the echoed request body, then trailers
/// `grpc-status: 0` and `grpc-message: ok`; the response header `x-seen` lists what it received
/// (version and headers) as JSON.
async fn spawn_grpc_upstream() -> SocketAddr {
    spawn_grpc_upstream_with("0", false).await
}

/// Like `spawn_grpc_upstream`, every call ending with `grpc-status: code`: in the trailers, or
/// with `trailers_only` in the response head and no body (gRPC's Trailers-Only form).
async fn spawn_grpc_upstream_with(code: &'static str, trailers_only: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<Incoming>| async move {
                        let mut seen: HashMap<String, String> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
                            .collect();
                        seen.insert(":version".into(), format!("{:?}", req.version()));
                        let collected = req.into_body().collect().await.unwrap();
                        // Request trailers, as `trailer NAME` entries.
                        for (k, v) in collected.trailers().into_iter().flatten() {
                            let v = v.to_str().unwrap_or("?").to_string();
                            seen.insert(format!("trailer {k}"), v);
                        }
                        let body = collected.to_bytes();
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", code.parse().unwrap());
                        trailers.insert("grpc-message", "ok".parse().unwrap());
                        let frames = if trailers_only {
                            Vec::new()
                        } else {
                            vec![
                                Ok::<_, Infallible>(Frame::data(body)),
                                Ok(Frame::trailers(trailers.clone())),
                            ]
                        };
                        let mut resp = http::Response::new(StreamBody::new(stream::iter(frames)));
                        if trailers_only {
                            resp.headers_mut().extend(trailers);
                        }
                        resp.headers_mut()
                            .insert("content-type", "application/grpc".parse().unwrap());
                        resp.headers_mut().insert(
                            "x-seen",
                            serde_json::to_string(&seen).unwrap().parse().unwrap(),
                        );
                        Ok::<_, Infallible>(resp)
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

fn h2_config(up: SocketAddr) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nupstream_timeout = \"5s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"state\"\n\
         [[routes]]\nname = \"grpc\"\nlive = \"blue\"\n\
         [routes.targets]\nblue = {{ instances = [\"{up}\"], http2 = true }}\n"
    )
}

fn seen(resp: &http::HeaderMap) -> serde_json::Value {
    serde_json::from_str(resp["x-seen"].to_str().unwrap()).unwrap()
}

#[tokio::test]
async fn h2c_client_through_to_http1_upstream() {
    let blue = spawn_upstream("blue").await;
    let gw = Gw::start(&config("blue", &[("blue", blue.addr)], "")).await;
    let h2c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    for _ in 0..3 {
        let r = get(&h2c, &gw.url("/headers"), &[]).await;
        assert_eq!(r.status, 200);
        let h = r.json();
        assert_eq!(h["via"], "2 flipgate", "the upstream sees an HTTP/2 hop");
        assert!(
            h["host"].as_str().is_some(),
            "HTTP/1 upstream gets a Host from :authority"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn grpc_style_request_keeps_trailers_through_an_http2_upstream() {
    let up = spawn_grpc_upstream().await;
    let gw = Gw::start(&h2_config(up)).await;
    let h2c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let payload = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
    let req = http::Request::post(gw.url("/helloworld.Greeter/SayHello"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(payload.clone()))
        .unwrap();
    let resp = h2c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let s = seen(resp.headers());
    assert_eq!(s[":version"], "HTTP/2.0");
    assert_eq!(s["te"], "trailers");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers relayed");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
    assert_eq!(collected.to_bytes(), payload, "body byte for byte");
    gw.stop().await;
}

#[tokio::test]
async fn http1_client_to_http2_upstream_drops_connection_specific_headers() {
    let up = spawn_grpc_upstream().await;
    let gw = Gw::start(&h2_config(up)).await;
    let c = client();
    let r = send(
        &c,
        "POST",
        &gw.url("/x"),
        &[
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers, deflate"),
            ("x-kept", "yes"),
        ],
        "body",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "body");
    let s = seen(&r.headers);
    assert_eq!(s[":version"], "HTTP/2.0");
    for gone in [
        "connection",
        "x-private",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "transfer-encoding",
        "host",
    ] {
        assert!(
            s.get(gone).is_none(),
            "{gone} must not reach an HTTP/2 upstream: {s}"
        );
    }
    assert_eq!(s["te"], "trailers", "te is only ever `trailers`");
    assert_eq!(s["x-kept"], "yes");
    gw.stop().await;
}

/// Issue 12: a gRPC canary whose every call fails (HTTP 200 with `grpc-status: 13 INTERNAL`, in
/// the trailers or Trailers-Only) is seen failing: the circuit trips and rolls it back, and the
/// calls are counted by code. A code outside the route's `grpc_error_codes` (NOT_FOUND) is not
/// a failure of the target.
#[tokio::test]
async fn failing_grpc_canary_is_rolled_back() {
    for (code, trailers_only, trips) in
        [("13", false, true), ("13", true, true), ("5", false, false)]
    {
        let blue = spawn_grpc_upstream().await;
        let green = spawn_grpc_upstream_with(code, trailers_only).await;
        let cfg = format!(
            "{}green = {{ instances = [\"{green}\"], http2 = true }}\n\
             [routes.canary]\ntarget = \"green\"\npercent = 100\n\
             [routes.circuit]\nwindow = \"60s\"\nmin_requests = 5\nmax_error_rate = 0.5\n",
            h2_config(blue)
        );
        let gw = Gw::start(&cfg).await;
        let h2c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let call = || async {
            let req = http::Request::post(gw.url("/helloworld.Greeter/SayHello"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(Bytes::from_static(b"\x00\x00\x00\x00\x02hi")))
                .unwrap();
            let resp = h2c.request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
        };
        for _ in 0..10 {
            call().await;
        }
        let control = gw.gateway.as_ref().unwrap().control.clone();
        let tripped = || {
            control
                .snapshots()
                .load()
                .route("grpc")
                .unwrap()
                .state
                .tripped
                .is_some()
        };
        if trips {
            wait_until(
                "the failing gRPC canary trips",
                std::time::Duration::from_secs(10),
                || async { tripped() },
            )
            .await;
        }
        let metrics = get(&client(), &gw.admin_url("/metrics"), &[]).await.text();
        let name = if code == "13" {
            "INTERNAL"
        } else {
            "NOT_FOUND"
        };
        let prefix = format!(
            "flipgate_grpc_responses_total{{code=\"{name}\",route=\"grpc\",target=\"green\"}} "
        );
        let counted: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
            .unwrap_or(0);
        // A trip sends the rest of the calls to blue.
        assert!(
            counted >= 5 && (trips || counted == 10),
            "{prefix}{counted}"
        );
        let snap = control.snapshots().load_full();
        let green_entry = snap
            .route("grpc")
            .unwrap()
            .targets
            .iter()
            .find(|t| &*t.name == "green")
            .unwrap();
        let totals = green_entry.window.totals(flipgate::clock::now_ms());
        let errors = if trips {
            totals.errors > 0
        } else {
            totals.errors == 0
        };
        assert!(
            errors,
            "code {code} (trailers only: {trailers_only}): window {:?} errors",
            totals.errors
        );
        if !trips {
            assert!(!tripped(), "NOT_FOUND is the caller's, not the target's");
        }
        gw.stop().await;
    }
}

/// `max_headers` holds on HTTP/2 as on HTTP/1.1: an h2c request with 500 fields is answered 431
/// and never reaches the upstream (all 500 used to).
#[tokio::test]
async fn max_headers_holds_on_http2() {
    let blue = spawn_upstream("blue").await;
    let gw = Gw::start(&config("blue", &[("blue", blue.addr)], "")).await;
    let h2c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let mut req = http::Request::get(gw.url("/"));
    for i in 0..500 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let resp = h2c
        .request(req.body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    assert_eq!(blue.hits(), 0);
    let ok = h2c
        .request(
            http::Request::get(gw.url("/"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    gw.stop().await;
}

/// What an HTTP/2 test upstream processed, by the request's `x-id`.
type Processed = std::sync::Arc<std::sync::Mutex<HashMap<String, usize>>>;

/// The upstream's side of a connection, passing its frames through except that every GOAWAY it
/// sends names `last` (when set) as its last stream: h2's graceful shutdown first sends GOAWAY with
/// the highest possible id and the real one only a round trip later, which leaves no stream
/// unprocessed; nginx (every `keepalive_requests`) sends the real one at once.
struct GoawayAt {
    io: tokio::net::TcpStream,
    last: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// The header of the frame being written (its first `head_len` bytes), then its payload.
    head: [u8; 9],
    head_len: usize,
    payload_left: usize,
}

impl GoawayAt {
    /// Rewrites `bytes` (the next ones written) in place, and advances the frame state over them.
    fn rewrite(&mut self, bytes: &mut [u8]) {
        let last = self
            .last
            .load(std::sync::atomic::Ordering::SeqCst)
            .to_be_bytes();
        for b in bytes {
            if self.payload_left > 0 {
                let len = u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]);
                let at = len as usize - self.payload_left;
                if self.head[3] == 0x7 && at < 4 && last != [0; 4] {
                    *b = last[at];
                }
                self.payload_left -= 1;
                continue;
            }
            self.head[self.head_len] = *b;
            self.head_len += 1;
            if self.head_len == 9 {
                self.head_len = 0;
                self.payload_left =
                    u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]) as usize;
            }
        }
    }
}

impl tokio::io::AsyncRead for GoawayAt {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for GoawayAt {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        // Rewrite a copy with a copy of the state; then advance the state over what was taken.
        let (head, head_len, payload_left) = (self.head, self.head_len, self.payload_left);
        let mut out = buf.to_vec();
        self.rewrite(&mut out);
        (self.head, self.head_len, self.payload_left) = (head, head_len, payload_left);
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, &out);
        if let std::task::Poll::Ready(Ok(n)) = r {
            self.rewrite(&mut out[..n].to_vec());
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// An h2c upstream that closes every connection as nginx does after `keepalive_requests`: once
/// it has taken `per_conn` requests on a connection it sends GOAWAY naming the last of them,
/// answers those, and never processes the streams the client had sent after it. `/echo` answers
/// with the request body, anything else with `ok`; `processed` counts requests by `x-id`.
async fn spawn_goaway_upstream(per_conn: usize) -> (SocketAddr, Processed) {
    use std::sync::atomic::{AtomicU32, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let processed = Processed::default();
    let seen = processed.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let last = std::sync::Arc::new(AtomicU32::new(0));
                let io = GoawayAt {
                    io: tcp,
                    last: last.clone(),
                    head: [0; 9],
                    head_len: 0,
                    payload_left: 0,
                };
                let Ok(mut conn) = h2::server::handshake(io).await else {
                    return;
                };
                let mut taken = 0;
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let id = u32::from(respond.stream_id());
                    let limit = last.load(Ordering::SeqCst);
                    if limit != 0 && id > limit {
                        continue; // above the GOAWAY's last stream: never processed
                    }
                    taken += 1;
                    if taken == per_conn {
                        last.store(id, Ordering::SeqCst);
                        conn.graceful_shutdown();
                    }
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let x_id = req.headers()["x-id"].to_str().unwrap().to_string();
                        let echo = req.uri().path() == "/echo";
                        let mut body = req.into_body();
                        let mut data = Vec::new();
                        while let Some(chunk) = body.data().await {
                            let Ok(chunk) = chunk else { return };
                            let _ = body.flow_control().release_capacity(chunk.len());
                            data.extend_from_slice(&chunk);
                        }
                        *seen.lock().unwrap().entry(x_id).or_default() += 1;
                        let data = if echo { data } else { b"ok".to_vec() };
                        let Ok(mut send) = respond.send_response(http::Response::new(()), false)
                        else {
                            return;
                        };
                        let _ = send.send_data(Bytes::from(data), true);
                    });
                }
            });
        }
    });
    (addr, processed)
}

/// An HTTP/2 upstream's graceful close (GOAWAY) is no client error: requests above its
/// last-stream-id, never processed (RFC 9113 §6.8), are sent again on a new connection, GETs and
/// POSTs alike, and nothing counts against the target. No request is processed twice.
#[tokio::test]
async fn goaway_from_an_http2_upstream_is_not_a_client_error() {
    const CLIENTS: usize = 16;
    const EACH: usize = 50;
    let (up, processed) = spawn_goaway_upstream(10).await;
    let gw = Gw::start(&h2_config(up)).await;
    let url = gw.url("");
    let run = async {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let url = url.clone();
                tokio::spawn(async move {
                    let client = client();
                    let mut bad = Vec::new();
                    for i in 0..EACH {
                        let id = format!("{c}-{i}");
                        let r = if i % 2 == 0 {
                            get(&client, &format!("{url}/get"), &[("x-id", &id)]).await
                        } else {
                            let body = format!("body of {id}");
                            let r = send(
                                &client,
                                "POST",
                                &format!("{url}/echo"),
                                &[("x-id", &id)],
                                body.clone(),
                            )
                            .await;
                            if r.status == 200 && r.text() != body {
                                bad.push(format!("{id}: body {:?}", r.text()));
                            }
                            r
                        };
                        if r.status != 200 {
                            bad.push(format!("{id}: {} {}", r.status, r.text().trim()));
                        }
                    }
                    bad
                })
            })
            .collect();
        let mut bad = Vec::new();
        for t in tasks {
            bad.extend(t.await.unwrap());
        }
        bad
    };
    let bad = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("all requests answered (failure guard)");
    assert!(
        bad.is_empty(),
        "{} of {} requests failed: {:?}",
        bad.len(),
        CLIENTS * EACH,
        &bad[..bad.len().min(10)]
    );
    let processed = processed.lock().unwrap().clone();
    assert_eq!(
        processed.len(),
        CLIENTS * EACH,
        "every request reached the upstream"
    );
    let twice: Vec<_> = processed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "processed more than once: {twice:?}");
    assert_eq!(metric(&gw, "flipgate_upstream_errors_total", "").await, 0.0);
    assert_eq!(metric(&gw, "flipgate_local_errors_total", "").await, 0.0);
    gw.stop().await;
}

/// An h2c upstream built on the h2 crate, which can refuse a stream: a request is answered with
/// RST_STREAM `REFUSED_STREAM` (RFC 9113 §8.7) on its first `x-refuse` attempts (per `x-id`),
/// right away or, with `x-read-first: N` (or `all`), after reading that much of its body;
/// otherwise its body is echoed.
/// Returns the attempts and the processed requests by `x-id`.
async fn spawn_refusing_upstream() -> (SocketAddr, Processed, Processed) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (attempts, processed) = (Processed::default(), Processed::default());
    let (a, p) = (attempts.clone(), processed.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (a, p) = (a.clone(), p.clone());
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let (a, p) = (a.clone(), p.clone());
                    tokio::spawn(async move {
                        let h = req.headers();
                        let id = h["x-id"].to_str().unwrap().to_string();
                        let refuse: usize = h
                            .get("x-refuse")
                            .map_or(0, |v| v.to_str().unwrap().parse().unwrap());
                        let read_first = h
                            .get("x-read-first")
                            .map(|v| v.to_str().unwrap().parse::<usize>().unwrap_or(usize::MAX));
                        let n = {
                            let mut a = a.lock().unwrap();
                            let n = a.entry(id.clone()).or_default();
                            *n += 1;
                            *n
                        };
                        if n <= refuse && read_first.is_none() {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            return;
                        }
                        let mut body = req.into_body();
                        let mut data = Vec::new();
                        let enough = if n <= refuse { read_first } else { None };
                        while let Some(chunk) = body.data().await {
                            let Ok(chunk) = chunk else { return };
                            let _ = body.flow_control().release_capacity(chunk.len());
                            data.extend_from_slice(&chunk);
                            if enough.is_some_and(|e| data.len() >= e) {
                                break;
                            }
                        }
                        if n <= refuse {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            return;
                        }
                        *p.lock().unwrap().entry(id).or_default() += 1;
                        let head = http::Response::builder()
                            .header("content-length", data.len())
                            .body(())
                            .unwrap();
                        let mut send = respond.send_response(head, data.is_empty()).unwrap();
                        if !data.is_empty() {
                            let _ = send.send_data(Bytes::from(data), true);
                        }
                    });
                }
            });
        }
    });
    (addr, attempts, processed)
}

/// A stream the upstream refused (`REFUSED_STREAM`: never processed) is sent again, for any
/// method, when its body can be replayed: no body, or one of at most 64 KiB. A body over that
/// already streamed cannot be: 503, counted in `local_errors_total{kind="refused"}` and never
/// against the target, as is a request still refused after its bounded resends.
#[tokio::test]
async fn refused_streams_are_sent_again_when_their_body_can_be() {
    let (up, attempts, processed) = spawn_refusing_upstream().await;
    let gw = Gw::start(&h2_config(up)).await;
    let c = client();
    let body = |n: usize| -> Vec<u8> { (0..n).map(|i| (i % 251) as u8).collect() };
    let attempts_of = |id: &str| attempts.lock().unwrap().get(id).copied().unwrap_or(0);
    let processed_of = |id: &str| processed.lock().unwrap().get(id).copied().unwrap_or(0);

    let r = get(&c, &gw.url("/"), &[("x-id", "get"), ("x-refuse", "1")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!((attempts_of("get"), processed_of("get")), (2, 1));

    for (id, size, read_first) in [("small", 1000, false), ("read", 40 * 1024, true)] {
        let mut h = vec![("x-id", id), ("x-refuse", "1")];
        if read_first {
            h.push(("x-read-first", "all"));
        }
        let sent = body(size);
        let r = send(&c, "POST", &gw.url("/"), &h, sent.clone()).await;
        assert_eq!(r.status, 200, "{id}: {}", r.text());
        assert!(
            r.body == sent,
            "{id}: the replayed body is byte for byte the client's"
        );
        assert_eq!((attempts_of(id), processed_of(id)), (2, 1), "{id}");
    }
    // Refused after 1000 bytes while the client is still sending: the resend replays what was
    // taken, then goes on with the rest of the client's body.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sent = body(2000);
        let mut raw = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        raw.write_all(b"POST / HTTP/1.1\r\nhost: a\r\nx-id: halves\r\nx-refuse: 1\r\nx-read-first: 1000\r\ncontent-length: 2000\r\nconnection: close\r\n\r\n").await.unwrap();
        raw.write_all(&sent[..1000]).await.unwrap();
        wait_until(
            "the first sending refused",
            std::time::Duration::from_secs(10),
            || async { attempts_of("halves") >= 1 },
        )
        .await;
        raw.write_all(&sent[1000..]).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            raw.read_to_end(&mut answer),
        )
        .await
        .expect("answered (failure guard)")
        .unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        assert!(answer.ends_with(&sent), "the client's body, byte for byte");
        assert_eq!((attempts_of("halves"), processed_of("halves")), (2, 1));
    }
    assert_eq!(metric(&gw, "flipgate_upstream_errors_total", "").await, 0.0);
    assert_eq!(metric(&gw, "flipgate_local_errors_total", "").await, 0.0);

    // Over the replay bound, already streamed: not sent again.
    let h = [("x-id", "big"), ("x-refuse", "1"), ("x-read-first", "all")];
    let r = send(&c, "POST", &gw.url("/"), &h, body(200 * 1024)).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!((attempts_of("big"), processed_of("big")), (1, 0));
    // Refused on every sending: sent again a bounded number of times.
    let r = get(&c, &gw.url("/"), &[("x-id", "always"), ("x-refuse", "9")]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(attempts_of("always"), 4, "sent again at most three times");

    let refused = "kind=\"refused\"";
    assert_eq!(
        metric(&gw, "flipgate_local_errors_total", refused).await,
        2.0
    );
    assert_eq!(metric(&gw, "flipgate_upstream_errors_total", "").await, 0.0);
    let r = get(&c, &gw.url("/"), &[("x-id", "after")]).await;
    assert_eq!(r.status, 200, "still serving");
    gw.stop().await;
}

/// A request body of `data` followed by `trailers`, as a client streams it.
type Frames = StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn frames(data: &'static [u8], trailers: &[(&'static str, &'static str)]) -> Frames {
    let mut t = http::HeaderMap::new();
    for (k, v) in trailers {
        t.insert(*k, v.parse().unwrap());
    }
    StreamBody::new(stream::iter(vec![
        Ok(Frame::data(Bytes::from_static(data))),
        Ok(Frame::trailers(t)),
    ]))
}

fn as_map(h: &http::HeaderMap) -> HashMap<String, String> {
    h.iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect()
}

/// An HTTP/1.1 upstream (hyper's server) that answers with what it received as JSON: `headers`,
/// `trailers` and `body`.
async fn spawn_trailer_echo_http1() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                    let headers = as_map(req.headers());
                    let collected = req.into_body().collect().await.unwrap();
                    let trailers = collected.trailers().map(as_map).unwrap_or_default();
                    let body = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
                    let json = serde_json::json!({
                        "headers": headers, "trailers": trailers, "body": body,
                    });
                    let resp = http::Response::new(Full::new(Bytes::from(json.to_string())));
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// Request trailers from an h2c client reach an HTTP/1.1 upstream (issue 12): the fields the
/// request's `trailer` header declares arrive after a chunked body, also when the client sent a
/// `content-length` (allowed in HTTP/2, not with trailers in HTTP/1.1: it goes chunked). An
/// undeclared field is dropped (hyper's HTTP/1 client writes only declared ones).
#[tokio::test]
async fn h2c_request_trailers_reach_an_http1_upstream() {
    let up = spawn_trailer_echo_http1().await;
    let gw = Gw::start(&config("blue", &[("blue", up)], "")).await;
    let h2c: Client<_, Frames> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let call = |length: Option<&'static str>, declare: bool| {
        let mut b = http::Request::post(gw.url("/t"));
        if declare {
            b = b.header("trailer", "x-sum");
        }
        if let Some(n) = length {
            b = b.header("content-length", n);
        }
        let body = frames(b"hello", &[("x-sum", "5"), ("x-undeclared", "1")]);
        let req = b.body(body).unwrap();
        let h2c = h2c.clone();
        async move {
            let resp = h2c.request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        }
    };
    for length in [None, Some("5")] {
        let j = call(length, true).await;
        assert_eq!(j["body"], "hello", "{j}");
        assert_eq!(j["headers"]["transfer-encoding"], "chunked", "{j}");
        assert!(j["headers"].get("content-length").is_none(), "{j}");
        assert_eq!(j["headers"]["trailer"], "x-sum", "{j}");
        assert_eq!(j["trailers"]["x-sum"], "5", "{j}");
        assert!(j["trailers"].get("x-undeclared").is_none(), "{j}");
    }
    // Undeclared: the body arrives whole, the fields cannot follow it.
    let j = call(None, false).await;
    assert_eq!(j["body"], "hello", "{j}");
    assert_eq!(j["trailers"], serde_json::json!({}), "{j}");
    gw.stop().await;
}

/// Request trailers from an HTTP/1.1 client reach an HTTP/2 upstream, declared or not (HTTP/2
/// has no such condition), on both client paths (chunked requests go to hyper's).
#[tokio::test]
async fn http1_request_trailers_reach_an_http2_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = spawn_grpc_upstream().await;
    let gw = Gw::start(&h2_config(up)).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /t HTTP/1.1\r\nhost: a\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\
          trailer: x-sum\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 5\r\nx-undeclared: 1\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen_line = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-seen: "))
        .unwrap_or_else(|| panic!("{answer}"));
    let s: serde_json::Value = serde_json::from_str(seen_line).unwrap();
    assert_eq!(s["trailer x-sum"], "5", "{s}");
    assert_eq!(s["trailer x-undeclared"], "1", "{s}");
    assert_eq!(s["trailer"], "x-sum", "{s}");
    // The upstream's trailers (`grpc-status`, not declared in `Trailer`) cannot reach this HTTP/1.1
    // client: hyper's server writes only declared fields, and only to a `te: trailers` client.
    assert!(!answer.contains("grpc-status"), "{answer}");
    gw.stop().await;
}

/// Response trailers from an HTTP/1.1 upstream reach an h2c client, declared or not.
#[tokio::test]
async fn http1_upstream_response_trailers_reach_an_h2c_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..i + 4);
                        let r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
                                  5\r\nhello\r\n0\r\nx-sum: 5\r\nx-undeclared: 1\r\n\r\n";
                        if s.write_all(r).await.is_err() {
                            return;
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
    let h2c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let resp = h2c
        .request(
            http::Request::get(gw.url("/t"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["trailer"], "x-sum");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers relayed");
    assert_eq!(trailers["x-sum"], "5");
    assert_eq!(trailers["x-undeclared"], "1");
    assert_eq!(collected.to_bytes(), "hello");
    gw.stop().await;
}

/// How `spawn_h1_upstream` answers each request.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    /// `ok`, keeping the connection.
    Ok,
    /// `ok`, then closing the connection without saying so (the keep-alive race).
    OncePerConnection,
    /// The head and one byte of a 100-byte body, then nothing (the connection held open).
    Stall,
    /// The request's body (`Content-Length` framed).
    Echo,
}

/// An HTTP/1.1 upstream for HTTP/2 clients through the engine's own exchange
/// (`serve::proxy::direct`): answers each request as `answer` says, and counts its connections.
async fn spawn_h1_upstream(
    answer: Answer,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 16384];
                loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: ")?.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= i + 4 + len {
                            let body = buf[i + 4..i + 4 + len].to_vec();
                            buf.drain(..i + 4 + len);
                            let out = match answer {
                                Answer::Echo => {
                                    let mut out =
                                        format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n")
                                            .into_bytes();
                                    out.extend_from_slice(&body);
                                    out
                                }
                                Answer::Stall => {
                                    b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nx".to_vec()
                                }
                                _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                            };
                            if s.write_all(&out).await.is_err()
                                || answer == Answer::OncePerConnection
                            {
                                return;
                            }
                            if answer == Answer::Stall {
                                // Holds the connection open, sending nothing more.
                                let _ = s.read(&mut chunk).await;
                                return;
                            }
                            continue;
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
    (addr, conns)
}

fn h2c_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// HTTP/2 streams one after another share one kept-alive upstream connection; an upstream that
/// closes each connection after one answer still answers every request (a closed idle connection
/// is discarded, or the request resent on a fresh one).
#[tokio::test]
async fn h2_streams_reuse_upstream_connections_and_survive_keepalive_closes() {
    use std::sync::atomic::Ordering;
    let (keeps, kept_conns) = spawn_h1_upstream(Answer::Ok).await;
    let (closes, _) = spawn_h1_upstream(Answer::OncePerConnection).await;
    for (up, reuses) in [(keeps, true), (closes, false)] {
        let gw = Gw::start(&config("blue", &[("blue", up)], "")).await;
        let h2c = h2c_client();
        for i in 0..20 {
            let r = get(&h2c, &gw.url("/x"), &[]).await;
            assert_eq!((i, r.status, r.text()), (i, 200, "ok".to_string()));
        }
        if reuses {
            assert_eq!(
                kept_conns.load(Ordering::SeqCst),
                1,
                "one upstream connection"
            );
        }
        gw.stop().await;
    }
}

/// A failed connect moves an HTTP/2 request to another instance of its target.
#[tokio::test]
async fn h2_request_moves_to_another_instance_when_a_connect_fails() {
    let (live, _) = spawn_h1_upstream(Answer::Ok).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cfg = config("blue", &[("blue", live)], "").replace(
        &format!("[\"{live}\"]"),
        &format!("[\"{dead}\", \"{live}\"]"),
    );
    let gw = Gw::start(&cfg).await;
    let h2c = h2c_client();
    for i in 0..10 {
        let r = get(&h2c, &gw.url("/x"), &[]).await;
        assert_eq!((i, r.status), (i, 200));
    }
    gw.stop().await;
}

/// An upstream that never answers is a 504 at `upstream_timeout`; one that stops mid-body is cut
/// at `body_idle_timeout` (the client's stream fails rather than hanging).
#[tokio::test]
async fn h2_request_to_a_silent_or_stalled_http1_upstream_ends() {
    use http_body_util::BodyExt;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let (stalls, _) = spawn_h1_upstream(Answer::Stall).await;
    let cfg = config("blue", &[("blue", silent_addr)], "")
        .replace("upstream_timeout = \"5s\"", "upstream_timeout = \"300ms\"");
    let gw = Gw::start(&cfg).await;
    let h2c = h2c_client();
    let r = get(&h2c, &gw.url("/x"), &[]).await;
    assert_eq!(r.status, 504);
    gw.stop().await;
    let gw = Gw::start(&with_server(
        &config("green", &[("green", stalls)], ""),
        "body_idle_timeout = \"300ms\"",
    ))
    .await;
    let resp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        h2c.request(
            http::Request::get(gw.url("/x"))
                .body(Full::default())
                .unwrap(),
        ),
    )
    .await
    .expect("head within the deadline")
    .unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        resp.into_body().collect(),
    )
    .await
    .expect("the stalled body ends within the deadline");
    assert!(
        body.is_err(),
        "a body cut short is an error, not a clean end"
    );
    gw.stop().await;
}

/// HTTP/2 request bodies with a declared length reach an HTTP/1.1 upstream byte for byte, up to
/// the engine's 64 KiB and past it (hyper's client then), one after another on one kept-alive
/// upstream connection while they go through the engine's side.
#[tokio::test]
async fn h2_request_bodies_reach_an_http1_upstream_whole() {
    use std::sync::atomic::Ordering;
    let (up, conns) = spawn_h1_upstream(Answer::Echo).await;
    let gw = Gw::start(&config("blue", &[("blue", up)], "")).await;
    let h2c = h2c_client();
    for (i, len) in [1usize, 100, 5000, 65536, 1, 65537, 200_000]
        .into_iter()
        .enumerate()
    {
        let body: Vec<u8> = (0..len).map(|j| (j * 7 + i) as u8).collect();
        let r = send(
            &h2c,
            "POST",
            &gw.url("/echo"),
            &[],
            Bytes::from(body.clone()),
        )
        .await;
        assert_eq!((len, r.status), (len, 200));
        assert!(r.body == body, "the body of {len} bytes came back changed");
        if len <= 65536 {
            assert_eq!(conns.load(Ordering::SeqCst), 1, "one upstream connection");
        }
    }
    gw.stop().await;
}

/// A client that stops sending its HTTP/2 request body is answered 408 at `upstream_timeout`.
#[tokio::test]
async fn h2_request_body_that_stops_is_a_408() {
    let (up, _) = spawn_h1_upstream(Answer::Echo).await;
    let cfg = config("blue", &[("blue", up)], "")
        .replace("upstream_timeout = \"5s\"", "upstream_timeout = \"300ms\"");
    let gw = Gw::start(&cfg).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tx.send(Ok(Frame::data(Bytes::from_static(b"half"))))
        .await
        .unwrap();
    let body = StreamBody::new(tokio_stream_of(rx));
    let client: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = http::Request::post(gw.url("/echo"))
        .header("content-length", "8")
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), client.request(req))
        .await
        .expect("answered within the deadline")
        .unwrap();
    assert_eq!(resp.status(), 408);
    drop(tx);
    gw.stop().await;
}

/// A `Stream` of what `rx` receives.
fn tokio_stream_of<T>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + Unpin + 'static
where
    T: Send + 'static,
{
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|x| (x, rx))
    }))
}
