//! The forwarding policy for requests (RFC 9110 §7.6), written once as a table that both header
//! representations apply: the HTTP/1.1 engine's parsed head (`h1::head`, byte slices into the
//! read buffer) and hyper's `HeaderMap` (`apply`, below).
//!
//! Two parts, nothing else decides what an upstream receives:
//! - [`action`]: for one incoming field, by its name (and whether the request's `Connection`
//!   lists it), `Keep` (forwarded as received), `Drop`, or `Replace(field)` (not forwarded as
//!   received: the added `field` of the same name takes its place, built from the incoming
//!   values where it says so).
//! - [`added`]: the one list of fields added to every forwarded request, in order: `Host`,
//!   `X-Forwarded-For` (every incoming non-empty value, then the client, joined by
//!   [`join_forwarded_for`]), `X-Forwarded-Proto`, `X-Forwarded-Host`, `Via` (appended after the
//!   incoming ones), `x-request-id` (the first valid incoming one, else a new one), `Connection:
//!   upgrade` (an upgrade being relayed, hyper's path) or `Connection: te` (with `TE: trailers` to
//!   an HTTP/1.1 upstream), and `TE: trailers` when the client's `TE` lists `trailers` (gRPC
//!   needs it; an upstream such as hyper's server sends response trailers only when asked).
//!   `Trailer` is not hop-by-hop (RFC 9110 §6.6.2): it names the trailer fields and is kept.
//!   Last, on a shadow copy only (`serve::shadow`), `x-flipgate-shadow: 1`.
//! - `x-flipgate-shadow` from a client is never forwarded (`Replace` with nothing added on a live
//!   request): only flipgate marks a request as a shadow copy, so a client can neither make a bot
//!   skip a live request's side effects nor pass for a copy.
//!
//! Invariants: the table is a pure function of the field name and the request's `Rules`; the
//! engine never calls it with `upgrade`, `http2` or `shadow` set (it hands such requests to hyper;
//! copies are built on a `HeaderMap`, `apply`), so
//! on every request both engines can serve, they send the same fields (a multiset of lower-cased
//! name and value, the generated request id aside): `tests/differential.rs` and the
//! `h1_differential` fuzz target hold them to it. Nothing here allocates on the engine's path;
//! `apply` allocates only for a joined `X-Forwarded-For`, a generated request id, or past 16
//! dropped names.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;

use super::headers::{has_token, new_request_id, request_id_ok};

/// What the policy does with one incoming request field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Forwarded as received.
    Keep,
    /// Not forwarded: hop-by-hop, listed in `Connection`, or the route's preview header.
    Drop,
    /// Not forwarded as received: the added field of that name takes its place (and when the
    /// policy adds none, for `X-Forwarded-Host` without an authority or `Host` to an HTTP/2
    /// upstream, the field is gone).
    Replace(Added),
}

/// A field the policy adds to every forwarded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Host,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    Via,
    RequestId,
    /// `Connection: upgrade` while an upgrade is relayed (hyper's path), or `Connection: te`
    /// with `TE: trailers` to an HTTP/1.1 upstream.
    Connection,
    /// `TE: trailers`, when the client's `TE` lists `trailers`.
    Te,
    /// `x-flipgate-shadow: 1`, on a shadow copy only.
    Shadow,
}

impl Added {
    /// Every added field, in the order they are written (`Host` first, as RFC 9112 §3.2 asks of
    /// user agents).
    pub const ALL: [Added; 9] = [
        Added::Host,
        Added::XForwardedFor,
        Added::XForwardedProto,
        Added::XForwardedHost,
        Added::Via,
        Added::RequestId,
        Added::Connection,
        Added::Te,
        Added::Shadow,
    ];

    /// The lower-case field name the engine writes.
    pub fn name(self) -> &'static str {
        match self {
            Added::Host => "host",
            Added::XForwardedFor => "x-forwarded-for",
            Added::XForwardedProto => "x-forwarded-proto",
            Added::XForwardedHost => "x-forwarded-host",
            Added::Via => "via",
            Added::RequestId => "x-request-id",
            Added::Connection => "connection",
            Added::Te => "te",
            Added::Shadow => "x-flipgate-shadow",
        }
    }

    /// The same name for a `HeaderMap` (a constant: no parsing, no allocation).
    pub fn header(self) -> HeaderName {
        match self {
            Added::Host => header::HOST,
            Added::XForwardedFor => X_FORWARDED_FOR,
            Added::XForwardedProto => X_FORWARDED_PROTO,
            Added::XForwardedHost => X_FORWARDED_HOST,
            Added::Via => header::VIA,
            Added::RequestId => X_REQUEST_ID,
            Added::Connection => header::CONNECTION,
            Added::Te => header::TE,
            Added::Shadow => X_FLIPGATE_SHADOW,
        }
    }

    /// `Via` is added after the incoming values (each hop appends itself); every other added
    /// field replaces the incoming ones of its name.
    pub fn appends(self) -> bool {
        self == Added::Via
    }
}

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Marks a shadow copy (`serve::shadow`): a bot that sees it must skip side effects.
pub const X_FLIPGATE_SHADOW: HeaderName = HeaderName::from_static("x-flipgate-shadow");

