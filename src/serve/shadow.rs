//! Shadow copies (`[routes.shadow]`, a dark launch): a request `policy::shadow` picked is sent
//! again to the route's shadow target, on a task of its own, and its answer is read to the end and
//! discarded.
//!
//! Invariants:
//! - The live request never waits on its copy: `send` takes a place, picks an instance and spawns,
//!   all without an `.await`; nothing on the live path awaits the task or shares a connection with
//!   it (copies go through hyper's process-wide pool, `upstream::Clients`, never the engine's
//!   per-thread pool or a client connection's pinned one).
//! - A copy is bounded: at most `max_in_flight` per route are out (past it a copy is dropped and
//!   counted, never queued), each ends within the shadow's `timeout` (response head and body) or
//!   at the drain deadline (`Proxy::cut`), whichever comes first, and
//!   it holds an in-flight slot of its instance while it runs, as a live request does (balancing,
//!   drain and `max_upstream_connections` see it).
//! - The copy is the live request's head through the same forwarding policy (`policy::forward`,
//!   with `Rules::shadow`: `x-flipgate-shadow: 1` added, the client's own mark never kept) and
//!   carries the live request's `x-request-id`. Its body, when the request has one (a declared
//!   length of at most the shadow's `max_body_bytes`, `policy::shadow`), is what the live request
//!   sent, taken as it passes (`upstream::tee`, fed by the engine's body relay and by hyper's path's
//!   `RequestBody`): the copy is sent once the live body has passed whole, and abandoned (counted
//!   `dropped`) if it never does (client aborted, upstream answered early). Nothing holds the live
//!   body back.
//! - Its outcome is judged by the one rule of live requests (`proxy::judge`: instance health and
//!   the circuit window of the shadow target) and counted in `shadow_requests_total`, never in
//!   `requests_total`, `request_duration_seconds` or the access log.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Version};
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::observe::metrics::ShadowOutcome;
use crate::policy::error::{classify, ProxyError, UpstreamErrorKind};
use crate::policy::forward::{self as policy, X_REQUEST_ID};
use crate::serve::proxy::{admit, judge, ConnInfo, Limits, Proxy};
use crate::snapshot::shadow::Shadow;
use crate::upstream::body::RequestBody;
use crate::upstream::tee::Tee;

/// The live request's head, as received, for its copy.
pub struct CopiedHead {
    pub method: Method,
    pub path: Option<PathAndQuery>,
    /// The client's fields, before the forwarding policy.
    pub headers: HeaderMap,
    pub version: Version,
    /// The authority the request is for (`headers::request_authority`), if it named one.
    pub authority: Option<HeaderValue>,
    /// The route's preview header (never forwarded).
    pub preview: Option<HeaderName>,
}

