//! The data path: load snapshot -> route -> split -> forward -> record outcome.
//!
//! Invariants: one `ArcSwap` load per request, and the guard is dropped before the first `.await`
//! (the chosen target is kept alive by its own `Arc`), so a flip published mid-request never moves
//! a request already in flight. No locks; the routing and split decision allocates nothing. Request
//! bodies are streamed to the upstream untouched (webhook signatures depend on the exact bytes).
//! Only upstream faults are recorded against a target.

pub mod body;
pub mod error;
pub mod headers;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::snapshot::{Snapshot, TargetEntry};
use crate::split::{random_bucket, Reason};
use crate::upstream::Clients;
pub use body::ProxyBody;
use error::{classify, ProxyError, UpstreamErrorKind};

/// Everything the data path needs, shared by all connections.
pub struct Proxy {
    /// The published routing; loaded once per request.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Upstream clients, process-wide so pools survive reloads.
    pub clients: Clients,
}

/// Facts about the downstream connection, computed once per connection.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer IP formatted as a header value, for `X-Forwarded-For`.
    pub peer_header: HeaderValue,
    pub https: bool,
    /// This connection's own upstream connections (HTTP/1 requests to plain HTTP/1.1 upstreams).
    pub pinned: crate::pinned::Slot,
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
            pinned: crate::pinned::Slot::default(),
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

impl Proxy {
    /// Serves one request. Never fails: every problem becomes a response.
    pub async fn serve(&self, mut req: Request<Incoming>, conn: &ConnInfo) -> Response<ProxyBody> {
        let start = Instant::now();
        let (target, reason, timeout, connect_timeout) = {
            let snap = self.snapshot.load();
            let host = req.uri().host().or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
            });
            let Some(ri) = snap.router.lookup(host, req.uri().path()) else {
                return local(ProxyError::NoRoute);
            };
            let route = &snap.routes[ri];
            let mut choice = None;
            if let Some(p) = &route.preview {
                if let Some(v) = req.headers_mut().remove(&p.header) {
                    if p.allow_from.iter().any(|n| n.contains(&conn.peer.ip())) {
                        choice = route
                            .targets
                            .iter()
                            .position(|t| t.name.as_bytes() == v.as_bytes())
                            .map(|i| (i, Reason::Preview));
                    }
                }
            }
            let (ti, reason) =
                choice.unwrap_or_else(|| route.split.decide(req.headers(), random_bucket));
            (
                route.targets[ti].clone(),
                reason,
                snap.config.server.upstream_timeout,
                snap.config.server.connect_timeout,
            )
        };
        let _ = reason;
        let timeouts = (timeout, connect_timeout);
        self.forward(req, conn, &target, timeouts, start).await
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
        target: &Arc<TargetEntry>,
        (timeout, connect_timeout): (std::time::Duration, std::time::Duration),
        start: Instant,
    ) -> Response<ProxyBody> {
        let upgrade = headers::is_upgrade(req.headers());
        let version = req.version();
        let upstream = &target.upstream;
        let host = match req.headers().get(header::HOST) {
            Some(h) => Some(h.clone()),
            None => req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        };
        {
            let h = req.headers_mut();
            headers::strip_hop_by_hop(h, upgrade, upstream.http2);
            headers::set_forwarded(h, &conn.peer_header, conn.https, host.clone());
            headers::add_via(h, version);
            headers::ensure_request_id(h);
            if let Some(host) = host {
                if upstream.http2 {
                    h.remove(header::HOST);
                } else {
                    h.insert(header::HOST, host);
                }
            }
        }
        let instance = upstream.pick();
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
        *req.version_mut() = if upstream.http2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let send = async {
            let mut req = req;
            if pinned {
                match conn.pinned.send(instance, connect_timeout, req).await {
                    Ok(r) => return r.map_err(|e| (e.kind(), e.to_string())),
                    // No room for another pinned connection: the shared pool takes it.
                    Err(back) => req = back,
                }
                let path = req.uri().path_and_query().cloned();
                *req.uri_mut() = upstream.uri(instance, path);
            }
            let client = self.clients.for_upstream(upstream);
            client
                .request(req)
                .await
                .map_err(|e| (classify(&e), e.to_string()))
        };
        let result = tokio::time::timeout(timeout, send).await;
        let elapsed = start.elapsed();
        let now_ms = crate::clock::now_ms();
        let mut resp = match result {
            Ok(Ok(r)) => r,
            Ok(Err((kind, e))) => {
                tracing::debug!(route = %target.route, target = %target.name, %instance, error = %e, "upstream request failed");
                return self.fail(target, kind, now_ms, elapsed);
            }
            Err(_) => return self.fail(target, UpstreamErrorKind::Timeout, now_ms, elapsed),
        };
        let status = resp.status();
        let is_5xx = status.is_server_error();
        if is_5xx {
            target.metrics.upstream_error(UpstreamErrorKind::Status5xx);
        }
        target
            .window
            .record(now_ms, is_5xx, elapsed.as_millis() as u64);
        target
            .metrics
            .record(status.as_u16(), elapsed.as_secs_f64());

        if status == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(down) = downstream_upgrade {
                let up = hyper::upgrade::on(&mut resp);
                let gauge = target.metrics.tunnels.clone();
                tokio::spawn(async move {
                    let (Ok(down), Ok(up)) = tokio::join!(down, up) else {
                        return;
                    };
                    gauge.inc();
                    let _ = tokio::io::copy_bidirectional(
                        &mut TokioIo::new(down),
                        &mut TokioIo::new(up),
                    )
                    .await;
                    gauge.dec();
                });
                let (parts, _) = resp.into_parts();
                return Response::from_parts(parts, ProxyBody::empty());
            }
        }
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, false, false);
        headers::add_via(&mut parts.headers, parts.version);
        parts.version = http::Version::HTTP_11;
        Response::from_parts(parts, ProxyBody::Upstream(body))
    }

    fn fail(
        &self,
        target: &TargetEntry,
        kind: UpstreamErrorKind,
        now_ms: u64,
        elapsed: std::time::Duration,
    ) -> Response<ProxyBody> {
        let e = ProxyError::Upstream(kind);
        target.metrics.upstream_error(kind);
        target
            .window
            .record(now_ms, true, elapsed.as_millis() as u64);
        target
            .metrics
            .record(e.status().as_u16(), elapsed.as_secs_f64());
        local(e)
    }
}
