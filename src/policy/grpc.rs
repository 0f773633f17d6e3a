//! gRPC outcomes: a gRPC call answers HTTP 200 and puts its real result in `grpc-status`, in the
//! response headers (Trailers-Only) or in the trailers. Which codes count as a failure of the
//! target (for the circuit window and outlier ejection) is set per route (`grpc_error_codes`).
//!
//! Invariants: codes are 0..=16 (RFC-less but fixed by the gRPC spec); anything else, or a call
//! that ends without a status, is `UNKNOWN` (2). A code set is a bit mask, so classifying a call
//! is one shift and one and; the metric label is the code's name, a fixed set.

use http::HeaderMap;

pub use crate::observe::labels::GRPC_CODES as NAMES;

/// `UNKNOWN`: what a call without a readable status counts as.
pub const UNKNOWN: u8 = 2;

/// The default failure set: the codes that say the server failed, not the caller (UNKNOWN,
/// INTERNAL, UNAVAILABLE, DATA_LOSS).
pub const DEFAULT_ERRORS: u32 = 1 << 2 | 1 << 13 | 1 << 14 | 1 << 15;

/// The code for a name (`"INTERNAL"`, case-insensitive) or a number (`"13"`).
pub fn code(name: &str) -> Option<u8> {
    if let Ok(n) = name.parse::<u8>() {
        return (usize::from(n) < NAMES.len()).then_some(n);
    }
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
        .map(|i| i as u8)
}

/// Whether a response is a gRPC one (by its `content-type`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-status` of a header block, if it has one; an unreadable value is `UNKNOWN`.
pub fn status(headers: &HeaderMap) -> Option<u8> {
    let v = headers.get("grpc-status")?;
    Some(
        std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse::<u8>().ok())
            .filter(|&c| usize::from(c) < NAMES.len())
            .unwrap_or(UNKNOWN),
    )
}

/// Whether `code` is in the failure set `mask`.
#[inline]
pub fn is_error(mask: u32, code: u8) -> bool {
    mask & (1 << code) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_by_name_and_number() {
        assert_eq!(code("internal"), Some(13));
        assert_eq!(code("13"), Some(13));
        assert_eq!(code("17"), None);
        assert_eq!(code("NOPE"), None);
        assert!(is_error(DEFAULT_ERRORS, 14));
        assert!(!is_error(DEFAULT_ERRORS, 5));
        let mut h = HeaderMap::new();
        h.insert("grpc-status", "x".parse().unwrap());
        assert_eq!(status(&h), Some(UNKNOWN));
        h.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(status(&h), Some(0));
    }
}
