//! Entry points shared by the fuzz targets (`fuzz/`) and the corpus replay test, so a crash found
//! by the fuzzer is reproduced by `cargo test` once its input is committed to the corpus.
//!
//! Invariants: each function accepts arbitrary bytes and must return without panicking.

use std::path::Path;
use std::sync::OnceLock;

use crate::router::Router;
use crate::split::Split;

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
