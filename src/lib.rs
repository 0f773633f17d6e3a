//! flipgate: a reverse proxy for zero-downtime bot deploys.
//!
//! Architecture. The *data plane* (`serve`, `policy`, `upstream`) serves requests from an
//! immutable `Snapshot` (`snapshot`, with its router and split) loaded once per request from an
//! `ArcSwap`: no locks, no per-request config lookups. The *control plane* has one writer,
//! `control::Control`: file reloads (`control::reload`), admin calls (`admin`) and circuit trips
//! (`control::circuit`) all edit the per-route runtime state there, which is compiled with the
//! validated route file (`config`) into a new snapshot, published with a single `store`, and
//! handed to the state writer (`control::state::writer`), which persists it on its own
//! thread: nothing on the runtime waits for the disk, and of all processes sharing a `state.dir`
//! only the one holding its lock writes. Requests in flight keep the snapshot (and target) they started
//! with; the next request sees the new one. Per-target counters, metric handles and upstream pools
//! outlive snapshots, so reloads and flips lose neither counts nor connections.
//!
//! Lifecycle: `Gateway::start` validates the file, restores runtime state (refusing to start if
//! the state file exists but cannot be read), waits for its first write, loads the TLS
//! certificates, binds every listener (so a bad address or certificate fails fast), then spawns the
//! accept loops, the reload watcher, the certificate watcher (`tls`) and the circuit task, all of
//! which stop on one shutdown signal. Shutdown drains connections, then tunnels, within
//! `server.drain_timeout` (`serve`, `serve::proxy::tunnel`).

// Safe Rust everywhere but three system-call sites, each allowed where it stands with its
// invariant: `serve::h1::try_read` (a `recv` into a buffer's spare
// room), `serve::reuse_port_handover` (`setsockopt` with a BPF program) and `control::state::lock`
// (`flock`).
#![deny(unsafe_code)]

// The data plane: `serve` (listeners, the HTTP/1.1 engine, hyper's path, tunnels) applies
// `policy` (written once for both engines) to what it reads from `snapshot`, and forwards through
// `upstream`. The control plane: `control` (the one writer: reloads, admin calls, circuit trips,
// health checks, persisted state) publishes snapshots; `admin` is its API. `observe` (metrics,
// access log) and `config` are shared by both.
pub mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod demo;
/// Entry points of the fuzz targets: built only for `cargo test` and for `cargo fuzz` (which
/// sets `--cfg fuzzing`), never part of the library a build of flipgate ships.
#[cfg(any(test, fuzzing))]
pub mod fuzzing;
pub mod observe;
pub mod policy;
pub mod serve;
pub mod snapshot;
pub mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::control::Control;
use crate::control::{circuit, health_check, reload};
use crate::observe::metrics::Metrics;
use crate::serve::proxy::Proxy;
use crate::serve::tls;

/// A running gateway: its bound addresses and the handle to stop it.
pub struct Gateway {
    /// Traffic listener address (useful when the file says port 0).
    pub addr: SocketAddr,
    /// Admin listener address.
    pub admin_addr: SocketAddr,
    /// HTTPS listener address, when `[server.tls]` is configured.
    pub tls_addr: Option<SocketAddr>,
    /// The live certificate set (reload status for tests and operators), when TLS is on.
    pub tls: Option<Arc<tls::Resolver>>,
    pub control: Arc<Control>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] config::ConfigErrors),
    #[error("cannot bind traffic listener {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error("TLS certificates: {0}")]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    State(#[from] control::StateError),
    /// The shared state store's settings cannot be used (a password or certificate file).
    #[error("{0}")]
    Store(String),
}

/// Every check a start makes before it binds anything, beyond the route file's own validation:
/// the TLS certificates load and each key matches its certificate, and a non-loopback admin
/// listener has a usable token. `flipgate check` runs exactly this, so a file it passes does not
/// fail `run` for these reasons (binding an address, which it cannot try, still can).
pub fn preflight(config: &Config) -> Result<(), StartError> {
    if let Some(t) = &config.server.tls {
        tls::CertSet::load(&t.certs)?;
    }
    let token = admin::token::TokenSource::new(&config.admin).resolve();
    admin::exposure(config.admin.listen, &token)?;
    // The shared store's password and certificate files read (nothing is connected here).
    #[cfg(feature = "etcd")]
    if let Some(e) = &config.state.etcd {
        control::state::etcd::check(e).map_err(|e| StartError::Store(e.to_string()))?;
    }
    Ok(())
}

/// Connects the shared state store and waits (bounded) for its first read, so a replica that
/// says it is ready serves the fleet's state whenever the store answers. Unreachable, it serves
/// the state it persisted locally.
#[cfg(feature = "etcd")]
async fn start_store(control: &Arc<Control>, cfg: &config::Etcd) -> Result<(), StartError> {
    let store = control::state::etcd::Etcd::start(control, cfg)
        .map_err(|e| StartError::Store(e.to_string()))?;
    if !store.settle(cfg.timeout * 2).await {
        tracing::error!(
            endpoints = ?cfg.endpoints,
            "etcd unreachable at start: serving the state this replica persisted locally; admin changes answer 503 until it is back"
        );
    }
    Ok(())
}

