//! Who may talk to the admin listener: one pure decision over a request head, before any handler
//! runs. The admin server, the unit tests and the `admin_request` fuzz target all call [`check`].
//!
//! Invariants:
//! - Every request (reads, probes and `/metrics` included) names a `Host` that is the accepted
//!   connection's own local address, `localhost`, or an `admin.allowed_hosts` entry. The port is
//!   not compared: DNS rebinding is defeated by the name, and port-forwards change the port.
//! - A request with an `Origin` field (`null` included) is answered only if that origin is the
//!   admin listener's own (`http(s)://` + the request's `Host`); one marked
//!   `Sec-Fetch-Site: cross-site` is refused, except a person following a link (a `GET`/`HEAD`
//!   top-level navigation). Clients without these fields (curl, the CLI, kubelet, Prometheus)
//!   are not affected.
//! - A mutation passes only if the token source yields a token and the request presents it
//!   (compared in constant time); a configured source that yields nothing refuses (503), it never
//!   opens. With no token source at all (loopback only, enforced at bind), no token is needed.
//! - A mutation that declares a `Content-Type`, or carries a body, says `application/json`: the
//!   types an HTML form or a no-CORS `fetch` can send cross-origin never change state.
//! - Nothing here does I/O, allocates per header beyond the refusal message, or panics on any
//!   input (the fuzz target drives it with arbitrary heads).

use std::net::{IpAddr, SocketAddr};

use http::{header, HeaderMap, Method, StatusCode, Uri};
use subtle::ConstantTimeEq;

/// What the admin token source yields right now (it is re-read for every mutation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenState {
    /// No source is configured: mutations need no token. Only allowed on a loopback listener.
    Open,
    /// The bearer token a mutation must present.
    Token(String),
    /// A source is configured but yields no usable token: every mutation is refused with the
    /// reason (e.g. "admin token file /run/token: not found").
    Unusable(String),
}

/// What a request asks for.
#[derive(Debug, Clone, Copy)]
pub enum Access<'a> {
    /// Reads, probes, metrics, the status page: `Host`, `Origin` and `Sec-Fetch-Site` rules.
    Read,
    /// A state change: also the token and the content type.
    Mutate(&'a TokenState),
}

/// Why a request was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The `Host` is not this listener's (DNS rebinding) or is missing or ambiguous.
    #[error("{0}")]
    Host(String),
    /// A foreign or opaque `Origin`, or `Sec-Fetch-Site: cross-site`: a web page sent it.
    #[error("{0}")]
    CrossOrigin(String),
    /// The bearer token is missing or wrong.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// The token source is configured but yields no token.
    #[error("{0}; every mutation is refused until it yields a token")]
    TokenUnusable(String),
    /// A body, or a declared content type, that is not JSON.
    #[error("{0}")]
    ContentType(String),
}

impl Refusal {
    /// Every `reason` label of `flipgate_admin_refusals_total`.
    pub const REASONS: [&'static str; 5] = crate::observe::labels::ADMIN_REFUSALS;

    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Host(_) | Refusal::CrossOrigin(_) => StatusCode::FORBIDDEN,
            Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
            Refusal::TokenUnusable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The metric label: a fixed set, never request data.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Host(_) => Self::REASONS[0],
            Refusal::CrossOrigin(_) => Self::REASONS[1],
            Refusal::Unauthorized => Self::REASONS[2],
            Refusal::TokenUnusable(_) => Self::REASONS[3],
            Refusal::ContentType(_) => Self::REASONS[4],
        }
    }
}

/// Decides whether the admin listener answers a request, from its head alone.
///
/// `local` is the accepted connection's local address (on a `0.0.0.0` listener: the address the
/// client connected to, e.g. the pod IP a kubelet probes); `allowed_hosts` are normalised entries
/// of `admin.allowed_hosts` (see [`normalize_host_name`]).
pub fn check(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    local: SocketAddr,
    allowed_hosts: &[String],
    access: Access<'_>,
) -> Result<(), Refusal> {
    let authority = host(uri, headers, local, allowed_hosts)?;
    origin(method, headers, authority, matches!(access, Access::Read))?;
    if let Access::Mutate(token) = access {
        bearer(headers, token)?;
        content_type(headers, declares_body(headers))?;
    }
    Ok(())
}

/// The content-type rule again once a mutation's body is read: HTTP/2 can send a body without
/// announcing its length, so the head alone cannot tell.
pub fn check_body(headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
    content_type(headers, !body.is_empty())
}

