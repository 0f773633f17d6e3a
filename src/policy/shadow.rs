//! Whether a request is copied to its route's shadow target (`[routes.shadow]`): the one rule
//! both engines call, after the request was decided and admitted.
//!
//! A request is copied when the route has shadow traffic (not paused: `snapshot::shadow`), the
//! request has no body and asks for no upgrade, its method is one of the shadow's `methods`, the
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
    /// The request has no body (none declared, or `Content-Length: 0`, or an HTTP/2 stream
    /// ended with its head).
    pub bodyless: bool,
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
    req.bodyless
        && !req.upgrade
        && served != shadow.target_index
        && shadow.basis_points > 0
        && shadow
            .methods
            .iter()
            .any(|m| m.as_str().as_bytes() == req.method)
        && (shadow.basis_points >= BUCKETS || random_bucket() < shadow.basis_points)
}
