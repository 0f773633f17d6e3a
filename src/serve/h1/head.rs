//! Message heads for the HTTP/1.1 engine: parses a request head, decides where it goes (the one
//! snapshot load of the request) and writes the upstream's request head; parses the upstream's
//! response head and writes the client's.
//!
//! Invariants: heads are parsed by `httparse` (strict: no obs-fold, token and value characters
//! checked) into a stack array, and written byte for byte as received except for what a proxy
//! must change (RFC 9110 §7.6), and that is decided by the forwarding policy's one table
//! (`policy::policy`, which hyper's path applies to its `HeaderMap`): `write_request` keeps, drops
//! or replaces each field as `policy::action` says and writes `policy::added`'s fields after them. Anything this engine does not handle (HTTP/1.0, a
//! request body that is chunked or over `MAX_BODY`, `Expect`, upgrades, CONNECT, non-origin-form
//! targets, repeated `Content-Length`, an unparsable head, an upstream over TLS or
//! HTTP/2) is `Plan::Fallback`: nothing is consumed and hyper serves the connection from here on,
//! so its answers (400, 431, 505, …) stay what they were. Nothing here allocates in the common
//! case; the snapshot guard never leaves `request`.

use std::mem::MaybeUninit;
use std::sync::Arc;

use http::uri::Authority;
use tokio::time::Instant;

use crate::observe::access_log::Pending;
use crate::policy::decide::decide;
use crate::policy::error::ProxyError;
use crate::policy::forward::{self as policy, hop_by_hop, Action, Added, Rules, Value};
use crate::policy::headers::{has_token, request_authority, request_id_ok};
use crate::policy::resend;
use crate::serve::proxy::{admit, record_local, At, ConnInfo, Limits, Proxy};
use crate::serve::shadow::CopiedHead;
use crate::snapshot::split::Reason;
use crate::snapshot::TargetEntry;
use crate::upstream::tee::Tee;
use crate::upstream::InflightGuard;

/// Header fields parsed on the stack; a head with more goes to hyper when the configured
/// `max_headers` allows more (hyper then applies the limit).
pub const MAX_HEADERS: usize = 128;

/// Request bodies up to this size (declared by `Content-Length`) are relayed here: they fit the
/// socket buffers, so sending the body before reading the response cannot deadlock with an
/// upstream that answers early. Larger ones go to hyper, which does both at once.
pub const MAX_BODY: u64 = 64 * 1024;

/// What to do with a complete request head.
#[allow(clippy::large_enum_variant)] // moved once per request; a box would be an allocation
pub enum Plan {
    /// Hand the connection, with every byte still buffered, to hyper.
    Fallback,
    /// Answer locally, consuming `head_len` bytes; `close` when the connection cannot be kept.
    Local {
        error: ProxyError,
        head_len: usize,
        close: bool,
    },
    /// Forward to the chosen instance; the upstream request head is in `out`. (Not boxed: it is
    /// moved once, and a box would be an allocation per request.)
    Forward(Forward),
}

/// A request on its way to an upstream.
pub struct Forward {
    pub head_len: usize,
    /// `Content-Length` of the request body (0 when none).
    pub body_len: u64,
    pub target: Arc<TargetEntry>,
    pub index: usize,
    pub instance: Authority,
    pub limits: Limits,
    /// The client sent `Connection: close`.
    pub close: bool,
    /// A HEAD request: the response has no body whatever its headers say.
    pub head_method: bool,
    /// The method's part in whether the request may be resent (`resend::idempotent`).
    pub idempotent: bool,
    pub reason: Reason,
    pub access: Option<Pending>,
    /// The in-flight slot (balancing and drain count it; `max_upstream_connections` bounds it),
    /// released when the exchange ends.
    pub slot: Option<InflightGuard>,
    /// A shadow copy waiting for this request's body (`upstream::tee`), fed as it is sent.
    pub tee: Option<Tee>,
}

/// The outcome of looking at the buffered bytes of a connection.
#[allow(clippy::large_enum_variant)] // returned by value, never stored
pub enum Head {
    /// The head is not complete yet.
    Partial,
    Plan(Plan),
}

fn is(name: &str, lower: &str) -> bool {
    name.len() == lower.len() && name.eq_ignore_ascii_case(lower)
}

