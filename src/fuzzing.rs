//! Entry points shared by the fuzz targets (`fuzz/`) and the corpus replay test, so a crash found
//! by the fuzzer is reproduced by `cargo test` once its input is committed to the corpus.
//!
//! Invariants: each function accepts arbitrary bytes and must return without panicking.

use std::path::Path;
use std::sync::OnceLock;

use crate::snapshot::router::Router;
use crate::snapshot::split::Split;

/// Parses arbitrary bytes as a route file.
pub fn config_parse(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(errors) = crate::config::parse(Path::new("fuzz.toml"), text) {
            assert!(!errors.0.is_empty());
            let _ = errors.to_string();
        }
    }
}

fn table() -> &'static (Router, Split) {
    static T: OnceLock<(Router, Split)> = OnceLock::new();
    T.get_or_init(|| {
        use crate::config::{HostPattern, Sticky};
        let mut r = Router::default();
        r.insert(&[HostPattern::Exact("bot.example.com".into())], "/", 0);
        r.insert(&[HostPattern::Exact("bot.example.com".into())], "/api/", 1);
        r.insert(
            &[HostPattern::Wildcard(".example.com".into())],
            "/hooks/",
            2,
        );
        r.insert(&[], "/", 3);
        let split = Split::new("bot", 0, Some((1, 500, Sticky::Cookie("session".into()))));
        (r, split)
    })
}

/// Input: `host\npath\nheader: value\n...`. Routes and decides a split.
pub fn route_request(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let host = lines.next();
    let path = lines.next().unwrap_or("/");
    let mut headers = http::HeaderMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.trim().as_bytes()),
                http::HeaderValue::from_str(v.trim()),
            ) {
                headers.append(k, v);
            }
        }
    }
    let (router, split) = table();
    let _ = router.lookup(host, path);
    let (t, _) = split.decide(&headers, || 42);
    assert!(t <= 1);
}

/// Feeds `pieces` to one chunked scanner in order, checking the per-call contract: never more
/// than the slice, short only when the body ended, nothing more once done. Returns the consumed
/// total and whether the body ended.
fn chunked_feed<'a>(
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(usize, bool), crate::serve::h1::chunked::ChunkError> {
    let mut s = crate::serve::h1::chunked::Scanner::default();
    let mut total = 0;
    for p in pieces {
        let was_done = s.done();
        let n = s.scan(p)?;
        assert!(n <= p.len(), "scan consumed {n} of {}", p.len());
        if was_done {
            assert_eq!(n, 0, "consumed after done");
        }
        if !s.done() {
            assert_eq!(n, p.len(), "stopped early without ending the body");
        }
        total += n;
    }
    if s.done() {
        assert_eq!(s.scan(b"0\r\n\r\n"), Ok(0), "consumed after done");
    }
    Ok((total, s.done()))
}

/// Any bytes as a chunked body, fed whole, in two pieces split at a data-derived point and byte
/// by byte: the same verdict (end, consumed total, or error) whatever the split.
pub fn h1_chunked(data: &[u8]) {
    let whole = chunked_feed([data]);
    let at = match data {
        [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])) % (data.len() + 1),
        _ => 0,
    };
    let (a, b) = data.split_at(at);
    assert_eq!(chunked_feed([a, b]), whole, "split at {at}");
    assert_eq!(
        chunked_feed(data.chunks(1)),
        whole,
        "byte by byte differs from whole"
    );
    if let Ok((n, done)) = whole {
        assert!(done || n == data.len());
    }
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) that must never leave the proxy in a rewritten head as
/// the peer sent them (`Trailer` is not one: it names the trailer fields of the message). A
/// request head gets flipgate's own `te: trailers` and `connection: te` when the client's `TE`
/// lists `trailers` (checked below).
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "proxy-connection",
    "transfer-encoding",
];

fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Every line feed of a written head ends a CRLF pair, and the head ends with an empty line.
fn assert_crlf(out: &[u8]) {
    assert!(
        out.ends_with(b"\r\n\r\n"),
        "head does not end with CRLF CRLF"
    );
    for (i, &b) in out.iter().enumerate() {
        assert!(
            b != b'\n' || (i > 0 && out[i - 1] == b'\r'),
            "bare LF at {i}"
        );
    }
}

