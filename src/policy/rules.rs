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
            .first(name)
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use crate::observe::metrics::Metrics;
    use crate::policy::decide::decide;
    use crate::snapshot::split::Reason;
    use crate::snapshot::Snapshot;

    const CONFIG: &str = "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\ngreen = [\"127.0.0.1:2\"]\n\
        [routes.preview]\n\
        [[routes.rules]]\nname = \"v4\"\ntarget = \"green\"\nsource = [\"10.1.0.0/16\"]\n\
        [[routes.rules]]\nname = \"v6\"\ntarget = \"green\"\nsource = [\"fd00::/8\"]\n\
        [[routes.rules]]\nname = \"tier\"\ntarget = \"blue\"\nheader = \"x-tier\"\nvalues = [\"pinned\"]\n\
        [[routes.rules]]\nname = \"tier-green\"\ntarget = \"green\"\nheader = \"x-tier\"\nvalues = [\"beta\", \"pinned\"]\n\
        [[routes.rules]]\nname = \"cookie\"\ntarget = \"green\"\ncookie = \"grp\"\nvalues = [\"a\"]\n";

    fn snap() -> Snapshot {
        let config = crate::config::parse(Path::new("t.toml"), CONFIG).unwrap();
        Snapshot::build(
            1,
            Arc::new(config),
            &Default::default(),
            &Snapshot::empty(),
            &Metrics::new(),
        )
    }

    /// (target name, rule name) for a request with `fields` from `peer`, through both header
    /// representations, which must agree.
    fn to(snap: &Snapshot, fields: &[(&str, &str)], peer: &str) -> (String, Option<String>) {
        let peer = peer.parse().unwrap();
        let mut map = http::HeaderMap::new();
        for (k, v) in fields {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let parsed: Vec<httparse::Header> = fields
            .iter()
            .map(|(k, v)| httparse::Header {
                name: k,
                value: v.as_bytes(),
            })
            .collect();
        let a = decide(snap, None, "/", &map, peer).unwrap();
        let b = decide(snap, None, "/", &parsed[..], peer).unwrap();
        assert_eq!(a, b, "{fields:?}");
        let r = &snap.routes[a.route];
        assert_eq!(a.rule.is_some(), a.reason == Reason::Rule);
        (
            r.targets[a.target].name.to_string(),
            a.rule.map(|i| r.rules.list[i].name.to_string()),
        )
    }

    #[test]
    fn first_match_wins_after_preview() {
        let s = snap();
        let rule = |t: &str, n: &str| (t.to_string(), Some(n.to_string()));
        let split = ("blue".to_string(), None);
        assert_eq!(to(&s, &[], "203.0.113.1"), split);
        assert_eq!(to(&s, &[], "10.1.200.3"), rule("green", "v4"));
        assert_eq!(to(&s, &[], "::ffff:10.1.0.1"), rule("green", "v4"));
        assert_eq!(to(&s, &[], "fd12::1"), rule("green", "v6"));
        assert_eq!(
            to(&s, &[("X-Tier", "beta")], "203.0.113.1"),
            rule("green", "tier-green")
        );
        assert_eq!(
            to(&s, &[("x-tier", "pinned")], "203.0.113.1"),
            rule("blue", "tier")
        );
        // The first field's value decides, as for preview and sticky keys.
        assert_eq!(
            to(&s, &[("x-tier", "free"), ("x-tier", "beta")], "203.0.113.1"),
            split
        );
        assert_eq!(
            to(&s, &[("cookie", "x=1;grp=a")], "203.0.113.1"),
            rule("green", "cookie")
        );
        assert_eq!(
            to(
                &s,
                &[("cookie", "x=1"), ("cookie", " grp=a ")],
                "203.0.113.1"
            ),
            rule("green", "cookie")
        );
        assert_eq!(
            to(&s, &[("cookie", "grp=ab; xgrp=a")], "203.0.113.1"),
            split
        );
        // Preview (from loopback, the default allow list) comes first.
        assert_eq!(
            to(
                &s,
                &[("x-flipgate-target", "blue"), ("x-tier", "beta")],
                "127.0.0.1"
            ),
            split
        );
    }

    #[test]
    fn a_match_is_counted_only_when_recorded() {
        let s = snap();
        let map: http::HeaderMap = [(
            http::HeaderName::from_static("x-tier"),
            "beta".parse().unwrap(),
        )]
        .into_iter()
        .collect();
        let d = decide(&s, None, "/", &map, "203.0.113.1".parse().unwrap()).unwrap();
        let counter = &s.routes[0].rules.list[3].requests;
        assert_eq!(counter.get(), 0);
        d.record(&s);
        assert_eq!(counter.get(), 1);
    }
}
