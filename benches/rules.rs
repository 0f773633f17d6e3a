//! Protects the cohort-rule step of the request decision (`policy::decide::decide` ->
//! `policy::rules::first_match`), which runs before the split on every request of a route that has
//! `[[routes.rules]]`.
//!
//! Choice protected: rules compiled at snapshot build (header names as `HeaderName`, values as
//! bytes, CIDRs parsed, counter handles resolved) and matched in place (the `Cookie` field split
//! on ';' without copying; a field's first value compared as bytes), for both header
//! representations (hyper's `HeaderMap` and the HTTP/1.1 engine's `httparse` slice). Naive
//! baseline: what a quick implementation does per request — parse every cookie into a
//! `HashMap<String, String>`, lower-case the header names into `String`s, and parse the CIDRs
//! from the config's strings. Contract (issue 14): the decision with 10 rules allocates nothing,
//! whether no rule matches (every rule tried, then the split) or only the last one does.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use flipgate::config::RuleMatch;
use flipgate::observe::metrics::Metrics;
use flipgate::policy::decide::{decide, Fields};
use flipgate::snapshot::split::Reason;
use flipgate::snapshot::Snapshot;
use http::{HeaderMap, HeaderValue};

#[path = "support/alloc_count.rs"]
mod alloc_count;

#[global_allocator]
static ALLOC: alloc_count::Counting = alloc_count::Counting;

/// Ten rules: four on headers, three on cookies, three on client networks; the last one (a
/// cookie rule) is the one `LAST` matches.
const CONFIG: &str = r#"
[[routes]]
name = "chatbot"
hosts = ["bot.example.com"]
live = "blue"
[routes.targets]
blue = ["127.0.0.1:3001"]
green = ["127.0.0.1:3002"]
[routes.canary]
target = "green"
percent = 5.0
sticky = "header:x-user-id"
[[routes.rules]]
name = "r1"
target = "green"
header = "x-user-tier"
values = ["beta", "staff"]
[[routes.rules]]
name = "r2"
target = "green"
header = "x-client-version"
values = ["9.9.0", "9.9.1", "10.0.0-rc1"]
[[routes.rules]]
name = "r3"
target = "green"
source = ["10.1.0.0/16", "fd00:1::/32"]
[[routes.rules]]
name = "r4"
target = "green"
header = "x-tenant"
values = ["acme", "initech"]
[[routes.rules]]
name = "r5"
target = "green"
cookie = "tier"
values = ["beta"]
[[routes.rules]]
name = "r6"
target = "green"
source = ["192.168.77.0/24"]
[[routes.rules]]
name = "r7"
target = "green"
header = "x-debug-route"
values = ["green"]
[[routes.rules]]
name = "r8"
target = "green"
cookie = "experiment"
values = ["new-ui", "fast-path"]
[[routes.rules]]
name = "r9"
target = "green"
source = ["172.16.0.0/12"]
[[routes.rules]]
name = "r10"
target = "green"
cookie = "flipgate-cohort"
values = ["green"]
"#;

/// Same route without rules: the cost the rules add is the difference.
fn without_rules() -> String {
    CONFIG.split("[[routes.rules]]").next().unwrap().to_string()
}

fn snapshot(text: &str) -> Snapshot {
    let config = flipgate::config::parse(Path::new("bench.toml"), text).expect("valid config");
    Snapshot::build(
        1,
        Arc::new(config),
        &Default::default(),
        &Snapshot::empty(),
        &Metrics::new(),
    )
}

/// A typical bot request's fields; `cohort` is the value of the last rule's cookie.
fn fields(cohort: &'static str) -> Vec<(&'static str, String)> {
    vec![
        ("host", "bot.example.com".into()),
        ("user-agent", "TelegramBot (like TwitterBot)".into()),
        ("accept", "*/*".into()),
        ("content-type", "application/json".into()),
        ("x-user-id", "user-8841".into()),
        ("x-user-tier", "free".into()),
        ("x-client-version", "9.8.3".into()),
        (
            "cookie",
            format!("theme=dark; tier=free; lang=en; experiment=control; flipgate-cohort={cohort}"),
        ),
    ]
}

fn header_map(f: &[(&'static str, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in f {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn parsed<'a>(f: &'a [(&'static str, String)]) -> Vec<httparse::Header<'a>> {
    f.iter()
        .map(|(k, v)| httparse::Header {
            name: k,
            value: v.as_bytes(),
        })
        .collect()
}