/// Input: one flag byte (bit 0: a HEAD request, bit 1: the client connection closes), then an
/// upstream's bytes. A response head the engine accepts is rewritten into a valid one without
/// hop-by-hop fields and with unambiguous framing.
pub fn h1_response(data: &[u8]) {
    use crate::serve::h1::head::{response, Framing, UpstreamHead};
    let Some((&flags, buf)) = data.split_first() else {
        return;
    };
    let (head_method, close) = (flags & 1 != 0, flags & 2 != 0);
    let mut out = Vec::new();
    let r = match response(buf, &mut out, head_method, close) {
        UpstreamHead::Partial | UpstreamHead::Invalid => return,
        UpstreamHead::Interim(n) => {
            assert!(n > 0 && n <= buf.len());
            return;
        }
        UpstreamHead::Ready(r) => r,
    };
    assert!(r.head_len <= buf.len());
    assert_crlf(&out);
    let mut headers = [httparse::EMPTY_HEADER; crate::serve::h1::head::MAX_HEADERS + 4];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len()),
        other => panic!(
            "rewritten head does not parse ({other:?}): {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    assert_eq!(parsed.code, Some(r.status));
    let mut conn = 0;
    let (mut te, mut cl) = (0, 0);
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            assert_eq!(h.value, b"close", "upstream's Connection field relayed");
            conn += 1;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te += 1;
        } else if h.name.eq_ignore_ascii_case("content-length") {
            cl += 1;
        } else {
            assert!(
                !HOP_BY_HOP.iter().any(|n| h.name.eq_ignore_ascii_case(n)),
                "hop-by-hop field {} relayed",
                h.name
            );
        }
    }
    assert!(conn <= 1);
    assert_eq!(
        conn == 1,
        close || r.framing == Framing::Close,
        "connection: close iff the client connection ends"
    );
    assert!(
        te == 0 || cl == 0,
        "both Transfer-Encoding and Content-Length"
    );
    if r.framing == Framing::Chunked {
        assert!(te > 0 && cl == 0);
    }
    if let Framing::Length(n) = r.framing {
        assert_eq!(te, 0);
        for h in parsed.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value).ok().map(str::trim);
                assert_eq!(v.and_then(|v| v.parse().ok()), Some(n), "framing differs");
            }
        }
    }
    // Fields the upstream's Connection lists stay behind, except the framing ones (the body is
    // relayed verbatim) and the ones flipgate writes itself.
    let mut in_headers = [httparse::EMPTY_HEADER; crate::serve::h1::head::MAX_HEADERS];
    let mut input = httparse::Response::new(&mut in_headers);
    assert!(matches!(
        input.parse(buf),
        Ok(httparse::Status::Complete(_))
    ));
    for t in input
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| tokens(h.value))
    {
        let own = [
            "connection",
            "via",
            "date",
            "content-length",
            "transfer-encoding",
        ];
        if own.iter().any(|n| t.eq_ignore_ascii_case(n.as_bytes())) {
            continue;
        }
        assert!(
            !parsed
                .headers
                .iter()
                .any(|h| t.eq_ignore_ascii_case(h.name.as_bytes())),
            "{} is listed in Connection",
            String::from_utf8_lossy(t)
        );
    }
    assert!(!r.reusable || r.framing != Framing::Close);
}

fn h1_proxy() -> &'static crate::serve::proxy::Proxy {
    static P: OnceLock<crate::serve::proxy::Proxy> = OnceLock::new();
    P.get_or_init(|| {
        const CONFIG: &str = r#"
[server]
max_body_bytes = 1000

[[routes]]
name = "api"
hosts = ["bot.example.com"]
path_prefix = "/api/"
live = "blue"
[routes.targets]
blue = ["127.0.0.1:9", "127.0.0.1:9"]
green = ["127.0.0.1:9"]
[routes.canary]
target = "green"
percent = 30.0
sticky = "header:x-user-id"
[routes.preview]

[[routes]]
name = "bot"
live = "blue"
[routes.targets]
blue = ["127.0.0.1:9"]
green = ["127.0.0.1:9"]
[routes.canary]
target = "green"
percent = 50.0
sticky = "cookie:session"
"#;
        let config = crate::config::parse(Path::new("fuzz.toml"), CONFIG).expect("valid config");
        let metrics = crate::observe::metrics::Metrics::new();
        let snap = crate::snapshot::Snapshot::build(
            1,
            std::sync::Arc::new(config),
            &Default::default(),
            &crate::snapshot::Snapshot::empty(),
            &metrics,
        );
        crate::serve::proxy::Proxy::new(
            std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(snap)),
            crate::upstream::Clients::new(
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(1),
            ),
        )
    })
}

