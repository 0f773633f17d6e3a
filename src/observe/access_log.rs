//! Access log: one structured line per proxied request, JSON or logfmt as the route file says.
//!
//! Invariants: off by default, and then the request path pays one match on an enum from the
//! snapshot it already loaded (no formatting, no allocation, no random draw). When on, a request is
//! logged with probability `log.sample`; only sampled requests format anything. Lines are emitted
//! through `tracing` as events of target [`TARGET`] whose message is the finished line, so
//! operators can filter or route them like any other target; [`layer`] writes exactly those
//! messages, one per line, with nothing added (a log shipper reads them as JSON or logfmt). Label
//! values in metrics never come from here: request data (path, request id) only ever reaches logs.
//!
//! Times: `upstream_ms` is from handing the request to the upstream client to its response headers
//! (connect included when no pooled connection was free); `total_ms` is from the request's arrival
//! at flipgate to the response headers going back. Body streaming time is not included: bodies are
//! streamed, and a WebSocket tunnel may last hours.

use std::io::Write;
use tokio::time::Instant;

use http::{HeaderValue, Method, StatusCode};
use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use crate::config::{AccessLogFormat, Log};
use crate::snapshot::split::Reason;
use crate::snapshot::TargetEntry;

/// The `tracing` target of access-log events; filter on it (`RUST_LOG=flipgate::access=off`).
pub const TARGET: &str = "flipgate::access";

/// Decides, per request, whether it is logged and in which format. `None` when off or not sampled.
#[inline]
pub fn sample(log: &Log) -> Option<AccessLogFormat> {
    match log.access {
        AccessLogFormat::Off => None,
        f if log.sample >= 1.0 => Some(f),
        f => (rand::random::<f64>() < log.sample).then_some(f),
    }
}

/// What is known about a sampled request before it is forwarded (or answered by flipgate). Boxed:
/// an `Option<Pending>` travels with every request (in each engine's state), and costs a pointer
/// there, not the whole record, when nothing is logged.
pub struct Pending(Box<Facts>);

struct Facts {
    format: AccessLogFormat,
    method: Method,
    path: String,
    /// The id sent upstream, or for a local answer the client's own (`None`: logged as `-`).
    request_id: Option<HeaderValue>,
    client: std::net::IpAddr,
    /// Why the request went to its target; `None` before a target was chosen.
    reason: Option<Reason>,
    sent: Instant,
}

impl Pending {
    /// Captures the request facts (`path` without the query, which often carries tokens);
    /// called only for sampled requests.
    pub fn new(
        format: AccessLogFormat,
        method: Method,
        path: String,
        request_id: Option<HeaderValue>,
        client: std::net::IpAddr,
        reason: Option<Reason>,
    ) -> Pending {
        Pending(Box::new(Facts {
            format,
            method,
            path,
            request_id,
            client,
            reason,
            sent: Instant::now(),
        }))
    }

    /// The id the forwarded request carries (known once the forwarding policy ran).
    pub fn sent_with(&mut self, request_id: HeaderValue) {
        self.0.request_id = Some(request_id);
        self.0.sent = Instant::now();
    }

    /// Emits the line once the upstream's response headers are known; `arrived` is when the
    /// request came in.
    pub fn finish(self, target: &TargetEntry, status: StatusCode, arrived: Instant) {
        self.emit(Some(target), status, None, arrived);
    }

    /// Emits the line of an answer flipgate gave itself, with its cause (`ProxyError::label`);
    /// `target` is `None` when no target was chosen (no route, a refused head or connection).
    /// Called from `proxy::record_local` only.
    pub(crate) fn finish_local(
        self,
        target: Option<&TargetEntry>,
        error: crate::policy::error::ProxyError,
        arrived: Instant,
    ) {
        self.emit(target, error.status(), Some(error.label()), arrived);
    }

    fn emit(
        self,
        target: Option<&TargetEntry>,
        status: StatusCode,
        error: Option<&'static str>,
        arrived: Instant,
    ) {
        let this = *self.0;
        let (upstream, total) = (this.sent.elapsed(), arrived.elapsed());
        let line = Line {
            request_id: this
                .request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-"),
            client: this.client,
            method: this.method.as_str(),
            path: &this.path,
            route: target.map_or("-", |t| &t.route),
            target: target.map_or("-", |t| &t.name),
            reason: this.reason.map_or("-", Reason::as_str),
            status: status.as_u16(),
            error,
            upstream_ms: if error.is_some() && target.is_none() {
                0.0
            } else {
                upstream.as_secs_f64() * 1e3
            },
            total_ms: total.as_secs_f64() * 1e3,
        };
        let text = line.format(this.format);
        tracing::info!(target: TARGET, "{text}");
    }
}

/// One access-log record.
#[derive(Debug, serde::Serialize)]
pub struct Line<'a> {
    pub request_id: &'a str,
    pub client: std::net::IpAddr,
    pub method: &'a str,
    pub path: &'a str,
    /// `-` when the request matched no route.
    pub route: &'a str,
    pub target: &'a str,
    /// `live`, `canary`, `sticky` or `preview` (see `split::Reason`); `-` before a target was
    /// chosen.
    pub reason: &'a str,
    pub status: u16,
    /// Set only on an answer flipgate gave itself: why (`no_route`, `too_large`, `busy`,
    /// `no_healthy`, `connect`, `timeout`, …, the `kind` labels of the metrics).
    pub error: Option<&'static str>,
    pub upstream_ms: f64,
    pub total_ms: f64,
}

