//! Errors of the data path, classified by which side failed, and their status codes.
//!
//! Invariants: only `Upstream` errors count against a target (metrics and circuit); client-side
//! problems (bad requests, no route) never do. Every error maps to exactly one status code, here.

use http::StatusCode;

use super::body::RequestBodyError;
use crate::upstream::ConnectError;

/// Kinds of upstream fault, as in `upstream_errors_total{kind}`. The discriminant indexes the
/// pre-resolved metric handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect = 0,
    Timeout = 1,
    Reset = 2,
    Status5xx = 3,
}

/// Why flipgate answered a request itself instead of relaying the upstream's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// No route matches host and path: the client's side.
    NoRoute,
    /// The request cannot be forwarded as it is: the client's side.
    BadRequest,
    /// The upstream failed: counts against the target.
    Upstream(UpstreamErrorKind),
    /// No instance of the target can take the request (e.g. `max_upstream_connections` reached).
    NoHealthy,
    /// The request body is over `server.max_body_bytes`: the client's side.
    TooLarge,
    /// The client's request body failed mid-stream: the client's side.
    ClientBody,
}

impl ProxyError {
    /// The status code the client gets.
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadRequest => StatusCode::BAD_REQUEST,
            ProxyError::Upstream(UpstreamErrorKind::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::NoHealthy => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::ClientBody => StatusCode::BAD_REQUEST,
        }
    }

    /// A short body naming the problem (no internals).
    pub fn body(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "flipgate: no route for this host and path\n",
            ProxyError::BadRequest => "flipgate: bad request\n",
            ProxyError::Upstream(UpstreamErrorKind::Connect) => {
                "flipgate: upstream refused the connection\n"
            }
            ProxyError::Upstream(UpstreamErrorKind::Timeout) => "flipgate: upstream timed out\n",
            ProxyError::Upstream(_) => "flipgate: upstream closed the connection\n",
            ProxyError::NoHealthy => "flipgate: no healthy upstream instance\n",
            ProxyError::TooLarge => "flipgate: request body too large\n",
            ProxyError::ClientBody => "flipgate: request body could not be read\n",
        }
    }
}

/// Classifies a failed upstream exchange by side: a fault of the client's request body (too
/// large, aborted) is the client's and never counts against the target; everything else is the
/// upstream's: connect failures, timeouts (TCP or TLS), and resets or early closes.
pub fn classify(e: &hyper_util::client::legacy::Error) -> ProxyError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut timed_out = false;
    while let Some(s) = src {
        if let Some(b) = s.downcast_ref::<RequestBodyError>() {
            return match b {
                RequestBodyError::TooLarge => ProxyError::TooLarge,
                RequestBodyError::Client(_) => ProxyError::ClientBody,
            };
        }
        if let Some(c) = s.downcast_ref::<ConnectError>() {
            timed_out |= matches!(c, ConnectError::TlsTimeout);
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
        }
        // The HTTP connector reports its own timeout as text only.
        timed_out |= e.is_connect() && s.to_string().contains("timed out");
        src = s.source();
    }
    ProxyError::Upstream(match () {
        _ if timed_out => UpstreamErrorKind::Timeout,
        _ if e.is_connect() => UpstreamErrorKind::Connect,
        _ => UpstreamErrorKind::Reset,
    })
}

/// Whether the upstream closed a (pooled) connection before answering, the race between its
/// keep-alive timeout and our reuse: safe to resend once when the request had no body.
pub fn is_idle_race(e: &hyper_util::client::legacy::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            return h.is_incomplete_message() || h.is_canceled();
        }
        src = s.source();
    }
    false
}