/// Any bytes as a client's buffered request bytes, planned against a fixed two-route table whose
/// targets are plain HTTP (no connection is made). A forwarded request's upstream head is valid,
/// carries flipgate's forwarding fields exactly once, no hop-by-hop field, and otherwise only
/// field lines the client sent. Returns whether the request was forwarded (so the corpus replay
/// can check that the seeds reach these checks).
pub fn h1_request(data: &[u8]) -> bool {
    use crate::serve::h1::head::{request, Head, Plan, MAX_HEADERS};
    let proxy = h1_proxy();
    let conn = crate::serve::proxy::ConnInfo::new(([127, 0, 0, 1], 40000).into(), false);
    let mut out = Vec::new();
    let start = tokio::time::Instant::now();
    let f = match request(proxy, &conn, data, &mut out, 16 * 1024, 100, start) {
        Head::Partial | Head::Plan(Plan::Fallback) => return false,
        Head::Plan(Plan::Local { head_len, .. }) => {
            assert!(head_len <= data.len());
            return false;
        }
        Head::Plan(Plan::Forward(f)) => f,
    };
    assert!(f.head_len <= data.len());
    assert!(f.body_len <= crate::serve::h1::head::MAX_BODY);
    assert_crlf(&out);

    let mut in_headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut input = httparse::Request::new(&mut in_headers);
    assert_eq!(
        input.parse(data),
        Ok(httparse::Status::Complete(f.head_len))
    );
    let mut out_headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 8];
    let mut up = httparse::Request::new(&mut out_headers);
    match up.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len()),
        other => panic!(
            "upstream head does not parse ({other:?}): {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    assert_eq!(
        (up.method, up.path, up.version),
        (input.method, input.path, Some(1))
    );

    let named = |hs: &[httparse::Header<'_>], name: &str| {
        hs.iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    let out_h = &*up.headers;
    let in_h = &*input.headers;
    assert_eq!(named(out_h, "x-forwarded-for"), 1);
    assert_eq!(named(out_h, "x-request-id"), 1);
    assert_eq!(named(out_h, "x-forwarded-proto"), 1);
    assert!(named(out_h, "x-forwarded-host") <= 1);
    // Only the "api" route has a preview header (hyper's path removes it the same way).
    if &*f.target.route == "api" {
        assert_eq!(
            named(out_h, "x-flipgate-target"),
            0,
            "preview header relayed"
        );
    }
    // `te: trailers` goes on (flipgate's own field, with `connection: te`) iff the client's `TE`
    // lists `trailers`; no other hop-by-hop field leaves.
    let te_trailers = in_h
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("te"))
        .flat_map(|h| tokens(h.value))
        .any(|t| t.eq_ignore_ascii_case(b"trailers"));
    for n in HOP_BY_HOP
        .iter()
        .chain(&["proxy-authenticate", "proxy-authorization"])
    {
        let own = usize::from(te_trailers && (*n == "te" || *n == "connection"));
        assert_eq!(named(out_h, n), own, "hop-by-hop field {n} relayed");
    }

    // flipgate's own fields come last, in the policy's order (`policy::Added::ALL`), starting
    // with `host` (the client's Host is replaced by it); everything before them is the client's.
    let added = |name: &str| {
        [
            "host",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "via",
            "x-request-id",
        ]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
    };
    let first_added = out_h.iter().position(|h| h.name == "host").expect("host");
    let (relayed, own) = out_h.split_at(first_added);
    let conn_named: Vec<&[u8]> = in_h
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| tokens(h.value))
        .collect();
    for h in relayed {
        assert!(
            in_h.iter().any(|i| i.name == h.name && i.value == h.value),
            "field line not from the client: {}: {:?}",
            h.name,
            String::from_utf8_lossy(h.value)
        );
        // The client's Via stays (this hop appends itself); the other added fields replace.
        assert!(
            !added(h.name) || h.name.eq_ignore_ascii_case("via"),
            "client's {} relayed",
            h.name
        );
        // The body's framing is the message's, not the connection's: kept even when listed
        // (checked below).
        assert!(
            h.name.eq_ignore_ascii_case("content-length")
                || !conn_named
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(h.name.as_bytes())),
            "{} is listed in Connection",
            h.name
        );
    }
    // The client's X-Forwarded-For values, unless its Connection field lists that name.
    let xff_dropped = conn_named
        .iter()
        .any(|t| t.eq_ignore_ascii_case(b"x-forwarded-for"));
    let mut xff: Vec<u8> = Vec::new();
    for h in in_h
        .iter()
        .filter(|h| !xff_dropped && h.name.eq_ignore_ascii_case("x-forwarded-for"))
    {
        if !h.value.is_empty() {
            xff.extend_from_slice(h.value);
            xff.extend_from_slice(b", ");
        }
    }
    xff.extend_from_slice(b"127.0.0.1");
    // An HTTP/1.1 request is forwarded only with exactly one valid Host.
    let host = in_h
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .expect("a forwarded HTTP/1.1 request has a Host");
    // The upstream sees the body's length whatever the client's Connection lists (hyper's path
    // keeps it too): without it the body would be read as the next request.
    let lengths: Vec<_> = relayed
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| {
            std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .collect();
    let declared = in_h
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("content-length"));
    if declared || f.body_len > 0 {
        assert_eq!(lengths, [Some(f.body_len)], "body length not relayed");
    } else {
        assert!(lengths.is_empty());
    }
    let mut own = own.iter();
    let mut next = |name: &str| {
        let h = own.next().unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(h.name, name);
        h.value
    };
    assert_eq!(next("host"), host.value, "Host not relayed");
    assert_eq!(next("x-forwarded-for"), &xff[..]);
    assert_eq!(next("x-forwarded-proto"), b"http");
    assert_eq!(next("x-forwarded-host"), host.value);
    assert_eq!(next("via"), b"1.1 flipgate");
    let id = next("x-request-id");
    let id_dropped = conn_named
        .iter()
        .any(|t| t.eq_ignore_ascii_case(b"x-request-id"));
    let incoming = in_h
        .iter()
        .filter(|h| !id_dropped && h.name.eq_ignore_ascii_case("x-request-id"))
        .map(|h| h.value)
        .find(|v| crate::policy::headers::request_id_ok(v));
    match incoming {
        Some(v) => assert_eq!(id, v),
        None => {
            assert_eq!(id.len(), 32);
            assert!(id.iter().all(u8::is_ascii_hexdigit));
        }
    }
    if te_trailers {
        assert_eq!(next("connection"), b"te");
        assert_eq!(next("te"), b"trailers");
    }
    assert!(own.next().is_none(), "unexpected fields after x-request-id");
    true
}