/// Whether `name` is listed in one of the `Connection` values (indices into `headers`).
fn listed(headers: &[httparse::Header<'_>], conn: &[usize], name: &str) -> bool {
    conn.iter().any(|&i| {
        headers[i]
            .value
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
    })
}

/// Whether a `Connection` value names any field (a token other than `close` / `keep-alive`).
fn names_fields(v: &[u8]) -> bool {
    v.split(|&b| b == b',').any(|t| {
        let t = t.trim_ascii();
        !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
    })
}

fn parse_len(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A response's `Content-Length`, also as a list of identical values (`6, 6`: RFC 9110 §8.6 lets
/// a recipient take it, and hyper's client does).
fn parse_len_list(v: &[u8]) -> Option<u64> {
    let mut values = v.split(|&b| b == b',').map(parse_len);
    let first = values.next()??;
    values.all(|n| n == Some(first)).then_some(first)
}

fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Looks at a connection's buffered bytes: a complete head becomes a plan (and, to forward, the
/// upstream request head written to `out`).
pub fn request(
    proxy: &Proxy,
    conn: &ConnInfo,
    buf: &[u8],
    out: &mut Vec<u8>,
    max_head_bytes: usize,
    max_headers: usize,
    start: Instant,
) -> Head {
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len =
        match req.parse_with_uninit_headers(buf, &mut storage[..max_headers.min(MAX_HEADERS)]) {
            Ok(httparse::Status::Complete(n)) if n <= max_head_bytes => n,
            Ok(httparse::Status::Partial) if buf.len() <= max_head_bytes => return Head::Partial,
            // Malformed or over the limits: hyper gives its answer (400, 431, 505).
            _ => return Head::Plan(Plan::Fallback),
        };
    Head::Plan(plan(proxy, conn, &req, head_len, out, start))
}

/// What the engine learns from a request head's fields before deciding anything.
pub(crate) struct Scan {
    /// `Content-Length`, when declared.
    pub body_len: Option<u64>,
    /// Indices of the `Connection` fields that name fields (at most 4; more go to hyper).
    pub conn_fields: [usize; 4],
    pub n_conn: usize,
    /// The client sent `Connection: close`.
    pub close: bool,
}

/// Looks at the fields this engine must understand; `None` for a request it hands to hyper
/// (`Transfer-Encoding`, `Expect`, `Upgrade`, a repeated or invalid `Content-Length`, more than 4
/// `Connection` fields naming fields).
pub(crate) fn scan(headers: &[httparse::Header<'_>]) -> Option<Scan> {
    let mut s = Scan {
        body_len: None,
        conn_fields: [0; 4],
        n_conn: 0,
        close: false,
    };
    for (i, h) in headers.iter().enumerate() {
        let name = h.name;
        match name.len() {
            14 if is(name, "content-length") => {
                let (None, Some(n)) = (s.body_len, parse_len(h.value)) else {
                    return None;
                };
                s.body_len = Some(n);
            }
            17 if is(name, "transfer-encoding") => return None,
            6 if is(name, "expect") => return None,
            7 if is(name, "upgrade") => return None,
            10 if is(name, "connection") => {
                if names_fields(h.value) {
                    if s.n_conn == s.conn_fields.len() {
                        return None;
                    }
                    s.conn_fields[s.n_conn] = i;
                    s.n_conn += 1;
                }
                s.close |= has_token(h.value, b"close");
            }
            _ => {}
        }
    }
    Some(s)
}

/// The request id a forwarded request carries: the client's (a slice of its head) or a new one.
pub(crate) enum RequestId<'h> {
    Kept(&'h [u8]),
    New([u8; 32]),
}

impl RequestId<'_> {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Kept(v) => v,
            RequestId::New(v) => v,
        }
    }
}

