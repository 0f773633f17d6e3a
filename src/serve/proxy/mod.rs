//! The data path: load snapshot -> route -> split -> forward -> record outcome.
//!
//! Invariants: one `ArcSwap` load per request, and the guard is dropped before the first `.await`
//! (the chosen target is kept alive by its own `Arc`), so a flip published mid-request never moves
//! a request already in flight. No locks; the routing and split decision allocates nothing. Request
//! bodies are streamed to the upstream untouched (webhook signatures depend on the exact bytes).
//! A failed attempt is sent again only as `resend` allows. Only upstream faults are recorded
//! against a target.

pub mod body;
pub mod cut;
pub mod direct;
pub mod pinned;
pub mod tunnel;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use cut::{Cut, UntilCut};
use futures_util::future::{ready, Either};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::time::Duration;
use tokio::time::Instant;

use crate::policy::error::{
    classify, ClientErrorKind, LocalErrorKind, ProxyError, UpstreamErrorKind,
};
use crate::policy::forward as policy;
use crate::policy::{connect_retry, decide, grpc, headers, resend};
use crate::snapshot::{Snapshot, TargetEntry};
use crate::upstream::balance::Pick;
use crate::upstream::body::RequestBody;
use crate::upstream::expect;
use crate::upstream::health::Outlier;
use crate::upstream::{Clients, InflightGuard};
use body::Held;
pub use body::ProxyBody;
use http::uri::Authority;

/// Everything the data path needs, shared by all connections.
pub struct Proxy {
    /// The published routing; loaded once per request.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Upstream clients, process-wide so pools survive reloads.
    pub clients: Clients,
    /// Open upgraded tunnels, so shutdown can drain them.
    pub tunnels: Arc<tunnel::Tunnels>,
    /// Open downstream connections on every listener, for `max_connections`.
    pub connections: std::sync::atomic::AtomicUsize,
    /// Notified when the last open downstream connection closes (drain waits on it).
    pub closed: tokio::sync::Notify,
    /// Set at the drain deadline: requests still waiting for their upstream's answer on hyper's
    /// path are answered 503 (`Connection: close`) before their connections are closed.
    pub cut: Arc<Cut>,
}

/// The request body's declared length (`Content-Length`), if it declares a valid one.
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Facts about the downstream connection, computed once per connection.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer IP formatted as a header value, for `X-Forwarded-For`.
    pub peer_header: HeaderValue,
    pub https: bool,
    /// This connection's own upstream connections (HTTP/1 requests to plain HTTP/1.1 upstreams).
    pub pinned: crate::serve::proxy::pinned::Slot,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, https: bool) -> ConnInfo {
        let ip = match peer.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        ConnInfo {
            peer: SocketAddr::new(ip, peer.port()),
            peer_header: HeaderValue::from_str(&ip.to_string())
                .expect("an IP is a valid header value"),
            https,
            pinned: crate::serve::proxy::pinned::Slot::default(),
        }
    }
}

fn local(e: ProxyError) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(e.body()));
    *r.status_mut() = e.status();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Per-request limits, copied out of the snapshot's `[server]` in the one snapshot load.
#[derive(Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// How long an idle upstream connection may wait in a pool for its next request.
    pub pool_idle_timeout: Duration,
    /// A response body that moves no byte this long is cut.
    pub body_idle_timeout: Duration,
    /// A tunnel that moves no byte this long is closed.
    pub tunnel_idle_timeout: Duration,
    pub max_body_bytes: u64,
    pub max_upstream_connections: usize,
    pub tunnel_after_flip: Option<Duration>,
    pub outlier: Outlier,
}

impl Limits {
    pub fn of(s: &crate::config::Server) -> Limits {
        Limits {
            timeout: s.upstream_timeout,
            connect_timeout: s.connect_timeout,
            pool_idle_timeout: s.pool_idle_timeout,
            body_idle_timeout: s.body_idle_timeout,
            tunnel_idle_timeout: s.tunnel_idle_timeout,
            max_body_bytes: s.max_body_bytes,
            max_upstream_connections: s.max_upstream_connections,
            tunnel_after_flip: s.tunnel_max_lifetime_after_flip,
            outlier: Outlier {
                consecutive_failures: s.outlier_failures,
                ejection: s.outlier_ejection,
            },
        }
    }
}

