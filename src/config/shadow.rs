//! `[routes.shadow]`: shadow traffic (a dark launch). A share of a route's requests is copied to an
//! idle target, fire-and-forget, so the target is judged on real traffic before any user is
//! routed to it; the copy carries `x-flipgate-shadow: 1` (`policy::forward`) and its answer is
//! discarded.
//!
//! Invariants: a validated `Shadow` names a target of the route other than the file's `live`;
//! `basis_points` is 0..=10_000 (the canary's 0.01 % resolution); `methods` is non-empty, each a
//! valid method token other than `CONNECT`; `timeout` is positive and at most a day;
//! `max_in_flight` is at least 1. `max_body_bytes` is 0..=`MAX_BODY_BYTES` (0: only requests
//! without a body are copied; above it, a request whose declared `Content-Length` is at most this
//! is copied with its body, taken as the live request's body passes, never held back). Nothing
//! here is seen by the data path: the snapshot compiles it (`snapshot::shadow`).

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::error::{quote, Sink};

/// How long a copy may take (to its response's end) when the file names no `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Copies in flight at once, per route, when the file names no `max_in_flight`.
pub const DEFAULT_MAX_IN_FLIGHT: u64 = 64;
/// The methods copied when the file names none: the ones without side effects by definition.
pub const DEFAULT_METHODS: [&str; 2] = ["GET", "HEAD"];

/// The largest body a copy may carry: the size up to which the HTTP/1.1 engine relays request
/// bodies itself (`h1::head::MAX_BODY`) and hyper's path keeps a body for a resend
/// (`upstream::body::REPLAY_MAX`).
pub const MAX_BODY_BYTES: u64 = crate::upstream::body::REPLAY_MAX as u64;

/// `[routes.shadow]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    pub target: Spanned<String>,
    pub percent: Spanned<f64>,
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    pub max_body_bytes: Option<Spanned<i64>>,
    pub timeout: Option<Spanned<String>>,
    pub max_in_flight: Option<Spanned<i64>>,
}

/// A route's shadow traffic, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow {
    /// The target that receives the copies; never the file's `live` (a flip at runtime that makes
    /// it live pauses shadowing while it is: `snapshot::shadow`).
    pub target: String,
    /// Share of the route's eligible requests copied, in basis points (100 % = 10_000).
    pub basis_points: u16,
    /// Methods whose requests are copied, as written (methods are case-sensitive).
    pub methods: Vec<http::Method>,
    /// Bound on one copy, from its start to the end of the discarded response.
    pub timeout: Duration,
    /// Copies in flight at once for this route; past it a copy is dropped (and counted), never
    /// queued.
    pub max_in_flight: u64,
    /// Largest declared request body copied with the request (0: bodyless requests only).
    pub max_body_bytes: u64,
}

/// Checks `[routes.shadow]` of route `route` (whose targets are `targets` and live `live`).
pub(super) fn validate(
    sink: &mut Sink,
    route: &str,
    targets: &[&str],
    live: &str,
    raw: Option<Spanned<RawShadow>>,
) -> Option<Shadow> {
    let raw = raw?.into_inner();
    let f = |field: &str| format!("routes[{}].shadow.{field}", quote(route));
    let before = sink.count();
    let target = raw.target.get_ref().clone();
    if !targets.is_empty() && !targets.contains(&target.as_str()) {
        sink.push(
            raw.target.span(),
            f("target"),
            format!(
                "unknown target `{}`; defined targets: {}",
                quote(&target),
                quote(&targets.join(", "))
            ),
        );
    } else if target == live {
        sink.push(
            raw.target.span(),
            f("target"),
            format!(
                "shadow target `{}` is the live target: a copy of live traffic must go to another target (shadowing pauses by itself while a runtime flip makes it live)",
                quote(&target)
            ),
        );
    }
    let p = &raw.percent;
    let basis_points = match super::percent_to_bp(*p.get_ref()) {
        Some(bp) => bp,
        None => {
            sink.push(
                p.span(),
                f("percent"),
                format!("must be between 0 and 100, got {}", p.get_ref()),
            );
            0
        }
    };
    let methods = match raw.methods {
        None => DEFAULT_METHODS
            .iter()
            .map(|m| http::Method::from_bytes(m.as_bytes()).expect("valid"))
            .collect(),
        Some(list) if list.get_ref().is_empty() => {
            sink.push(
                list.span(),
                f("methods"),
                "must name at least one method (remove [routes.shadow] to stop shadowing)",
            );
            Vec::new()
        }
        Some(list) => {
            let list = list.into_inner();
            let mut methods = Vec::with_capacity(list.len());
            for m in list {
                match http::Method::from_bytes(m.get_ref().as_bytes()) {
                    Ok(method) if method == http::Method::CONNECT => sink.push(
                        m.span(),
                        f("methods"),
                        "CONNECT opens a tunnel and cannot be shadowed",
                    ),
                    Ok(method) => methods.push(method),
                    Err(_) => sink.push(
                        m.span(),
                        f("methods"),
                        format!("`{}` is not a valid method name", quote(m.get_ref())),
                    ),
                }
            }
            methods
        }
    };
    let body_span = raw.max_body_bytes.as_ref().map(|b| b.span());
    let max_body_bytes =
        super::validate::count(sink, raw.max_body_bytes, 0, 0, &f("max_body_bytes"));
    if max_body_bytes > MAX_BODY_BYTES {
        if let Some(span) = body_span {
            sink.push(
                span,
                f("max_body_bytes"),
                format!(
                    "at most {MAX_BODY_BYTES} (got {max_body_bytes}): a copy's body is kept in memory while the live request's body passes"
                ),
            );
        }
    }
    let timeout = super::validate::duration(
        sink,
        raw.timeout,
        DEFAULT_TIMEOUT,
        super::MAX_TIMEOUT,
        &f("timeout"),
    );
    let max_in_flight = super::validate::count(
        sink,
        raw.max_in_flight,
        DEFAULT_MAX_IN_FLIGHT,
        1,
        &f("max_in_flight"),
    );
    (sink.count() == before).then_some(Shadow {
        target,
        basis_points,
        methods,
        timeout,
        max_in_flight,
        max_body_bytes,
    })
}
