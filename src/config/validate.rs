//! Raw -> validated config. Collects every error with its location instead of stopping at the first.
//!
//! Invariants: never panics on any input (the fuzz target drives `parse` directly); returns either a
//! fully valid `Config` or at least one `ConfigError`; all defaults live here, in one place; every
//! duration in a `Config` is positive and bounded (`MAX_TIMEOUT`, `MAX_LONG`), so adding one to a
//! clock reading cannot overflow.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize as _;
use toml::Spanned;

use super::error::{quote, Sink};
use super::raw::*;
use super::*;

/// Default listen addresses and timeouts, chosen to match what nginx/Envoy operators expect.
const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
const DEFAULT_PREVIEW_HEADER: &str = "x-flipgate-target";

/// Parses and validates route-file text. `path` is used for error messages and to resolve relative
/// paths (state dir, certificates) against the file's directory.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let mut sink = Sink::new(path, text);
    if text.trim().is_empty() {
        sink.push(0..0, "", "file is empty (refusing to serve no routes)");
        return Err(sink.finish());
    }
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            sink.push(span, "", e.message().trim().to_string());
            return Err(sink.finish());
        }
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let config = build(&mut sink, &base, path, text, raw);
    match config {
        Some(c) if sink.count() == 0 => Ok(c),
        _ => {
            if sink.count() == 0 {
                sink.push(0..0, "", "invalid configuration");
            }
            Err(sink.finish())
        }
    }
}

fn build(sink: &mut Sink, base: &Path, path: &Path, text: &str, raw: RawConfig) -> Option<Config> {
    let admin_span = raw.admin.listen.as_ref().map_or(0..0, |s| s.span());
    let server = server(sink, base, raw.server);
    let admin = admin(sink, base, raw.admin);
    if let (Some(s), Some(a)) = (&server, &admin) {
        distinct_listeners(sink, s, a, admin_span);
    }
    let state = state(sink, base, raw.state);
    let log = log(sink, raw.log);
    let mut routes = Vec::with_capacity(raw.routes.len());
    let mut name_spans = Vec::with_capacity(raw.routes.len());
    for r in raw.routes {
        let name_span = r.get_ref().name.span();
        if let Some(route) = route(sink, base, r) {
            routes.push(route);
            name_spans.push(name_span);
        }
    }
    if routes.is_empty() && sink.count() == 0 {
        sink.push(
            0..0,
            "routes",
            "no [[routes]] defined (refusing to serve no routes)",
        );
    }
    check_unique(sink, &routes, &name_spans);
    Some(Config {
        path: path.to_path_buf(),
        content_hash: xxhash_rust::xxh3::xxh3_64(text.as_bytes()),
        text: Text(text.into()),
        server: server?,
        admin: admin?,
        state,
        log,
        routes,
    })
}

/// Two listeners on one port would both bind (with `reuse_port`, silently; the kernel then splits
/// connections between them), so traffic could reach the admin API or the reverse.
fn distinct_listeners(sink: &mut Sink, server: &Server, admin: &Admin, span: Range<usize>) {
    let overlap = |a: SocketAddr, b: SocketAddr| {
        a.port() != 0
            && a.port() == b.port()
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
    };
    let mut named = vec![("server.listen", server.listen)];
    if let Some(t) = &server.tls {
        named.push(("server.tls.listen", t.listen));
    }
    for (field, a) in named {
        if overlap(a, admin.listen) {
            sink.push(
                span.clone(),
                "admin.listen",
                format!(
                    "`{}` overlaps {field} `{a}`: the admin API needs a port of its own",
                    admin.listen
                ),
            );
        }
    }
    if let Some(t) = &server.tls {
        if overlap(server.listen, t.listen) {
            sink.push(
                0..0,
                "server.tls.listen",
                format!(
                    "`{}` overlaps server.listen `{}`: HTTPS needs a port of its own",
                    t.listen, server.listen
                ),
            );
        }
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn addr(
    sink: &mut Sink,
    v: Option<Spanned<String>>,
    default: &str,
    field: &str,
) -> Option<SocketAddr> {
    match v {
        None => Some(default.parse().expect("default address parses")),
        Some(s) => match s.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                sink.push(
                    s.span(),
                    field,
                    format!(
                        "`{}` is not an IP:port address (example: \"0.0.0.0:8080\")",
                        quote(s.get_ref())
                    ),
                );
                None
            }
        },
    }
}