/// Records an upstream's answer (any status) against its target: instance health, the circuit
/// window and the metrics. A 5xx is a failure. Returns the clock reading it took (the answer's
/// time), for the caller's next deadline.
pub(crate) fn record_answer(
    target: &TargetEntry,
    index: usize,
    limits: &Limits,
    status: u16,
    start: Instant,
) -> Instant {
    let now = Instant::now();
    let elapsed = now.saturating_duration_since(start);
    if (500..600).contains(&status) {
        target.metrics.upstream_error(UpstreamErrorKind::Status5xx);
    }
    judge_at(target, index, &limits.outlier, Ok(status), elapsed, now);
    target.metrics.record(status, elapsed.as_secs_f64());
    now
}

/// What judges a target (its instance's health, the circuit window) learns from one exchange with
/// it: an answer is a failure when it is a 5xx; an upstream fault is one; no healthy instance is
/// one in the window (no instance to blame); a client's or flipgate's own failure is nothing. The
/// one classification of live requests (`record_answer`, `record_error`) and shadow copies
/// (`serve::shadow`). `elapsed`: time to the response head (or to the failure).
pub(crate) fn judge(
    target: &TargetEntry,
    index: usize,
    outlier: &Outlier,
    outcome: Result<u16, ProxyError>,
    elapsed: Duration,
) {
    judge_at(target, index, outlier, outcome, elapsed, Instant::now());
}

/// `judge` at a clock reading already taken (`now`).
fn judge_at(
    target: &TargetEntry,
    index: usize,
    outlier: &Outlier,
    outcome: Result<u16, ProxyError>,
    elapsed: Duration,
    now: Instant,
) {
    let now_ms = crate::clock::ms_at(now);
    match outcome {
        Ok(status) => {
            let is_5xx = (500..600).contains(&status);
            record_outcome(target, index, outlier, is_5xx, elapsed, now_ms);
        }
        Err(ProxyError::Upstream(_)) => {
            record_outcome(target, index, outlier, true, elapsed, now_ms)
        }
        Err(ProxyError::NoHealthy) => target.window.record(now_ms, true, 0),
        Err(ProxyError::Client(_) | ProxyError::Local(_) | ProxyError::NoRoute) => {}
    }
}

/// Records whether an upstream's answer was a failure in what judges the target: the instance's
/// health (outlier ejection) and the circuit window. `elapsed`: time to the response head;
/// `now_ms`: the outcome's time (`clock::now_ms`).
pub(crate) fn record_outcome(
    target: &TargetEntry,
    index: usize,
    outlier: &Outlier,
    failed: bool,
    elapsed: Duration,
    now_ms: u64,
) {
    target.upstream.health[index].record(failed, now_ms, outlier);
    target
        .window
        .record(now_ms, failed, elapsed.as_millis() as u64);
}

/// Records a request flipgate answered itself (or, with the client gone, did not answer) by the
/// side that failed: an upstream fault against the target (instance health, the circuit window,
/// `upstream_errors_total`, `requests_total` under the status the client gets), no healthy
/// instance against the target's window, and a client's or flipgate's own failure only in
/// `client_errors_total` / `local_errors_total`. The one recording rule of both engines.
pub(crate) fn record_error(
    target: &TargetEntry,
    index: usize,
    limits: &Limits,
    e: ProxyError,
    start: Instant,
) {
    let elapsed = start.elapsed();
    judge(target, index, &limits.outlier, Err(e), elapsed);
    match e {
        ProxyError::Upstream(kind) => {
            target.metrics.upstream_error(kind);
            target
                .metrics
                .record(e.status().as_u16(), elapsed.as_secs_f64());
        }
        ProxyError::NoHealthy => {
            target
                .metrics
                .record(e.status().as_u16(), elapsed.as_secs_f64());
        }
        ProxyError::Client(kind) => {
            target.metrics.client_error(kind);
            target.metrics.answered(e.status().as_u16());
        }
        ProxyError::Local(kind) => {
            target.metrics.local_error(kind);
            target.metrics.answered(e.status().as_u16());
        }
        ProxyError::NoRoute => {}
    }
}

