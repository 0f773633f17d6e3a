//! Upstream instances of a target and the shared HTTP clients that reach them.
//!
//! Invariants: the clients (and so their connection pools) live as long as the process, outside any
//! snapshot, so reloads and flips never tear down upstream connections. Instance choice is
//! round-robin over a relaxed atomic counter: no lock, no allocation. The request URI handed to a
//! client is rebuilt from pre-parsed parts, so no string formatting happens per request.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::Target;

/// The client type used for every upstream request.
pub type HttpClient = Client<HttpConnector, Incoming>;

/// The instances of one target.
#[derive(Debug)]
pub struct Upstream {
    pub instances: Box<[Authority]>,
    pub scheme: Scheme,
    pub http2: bool,
    next: AtomicUsize,
}

impl Upstream {
    pub fn new(target: &Target) -> Upstream {
        Upstream {
            instances: target.instances.clone().into_boxed_slice(),
            scheme: if target.tls {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            http2: target.http2,
            next: AtomicUsize::new(0),
        }
    }

    /// Whether this upstream can be reused unchanged for `target` (keeps the round-robin cursor).
    pub fn same_as(&self, target: &Target) -> bool {
        *self.instances == *target.instances
            && self.http2 == target.http2
            && (self.scheme == Scheme::HTTPS) == target.tls
    }

    /// Next instance, round-robin.
    #[inline]
    pub fn pick(&self) -> &Authority {
        let i = self.next.fetch_add(1, Relaxed);
        &self.instances[i % self.instances.len()]
    }

    /// The absolute URI for a request to `instance`.
    #[inline]
    pub fn uri(&self, instance: &Authority, path: Option<PathAndQuery>) -> http::Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(instance.clone());
        parts.path_and_query = Some(path.unwrap_or_else(|| PathAndQuery::from_static("/")));
        http::Uri::from_parts(parts).expect("scheme, authority and path are valid")
    }
}

/// The process-wide upstream clients, one per protocol.
#[derive(Clone)]
pub struct Clients {
    pub http1: HttpClient,
    pub http2: HttpClient,
}

impl Clients {
    /// Builds the clients with the server's timeouts.
    pub fn new(connect_timeout: Duration, pool_idle_timeout: Duration) -> Clients {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.enforce_http(true);
        let build = |h2: bool| {
            let mut b = Client::builder(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(pool_idle_timeout)
                .pool_max_idle_per_host(1024)
                .http2_only(h2);
            b.build(connector.clone())
        };
        Clients {
            http1: build(false),
            http2: build(true),
        }
    }

    /// The client for an upstream's protocol.
    #[inline]
    pub fn for_upstream(&self, u: &Upstream) -> &HttpClient {
        if u.http2 {
            &self.http2
        } else {
            &self.http1
        }
    }
}
