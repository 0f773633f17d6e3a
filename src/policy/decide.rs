//! The request decision, written once for both engines: the route (host, then path), the
//! preview header from an allowed client, then the route's split (sticky key or a random draw).
//!
//! Invariants: a pure function of the snapshot, the request's authority, path and fields, and the
//! client address; it reads the fields through `Fields`, so hyper's `HeaderMap` and the HTTP/1.1
//! engine's parsed head give the same answer, and it allocates nothing. Removing the preview
//! header before forwarding is the forwarding policy's business, not this one's.

use std::net::IpAddr;

use http::HeaderMap;

use crate::config::Sticky;
use crate::snapshot::split::{cookie_value, random_bucket, Reason};
use crate::snapshot::Snapshot;

/// Read access to a request's header fields, whatever holds them.
pub trait Fields {
    /// The first value of field `name` (ASCII case-insensitive).
    fn first(&self, name: &str) -> Option<&[u8]>;
    /// The value of cookie `name` in the first `Cookie` field that has it.
    fn cookie(&self, name: &str) -> Option<&[u8]>;
}

impl Fields for HeaderMap {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(|v| v.as_bytes())
    }
    fn cookie(&self, name: &str) -> Option<&[u8]> {
        self.get_all(http::header::COOKIE)
            .iter()
            .find_map(|v| cookie_value(v.as_bytes(), name.as_bytes()))
    }
}

impl Fields for [httparse::Header<'_>] {
    fn first(&self, name: &str) -> Option<&[u8]> {
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
        let name = fields.first(p.header.as_str())?;
        if !p.allow_from.iter().any(|n| n.contains(&peer)) {
            return None;
        }
        r.targets.iter().position(|t| t.name.as_bytes() == name)
    });
    let (target, reason) = match preview {
        Some(t) => (t, Reason::Preview),
        None => r.split.decide_by(
            |sticky| match sticky {
                Sticky::None => None,
                Sticky::Header(n) => fields.first(n.as_str()).filter(|v| !v.is_empty()),
                Sticky::Cookie(n) => fields.cookie(n.as_str()),
            },
            random_bucket,
        ),
    };
    Some(Decision {
        route,
        target,
        reason,
    })
}
