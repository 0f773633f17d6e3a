//! Cohort rules (`[[routes.rules]]`): the raw form serde reads, the validated `Rule`, and the
//! checks between them.
//!
//! Invariants: a `Rule` exists only if it matches on exactly one of a header, a cookie or the
//! client address; a header or cookie rule has at least one non-empty value and a valid field or
//! cookie name; a source rule has at least one CIDR (IPv4 or IPv6, a bare address meaning one
//! host), stored truncated to its network; its target is one of the route's targets; its name is
//! unique within the route and made of letters, digits, '-', '_' and '.', so it is a safe
//! Prometheus label value. Every error names the rule and points at the offending key.

use std::collections::HashSet;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::error::{quote, Sink};

/// One `[[routes.rules]]` entry, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Spanned<String>,
    pub target: Spanned<String>,
    pub header: Option<Spanned<String>>,
    pub cookie: Option<Spanned<String>>,
    pub source: Option<Spanned<Vec<Spanned<String>>>>,
    pub values: Option<Spanned<Vec<Spanned<String>>>>,
}

/// A cohort rule: requests it matches go to `target`, before the canary split.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique within the route; the `rule` label of `flipgate_rule_requests_total`.
    pub name: String,
    pub target: String,
    pub matcher: RuleMatch,
}

/// What a rule looks at.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleMatch {
    /// The first value of this header field is exactly one of `values`.
    Header {
        name: http::HeaderName,
        values: Vec<String>,
    },
    /// The value of this cookie (the first `Cookie` field that has it) is exactly one of `values`.
    Cookie { name: String, values: Vec<String> },
    /// The client's address (the TCP peer) is in one of these networks.
    Source(Vec<ipnet::IpNet>),
}

impl RuleMatch {
    /// `header`, `cookie` or `source`: the API's and the status page's `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            RuleMatch::Header { .. } => "header",
            RuleMatch::Cookie { .. } => "cookie",
            RuleMatch::Source(_) => "source",
        }
    }
}

/// Validates a route's rules against its target names (`targets` empty: the targets themselves
/// were invalid, already reported, so target references are not checked). Errors go to `sink`;
/// the rules that passed are returned (the caller discards the route if anything failed).
pub fn validate(
    sink: &mut Sink,
    route: &str,
    targets: &[&str],
    raw: Vec<Spanned<RawRule>>,
) -> Vec<Rule> {
    let mut names = HashSet::new();
    let mut rules = Vec::with_capacity(raw.len());
    for r in raw {
        let span = r.span();
        let r = r.into_inner();
        let name = r.name.get_ref().clone();
        let field = |key: &str| format!("routes[{}].rules[{}].{key}", quote(route), quote(&name));
        let before = sink.count();
        if !valid_name(&name) {
            sink.push(
                r.name.span(),
                format!("routes[{}].rules.name", quote(route)),
                format!(
                    "rule name `{}` must be non-empty and use only letters, digits, '-', '_' and '.'",
                    quote(&name)
                ),
            );
        } else if !names.insert(name.clone()) {
            sink.push(
                r.name.span(),
                field("name"),
                format!(
                    "duplicate rule name `{}` (rule names are unique within a route)",
                    quote(&name)
                ),
            );
        }
        let target = r.target.get_ref().clone();
        if !targets.is_empty() && !targets.contains(&target.as_str()) {
            sink.push(
                r.target.span(),
                field("target"),
                format!(
                    "unknown target `{}`; defined targets: {}",
                    quote(&target),
                    quote(&targets.join(", "))
                ),
            );
        }
        let matcher = matcher(sink, &field, span, r.header, r.cookie, r.source, r.values);
        if let (Some(matcher), true) = (matcher, sink.count() == before) {
            rules.push(Rule {
                name,
                target,
                matcher,
            });
        }
    }
    rules
}