/// Any bytes as a request head: when `httparse` accepts it, the HTTP/1.1 engine's head writer
/// (`h1::head::write_request`) and the forwarding policy applied to a `HeaderMap` built from the
/// same parsed fields as hyper builds it (`policy::forward::apply`) must forward the same fields: a
/// multiset of lower-cased name and value, field order aside, and the same request id unless
/// both generated one; or both refuse the request (`headers::request_authority`). Returns whether
/// both forwarded (so the corpus replay can check the seeds reach the comparison).
pub fn h1_differential(data: &[u8]) -> bool {
    use crate::policy::forward::{self as policy, Rules};
    use crate::policy::headers::{is_upgrade, request_authority};
    use crate::serve::h1::head::{write_request, RequestId, MAX_HEADERS};
    use http::{HeaderMap, HeaderName, HeaderValue};

    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else {
        return false;
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return false;
    };
    let version = match minor {
        0 => http::Version::HTTP_10,
        _ => http::Version::HTTP_11,
    };
    let headers = &*req.headers;
    // As hyper builds the request: a name it cannot take or a target that is no URI is a 400
    // before any policy; CONNECT is a tunnel.
    let Ok(uri) = target.parse::<http::Uri>() else {
        return false;
    };
    if method.eq_ignore_ascii_case("CONNECT") {
        return false;
    }
    let mut map = HeaderMap::new();
    for h in headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return false;
        };
        map.append(name, value);
    }
    // A relayed upgrade is hyper's alone (the engine hands it over).
    if is_upgrade(&map) {
        return false;
    }
    let absolute = uri.authority().map(|a| a.as_str().as_bytes());
    let hosts = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value);
    let authority = request_authority(version, absolute, hosts);
    let map_hosts = map.get_all(http::header::HOST).iter().map(|v| v.as_bytes());
    let map_authority = request_authority(version, absolute, map_hosts);
    let (authority, map_authority) = match (authority, map_authority) {
        (Err(a), Err(b)) => {
            assert_eq!(a, b);
            return false;
        }
        (Ok(a), Ok(b)) => (a, b.and_then(|b| HeaderValue::from_bytes(b).ok())),
        (a, b) => panic!("one refuses, the other not: {a:?} {b:?}"),
    };

    let rules = Rules {
        preview: Some("x-flipgate-target"),
        upgrade: false,
        http2: false,
        shadow: false,
    };
    let conn = crate::serve::proxy::ConnInfo::new(([127, 0, 0, 1], 40000).into(), false);
    let instance: http::uri::Authority = "127.0.0.1:9".parse().expect("authority");

    // The engine's writer, with every `Connection` field (it hands over more than 4).
    let conn_fields: Vec<usize> = headers
        .iter()
        .enumerate()
        .filter(|(_, h)| h.name.eq_ignore_ascii_case("connection"))
        .map(|(i, _)| i)
        .collect();
    let mut out = Vec::new();
    let engine_id = write_request(
        &mut out,
        method,
        target,
        headers,
        &conn_fields,
        &rules,
        &conn,
        authority,
        &instance,
        version,
    );
    assert_crlf(&out);
    let mut out_storage = [httparse::EMPTY_HEADER; MAX_HEADERS + 8];
    let mut up = httparse::Request::new(&mut out_storage);
    match up.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len()),
        other => panic!(
            "upstream head does not parse ({other:?}): {:?}",
            String::from_utf8_lossy(&out)
        ),
    }

    // hyper's path.
    let map_id = policy::apply(
        &mut map,
        &rules,
        &conn.peer_header,
        conn.https,
        map_authority.as_ref(),
        &instance,
        version,
    );

    let fields = |it: &mut dyn Iterator<Item = (&str, &[u8])>| {
        let mut v: Vec<(String, Vec<u8>)> = it
            .filter(|(n, _)| !n.eq_ignore_ascii_case("x-request-id"))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_vec()))
            .collect();
        v.sort();
        v
    };
    let engine = fields(&mut up.headers.iter().map(|h| (h.name, h.value)));
    let hyper = fields(&mut map.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
    assert_eq!(
        engine,
        hyper,
        "the engine and hyper's path forward different fields for {:?}",
        String::from_utf8_lossy(data)
    );
    let sent_ids = |n: usize| assert_eq!(n, 1, "one x-request-id");
    sent_ids(
        up.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-request-id"))
            .count(),
    );
    sent_ids(map.get_all("x-request-id").iter().count());
    match engine_id {
        RequestId::Kept(id) => assert_eq!(id, map_id.as_bytes(), "request ids differ"),
        RequestId::New(_) => assert!(
            map_id.len() == 32
                && !headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("x-request-id")
                        && h.value == map_id.as_bytes()),
            "hyper's path kept an id the engine replaced"
        ),
    }
    true
}

