//! Header hygiene for forwarding (RFC 9110 §7.6): hop-by-hop removal and the forwarding headers.
//!
//! Invariants: after `strip_hop_by_hop`, no connection-specific header (the fixed list plus every
//! name listed in `Connection`) is left, except `Upgrade`/`Connection: upgrade` when an upgrade is
//! being relayed and `te: trailers` (exactly that) when the caller keeps it. `Trailer` is not
//! connection-specific and stays. `chunk_for_trailers` changes a request's framing fields only,
//! never its body bytes. Nothing here allocates unless the request already carries the header being
//! extended (`X-Forwarded-For`, `Via`) or lacks an `x-request-id`, apart from growing the map at
//! most once: `set_forwarded` reserves room for every header this module adds, because a map parsed
//! by hyper is sized to the request's own headers and would otherwise grow twice.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::error::{ClientErrorKind, ProxyError};

/// Headers that are always connection-specific. `Trailer` is not one (RFC 9110 §6.6.2, RFC 9113
/// §8.2.2): it names the trailer fields the message will end with, and hyper's HTTP/1 encoders
/// write only the fields it names (see `chunk_for_trailers`), so it must reach the next hop.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The authority a request is for, the one rule both engines apply (RFC 9112 §3.2 and §3.2.2,
/// RFC 9113 §8.3.1): more than one `Host`, a `Host` that is not a valid authority, or an HTTP/1.1
/// request without `Host` is a bad request (400, as nginx answers); otherwise the request-target's
/// authority (absolute form, or HTTP/2's `:authority`) wins over `Host`, so a request is routed
/// by the same authority its upstream receives. `None`: the request names no authority (HTTP/1.0
/// or HTTP/2 without one); the upstream then gets the instance's address as `Host`.
pub fn request_authority<'a>(
    version: http::Version,
    target: Option<&'a [u8]>,
    mut hosts: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<&'a [u8]>, ProxyError> {
    const BAD: ProxyError = ProxyError::Client(ClientErrorKind::BadRequest);
    let host = hosts.next();
    if hosts.next().is_some() || host.is_some_and(|h| !valid_authority(h)) {
        return Err(BAD);
    }
    if host.is_none() && version == http::Version::HTTP_11 {
        return Err(BAD);
    }
    Ok(target.or(host))
}

/// Whether `v` is a `Host` value: `uri-host [ ":" port ]` (RFC 3986 §3.2.2), by its characters
/// (unreserved, percent-encoded, sub-delims, `:` and the IP-literal brackets). No path, query,
/// fragment, userinfo or whitespace.
pub fn valid_authority(v: &[u8]) -> bool {
    v.iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(&b))
}

/// Whether the message asks for a protocol upgrade (WebSocket and the like).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"upgrade"))
}

fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers. With `upgrade`, keeps `Upgrade` and re-sets `Connection: upgrade`.
/// `te: trailers` is kept when `keep_te_trailers` (requests: HTTP/2 upstreams need it for gRPC,
/// and an HTTP/1.1 upstream may send trailers only when asked).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool, keep_te_trailers: bool) {
    if headers.contains_key(header::CONNECTION) {
        // Names listed in Connection are hop-by-hop too, however many (the HTTP/1.1 engine drops
        // every one). Collect them into a stack buffer first (we cannot borrow while removing)
        // and remove by `&str`, which looks the name up without allocating; a `HeaderName` for a
        // non-standard token like `keep-alive` would allocate. Past 8 tokens / 256 bytes the rest
        // go to a heap list. Tokens of the fixed list are removed below anyway; `Host` and
        // `Content-Length` describe the message, not the connection, and stay (as on the engine).
        let mut buf = [0u8; 256];
        let mut listed = [(0usize, 0usize); 8];
        let mut more: Vec<String> = Vec::new();
        let (mut n, mut used) = (0, 0);
        for v in headers.get_all(header::CONNECTION) {
            for t in v.as_bytes().split(|&b| b == b',') {
                let t = t.trim_ascii();
                if t.is_empty()
                    || t.eq_ignore_ascii_case(b"close")
                    || t.eq_ignore_ascii_case(b"host")
                    || t.eq_ignore_ascii_case(b"content-length")
                    || HOP_BY_HOP
                        .iter()
                        .any(|h| t.eq_ignore_ascii_case(h.as_str().as_bytes()))
                {
                    continue;
                }
                if n == listed.len() || used + t.len() > buf.len() {
                    more.extend(std::str::from_utf8(t).ok().map(str::to_owned));
                    continue;
                }
                buf[used..used + t.len()].copy_from_slice(t);
                listed[n] = (used, t.len());
                used += t.len();
                n += 1;
            }
        }
        let names = listed[..n]
            .iter()
            .filter_map(|&(at, len)| std::str::from_utf8(&buf[at..at + len]).ok())
            .chain(more.iter().map(String::as_str));
        for name in names {
            if !(upgrade && name.eq_ignore_ascii_case("upgrade")) {
                headers.remove(name);
            }
        }
    }
    let te_trailers = keep_te_trailers
        && headers
            .get(header::TE)
            .is_some_and(|v| has_token(v.as_bytes(), b"trailers"));
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Frames a request body for an HTTP/1.1 upstream so that its trailers can follow it: a body of
/// unknown length is sent chunked (explicitly: hyper's client would otherwise send a `GET` or
/// `HEAD` body as `Content-Length: 0`), and so is an HTTP/2 request that declares trailers
/// (`Trailer`) and also carries `Content-Length`, which HTTP/2 allows and HTTP/1.1 cannot combine
/// with trailers. The body's bytes are unchanged. hyper's HTTP/1 client writes a trailer field
/// only when the body is chunked and the request's `Trailer` header names it (and never one that
/// RFC 9110 §6.5.1 keeps out of trailers: `Authorization`, `Content-*`, `Host`, …); an undeclared
/// field is dropped (docs/limits.md, "Trailers"). `bodyless`: the request has no body at all.
pub fn chunk_for_trailers(headers: &mut HeaderMap, version: http::Version, bodyless: bool) {
    if bodyless {
        return;
    }
    if headers.contains_key(header::CONTENT_LENGTH)
        && !(version == http::Version::HTTP_2 && headers.contains_key(header::TRAILER))
    {
        return;
    }
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
}

/// Appends the client address to `X-Forwarded-For` (one combined value, as most apps read only
/// the first field) and sets `X-Forwarded-Proto` and `X-Forwarded-Host` to what this hop saw.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    https: bool,
    host: Option<HeaderValue>,
) {
    // X-Forwarded-For, -Proto, -Host, Via, x-request-id: one growth instead of several.
    headers.reserve(5);
    // Every incoming non-empty value, in order, then the client: one combined field (as the
    // HTTP/1.1 engine writes it).
    let mut prev = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter(|v| !v.is_empty())
        .peekable();
    let xff = if prev.peek().is_none() {
        client.clone()
    } else {
        let mut v = Vec::with_capacity(64);
        for p in prev {
            v.extend_from_slice(p.as_bytes());
            v.extend_from_slice(b", ");
        }
        v.extend_from_slice(client.as_bytes());
        HeaderValue::from_bytes(&v).unwrap_or_else(|_| client.clone())
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST.clone(), h);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// Adds this hop to `Via`.
pub fn add_via(headers: &mut HeaderMap, version: http::Version) {
    let v = match version {
        http::Version::HTTP_2 => "2 flipgate",
        http::Version::HTTP_10 => "1.0 flipgate",
        _ => "1.1 flipgate",
    };
    headers.append(header::VIA, HeaderValue::from_static(v));
}

/// Keeps a valid incoming `x-request-id`, or generates one (32 hex digits). Returns it.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        if request_id_ok(v.as_bytes()) {
            return v.clone();
        }
    }
    let v = HeaderValue::from_bytes(&new_request_id()).expect("hex is a valid header value");
    headers.insert(X_REQUEST_ID.clone(), v.clone());
    v
}

/// Whether an incoming `x-request-id` value is kept (else a new one replaces it).
#[inline]
pub fn request_id_ok(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 200
}

/// A new request id: 32 random hex digits.
pub fn new_request_id() -> [u8; 32] {
    let id: u128 = rand::random();
    let mut buf = [0u8; 32];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((id >> (124 - 4 * i)) & 0xf) as usize];
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_listed_and_fixed() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, X-Secret, close".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn upgrade_kept_when_relaying() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true, false);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarded_appends() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        set_forwarded(&mut h, &HeaderValue::from_static("10.0.0.1"), false, None);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 32);
        assert_eq!(ensure_request_id(&mut h), id);
    }
}
