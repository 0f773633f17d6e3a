//! Load generator for `benches/compare.sh`: HTTP/1.1 (optionally over TLS) on keep-alive
//! connections, open loop at a fixed rate or closed loop, with an HdrHistogram of latencies.
//!
//! Open loop measures each request from its *intended* send time (no coordinated omission): a
//! pacer (`pace`) releases request k at `start + k / rate` on a `timerfd` and hands it to
//! connection `k % conns`; a request that has to wait for its connection counts that wait. The
//! whole generator runs on one thread, so `taskset` can pin it to one core.
//!
//! HTTP/1.1 connections are this generator's own (`h1`: a prepared request written, the response
//! parsed in place, one task per connection), so that the load CPU, which it shares with the
//! upstream in the benchmarks, spends its time on the proxy's answers rather than on the client.
//! `--keep-going` keeps hyper's client: its errors tell a request the server never read (the
//! connection was closed before it was written) from one it lost, and `benches/zero_loss.sh`
//! counts them apart. `--h2` is hyper's client too.
//!
//! Output: one line of `key=value` pairs (requests, rps, p50/p99/p999/max in µs, errors, non2xx)
//! that the script parses. Any error or non-2xx makes the exit status 1.
//!
//! By default a connection stops at its first error (and the run reports what it had). With
//! `--keep-going` a failed request is counted and its connection replaced (a new one is dialled
//! until one is had or the run's time is up), so a run through restarts or reloads ends with
//! counts rather than with fewer connections. `--expect-body a,b` reads each 2xx body and counts
//! those that are none of the listed strings as `unexpected` (they too make the exit status 1);
//! the line then also has `body_NAME=N` per expected body. `requests` counts the served ones
//! (measured phase), `errors` the requests that failed on the socket (no response), `non2xx` and
//! `unexpected` the answered ones that do not count, `connect_errors` failed attempts to dial a
//! replacement connection (not requests). The first few errors are printed as
//! they happen, and every kind of error with its count at the end (stderr).
//!
//! `--h2` speaks HTTP/2 (prior knowledge over cleartext, ALPN `h2` over TLS): the `--conns`
//! request slots then share `--h2-conns` connections (default 4), so each connection carries many
//! concurrent streams, as browsers and gRPC clients do.
//!
//! `--hist FILE` also writes the measured latencies to FILE, one `value_us count` line per
//! recorded histogram bucket, so a script can pool several runs (slices taken in turns with other
//! proxies) and take percentiles of all their requests together.
//!
//! The summary line also has `cpu_us` and `csw`, the generator's own CPU time (user + system) and
//! context switches over the whole run, so the script can tell how much of the load CPU a proxy's
//! way of answering costs.
//!
//! `--idle N` instead opens N keep-alive connections, sends one request on each, prints `ready`,
//! and holds them until stdin closes: the script measures the proxy's memory per idle connection.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

mod h1;
mod pace;