/// Input: one flag byte (bits 0-1: token state open / `s3cret` / unusable / `s3cret`; bit 2: the
/// connection's local address is `[::1]:9901` instead of `127.0.0.1:9901`), then
/// `METHOD TARGET\n`, `name: value\n` field lines, an empty line and the body. Runs the admin
/// guard (allowed host `flipgate.internal`) and, for a mutation it lets through, the body rule and
/// the JSON parser. Checks, independently of the guard's code: a request let through names an
/// accepted host, carries no foreign `Origin`, is not a cross-site fetch, and as a mutation
/// presents the token and declares JSON for a body; a mutation let through is also let through
/// as a read; adding a foreign `Origin` to anything let through gets it refused. Returns whether
/// the request was let through (so the corpus replay can check the seeds reach both sides).
pub fn admin_request(data: &[u8]) -> bool {
    use crate::admin::guard::{check, check_body, Access, Refusal, TokenState};
    use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Uri};
    use std::net::{IpAddr, SocketAddr};

    let Some((&flags, rest)) = data.split_first() else {
        return false;
    };
    let token = match flags & 3 {
        0 => TokenState::Open,
        2 => TokenState::Unusable("admin token file /fuzz: not found".into()),
        _ => TokenState::Token("s3cret".into()),
    };
    let local: SocketAddr = if flags & 4 == 0 {
        ([127, 0, 0, 1], 9901).into()
    } else {
        "[::1]:9901".parse().expect("literal")
    };
    let allowed = ["flipgate.internal".to_string()];

    // Head and body split at the first empty line.
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (rest, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split('\n');
    let first = lines.next().unwrap_or_default();
    let (method, target) = first.split_once(' ').unwrap_or((first, "/"));
    let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
    let uri: Uri = target.parse().unwrap_or_else(|_| Uri::from_static("/"));
    let mut headers = HeaderMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.trim().as_bytes()),
                HeaderValue::from_bytes(v.trim().as_bytes()),
            ) {
                headers.append(k, v);
            }
        }
    }

    let mutation = crate::admin::mutation_target(&method, uri.path());
    let access = match mutation {
        Some(_) => Access::Mutate(&token),
        None => Access::Read,
    };
    let run = |h: &HeaderMap, a: Access| check(&method, &uri, h, local, &allowed, a);
    let verdict = run(&headers, access);
    if let Err(r) = &verdict {
        assert!(Refusal::REASONS.contains(&r.reason()));
        assert!([401, 403, 415, 503].contains(&r.status().as_u16()), "{r:?}");
        assert!(!r.to_string().is_empty());
        assert!(serde_json::to_string(&serde_json::json!({ "error": r.to_string() })).is_ok());
        return false;
    }

    let text = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase();
    // The host: target URI authority, else the one Host field.
    let hosts: Vec<String> = headers.get_all(header::HOST).iter().map(text).collect();
    assert!(hosts.len() <= 1, "several Host fields let through");
    let authority = match uri.authority() {
        Some(a) => a.as_str().to_ascii_lowercase(),
        None => hosts.first().cloned().expect("no Host let through"),
    };
    let mut name = authority.as_str();
    if let Some((h, port)) = name.rsplit_once(':') {
        if port.bytes().all(|b| b.is_ascii_digit()) && (h.ends_with(']') || !h.contains(':')) {
            name = h;
        }
    }
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let name = name.strip_suffix('.').unwrap_or(name);
    let own_ip = name
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.to_canonical() == local.ip());
    assert!(
        own_ip || name == "localhost" || name == "flipgate.internal",
        "host `{authority}` let through"
    );
    for o in headers.get_all(header::ORIGIN) {
        let o = text(o);
        assert!(
            o == format!("http://{authority}") || o == format!("https://{authority}"),
            "Origin `{o}` let through for `{authority}`"
        );
    }
    let cross_site = headers
        .get_all("sec-fetch-site")
        .iter()
        .any(|v| text(v) == "cross-site");
    assert!(
        !cross_site || (mutation.is_none() && (method == Method::GET || method == Method::HEAD))
    );

    // Anything let through is refused once a foreign page's Origin is added.
    let mut foreign = headers.clone();
    foreign.insert(
        header::ORIGIN,
        HeaderValue::from_static("http://evil.example"),
    );
    assert!(run(&foreign, access).is_err(), "foreign Origin let through");

    let Some((_, verb)) = mutation else {
        return true;
    };
    // A mutation let through is let through as a read.
    assert!(
        run(&headers, Access::Read).is_ok(),
        "mutation passes, read refused"
    );
    assert!(!matches!(token, TokenState::Unusable(_)));
    if let TokenState::Token(t) = &token {
        let auth = headers
            .get(header::AUTHORIZATION)
            .map(text)
            .unwrap_or_default();
        assert!(auth.contains(t.as_str()), "no token in `{auth}`");
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .map(text)
        .is_some_and(|c| c.trim_start().starts_with("application/json"));
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        assert!(json, "content type `{}` let through", text(ct));
    }
    let declared = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0");
    assert!(
        !declared || json,
        "a declared body without JSON let through"
    );
    if check_body(&headers, body).is_err() {
        return false;
    }
    assert!(body.is_empty() || json, "a body without JSON let through");
    if let Ok(crate::control::Action::Canary { percent, .. }) =
        crate::admin::parse_action(&verb, body)
    {
        assert!(percent.is_finite());
    }
    // A rollout body is judged by the file's rules; bad ones are refused, never a panic.
    if let Ok(crate::admin::rollout::Request::Start(b)) = crate::admin::rollout::parse(&verb, body)
    {
        if let Some(steps) = b.steps {
            let _ = crate::config::rollout::check_steps(&steps);
        }
        if let Some(h) = b.hold {
            let _ = crate::config::rollout::parse_hold(&h);
        }
    }
    true
}