/// Writes the upstream's request head into `out` (cleared first): the request line (always
/// HTTP/1.1), then the fields as the forwarding policy says (`proxy::policy`): the client's
/// fields the table keeps, byte for byte, then the added ones. `conn_fields` are `Scan`'s.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_request<'h>(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    headers: &'h [httparse::Header<'h>],
    conn_fields: &[usize],
    rules: &Rules<'_>,
    conn: &ConnInfo,
    authority: Option<&[u8]>,
    instance: &Authority,
    version: http::Version,
) -> RequestId<'h> {
    out.clear();
    out.reserve(1024);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let listed = |name: &str| {
        !conn_fields.is_empty()
            && policy::listed_in(conn_fields.iter().map(|&i| headers[i].value), name)
    };
    let mut xff = false;
    let mut te_trailers = false;
    let mut request_id: Option<&'h [u8]> = None;
    for h in headers {
        match policy::action(h.name, rules, listed) {
            Action::Keep => put_header(out, h.name.as_bytes(), h.value),
            Action::Drop => {}
            Action::Replace(Added::XForwardedFor) => xff |= !h.value.is_empty(),
            Action::Replace(Added::Te) => te_trailers |= has_token(h.value, b"trailers"),
            Action::Replace(Added::RequestId) => {
                if request_id.is_none() && request_id_ok(h.value) {
                    request_id = Some(h.value);
                }
            }
            Action::Replace(_) => {}
        }
    }
    let hop = policy::Hop {
        client: conn.peer_header.as_bytes(),
        https: conn.https,
        authority,
        instance,
        version,
        request_id,
        te_trailers,
    };
    let mut sent = None;
    for (field, value) in policy::added(rules, &hop) {
        out.extend_from_slice(field.name().as_bytes());
        out.extend_from_slice(b": ");
        match value {
            Value::Static(v) => out.extend_from_slice(v.as_bytes()),
            Value::Given(v) => out.extend_from_slice(v),
            Value::Instance(a) => out.extend_from_slice(a.as_str().as_bytes()),
            Value::ForwardedFor(client) => {
                // Every incoming field has the same action: all are merged, or none (listed).
                let prev = headers
                    .iter()
                    .filter(|h| xff && is(h.name, "x-forwarded-for"))
                    .map(|h| h.value);
                policy::join_forwarded_for(prev, client, out);
            }
            Value::Generated(id) => {
                out.extend_from_slice(&id);
                sent = Some(id);
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    match (request_id, sent) {
        (Some(id), _) => RequestId::Kept(id),
        (None, Some(id)) => RequestId::New(id),
        (None, None) => unreachable!("the policy always adds a request id"),
    }
}

fn plan(
    proxy: &Proxy,
    conn: &ConnInfo,
    req: &httparse::Request<'_, '_>,
    head_len: usize,
    out: &mut Vec<u8>,
    start: Instant,
) -> Plan {
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Plan::Fallback;
    };
    if !target.starts_with('/') || method == "CONNECT" {
        return Plan::Fallback;
    }
    let headers = &*req.headers;
    let Some(scan) = scan(headers) else {
        return Plan::Fallback;
    };
    let conn_fields = &scan.conn_fields[..scan.n_conn];
    let close = scan.close;
    let declared_body = scan.body_len;
    let body_len = declared_body.unwrap_or(0);
    let path = target.split_once('?').map_or(target, |(p, _)| p);

    let snap = proxy.snapshot.load();
    let access = crate::observe::access_log::sample(&snap.config.log);
    // The access line of a request, when sampled (allocates only then).
    let log = |request_id: Option<&[u8]>, reason| {
        access.map(|format| {
            Pending::new(
                format,
                http::Method::from_bytes(method.as_bytes()).unwrap_or(http::Method::GET),
                path.to_string(),
                request_id.and_then(|id| http::HeaderValue::from_bytes(id).ok()),
                conn.peer.ip(),
                reason,
            )
        })
    };
    let client_id = || {
        crate::policy::headers::incoming_request_id(
            headers
                .iter()
                .filter(|h| is(h.name, "x-request-id"))
                .map(|h| h.value),
        )
    };
    let hosts = headers
        .iter()
        .filter(|h| is(h.name, "host"))
        .map(|h| h.value);
    let host = match request_authority(http::Version::HTTP_11, None, hosts) {
        Ok(host) => host,
        Err(e) => {
            record_local(
                At::Unrouted(&snap.unrouted),
                e,
                start,
                log(client_id(), None),
            );
            // The rest of the head is not trusted to frame a body: the connection closes.
            return local(e, head_len, true, body_len);
        }
    };
    let host_str = host.and_then(|h| std::str::from_utf8(h).ok());

    let Some(d) = decide(&snap, host_str, path, headers, conn.peer.ip()) else {
        let e = ProxyError::NoRoute;
        record_local(
            At::Unrouted(&snap.unrouted),
            e,
            start,
            log(client_id(), None),
        );
        return local(e, head_len, close, body_len);
    };
    let route = &snap.routes[d.route];
    let (ti, reason) = (d.target, d.reason);
    let target_entry = &route.targets[ti];
    let upstream = &target_entry.upstream;
    if upstream.http2 || upstream.scheme != http::uri::Scheme::HTTP || body_len > MAX_BODY {
        return Plan::Fallback;
    }
    d.record(&snap);
    let limits = Limits::of(&snap.config.server);
    let (index, instance, slot) = match admit(target_entry, &limits, declared_body) {
        Ok((index, instance, slot)) => (index, instance.clone(), slot),
        Err((e, index)) => {
            let at = At::Target {
                target: target_entry,
                index,
                limits: &limits,
            };
            record_local(at, e, start, log(client_id(), Some(reason)));
            return local(e, head_len, close, body_len);
        }
    };
    let target_entry = target_entry.clone();
    let rules = Rules {
        preview: route.preview.as_ref().map(|p| p.header.as_str()),
        upgrade: false,
        http2: false,
        shadow: false,
    };
    let request_id = write_request(
        out,
        method,
        target,
        headers,
        conn_fields,
        &rules,
        conn,
        host,
        &instance,
        http::Version::HTTP_11,
    );
    let copy = crate::policy::shadow::decide(route, ti, || crate::policy::shadow::Request {
        method: method.as_bytes(),
        body: Some(body_len), // the engine relays only `Content-Length` bodies
        upgrade: false,       // handed over
    });
    // A copy with a body takes it from the engine's relay as it is sent (the tee).
    let tee = copy.and_then(|shadow| {
        let preview = route.preview.as_ref().map(|p| &p.header);
        let copy = CopiedHead::of_head(method, target, headers, host, preview)?;
        let id = http::HeaderValue::from_bytes(request_id.as_bytes()).ok()?;
        crate::serve::shadow::send(proxy, conn, shadow, &limits, copy, &id, body_len)
    });
    let access = log(Some(request_id.as_bytes()), Some(reason));
    let head_method = method == "HEAD";
    let idempotent = resend::idempotent(method.as_bytes());
    Plan::Forward(Forward {
        head_len,
        body_len,
        target: target_entry,
        index,
        instance,
        limits,
        close,
        head_method,
        idempotent,
        reason,
        access,
        slot,
        tee,
    })
}

fn local(error: ProxyError, head_len: usize, close: bool, body_len: u64) -> Plan {
    // The body of a refused request is not read: the connection cannot be reused after it.
    Plan::Local {
        error,
        head_len,
        close: close || body_len > 0,
    }
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes: the client connection closes after it too.
    Close,
}

/// A parsed upstream response head.
pub struct Response {
    pub head_len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The upstream connection may carry another request after this response.
    pub reusable: bool,
    /// The client's head says `connection: close`: the client connection ends after it.
    pub close: bool,
}

/// The outcome of looking at an upstream's buffered bytes.
pub enum UpstreamHead<R = Response> {
    Partial,
    /// An interim (1xx) response of this many bytes: skipped.
    Interim(usize),
    /// Not a usable HTTP/1.x response head.
    Invalid,
    Ready(R),
}

/// An upstream's final response head, parsed and judged: what `parse_response` hands to the
/// writer of the client's head (the engine's bytes, or hyper's `HeaderMap` on HTTP/2).
pub struct Parsed<'a, 'b> {
    /// The upstream's minor version (`HTTP/1.x`).
    pub version: u8,
    pub status: u16,
    pub reason: &'b str,
    pub framing: Framing,
    /// The upstream connection may carry another request after this response.
    pub reusable: bool,
    /// The upstream sent a `Date`.
    pub date: bool,
    headers: &'a [httparse::Header<'b>],
    conn_fields: &'a [usize],
    chunked: Option<bool>,
}

