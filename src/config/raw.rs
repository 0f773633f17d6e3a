//! Raw route-file types: exactly what serde reads from TOML, nothing more.
//!
//! Invariants: every table denies unknown keys, so a typo is an error and never silently ignored;
//! fields that validation may reject are `Spanned` so the error can name a line and column. Nothing
//! here is seen by the data path: `config::validate` turns these into `config::Config`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The whole route file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
}

/// `[server]`: the traffic listener and the limits that protect it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub workers: Option<Spanned<i64>>,
    pub tls: Option<Spanned<RawTls>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub upstream_timeout: Option<Spanned<String>>,
    pub drain_timeout: Option<Spanned<String>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub pool_idle_timeout: Option<Spanned<String>>,
    pub body_idle_timeout: Option<Spanned<String>>,
    pub tunnel_idle_timeout: Option<Spanned<String>>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_body_bytes: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_upstream_connections: Option<Spanned<i64>>,
    pub tunnel_max_lifetime_after_flip: Option<Spanned<String>>,
    pub reuse_port: Option<bool>,
    pub outlier_failures: Option<Spanned<i64>>,
    pub outlier_ejection: Option<Spanned<String>>,
}

/// `[server.tls]`: HTTPS termination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub listen: Spanned<String>,
    pub certs: Vec<Spanned<RawCertPair>>,
}

/// One certificate chain and its private key, both PEM files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertPair {
    pub cert: String,
    pub key: String,
}

/// `[admin]`: the control-plane listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Spanned<String>>,
    pub token_env: Option<Spanned<String>>,
    pub token_file: Option<String>,
    /// `Host` names the admin listener answers besides its own address and `localhost`.
    #[serde(default)]
    pub allowed_hosts: Vec<Spanned<String>>,
}

/// `[state]`: where runtime decisions are persisted.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub dir: Option<String>,
    /// `file` (the default) or `etcd`.
    pub backend: Option<Spanned<String>>,
    pub etcd: Option<Spanned<RawEtcd>>,
}

/// `[state.etcd]`: the shared store of a fleet's runtime state (`backend = "etcd"`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEtcd {
    #[serde(default)]
    pub endpoints: Vec<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub username: Option<Spanned<String>>,
    /// File holding the password (a Secret mount); never logged.
    pub password_file: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<Spanned<String>>,
    /// CA certificate (PEM) that signs the etcd servers' certificates: turns TLS on.
    pub ca: Option<String>,
    /// Client certificate and key (PEM), for etcd's client-certificate authentication.
    pub cert: Option<String>,
    pub key: Option<String>,
    /// How long one request to etcd may take (an admin change answers 503 past it).
    pub timeout: Option<Spanned<String>>,
    /// This replica's name in the fleet (default: host name and PID).
    pub replica: Option<Spanned<String>>,
}

/// `[log]`: access log format and sampling.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub access: Option<Spanned<String>>,
    pub sample: Option<Spanned<f64>>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Spanned<String>,
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub live: Spanned<String>,
    pub targets: Spanned<BTreeMap<String, Spanned<toml::Value>>>,
    pub canary: Option<Spanned<RawCanary>>,
    pub preview: Option<Spanned<RawPreview>>,
    pub circuit: Option<Spanned<RawCircuit>>,
    /// `[[routes.rules]]`: cohort rules (`config::rules`).
    #[serde(default)]
    pub rules: Vec<Spanned<super::rules::RawRule>>,
    /// `[routes.rollout]`: defaults of `flipgate rollout` (`config::rollout`).
    pub rollout: Option<Spanned<super::rollout::RawRollout>>,
    /// gRPC status codes (names or numbers) that count as a failure of the target.
    pub grpc_error_codes: Option<Vec<Spanned<String>>>,
    /// `[routes.shadow]`: shadow traffic (`config::shadow`).
    pub shadow: Option<Spanned<super::shadow::RawShadow>>,
}

/// The table form of a target: instances plus upstream protocol options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTargetTable {
    /// `"host:port"` strings or `{ addr = "host:port", weight = N }` tables (`validate::instance_entry`).
    pub instances: Vec<toml::Value>,
    /// `"p2c"` (default) or `"round_robin"`.
    pub lb: Option<String>,
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub http2: bool,
    pub sni: Option<String>,
    pub ca: Option<String>,
    /// Path for active health checks (`GET`), e.g. "/healthz"; none = passive ejection only.
    pub health_check: Option<String>,
    pub health_interval: Option<String>,
}

/// `[routes.canary]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCanary {
    pub target: Spanned<String>,
    pub percent: Spanned<f64>,
    pub sticky: Option<Spanned<String>>,
}

/// `[routes.preview]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPreview {
    pub header: Option<Spanned<String>>,
    #[serde(default)]
    pub allow_from: Vec<Spanned<String>>,
}

/// `[routes.circuit]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCircuit {
    pub window: Option<Spanned<String>>,
    pub min_requests: Option<Spanned<i64>>,
    pub max_error_rate: Option<Spanned<f64>>,
    pub bake: Option<Spanned<String>>,
    pub compare: Option<Spanned<String>>,
    pub max_p99: Option<Spanned<String>>,
    pub mode: Option<Spanned<String>>,
    pub detect: Option<Spanned<f64>>,
    pub detect_points: Option<Spanned<f64>>,
    pub false_trip: Option<Spanned<f64>>,
    pub power: Option<Spanned<f64>>,
    pub max_latency_ratio: Option<Spanned<f64>>,
    pub latency_quantile: Option<Spanned<f64>>,
}
