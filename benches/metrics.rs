//! Run: `cargo bench --bench metrics` (prints the share at the end).
//!
//! Protects: the per-request cost of observability on the data path. A request records into
//! handles resolved when the snapshot was built (`TargetMetrics::record`, plus the circuit window's
//! `Window::record`, measured alone in `window_record`), and checks the access-log switch from the
//! snapshot. The budget is under 5 % of a full proxied request.
//!
//! Naive baseline: looking the series up by label on every request (`with_label_values`, which
//! hashes the label values and takes the family's read lock), which is what "resolve handles when
//! the snapshot is built" avoids.
//!
//! The yardstick: one full HTTP/1.1 request through a running gateway to an in-process upstream,
//! all on loopback (keep-alive client, pooled upstream connection). At the end the bench prints the
//! recording cost as a share of that request, from criterion's own estimates.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{black_box, criterion_group, Criterion};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use flipgate::config::{AccessLogFormat, Log};
use flipgate::control::circuit::window::Window;
use flipgate::observe::metrics::Metrics;

fn recording(c: &mut Criterion) {
    let metrics = Metrics::new();
    let handles = metrics.target("chatbot", "green");
    let window = Window::new(Duration::from_secs(30), None);
    let mut g = c.benchmark_group("metrics");
    // What a request records: status and latency into the handles, outcome into the window.
    g.bench_function("record_per_request", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let now_ms = flipgate::clock::now_ms();
            let status = if i % 50 == 0 { 503 } else { 200 };
            window.record(now_ms, status >= 500, 1);
            handles.record(black_box(status), black_box(0.000_8));
        })
    });
    // The circuit window alone: bucket counters plus the latency histogram's bin (one
    // leading-zeros count) and two relaxed adds.
    g.bench_function("window_record", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let now_ms = flipgate::clock::now_ms();
            window.record(now_ms, black_box(i % 50 == 0), black_box(i % 700));
        })
    });
    // Baseline: the same window without the latency histogram (the code before issue 15).
    let old = OldWindow::default();
    g.bench_function("window_record_without_histogram_baseline", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let now_ms = flipgate::clock::now_ms();
            old.record(now_ms, black_box(i % 50 == 0), black_box(i % 700));
        })
    });
    // The metrics part alone, to compare with the naive label lookup below.
    g.bench_function("record_resolved_handles", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let status = if i % 50 == 0 { 503 } else { 200 };
            handles.record(black_box(status), black_box(0.000_8));
        })
    });
    let requests = prometheus::IntCounterVec::new(
        prometheus::Opts::new("requests_total", "baseline"),
        &["route", "target", "code"],
    )
    .unwrap();
    let duration = prometheus::HistogramVec::new(
        prometheus::HistogramOpts::new("request_duration_seconds", "baseline"),
        &["route", "target"],
    )
    .unwrap();
    g.bench_function("record_label_lookup_baseline", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let code = if i % 50 == 0 { "5xx" } else { "2xx" };
            requests
                .with_label_values(&[black_box("chatbot"), black_box("green"), code])
                .inc();
            duration
                .with_label_values(&[black_box("chatbot"), black_box("green")])
                .observe(black_box(0.000_8));
        })
    });
    let off = Log {
        access: AccessLogFormat::Off,
        sample: 1.0,
    };
    g.bench_function("access_log_off", |b| {
        b.iter(|| flipgate::observe::access_log::sample(black_box(&off)))
    });
    g.finish();
}

/// `Window::record` as it was before the latency histogram (buckets of requests, errors, slow;
/// lifetime requests and errors): the baseline of `window_record`.
#[derive(Default)]
struct OldWindow {
    lifetime: [std::sync::atomic::AtomicU64; 2],
    buckets: [[std::sync::atomic::AtomicU64; 4]; 10],
}

impl OldWindow {
    #[inline]
    fn record(&self, now_ms: u64, error: bool, latency_ms: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let tick = now_ms / 3000 + 1;
        let b = &self.buckets[(tick % 10) as usize];
        let seen = b[0].load(Relaxed);
        if seen != tick && b[0].compare_exchange(seen, tick, Relaxed, Relaxed).is_ok() {
            b[1].store(0, Relaxed);
            b[2].store(0, Relaxed);
            b[3].store(0, Relaxed);
        }
        b[1].fetch_add(1, Relaxed);
        self.lifetime[0].fetch_add(1, Relaxed);
        if error {
            self.lifetime[1].fetch_add(1, Relaxed);
            b[2].fetch_add(1, Relaxed);
        }
        if latency_ms > u64::MAX - 1 {
            b[3].fetch_add(1, Relaxed);
        }
    }
}

async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"hello from green",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn proxied_request(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (gateway, url) = rt.block_on(async {
        let up = upstream().await;
        let file = dir.path().join("flipgate.toml");
        std::fs::write(
            &file,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"state\"\n\
                 [[routes]]\nname = \"chatbot\"\nlive = \"green\"\n[routes.targets]\ngreen = [\"{up}\"]\n"
            ),
        )
        .unwrap();
        let g = flipgate::Gateway::start(&file).await.unwrap();
        let url: hyper::Uri = format!("http://{}/hello", g.addr).parse().unwrap();
        (g, url)
    });
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut g = c.benchmark_group("proxy");
    g.sample_size(30).measurement_time(Duration::from_secs(4));
    g.bench_function("request_loopback", |b| {
        b.to_async(&rt).iter(|| async {
            let resp = client.get(url.clone()).await.unwrap();
            assert!(resp.status().is_success());
            black_box(resp.into_body().collect().await.unwrap());
        })
    });
    g.finish();
    rt.block_on(gateway.shutdown());
}

/// Criterion's point estimate (mean, ns) of a finished bench, if it ran in this invocation.
fn mean_ns(id: &str) -> Option<f64> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let text =
        std::fs::read_to_string(dir.join("criterion").join(id).join("new/estimates.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn report() {
    let (Some(rec), Some(req)) = (
        mean_ns("metrics/record_per_request"),
        mean_ns("proxy/request_loopback"),
    ) else {
        return;
    };
    let share = rec / req * 100.0;
    println!(
        "\nmetrics recording: {rec:.1} ns of a {:.1} µs proxied request = {share:.3} % (budget 5 %)",
        req / 1000.0
    );
    if let (Some(new), Some(old)) = (
        mean_ns("metrics/window_record"),
        mean_ns("metrics/window_record_without_histogram_baseline"),
    ) {
        println!(
            "circuit window record: {new:.1} ns with the latency histogram, {old:.1} ns without (+{:.1} ns)",
            new - old
        );
    }
    if let (Some(naive), Some(handles)) = (
        mean_ns("metrics/record_label_lookup_baseline"),
        mean_ns("metrics/record_resolved_handles"),
    ) {
        println!(
            "label lookup per request (naive baseline): {naive:.1} ns = {:.1}x the resolved handles ({handles:.1} ns)",
            naive / handles
        );
    }
}

criterion_group!(benches, recording, proxied_request);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report();
}
