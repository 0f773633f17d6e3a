//! The route file: `file -> raw (serde) -> validate -> Config`.
//!
//! Invariants: a `Config` only exists if every check passed, so everything downstream (snapshot
//! build, the data path, the control plane) can rely on it: target names referenced by `live`,
//! `canary`, cohort rules (`rules`) and `[routes.shadow]` (`shadow`) exist, percents are in basis points 0..=10_000, every target has at least one instance,
//! (host, prefix) pairs are unique, durations are positive and bounded (at most a day; a bake and a
//! tunnel's lifetime after a flip at most 30 days). `Config` is immutable once built; a
//! reload builds a new one. No route file larger than `MAX_FILE_BYTES` is ever read whole: `read`
//! stops one byte past the limit, whatever the file's size claims (pipes, growing files).

pub mod analysis;
mod error;
pub mod raw;
pub mod rollout;
pub mod rules;
pub mod shadow;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{clip, ConfigError, ConfigErrors};
pub use rules::{Rule, RuleMatch};
pub use validate::{parse, percent_to_bp, MAX_LONG, MAX_TIMEOUT};

/// A validated route file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where it was read from; relative paths inside it resolve against this file's directory.
    pub path: PathBuf,
    /// Hash of the file's bytes: an unchanged file is a no-op reload.
    pub content_hash: u64,
    /// The file's text, to tell whether an earlier file was its beginning (a file written in steps).
    pub text: Text,
    pub server: Server,
    pub admin: Admin,
    pub state: State,
    pub log: Log,
    pub routes: Vec<Route>,
}

/// A route file's text. Shared, and shown by `Debug` as its length only.
#[derive(Clone, PartialEq, Eq)]
pub struct Text(pub std::sync::Arc<str>);

impl Text {
    /// Whether this text begins with the `len` bytes whose xxh3 hash is `hash` (`Config::content_hash`
    /// of an earlier file of that length): whether that file was a beginning of this one.
    pub fn starts_with_file(&self, len: u64, hash: u64) -> bool {
        usize::try_from(len)
            .ok()
            .and_then(|len| self.0.as_bytes().get(..len))
            .is_some_and(|head| xxhash_rust::xxh3::xxh3_64(head) == hash)
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.0.len() as u64
    }

    /// Whether the text is empty (a valid route file never is).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Text({} bytes)", self.0.len())
    }
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
    /// A response body (or the connection under it) that moves no byte in either direction this
    /// long is cut: an upstream stalled mid-body, or a client that stopped reading.
    pub body_idle_timeout: Duration,
    /// An upgraded tunnel (WebSocket) that moves no byte in either direction this long is closed.
    pub tunnel_idle_timeout: Duration,
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
    /// Whether the file names `token_env` itself. Only then is an unset variable a broken token
    /// source (mutations refused); the implicit default `FLIPGATE_ADMIN_TOKEN` may be absent.
    pub token_env_explicit: bool,
    /// File holding the bearer token (Kubernetes Secret mounts).
    pub token_file: Option<PathBuf>,
    /// Lower-cased `Host` names (IP literals in canonical form, no port) the admin listener
    /// accepts besides its own address and `localhost`: the defence against DNS rebinding.
    pub allowed_hosts: Vec<String>,
}

/// Runtime state persistence.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub dir: PathBuf,
    /// Where the runtime state is shared: `None` is the file backend (only `dir`), `Some` etcd
    /// (`dir` then keeps this replica's local copy).
    pub etcd: Option<Etcd>,
}

/// `[state.etcd]`, validated. Only a binary built with the `etcd` feature accepts it.
#[derive(Clone, PartialEq)]
pub struct Etcd {
    pub endpoints: Vec<String>,
    /// Ends with `/`.
    pub prefix: String,
    pub username: Option<String>,
    /// Where the password is read from at start (it is never kept in the config or logged).
    pub password: Option<Secret>,
    pub ca: Option<PathBuf>,
    /// Client certificate and key.
    pub identity: Option<(PathBuf, PathBuf)>,
    pub timeout: Duration,
    pub replica: String,
}

/// Where a secret is read from.
#[derive(Debug, Clone, PartialEq)]
pub enum Secret {
    File(PathBuf),
    Env(String),
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("username", &self.username)
            .field(
                "password",
                &self.password.as_ref().map(|_| "<from file or env>"),
            )
            .field("ca", &self.ca)
            .field("identity", &self.identity)
            .field("timeout", &self.timeout)
            .field("replica", &self.replica)
            .finish()
    }
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
    /// Cohort rules, in file order: evaluated before the split, first match wins.
    pub rules: Vec<Rule>,
    /// Defaults of a rollout of this route (`[routes.rollout]`, or the implicit ones).
    pub rollout: rollout::RolloutDefaults,
    /// gRPC status codes that count as a failure of the target, as a bit mask
    /// (`policy::grpc::is_error`); default UNKNOWN, INTERNAL, UNAVAILABLE, DATA_LOSS.
    pub grpc_errors: u32,
    /// Shadow traffic to an idle target (`[routes.shadow]`, `config::shadow`).
    pub shadow: Option<shadow::Shadow>,
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
    /// Per-instance weights (same index as `instances`; 1 unless the table form says otherwise).
    pub weights: Vec<u32>,
    /// How requests are spread over the instances (`lb`; power of two choices by default).
    pub lb: crate::upstream::balance::Lb,
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
    /// `threshold` (the fixed rate above) or `sequential` (`control::circuit::analysis`).
    pub mode: analysis::Mode,
    /// The sequential test's and the latency comparison's settings (used in either mode by
    /// `--require-healthy`; the latency test runs in either mode when `max_latency_ratio` is set).
    pub analysis: analysis::Analysis,
}

/// Largest route file flipgate reads: 4 MiB, about a thousand times a large real one. A bigger
/// file is refused before it is read whole, so a runaway generator cannot make flipgate hold it (and
/// quote it) in memory.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Reads a route file's text, at most `MAX_FILE_BYTES` of it: a file that says it is bigger is
/// refused without reading, and a read is cut one byte past the limit (a pipe, a file still growing).
pub fn read(path: &Path) -> Result<String, ConfigErrors> {
    use std::io::Read;
    let fail = |message: String| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            col: 0,
            field: String::new(),
            message,
        }])
    };
    let too_big = |size: &str| {
        fail(format!(
            "file is {size} bytes, over the {} MiB ({MAX_FILE_BYTES} bytes) limit for a route file; not read",
            MAX_FILE_BYTES / (1024 * 1024)
        ))
    };
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot read file: {e}")))?;
    if let Ok(meta) = file.metadata() {
        if meta.len() > MAX_FILE_BYTES {
            return Err(too_big(&meta.len().to_string()));
        }
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read file: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big(&format!("more than {MAX_FILE_BYTES}")));
    }
    String::from_utf8(bytes).map_err(|e| {
        fail(format!(
            "file is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

impl Config {
    /// Reads (at most `MAX_FILE_BYTES`) and validates a route file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        parse(path, &read(path)?)
    }

    /// Finds a route by name.
    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }
}