/// Arbitrary bytes as the runtime state file (`state.json`): parsed as at start, then reconciled
/// with a fixed route file as a start or reload does. Must not panic; whatever state comes out
/// names only the route's targets and keeps its canary within 100 %.
pub fn state_load(data: &[u8]) {
    use crate::control::state::Saved;
    static CONFIG: OnceLock<crate::config::Config> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        crate::config::parse(
            Path::new("fuzz.toml"),
            "[state]\ndir = \"/nonexistent\"\n\
             [[routes]]\nname = \"bot\"\nlive = \"blue\"\n\
             [routes.targets]\nblue = [\"127.0.0.1:1\"]\ngreen = [\"127.0.0.1:2\"]\n\
             [routes.canary]\ntarget = \"green\"\npercent = 5\n\
             [routes.circuit]\nbake = \"1m\"\n\
             [[routes]]\nname = \"other\"\npath_prefix = \"/other\"\nlive = \"a\"\n\
             [routes.targets]\na = [\"127.0.0.1:3\"]\n",
        )
        .expect("the fuzz route file is valid")
    });
    let Ok(saved) = Saved::parse(data) else {
        return;
    };
    let metrics = crate::observe::metrics::Metrics::new();
    let events = crate::control::events::Events::default();
    for now in [0, u64::MAX / 2, u64::MAX] {
        let (states, _splits, _parked) = crate::control::reconcile(
            config,
            &saved.routes,
            saved.parked.clone(),
            now,
            &metrics,
            &events,
        );
        for route in &config.routes {
            if let Some(s) = states.get(&route.name) {
                assert!(
                    crate::control::state_fits(route, s),
                    "restored state names an unknown target: {s:?}"
                );
                assert!(s.canary_bp <= 10_000, "canary over 100 %: {s:?}");
            }
        }
    }
}

