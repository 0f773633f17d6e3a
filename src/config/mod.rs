//! The route file: `file -> raw (serde) -> validate -> Config`.
//!
//! Invariants: a `Config` only exists if every check passed, so everything downstream (snapshot
//! build, the data path, the control plane) can rely on it: target names referenced by `live` and
//! `canary` exist, percents are in basis points 0..=10_000, every target has at least one instance,
//! (host, prefix) pairs are unique, durations are positive. `Config` is immutable once built; a
//! reload builds a new one.

mod error;
pub mod raw;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{ConfigError, ConfigErrors};
pub use validate::{parse, percent_to_bp};

/// A validated route file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where it was read from; relative paths inside it resolve against this file's directory.
    pub path: PathBuf,
    /// Hash of the file's bytes: an unchanged file is a no-op reload.
    pub content_hash: u64,
    pub server: Server,
    pub admin: Admin,
    pub state: State,
    pub log: Log,
    pub routes: Vec<Route>,
}

/// Traffic listener settings. Listener addresses are fixed at start; limits apply on reload.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub listen: SocketAddr,
    /// Runtime worker threads; 0 means one per core.
    pub workers: usize,
    pub tls: Option<Tls>,
    pub connect_timeout: Duration,
    pub upstream_timeout: Duration,
    pub drain_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Request bodies above this are refused with 413; 0 means unlimited.
    pub max_body_bytes: u64,
    /// Concurrent downstream connections; 0 means unlimited.
    pub max_connections: usize,
    /// Concurrent requests to one upstream instance; 0 means unlimited.
    pub max_upstream_connections: usize,
    /// After a flip, tunnels (WebSockets) to a target that is no longer live are closed after this.
    pub tunnel_max_lifetime_after_flip: Option<Duration>,
    pub reuse_port: bool,
    /// Passive outlier ejection: upstream faults in a row that eject an instance (0 = off).
    pub outlier_failures: u32,
    /// Base ejection time (doubles for repeat offenders, up to 8x).
    pub outlier_ejection: Duration,
}

/// HTTPS termination.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub listen: SocketAddr,
    pub certs: Vec<CertPair>,
}

/// PEM files of one certificate chain and its key, already resolved to absolute-ish paths.
#[derive(Debug, Clone, PartialEq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Admin listener settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub listen: SocketAddr,
    /// Environment variable holding the bearer token for mutating calls.
    pub token_env: Option<String>,
    /// File holding the bearer token (Kubernetes Secret mounts).
    pub token_file: Option<PathBuf>,
}

/// Runtime state persistence.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub dir: PathBuf,
}

/// Access log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Off,
    Json,
    Logfmt,
}

/// Access log settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    pub access: AccessLogFormat,
    /// Share of requests logged, 0.0..=1.0.
    pub sample: f64,
}

/// One route: which requests it takes and how it splits them.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    /// Lower-cased host patterns; empty matches any host.
    pub hosts: Vec<HostPattern>,
    pub path_prefix: String,
    pub live: String,
    /// Sorted by name.
    pub targets: Vec<Target>,
    pub canary: Option<Canary>,
    pub preview: Option<Preview>,
    pub circuit: Option<Circuit>,
}

impl Route {
    /// Index of a target by name.
    pub fn target_index(&self, name: &str) -> Option<usize> {
        self.targets.iter().position(|t| t.name == name)
    }
}

/// A host pattern: exact (`bot.example.com`) or a leading wildcard (`*.example.com`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    /// Stored as the suffix including the leading dot: `.example.com`.
    Wildcard(String),
}

/// A deployment: a named set of instances.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    /// `host:port` authorities.
    pub instances: Vec<http::uri::Authority>,
    pub tls: bool,
    pub http2: bool,
    pub sni: Option<String>,
    pub ca: Option<PathBuf>,
    /// Active health checks of every instance, if configured.
    pub health_check: Option<HealthCheck>,
}

/// Active health check of a target's instances.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// Path (and query) requested with `GET`; 2xx and 3xx pass.
    pub path: http::uri::PathAndQuery,
    pub interval: Duration,
    /// Per-check timeout: the interval, capped at 2 s.
    pub timeout: Duration,
}

/// Which requests the canary takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Canary {
    pub target: String,
    /// Basis points: 1 = 0.01 %, 10_000 = 100 %.
    pub basis_points: u16,
    pub sticky: Sticky,
}

/// Where a sticky key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    None,
    /// Lower-cased header name.
    Header(http::HeaderName),
    Cookie(String),
}

/// Preview access to any target by header.
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    pub header: http::HeaderName,
    pub allow_from: Vec<ipnet::IpNet>,
}

/// How the candidate's error rate is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// Trip when the candidate's error rate exceeds `max_error_rate`.
    Absolute,
    /// Trip when it exceeds the live target's by more than `max_error_rate`.
    Live,
}

/// Automatic rollback settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Circuit {
    pub window: Duration,
    pub min_requests: u64,
    pub max_error_rate: f64,
    pub bake: Duration,
    pub compare: Compare,
    pub max_p99: Option<Duration>,
}

impl Config {
    /// Reads and validates a route file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        match std::fs::read_to_string(path) {
            Ok(text) => parse(path, &text),
            Err(e) => Err(ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 0,
                col: 0,
                field: String::new(),
                message: format!("cannot read file: {e}"),
            }])),
        }
    }

    /// Finds a route by name.
    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }
}
