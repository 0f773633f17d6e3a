//! Protects the HTTP/1.1 engine's per-request head work (`h1::head`): parsing the request head in
//! place, the one snapshot decision (route + sticky split), writing the upstream's request head
//! into a reused buffer, and the same for the response head.
//!
//! Choice protected: heads are parsed by `httparse` into a stack array and rewritten byte for byte
//! into one buffer, with no `HeaderMap` and no allocation per request. Naive baseline: what hyper's
//! path does with the same head: parse into an `http::Request` (a `HeaderMap` of owned names and
//! values), rewrite it with `proxy::policy::apply`, and encode it again. Also asserts that the engine's
//! request and response head work allocates nothing.

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};
use flipgate::observe::metrics::Metrics;
use flipgate::policy::{forward as policy, headers};
use flipgate::serve::h1::head::{self, Head, Plan, UpstreamHead};
use flipgate::serve::proxy::{ConnInfo, Proxy};
use flipgate::snapshot::Snapshot;
use http::header::{HeaderName, HeaderValue};

#[path = "support/alloc_count.rs"]
mod alloc_count;

#[global_allocator]
static ALLOC: alloc_count::Counting = alloc_count::Counting;

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
[[routes]]
name = "bot"
hosts = ["bot.example.com"]
path_prefix = "/"
live = "blue"
[routes.targets]
blue = ["127.0.0.1:3001"]
green = ["127.0.0.1:3002"]
[routes.canary]
target = "green"
percent = 5.0
sticky = "header:x-user-id"
"#;

/// What a bot webhook request typically carries.
const REQUEST: &[u8] = b"POST /hooks/telegram HTTP/1.1\r\nhost: bot.example.com\r\nuser-agent: TelegramBot (like TwitterBot)\r\naccept: */*\r\ncontent-type: application/json\r\ncontent-length: 412\r\nconnection: keep-alive\r\nx-user-id: user-8841\r\nx-telegram-bot-api-secret-token: s3cr3t\r\n\r\n";

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nserver: bot\r\ndate: Fri, 27 Nov 2026 03:19:40 GMT\r\ncontent-type: application/json\r\ncontent-length: 12\r\nconnection: keep-alive\r\n\r\n";

fn proxy() -> Proxy {
    let config = flipgate::config::parse(Path::new("bench.toml"), CONFIG).expect("valid config");
    let snap = Snapshot::build(
        1,
        Arc::new(config),
        &Default::default(),
        &Snapshot::empty(),
        &Metrics::new(),
    );
    Proxy::new(
        Arc::new(ArcSwap::from_pointee(snap)),
        flipgate::upstream::Clients::new(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(60),
        ),
    )
}

/// The engine: plan the request (route, split, upstream head), then the response head.
fn engine(proxy: &Proxy, conn: &ConnInfo, out: &mut Vec<u8>) -> usize {
    let start = tokio::time::Instant::now();
    let Head::Plan(Plan::Forward(f)) = head::request(proxy, conn, REQUEST, out, 65536, 100, start)
    else {
        panic!("not forwarded");
    };
    let n = out.len() + f.head_len;
    let UpstreamHead::Ready(r) = head::response(RESPONSE, out, false, false) else {
        panic!("bad response");
    };
    n + r.head_len
}

/// The same work the way hyper's path does it: heads parsed into maps, rewritten, encoded.
fn hyper_like(peer: &HeaderValue, out: &mut Vec<u8>) -> usize {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut hs);
    let httparse::Status::Complete(n) = req.parse(REQUEST).unwrap() else {
        panic!("partial");
    };
    let mut b = http::Request::builder()
        .method(req.method.unwrap())
        .uri(req.path.unwrap());
    for h in req.headers.iter() {
        b = b.header(
            HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(h.value).unwrap(),
        );
    }
    let mut r = b.body(()).unwrap();
    let host = r.headers().get(http::header::HOST).cloned();
    let h = r.headers_mut();
    let instance: http::uri::Authority = "127.0.0.1:3001".parse().unwrap();
    policy::apply(
        h,
        &policy::Rules::default(),
        peer,
        false,
        host.as_ref(),
        &instance,
        http::Version::HTTP_11,
    );
    out.clear();
    out.extend_from_slice(r.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(r.uri().path().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (k, v) in r.headers() {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut hs);
    let httparse::Status::Complete(m) = resp.parse(RESPONSE).unwrap() else {
        panic!("partial");
    };
    let mut map = http::HeaderMap::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        map.append(
            HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(h.value).unwrap(),
        );
    }
    headers::strip_response(&mut map);
    headers::add_via(&mut map, http::Version::HTTP_11);
    let mut o2 = Vec::with_capacity(256);
    o2.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    for (k, v) in &map {
        o2.extend_from_slice(k.as_str().as_bytes());
        o2.extend_from_slice(b": ");
        o2.extend_from_slice(v.as_bytes());
        o2.extend_from_slice(b"\r\n");
    }
    n + m + o2.len()
}

fn bench(c: &mut Criterion) {
    let proxy = proxy();
    let peer: SocketAddr = "10.1.2.3:40000".parse().unwrap();
    let conn = ConnInfo::new(peer, false);
    let mut out = Vec::with_capacity(4096);
    // Warm up: the thread-local date cache and random generator allocate on first use.
    engine(&proxy, &conn, &mut out);
    let (allocs, _) = alloc_count::allocations(|| engine(&proxy, &conn, &mut out));
    println!("engine request + response head: {allocs} allocation(s)");
    assert_eq!(allocs, 0, "the engine's head work allocated");
    let peer_header = HeaderValue::from_static("10.1.2.3");
    let (naive_allocs, _) = alloc_count::allocations(|| hyper_like(&peer_header, &mut out));
    println!("hyper-like request + response head: {naive_allocs} allocation(s)");

    let mut g = c.benchmark_group("h1_head");
    g.bench_function("engine_request_and_response", |b| {
        b.iter(|| black_box(engine(&proxy, &conn, &mut out)))
    });
    g.bench_function("hyper_like_maps", |b| {
        b.iter(|| black_box(hyper_like(&peer_header, &mut out)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
