//! Label values of the metrics recorded by kind: the error kinds of each side, the gRPC status
//! code names and the admin API's refusal reasons. A leaf module: `metrics` resolves its handles from these and
//! the data path (`policy::error`, `policy::grpc`) classifies into them, without either depending on
//! the other.
//!
//! Invariants: every enum's discriminant indexes its pre-resolved handle array in
//! `metrics::TargetMetrics`, and `ALL` lists the variants in discriminant order; label strings are
//! fixed, so cardinality is bounded by the route file.

/// Kinds of upstream fault, as in `upstream_errors_total{kind}`. The discriminant indexes the
/// pre-resolved metric handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect = 0,
    Timeout = 1,
    Reset = 2,
    Status5xx = 3,
}

/// Kinds of client-side failure, as in `client_errors_total{kind}` (discriminant = handle index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientErrorKind {
    /// The request cannot be forwarded as it is (e.g. a missing or invalid `Host`).
    BadRequest = 0,
    /// The request body is over `server.max_body_bytes`.
    TooLarge = 1,
    /// The client's request body broke off or was malformed mid-stream.
    BodyAborted = 2,
    /// The client stopped sending its request body: the exchange's deadline passed while
    /// flipgate was waiting on the client.
    BodyTimeout = 3,
    /// More header fields than `server.max_headers` (HTTP/2; HTTP/1.1's parsers refuse them
    /// before a route is known).
    TooManyHeaders = 4,
    /// A request head over `server.max_header_bytes` or with more fields than
    /// `server.max_headers`, refused by HTTP/1's parser (431) before any route is known: counted
    /// under `route=""`.
    HeadTooLarge = 5,
}

impl ClientErrorKind {
    pub const ALL: [ClientErrorKind; 6] = [
        ClientErrorKind::BadRequest,
        ClientErrorKind::TooLarge,
        ClientErrorKind::BodyAborted,
        ClientErrorKind::BodyTimeout,
        ClientErrorKind::TooManyHeaders,
        ClientErrorKind::HeadTooLarge,
    ];

    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            ClientErrorKind::BadRequest => "bad_request",
            ClientErrorKind::TooLarge => "too_large",
            ClientErrorKind::BodyAborted => "body_aborted",
            ClientErrorKind::BodyTimeout => "body_timeout",
            ClientErrorKind::TooManyHeaders => "too_many_headers",
            ClientErrorKind::HeadTooLarge => "head_too_large",
        }
    }
}

/// Kinds of failure of flipgate's own limits or resources, as in `local_errors_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalErrorKind {
    /// `server.max_upstream_connections` reached for the picked instance.
    Busy = 0,
    /// The process or the host ran out of something a connection needs (descriptors, memory,
    /// ephemeral ports): `EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`, `EADDRNOTAVAIL`.
    Resources = 1,
    /// The upstream refused the request unprocessed (HTTP/2 GOAWAY or `REFUSED_STREAM`, a normal
    /// part of its life) and flipgate could not send it again (`resend`): its body was over the
    /// replay bound (`body::REPLAY_MAX`) and already partly streamed, or the resend was refused
    /// too. Safe for the client to retry.
    Refused = 2,
    /// Every instance of the chosen target is drained by an operator (`drain`): nothing the
    /// target did, so it is never counted against it.
    Drained = 3,
}

impl LocalErrorKind {
    pub const ALL: [LocalErrorKind; 4] = [
        LocalErrorKind::Busy,
        LocalErrorKind::Resources,
        LocalErrorKind::Refused,
        LocalErrorKind::Drained,
    ];

    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            LocalErrorKind::Busy => "busy",
            LocalErrorKind::Resources => "resources",
            LocalErrorKind::Refused => "refused",
            LocalErrorKind::Drained => "drained",
        }
    }
}

/// The names of the gRPC status codes, by number.
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The `reason` labels of `flipgate_admin_refusals_total`, in `admin::guard::Refusal` order.
pub const ADMIN_REFUSALS: [&str; 5] = [
    "host",
    "cross_origin",
    "unauthorized",
    "token_unusable",
    "content_type",
];