impl CopiedHead {
    /// A copy of a head the HTTP/1.1 engine parsed (`None` if a field does not make a
    /// `HeaderMap` entry, which `httparse`'s checks leave no room for).
    pub fn of_head(
        method: &str,
        target: &str,
        headers: &[httparse::Header<'_>],
        authority: Option<&[u8]>,
        preview: Option<&HeaderName>,
    ) -> Option<CopiedHead> {
        let mut map = HeaderMap::with_capacity(headers.len());
        for h in headers {
            let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
            map.append(name, HeaderValue::from_bytes(h.value).ok()?);
        }
        Some(CopiedHead {
            method: Method::from_bytes(method.as_bytes()).ok()?,
            path: PathAndQuery::try_from(target).ok(),
            headers: map,
            version: Version::HTTP_11,
            authority: authority.and_then(|a| HeaderValue::from_bytes(a).ok()),
            preview: preview.cloned(),
        })
    }
}

/// Sends `copy` to `shadow`'s target in the background. `request_id`: the id the live request
/// went out with; `body_len`: the live request's declared body length. Returns at once; the
/// copy's fate is recorded by its task. With a body, the returned `Tee` must be fed the live body
/// (the copy waits for it, within its timeout).
pub fn send(
    proxy: &Proxy,
    conn: &ConnInfo,
    shadow: &Arc<Shadow>,
    limits: &Limits,
    mut copy: CopiedHead,
    request_id: &HeaderValue,
    body_len: u64,
) -> Option<Tee> {
    let Some(place) = shadow.try_enter() else {
        shadow.metrics.record(ShadowOutcome::Dropped);
        return None;
    };
    let target = &shadow.target;
    let (index, instance, slot) = match admit(target, limits, None) {
        Ok(x) => x,
        Err((e, index)) => {
            judge(target, index, &limits.outlier, Err(e), Duration::ZERO);
            shadow.metrics.record(match e {
                ProxyError::NoHealthy => ShadowOutcome::Error,
                _ => ShadowOutcome::Dropped,
            });
            return None;
        }
    };
    let upstream = &target.upstream;
    copy.headers.insert(X_REQUEST_ID, request_id.clone());
    let rules = policy::Rules {
        preview: copy.preview.as_ref().map(|p| p.as_str()),
        upgrade: false,
        http2: upstream.http2,
        shadow: true,
    };
    policy::apply(
        &mut copy.headers,
        &rules,
        &conn.peer_header,
        conn.https,
        copy.authority.as_ref(),
        instance,
        copy.version,
    );
    let (tee, body) = match usize::try_from(body_len) {
        Ok(0) => (None, None),
        Ok(len) => {
            let (tee, from) = Tee::new(len);
            (Some(tee), Some(from))
        }
        Err(_) => {
            shadow.metrics.record(ShadowOutcome::Dropped);
            return None;
        }
    };
    let mut req = Request::new(RequestBody::empty());
    *req.method_mut() = copy.method;
    *req.uri_mut() = upstream.uri(instance, copy.path);
    *req.version_mut() = match upstream.http2 {
        true => Version::HTTP_2,
        false => Version::HTTP_11,
    };
    *req.headers_mut() = copy.headers;
    let client = proxy.clients.for_upstream(upstream).clone();
    let shadow = shadow.clone();
    let outlier = limits.outlier;
    let cut = proxy.cut.clone();
    let copy = async move {
        let (_place, _slot) = (place, slot);
        let start = Instant::now();
        let deadline = crate::clock::deadline(start, shadow.timeout);
        let target = &shadow.target;
        if let Some(body) = body {
            // The live body, whole; or nothing to copy (it never ended, or not as declared).
            match tokio::time::timeout_at(deadline, body).await {
                Ok(Ok(bytes)) => *req.body_mut() = RequestBody::full(bytes),
                _ => {
                    shadow.metrics.record(ShadowOutcome::Dropped);
                    return;
                }
            }
        }
        let outcome = match tokio::time::timeout_at(deadline, client.request(req)).await {
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                judge(target, index, &outlier, Ok(status), start.elapsed());
                shadow.metrics.record(ShadowOutcome::Answered(status));
                // Read to the end (the connection can then be reused), within the same bound.
                let mut body = resp.into_body();
                let drain = async { while let Some(Ok(_)) = body.frame().await {} };
                let _ = tokio::time::timeout_at(deadline, drain).await;
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(route = %target.route, target = %target.name, error = %e, "shadow copy failed");
                (classify(&e), ShadowOutcome::Error)
            }
            Err(_) => (
                ProxyError::Upstream(UpstreamErrorKind::Timeout),
                ShadowOutcome::Timeout,
            ),
        };
        judge(target, index, &outlier, Err(outcome.0), start.elapsed());
        shadow.metrics.record(outcome.1);
    };
    // The drain deadline ends copies still out (nothing is recorded for them).
    tokio::spawn(async move {
        tokio::select! {
            biased;
            () = copy => {}
            _ = cut.wait() => {}
        }
    });
    tee
}