fn matcher(
    sink: &mut Sink,
    field: &dyn Fn(&str) -> String,
    span: Range<usize>,
    header: Option<Spanned<String>>,
    cookie: Option<Spanned<String>>,
    source: Option<Spanned<Vec<Spanned<String>>>>,
    values: Option<Spanned<Vec<Spanned<String>>>>,
) -> Option<RuleMatch> {
    // Exactly one of the three keys: the second one present (in file order) is the error.
    let mut given: Vec<(&str, Range<usize>)> = Vec::with_capacity(3);
    if let Some(h) = &header {
        given.push(("header", h.span()));
    }
    if let Some(c) = &cookie {
        given.push(("cookie", c.span()));
    }
    if let Some(s) = &source {
        given.push(("source", s.span()));
    }
    given.sort_by_key(|(_, s)| s.start);
    match given.as_slice() {
        [] => {
            sink.push(
                span,
                field("header"),
                "a rule needs exactly one of `header = NAME`, `cookie = NAME` or `source = [CIDR, ...]`",
            );
            return None;
        }
        [(first, _), (second, at), ..] => {
            sink.push(
                at.clone(),
                field(second),
                format!(
                    "`{first}` and `{second}` both given: a rule matches on exactly one of header, cookie or source"
                ),
            );
            return None;
        }
        [_] => {}
    }
    if let Some(source) = source {
        if let Some(v) = values {
            sink.push(
                v.span(),
                field("values"),
                "`values` belongs to header and cookie rules; a source rule lists its CIDRs in `source`",
            );
            return None;
        }
        let at = source.span();
        let list = source.into_inner();
        if list.is_empty() {
            sink.push(
                at,
                field("source"),
                "must list at least one CIDR (example: [\"10.1.0.0/16\"])",
            );
            return None;
        }
        let mut nets = Vec::with_capacity(list.len());
        for c in list {
            match cidr(c.get_ref()) {
                Some(n) => nets.push(n),
                None => sink.push(
                    c.span(),
                    field("source"),
                    format!(
                        "`{}` is not a CIDR (examples: \"10.1.0.0/16\", \"fd00::/8\") or IP address",
                        quote(c.get_ref())
                    ),
                ),
            }
        }
        return Some(RuleMatch::Source(nets));
    }
    let (key, key_span) = given[0].clone();
    let Some(values) = values else {
        sink.push(
            key_span,
            field("values"),
            format!("a `{key}` rule needs `values`: the exact values that match"),
        );
        return None;
    };
    let at = values.span();
    let list = values.into_inner();
    if list.is_empty() {
        sink.push(at, field("values"), "must list at least one value");
        return None;
    }
    let mut out = Vec::with_capacity(list.len());
    for v in list {
        let bad = if v.get_ref().is_empty() {
            Some("an empty value never matches; list the exact values to match".to_string())
        } else if http::HeaderValue::from_str(v.get_ref()).is_err() {
            Some(format!(
                "`{}` cannot appear in a header field (control characters)",
                quote(v.get_ref())
            ))
        } else {
            None
        };
        match bad {
            Some(msg) => sink.push(v.span(), field("values"), msg),
            None => out.push(v.into_inner()),
        }
    }
    if let Some(h) = header {
        return match http::HeaderName::from_bytes(h.get_ref().as_bytes()) {
            Ok(name) => Some(RuleMatch::Header { name, values: out }),
            Err(_) => {
                sink.push(
                    h.span(),
                    field("header"),
                    format!("`{}` is not a valid header name", quote(h.get_ref())),
                );
                None
            }
        };
    }
    let c = cookie.expect("one of header, cookie, source is given");
    if !valid_cookie_name(c.get_ref()) {
        sink.push(
            c.span(),
            field("cookie"),
            format!("`{}` is not a valid cookie name", quote(c.get_ref())),
        );
        return None;
    }
    Some(RuleMatch::Cookie {
        name: c.into_inner(),
        values: out,
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// A cookie name is an RFC 6265 token.
fn valid_cookie_name(c: &str) -> bool {
    !c.is_empty()
        && c.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// A CIDR, or a bare address as a one-host network; truncated to its network address.
fn cidr(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
}
