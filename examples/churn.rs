//! Change driver for `benches/compare.sh`'s "under change" run: N route-file rewrites and N admin
//! flips per second, from one small process, so what the run measures is the proxy's cost of the
//! changes and not the cost of starting a `curl` and a `sed` for each (which, on the load
//! generator's CPU, cost more throughput than the changes themselves).
//!
//! Each tick (every 1/rate s): the route file is replaced atomically (temp file + rename, as a
//! ConfigMap update or a deploy tool does) by alternately the contents of `--file-a` and
//! `--file-b`, and one `POST /api/v1/routes/{route}/flip` alternates the live target between
//! `--targets A,B`, on a new connection each time (as a deploy script's `curl` does). Any flip that
//! is not answered 200 makes the exit status 1. Prints `changes=N`.
//!
//! Usage: churn --config PATH --file-a A --file-b B --admin HOST:PORT --route NAME
//!              --targets BLUE,GREEN --rate 10 --secs S

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str) -> String {
    args.windows(2)
        .find(|w| w[0] == name)
        .map(|w| w[1].clone())
        .unwrap_or_else(|| panic!("churn: missing {name}"))
}

fn flip(admin: &str, route: &str, target: &str) -> std::io::Result<u16> {
    let body = format!("{{\"target\":\"{target}\"}}");
    let mut s = TcpStream::connect(admin)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "POST /api/v1/routes/{route}/flip HTTP/1.1\r\nhost: {admin}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
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
    let tmp = config.with_extension("churn.tmp");

    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut changes = 0u64;
    let mut failed = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let i = changes as usize;
        std::fs::write(&tmp, &files[i % 2]).expect("churn: write the route file");
        std::fs::rename(&tmp, &config).expect("churn: replace the route file");
        match flip(&admin, &route, &targets[i % targets.len()]) {
            Ok(200) => {}
            Ok(s) => {
                eprintln!("churn: flip answered {s}");
                failed += 1;
            }
            Err(e) => {
                eprintln!("churn: flip failed: {e}");
                failed += 1;
            }
        }
        changes += 1;
        if let Some(wait) = (start + period * changes as u32).checked_duration_since(Instant::now())
        {
            std::thread::sleep(wait);
        }
    }
    println!("changes={changes} failed={failed}");
    if failed > 0 {
        std::process::exit(1);
    }
}