/// Logs a failed upstream exchange: at debug level (the metrics count it), except a TLS handshake
/// failure, which is a configuration problem (the target's `tls`/`ca`) an operator must hear of.
fn log_failure(target: &TargetEntry, instance: &Authority, e: &(dyn std::error::Error + 'static)) {
    match crate::upstream::tls_failure(e) {
        Some(tls) => {
            tracing::warn!(route = %target.route, target = %target.name, %instance, error = %tls, "upstream TLS handshake failed; check the target's tls and ca settings")
        }
        None => {
            tracing::debug!(route = %target.route, target = %target.name, %instance, error = %e, "upstream request failed")
        }
    }
}

/// `connect_retry` on hyper's path: the request again, for another instance of `target`, after
/// its connect to instance `index` failed `e`; moves `index` and the in-flight slot there. `None`
/// when the rule does not allow it, no other instance is usable, or the body cannot be replayed.
fn elsewhere<'t>(
    target: &'t TargetEntry,
    e: ProxyError,
    index: &mut usize,
    held: &mut Held,
    limits: &Limits,
    kept: Option<&mut resend::Kept>,
) -> Option<(Request<RequestBody>, &'t Authority)> {
    if !connect_retry::after(e) {
        return None;
    }
    let again = kept?.elsewhere()?;
    let (i, slot) = connect_retry::another(
        target,
        *index,
        &limits.outlier,
        limits.max_upstream_connections,
    )?;
    *index = i;
    held.slot = Some(slot);
    Some((again, &target.upstream.instances[i]))
}

/// Where an answer flipgate gives itself is recorded.
pub(crate) enum At<'a> {
    /// The request was going to `target` (instance `index`, chosen for `reason`).
    Target {
        target: &'a TargetEntry,
        index: usize,
        limits: &'a Limits,
    },
    /// No target: no route matched, or the request (or connection) was refused before routing.
    Unrouted(&'a crate::observe::metrics::UnroutedMetrics),
}

/// Records an answer flipgate gives itself (404, 400, 413, 431, 502, 503, 504), the one recording
/// function of both engines and of the server's own refusals: the metrics by the side that failed
/// (`record_error` when a target was chosen, else the `route=""` series) and, when the request was
/// sampled, its access-log line with the cause (`error`).
pub(crate) fn record_local(
    at: At<'_>,
    e: ProxyError,
    start: Instant,
    log: Option<crate::observe::access_log::Pending>,
) {
    match at {
        At::Target {
            target,
            index,
            limits,
        } => {
            record_error(target, index, limits, e, start);
            if let Some(log) = log {
                log.finish_local(Some(target), e, start);
            }
        }
        At::Unrouted(m) => {
            m.answered(e.status().as_u16());
            match e {
                ProxyError::NoRoute => m.no_route(),
                ProxyError::Client(kind) => m.client_error(kind),
                ProxyError::Local(kind) => m.local_error(kind),
                // Upstream faults and unhealthy targets always have a target.
                ProxyError::Upstream(_) | ProxyError::NoHealthy => {}
            }
            if let Some(log) = log {
                log.finish_local(None, e, start);
            }
        }
    }
}

/// Admits a request to `target`, the one admission rule of both engines: a declared body over
/// `max_body_bytes` is refused before any upstream work, then an instance that passes its checks
/// is picked and an in-flight slot taken. A refusal is returned with the instance it concerns
/// (0 when none was picked), for the caller to record (`record_local`).
pub(crate) fn admit<'t>(
    target: &'t TargetEntry,
    limits: &Limits,
    declared_body: Option<u64>,
) -> Result<(usize, &'t Authority, Option<InflightGuard>), (ProxyError, usize)> {
    if limits.max_body_bytes > 0 && declared_body.is_some_and(|n| n > limits.max_body_bytes) {
        return Err((ProxyError::Client(ClientErrorKind::TooLarge), 0));
    }
    let upstream = &target.upstream;
    let index = match upstream.pick(crate::clock::now_ms(), None) {
        Pick::Instance(i) => i,
        Pick::NoHealthy => {
            tracing::debug!(route = %target.route, target = %target.name, "no instance passes its health checks");
            return Err((ProxyError::NoHealthy, 0));
        }
        Pick::Drained => {
            tracing::debug!(route = %target.route, target = %target.name, "every instance is drained");
            return Err((ProxyError::Local(LocalErrorKind::Drained), 0));
        }
    };
    let instance = &upstream.instances[index];
    match upstream.acquire(index, limits.max_upstream_connections) {
        Ok(slot) => Ok((index, instance, Some(slot))),
        Err(_) => {
            tracing::debug!(route = %target.route, target = %target.name, %instance, "upstream connection limit reached");
            Err((ProxyError::Local(LocalErrorKind::Busy), index))
        }
    }
}