/// One day: the longest timeout, window, ejection, latency bound or health interval.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Thirty days: the longest `circuit.bake` and `server.tunnel_max_lifetime_after_flip`.
pub const MAX_LONG: Duration = Duration::from_secs(30 * 24 * 3600);

/// A duration setting: positive and at most `max`. Every duration ends up added to a clock reading
/// (flipgate's own sums saturate, hyper's do not) or to a persisted deadline, and a value past
/// these bounds ("100000000y") is a typo, not an intent.
pub(super) fn duration(
    sink: &mut Sink,
    v: Option<Spanned<String>>,
    default: Duration,
    max: Duration,
    field: &str,
) -> Duration {
    let Some(s) = v else { return default };
    match humantime::parse_duration(s.get_ref()) {
        Ok(d) if d > max => {
            sink.push(
                s.span(),
                field,
                format!(
                    "`{}` is longer than the maximum of {} for this setting",
                    quote(s.get_ref()),
                    humantime::format_duration(max)
                ),
            );
            default
        }
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            sink.push(s.span(), field, "duration must be greater than zero");
            default
        }
        Err(e) => {
            sink.push(
                s.span(),
                field,
                format!(
                    "`{}` is not a duration ({}); examples: \"500ms\", \"30s\", \"5m\"",
                    quote(s.get_ref()),
                    quote(&e.to_string())
                ),
            );
            default
        }
    }
}

pub(super) fn count(
    sink: &mut Sink,
    v: Option<Spanned<i64>>,
    default: u64,
    min: i64,
    field: &str,
) -> u64 {
    let Some(s) = v else { return default };
    let n = *s.get_ref();
    if n < min {
        sink.push(s.span(), field, format!("must be at least {min}, got {n}"));
        return default;
    }
    n as u64
}

fn server(sink: &mut Sink, base: &Path, raw: RawServer) -> Option<Server> {
    let listen = addr(sink, raw.listen, DEFAULT_LISTEN, "server.listen");
    let workers = count(sink, raw.workers, 0, 0, "server.workers") as usize;
    let tls = raw.tls.and_then(|t| {
        let span = t.span();
        let t = t.into_inner();
        let listen = addr(sink, Some(t.listen), "", "server.tls.listen")?;
        if t.certs.is_empty() {
            sink.push(
                span,
                "server.tls.certs",
                "at least one { cert, key } pair is required",
            );
            return None;
        }
        let certs = t
            .certs
            .into_iter()
            .map(|c| {
                let c = c.into_inner();
                CertPair {
                    cert: resolve(base, &c.cert),
                    key: resolve(base, &c.key),
                }
            })
            .collect();
        Some(Tls { listen, certs })
    });
    let s = Server {
        listen: listen?,
        workers,
        tls,
        connect_timeout: duration(
            sink,
            raw.connect_timeout,
            Duration::from_secs(2),
            MAX_TIMEOUT,
            "server.connect_timeout",
        ),
        upstream_timeout: duration(
            sink,
            raw.upstream_timeout,
            Duration::from_secs(60),
            MAX_TIMEOUT,
            "server.upstream_timeout",
        ),
        drain_timeout: duration(
            sink,
            raw.drain_timeout,
            Duration::from_secs(30),
            MAX_TIMEOUT,
            "server.drain_timeout",
        ),
        header_read_timeout: duration(
            sink,
            raw.header_read_timeout,
            Duration::from_secs(10),
            MAX_TIMEOUT,
            "server.header_read_timeout",
        ),
        idle_timeout: duration(
            sink,
            raw.idle_timeout,
            Duration::from_secs(60),
            MAX_TIMEOUT,
            "server.idle_timeout",
        ),
        pool_idle_timeout: duration(
            sink,
            raw.pool_idle_timeout,
            Duration::from_secs(4),
            MAX_TIMEOUT,
            "server.pool_idle_timeout",
        ),
        body_idle_timeout: duration(
            sink,
            raw.body_idle_timeout,
            Duration::from_secs(60),
            MAX_TIMEOUT,
            "server.body_idle_timeout",
        ),
        tunnel_idle_timeout: duration(
            sink,
            raw.tunnel_idle_timeout,
            Duration::from_secs(600),
            MAX_TIMEOUT,
            "server.tunnel_idle_timeout",
        ),
        max_header_bytes: count(
            sink,
            raw.max_header_bytes,
            64 * 1024,
            1024,
            "server.max_header_bytes",
        ) as usize,
        max_headers: count(sink, raw.max_headers, 100, 1, "server.max_headers") as usize,
        max_body_bytes: count(
            sink,
            raw.max_body_bytes,
            16 * 1024 * 1024,
            0,
            "server.max_body_bytes",
        ),
        max_connections: count(sink, raw.max_connections, 0, 0, "server.max_connections") as usize,
        max_upstream_connections: count(
            sink,
            raw.max_upstream_connections,
            0,
            0,
            "server.max_upstream_connections",
        ) as usize,
        tunnel_max_lifetime_after_flip: raw.tunnel_max_lifetime_after_flip.map(|v| {
            duration(
                sink,
                Some(v),
                Duration::from_secs(3600),
                MAX_LONG,
                "server.tunnel_max_lifetime_after_flip",
            )
        }),
        reuse_port: raw.reuse_port.unwrap_or(false),
        outlier_failures: count(sink, raw.outlier_failures, 5, 0, "server.outlier_failures")
            .min(u32::MAX as u64) as u32,
        outlier_ejection: duration(
            sink,
            raw.outlier_ejection,
            Duration::from_secs(10),
            MAX_TIMEOUT,
            "server.outlier_ejection",
        ),
    };
    Some(s)
}

