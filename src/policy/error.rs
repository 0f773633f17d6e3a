//! Errors of the data path, classified by which side failed, and their status codes.
//!
//! Invariants: only `Upstream` errors count against a target (instance health, the circuit window,
//! `upstream_errors_total`). A client that sends a bad request, stalls or goes away (`Client`) and
//! flipgate's own limits and resources (`Local`) are counted in their own families
//! (`client_errors_total`, `local_errors_total`) and never trip or eject anything. Every error
//! maps to exactly one status code and one body, here.

use http::StatusCode;

use crate::upstream::body::RequestBodyError;
use crate::upstream::ConnectError;

pub use crate::observe::labels::{ClientErrorKind, LocalErrorKind, UpstreamErrorKind};

/// Why flipgate answered a request itself instead of relaying the upstream's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// No route matches host and path: the client's side (no target to count it for).
    NoRoute,
    /// The client's side.
    Client(ClientErrorKind),
    /// The upstream failed: counts against the target.
    Upstream(UpstreamErrorKind),
    /// No instance of the target passes its health checks.
    NoHealthy,
    /// flipgate's own limits or resources.
    Local(LocalErrorKind),
}

impl ProxyError {
    /// The status code the client gets.
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Client(ClientErrorKind::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Client(ClientErrorKind::BodyTimeout) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Client(ClientErrorKind::TooManyHeaders | ClientErrorKind::HeadTooLarge) => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            ProxyError::Client(_) => StatusCode::BAD_REQUEST,
            ProxyError::Upstream(UpstreamErrorKind::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::NoHealthy | ProxyError::Local(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Why, in one word: the access log's `error` field, the same word as the metric's `kind`
    /// label where there is one (`no_route` and `no_healthy` have none: `client_errors_total`
    /// counts a 404 under `route=""`, a 503 without healthy instance is in `requests_total`).
    pub fn label(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::Client(k) => k.label(),
            ProxyError::Upstream(UpstreamErrorKind::Connect) => "connect",
            ProxyError::Upstream(UpstreamErrorKind::Timeout) => "timeout",
            ProxyError::Upstream(UpstreamErrorKind::Reset) => "reset",
            ProxyError::Upstream(UpstreamErrorKind::Status5xx) => "status_5xx",
            ProxyError::NoHealthy => "no_healthy",
            ProxyError::Local(k) => k.label(),
        }
    }

    /// A short body naming the problem (no internals).
    pub fn body(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "flipgate: no route for this host and path\n",
            ProxyError::Client(ClientErrorKind::BadRequest) => "flipgate: bad request\n",
            ProxyError::Client(ClientErrorKind::TooLarge) => "flipgate: request body too large\n",
            ProxyError::Client(ClientErrorKind::BodyAborted) => {
                "flipgate: request body could not be read\n"
            }
            ProxyError::Client(ClientErrorKind::BodyTimeout) => {
                "flipgate: request body not received in time\n"
            }
            ProxyError::Client(ClientErrorKind::TooManyHeaders) => {
                "flipgate: too many request header fields\n"
            }
            ProxyError::Client(ClientErrorKind::HeadTooLarge) => {
                "flipgate: request head too large\n"
            }
            ProxyError::Upstream(UpstreamErrorKind::Connect) => {
                "flipgate: could not connect to the upstream\n"
            }
            ProxyError::Upstream(UpstreamErrorKind::Timeout) => "flipgate: upstream timed out\n",
            ProxyError::Upstream(_) => "flipgate: upstream closed the connection\n",
            ProxyError::NoHealthy => "flipgate: no healthy upstream instance\n",
            ProxyError::Local(LocalErrorKind::Busy) => {
                "flipgate: too many requests in flight to the upstream\n"
            }
            ProxyError::Local(LocalErrorKind::Resources) => "flipgate: out of local resources\n",
            ProxyError::Local(LocalErrorKind::Drained) => {
                "flipgate: every instance of the target is drained\n"
            }
            ProxyError::Local(LocalErrorKind::Refused) => {
                "flipgate: upstream refused the request without processing it; it can be retried\n"
            }
        }
    }
}

/// Whether a failed connect was flipgate's own resources running out (not the upstream's fault).
pub fn is_local_resource(e: &std::io::Error) -> bool {
    #[cfg(target_os = "linux")]
    {
        matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
        )
    }
    #[cfg(not(target_os = "linux"))]
    {
        matches!(
            e.kind(),
            std::io::ErrorKind::OutOfMemory | std::io::ErrorKind::AddrNotAvailable
        )
    }
}

/// The error for a failed connect to an upstream.
pub fn connect_error(e: &std::io::Error) -> ProxyError {
    if is_local_resource(e) {
        ProxyError::Local(LocalErrorKind::Resources)
    } else if e.kind() == std::io::ErrorKind::TimedOut {
        ProxyError::Upstream(UpstreamErrorKind::Timeout)
    } else {
        ProxyError::Upstream(UpstreamErrorKind::Connect)
    }
}

/// The error for a failed request body, by its cause: the client's side either way. (A
/// `Withdrawn` body only ever fails an attempt that had already failed otherwise.)
pub fn body_error(e: &RequestBodyError) -> ProxyError {
    ProxyError::Client(match e {
        RequestBodyError::TooLarge => ClientErrorKind::TooLarge,
        RequestBodyError::Client(_) | RequestBodyError::Withdrawn => ClientErrorKind::BodyAborted,
    })
}

/// Classifies a failed upstream exchange by side: a fault of the client's request body (too
/// large, aborted) is the client's and never counts against the target, nor does running out of
/// local resources on connect, nor a request the upstream refused unprocessed (`Refused`, see
/// `resend`); everything else is the upstream's: connect failures, timeouts (TCP or TLS), and
/// resets or early closes.
pub fn classify(e: &hyper_util::client::legacy::Error) -> ProxyError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut timed_out = false;
    while let Some(s) = src {
        if let Some(b) = s.downcast_ref::<RequestBodyError>() {
            return body_error(b);
        }
        if s.downcast_ref::<h2::Error>()
            .is_some_and(super::resend::refused)
        {
            return ProxyError::Local(LocalErrorKind::Refused);
        }
        if let Some(c) = s.downcast_ref::<ConnectError>() {
            timed_out |= matches!(c, ConnectError::TlsTimeout);
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if is_local_resource(io) {
                return ProxyError::Local(LocalErrorKind::Resources);
            }
            timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
        }
        src = s.source();
    }
    ProxyError::Upstream(match () {
        _ if timed_out => UpstreamErrorKind::Timeout,
        _ if e.is_connect() => UpstreamErrorKind::Connect,
        _ => UpstreamErrorKind::Reset,
    })
}