impl Line<'_> {
    /// Renders the record with a leading RFC 3339 timestamp (`ts`), without a trailing newline.
    pub fn format(&self, format: AccessLogFormat) -> String {
        let ts = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
        let up = (self.upstream_ms * 1000.0).round() / 1000.0;
        let total = (self.total_ms * 1000.0).round() / 1000.0;
        match format {
            AccessLogFormat::Json => {
                let mut v = serde_json::json!({
                "ts": ts,
                "request_id": self.request_id,
                "client": self.client.to_string(),
                "method": self.method,
                "path": self.path,
                "route": self.route,
                "target": self.target,
                "reason": self.reason,
                "status": self.status,
                "upstream_ms": up,
                "total_ms": total,
                });
                if let Some(e) = self.error {
                    v["error"] = e.into();
                }
                v.to_string()
            }
            _ => {
                let mut s = String::with_capacity(256);
                let mut kv = |k: &str, v: &str| {
                    if !s.is_empty() {
                        s.push(' ');
                    }
                    s.push_str(k);
                    s.push('=');
                    logfmt_value(&mut s, v);
                };
                kv("ts", &ts);
                kv("request_id", self.request_id);
                kv("client", &self.client.to_string());
                kv("method", self.method);
                kv("path", self.path);
                kv("route", self.route);
                kv("target", self.target);
                kv("reason", self.reason);
                kv("status", &self.status.to_string());
                if let Some(e) = self.error {
                    kv("error", e);
                }
                kv("upstream_ms", &up.to_string());
                kv("total_ms", &total.to_string());
                s
            }
        }
    }
}

/// Appends `v` as a logfmt value: bare when it is safe, else double-quoted with `"`, `\` and
/// control characters escaped, so a hostile path cannot forge fields or lines.
fn logfmt_value(out: &mut String, v: &str) {
    let bare = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\');
    if bare {
        out.push_str(v);
        return;
    }
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A `tracing` layer that writes the access-log events (target [`TARGET`]) to `writer`, one line
/// each, exactly as formatted, and ignores every other event. Combine it with the usual fmt layer
/// filtered to exclude [`TARGET`], so access lines go to (say) stdout and diagnostics to stderr.
pub fn layer<W>(writer: W) -> AccessLayer<W>
where
    W: for<'w> MakeWriter<'w> + 'static,
{
    AccessLayer { writer }
}

/// See [`layer`].
pub struct AccessLayer<W> {
    writer: W,
}

struct Message(Option<String>);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = Some(value.to_string());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<S, W> Layer<S> for AccessLayer<W>
where
    S: tracing::Subscriber,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut m = Message(None);
        event.record(&mut m);
        if let Some(mut line) = m.0 {
            line.push('\n');
            let _ = self.writer.make_writer().write_all(line.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(path: &'a str, route: &'a str) -> Line<'a> {
        Line {
            request_id: "abc123",
            client: "127.0.0.1".parse().unwrap(),
            method: "GET",
            path,
            route,
            target: "green",
            reason: "sticky",
            status: 200,
            error: None,
            upstream_ms: 1.23456,
            total_ms: 1.5,
        }
    }

    #[test]
    fn json_is_one_parseable_object() {
        let s = line("/a\"b\nc", "bot").format(AccessLogFormat::Json);
        assert!(!s.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["path"], "/a\"b\nc");
        assert_eq!(v["route"], "bot");
        assert_eq!(v["target"], "green");
        assert_eq!(v["reason"], "sticky");
        assert_eq!(v["status"], 200);
        assert_eq!(v["upstream_ms"], 1.235);
        assert_eq!(v["request_id"], "abc123");
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn logfmt_quotes_what_could_forge_fields() {
        let s = line("/x y=1\n\"z\"", "bot").format(AccessLogFormat::Logfmt);
        assert!(!s.contains('\n'));
        assert!(
            s.contains(r#" path="/x y=1\n\"z\"" "#),
            "path must be one quoted value: {s}"
        );
        assert!(
            s.contains(
                " route=bot target=green reason=sticky status=200 upstream_ms=1.235 total_ms=1.5"
            ),
            "{s}"
        );
        assert!(s.starts_with("ts="));
    }

    #[test]
    fn sampling_bounds() {
        let off = Log {
            access: AccessLogFormat::Off,
            sample: 1.0,
        };
        assert_eq!(sample(&off), None);
        let all = Log {
            access: AccessLogFormat::Json,
            sample: 1.0,
        };
        assert_eq!(sample(&all), Some(AccessLogFormat::Json));
        let none = Log {
            access: AccessLogFormat::Logfmt,
            sample: 0.0,
        };
        assert!((0..1000).all(|_| sample(&none).is_none()));
        let half = Log {
            access: AccessLogFormat::Logfmt,
            sample: 0.5,
        };
        let n = (0..10_000).filter(|_| sample(&half).is_some()).count();
        assert!((4_000..6_000).contains(&n), "sampled {n} of 10000 at 0.5");
    }
}