/// `[state]`: the state directory, and the etcd store when `backend = "etcd"`.
fn state(sink: &mut Sink, base: &Path, raw: RawState) -> State {
    let dir = resolve(base, raw.dir.as_deref().unwrap_or("state"));
    let etcd_span = raw.etcd.as_ref().map_or(0..0, |e| e.span());
    let etcd = match raw.backend.as_ref().map(|b| b.get_ref().as_str()) {
        None | Some("file") => {
            if raw.etcd.is_some() {
                sink.push(
                    etcd_span,
                    "state.etcd",
                    "[state.etcd] is set but the backend is `file`; add `backend = \"etcd\"` to [state] to use it",
                );
            }
            None
        }
        Some("etcd") if !cfg!(feature = "etcd") => {
            sink.push(
                raw.backend.as_ref().expect("matched").span(),
                "state.backend",
                "this flipgate was built without etcd support; build it with `cargo build --release --features etcd` (needs `protoc`: apt-get install protobuf-compiler), or use backend = \"file\"",
            );
            None
        }
        Some("etcd") => match raw.etcd {
            None => {
                sink.push(
                    raw.backend.as_ref().expect("matched").span(),
                    "state.backend",
                    "backend = \"etcd\" needs a [state.etcd] table with `endpoints`",
                );
                None
            }
            Some(e) => etcd(sink, base, etcd_span, e.into_inner()),
        },
        Some(other) => {
            sink.push(
                raw.backend.as_ref().expect("matched").span(),
                "state.backend",
                format!(
                    "unknown state backend `{}`; expected \"file\" or \"etcd\"",
                    quote(other)
                ),
            );
            None
        }
    };
    State { dir, etcd }
}

/// Default `[state.etcd] prefix`.
const DEFAULT_ETCD_PREFIX: &str = "/flipgate/";

