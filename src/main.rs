//! The `flipgate` binary: parse arguments, set up logging, call the library.

use std::process::ExitCode;

use clap::Parser;
use flipgate::cli::{Cli, Command};
use flipgate::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Check { file } => match Config::load(&file) {
            Ok(c) => {
                print!("{}", flipgate::cli::summary(&c));
                ExitCode::SUCCESS
            }
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
        Command::Demo => {
            let rt = runtime(0).expect("runtime");
            rt.block_on(async {
                match flipgate::demo::run().await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("flipgate demo: {e:#}");
                        ExitCode::from(1)
                    }
                }
            })
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

fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        b.worker_threads(workers);
    }
    b.enable_all().build()
}
