//! The connect retry rule, for both engines: a request whose connection to its instance could
//! not be opened goes once to another instance of the same target.
//!
//! Invariants:
//! - Only a failure to *connect* (`after`: refused, unreachable, reset or a TLS handshake that
//!   failed, before any byte of the request was written) moves a request, so it is safe for any
//!   method and any body. A connect that timed out is not moved (it already spent
//!   `connect_timeout` of the exchange's one `upstream_timeout`), nor is anything that failed after
//!   the request was written (`resend` has the rules for those).
//! - At most once per request, to an instance chosen by the target's own balancing rule with the
//!   failed one excluded (`Upstream::pick` with `avoid`), never a drained one, with its own
//!   in-flight slot (`max_upstream_connections` holds there too). With no other usable instance
//!   the original failure is answered (502) and recorded as before.
//! - A moved request's failed connect is recorded where it says something true and nothing
//!   else: the failed instance's health (so an instance that keeps refusing is ejected) and
//!   `upstream_errors_total{kind="connect"}`. The client got no error from it, so neither the
//!   circuit window nor `requests_total` sees it; the moved request's own outcome is recorded
//!   like any other.
//! - Upgrades (WebSocket) are not moved: the client's side of the upgrade belongs to the first
//!   sending on hyper's path.

use crate::policy::error::{ProxyError, UpstreamErrorKind};
use crate::snapshot::TargetEntry;
use crate::upstream::balance::Pick;
use crate::upstream::health::Outlier;
use crate::upstream::InflightGuard;

/// Whether a failed attempt failed to connect in a way that allows moving the request.
#[inline]
pub fn after(e: ProxyError) -> bool {
    e == ProxyError::Upstream(UpstreamErrorKind::Connect)
}

/// Another instance of `target` for a request whose connect to instance `failed` failed: its
/// index and in-flight slot, with the failure recorded against `failed` (see the module doc).
/// `None`: no other usable instance (or it is at `limit`); answer the failure as it is.
pub fn another(
    target: &TargetEntry,
    failed: usize,
    outlier: &Outlier,
    limit: usize,
) -> Option<(usize, InflightGuard)> {
    let upstream = &target.upstream;
    let now_ms = crate::clock::now_ms();
    let Pick::Instance(i) = upstream.pick(now_ms, Some(failed)) else {
        return None;
    };
    let slot = upstream.acquire(i, limit).ok()?;
    upstream.health[failed].record(true, now_ms, outlier);
    target.metrics.upstream_error(UpstreamErrorKind::Connect);
    tracing::debug!(route = %target.route, target = %target.name, failed = %upstream.instances[failed], to = %upstream.instances[i], "connect failed; request moved to another instance");
    Some((i, slot))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::error::{ClientErrorKind, LocalErrorKind};

    #[test]
    fn only_a_connect_failure_moves_a_request() {
        assert!(after(ProxyError::Upstream(UpstreamErrorKind::Connect)));
        for e in [
            ProxyError::Upstream(UpstreamErrorKind::Timeout),
            ProxyError::Upstream(UpstreamErrorKind::Reset),
            ProxyError::Upstream(UpstreamErrorKind::Status5xx),
            ProxyError::Local(LocalErrorKind::Resources),
            ProxyError::Client(ClientErrorKind::BodyAborted),
            ProxyError::NoHealthy,
        ] {
            assert!(!after(e), "{e:?}");
        }
    }
}