fn etcd(sink: &mut Sink, base: &Path, span: Range<usize>, raw: RawEtcd) -> Option<Etcd> {
    if raw.endpoints.is_empty() {
        sink.push(
            span,
            "state.etcd.endpoints",
            "no endpoints; example: endpoints = [\"http://127.0.0.1:2379\"]",
        );
        return None;
    }
    let mut endpoints = Vec::with_capacity(raw.endpoints.len());
    for e in raw.endpoints {
        let text = e.get_ref();
        let ok = text.parse::<http::Uri>().ok().filter(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
        });
        if ok.is_none() {
            sink.push(
                e.span(),
                "state.etcd.endpoints",
                format!(
                    "`{}` is not an etcd endpoint URL (example: \"http://10.0.0.5:2379\")",
                    quote(text)
                ),
            );
        }
        endpoints.push(e.into_inner());
    }
    let prefix = match raw.prefix {
        None => DEFAULT_ETCD_PREFIX.to_string(),
        Some(p) if p.get_ref().is_empty() => {
            sink.push(
                p.span(),
                "state.etcd.prefix",
                "prefix must not be empty (example: \"/flipgate/\")",
            );
            DEFAULT_ETCD_PREFIX.to_string()
        }
        Some(p) if p.get_ref().ends_with('/') => p.into_inner(),
        Some(p) => format!("{}/", p.into_inner()),
    };
    let password = match (raw.password_file, raw.password_env) {
        (Some(_), Some(e)) => {
            sink.push(
                e.span(),
                "state.etcd.password_env",
                "set password_file or password_env, not both",
            );
            None
        }
        (Some(f), None) => Some(Secret::File(resolve(base, &f))),
        (None, Some(e)) => Some(Secret::Env(e.into_inner())),
        (None, None) => None,
    };
    let username = raw.username.map(Spanned::into_inner);
    if password.is_some() != username.is_some() {
        sink.push(
            span.clone(),
            "state.etcd.username",
            "username and a password (password_file or password_env) go together",
        );
    }
    let identity = match (raw.cert, raw.key) {
        (Some(c), Some(k)) => Some((resolve(base, &c), resolve(base, &k))),
        (None, None) => None,
        _ => {
            sink.push(
                span.clone(),
                "state.etcd.cert",
                "a client certificate needs both `cert` and `key`",
            );
            None
        }
    };
    if raw.ca.is_none() {
        if let Some(e) = endpoints.iter().find(|e| e.starts_with("https:")) {
            sink.push(
                span.clone(),
                "state.etcd.ca",
                format!("endpoint `{}` uses TLS: set `ca` to the CA certificate (PEM) that signs etcd's certificates", quote(e)),
            );
        }
    }
    if identity.is_some() && raw.ca.is_none() {
        sink.push(
            span,
            "state.etcd.ca",
            "a client certificate needs TLS: set `ca` too",
        );
    }
    let replica = match raw.replica {
        Some(r) if r.get_ref().is_empty() || r.get_ref().contains('/') => {
            sink.push(
                r.span(),
                "state.etcd.replica",
                "a replica name is not empty and has no `/`",
            );
            None
        }
        Some(r) => Some(r.into_inner()),
        None => None,
    };
    Some(Etcd {
        endpoints,
        prefix,
        username,
        password,
        ca: raw.ca.map(|c| resolve(base, &c)),
        identity,
        timeout: duration(
            sink,
            raw.timeout,
            Duration::from_secs(2),
            Duration::from_secs(60),
            "state.etcd.timeout",
        ),
        replica: replica.unwrap_or_else(default_replica),
    })
}

/// This replica's default name: the host name (a Kubernetes pod's name) and the PID.
fn default_replica() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().replace('/', "_"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "flipgate".into());
    format!("{host}-{}", std::process::id())
}

fn admin(sink: &mut Sink, base: &Path, raw: RawAdmin) -> Option<Admin> {
    let listen = addr(sink, raw.listen, DEFAULT_ADMIN, "admin.listen")?;
    let token_env_explicit = raw
        .token_env
        .as_ref()
        .is_some_and(|s| !s.get_ref().is_empty());
    // Defaults to the variable the CLI reads, so one exported token serves both; "" disables.
    let token_env = match raw.token_env {
        None => Some("FLIPGATE_ADMIN_TOKEN".to_string()),
        Some(s) if s.get_ref().is_empty() => None,
        Some(s) => {
            let name = s.get_ref();
            if name.trim() != name || name.contains(['=', '\0']) {
                sink.push(
                    s.span(),
                    "admin.token_env",
                    format!(
                        "`{}` is not an environment variable name; use \"\" to turn the variable lookup off",
                        name.escape_debug()
                    ),
                );
            }
            Some(s.into_inner())
        }
    };
    let mut allowed_hosts = Vec::with_capacity(raw.allowed_hosts.len());
    for h in raw.allowed_hosts {
        match crate::admin::guard::normalize_host_name(h.get_ref()) {
            Some(n) => allowed_hosts.push(n),
            None => sink.push(
                h.span(),
                "admin.allowed_hosts",
                format!(
                    "`{}` is not a host name or IP address (no scheme, port, path or wildcard: list each name)",
                    h.get_ref().escape_debug()
                ),
            ),
        }
    }
    Some(Admin {
        listen,
        token_env,
        token_env_explicit,
        token_file: raw.token_file.map(|f| resolve(base, &f)),
        allowed_hosts,
    })
}