/// A request admitted and rewritten for its upstream, on its way through hyper's clients
/// (`Proxy::with_client`).
struct Outbound {
    target: Arc<TargetEntry>,
    index: usize,
    slot: Option<InflightGuard>,
    limits: Limits,
    start: Instant,
    log: Option<crate::observe::access_log::Pending>,
    upgrade: bool,
    bodyless: bool,
    /// Goes through this connection's pinned upstream connection first (`pinned`).
    pinned: bool,
    deadline: Instant,
    tee: Option<crate::upstream::tee::Tee>,
}

impl Proxy {
    /// A data path over `snapshot`, with no connection open yet.
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>, clients: Clients) -> Proxy {
        Proxy {
            snapshot,
            clients,
            tunnels: Default::default(),
            connections: Default::default(),
            closed: Default::default(),
            cut: Arc::default(),
        }
    }

    /// Serves one request, unless the drain deadline cuts it before the upstream answers (then
    /// 503 with `Connection: close`, as the HTTP/1.1 engine answers). Never fails: every problem
    /// becomes a response.
    pub fn serve_until_cut<'a>(
        &'a self,
        req: Request<Incoming>,
        conn: &'a ConnInfo,
    ) -> UntilCut<'a, impl std::future::Future<Output = Response<ProxyBody>> + Send + 'a> {
        UntilCut {
            cut: &self.cut,
            cut_notified: self.cut.notify.notified(),
            serving: self.serve(req, conn),
        }
    }

    /// Records an answer given before any request was read or parsed (a connection over
    /// `max_connections`, a head hyper's parser refused): `route=""`, and an access line with
    /// `-` for the method and path when sampled.
    pub(crate) fn refused(&self, peer: IpAddr, e: ProxyError) {
        let snap = self.snapshot.load();
        let log = crate::observe::access_log::sample(&snap.config.log).map(|format| {
            let dash = http::Method::from_bytes(b"-").unwrap_or(http::Method::GET);
            crate::observe::access_log::Pending::new(
                format,
                dash,
                "-".to_string(),
                None,
                peer,
                None,
            )
        });
        record_local(At::Unrouted(&snap.unrouted), e, Instant::now(), log);
    }

    /// Serves one request. Never fails: every problem becomes a response. Everything up to the
    /// upstream exchange runs when called; the future returned holds only what the exchange
    /// needs (an `async fn` would keep its arguments and its locals both, in every stream's task).
    pub fn serve<'a>(
        &'a self,
        req: Request<Incoming>,
        conn: &'a ConnInfo,
    ) -> impl std::future::Future<Output = Response<ProxyBody>> + Send + 'a {
        let start = Instant::now();
        // The authority the request is for (`headers::request_authority`): absolute form or
        // `:authority` over `Host`; `None` for an HTTP/1.0 request without one.
        let host = {
            let target = req.uri().authority().map(|a| a.as_str().as_bytes());
            let hosts = req.headers().get_all(header::HOST).iter();
            match headers::request_authority(req.version(), target, hosts.map(|v| v.as_bytes())) {
                Err(e) => Err(e),
                Ok(None) => Ok(None),
                Ok(Some(_)) if target.is_none() => Ok(req.headers().get(header::HOST).cloned()),
                Ok(Some(a)) => Ok(HeaderValue::from_bytes(a).ok()),
            }
        };
        let (host, target, reason, limits, access, preview, shadow) = {
            let snap = self.snapshot.load();
            let access = crate::observe::access_log::sample(&snap.config.log);
            // The line of an answer given before forwarding: the client's own request id.
            let log = |reason| {
                access.map(|format| {
                    crate::observe::access_log::Pending::new(
                        format,
                        req.method().clone(),
                        req.uri().path().to_string(),
                        headers::incoming_request_id(
                            req.headers()
                                .get_all(&policy::X_REQUEST_ID)
                                .iter()
                                .map(|v| v.as_bytes()),
                        )
                        .and_then(|v| HeaderValue::from_bytes(v).ok()),
                        conn.peer.ip(),
                        reason,
                    )
                })
            };
            let host = match host {
                Ok(host) => host,
                Err(e) => {
                    record_local(At::Unrouted(&snap.unrouted), e, start, log(None));
                    return Either::Left(ready(local(e)));
                }
            };
            let host_str = host.as_ref().and_then(|h| h.to_str().ok());
            let path = req.uri().path();
            let peer = conn.peer.ip();
            let Some(d) = decide::decide(&snap, host_str, path, req.headers(), peer) else {
                let e = ProxyError::NoRoute;
                record_local(At::Unrouted(&snap.unrouted), e, start, log(None));
                return Either::Left(ready(local(e)));
            };
            d.record(&snap);
            let route = &snap.routes[d.route];
            let (ti, reason) = (d.target, d.reason);
            let target = &route.targets[ti];
            let limits = Limits::of(&snap.config.server);
            // `max_headers` holds on every protocol: HTTP/1.1's parsers refuse more fields, an
            // HTTP/2 request is counted here.
            if req.headers().len() > snap.config.server.max_headers {
                let e = ProxyError::Client(ClientErrorKind::TooManyHeaders);
                let at = At::Target {
                    target,
                    index: 0,
                    limits: &limits,
                };
                record_local(at, e, start, log(Some(reason)));
                return Either::Left(ready(local(e)));
            }
            let preview = route.preview.as_ref().map(|p| p.header.clone());
            let shadow =
                crate::policy::shadow::decide(route, ti, || crate::policy::shadow::Request {
                    method: req.method().as_str().as_bytes(),
                    body: match http_body::Body::is_end_stream(req.body()) {
                        true => Some(0),
                        false => declared_length(req.headers()),
                    },
                    upgrade: headers::is_upgrade(req.headers()),
                })
                .cloned();
            let target = target.clone();
            (host, target, reason, limits, access, preview, shadow)
        };
        let access = access.map(|a| (a, reason));
        Either::Right(self.forward(
            req, host, preview, conn, target, limits, start, access, shadow,
        ))
    }

    /// Admits, applies the forwarding policy, and forwards; records the outcome (and the access
    /// line, when `access` holds its format).
    #[allow(clippy::too_many_arguments)]
    fn forward<'a>(
        &'a self,
        mut req: Request<Incoming>,
        host: Option<HeaderValue>,
        preview: Option<http::HeaderName>,
        conn: &'a ConnInfo,
        target: Arc<TargetEntry>,
        limits: Limits,
        start: Instant,
        access: Option<(
            crate::config::AccessLogFormat,
            crate::snapshot::split::Reason,
        )>,
        shadow: Option<Arc<crate::snapshot::shadow::Shadow>>,
    ) -> impl std::future::Future<Output = Response<ProxyBody>> + Send + 'a {
        let target_arc = target;
        let target = &target_arc;
        let mut log = access.map(|(format, reason)| {
            crate::observe::access_log::Pending::new(
                format,
                req.method().clone(),
                req.uri().path().to_string(),
                None,
                conn.peer.ip(),
                Some(reason),
            )
        });
        // A declared length over the limit is refused before any upstream work; an undeclared
        // one is cut off by `RequestBody` while streaming.
        let declared = declared_length(req.headers());
        let (index, instance, slot) = match admit(target, &limits, declared) {
            Ok(x) => x,
            Err((e, index)) => {
                if let Some(log) = &mut log {
                    let ids = req.headers().get_all(&policy::X_REQUEST_ID);
                    let id = headers::incoming_request_id(ids.iter().map(|v| v.as_bytes()));
                    if let Some(id) = id.and_then(|v| HeaderValue::from_bytes(v).ok()) {
                        log.sent_with(id);
                    }
                }
                let at = At::Target {
                    target,
                    index,
                    limits: &limits,
                };
                record_local(at, e, start, log);
                return Either::Left(ready(local(e)));
            }
        };
        let upstream = &target.upstream;
        // HTTP/2 has no `Upgrade`: to an HTTP/2 upstream the request goes as a plain one (its
        // upgrade headers stripped) and whatever it answers is relayed.
        let upgrade = !upstream.http2 && headers::is_upgrade(req.headers());
        let version = req.version();
        // The forwarding policy (`policy`), the engine's too.
        let rules = policy::Rules {
            preview: preview.as_ref().map(|p| p.as_str()),
            upgrade,
            http2: upstream.http2,
            shadow: false,
        };
        let bodyless = http_body::Body::is_end_stream(req.body());
        // The request's head as received, when it is to be copied (`serve::shadow`).
        let copy = shadow.map(|s| {
            let copy = crate::serve::shadow::CopiedHead {
                method: req.method().clone(),
                path: req.uri().path_and_query().cloned(),
                headers: req.headers().clone(),
                version,
                authority: host.clone(),
                preview: preview.clone(),
            };
            (s, copy)
        });
        let id = policy::apply(
            req.headers_mut(),
            &rules,
            &conn.peer_header,
            conn.https,
            host.as_ref(),
            instance,
            version,
        );
        if !upstream.http2 {
            headers::chunk_for_trailers(req.headers_mut(), version, bodyless);
        }
        // A copy with a body takes it from `RequestBody` as hyper's client sends it (the tee).
        let tee = copy.and_then(|(shadow, copy)| {
            let body_len = if bodyless { 0 } else { declared.unwrap_or(0) };
            crate::serve::shadow::send(self, conn, &shadow, &limits, copy, &id, body_len)
        });
        if let Some(log) = &mut log {
            log.sent_with(id);
        }
        let path = req.uri_mut().path_and_query().cloned();
        // HTTP/1 downstream to a plain HTTP/1.1 upstream: this connection's own upstream
        // connection (see `pinned`), which takes an origin-form request target.
        let pinned = !upgrade
            && !upstream.http2
            && upstream.scheme == http::uri::Scheme::HTTP
            && version <= http::Version::HTTP_11;
        *req.uri_mut() = match path {
            Some(p) if pinned => p.into(),
            path => upstream.uri(instance, path),
        };
        let upstream_version = if upstream.http2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        *req.version_mut() = upstream_version;
        let deadline = crate::clock::deadline(start, limits.timeout);
        let (parts, body) = req.into_parts();
        if direct::serves(version, upstream, upgrade, bodyless, &parts) {
            // The engine's own exchange (`direct`).
            let len = if bodyless { 0 } else { declared.unwrap_or(0) };
            let body = direct::RequestBody { body, len, tee };
            let held = Held { slot, expect: None };
            return Either::Right(Either::Left(async move {
                let (target, mut held) = (&target_arc, held);
                let mut index = index;
                let sent = direct::send(
                    &parts, body, target, &mut index, &mut held, &limits, deadline,
                );
                match sent.await {
                    Ok(resp) => {
                        let resp = resp.map(body::Source::Own);
                        self.relay(resp, target, index, &limits, start, None, held, log)
                    }
                    Err(e) => {
                        let instance = &target.upstream.instances[index];
                        tracing::debug!(route = %target.route, target = %target.name, %instance, ?e, "upstream request failed");
                        self.fail(target, index, &limits, e, start, log)
                    }
                }
            }));
        }
        let out = Outbound {
            target: target_arc.clone(),
            index,
            slot,
            limits,
            start,
            log,
            upgrade,
            bodyless,
            pinned,
            deadline,
            tee,
        };
        // Boxed: the future of this path is large (hyper's client, the pinned slot, resends) and
        // would otherwise make every stream's task that size, the direct path's included.
        let req = Request::from_parts(parts, body);
        Either::Right(Either::Right(Box::pin(self.with_client(req, conn, out))))
    }

    /// Sends the forwarded request through hyper's clients (this connection's pinned one, or the
    /// shared pools) with what resends and connect retries need, and relays the answer.
    async fn with_client(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        out: Outbound,
    ) -> Response<ProxyBody> {
        let Outbound {
            target: target_arc,
            mut index,
            slot,
            limits,
            start,
            log,
            upgrade,
            bodyless,
            pinned,
            deadline,
            tee,
        } = out;
        let target = &target_arc;
        let upstream = &target.upstream;
        let mut instance = &upstream.instances[index];
        let mut req = req;
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        // `Expect: 100-continue`: the body waits for the upstream's own `100 Continue`.
        let (expect, gate) = match !upgrade && !upstream.http2 {
            true => expect::watch(&mut req).unzip(),
            false => (None, None),
        };
        let mut held = Held { slot, expect };
        let (parts, body) = req.into_parts();
        // A request that a failed connect may move to another instance (`connect_retry`) keeps
        // what sending it again needs, as one to an HTTP/2 upstream does for a resend (`resend`,
        // `body::Replay`); an `Expect: 100-continue` body waits on its gate instead.
        let movable = !upgrade && upstream.instances.len() > 1;
        let keep_body = upstream.http2 || (movable && gate.is_none());
        let (mut body, watch, replay) = if keep_body && !bodyless {
            let (body, watch, replay) = RequestBody::replayable(body, limits.max_body_bytes);
            (body, watch, Some(replay))
        } else {
            let (body, watch) = RequestBody::new(body, limits.max_body_bytes, gate);
            (body, watch, None)
        };
        if let Some(tee) = tee {
            body.tee(tee);
        }
        let mut req = Request::from_parts(parts, body);
        // What a resend needs, when some failure could allow one (`resend`). (A request hyper
        // never wrote is handed back and written again by `pinned` and hyper's pool without it.)
        let mut kept = match upgrade {
            false => resend::Kept::of(&req, upstream.http2, replay, movable),
            true => None,
        };
        // The deadline passing while flipgate waits on the client's body is the client's fault.
        let timed_out = || match watch.waiting_on_client() {
            true => ProxyError::Client(ClientErrorKind::BodyTimeout),
            false => ProxyError::Upstream(UpstreamErrorKind::Timeout),
        };

        let client = self.clients.for_upstream(upstream);
        let mut moved = false;
        if pinned {
            loop {
                let idle = crate::upstream::idle::Idle::new(limits.pool_idle_timeout);
                let load = upstream.load(index);
                let send = conn
                    .pinned
                    .send(instance, load, limits.connect_timeout, idle, req);
                match tokio::time::timeout_at(deadline, send).await {
                    Ok(Ok(Ok(resp))) => {
                        let resp = resp.map(body::Source::Hyper);
                        return self.relay(resp, target, index, &limits, start, None, held, log);
                    }
                    Ok(Ok(Err(e))) => {
                        if let Some(again) = kept.as_mut().and_then(|k| k.again(e.unanswered())) {
                            tracing::debug!(route = %target.route, target = %target.name, %instance, error = %e, "pinned connection failed before answering; resending");
                            req = again;
                            continue;
                        }
                        let connect = matches!(e, pinned::PinnedError::Connect(..));
                        if connect && !moved {
                            let to = elsewhere(
                                target,
                                e.classify(),
                                &mut index,
                                &mut held,
                                &limits,
                                kept.as_mut(),
                            );
                            if let Some((again, to)) = to {
                                (req, instance, moved) = (again, to, true);
                                continue;
                            }
                        }
                        log_failure(target, instance, &e);
                        return self.fail(target, index, &limits, e.classify(), start, log);
                    }
                    Err(_) => return self.fail(target, index, &limits, timed_out(), start, log),
                    // No room for another pinned connection: the shared pool takes it.
                    Ok(Err(back)) => {
                        req = back;
                        let path = req.uri().path_and_query().cloned();
                        *req.uri_mut() = upstream.uri(instance, path);
                        if let Some(k) = &mut kept {
                            k.uri = req.uri().clone();
                        }
                        break;
                    }
                }
            }
        }
        let mut result = tokio::time::timeout_at(deadline, client.request(req)).await;
        while let (Ok(Err(e)), Some(k)) = (&result, kept.as_mut()) {
            let again = match k.again(resend::unanswered(e)) {
                Some(again) => again,
                None if !moved && e.is_connect() => {
                    let Some((mut again, to)) = elsewhere(
                        target,
                        classify(e),
                        &mut index,
                        &mut held,
                        &limits,
                        Some(&mut *k),
                    ) else {
                        break;
                    };
                    (instance, moved) = (to, true);
                    *again.uri_mut() =
                        upstream.uri(instance, again.uri().path_and_query().cloned());
                    k.uri = again.uri().clone();
                    again
                }
                None => break,
            };
            tracing::debug!(route = %target.route, target = %target.name, %instance, error = %e, "upstream failed before answering; sending again");
            result = tokio::time::timeout_at(deadline, client.request(again)).await;
        }
        drop(kept); // the response head is in (or the exchange failed): stop keeping the body
        let resp = match result {
            Ok(Ok(r)) => r.map(body::Source::Hyper),
            Ok(Err(e)) => {
                log_failure(target, instance, &e);
                return self.fail(target, index, &limits, classify(&e), start, log);
            }
            Err(_) => return self.fail(target, index, &limits, timed_out(), start, log),
        };
        self.relay(
            resp,
            target,
            index,
            &limits,
            start,
            downstream_upgrade,
            held,
            log,
        )
    }

    /// Records the upstream's answer and turns it into the downstream response (or a tunnel).
    #[allow(clippy::too_many_arguments)]
    fn relay(
        &self,
        mut resp: Response<body::Source>,
        target: &Arc<TargetEntry>,
        index: usize,
        limits: &Limits,
        start: Instant,
        downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
        held: Held,
        log: Option<crate::observe::access_log::Pending>,
    ) -> Response<ProxyBody> {
        let status = resp.status();
        // A 101 to a request that asked for no upgrade is an invalid response (the engine's rule
        // too): the connection now speaks something else.
        if status == StatusCode::SWITCHING_PROTOCOLS && downstream_upgrade.is_none() {
            let e = ProxyError::Upstream(UpstreamErrorKind::Reset);
            return self.fail(target, index, limits, e, start, log);
        }
        // A gRPC call's outcome is its `grpc-status`: now when the head carries it
        // (Trailers-Only), else when the trailers arrive (`GrpcOutcome`).
        let mut grpc = None;
        if status == StatusCode::OK && grpc::is_grpc(resp.headers()) {
            let elapsed = start.elapsed();
            target
                .metrics
                .record(status.as_u16(), elapsed.as_secs_f64());
            let outcome = body::GrpcOutcome {
                target: target.clone(),
                index,
                outlier: limits.outlier,
                elapsed,
            };
            match grpc::status(resp.headers()) {
                Some(code) => outcome.finish(code),
                None => grpc = Some(outcome),
            }
        } else {
            record_answer(target, index, limits, status.as_u16(), start);
        }
        if let Some(log) = log {
            log.finish(target, status, start);
        }

        if status == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(down) = downstream_upgrade {
                let up = hyper::upgrade::on(&mut resp);
                let close_after_flip = limits
                    .tunnel_after_flip
                    .map(|d| (self.snapshot.clone(), target.clone(), d));
                let websocket = resp
                    .headers()
                    .get(header::UPGRADE)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
                let setup = tunnel::Setup {
                    gauge: target.metrics.tunnels.clone(),
                    slot: held.slot,
                    tunnels: self.tunnels.clone(),
                    close_after_flip,
                    idle: limits.tunnel_idle_timeout,
                    websocket,
                };
                tokio::spawn(tunnel::relay(down, up, setup));
                let (parts, _) = resp.into_parts();
                return Response::from_parts(parts, ProxyBody::empty());
            }
        }
        let (mut parts, body) = resp.into_parts();
        headers::strip_response(&mut parts.headers);
        headers::add_via(&mut parts.headers, parts.version);
        parts.version = http::Version::HTTP_11;
        Response::from_parts(
            parts,
            ProxyBody::upstream(body, held, limits.body_idle_timeout, grpc),
        )
    }

    /// Answers a failed upstream exchange, recorded by the side that failed (`record_local`).
    fn fail(
        &self,
        target: &TargetEntry,
        index: usize,
        limits: &Limits,
        e: ProxyError,
        start: Instant,
        log: Option<crate::observe::access_log::Pending>,
    ) -> Response<ProxyBody> {
        let at = At::Target {
            target,
            index,
            limits,
        };
        record_local(at, e, start, log);
        local(e)
    }
}