/// Canonical form of a host name or IP address: lower case, no trailing dot, IPv6 without
/// brackets (`::1`), IPv4-mapped IPv6 as IPv4. `None` for anything else (ports, schemes, paths,
/// wildcards, empty labels): used for `admin.allowed_hosts` entries and the request's `Host`.
pub fn normalize_host_name(s: &str) -> Option<String> {
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        // A bracketed IPv4 address is not a valid host.
        if bare.len() != s.len() && ip.is_ipv4() {
            return None;
        }
        return Some(ip.to_canonical().to_string());
    }
    if bare.len() != s.len() {
        return None;
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then(|| name.to_ascii_lowercase())
}

/// Splits a `Host` value into host and port; `None` if it is malformed.
fn split_host_port(s: &str) -> Option<&str> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']')?;
        let (h, rest) = s.split_at(end + 1);
        match rest {
            "" => (h, ""),
            _ => (h, rest.strip_prefix(':')?),
        }
    } else {
        match s.split_once(':') {
            // An IPv6 address must be bracketed: `::1:9901` is itself an address (found by the
            // fuzzer: splitting at the last colon read it as `::1` port 9901).
            Some((_, p)) if p.contains(':') => return None,
            Some((h, p)) => (h, p),
            None => (s, ""),
        }
    };
    (port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())).then_some(host)
}

/// Shortens and escapes request data quoted in a refusal.
fn quote(s: &str) -> String {
    let cut: String = s.chars().take(100).collect();
    cut.escape_debug().to_string()
}

fn lossy(v: &http::HeaderValue) -> String {
    quote(&String::from_utf8_lossy(v.as_bytes()))
}

/// The request's authority (target URI, else `Host`), if it names this listener.
fn host<'a>(
    uri: &'a Uri,
    headers: &'a HeaderMap,
    local: SocketAddr,
    allowed_hosts: &[String],
) -> Result<&'a str, Refusal> {
    let mut fields = headers.get_all(header::HOST).iter();
    let field = fields.next();
    if fields.next().is_some() {
        return Err(Refusal::Host("more than one Host field".into()));
    }
    let field = match field {
        None => None,
        Some(v) => match v.to_str() {
            Ok(s) => Some(s),
            Err(_) => {
                return Err(Refusal::Host(format!(
                    "Host `{}` is not visible ASCII",
                    lossy(v)
                )))
            }
        },
    };
    let authority = match (uri.authority().map(|a| a.as_str()), field) {
        (Some(a), Some(f)) if !a.eq_ignore_ascii_case(f) => {
            return Err(Refusal::Host(format!(
                "Host `{}` differs from the request target's authority `{}`",
                quote(f),
                quote(a)
            )))
        }
        (Some(a), _) => a,
        (None, Some(f)) => f,
        (None, None) => {
            return Err(Refusal::Host(
                "request has no Host; the admin API answers its own address, localhost and admin.allowed_hosts".into(),
            ))
        }
    };
    let name = split_host_port(authority).and_then(normalize_host_name);
    let ok = name.as_deref().is_some_and(|n| {
        n == "localhost"
            || allowed_hosts.iter().any(|a| a == n)
            || n.parse::<IpAddr>()
                .is_ok_and(|ip| ip == local.ip().to_canonical())
    });
    if ok {
        Ok(authority)
    } else {
        Err(Refusal::Host(format!(
            "Host `{}` is not this admin listener's (its own address, localhost, or an admin.allowed_hosts entry)",
            quote(authority)
        )))
    }
}

/// The `Origin` and `Sec-Fetch-Site` rules. `read` allows a cross-site top-level navigation.
fn origin(
    method: &Method,
    headers: &HeaderMap,
    authority: &str,
    read: bool,
) -> Result<(), Refusal> {
    let mut origins = headers.get_all(header::ORIGIN).iter();
    if let Some(o) = origins.next() {
        if origins.next().is_some() {
            return Err(Refusal::CrossOrigin("more than one Origin field".into()));
        }
        let own = o.to_str().ok().and_then(|o| {
            let lower = o.get(..8).map(str::to_ascii_lowercase).unwrap_or_default();
            let rest = if lower.starts_with("http://") {
                &o[7..]
            } else if lower == "https://" {
                &o[8..]
            } else {
                return None;
            };
            Some(rest.eq_ignore_ascii_case(authority))
        });
        if own != Some(true) {
            return Err(Refusal::CrossOrigin(format!(
                "cross-origin request refused (Origin `{}`); the admin API answers only its own pages and clients that send no Origin (curl, the CLI)",
                lossy(o)
            )));
        }
    }
    let cross_site = headers
        .get_all("sec-fetch-site")
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    if cross_site {
        let navigation = read
            && (method == Method::GET || method == Method::HEAD)
            && headers
                .get_all("sec-fetch-mode")
                .iter()
                .all(|v| v.as_bytes().eq_ignore_ascii_case(b"navigate"))
            && headers.contains_key("sec-fetch-mode");
        if !navigation {
            return Err(Refusal::CrossOrigin(
                "cross-site request refused (Sec-Fetch-Site: cross-site)".into(),
            ));
        }
    }
    Ok(())
}

