//! Protects the routing + split decision of the data path (`Router::lookup` then `Split::decide`).
//!
//! Choice protected: routes compiled into per-host prefix tries with the host lower-cased into a
//! stack buffer, and a split that hashes the sticky key with a precomputed seed, so the decision is
//! O(host labels + path length), independent of the route count, and allocation-free. Naive
//! baseline: a linear scan over the route list with `to_lowercase()` on the host, which is what a
//! first version would write. Contract (issue "Core gateway"): for a table of 1,000 routes the
//! decision allocates nothing (checked with a counting allocator before measuring; the bench panics
//! otherwise) and stays well under 1 µs.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use flipgate::config::{HostPattern, Sticky};
use flipgate::snapshot::router::Router;
use flipgate::snapshot::split::{random_bucket, Split};
use http::{HeaderMap, HeaderValue};

#[path = "support/alloc_count.rs"]
mod alloc_count;

#[global_allocator]
static ALLOC: alloc_count::Counting = alloc_count::Counting;

/// One route of the synthetic table.
struct NaiveRoute {
    host: Option<String>,
    wildcard: bool,
    prefix: String,
    split: Split,
}

/// `n` routes: a third exact hosts, a third wildcard hosts, a third any-host path routes, each
/// with two prefixes, and a 5 % sticky canary on every route.
fn table(n: usize) -> (Router, Vec<NaiveRoute>) {
    let mut router = Router::default();
    let mut naive = Vec::with_capacity(n);
    for i in 0..n {
        let (hosts, host, wildcard, prefix) = match i % 3 {
            0 => {
                let h = format!("bot{}.example.com", i / 6);
                let p = if i % 2 == 0 { "/" } else { "/api/v1/" };
                (vec![HostPattern::Exact(h.clone())], Some(h), false, p)
            }
            1 => {
                let h = format!(".team{}.example.net", i / 6);
                let p = if i % 2 == 0 { "/" } else { "/hooks/" };
                (vec![HostPattern::Wildcard(h.clone())], Some(h), true, p)
            }
            _ => (Vec::new(), None, false, "/"),
        };
        let prefix = if host.is_none() {
            format!("/svc{i}/")
        } else {
            prefix.to_string()
        };
        router.insert(&hosts, &prefix, i);
        let split = Split::new(
            &format!("route{i}"),
            0,
            Some((1, 500, Sticky::Header("x-user-id".parse().unwrap()))),
        );
        naive.push(NaiveRoute {
            host,
            wildcard,
            prefix,
            split,
        });
    }
    (router, naive)
}

fn naive_lookup(routes: &[NaiveRoute], host: Option<&str>, path: &str) -> Option<usize> {
    let host = host.map(|h| h.split(':').next().unwrap_or(h).to_lowercase());
    let mut best: Option<(usize, usize, usize)> = None; // (specificity, prefix len, index)
    for (i, r) in routes.iter().enumerate() {
        let spec = match (&r.host, &host) {
            (None, _) => 0,
            (Some(h), Some(q)) if !r.wildcard && h == q => 2 + h.len(),
            (Some(h), Some(q)) if r.wildcard && q.ends_with(h.as_str()) => 1,
            _ => continue,
        };
        if !path.starts_with(r.prefix.as_str()) {
            continue;
        }
        let key = (spec, r.prefix.len(), i);
        if best.is_none_or(|b| (key.0, key.1) > (b.0, b.1)) {
            best = Some(key);
        }
    }
    best.map(|b| b.2)
}

fn requests() -> Vec<(Option<&'static str>, &'static str, HeaderMap)> {
    let mut sticky = HeaderMap::new();
    sticky.insert("x-user-id", HeaderValue::from_static("user-8841"));
    vec![
        (
            Some("BOT40.example.com:443"),
            "/api/v1/messages",
            sticky.clone(),
        ),
        (
            Some("a.b.team80.example.net"),
            "/hooks/telegram",
            sticky.clone(),
        ),
        (
            Some("unknown.example.org"),
            "/svc998/health",
            HeaderMap::new(),
        ),
        (None, "/nothing/here", sticky),
    ]
}

fn decide(
    router: &Router,
    routes: &[NaiveRoute],
    host: Option<&str>,
    path: &str,
    h: &HeaderMap,
) -> usize {
    match router.lookup(host, path) {
        Some(r) => routes[r].split.decide(h, random_bucket).0,
        None => usize::MAX,
    }
}

fn bench(c: &mut Criterion) {
    let reqs = requests();
    let mut g = c.benchmark_group("route_split");
    for n in [10usize, 1_000] {
        let (router, naive) = table(n);
        // The contract, checked before measuring (random_bucket's thread-local is set up first).
        let _ = random_bucket();
        for (host, path, h) in &reqs {
            let (allocs, _) = alloc_count::allocations(|| decide(&router, &naive, *host, path, h));
            assert_eq!(allocs, 0, "routing + split allocated for {host:?} {path}");
            let fast = router.lookup(*host, path);
            let slow = naive_lookup(&naive, *host, path);
            assert_eq!(fast.is_some(), slow.is_some(), "{host:?} {path}");
        }
        g.bench_with_input(BenchmarkId::new("trie", n), &n, |b, _| {
            b.iter(|| {
                for (host, path, h) in &reqs {
                    black_box(decide(
                        &router,
                        &naive,
                        black_box(*host),
                        black_box(path),
                        h,
                    ));
                }
            })
        });
        g.bench_with_input(BenchmarkId::new("naive_scan", n), &n, |b, _| {
            b.iter(|| {
                for (host, path, h) in &reqs {
                    let r = naive_lookup(&naive, black_box(*host), black_box(path));
                    black_box(r.map(|r| naive[r].split.decide(h, random_bucket)));
                }
            })
        });
    }
    g.finish();

    // The split alone, per kind of request: sticky header hash vs random draw vs no canary.
    let mut g = c.benchmark_group("split");
    let sticky = Split::new(
        "chatbot",
        0,
        Some((1, 500, Sticky::Header("x-user-id".parse().unwrap()))),
    );
    let cookie = Split::new("chatbot", 0, Some((1, 500, Sticky::Cookie("uid".into()))));
    let plain = Split::new("chatbot", 0, None);
    let mut h = HeaderMap::new();
    h.insert("x-user-id", HeaderValue::from_static("user-8841"));
    h.insert(
        "cookie",
        HeaderValue::from_static("theme=dark; uid=8841; lang=en"),
    );
    let empty = HeaderMap::new();
    g.bench_function("sticky_header", |b| {
        b.iter(|| black_box(sticky.decide(black_box(&h), random_bucket)))
    });
    g.bench_function("sticky_cookie", |b| {
        b.iter(|| black_box(cookie.decide(black_box(&h), random_bucket)))
    });
    g.bench_function("no_key_random_draw", |b| {
        b.iter(|| black_box(sticky.decide(black_box(&empty), random_bucket)))
    });
    g.bench_function("no_canary", |b| {
        b.iter(|| black_box(plain.decide(black_box(&h), random_bucket)))
    });
    // Naive baseline for the random draw: a fresh thread_rng per request instead of the cached one.
    g.bench_function("naive_draw_thread_rng", |b| {
        b.iter(|| {
            use rand::Rng;
            black_box(sticky.decide(black_box(&empty), || rand::rng().random_range(0..10_000u16)))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