/// Config validation rejects `backend = "etcd"` in a build without the feature.
#[cfg(not(feature = "etcd"))]
async fn start_store(_: &Arc<Control>, _: &config::Etcd) -> Result<(), StartError> {
    Err(StartError::Store(
        "this flipgate was built without etcd support (cargo build --release --features etcd)"
            .into(),
    ))
}

/// How long start waits for the first write of the runtime state (a hung disk must not keep the
/// gateway from serving; the write goes on and `/readyz` says it is pending).
const START_WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Gateway {
    /// Loads `path`, binds the listeners and starts serving. Must run inside a tokio runtime.
    pub async fn start(path: &Path) -> Result<Gateway, StartError> {
        let config = Config::load(path)?;
        Self::start_with(config, path.to_path_buf()).await
    }

    /// Starts from an already validated config read from `path`.
    pub async fn start_with(config: Config, path: PathBuf) -> Result<Gateway, StartError> {
        preflight(&config)?;
        let metrics = Arc::new(Metrics::new());
        let settings = serve::ConnSettings::from_config(&config.server);
        let listen = config.server.listen;
        let reuse_port = config.server.reuse_port;
        let admin_listen = config.admin.listen;
        let clients = upstream::Clients::new(
            config.server.connect_timeout,
            config.server.pool_idle_timeout,
        );
        let etcd = config.state.etcd.clone();
        let control = Control::new(config, metrics)?;
        if let Some(cfg) = etcd {
            start_store(&control, &cfg).await?;
        }
        match control.settle(START_WRITE_WAIT).await {
            control::Durability::Persisted => {}
            control::Durability::Failed(e) => {
                tracing::error!(error = %e, "runtime state not persisted at start; decisions made now will not survive a restart until a retry succeeds")
            }
            control::Durability::Pending => tracing::warn!(
                "runtime state still being written after {START_WRITE_WAIT:?}; serving anyway"
            ),
        }
        let ready = Arc::new(AtomicBool::new(false));
        let admin = admin::Admin::new(control.clone(), ready.clone());
        let admin_listener = admin.bind(admin_listen, reuse_port).await?;
        let listener = serve::bind(listen, reuse_port).map_err(|e| StartError::Bind(listen, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Bind(listen, e))?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|e| StartError::Bind(admin_listen, e))?;

        // HTTPS: certificates must load now (a bad pair fails start); later they hot-reload.
        let tls = match control.config().server.tls.clone() {
            None => None,
            Some(t) => {
                let resolver = tls::Resolver::new(tls::CertSet::load(&t.certs)?);
                let l =
                    serve::bind(t.listen, reuse_port).map_err(|e| StartError::Bind(t.listen, e))?;
                let a = l.local_addr().map_err(|e| StartError::Bind(t.listen, e))?;
                Some((resolver, l, a))
            }
        };
        let tls_addr = tls.as_ref().map(|t| t.2);
        let tls_resolver = tls.as_ref().map(|t| t.0.clone());

        let (shutdown, rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(health_check::run(
            control.snapshots(),
            control.published(),
            clients.clone(),
            rx.clone(),
        ));
        let proxy = Arc::new(Proxy::new(control.snapshots(), clients));
        if let Some((resolver, tls_listener, _)) = tls {
            let config = tls::server_config(resolver.clone());
            tasks.spawn(serve::serve(
                tls_listener,
                proxy.clone(),
                settings.clone(),
                Some(config),
                rx.clone(),
            ));
            let snapshots = control.snapshots();
            let current = move || {
                snapshots
                    .load()
                    .config
                    .server
                    .tls
                    .as_ref()
                    .map(|t| t.certs.clone())
                    .unwrap_or_default()
            };
            tasks.spawn(tls::watch_certs(resolver, current, rx.clone()));
        }
        tasks.spawn(serve::serve(listener, proxy, settings, None, rx.clone()));
        tasks.spawn(admin::serve(admin, admin_listener, rx.clone()));
        tasks.spawn(reload::run(control.clone(), path, rx.clone()));
        tasks.spawn(control::rollout::run(control.clone(), rx.clone()));
        tasks.spawn(control::history::run(control.clone(), rx.clone()));
        tasks.spawn(circuit::run(control.clone(), rx));
        ready.store(true, Ordering::Release);
        tracing::info!(%addr, admin = %admin_addr, "flipgate serving");
        Ok(Gateway {
            addr,
            admin_addr,
            tls_addr,
            tls: tls_resolver,
            control,
            shutdown,
            tasks,
        })
    }

    /// Stops accepting, drains in-flight requests (bounded by `server.drain_timeout`), writes the
    /// runtime state if anything is pending and releases the state directory (so a process waiting
    /// for it takes over), and returns when every task has stopped.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        self.control.close().await;
    }
}

/// Serves until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run_until_signal(gateway: Gateway) {
    wait_for_signal().await;
    tracing::info!("shutting down: no new connections; draining in-flight requests");
    gateway.shutdown().await;
    tracing::info!("stopped");
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("can install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