struct Args {
    url: http::Uri,
    conns: usize,
    rate: u64,
    duration: Duration,
    warmup: Duration,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    sticky: Option<http::HeaderName>,
    ca: Option<String>,
    idle: usize,
    keep_going: bool,
    expect: Vec<String>,
    h2: bool,
    h2_conns: usize,
    hist: Option<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: loadgen --url URL [--conns N] [--rate RPS (0 = closed loop)] [--duration SECS] \
         [--warmup SECS] [--header 'name: value']... [--sticky-header NAME] [--ca PEM] [--idle N] \
         [--keep-going] [--expect-body A,B,...] [--h2] [--h2-conns N] [--hist FILE]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        url: http::Uri::from_static("http://127.0.0.1:8080/"),
        conns: 32,
        rate: 0,
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        headers: Vec::new(),
        sticky: None,
        ca: None,
        idle: 0,
        keep_going: false,
        expect: Vec::new(),
        h2: false,
        h2_conns: 4,
        hist: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--keep-going" {
            a.keep_going = true;
            continue;
        }
        if flag == "--h2" {
            a.h2 = true;
            continue;
        }
        let v = it.next().unwrap_or_else(|| usage());
        let secs = |v: &str| Duration::from_secs_f64(v.parse().unwrap_or_else(|_| usage()));
        match flag.as_str() {
            "--url" => a.url = v.parse().unwrap_or_else(|_| usage()),
            "--conns" => a.conns = v.parse().unwrap_or_else(|_| usage()),
            "--rate" => a.rate = v.parse().unwrap_or_else(|_| usage()),
            "--duration" => a.duration = secs(&v),
            "--warmup" => a.warmup = secs(&v),
            "--sticky-header" => a.sticky = Some(v.parse().unwrap_or_else(|_| usage())),
            "--ca" => a.ca = Some(v),
            "--hist" => a.hist = Some(v),
            "--h2-conns" => a.h2_conns = v.parse().unwrap_or_else(|_| usage()),
            "--idle" => a.idle = v.parse().unwrap_or_else(|_| usage()),
            "--expect-body" => a.expect = v.split(',').map(str::to_string).collect(),
            "--header" => {
                let (n, val) = v.split_once(':').unwrap_or_else(|| usage());
                a.headers.push((
                    n.trim().parse().unwrap_or_else(|_| usage()),
                    val.trim().parse().unwrap_or_else(|_| usage()),
                ));
            }
            _ => usage(),
        }
    }
    if a.conns == 0 || a.h2_conns == 0 || (a.h2 && (a.keep_going || a.idle > 0)) {
        usage()
    }
    a
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Target {
    addr: String,
    h2: bool,
    /// HTTP/1.1 through `h1` rather than hyper's client.
    raw: bool,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

fn target(args: &Args) -> Target {
    let auth = args.url.authority().expect("URL has host:port").clone();
    let https = args.url.scheme_str() == Some("https");
    let port = auth.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addr = format!("{}:{port}", auth.host());
    let tls = https.then(|| {
        let mut roots = rustls::RootCertStore::empty();
        let pem =
            std::fs::read(args.ca.as_deref().expect("https needs --ca PEM")).expect("read --ca");
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots
                .add(cert.expect("PEM certificate"))
                .expect("usable CA");
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![if args.h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let name = rustls::pki_types::ServerName::try_from(auth.host().to_string()).expect("SNI");
        (tokio_rustls::TlsConnector::from(Arc::new(config)), name)
    });
    Target {
        addr,
        h2: args.h2,
        raw: !args.h2 && !args.keep_going,
        tls,
    }
}

async fn connect(t: &Target) -> std::io::Result<Box<dyn Io>> {
    let s = TcpStream::connect(&t.addr).await?;
    s.set_nodelay(true)?;
    Ok(match &t.tls {
        None => Box::new(s),
        Some((c, name)) => Box::new(c.connect(name.clone(), s).await?),
    })
}

/// One request slot's way to send: its own HTTP/1.1 connection, or a handle on a shared HTTP/2
/// one.
enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
    Raw(h1::Conn),
}

/// A request through one of hyper's clients: the status and the whole body.
macro_rules! via_hyper {
    ($tx:expr, $req:expr) => {
        async {
            $tx.ready().await?;
            let resp = $tx.send_request($req).await?;
            Ok((resp.status(), resp.into_body().collect().await?.to_bytes()))
        }
        .await
    };
}

impl Sender {
    /// One request and its whole response: the status and, when `keep_body`, the body. An error
    /// is described as the client saw it, with its causes.
    async fn exchange(
        &mut self,
        args: &Args,
        conn: usize,
        keep_body: bool,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let hyper_response = match self {
            Sender::Raw(c) => {
                return match c.exchange(keep_body).await {
                    Ok(r) => http::StatusCode::from_u16(r.status)
                        .map(|s| (s, Bytes::from(r.body)))
                        .map_err(|_| format!("request failed: bad status {}", r.status)),
                    Err(e) => Err(format!("request failed: {e}")),
                };
            }
            // The two hyper clients share their method names, not a trait.
            Sender::H1(tx) => via_hyper!(tx, request(args, conn)),
            Sender::H2(tx) => via_hyper!(tx, request(args, conn)),
        };
        hyper_response.map_err(|e: hyper::Error| {
            // hyper's message names the step ("channel closed": the connection was already
            // gone, the request not sent); its source names the socket error, if any.
            let mut kind = format!("request failed: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                kind.push_str(&format!(": {s}"));
                src = s.source();
            }
            kind
        })
    }
}

async fn handshake(t: &Target, args: &Args, conn: usize) -> Result<Sender, String> {
    let io = connect(t).await.map_err(|e| format!("connect: {e}"))?;
    if t.raw {
        return Ok(Sender::Raw(h1::Conn::new(io, raw_request(args, conn))));
    }
    if t.h2 {
        let (tx, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        return Ok(Sender::H2(tx));
    }
    let (tx, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(Sender::H1(tx))
}

/// The request of connection `conn` (its sticky header names the user), as hyper's client
/// would write it.
fn raw_request(args: &Args, conn: usize) -> Vec<u8> {
    let mut r = format!(
        "GET {} HTTP/1.1\r\nhost: {}\r\n",
        args.url.path_and_query().map_or("/", |p| p.as_str()),
        args.url.authority().expect("host").as_str()
    )
    .into_bytes();
    let mut header = |n: &[u8], v: &[u8]| {
        r.extend_from_slice(n);
        r.extend_from_slice(b": ");
        r.extend_from_slice(v);
        r.extend_from_slice(b"\r\n");
    };
    for (n, v) in &args.headers {
        header(n.as_str().as_bytes(), v.as_bytes());
    }
    if let Some(s) = &args.sticky {
        header(s.as_str().as_bytes(), format!("user-{conn}").as_bytes());
    }
    r.extend_from_slice(b"\r\n");
    r
}

fn request(args: &Args, conn: usize) -> http::Request<Empty<Bytes>> {
    let mut b = http::Request::get(args.url.path_and_query().map_or("/", |p| p.as_str())).header(
        http::header::HOST,
        args.url.authority().expect("host").as_str(),
    );
    for (n, v) in &args.headers {
        b = b.header(n, v);
    }
    if let Some(s) = &args.sticky {
        b = b.header(s, format!("user-{conn}"));
    }
    b.body(Empty::new()).expect("valid request")
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    errors: AtomicU64,
    non2xx: AtomicU64,
    unexpected: AtomicU64,
    /// Failed attempts to replace a broken connection (`--keep-going`): not requests.
    connect_errors: AtomicU64,
    /// Per `--expect-body` entry, in its order.
    bodies: Vec<AtomicU64>,
    /// Every kind of failure with its count (the generator is single-threaded: no contention).
    kinds: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// Errors printed as they happen; the rest only appear in the summary by kind.
const PRINT_FIRST: u64 = 10;

impl Counts {
    fn new(args: &Args) -> Counts {
        Counts {
            bodies: args.expect.iter().map(|_| AtomicU64::new(0)).collect(),
            ..Counts::default()
        }
    }

    fn failed(&self, kind: String) {
        let n = self.errors.load(Relaxed)
            + self.non2xx.load(Relaxed)
            + self.unexpected.load(Relaxed)
            + self.connect_errors.load(Relaxed);
        if n <= PRINT_FIRST {
            eprintln!("loadgen: {kind}");
        }
        *self.kinds.lock().unwrap().entry(kind).or_default() += 1;
    }
}

/// What became of one request.
#[derive(PartialEq)]
enum Outcome {
    /// A complete 2xx (with an expected body, where `--expect-body` is given).
    Ok,
    /// A complete response that does not count as served (non-2xx, unexpected body): the
    /// connection is still usable.
    Wrong,
    /// The exchange failed: the connection is not usable any more.
    Broken,
}

/// Sends one request.
async fn one(tx: &mut Sender, args: &Args, conn: usize, counts: &Counts) -> Outcome {
    let expect = &args.expect;
    match tx.exchange(args, conn, !expect.is_empty()).await {
        Ok((s, body)) if s.is_success() => {
            if expect.is_empty() {
                counts.ok.fetch_add(1, Relaxed);
                return Outcome::Ok;
            }
            match expect
                .iter()
                .position(|e| e.as_bytes() == body.trim_ascii())
            {
                Some(i) => {
                    counts.bodies[i].fetch_add(1, Relaxed);
                    counts.ok.fetch_add(1, Relaxed);
                    Outcome::Ok
                }
                None => {
                    counts.unexpected.fetch_add(1, Relaxed);
                    let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
                    counts.failed(format!("unexpected body {shown:?}"));
                    Outcome::Wrong
                }
            }
        }
        Ok((s, _)) => {
            counts.non2xx.fetch_add(1, Relaxed);
            counts.failed(format!("status {s}"));
            Outcome::Wrong
        }
        Err(kind) => {
            counts.errors.fetch_add(1, Relaxed);
            counts.failed(kind);
            Outcome::Broken
        }
    }
}

/// A new connection in place of a broken one, retried (1 ms apart, each failure counted) until
/// one is had or `end` has passed.
async fn redial(
    t: &Target,
    args: &Args,
    conn: usize,
    counts: &Counts,
    end: Instant,
) -> Option<Sender> {
    while Instant::now() < end {
        match handshake(t, args, conn).await {
            Ok(tx) => return Some(tx),
            Err(e) => {
                counts.connect_errors.fetch_add(1, Relaxed);
                counts.failed(format!("reconnect: {e}"));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    None
}

fn main() {
    let args = Arc::new(parse_args());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(async move {
        let t = Arc::new(target(&args));
        if args.idle > 0 {
            return idle(&args, &t).await;
        }
        run(args, t).await
    });
    std::process::exit(code);
}

async fn idle(args: &Args, t: &Target) -> i32 {
    let counts = Counts::new(args);
    let mut held = Vec::with_capacity(args.idle);
    for i in 0..args.idle {
        let mut tx = match handshake(t, args, i).await {
            Ok(tx) => tx,
            Err(e) => {
                eprintln!("loadgen: idle connection {i}: {e}");
                return 1;
            }
        };
        if one(&mut tx, args, i, &counts).await != Outcome::Ok {
            return 1;
        }
        held.push(tx);
    }
    println!("ready {}", held.len());
    // Hold until the script closes stdin.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await;
    0
}

async fn run(args: Arc<Args>, t: Arc<Target>) -> i32 {
    let counts = Arc::new(Counts::new(&args));
    let start = Instant::now() + Duration::from_millis(200);
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let mut tasks = Vec::new();
    let mut pacer_tx = Vec::new();
    let mut shared = Vec::new(); // --h2: the connections the slots share
    for c in 0..args.conns {
        let mut tx = if args.h2 && shared.len() == args.h2_conns {
            Sender::H2(http2::SendRequest::clone(&shared[c % args.h2_conns]))
        } else {
            match handshake(&t, &args, c).await {
                Ok(tx) => tx,
                Err(e) => {
                    eprintln!("loadgen: connection {c}: {e}");
                    return 1;
                }
            }
        };
        if let Sender::H2(h2) = &tx {
            if shared.len() < args.h2_conns {
                shared.push(h2.clone());
            }
        }
        let (args, counts, t) = (args.clone(), counts.clone(), t.clone());
        let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        if args.rate > 0 {
            pacer_tx.push(ptx);
        }
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            tokio::time::sleep_until(start.into()).await;
            loop {
                let intended = if args.rate > 0 {
                    match prx.recv().await {
                        Some(t) => t,
                        None => break,
                    }
                } else {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    now
                };
                match one(&mut tx, &args, c, &counts).await {
                    Outcome::Ok => {}
                    _ if !args.keep_going => break,
                    Outcome::Wrong => continue,
                    Outcome::Broken => match redial(&t, &args, c, &counts, end).await {
                        Some(new) => {
                            tx = new;
                            continue;
                        }
                        None => break,
                    },
                }
                if intended >= measure_from {
                    let us = intended.elapsed().as_micros() as u64;
                    let _ = h.record(us.max(1));
                }
            }
            h
        }));
    }
    if args.rate > 0 {
        let rate = args.rate;
        tokio::spawn(pace::pace(pacer_tx, rate, start, end));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for t in tasks {
        if let Ok(h) = t.await {
            total.add(h).expect("same bounds");
        }
    }
    if let Some(path) = &args.hist {
        let lines: String = total
            .iter_recorded()
            .map(|v| format!("{} {}\n", v.value_iterated_to(), v.count_at_value()))
            .collect();
        if let Err(e) = std::fs::write(path, lines) {
            eprintln!("loadgen: cannot write {path}: {e}");
            return 1;
        }
    }
    let errors = counts.errors.load(Relaxed);
    let non2xx = counts.non2xx.load(Relaxed);
    let unexpected = counts.unexpected.load(Relaxed);
    let connect_errors = counts.connect_errors.load(Relaxed);
    let n = total.len();
    let (cpu_us, csw) = own_usage();
    let mut extra = format!(" connect_errors={connect_errors} cpu_us={cpu_us} csw={csw}");
    if !args.expect.is_empty() {
        extra.push_str(&format!(" unexpected={unexpected}"));
        for (name, c) in args.expect.iter().zip(&counts.bodies) {
            extra.push_str(&format!(" body_{name}={}", c.load(Relaxed)));
        }
    }
    println!(
        "requests={n} rps={:.0} p50_us={} p99_us={} p999_us={} max_us={} errors={errors} non2xx={non2xx}{extra}",
        n as f64 / args.duration.as_secs_f64(),
        total.value_at_quantile(0.5),
        total.value_at_quantile(0.99),
        total.value_at_quantile(0.999),
        total.max(),
    );
    for (kind, n) in counts.kinds.lock().unwrap().iter() {
        eprintln!("loadgen: {n} x {kind}");
    }
    i32::from(errors > 0 || non2xx > 0 || unexpected > 0 || connect_errors > 0)
}

/// This process's CPU time so far (user + system, µs) and its context switches (voluntary and
/// not), all threads.
fn own_usage() -> (u64, u64) {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (
        us(u.ru_utime) + us(u.ru_stime),
        (u.ru_nvcsw + u.ru_nivcsw) as u64,
    )
}
