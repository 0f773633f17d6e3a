//! The per-instance part of the admin API: what each instance of a target is doing (state and
//! requests in flight, for status, the status page and `flipgate wait-drained`) and the
//! `POST /api/v1/routes/{name}/targets/{target}/instances/{addr}/{drain,undrain}` paths.
//!
//! Invariants: read views come from the published snapshot only (relaxed atomic loads, no
//! lock); a drain is an ordinary mutation (`Action::Drain`) that goes through the same guard,
//! control call and persistence wait as every other. An instance's state is, in this order:
//! `draining` (drained, requests or tunnels still in flight), `drained` (drained, none in flight),
//! `down` (failing active checks), `ejected` (outlier ejection), else `up`.

use serde::{Deserialize, Serialize};

use crate::control::Action;
use crate::upstream::Upstream;

/// One instance of a target, as status shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceView {
    /// `host:port`, as in the route file.
    pub addr: String,
    /// `up`, `ejected`, `down`, `draining` or `drained` (see the module doc).
    pub state: String,
    /// Requests and tunnels (WebSocket, other upgrades) in flight to it now.
    pub in_flight: u64,
    /// Its `weight` (1 unless the table form says otherwise).
    pub weight: u64,
}

/// The instances of `upstream` at `now_ms`.
pub fn views(upstream: &Upstream, now_ms: u64) -> Vec<InstanceView> {
    upstream
        .instances
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let in_flight = upstream.inflight(i) as u64;
            let h = &upstream.health[i];
            let state = if upstream.drained(i) {
                if in_flight > 0 {
                    "draining"
                } else {
                    "drained"
                }
            } else if !h.checks_pass() {
                "down"
            } else if h.ejected(now_ms) {
                "ejected"
            } else {
                "up"
            };
            InstanceView {
                addr: a.to_string(),
                state: state.into(),
                in_flight,
                weight: upstream.weight(i),
            }
        })
        .collect()
}

/// The verb of a drain path, as `admin::mutation_target` passes it on: everything after the
/// route name (`targets/{target}/instances/{addr}/{drain|undrain}`), when `rest` is such a path.
pub fn verb(rest: &[&str]) -> Option<String> {
    match rest {
        ["targets", target, "instances", addr, op @ ("drain" | "undrain")] => {
            Some(format!("targets/{target}/instances/{addr}/{op}"))
        }
        _ => None,
    }
}

/// The action a drain verb (`verb`) asks for; `None` when `verb` is not one.
pub fn action(verb: &str) -> Option<Action> {
    let parts: Vec<&str> = verb.split('/').collect();
    match parts.as_slice() {
        ["targets", target, "instances", addr, op] => Some(Action::Drain {
            target: decode(target),
            instance: decode(addr),
            drain: *op == "drain",
        }),
        _ => None,
    }
}

/// Percent-decodes a path segment (an IPv6 instance is `%5B::1%5D:3000` in a URL); invalid
/// escapes are kept as they are.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_paths_round_trip_and_decode() {
        let v = verb(&["targets", "blue", "instances", "%5B::1%5D:3000", "drain"]).unwrap();
        match action(&v) {
            Some(Action::Drain {
                target,
                instance,
                drain,
            }) => {
                assert_eq!((target.as_str(), instance.as_str()), ("blue", "[::1]:3000"));
                assert!(drain);
            }
            other => panic!("{other:?}"),
        }
        assert!(verb(&["targets", "blue", "instances", "a:1", "stop"]).is_none());
        assert!(action("flip").is_none());
        assert_eq!(decode("a%2"), "a%2");
    }
}