fn log(sink: &mut Sink, raw: RawLog) -> Log {
    let access = match raw.access {
        None => AccessLogFormat::Off,
        Some(s) => match s.get_ref().as_str() {
            "off" => AccessLogFormat::Off,
            "json" => AccessLogFormat::Json,
            "logfmt" => AccessLogFormat::Logfmt,
            other => {
                sink.push(
                    s.span(),
                    "log.access",
                    format!(
                        "unknown format `{}`; expected \"off\", \"json\" or \"logfmt\"",
                        quote(other)
                    ),
                );
                AccessLogFormat::Off
            }
        },
    };
    let sample = match raw.sample {
        None => 1.0,
        Some(s) => {
            let v = *s.get_ref();
            if !(0.0..=1.0).contains(&v) {
                sink.push(
                    s.span(),
                    "log.sample",
                    format!("must be between 0.0 and 1.0, got {v}"),
                );
            }
            v.clamp(0.0, 1.0)
        }
    };
    Log { access, sample }
}

fn route(sink: &mut Sink, base: &Path, raw: Spanned<RawRoute>) -> Option<Route> {
    let raw = raw.into_inner();
    let name = raw.name.get_ref().clone();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        sink.push(
            raw.name.span(),
            "routes.name",
            format!(
                "route name `{}` must be non-empty and use only letters, digits, '-', '_' and '.'",
                quote(&name)
            ),
        );
    }
    let f = |field: &str| format!("routes[{}].{field}", quote(&name));
    let errors_before = sink.count();

    let mut hosts = Vec::new();
    for h in &raw.hosts {
        match host_pattern(h.get_ref()) {
            Ok(p) => hosts.push(p),
            Err(msg) => sink.push(h.span(), f("hosts"), msg),
        }
    }

    let path_prefix = match &raw.path_prefix {
        None => "/".to_string(),
        Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
        Some(p) => {
            sink.push(
                p.span(),
                f("path_prefix"),
                format!("`{}` must start with '/'", quote(p.get_ref())),
            );
            "/".to_string()
        }
    };

    let targets_span = raw.targets.span();
    let mut targets = Vec::new();
    for (tname, value) in raw.targets.into_inner() {
        if let Some(t) = target(sink, base, &name, tname, value) {
            targets.push(t);
        }
    }
    if targets.is_empty() && sink.count() == errors_before {
        sink.push(
            targets_span.clone(),
            f("targets"),
            "at least one target is required",
        );
    }
    let known = |t: &str| targets.iter().any(|x| x.name == t);
    let names = || {
        let all = targets
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        quote(&all).into_owned()
    };

    let live = raw.live.get_ref().clone();
    if !targets.is_empty() && !known(&live) {
        sink.push(
            raw.live.span(),
            f("live"),
            format!(
                "unknown target `{}`; defined targets: {}",
                quote(&live),
                names()
            ),
        );
    }

    let canary = raw.canary.and_then(|c| {
        let c = c.into_inner();
        let target = c.target.get_ref().clone();
        let mut ok = true;
        if !targets.is_empty() && !known(&target) {
            sink.push(
                c.target.span(),
                f("canary.target"),
                format!(
                    "unknown target `{}`; defined targets: {}",
                    quote(&target),
                    names()
                ),
            );
            ok = false;
        }
        let percent = *c.percent.get_ref();
        if target == live {
            // An idle canary on the live target (what a flip by editing `live` leaves behind) is
            // no canary: nothing to complain about. One that would take traffic is a mistake.
            if percent == 0.0 {
                return None;
            }
            sink.push(
                c.target.span(),
                f("canary.target"),
                format!(
                    "canary target `{}` is already the live target; point the canary at another target, set `percent = 0`, or remove [routes.canary]",
                    quote(&target)
                ),
            );
            ok = false;
        }
        let basis_points = match percent_to_bp(percent) {
            Some(bp) => bp,
            None => {
                sink.push(
                    c.percent.span(),
                    f("canary.percent"),
                    format!("must be between 0 and 100, got {percent}"),
                );
                ok = false;
                0
            }
        };
        let sticky = match c.sticky {
            None => Sticky::None,
            Some(s) => match sticky(s.get_ref()) {
                Ok(st) => st,
                Err(msg) => {
                    sink.push(s.span(), f("canary.sticky"), msg);
                    ok = false;
                    Sticky::None
                }
            },
        };
        ok.then_some(Canary {
            target,
            basis_points,
            sticky,
        })
    });

    let preview = raw.preview.and_then(|p| {
        let p = p.into_inner();
        let header = match &p.header {
            None => http::HeaderName::from_static(DEFAULT_PREVIEW_HEADER),
            Some(h) => match http::HeaderName::from_bytes(h.get_ref().as_bytes()) {
                Ok(n) => n,
                Err(_) => {
                    sink.push(
                        h.span(),
                        f("preview.header"),
                        format!("`{}` is not a valid header name", quote(h.get_ref())),
                    );
                    return None;
                }
            },
        };
        let mut allow_from = Vec::new();
        if p.allow_from.is_empty() {
            allow_from.push("127.0.0.0/8".parse().expect("valid"));
            allow_from.push("::1/128".parse().expect("valid"));
        }
        for c in &p.allow_from {
            match parse_cidr(c.get_ref()) {
                Some(net) => allow_from.push(net),
                None => sink.push(
                    c.span(),
                    f("preview.allow_from"),
                    format!(
                        "`{}` is not a CIDR (example: \"10.0.0.0/8\") or IP address",
                        quote(c.get_ref())
                    ),
                ),
            }
        }
        Some(Preview { header, allow_from })
    });

    let circuit = raw.circuit.map(|c| {
        let mut c = c.into_inner();
        let max_error_rate = match c.max_error_rate.take() {
            None => 0.05,
            Some(r) => {
                let v = *r.get_ref();
                if !(0.0..=1.0).contains(&v) {
                    sink.push(
                        r.span(),
                        f("circuit.max_error_rate"),
                        format!("must be between 0.0 and 1.0, got {v}"),
                    );
                }
                v.clamp(0.0, 1.0)
            }
        };
        let compare = match c.compare.take() {
            None => Compare::Absolute,
            Some(s) => match s.get_ref().as_str() {
                "absolute" | "none" => Compare::Absolute,
                "live" => Compare::Live,
                other => {
                    sink.push(
                        s.span(),
                        f("circuit.compare"),
                        format!(
                            "unknown mode `{}`; expected \"absolute\" or \"live\"",
                            quote(other)
                        ),
                    );
                    Compare::Absolute
                }
            },
        };
        let (mode, analysis) = super::analysis::validate(sink, &f, &mut c, max_error_rate);
        Circuit {
            mode,
            analysis,
            window: duration(
                sink,
                c.window,
                Duration::from_secs(30),
                MAX_TIMEOUT,
                &f("circuit.window"),
            ),
            min_requests: count(sink, c.min_requests, 20, 1, &f("circuit.min_requests")),
            max_error_rate,
            bake: duration(
                sink,
                c.bake,
                Duration::from_secs(300),
                MAX_LONG,
                &f("circuit.bake"),
            ),
            compare,
            max_p99: c.max_p99.map(|v| {
                duration(
                    sink,
                    Some(v),
                    Duration::from_secs(1),
                    MAX_TIMEOUT,
                    &f("circuit.max_p99"),
                )
            }),
        }
    });

    let target_names = targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>();
    let rules = super::rules::validate(sink, &name, &target_names, raw.rules);
    let rollout = super::rollout::validate(
        sink,
        &name,
        raw.rollout,
        circuit.as_ref().map(|c| c.min_requests),
    );
    let shadow = super::shadow::validate(sink, &name, &target_names, &live, raw.shadow);

    if sink.count() != errors_before {
        return None;
    }
    let grpc_errors = match raw.grpc_error_codes {
        None => crate::policy::grpc::DEFAULT_ERRORS,
        Some(codes) => codes.iter().fold(0, |mask, c| {
            match crate::policy::grpc::code(c.get_ref()) {
                Some(code) => mask | 1 << code,
                None => {
                    sink.push(
                        c.span(),
                        "routes.grpc_error_codes",
                        format!(
                            "`{}` is not a gRPC status code; use a name such as \"INTERNAL\" or \"UNAVAILABLE\", or a number 0-16",
                            quote(c.get_ref())
                        ),
                    );
                    mask
                }
            }
        }),
    };
    Some(Route {
        name,
        hosts,
        path_prefix,
        live,
        targets,
        canary,
        preview,
        circuit,
        rules,
        rollout,
        grpc_errors,
        shadow,
    })
}