/// What the table needs to know about the request besides a field's name.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rules<'a> {
    /// The route's preview header: never forwarded (SPEC.md, "Preview").
    pub preview: Option<&'a str>,
    /// An upgrade is relayed: `Upgrade` is kept and `Connection` becomes `upgrade`.
    pub upgrade: bool,
    /// The upstream is HTTP/2: no `Host` (the `:authority` is the upstream's own), and `TE:
    /// trailers` goes without `Connection: te` (HTTP/2 has no `Connection`).
    pub http2: bool,
    /// A shadow copy (`serve::shadow`): `x-flipgate-shadow: 1` is added.
    pub shadow: bool,
}

#[inline]
fn is(name: &str, lower: &str) -> bool {
    name.len() == lower.len() && name.eq_ignore_ascii_case(lower)
}

/// Fields that never cross a proxy (RFC 9110 §7.6.1), plus the proxy-auth pair (credentials for
/// this hop). Also the response side's rule (`h1::head::response`, `strip_response`).
#[inline]
pub fn hop_by_hop(name: &str) -> bool {
    match name.len() {
        2 => is(name, "te"),
        7 => is(name, "upgrade"),
        10 => is(name, "connection") || is(name, "keep-alive"),
        16 => is(name, "proxy-connection"),
        17 => is(name, "transfer-encoding"),
        18 => is(name, "proxy-authenticate"),
        19 => is(name, "proxy-authorization"),
        _ => false,
    }
}

/// The table: what happens to an incoming request field named `name`. `listed` says whether the
/// request's `Connection` lists the name (asked only when it matters). `Host` and
/// `Content-Length` describe the message, not the connection, and are never dropped for being
/// listed (without `Content-Length` the upstream would read the body as the next request).
#[inline]
pub fn action(name: &str, rules: &Rules<'_>, listed: impl FnOnce(&str) -> bool) -> Action {
    if hop_by_hop(name) {
        return match name.len() {
            7 if rules.upgrade && is(name, "upgrade") => Action::Keep,
            10 if is(name, "connection") => Action::Replace(Added::Connection),
            2 => Action::Replace(Added::Te),
            _ => Action::Drop,
        };
    }
    match name.len() {
        4 if is(name, "host") => return Action::Replace(Added::Host),
        14 if is(name, "content-length") => return Action::Keep,
        _ => {}
    }
    if rules.preview.is_some_and(|p| is(name, p)) || listed(name) {
        return Action::Drop;
    }
    match name.len() {
        12 if is(name, "x-request-id") => Action::Replace(Added::RequestId),
        15 if is(name, "x-forwarded-for") => Action::Replace(Added::XForwardedFor),
        16 if is(name, "x-forwarded-host") => Action::Replace(Added::XForwardedHost),
        17 if is(name, "x-forwarded-proto") => Action::Replace(Added::XForwardedProto),
        17 if is(name, "x-flipgate-shadow") => Action::Replace(Added::Shadow),
        _ => Action::Keep,
    }
}

/// Whether `name` is a token of one of the `Connection` values (tokens are names, trimmed, case
/// aside).
#[inline]
pub fn listed_in<'v>(mut connection: impl Iterator<Item = &'v [u8]>, name: &str) -> bool {
    connection.any(|v| has_token(v, name.as_bytes()))
}

/// The one `X-Forwarded-For` value: every incoming non-empty value, in order, then the client,
/// joined by `", "` (most apps read only the first field, so one field).
pub fn join_forwarded_for<'v>(
    prev: impl Iterator<Item = &'v [u8]>,
    client: &[u8],
    out: &mut Vec<u8>,
) {
    for p in prev.filter(|p| !p.is_empty()) {
        out.extend_from_slice(p);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client);
}

