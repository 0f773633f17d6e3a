//! Shared header helpers of both engines: the authority a request is for (`request_authority`),
//! upgrade detection, the response side's hop-by-hop removal and `Via`, and request ids. The
//! request forwarding policy itself is `proxy::policy`.
//!
//! Invariants: after `strip_response`, no connection-specific field (the fixed list of
//! `policy::hop_by_hop` plus every name listed in `Connection`) is left, as the engine writes a
//! response head. `Trailer` is not connection-specific and stays. `chunk_for_trailers` changes a
//! request's framing fields only, never its body bytes. Nothing here allocates, apart from
//! generating a request id's `HeaderValue` and past 8 names listed in a response's `Connection`.

use http::header::{self, HeaderMap, HeaderValue};

use super::error::{ClientErrorKind, ProxyError};
use super::forward as policy;

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

pub(crate) fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Removes a response's hop-by-hop fields (`policy::hop_by_hop` and the names its `Connection`
/// lists), as the engine's `h1::head::response` leaves them out.
pub fn strip_response(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        // Collect the listed names first (we cannot borrow while removing), into a stack buffer,
        // and remove by `&str`, which looks the name up without allocating.
        let mut buf = [0u8; 256];
        let mut listed = [(0usize, 0usize); 8];
        let mut more: Vec<String> = Vec::new();
        let (mut n, mut used) = (0, 0);
        for v in headers.get_all(header::CONNECTION) {
            for t in v.as_bytes().split(|&b| b == b',') {
                let t = t.trim_ascii();
                // `Content-Length` frames the message and stays (the engine keeps it too).
                if t.is_empty()
                    || t.eq_ignore_ascii_case(b"close")
                    || t.eq_ignore_ascii_case(b"content-length")
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
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
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

/// The fixed hop-by-hop names (`policy::hop_by_hop`), for removal from a `HeaderMap`.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Adds this hop to a response's `Via`.
pub fn add_via(headers: &mut HeaderMap, version: http::Version) {
    headers.append(header::VIA, HeaderValue::from_static(policy::via(version)));
}

/// The client's request id: the first `x-request-id` value that `request_id_ok` accepts (the
/// forwarding policy's rule, `policy::added`).
pub fn incoming_request_id<'v>(mut values: impl Iterator<Item = &'v [u8]>) -> Option<&'v [u8]> {
    values.find(|v| request_id_ok(v))
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
    fn strips_a_responses_listed_and_fixed() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, X-Secret, close".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_response(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn upgrade_detected() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(is_upgrade(&h));
    }
}