/// The naive matcher: per request, cookies into a map, names lower-cased, CIDRs parsed.
fn naive(rules: &[flipgate::config::Rule], h: &HeaderMap, peer: IpAddr) -> Option<usize> {
    let mut cookies: HashMap<String, String> = HashMap::new();
    for v in h.get_all("cookie") {
        for pair in v.to_str().unwrap_or("").split(';') {
            if let Some((k, v)) = pair.trim().split_once('=') {
                cookies
                    .entry(k.to_string())
                    .or_insert_with(|| v.to_string());
            }
        }
    }
    rules.iter().position(|r| match &r.matcher {
        RuleMatch::Header { name, values } => {
            let name = name.as_str().to_ascii_lowercase();
            h.get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| values.iter().any(|x| x == v))
        }
        RuleMatch::Cookie { name, values } => cookies
            .get(name)
            .is_some_and(|v| values.iter().any(|x| x == v)),
        RuleMatch::Source(nets) => nets.iter().any(|n| {
            n.to_string()
                .parse::<ipnet::IpNet>()
                .is_ok_and(|n| n.contains(&peer))
        }),
    })
}

fn check<F: Fields + ?Sized>(snap: &Snapshot, f: &F, peer: IpAddr, want_rule: Option<usize>) {
    let (allocs, d) = alloc_count::allocations(|| {
        decide(snap, Some("bot.example.com"), "/hooks/telegram", f, peer)
    });
    let d = d.expect("routed");
    assert_eq!(allocs, 0, "the decision allocated");
    assert_eq!(d.rule, want_rule);
    if want_rule.is_some() {
        assert_eq!(d.reason, Reason::Rule);
    } else {
        assert_eq!(d.reason, Reason::Sticky);
    }
}

fn bench(c: &mut Criterion) {
    let snap = snapshot(CONFIG);
    let plain = snapshot(&without_rules());
    let peer: IpAddr = "203.0.113.9".parse().unwrap();
    let none = fields("blue");
    let last = fields("green");
    let (none_map, last_map) = (header_map(&none), header_map(&last));
    let (none_h1, last_h1) = (parsed(&none), parsed(&last));
    let _ = flipgate::snapshot::split::random_bucket();
    check(&snap, &none_map, peer, None);
    check(&snap, &none_h1[..], peer, None);
    check(&snap, &last_map, peer, Some(9));
    check(&snap, &last_h1[..], peer, Some(9));
    let rules = &snap.config.routes[0].rules;
    assert_eq!(naive(rules, &none_map, peer), None);
    assert_eq!(naive(rules, &last_map, peer), Some(9));

    let mut g = c.benchmark_group("rules");
    let d = |snap: &Snapshot, h: &HeaderMap| {
        decide(
            snap,
            black_box(Some("bot.example.com")),
            black_box("/hooks/telegram"),
            h,
            peer,
        )
    };
    g.bench_function("no_rules_header_map", |b| {
        b.iter(|| black_box(d(&plain, black_box(&none_map))))
    });
    g.bench_function("10_none_match_header_map", |b| {
        b.iter(|| black_box(d(&snap, black_box(&none_map))))
    });
    g.bench_function("10_last_matches_header_map", |b| {
        b.iter(|| black_box(d(&snap, black_box(&last_map))))
    });
    let d1 = |snap: &Snapshot, h: &[httparse::Header<'_>]| {
        decide(
            snap,
            black_box(Some("bot.example.com")),
            black_box("/hooks/telegram"),
            h,
            peer,
        )
    };
    g.bench_function("no_rules_h1_head", |b| {
        b.iter(|| black_box(d1(&plain, black_box(&none_h1[..]))))
    });
    g.bench_function("10_none_match_h1_head", |b| {
        b.iter(|| black_box(d1(&snap, black_box(&none_h1[..]))))
    });
    g.bench_function("10_last_matches_h1_head", |b| {
        b.iter(|| black_box(d1(&snap, black_box(&last_h1[..]))))
    });
    g.bench_function("naive_10_none_match", |b| {
        b.iter(|| black_box(naive(rules, black_box(&none_map), peer)))
    });
    g.bench_function("naive_10_last_matches", |b| {
        b.iter(|| black_box(naive(rules, black_box(&last_map), peer)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