/// Percent (0..=100, fractional) to basis points, rounding to the 0.01 % resolution.
pub fn percent_to_bp(percent: f64) -> Option<u16> {
    if percent.is_finite() && (0.0..=100.0).contains(&percent) {
        Some((percent * 100.0).round() as u16)
    } else {
        None
    }
}

fn target(
    sink: &mut Sink,
    base: &Path,
    route: &str,
    name: String,
    value: Spanned<toml::Value>,
) -> Option<Target> {
    let span: Range<usize> = value.span();
    let field = format!("routes[{}].targets.{}", quote(route), quote(&name));
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        sink.push(
            span.clone(),
            &field,
            format!(
                "target name `{}` must use only letters, digits, '-' and '_'",
                quote(&name)
            ),
        );
        return None;
    }
    let table = match value.into_inner() {
        toml::Value::Array(items) => {
            let mut instances = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    s @ toml::Value::String(_) => instances.push(s),
                    other => {
                        sink.push(
                            span.clone(),
                            &field,
                            format!(
                                "instances must be \"host:port\" strings, found {}",
                                other.type_str()
                            ),
                        );
                        return None;
                    }
                }
            }
            RawTargetTable {
                instances,
                lb: None,
                tls: false,
                http2: false,
                sni: None,
                ca: None,
                health_check: None,
                health_interval: None,
            }
        }
        v @ toml::Value::Table(_) => match RawTargetTable::deserialize(v) {
            Ok(t) => t,
            Err(e) => {
                sink.push(span, &field, e.message().trim().to_string());
                return None;
            }
        },
        other => {
            sink.push(
                span,
                &field,
                format!(
                    "expected a list of \"host:port\" or a table with `instances`, found {}",
                    other.type_str()
                ),
            );
            return None;
        }
    };
    if table.instances.is_empty() {
        sink.push(span, &field, "target has no instances");
        return None;
    }
    let mut instances = Vec::with_capacity(table.instances.len());
    let mut weights = Vec::with_capacity(table.instances.len());
    for v in &table.instances {
        match instance_entry(v) {
            Ok((a, w)) => {
                instances.push(a);
                weights.push(w);
            }
            Err(msg) => {
                sink.push(span.clone(), &field, msg);
                return None;
            }
        }
    }
    let lb = match table.lb.as_deref().map(crate::upstream::balance::Lb::parse) {
        None => crate::upstream::balance::Lb::default(),
        Some(Some(lb)) => lb,
        Some(None) => {
            sink.push(
                span,
                &field,
                format!(
                    "lb `{}` is not a balancing policy; use \"p2c\" (power of two choices, the default) or \"round_robin\"",
                    quote(table.lb.as_deref().unwrap_or_default())
                ),
            );
            return None;
        }
    };
    if !table.tls && (table.sni.is_some() || table.ca.is_some()) {
        sink.push(
            span,
            &field,
            "`sni` and `ca` apply to TLS upstreams only; add `tls = true`",
        );
        return None;
    }
    if let Some(sni) = &table.sni {
        if rustls::pki_types::ServerName::try_from(sni.as_str()).is_err() {
            sink.push(
                span,
                &field,
                format!("sni `{}` is not a valid DNS name or IP address", quote(sni)),
            );
            return None;
        }
    }
    let ca = table.ca.map(|c| resolve(base, &c));
    if let Some(path) = &ca {
        if let Err(e) = crate::upstream::read_ca(path) {
            sink.push(span, &field, format!("ca: {e}"));
            return None;
        }
    }
    let health_check = match table.health_check {
        None => None,
        Some(path) => {
            let parsed = path
                .parse::<http::uri::PathAndQuery>()
                .ok()
                .filter(|p| p.as_str().starts_with('/'));
            let interval = match table
                .health_interval
                .as_deref()
                .map(humantime::parse_duration)
            {
                None => Ok(Duration::from_secs(5)),
                Some(Ok(d)) if d >= Duration::from_millis(100) && d <= MAX_TIMEOUT => Ok(d),
                Some(_) => Err(()),
            };
            match (parsed, interval) {
                (Some(path), Ok(interval)) => Some(HealthCheck {
                    path,
                    interval,
                    timeout: interval.min(Duration::from_secs(2)),
                }),
                (None, _) => {
                    sink.push(
                        span,
                        &field,
                        format!(
                            "health_check `{}` must be a path starting with '/'",
                            quote(&path)
                        ),
                    );
                    return None;
                }
                (_, Err(())) => {
                    sink.push(
                        span,
                        &field,
                        "health_interval must be a duration of at least 100ms and at most 1day (example: \"5s\")",
                    );
                    return None;
                }
            }
        }
    };
    Some(Target {
        name,
        instances,
        weights,
        lb,
        tls: table.tls,
        http2: table.http2,
        sni: table.sni,
        ca,
        health_check,
    })
}

