//! Cohort rule matching, written once for both engines: the first of a route's rules
//! (`snapshot::rules`) that the request matches.
//!
//! Invariants: pure and allocation-free: a header rule compares the field's first value (as
//! preview and sticky keys do) byte for byte with each listed value; a cookie rule parses the
//! `Cookie` field(s) in place (split on ';', trimmed, exact name, via `Fields::cookie`); a source
//! rule tests the client address, an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, a dual-stack
//! listener's view of an IPv4 client) as its IPv4 address too. Rules are tried in file order;
//! the first match wins.

use std::net::IpAddr;

use crate::policy::decide::Fields;
use crate::snapshot::rules::{Matcher, Rules};

/// The index of the first rule the request matches, if any.
#[inline]
pub fn first_match<F: Fields + ?Sized>(rules: &Rules, fields: &F, peer: IpAddr) -> Option<usize> {
    rules.list.iter().position(|r| match &r.matcher {
        Matcher::Header(name, values) => fields
            .first(name.as_str())
            .is_some_and(|v| values.iter().any(|x| **x == *v)),
        Matcher::Cookie(name, values) => fields
            .cookie(name)
            .is_some_and(|v| values.iter().any(|x| **x == *v)),
        Matcher::Source(nets) => {
            let canonical = peer.to_canonical();
            nets.iter()
                .any(|n| n.contains(&peer) || n.contains(&canonical))
        }
    })
}