impl<'b> Parsed<'_, 'b> {
    /// The fields the client gets, in the upstream's order: hop-by-hop fields and those its
    /// `Connection` lists are dropped (the forwarding policy's response rule, `hop_by_hop`),
    /// `Transfer-Encoding` only with a body to frame, `Content-Length` only without it.
    pub fn kept(&self) -> impl Iterator<Item = (&'b str, &'b [u8])> + '_ {
        self.headers.iter().filter_map(move |h| {
            let name = h.name;
            let keep = if is(name, "transfer-encoding") {
                self.chunked.is_some() && self.framing != Framing::Empty
            } else if is(name, "content-length") {
                self.chunked.is_none()
            } else {
                !hop_by_hop(name)
                    && (self.conn_fields.is_empty()
                        || !listed(self.headers, self.conn_fields, name))
            };
            keep.then_some((name, h.value))
        })
    }
}

/// Parses the upstream's response head in `buf` and hands the final one to `emit`, which writes
/// what the client gets. The one reading of an upstream's HTTP/1.x response head, for both
/// engines' own exchanges: returns its length with what `emit` made.
pub fn parse_response<T>(
    buf: &[u8],
    head_method: bool,
    emit: impl FnOnce(&Parsed<'_, '_>) -> T,
) -> UpstreamHead<(usize, T)> {
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut storage,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return UpstreamHead::Partial,
        Err(_) => return UpstreamHead::Invalid,
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return UpstreamHead::Invalid;
    };
    // httparse takes any three digits; below 100 is no status (RFC 9110 §15) and would be
    // written back as a malformed status line. hyper's client refuses it too.
    if status < 100 || status == 101 {
        return UpstreamHead::Invalid; // 101: never asked for, upgrades go through hyper
    }
    if (100..200).contains(&status) {
        return UpstreamHead::Interim(head_len);
    }
    let headers = &*resp.headers;
    let mut conn_fields = [0usize; 4];
    let mut n_conn = 0;
    let mut reusable = version == 1;
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    let mut date = false;
    for (i, h) in headers.iter().enumerate() {
        let name = h.name;
        match name.len() {
            10 if is(name, "connection") => {
                if names_fields(h.value) {
                    if n_conn == conn_fields.len() {
                        return UpstreamHead::Invalid;
                    }
                    conn_fields[n_conn] = i;
                    n_conn += 1;
                }
                reusable &= !has_token(h.value, b"close");
            }
            14 if is(name, "content-length") => match (length, parse_len_list(h.value)) {
                (None, Some(n)) => length = Some(n),
                (Some(a), Some(b)) if a == b => {}
                _ => return UpstreamHead::Invalid,
            },
            17 if is(name, "transfer-encoding") => {
                let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
                chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            4 if is(name, "date") => date = true,
            _ => {}
        }
    }
    let framing = if head_method || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    if framing == Framing::Close {
        reusable = false;
    }
    let parsed = Parsed {
        version,
        status,
        reason: resp.reason.unwrap_or(""),
        framing,
        reusable,
        date,
        headers,
        conn_fields: &conn_fields[..n_conn],
        chunked,
    };
    UpstreamHead::Ready((head_len, emit(&parsed)))
}

