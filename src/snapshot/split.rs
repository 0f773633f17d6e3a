//! The split decision: which target of a route serves a request.
//!
//! Invariants: pure and allocation-free. The sticky bucket is `xxh3_64(key, seed = xxh3(route))
//! % 10_000`, a function of the route name and key value only, so every replica and every version
//! puts a user in the same bucket; a user goes to the canary iff `bucket < basis_points`, so raising
//! the percent only ever moves users from live to canary. Requests without a key draw a bucket from
//! the caller-supplied random source.

use http::HeaderMap;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::config::Sticky;

/// Number of buckets: 0.01 % resolution.
pub const BUCKETS: u16 = 10_000;

/// Why a request went where it went; reported in access logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No canary, or the request fell outside the canary share.
    Live,
    /// Canary chosen by a per-request draw (no sticky key).
    Canary,
    /// Canary or live decided by the user's sticky key.
    Sticky,
    /// An allowed client named the target in the preview header.
    Preview,
    /// A cohort rule (`[[routes.rules]]`) matched.
    Rule,
}

impl Reason {
    /// Stable lower-case name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Live => "live",
            Reason::Canary => "canary",
            Reason::Sticky => "sticky",
            Reason::Preview => "preview",
            Reason::Rule => "rule",
        }
    }
}

/// A route's split, compiled for the data path.
#[derive(Debug, Clone)]
pub struct Split {
    /// Index of the live target in the route's target list.
    pub live: usize,
    /// Index of the canary target; meaningful only when `basis_points > 0`.
    pub canary: usize,
    /// Canary share in basis points (0..=10_000).
    pub basis_points: u16,
    pub sticky: Sticky,
    /// `xxh3_64(route name)`, the seed of the sticky hash.
    pub seed: u64,
}

impl Split {
    /// Builds a split; `seed` derives from the route name so buckets are per route.
    pub fn new(route: &str, live: usize, canary: Option<(usize, u16, Sticky)>) -> Split {
        let (canary, basis_points, sticky) = canary.unwrap_or((live, 0, Sticky::None));
        Split {
            live,
            canary,
            basis_points,
            sticky,
            seed: xxh3_64(route.as_bytes()),
        }
    }

    /// Decides the target for a request. `draw` is called only when a random bucket is needed and
    /// must return a value in `0..BUCKETS`.
    #[inline]
    pub fn decide(&self, headers: &HeaderMap, draw: impl FnOnce() -> u16) -> (usize, Reason) {
        self.decide_by(|sticky| sticky_key(sticky, headers), draw)
    }

    /// `decide`, with the sticky key found by `key` (called only when the split needs one), for
    /// callers that hold the request headers in another form than a `HeaderMap`.
    #[inline]
    pub fn decide_by<'a>(
        &self,
        key: impl FnOnce(&Sticky) -> Option<&'a [u8]>,
        draw: impl FnOnce() -> u16,
    ) -> (usize, Reason) {
        if self.basis_points == 0 {
            return (self.live, Reason::Live);
        }
        if self.basis_points >= BUCKETS {
            return (self.canary, Reason::Canary);
        }
        if let Some(key) = key(&self.sticky) {
            let target = if bucket(self.seed, key) < self.basis_points {
                self.canary
            } else {
                self.live
            };
            return (target, Reason::Sticky);
        }
        if draw() < self.basis_points {
            (self.canary, Reason::Canary)
        } else {
            (self.live, Reason::Live)
        }
    }
}

/// The bucket of a sticky key.
#[inline]
pub fn bucket(seed: u64, key: &[u8]) -> u16 {
    (xxh3_64_with_seed(key, seed) % BUCKETS as u64) as u16
}

/// Extracts the sticky key's bytes from the request, if present and non-empty.
#[inline]
pub fn sticky_key<'a>(sticky: &Sticky, headers: &'a HeaderMap) -> Option<&'a [u8]> {
    match sticky {
        Sticky::None => None,
        Sticky::Header(name) => headers
            .get(name)
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty()),
        Sticky::Cookie(name) => headers
            .get_all(http::header::COOKIE)
            .iter()
            .find_map(|v| cookie_value(v.as_bytes(), name.as_bytes())),
    }
}

/// Finds `name=value` in one `Cookie` header value (`a=1; b=2`). `name` is a cookie-name token
/// (validated in the config: no '='), so a pair is `name` exactly when it starts with `name=`;
/// other pairs are rejected by that prefix test without looking for their '='.
pub fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii_start();
        let v = pair
            .strip_prefix(name)?
            .strip_prefix(b"=")?
            .trim_ascii_end();
        let v = v
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(v);
        (!v.is_empty()).then_some(v)
    })
}

thread_local! {
    static RNG: std::cell::RefCell<rand::rngs::SmallRng> =
        std::cell::RefCell::new(rand::SeedableRng::from_os_rng());
}

/// A uniformly random bucket from a fast thread-local generator.
#[inline]
pub fn random_bucket() -> u16 {
    use rand::Rng;
    RNG.with(|r| r.borrow_mut().random_range(0..BUCKETS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_parsing() {
        assert_eq!(
            cookie_value(b"a=1; uid=abc; b=2", b"uid"),
            Some(&b"abc"[..])
        );
        assert_eq!(cookie_value(b"uid=\"q\"", b"uid"), Some(&b"q"[..]));
        assert_eq!(cookie_value(b"xuid=1", b"uid"), None);
        assert_eq!(cookie_value(b"uid=", b"uid"), None);
        assert_eq!(cookie_value(b"  uid = 1; uid=2 ", b"uid"), Some(&b"2"[..]));
        assert_eq!(cookie_value(b"uidx=1;uid=a=b", b"uid"), Some(&b"a=b"[..]));
    }

    #[test]
    fn raising_percent_never_moves_users_back() {
        let seed = xxh3_64(b"bot");
        for user in 0..5000u32 {
            let b = bucket(seed, user.to_string().as_bytes());
            for bp in [100u16, 500, 2000, 4000] {
                if b < bp {
                    assert!(b < bp + 1);
                }
            }
        }
        let mut h = HeaderMap::new();
        let s = |bp| {
            Split::new(
                "bot",
                0,
                Some((1, bp, Sticky::Header("x-user-id".parse().unwrap()))),
            )
        };
        let mut moved_back = 0;
        for user in 0..3000u32 {
            h.insert("x-user-id", user.to_string().parse().unwrap());
            let before = s(2000).decide(&h, || unreachable!()).0;
            let after = s(4000).decide(&h, || unreachable!()).0;
            if before == 1 && after == 0 {
                moved_back += 1;
            }
        }
        assert_eq!(moved_back, 0);
    }

    #[test]
    fn no_key_uses_draw() {
        let s = Split::new("bot", 0, Some((1, 500, Sticky::None)));
        let h = HeaderMap::new();
        assert_eq!(s.decide(&h, || 499), (1, Reason::Canary));
        assert_eq!(s.decide(&h, || 500), (0, Reason::Live));
    }
}
