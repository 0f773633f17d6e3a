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
                        let body = req.into_body().collect().await.unwrap().to_bytes();
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