/// Writes the client's HTTP/1.1 head for the upstream's response `p` into `out` (cleared first).
/// `close` adds `connection: close` (the client connection ends after this response).
pub fn client_head(p: &Parsed<'_, '_>, out: &mut Vec<u8>, close: bool) -> Response {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(p.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(p.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in p.kept() {
        put_header(out, name.as_bytes(), value);
    }
    let via: &[u8] = if p.version == 1 {
        b"1.1 flipgate"
    } else {
        b"1.0 flipgate"
    };
    put_header(out, b"via", via);
    if !p.date {
        put_date(out);
    }
    if close || p.framing == Framing::Close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Response {
        head_len: 0,
        status: p.status,
        framing: p.framing,
        reusable: p.reusable,
        close,
    }
}

/// Parses the upstream's response head and writes the client's into `out` (`client_head`).
pub fn response(buf: &[u8], out: &mut Vec<u8>, head_method: bool, close: bool) -> UpstreamHead {
    match parse_response(buf, head_method, |p| client_head(p, out, close)) {
        UpstreamHead::Ready((head_len, r)) => UpstreamHead::Ready(Response { head_len, ..r }),
        UpstreamHead::Partial => UpstreamHead::Partial,
        UpstreamHead::Interim(n) => UpstreamHead::Interim(n),
        UpstreamHead::Invalid => UpstreamHead::Invalid,
    }
}

/// Writes flipgate's own answer (an error) into `out`.
pub fn local_response(out: &mut Vec<u8>, status: http::StatusCode, body: &str, close: bool) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    put_date(out);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

thread_local! {
    /// The `Date` value, formatted at most once a second.
    static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((0, [0; 29])) };
}

/// Adds a `Date` field (RFC 9110 §6.6.1: a proxy adds one when the upstream sent none).
fn put_date(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                d.1.copy_from_slice(text.as_bytes());
                d.0 = secs;
            }
        }
        if d.0 == secs {
            put_header(out, b"date", &d.1);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_below_100_is_invalid() {
        // Found by the h1_response fuzz target: `020` was written back as `HTTP/1.1 20`.
        let mut out = Vec::new();
        let r = response(
            b"HTTP/1.1 020 OK\r\ncontent-length: 0\r\n\r\n",
            &mut out,
            false,
            false,
        );
        assert!(matches!(r, UpstreamHead::Invalid));
        let r = response(b"HTTP/1.1 100 Continue\r\n\r\n", &mut out, false, false);
        assert!(matches!(r, UpstreamHead::Interim(25)));
    }
}