/// Validates an upstream `host:port`.
/// Largest `weight` of an instance.
const MAX_WEIGHT: i64 = 10_000;

/// One entry of a target's `instances`: `"host:port"` (weight 1) or, in the table form,
/// `{ addr = "host:port", weight = N }`.
fn instance_entry(v: &toml::Value) -> Result<(http::uri::Authority, u32), String> {
    let t = match v {
        toml::Value::String(s) => return Ok((instance(s)?, 1)),
        toml::Value::Table(t) => t,
        other => {
            return Err(format!(
                "instances must be \"host:port\" strings or {{ addr = \"host:port\", weight = N }} tables, found {}",
                other.type_str()
            ))
        }
    };
    if let Some(k) = t.keys().find(|k| *k != "addr" && *k != "weight") {
        return Err(format!(
            "unknown field `{}` in an instance; expected `addr` or `weight`",
            quote(k)
        ));
    }
    let Some(toml::Value::String(addr)) = t.get("addr") else {
        return Err("an instance table needs `addr = \"host:port\"`".into());
    };
    let weight = match t.get("weight") {
        None => 1,
        Some(toml::Value::Integer(w)) if (1..=MAX_WEIGHT).contains(w) => *w as u32,
        Some(w) => {
            return Err(format!(
                "weight of `{}` must be an integer from 1 to {MAX_WEIGHT}, found {w}",
                quote(addr)
            ))
        }
    };
    Ok((instance(addr)?, weight))
}