/// Replays every committed fuzz input (seed corpus and crash regressions) through the same
/// entry points the fuzz targets use, so a fixed crash stays fixed without a fuzzer installed.
#[cfg(test)]
mod corpus {

    use std::path::Path;

    fn replay(target: &str, mut f: impl FnMut(&[u8])) -> usize {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut n = 0;
        for dir in [
            root.join("corpus").join(target),
            root.join("regressions").join(target),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries {
                let p = e.unwrap().path();
                if p.is_file() {
                    f(&std::fs::read(&p).unwrap());
                    n += 1;
                }
            }
        }
        n
    }

    #[test]
    fn config_parse_corpus() {
        assert!(replay("config_parse", super::config_parse) > 0);
    }

    #[test]
    fn route_request_corpus() {
        assert!(replay("route_request", super::route_request) > 0);
    }

    #[test]
    fn h1_chunked_corpus() {
        assert!(replay("h1_chunked", super::h1_chunked) > 0);
    }

    #[test]
    fn h1_response_corpus() {
        assert!(replay("h1_response", super::h1_response) > 0);
    }

    #[test]
    fn h1_request_corpus() {
        let mut forwarded = 0;
        let n = replay("h1_request", |d| {
            forwarded += usize::from(super::h1_request(d))
        });
        // The seeds must reach the checks on the upstream head, not only the fallbacks.
        assert!(forwarded >= 10, "{forwarded} of {n} seeds forwarded");
    }

    #[test]
    fn h1_differential_corpus() {
        let mut compared = 0;
        let n = replay("h1_differential", |d| {
            compared += usize::from(super::h1_differential(d))
        });
        // The seeds must reach the comparison, not only the refusals.
        assert!(compared >= 6, "{compared} of {n} seeds compared");
    }

    #[test]
    fn admin_request_corpus() {
        let (mut through, mut refused) = (0, 0);
        replay("admin_request", |d| {
            if super::admin_request(d) {
                through += 1
            } else {
                refused += 1
            }
        });
        // The seeds must reach both sides of the guard.
        assert!(
            through >= 5 && refused >= 5,
            "{through} let through, {refused} refused"
        );
    }

    #[test]
    fn state_load_corpus() {
        assert!(replay("state_load", super::state_load) > 0);
    }

    /// A state file whose canary is over 100 % (a `u16` of basis points) is not restored: the fuzz
    /// target's first seed run found that nothing bounded it.
    #[test]
    fn state_file_canary_over_100_percent_is_not_restored() {
        let bytes = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/corpus/state_load/canary-over-100"),
        )
        .unwrap();
        super::state_load(&bytes);
    }
}
