//! Request -> route: host (exact, then `*.` wildcard by longest suffix, then any-host) and within a
//! host group the longest matching `path_prefix`.
//!
//! Invariants: built once per snapshot and immutable; `lookup` never allocates (the host is
//! lower-cased into a stack buffer) and runs in O(host labels + path length), independent of the
//! number of routes, because prefixes live in a byte trie. A host group with no matching prefix
//! falls through to the next, less specific group.

use std::collections::HashMap;

use crate::config::HostPattern;

/// Longest host name we look up; longer names cannot be valid DNS names and match only any-host.
const MAX_HOST: usize = 255;

/// Compiled routing table; values are indexes into the snapshot's route list.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<Box<str>, PrefixTrie>,
    /// Keyed by suffix including the leading dot (`.example.com`).
    wildcard: HashMap<Box<str>, PrefixTrie>,
    any: PrefixTrie,
}

impl Router {
    /// Adds a route under each of its hosts (or any host when it has none).
    pub fn insert(&mut self, hosts: &[HostPattern], prefix: &str, route: usize) {
        if hosts.is_empty() {
            self.any.insert(prefix.as_bytes(), route);
        }
        for h in hosts {
            let trie = match h {
                HostPattern::Exact(e) => self.exact.entry(e.as_str().into()).or_default(),
                HostPattern::Wildcard(w) => self.wildcard.entry(w.as_str().into()).or_default(),
            };
            trie.insert(prefix.as_bytes(), route);
        }
    }

    /// Finds the route for a request. `host` may carry a port and any case.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let path = path.as_bytes();
        if let Some(host) = host {
            let mut buf = [0u8; MAX_HOST];
            if let Some(host) = normalize_host(host, &mut buf) {
                if let Some(r) = self.exact.get(host).and_then(|t| t.longest(path)) {
                    return Some(r);
                }
                if !self.wildcard.is_empty() {
                    let mut rest = host;
                    while let Some(dot) = rest.find('.') {
                        let suffix = &rest[dot..];
                        if let Some(r) = self.wildcard.get(suffix).and_then(|t| t.longest(path)) {
                            return Some(r);
                        }
                        rest = &suffix[1..];
                    }
                }
            }
        }
        self.any.longest(path)
    }
}

/// Strips the port (and IPv6 brackets are kept as-is) and lower-cases into `buf`.
fn normalize_host<'a>(host: &str, buf: &'a mut [u8; MAX_HOST]) -> Option<&'a str> {
    let host = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let bytes = host.as_bytes();
    if bytes.len() > MAX_HOST {
        return None;
    }
    let out = &mut buf[..bytes.len()];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

/// Byte trie of path prefixes; each node may end a prefix.
#[derive(Debug, Default)]
struct PrefixTrie {
    nodes: Vec<Node>,
}

#[derive(Debug, Default)]
struct Node {
    /// Sorted by byte for binary search.
    children: Vec<(u8, u32)>,
    route: Option<usize>,
}

impl PrefixTrie {
    fn insert(&mut self, prefix: &[u8], route: usize) {
        if self.nodes.is_empty() {
            self.nodes.push(Node::default());
        }
        let mut at = 0usize;
        for &b in prefix {
            let next = match self.nodes[at].children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => self.nodes[at].children[i].1 as usize,
                Err(i) => {
                    let id = self.nodes.len();
                    self.nodes.push(Node::default());
                    self.nodes[at].children.insert(i, (b, id as u32));
                    id
                }
            };
            at = next;
        }
        // Validation rejects duplicate (host, prefix) pairs; the first definition wins regardless.
        self.nodes[at].route.get_or_insert(route);
    }

    fn longest(&self, path: &[u8]) -> Option<usize> {
        let mut node = self.nodes.first()?;
        let mut best = node.route;
        for &b in path {
            match node.children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => node = &self.nodes[node.children[i].1 as usize],
                Err(_) => break,
            }
            if node.route.is_some() {
                best = node.route;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(h: &str) -> HostPattern {
        HostPattern::Exact(h.into())
    }

    #[test]
    fn host_then_longest_prefix() {
        let mut r = Router::default();
        r.insert(&[exact("bot.example.com")], "/", 0);
        r.insert(&[exact("bot.example.com")], "/api", 1);
        r.insert(&[HostPattern::Wildcard(".example.com".into())], "/", 2);
        r.insert(&[], "/", 3);
        r.insert(&[], "/hooks/", 4);
        assert_eq!(r.lookup(Some("BOT.example.com:8080"), "/api/x"), Some(1));
        assert_eq!(r.lookup(Some("bot.example.com"), "/ap"), Some(0));
        assert_eq!(r.lookup(Some("a.b.example.com"), "/"), Some(2));
        assert_eq!(r.lookup(Some("example.com"), "/"), Some(3));
        assert_eq!(r.lookup(None, "/hooks/gh"), Some(4));
        assert_eq!(r.lookup(Some("[::1]:80"), "/hooks"), Some(3));
    }

    #[test]
    fn group_without_match_falls_through() {
        let mut r = Router::default();
        r.insert(&[exact("a.com")], "/only", 0);
        r.insert(&[], "/", 1);
        assert_eq!(r.lookup(Some("a.com"), "/other"), Some(1));
        let mut r = Router::default();
        r.insert(&[exact("a.com")], "/only", 0);
        assert_eq!(r.lookup(Some("a.com"), "/other"), None);
    }
}