fn instance(s: &str) -> Result<http::uri::Authority, String> {
    let bad = || {
        format!(
            "`{}` is not a host:port address (example: \"10.0.0.11:3000\")",
            quote(s)
        )
    };
    let a: http::uri::Authority = s.parse().map_err(|_| bad())?;
    if a.as_str().contains('@') || a.port_u16().is_none() || a.host().is_empty() {
        return Err(bad());
    }
    if a.port_u16() == Some(0) {
        return Err(format!(
            "`{}`: port 0 is not a valid upstream port",
            quote(s)
        ));
    }
    Ok(a)
}

fn host_pattern(h: &str) -> Result<HostPattern, String> {
    let lower = h.to_ascii_lowercase();
    let (wild, rest) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let valid = !rest.is_empty()
        && rest.len() <= 253
        && rest.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !valid {
        return Err(format!(
            "`{}` is not a host name; use \"bot.example.com\" or \"*.example.com\" (no port, no scheme)",
            quote(h)
        ));
    }
    Ok(if wild {
        HostPattern::Wildcard(format!(".{rest}"))
    } else {
        HostPattern::Exact(rest.to_string())
    })
}

fn sticky(s: &str) -> Result<Sticky, String> {
    if s == "none" {
        return Ok(Sticky::None);
    }
    if let Some(h) = s.strip_prefix("header:") {
        return http::HeaderName::from_bytes(h.as_bytes())
            .map(Sticky::Header)
            .map_err(|_| format!("`{}` is not a valid header name", quote(h)));
    }
    if let Some(c) = s.strip_prefix("cookie:") {
        if !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
        {
            return Ok(Sticky::Cookie(c.to_string()));
        }
        return Err(format!("`{}` is not a valid cookie name", quote(c)));
    }
    Err(format!(
        "`{}` is not a sticky key; expected \"header:NAME\", \"cookie:NAME\" or \"none\"",
        quote(s)
    ))
}

fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

fn check_unique(sink: &mut Sink, routes: &[Route], name_spans: &[Range<usize>]) {
    let mut names = HashSet::new();
    let mut pairs = HashSet::new();
    for (r, at) in routes.iter().zip(name_spans) {
        if !names.insert(r.name.as_str()) {
            sink.push(
                at.clone(),
                format!("routes[{}].name", quote(&r.name)),
                "duplicate route name",
            );
        }
        let hosts: Vec<Option<&HostPattern>> = if r.hosts.is_empty() {
            vec![None]
        } else {
            r.hosts.iter().map(Some).collect()
        };
        for h in hosts {
            if !pairs.insert((h, r.path_prefix.as_str())) {
                let host = match h {
                    None => "any host".to_string(),
                    Some(HostPattern::Exact(e)) => e.clone(),
                    Some(HostPattern::Wildcard(w)) => format!("*{w}"),
                };
                sink.push(
                    at.clone(),
                    format!("routes[{}]", quote(&r.name)),
                    format!(
                        "({}, path_prefix \"{}\") is already taken by another route",
                        quote(&host),
                        quote(&r.path_prefix)
                    ),
                );
            }
        }
    }
}