/// `Via`'s value for a message of `version` received by this hop.
pub fn via(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_2 => "2 flipgate",
        http::Version::HTTP_10 => "1.0 flipgate",
        _ => "1.1 flipgate",
    }
}

/// The value of an added field, in whatever type `V` the representation holds values as.
pub enum Value<'a, V: ?Sized> {
    Static(&'static str),
    Given(&'a V),
    /// The upstream instance's address (`Host` for a request that named no authority).
    Instance(&'a Authority),
    /// `X-Forwarded-For`: `join_forwarded_for` over the incoming values and this client.
    ForwardedFor(&'a V),
    /// A new request id (32 hex digits).
    Generated([u8; 32]),
}

/// What the added fields say about this hop.
pub struct Hop<'a, V: ?Sized> {
    /// The client's address, formatted.
    pub client: &'a V,
    pub https: bool,
    /// The authority the request is for (`headers::request_authority`), if it named one.
    pub authority: Option<&'a V>,
    /// The chosen upstream instance: `Host` when the request named no authority (HTTP/1.0).
    pub instance: &'a Authority,
    /// The request's own version (for `Via`).
    pub version: http::Version,
    /// The first valid incoming `x-request-id` (`request_id_ok`) of the fields the table replaces.
    pub request_id: Option<&'a V>,
    /// The client sent a `TE` with `trailers`.
    pub te_trailers: bool,
}

/// The fields added to a forwarded request, in order; the one list both engines write.
pub fn added<'a, V: ?Sized>(
    rules: &Rules<'_>,
    hop: &Hop<'a, V>,
) -> impl Iterator<Item = (Added, Value<'a, V>)> {
    let host = match (rules.http2, hop.authority) {
        (true, _) => None,
        (false, Some(a)) => Some(Value::Given(a)),
        (false, None) => Some(Value::Instance(hop.instance)),
    };
    let proto = if hop.https { "https" } else { "http" };
    let id = match hop.request_id {
        Some(id) => Value::Given(id),
        None => Value::Generated(new_request_id()),
    };
    [
        host.map(|v| (Added::Host, v)),
        Some((Added::XForwardedFor, Value::ForwardedFor(hop.client))),
        Some((Added::XForwardedProto, Value::Static(proto))),
        hop.authority
            .map(|a| (Added::XForwardedHost, Value::Given(a))),
        Some((Added::Via, Value::Static(via(hop.version)))),
        Some((Added::RequestId, id)),
        match (rules.upgrade, hop.te_trailers && !rules.http2) {
            (true, _) => Some((Added::Connection, Value::Static("upgrade"))),
            (false, true) => Some((Added::Connection, Value::Static("te"))),
            (false, false) => None,
        },
        hop.te_trailers
            .then_some((Added::Te, Value::Static("trailers"))),
        rules.shadow.then_some((Added::Shadow, Value::Static("1"))),
    ]
    .into_iter()
    .flatten()
}

/// The policy applied to hyper's `HeaderMap`: drops what the table drops, then writes the added
/// fields (inserted over the ones they replace, `Via` appended), and removes replaced fields for
/// which nothing is added. Returns the request id sent upstream.
pub fn apply(
    headers: &mut HeaderMap,
    rules: &Rules<'_>,
    client: &HeaderValue,
    https: bool,
    authority: Option<&HeaderValue>,
    instance: &Authority,
    version: http::Version,
) -> HeaderValue {
    // Names to drop, copied into a stack buffer (the map cannot be edited while borrowed; a
    // `HeaderName` clone of a custom name may allocate) and removed by `&str`, which looks the
    // name up without allocating. Past 16 names or 256 bytes the rest go to a heap list.
    let mut buf = [0u8; 256];
    let mut spans = [(0usize, 0usize); 16];
    let mut more: Vec<String> = Vec::new();
    let (mut n, mut used) = (0, 0);
    let has_connection = headers.contains_key(header::CONNECTION);
    for name in headers.keys() {
        let name = name.as_str();
        let listed = |name: &str| {
            has_connection
                && listed_in(
                    headers
                        .get_all(header::CONNECTION)
                        .iter()
                        .map(|v| v.as_bytes()),
                    name,
                )
        };
        if action(name, rules, listed) != Action::Drop {
            continue;
        }
        if n == spans.len() || used + name.len() > buf.len() {
            more.push(name.to_owned());
            continue;
        }
        buf[used..used + name.len()].copy_from_slice(name.as_bytes());
        spans[n] = (used, name.len());
        used += name.len();
        n += 1;
    }
    let dropped = spans[..n]
        .iter()
        .filter_map(|&(at, len)| std::str::from_utf8(&buf[at..at + len]).ok())
        .chain(more.iter().map(String::as_str));
    for name in dropped {
        headers.remove(name);
    }

    // What is left of the replaced fields feeds the added ones.
    let request_id = headers
        .get_all(&X_REQUEST_ID)
        .iter()
        .find(|v| request_id_ok(v.as_bytes()))
        .cloned(); // `headers::incoming_request_id`, on values
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| has_token(v.as_bytes(), b"trailers"));
    let hop = Hop {
        client,
        https,
        authority,
        instance,
        version,
        request_id: request_id.as_ref(),
        te_trailers,
    };
    // New entries: X-Forwarded-For, -Proto, -Host, Via, x-request-id (the others replace a field
    // the request has, but `Host` of an HTTP/1.0 request without one): one growth, not several.
    headers.reserve(5);
    let mut written = [false; Added::ALL.len()];
    let mut sent_id = None;
    for (field, value) in added(rules, &hop) {
        let value = match value {
            Value::Static(s) => HeaderValue::from_static(s),
            Value::Given(v) => v.clone(),
            Value::Instance(a) => match HeaderValue::from_str(a.as_str()) {
                Ok(v) => v,
                Err(_) => continue,
            },
            Value::ForwardedFor(client) => {
                let mut prev = headers
                    .get_all(&X_FORWARDED_FOR)
                    .iter()
                    .filter(|v| !v.is_empty())
                    .peekable();
                if prev.peek().is_none() {
                    client.clone()
                } else {
                    let mut v = Vec::with_capacity(64);
                    join_forwarded_for(prev.map(|v| v.as_bytes()), client.as_bytes(), &mut v);
                    HeaderValue::from_bytes(&v).unwrap_or_else(|_| client.clone())
                }
            }
            Value::Generated(id) => {
                HeaderValue::from_bytes(&id).expect("hex is a valid header value")
            }
        };
        written[field as usize] = true;
        if field == Added::RequestId {
            sent_id = Some(value.clone());
        }
        if field.appends() {
            headers.append(field.header(), value);
        } else {
            headers.insert(field.header(), value);
        }
    }
    for field in Added::ALL {
        if !written[field as usize] && !field.appends() {
            headers.remove(field.header());
        }
    }
    sent_id.expect("the request id is always added")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(name: &str, rules: &Rules<'_>) -> Action {
        action(name, rules, |n| n.eq_ignore_ascii_case("x-secret"))
    }

    #[test]
    fn the_table() {
        let r = Rules {
            preview: Some("x-preview"),
            ..Rules::default()
        };
        // `Connection` and `TE` are replaced by flipgate's own (`Connection: te` with
        // `TE: trailers` when the client takes trailers, else none); `Trailer` goes on.
        assert_eq!(act("Connection", &r), Action::Replace(Added::Connection));
        assert_eq!(act("TE", &r), Action::Replace(Added::Te));
        assert_eq!(act("Trailer", &r), Action::Keep);
        for drop in [
            "keep-alive",
            "transfer-encoding",
            "upgrade",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "X-Preview",
            "x-secret",
        ] {
            assert_eq!(act(drop, &r), Action::Drop, "{drop}");
        }
        assert_eq!(act("Host", &r), Action::Replace(Added::Host));
        assert_eq!(
            act("X-Forwarded-For", &r),
            Action::Replace(Added::XForwardedFor)
        );
        assert_eq!(
            act("x-forwarded-proto", &r),
            Action::Replace(Added::XForwardedProto)
        );
        assert_eq!(
            act("x-forwarded-host", &r),
            Action::Replace(Added::XForwardedHost)
        );
        assert_eq!(act("X-Request-Id", &r), Action::Replace(Added::RequestId));
        // Only flipgate marks a shadow copy: a client's mark is never forwarded.
        assert_eq!(act("X-Flipgate-Shadow", &r), Action::Replace(Added::Shadow));
        assert_eq!(
            action("x-flipgate-shadow", &r, |_| true),
            Action::Drop,
            "listed in Connection: dropped all the same"
        );
        for keep in ["content-length", "via", "accept", "forwarded", "cookie"] {
            assert_eq!(act(keep, &r), Action::Keep, "{keep}");
        }
        // Listed in Connection: Host and Content-Length stay, anything else goes.
        let listed = |_: &str| true;
        assert_eq!(action("host", &r, listed), Action::Replace(Added::Host));
        assert_eq!(action("content-length", &r, listed), Action::Keep);
        assert_eq!(action("x-forwarded-for", &r, listed), Action::Drop);
        assert_eq!(action("x-request-id", &r, listed), Action::Drop);
        // hyper's path only: relaying an upgrade, an HTTP/2 upstream.
        let up = Rules {
            upgrade: true,
            ..Rules::default()
        };
        assert_eq!(act("upgrade", &up), Action::Keep);
        assert_eq!(act("connection", &up), Action::Replace(Added::Connection));
        let h2 = Rules {
            http2: true,
            ..Rules::default()
        };
        assert_eq!(act("te", &h2), Action::Replace(Added::Te));
    }

    #[test]
    fn apply_to_a_map() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, X-Secret, close".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("host", "a.example".parse().unwrap());
        h.append("x-forwarded-for", "1.2.3.4".parse().unwrap());
        h.append("x-forwarded-for", "".parse().unwrap());
        h.append("x-forwarded-for", "5.6.7.8".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        h.append("x-request-id", "".parse().unwrap());
        h.append("x-request-id", "abc".parse().unwrap());
        h.append("x-request-id", "def".parse().unwrap());
        h.insert("via", "1.1 other".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        h.insert("x-flipgate-shadow", "1".parse().unwrap());
        let host = HeaderValue::from_static("a.example");
        let instance: Authority = "127.0.0.1:9".parse().unwrap();
        let id = apply(
            &mut h,
            &Rules::default(),
            &HeaderValue::from_static("10.0.0.1"),
            false,
            Some(&host),
            &instance,
            http::Version::HTTP_11,
        );
        assert_eq!(id, "abc");
        let mut got: Vec<String> = h
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
            .collect();
        got.sort();
        // The client's `TE: trailers` goes on, with `Connection: te` (HTTP/1.1 upstream).
        assert_eq!(
            got,
            [
                "connection: te",
                "host: a.example",
                "te: trailers",
                "via: 1.1 flipgate",
                "via: 1.1 other",
                "x-forwarded-for: 1.2.3.4, 5.6.7.8, 10.0.0.1",
                "x-forwarded-host: a.example",
                "x-forwarded-proto: http",
                "x-keep: 1",
                "x-request-id: abc",
            ]
        );
    }

    /// A shadow copy carries flipgate's mark once, whatever the client sent; a live request none.
    #[test]
    fn the_shadow_mark_is_flipgate_s_alone() {
        let instance: Authority = "127.0.0.1:9".parse().unwrap();
        let client = HeaderValue::from_static("10.0.0.1");
        for shadow in [false, true] {
            let mut h = HeaderMap::new();
            h.append("x-flipgate-shadow", "0".parse().unwrap());
            h.append("X-Flipgate-Shadow", "1".parse().unwrap());
            let rules = Rules {
                shadow,
                ..Rules::default()
            };
            apply(
                &mut h,
                &rules,
                &client,
                false,
                None,
                &instance,
                http::Version::HTTP_11,
            );
            let marks: Vec<_> = h.get_all("x-flipgate-shadow").iter().collect();
            match shadow {
                true => assert_eq!(marks, ["1"]),
                false => assert!(marks.is_empty(), "{marks:?}"),
            }
        }
    }

    #[test]
    fn http10_without_host_gets_the_instance_and_http2_no_host() {
        let instance: Authority = "127.0.0.1:9".parse().unwrap();
        let client = HeaderValue::from_static("10.0.0.1");
        let mut h = HeaderMap::new();
        apply(
            &mut h,
            &Rules::default(),
            &client,
            true,
            None,
            &instance,
            http::Version::HTTP_10,
        );
        assert_eq!(h["host"], "127.0.0.1:9");
        assert_eq!(h["via"], "1.0 flipgate");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(!h.contains_key("x-forwarded-host"));
        let mut h = HeaderMap::new();
        h.insert("host", "a".parse().unwrap());
        h.insert("x-forwarded-host", "evil".parse().unwrap());
        h.insert("te", "trailers, deflate".parse().unwrap());
        let rules = Rules {
            http2: true,
            ..Rules::default()
        };
        apply(
            &mut h,
            &rules,
            &client,
            false,
            None,
            &instance,
            http::Version::HTTP_2,
        );
        assert!(!h.contains_key("host"));
        assert!(!h.contains_key("x-forwarded-host"));
        assert_eq!(h["te"], "trailers");
    }
}
