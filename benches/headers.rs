//! Protects the header rewrite of every forwarded request on hyper's path (`proxy::policy::apply`):
//! hop-by-hop removal, `X-Forwarded-*`, `Via`, `x-request-id` and `Host`, done in place on the
//! request's own `HeaderMap`.
//!
//! Choice protected: editing the map in place with static header names and values, the peer
//! address formatted once per connection, and the request id hex-encoded into a stack buffer.
//! Naive baseline: copying every end-to-end header into a fresh map, `format!` for the forwarding
//! values and `to_string` for the id, as a first version would. Also checks the allocations of
//! the in-place rewrite of a typical request (which sends `Connection: keep-alive`): at most one
//! growth of the map (its index and entry arrays) and the generated id's `HeaderValue`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use flipgate::policy::forward as policy;
use http::header::{self, HeaderMap, HeaderValue};

#[path = "support/alloc_count.rs"]
mod alloc_count;

#[global_allocator]
static ALLOC: alloc_count::Counting = alloc_count::Counting;

/// What a bot webhook request typically carries.
fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::with_capacity(16);
    h.insert(header::HOST, HeaderValue::from_static("bot.example.com"));
    h.insert(
        header::USER_AGENT,
        HeaderValue::from_static("TelegramBot (like TwitterBot)"),
    );
    h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("412"));
    h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    h.insert("x-user-id", HeaderValue::from_static("user-8841"));
    h.insert(
        "x-telegram-bot-api-secret-token",
        HeaderValue::from_static("s3cr3t"),
    );
    h
}

fn rewrite(h: &mut HeaderMap, peer: &HeaderValue) {
    let host = h.get(header::HOST).cloned();
    let instance = http::uri::Authority::from_static("127.0.0.1:3001");
    policy::apply(
        h,
        &policy::Rules::default(),
        peer,
        false,
        host.as_ref(),
        &instance,
        http::Version::HTTP_11,
    );
}

fn naive(h: &HeaderMap, peer: std::net::IpAddr) -> HeaderMap {
    const HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
    ];
    let mut out = HeaderMap::new();
    for (k, v) in h {
        if !HOP.contains(&k.as_str()) {
            out.append(k.clone(), v.clone());
        }
    }
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {peer}"),
        None => peer.to_string(),
    };
    out.insert("x-forwarded-for", xff.parse().unwrap());
    out.insert("x-forwarded-proto", "http".to_string().parse().unwrap());
    if let Some(host) = h.get(header::HOST) {
        out.insert("x-forwarded-host", host.clone());
    }
    out.append(header::VIA, format!("{} flipgate", "1.1").parse().unwrap());
    let id = format!("{:032x}", rand::random::<u128>());
    out.insert("x-request-id", id.parse().unwrap());
    out
}

fn bench(c: &mut Criterion) {
    let peer = HeaderValue::from_static("127.0.0.1");
    let template = request_headers();
    // Warm up first: the thread's random generator allocates once, on its first use.
    rewrite(&mut template.clone(), &peer);
    let mut h = template.clone();
    let (allocs, ()) = alloc_count::allocations(|| rewrite(&mut h, &peer));
    println!("header rewrite of a typical request: {allocs} allocation(s)");
    assert!(allocs <= 3, "header rewrite allocated {allocs} times");
    let (naive_allocs, _) =
        alloc_count::allocations(|| naive(&template, "127.0.0.1".parse().unwrap()));
    println!("naive rewrite: {naive_allocs} allocation(s)");

    let mut g = c.benchmark_group("headers");
    g.bench_function("in_place", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |h| rewrite(black_box(h), &peer),
            criterion::BatchSize::SmallInput,
        )
    });
    let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    g.bench_function("naive_copy_format", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |h| black_box(naive(black_box(h), ip)),
            criterion::BatchSize::SmallInput,
        )
    });
    let mut withid = template.clone();
    withid.insert("x-request-id", HeaderValue::from_static("7f1c2a9e"));
    g.bench_function("in_place_with_incoming_id", |b| {
        b.iter_batched_ref(
            || withid.clone(),
            |h| rewrite(black_box(h), &peer),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
