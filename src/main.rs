//! The `flipgate` binary: parse arguments, set up logging, call the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

/// mimalloc: HTTP/2 closed-loop throughput +9 % over glibc's malloc in an A/B, HTTP/1.1 unchanged
/// (the engine allocates next to nothing), peak RSS +9 MiB (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use flipgate::cli::{Cli, Command};
use flipgate::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Check { file } => match Config::load(&file) {
            Ok(c) => match flipgate::preflight(&c) {
                Ok(()) => {
                    print!("{}", flipgate::cli::summary(&c));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    ExitCode::from(1)
                }
            },
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(1)
            }
        },
        Command::Run { config } => {
            let c = match Config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(1);
                }
            };
            let rt = match runtime(c.server.workers) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("flipgate: cannot start runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            rt.block_on(async move {
                match flipgate::Gateway::start_with(c, config).await {
                    Ok(g) => {
                        flipgate::run_until_signal(g).await;
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("flipgate: {e}");
                        ExitCode::from(1)
                    }
                }
            })
        }
        Command::Demo(args) => {
            let rt = runtime(0).expect("runtime");
            rt.block_on(async {
                match flipgate::demo::run(args).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("flipgate demo: {e:#}");
                        ExitCode::from(1)
                    }
                }
            })
        }
        Command::Rollout(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            ExitCode::from(rt.block_on(flipgate::cli::rollout::run(args)))
        }
        cmd => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            match rt.block_on(flipgate::cli::client(cmd)) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("flipgate: {}", e.0);
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// One worker runs on tokio's current-thread scheduler: no work-stealing queues or cross-thread
/// wake-ups to pay for when there is nobody to steal from (see docs/BENCHMARKS.md).
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if workers > 0 {
            b.worker_threads(workers);
        }
        b
    };
    b.enable_all().build()
}

/// Diagnostics go to stderr, filtered by `RUST_LOG` (default `info`); access-log lines (enabled in
/// the route file's `[log]`) go to stdout exactly as formatted, whatever `RUST_LOG` says.
fn init_logging() {
    use flipgate::observe::access_log;
    use tracing_subscriber::filter::{filter_fn, FilterExt};
    use tracing_subscriber::prelude::*;
    let env =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let not_access = filter_fn(|m| m.target() != access_log::TARGET);
    let only_access = filter_fn(|m| m.target() == access_log::TARGET);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(env.and(not_access)),
        )
        .with(access_log::layer(std::io::stdout).with_filter(only_access))
        .init();
}
