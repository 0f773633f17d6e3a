//! Errors of the data path, classified by which side failed, and their status codes.
//!
//! Invariants: only `Upstream` errors count against a target (metrics and circuit); client-side
//! problems (bad requests, no route) never do. Every error maps to exactly one status code, here.

use http::StatusCode;

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
    /// No instance of the target can take the request.
    NoHealthy,
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
        }
    }
}

/// Classifies a client error: connect failures vs. everything else (resets, early close).
pub fn classify(e: &hyper_util::client::legacy::Error) -> UpstreamErrorKind {
    if e.is_connect() {
        // The connector reports its own timeout as a connect error; surface it as a timeout.
        let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(s) = src {
            if s.to_string().contains("timed out") {
                return UpstreamErrorKind::Timeout;
            }
            src = s.source();
        }
        return UpstreamErrorKind::Connect;
    }
    UpstreamErrorKind::Reset
}
