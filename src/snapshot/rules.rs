//! A route's cohort rules, compiled for the data path: what each rule looks at, the index of its
//! target, and its `rule_requests_total` handle.
//!
//! Invariants: built from a validated `config::Rule` list (so every target name resolves), in file
//! order, when a snapshot is built; nothing here is looked up or allocated per request: the values
//! to compare are bytes held in advance and the counter handle is resolved at build. Matching
//! itself is `policy::rules` (it reads request fields through `policy::decide::Fields`, which
//! this module must not import back).

use std::sync::Arc;

use prometheus::IntCounter;

use crate::config::{Route, RuleMatch};
use crate::observe::metrics::Metrics;

/// A route's rules, first match wins.
#[derive(Default)]
pub struct Rules {
    pub list: Box<[CompiledRule]>,
}

/// One rule as the data path uses it.
pub struct CompiledRule {
    pub name: Arc<str>,
    /// Index into the route's targets (the config's, sorted by name, order).
    pub target: usize,
    pub matcher: Matcher,
    /// `rule_requests_total{route, rule}`, also the API's `matched` count.
    pub requests: IntCounter,
}

/// What a compiled rule compares.
pub enum Matcher {
    /// The first value of this field is one of these byte strings.
    Header(http::HeaderName, Box<[Box<[u8]>]>),
    /// The cookie of this name is one of these byte strings.
    Cookie(Box<str>, Box<[Box<[u8]>]>),
    /// The client address is in one of these networks.
    Source(Box<[ipnet::IpNet]>),
}

impl Rules {
    /// Compiles a route's rules, resolving target indices and metric handles.
    pub fn build(route: &Route, metrics: &Metrics) -> Rules {
        let bytes = |values: &[String]| {
            values
                .iter()
                .map(|v| v.as_bytes().into())
                .collect::<Box<[Box<[u8]>]>>()
        };
        let list = route
            .rules
            .iter()
            .map(|r| CompiledRule {
                name: r.name.as_str().into(),
                target: route.target_index(&r.target).unwrap_or(0),
                matcher: match &r.matcher {
                    RuleMatch::Header { name, values } => {
                        Matcher::Header(name.clone(), bytes(values))
                    }
                    RuleMatch::Cookie { name, values } => {
                        Matcher::Cookie(name.as_str().into(), bytes(values))
                    }
                    RuleMatch::Source(nets) => Matcher::Source(nets.as_slice().into()),
                },
                requests: metrics.rule(&route.name, &r.name),
            })
            .collect();
        Rules { list }
    }

    /// Whether the route has no rules (the decision skips them outright).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}
