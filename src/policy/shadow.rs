//! Whether a request is copied to its route's shadow target (`[routes.shadow]`): the one rule
//! both engines call, after the request was decided and admitted.
//!
//! A request is copied when the route has shadow traffic (not paused: `snapshot::shadow`), the
//! request has no body or declares one of at most the shadow's `max_body_bytes` (a body of
//! unknown length is never copied), asks for no upgrade, its method is one of the shadow's `methods`, the
//! target serving it is not the shadow target itself (a canary, preview or cohort rule can send
//! a request there; it is not sent twice), and the draw falls within `percent`.
//!
//! Invariants: a route without shadow traffic costs one branch on an `Option`; nothing here
//! allocates or takes a lock; the draw comes from the split's thread-local generator and is not
//! made at all at 100 %.

use std::sync::Arc;

use crate::snapshot::shadow::Shadow;
use crate::snapshot::split::{random_bucket, BUCKETS};
use crate::snapshot::RouteEntry;

/// What the rule needs to know of the request, as the engine parsed it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a [u8],
    /// The body's declared length: `Some(0)` without a body (none declared, `Content-Length: 0`,
    /// an HTTP/2 stream ended with its head), `None` when its length is unknown (chunked, or an
    /// HTTP/2 stream without `Content-Length`).
    pub body: Option<u64>,
    /// The request asks for an upgrade (WebSocket): never copied (a copy cannot share the tunnel).
    pub upgrade: bool,
}

/// The route's shadow if this request (served by the route's target `served`) is to be copied.
/// `req` is asked only when the route has shadow traffic.
#[inline]
pub fn decide<'r, 'q>(
    route: &'r RouteEntry,
    served: usize,
    req: impl FnOnce() -> Request<'q>,
) -> Option<&'r Arc<Shadow>> {
    let shadow = route.shadow.as_ref()?;
    copies(shadow, served, req()).then_some(shadow)
}

/// The rule itself, for a compiled shadow.
#[inline]
pub fn copies(shadow: &Shadow, served: usize, req: Request<'_>) -> bool {
    req.body.is_some_and(|n| n <= shadow.max_body_bytes)
        && !req.upgrade
        && served != shadow.target_index
        && shadow.basis_points > 0
        && shadow
            .methods
            .iter()
            .any(|m| m.as_str().as_bytes() == req.method)
        && (shadow.basis_points >= BUCKETS || random_bucket() < shadow.basis_points)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Snapshot;
    use std::collections::HashMap;

    fn snapshot(shadow: &str, live: &str) -> Snapshot {
        let text = format!(
            "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\ngreen = [\"127.0.0.1:2\"]\n[routes.shadow]\ntarget = \"green\"\n{shadow}"
        );
        let config = crate::config::parse(std::path::Path::new("f.toml"), &text).unwrap();
        let mut state = crate::control::state::RouteState::from_file(&config.routes[0]);
        state.live = live.into();
        let states = HashMap::from([("bot".to_string(), state)]);
        let metrics = crate::observe::metrics::Metrics::new();
        Snapshot::build(1, config.into(), &states, &Snapshot::empty(), &metrics)
    }

    fn req(method: &str, bodyless: bool, upgrade: bool) -> Request<'_> {
        Request {
            method: method.as_bytes(),
            body: if bodyless { Some(0) } else { None },
            upgrade,
        }
    }

    #[test]
    fn what_is_copied() {
        let snap = snapshot("percent = 100\n", "blue");
        let route = &snap.routes[0];
        let (blue, green) = (0, 1);
        assert!(decide(route, blue, || req("GET", true, false)).is_some());
        assert!(decide(route, blue, || req("HEAD", true, false)).is_some());
        // Not the default methods, a body, an upgrade, or served by the shadow target itself.
        assert!(decide(route, blue, || req("POST", true, false)).is_none());
        assert!(decide(route, blue, || req("get", true, false)).is_none());
        assert!(decide(route, blue, || req("GET", false, false)).is_none());
        assert!(decide(route, blue, || req("GET", true, true)).is_none());
        assert!(decide(route, green, || req("GET", true, false)).is_none());
        let snap = snapshot("percent = 0\n", "blue");
        assert!(decide(&snap.routes[0], blue, || req("GET", true, false)).is_none());
        let snap = snapshot("percent = 100\nmethods = [\"POST\"]\n", "blue");
        assert!(decide(&snap.routes[0], blue, || req("POST", true, false)).is_some());
        assert!(decide(&snap.routes[0], blue, || req("GET", true, false)).is_none());
    }

    /// With `max_body_bytes`, a declared body up to it is copied; a larger or unknown one is not.
    #[test]
    fn bodies_up_to_max_body_bytes() {
        let snap = snapshot(
            "percent = 100\nmethods = [\"POST\"]\nmax_body_bytes = 100\n",
            "blue",
        );
        let route = &snap.routes[0];
        let post = |body| Request {
            method: b"POST",
            body,
            upgrade: false,
        };
        assert!(decide(route, 0, || post(Some(0))).is_some());
        assert!(decide(route, 0, || post(Some(100))).is_some());
        assert!(decide(route, 0, || post(Some(101))).is_none());
        assert!(decide(route, 0, || post(None)).is_none());
        // The default is bodyless requests only.
        let snap = snapshot("percent = 100\nmethods = [\"POST\"]\n", "blue");
        assert!(decide(&snap.routes[0], 0, || post(Some(1))).is_none());
    }

    /// A runtime flip that makes the shadow target live pauses shadowing.
    #[test]
    fn paused_while_its_target_is_live() {
        let snap = snapshot("percent = 100\n", "green");
        assert!(snap.routes[0].shadow.is_none());
        assert!(decide(&snap.routes[0], 0, || req("GET", true, false)).is_none());
    }

    /// A route without shadow traffic never looks at the request.
    #[test]
    fn no_shadow_no_look() {
        let text = "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n";
        let config = crate::config::parse(std::path::Path::new("f.toml"), text).unwrap();
        let metrics = crate::observe::metrics::Metrics::new();
        let snap = Snapshot::build(
            1,
            config.into(),
            &HashMap::new(),
            &Snapshot::empty(),
            &metrics,
        );
        let looked = std::cell::Cell::new(false);
        let d = decide(&snap.routes[0], 0, || {
            looked.set(true);
            req("GET", true, false)
        });
        assert!(d.is_none() && !looked.get());
    }

    /// The cap: places are taken up to `max_in_flight` and given back on drop.
    #[test]
    fn the_cap_drops_past_max_in_flight() {
        let snap = snapshot("percent = 100\nmax_in_flight = 2\n", "blue");
        let s = snap.routes[0].shadow.as_ref().unwrap();
        let a = s.try_enter().expect("first");
        let _b = s.try_enter().expect("second");
        assert!(s.try_enter().is_none(), "full: dropped, not queued");
        drop(a);
        assert!(s.try_enter().is_some(), "a place came back");
    }

    /// About `percent` of eligible requests are copied.
    #[test]
    fn percent_is_a_share() {
        let snap = snapshot("percent = 10\n", "blue");
        let n = (0..10_000)
            .filter(|_| decide(&snap.routes[0], 0, || req("GET", true, false)).is_some())
            .count();
        assert!((800..1200).contains(&n), "{n} of 10000 at 10 %");
    }
}