/// `Authorization: Bearer <token>` against the token state.
fn bearer(headers: &HeaderMap, token: &TokenState) -> Result<(), Refusal> {
    let token = match token {
        TokenState::Open => return Ok(()),
        TokenState::Unusable(why) => return Err(Refusal::TokenUnusable(why.clone())),
        TokenState::Token(t) => t,
    };
    let mut fields = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(field), None) = (fields.next(), fields.next()) else {
        return Err(Refusal::Unauthorized);
    };
    // The scheme is case-insensitive (RFC 9110 §11.1); the token is not.
    let given = field
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    match given {
        Some(g) if bool::from(g.as_bytes().ct_eq(token.as_bytes())) => Ok(()),
        _ => Err(Refusal::Unauthorized),
    }
}

/// Whether the head announces a body: a `Transfer-Encoding`, or a `Content-Length` other than 0.
fn declares_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0")
}

fn content_type(headers: &HeaderMap, has_body: bool) -> Result<(), Refusal> {
    let mut fields = headers.get_all(header::CONTENT_TYPE).iter();
    let field = fields.next();
    if fields.next().is_some() {
        return Err(Refusal::ContentType(
            "more than one Content-Type field".into(),
        ));
    }
    let got = match field {
        None if !has_body => return Ok(()),
        None => "none".to_string(),
        Some(v) => {
            let media = v
                .to_str()
                .ok()
                .and_then(|s| s.split(';').next())
                .map(str::trim);
            if media.is_some_and(|m| m.eq_ignore_ascii_case("application/json")) {
                return Ok(());
            }
            format!("`{}`", lossy(v))
        }
    };
    Err(Refusal::ContentType(format!(
        "a mutation's body must be JSON: send `Content-Type: application/json` (got {got})"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = "127.0.0.1:9901";

    fn run(method: &str, headers: &[(&str, &str)], access: Access) -> Result<(), Refusal> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        check(
            &method.parse().unwrap(),
            &"/api/v1/routes/bot/flip".parse().unwrap(),
            &h,
            LOCAL.parse().unwrap(),
            &["flipgate.internal".to_string()],
            access,
        )
    }

    fn mutate(headers: &[(&str, &str)]) -> Result<(), Refusal> {
        run("POST", headers, Access::Mutate(&TokenState::Open))
    }

    #[test]
    fn curl_and_the_cli_pass() {
        let h = ("host", "127.0.0.1:9901");
        assert_eq!(mutate(&[h]), Ok(()));
        assert_eq!(mutate(&[h, ("content-length", "0")]), Ok(()));
        let json = ("content-type", "application/json; charset=utf-8");
        assert_eq!(mutate(&[h, json, ("content-length", "5")]), Ok(()));
        for host in [
            "localhost:9901",
            "LOCALHOST",
            "localhost.",
            "flipgate.internal:1",
        ] {
            assert_eq!(mutate(&[("host", host)]), Ok(()), "{host}");
        }
        // The status page's own requests.
        let own = [h, ("origin", "http://127.0.0.1:9901")];
        assert_eq!(mutate(&own), Ok(()));
        let site = [h, ("sec-fetch-site", "same-origin")];
        assert_eq!(run("GET", &site, Access::Read), Ok(()));
    }

    #[test]
    fn browser_requests_are_refused() {
        let h = ("host", "127.0.0.1:9901");
        let cases: &[&[(&str, &str)]] = &[
            &[h, ("content-type", "text/plain"), ("content-length", "2")],
            &[h, ("content-type", "application/x-www-form-urlencoded")],
            &[h, ("content-type", "multipart/form-data; boundary=x")],
            &[h, ("content-length", "2")],
            &[h, ("transfer-encoding", "chunked")],
            &[h, ("origin", "null")],
            &[h, ("origin", "http://evil.example")],
            &[h, ("origin", "http://127.0.0.1:8080")],
            &[h, ("sec-fetch-site", "cross-site")],
            &[("host", "evil.example:9901")],
            &[("host", "127.0.0.2:9901")],
            &[],
            &[h, h],
        ];
        for c in cases {
            assert!(mutate(c).is_err(), "{c:?}");
        }
        assert!(run("GET", &[("host", "evil.example")], Access::Read).is_err());
        // A cross-site navigation is a person following a link: reads only.
        let nav = [
            h,
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "navigate"),
        ];
        assert_eq!(run("GET", &nav, Access::Read), Ok(()));
        assert!(run("POST", &nav, Access::Mutate(&TokenState::Open)).is_err());
        let fetch = [
            h,
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "cors"),
        ];
        assert!(run("GET", &fetch, Access::Read).is_err());
    }

    #[test]
    fn token_states() {
        let h = ("host", "localhost");
        let token = TokenState::Token("s3cret".into());
        let m = |hs: &[(&str, &str)], t| run("POST", hs, Access::Mutate(t));
        assert_eq!(m(&[h], &token), Err(Refusal::Unauthorized));
        assert_eq!(m(&[h, ("authorization", "Bearer s3cret")], &token), Ok(()));
        assert_eq!(
            m(&[h, ("authorization", "bearer  s3cret ")], &token),
            Ok(())
        );
        assert!(m(&[h, ("authorization", "Bearer s3cre")], &token).is_err());
        assert!(m(&[h, ("authorization", "Basic s3cret")], &token).is_err());
        let two = [
            h,
            ("authorization", "Bearer s3cret"),
            ("authorization", "Bearer s3cret"),
        ];
        assert!(m(&two, &token).is_err());
        let broken = TokenState::Unusable("admin token file /x: not found".into());
        let r = m(&[h, ("authorization", "Bearer ")], &broken).unwrap_err();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.to_string().contains("/x: not found"), "{r}");
        // Reads never look at the token.
        assert_eq!(run("GET", &[h], Access::Read), Ok(()));
    }

    #[test]
    fn own_address_is_the_connections_local_address() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "[::1]:9901".parse().unwrap());
        let get = |h: &HeaderMap, local: &str| {
            let uri: Uri = "/healthz".parse().unwrap();
            check(
                &Method::GET,
                &uri,
                h,
                local.parse().unwrap(),
                &[],
                Access::Read,
            )
        };
        assert_eq!(get(&h, "[::1]:9901"), Ok(()));
        assert!(get(&h, "127.0.0.1:9901").is_err());
        // Unbracketed, `::1:9901` is another address, not `::1` port 9901 (fuzz regression).
        h.insert(header::HOST, "::1:9901".parse().unwrap());
        assert!(get(&h, "[::1]:9901").is_err());
        h.insert(header::HOST, "::1".parse().unwrap());
        assert!(get(&h, "[::1]:9901").is_err());
        // A kubelet probe of a pod listening on 0.0.0.0: Host is the pod IP it connected to.
        h.insert(header::HOST, "10.1.2.3:9901".parse().unwrap());
        assert_eq!(get(&h, "10.1.2.3:9901"), Ok(()));
        assert_eq!(get(&h, "[::ffff:10.1.2.3]:9901"), Ok(()));
        assert!(get(&h, "10.1.2.4:9901").is_err());
        // HTTP/2 carries the authority in the URI.
        let uri: Uri = "http://localhost:9901/healthz".parse().unwrap();
        let empty = HeaderMap::new();
        let local = LOCAL.parse().unwrap();
        assert_eq!(
            check(&Method::GET, &uri, &empty, local, &[], Access::Read),
            Ok(())
        );
        let uri: Uri = "http://evil.example/healthz".parse().unwrap();
        assert!(check(&Method::GET, &uri, &empty, local, &[], Access::Read).is_err());
    }

    #[test]
    fn host_names_normalise() {
        assert_eq!(
            normalize_host_name("Flipgate.Internal."),
            Some("flipgate.internal".into())
        );
        assert_eq!(normalize_host_name("[::1]"), Some("::1".into()));
        assert_eq!(
            normalize_host_name("::ffff:127.0.0.1"),
            Some("127.0.0.1".into())
        );
        for bad in [
            "",
            ".",
            "a..b",
            "*.example.com",
            "host:80",
            "http://x",
            "[1.2.3.4]",
            "a b",
        ] {
            assert_eq!(normalize_host_name(bad), None, "{bad}");
        }
    }
}
