//! Change driver for `benches/compare.sh`'s "under change" run: N route-file rewrites and N admin
//! flips per second, from one small process, so what the run measures is the proxy's cost of the
//! changes and not the cost of starting a `curl` and a `sed` for each (which, on the load
//! generator's CPU, cost more throughput than the changes themselves).
//!
//! Each tick (every 1/rate s): the route file is replaced atomically (temp file + rename, as a
//! ConfigMap update or a deploy tool does) by alternately the contents of `--file-a` and
//! `--file-b`, and one `POST /api/v1/routes/{route}/flip` alternates the live target between
//! `--targets A,B`, on a new connection each time (as a deploy script's `curl` does). Any flip that
//! is not answered 200 makes the exit status 1. Prints
//! `changes=N flips=N canaries=N reloads=N failed=N` (flips and canaries: those answered 200).
//!
//! For `benches/zero_loss.sh`: `--count N` stops after N ticks (at the latest when `--secs` is
//! up); `--reload-every K` replaces the file on every K-th tick only (default 1: every tick);
//! `--canary` adds, after each flip, a `POST /api/v1/routes/{route}/canary` that sends
//! `1 + tick % 50` percent to the target the flip did not make live (with two targets, the
//! non-live one); a canary change not answered 200 counts as failed too. Every admin POST carries
//! `content-type: application/json` with its body.
//!
//! Usage: churn --config PATH --file-a A --file-b B --admin HOST:PORT --route NAME
//!              --targets BLUE,GREEN --rate 10 --secs S
//!              [--count N] [--reload-every K] [--canary]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str) -> String {
    opt(args, name).unwrap_or_else(|| panic!("churn: missing {name}"))
}

fn opt(args: &[String], name: &str) -> Option<String> {
    args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone())
}

/// `POST /api/v1/routes/{route}/{verb}` with a JSON body on a new connection; the status.
fn post(admin: &str, route: &str, verb: &str, body: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(admin)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "POST /api/v1/routes/{route}/{verb} HTTP/1.1\r\nhost: {admin}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let status = resp
        .get(9..12)
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok(status)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let config = PathBuf::from(arg(&args, "--config"));
    let files = [
        std::fs::read(arg(&args, "--file-a")).expect("churn: read --file-a"),
        std::fs::read(arg(&args, "--file-b")).expect("churn: read --file-b"),
    ];
    let admin = arg(&args, "--admin");
    let route = arg(&args, "--route");
    let targets: Vec<String> = arg(&args, "--targets")
        .split(',')
        .map(str::to_string)
        .collect();
    let rate: f64 = arg(&args, "--rate").parse().expect("churn: --rate");
    let secs: f64 = arg(&args, "--secs").parse().expect("churn: --secs");
    let count: u64 = opt(&args, "--count").map_or(u64::MAX, |c| c.parse().expect("churn: --count"));
    let reload_every: u64 = opt(&args, "--reload-every")
        .map_or(1, |k| k.parse().expect("churn: --reload-every"))
        .max(1);
    let canary = args.iter().any(|a| a == "--canary");
    let tmp = config.with_extension("churn.tmp");

    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate);
    let (mut changes, mut flips, mut canaries, mut reloads) = (0u64, 0u64, 0u64, 0u64);
    let mut failed = 0u64;
    let mut check = |what: &str, r: std::io::Result<u16>| match r {
        Ok(200) => true,
        Ok(s) => {
            eprintln!("churn: {what} answered {s}");
            failed += 1;
            false
        }
        Err(e) => {
            eprintln!("churn: {what} failed: {e}");
            failed += 1;
            false
        }
    };
    while changes < count && start.elapsed().as_secs_f64() < secs {
        let i = changes as usize;
        if changes % reload_every == 0 {
            // The k-th reload writes file a or b alternately, so each one differs from the last.
            let k = (changes / reload_every) as usize;
            std::fs::write(&tmp, &files[k % 2]).expect("churn: write the route file");
            std::fs::rename(&tmp, &config).expect("churn: replace the route file");
            reloads += 1;
        }
        let live = &targets[i % targets.len()];
        let body = format!("{{\"target\":\"{live}\"}}");
        if check("flip", post(&admin, &route, "flip", &body)) {
            flips += 1;
        }
        if canary {
            let other = &targets[(i + 1) % targets.len()];
            let body = format!("{{\"percent\":{},\"target\":\"{other}\"}}", 1 + i % 50);
            if check("canary", post(&admin, &route, "canary", &body)) {
                canaries += 1;
            }
        }
        changes += 1;
        if let Some(wait) = (start + period * changes as u32).checked_duration_since(Instant::now())
        {
            std::thread::sleep(wait);
        }
    }
    println!(
        "changes={changes} flips={flips} canaries={canaries} reloads={reloads} failed={failed}"
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
