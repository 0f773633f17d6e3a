//! The request decision, written once for both engines: the route (host, then path), the
//! preview header from an allowed client, then the route's cohort rules (first match wins), then
//! the route's split (sticky key or a random draw).
//!
//! Invariants: a pure function of the snapshot, the request's authority, path and fields, and the
//! client address; it reads the fields through `Fields`, so hyper's `HeaderMap` and the HTTP/1.1
//! engine's parsed head give the same answer, and it allocates nothing. Removing the preview
//! header before forwarding is the forwarding policy's business, not this one's. Deciding counts
//! nothing (an engine may decide, hand the connection over, and the other decide again): the
//! engine that serves the request calls `Decision::record` once.

use std::net::IpAddr;

use http::HeaderMap;

use crate::config::Sticky;
use crate::policy::rules::first_match;
use crate::snapshot::split::{cookie_value, random_bucket, Reason};
use crate::snapshot::Snapshot;

/// Read access to a request's header fields, whatever holds them.
pub trait Fields {
    /// The first value of field `name` (ASCII case-insensitive). Takes the name parsed in
    /// advance (config), so a `HeaderMap` looks it up without parsing it again per request.
    fn first(&self, name: &http::HeaderName) -> Option<&[u8]>;
    /// The value of cookie `name` in the first `Cookie` field that has it.
    fn cookie(&self, name: &str) -> Option<&[u8]>;
}

impl Fields for HeaderMap {
    fn first(&self, name: &http::HeaderName) -> Option<&[u8]> {
        self.get(name).map(|v| v.as_bytes())
    }
    fn cookie(&self, name: &str) -> Option<&[u8]> {
        self.get_all(http::header::COOKIE)
            .iter()
            .find_map(|v| cookie_value(v.as_bytes(), name.as_bytes()))
    }
}

impl Fields for [httparse::Header<'_>] {
    fn first(&self, name: &http::HeaderName) -> Option<&[u8]> {
        let name = name.as_str();
        self.iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
    fn cookie(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
            .find_map(|h| cookie_value(h.value, name.as_bytes()))
    }
}

/// Where a request goes: indices into the snapshot's routes and that route's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub route: usize,
    pub target: usize,
    pub reason: Reason,
    /// The cohort rule that chose the target (an index into the route's rules), if one did.
    pub rule: Option<usize>,
}

impl Decision {
    /// Counts what the decision used (a matched rule's `rule_requests_total`); called once per
    /// request, by the engine that serves it. An atomic add on a handle resolved in advance.
    #[inline]
    pub fn record(&self, snap: &Snapshot) {
        if let Some(rule) = self.rule {
            snap.routes[self.route].rules.list[rule].requests.inc();
        }
    }
}

/// Decides where a request goes; `None` when no route matches (404).
pub fn decide<F: Fields + ?Sized>(
    snap: &Snapshot,
    host: Option<&str>,
    path: &str,
    fields: &F,
    peer: IpAddr,
) -> Option<Decision> {
    let route = snap.router.lookup(host, path)?;
    let r = &snap.routes[route];
    let preview = r.preview.as_ref().and_then(|p| {
        let name = fields.first(&p.header)?;
        if !p.allow_from.iter().any(|n| n.contains(&peer)) {
            return None;
        }
        r.targets.iter().position(|t| t.name.as_bytes() == name)
    });
    if let Some(t) = preview {
        return Some(Decision {
            route,
            target: t,
            reason: Reason::Preview,
            rule: None,
        });
    }
    if !r.rules.is_empty() {
        if let Some(i) = first_match(&r.rules, fields, peer) {
            return Some(Decision {
                route,
                target: r.rules.list[i].target,
                reason: Reason::Rule,
                rule: Some(i),
            });
        }
    }
    let (target, reason) = r.split.decide_by(
        |sticky| match sticky {
            Sticky::None => None,
            Sticky::Header(n) => fields.first(n).filter(|v| !v.is_empty()),
            Sticky::Cookie(n) => fields.cookie(n.as_str()),
        },
        random_bucket,
    );
    Some(Decision {
        route,
        target,
        reason,
        rule: None,
    })
}
