//! Upstream instances of a target and the HTTP clients that reach them.
//!
//! Invariants: the clients (and so their connection pools) live outside any snapshot: the plain
//! HTTP/1 and h2c clients for the whole process, a TLS target's client inside its `Upstream`, which
//! the snapshot builder carries over while the target's table is unchanged, so reloads and flips
//! never tear down upstream connections. Instance choice (`balance`: power of two choices or round
//! robin, weighted, skipping drained instances) reads relaxed atomics, and the per-instance
//! in-flight count is one atomic add and one sub per request or tunnel, always counted (balancing
//! and drain read it): no lock, no allocation. The
//! request URI handed to a client is rebuilt from pre-parsed parts, so no string formatting happens
//! per request. Every pool of idle upstream connections (these clients', the engine's, the pinned
//! slot's) follows the one idle rule of `idle`; these clients get it from `idle::Idle::configure`.
//!
//! TLS to upstreams is a small connector over `tokio-rustls` (ring provider, TLS 1.2/1.3), verified
//! against the Mozilla roots (`webpki-roots`) or the target's `ca` file; SNI is the target's `sni`
//! or the instance host. We keep our own ~100-line connector rather than `hyper-rustls` because we
//! need a per-target SNI override and CA, and it avoids a second copy of the rustls plumbing.

pub mod balance;
pub mod body;
pub mod expect;
pub mod health;
pub mod idle;
pub mod tee;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{HealthCheck, Target};
use crate::upstream::balance::{Lb, Load, Pick, Pool, Weights};
use crate::upstream::body::RequestBody;
use crate::upstream::health::InstanceHealth;

/// An upstream response head larger than this is an invalid response (502) on every path, as in
/// nginx and HAProxy.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// The client type used for every upstream request.
pub type HttpClient = Client<Connector, RequestBody>;

/// Why an upstream TLS client could not be configured (a bad or unreadable `ca` file).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read CA file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("CA file {0} holds no usable PEM certificate")]
    NoCerts(PathBuf),
}

/// TLS settings of a target, as given in its table.
#[derive(Debug, Clone, PartialEq)]
struct TlsTarget {
    sni: Option<String>,
    ca: Option<PathBuf>,
}

/// The instances of one target.
#[derive(Debug)]
pub struct Upstream {
    pub instances: Box<[Authority]>,
    pub scheme: Scheme,
    pub http2: bool,
    tls: Option<TlsTarget>,
    /// A TLS target's own client (its SNI and roots differ per target), built on first use.
    tls_client: OnceLock<HttpClient>,
    /// Per instance (same index as `instances`): requests and tunnels in flight, and the drain
    /// flag; shared by address with the target's previous upstream (`balance`).
    loads: Box<[Arc<Load>]>,
    /// Per-instance weights (`weight` in the table form of instances; 1 by default).
    weights: Weights,
    /// How instances are chosen (`lb`).
    pub lb: Lb,
    /// Health per instance (same index as `instances`): outlier ejection and active checks.
    pub health: Box<[InstanceHealth]>,
    /// Active health check settings, if any.
    pub health_check: Option<HealthCheck>,
    /// When the next active check round is due (monotonic ms); written by the health task only.
    pub next_check_ms: AtomicU64,
    next: AtomicUsize,
}

impl Upstream {
    /// The upstream of `target`; `previous` (the target's upstream in the snapshot before) lends
    /// the counters of the instances it shares by address (`balance::Load`).
    pub fn new(target: &Target, previous: Option<&Upstream>) -> Upstream {
        let loads = target
            .instances
            .iter()
            .map(|a| {
                previous
                    .and_then(|p| {
                        let i = p.instances.iter().position(|x| x == a)?;
                        Some(p.loads[i].clone())
                    })
                    .unwrap_or_default()
            })
            .collect();
        Upstream {
            instances: target.instances.clone().into_boxed_slice(),
            scheme: if target.tls {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            http2: target.http2,
            tls: target.tls.then(|| TlsTarget {
                sni: target.sni.clone(),
                ca: target.ca.clone(),
            }),
            tls_client: OnceLock::new(),
            loads,
            weights: Weights::new(&target.weights),
            lb: target.lb,
            health: target
                .instances
                .iter()
                .map(|_| InstanceHealth::default())
                .collect(),
            health_check: target.health_check.clone(),
            next_check_ms: AtomicU64::new(0),
            next: AtomicUsize::new(0),
        }
    }

    /// Whether this upstream can be reused unchanged for `target` (keeps the round-robin cursor
    /// and, for TLS targets, the connection pool).
    pub fn same_as(&self, target: &Target) -> bool {
        *self.instances == *target.instances
            && self.weights == Weights::new(&target.weights)
            && self.lb == target.lb
            && self.health_check == target.health_check
            && self.http2 == target.http2
            && (self.scheme == Scheme::HTTPS) == target.tls
            && (!target.tls
                || self
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.sni == target.sni && t.ca == target.ca))
    }

    /// Chooses an instance for a new request (`balance`): never a drained one, nor `avoid`.
    #[inline]
    pub fn pick(&self, now_ms: u64, avoid: Option<usize>) -> Pick {
        Pool {
            lb: self.lb,
            weights: &self.weights,
            loads: &self.loads,
            health: &self.health,
            cursor: &self.next,
        }
        .pick(now_ms, avoid)
    }

    /// Takes an in-flight slot on instance `i` (always counted: balancing and drain read it). The
    /// slot is released when the returned guard drops (with the response body or the tunnel).
    /// `Err(Busy)` when `limit` (`max_upstream_connections`, 0 = unlimited) is set and the
    /// instance already has that many in flight.
    #[inline]
    pub fn acquire(&self, i: usize, limit: usize) -> Result<InflightGuard, Busy> {
        let load = &self.loads[i];
        let n = load.enter();
        let guard = InflightGuard { load: load.clone() };
        if limit != 0 && n >= limit {
            return Err(Busy); // the guard drops here and gives the slot back
        }
        Ok(guard)
    }

    /// Requests and tunnels in flight to instance `i`.
    pub fn inflight(&self, i: usize) -> usize {
        self.loads[i].inflight()
    }

    /// Whether instance `i` is drained.
    pub fn drained(&self, i: usize) -> bool {
        self.loads[i].drained()
    }

    /// Sets instance `i`'s drain flag (the snapshot builder, from the runtime state).
    pub fn set_drained(&self, i: usize, drained: bool) -> bool {
        self.loads[i].set_drained(drained)
    }

    /// The counters of instance `i`, for a pooled connection to know when its instance is drained.
    pub fn load(&self, i: usize) -> &Arc<Load> {
        &self.loads[i]
    }

    /// The weight of instance `i`.
    pub fn weight(&self, i: usize) -> u64 {
        self.weights.of(i)
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

/// An instance is at its `max_upstream_connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// One request or tunnel in flight to an upstream instance; gives its slot back on drop.
pub struct InflightGuard {
    load: Arc<Load>,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.load.leave();
    }
}

/// The process-wide upstream clients: plain HTTP/1.1 and h2c; TLS clients are built per target.
#[derive(Clone)]
pub struct Clients {
    pub http1: HttpClient,
    pub http2: HttpClient,
    connect_timeout: Duration,
    /// The idle rule every client's pool is built with (`idle`).
    idle: idle::Idle,
}

impl Clients {
    /// Builds the clients with the server's timeouts. Their pools keep the idle rule of
    /// `pool_idle_timeout` for the process's life (a reload rebuilds no pool); the engine's pool
    /// and the pinned connections apply the value of the snapshot in force.
    pub fn new(connect_timeout: Duration, pool_idle_timeout: Duration) -> Clients {
        let plain = Connector::new(connect_timeout, None);
        let idle = idle::Idle::new(pool_idle_timeout);
        Clients {
            http1: build_client(plain.clone(), false, idle),
            http2: build_client(plain, true, idle),
            connect_timeout,
            idle,
        }
    }

    /// The client for an upstream's protocol. A TLS target's client is built once, on first use
    /// (a lock-free read afterwards); a CA that became unreadable since validation is logged and
    /// leaves the target without roots, so its requests fail as connect errors (502).
    #[inline]
    pub fn for_upstream<'a>(&'a self, u: &'a Upstream) -> &'a HttpClient {
        match &u.tls {
            None if u.http2 => &self.http2,
            None => &self.http1,
            Some(t) => u.tls_client.get_or_init(|| {
                let config = client_tls_config(t.ca.as_deref(), u.http2).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "upstream TLS disabled for this target");
                    empty_roots_config()
                });
                let connector = Connector::new(
                    self.connect_timeout,
                    Some(TlsParts {
                        connector: TlsConnector::from(Arc::new(config)),
                        sni: t.sni.clone(),
                    }),
                );
                build_client(connector, u.http2, self.idle)
            }),
        }
    }
}

fn build_client(connector: Connector, h2: bool, idle: idle::Idle) -> HttpClient {
    let mut b = Client::builder(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http1_max_buf_size(MAX_RESPONSE_HEAD)
        .http2_only(h2);
    idle.configure(&mut b);
    b.build(connector)
}

/// The rustls provider flipgate uses everywhere (see `tls` for why ring).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the PEM certificates of a CA file; errors name the file.
pub fn read_ca(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let bytes = std::fs::read(path).map_err(|e| TlsSetupError::Read(path.to_path_buf(), e))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsSetupError::NoCerts(path.to_path_buf()));
    }
    Ok(certs)
}

/// Client TLS config: TLS 1.2/1.3, the target's CA or the Mozilla roots, ALPN for the protocol.
pub fn client_tls_config(
    ca: Option<&std::path::Path>,
    http2: bool,
) -> Result<rustls::ClientConfig, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let (added, _) = roots.add_parsable_certificates(read_ca(path)?);
            if added == 0 {
                return Err(TlsSetupError::NoCerts(path.to_path_buf()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![if http2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(config)
}

fn empty_roots_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

#[derive(Clone)]
struct TlsParts {
    connector: TlsConnector,
    /// SNI override; `None` uses the instance host.
    sni: Option<String>,
}

/// Connects to an upstream instance: TCP (with the connect timeout), then TLS for `https` URIs.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: Option<TlsParts>,
    connect_timeout: Duration,
}

impl Connector {
    fn new(connect_timeout: Duration, tls: Option<TlsParts>) -> Connector {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.enforce_http(false);
        Connector {
            http,
            tls,
            connect_timeout,
        }
    }
}

/// Why connecting to an upstream failed (wrapped by the client as a connect error).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("tcp connect: {0}")]
    Tcp(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("TLS handshake timed out")]
    TlsTimeout,
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("invalid TLS server name `{0}`")]
    ServerName(String),
}

/// The TLS handshake failure somewhere in `e`'s causes (a certificate the upstream's CA does not
/// sign, a name mismatch, no shared protocol): an operator's problem to be told about, where a
/// refused or reset connection is the upstream's everyday failure.
pub fn tls_failure<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e std::io::Error> {
    let mut src = Some(e);
    while let Some(s) = src {
        if let Some(ConnectError::Tls(io)) = s.downcast_ref::<ConnectError>() {
            return Some(io);
        }
        src = s.source();
    }
    None
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = UpstreamStream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamStream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        self.http
            .poll_ready(cx)
            .map_err(|e| ConnectError::Tcp(Box::new(e)))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = if uri.scheme() == Some(&Scheme::HTTPS) {
            self.tls.clone()
        } else {
            None
        };
        let host = uri.host().unwrap_or_default().to_string();
        let timeout = self.connect_timeout;
        let tcp = self.http.call(uri);
        Box::pin(async move {
            let tcp = tcp.await.map_err(|e| ConnectError::Tcp(Box::new(e)))?;
            let Some(tls) = tls else {
                return Ok(UpstreamStream::plain(tcp));
            };
            let name = tls.sni.unwrap_or(host);
            let server_name = ServerName::try_from(name.trim_matches(['[', ']']).to_string())
                .map_err(|_| ConnectError::ServerName(name))?;
            let stream = tokio::time::timeout(
                timeout,
                tls.connector.connect(server_name, tcp.into_inner()),
            )
            .await
            .map_err(|_| ConnectError::TlsTimeout)?
            .map_err(ConnectError::Tls)?;
            Ok(UpstreamStream::tls(Box::new(TokioIo::new(stream))))
        })
    }
}

/// A connection to an upstream, plain or TLS.
///
/// An upstream may answer before it has read the whole request (a 401 or 413 to an upload) and
/// close; its kernel then resets the connection, and the next write fails while the answer is
/// still waiting to be read. hyper's client fails the whole exchange on that write error, so the
/// client would get 502 instead of the answer. So once a write fails because the peer is gone
/// (reset, broken pipe), this stream takes every further write as done and drops the bytes: hyper
/// goes on to read whatever the upstream sent before it closed, and relays it, or fails on the
/// read when there is nothing, as one closed under its request (`policy::resend`). Such a
/// connection ends with that exchange: the peer has reset it, so hyper's next read sees its end,
/// as for any connection an upstream closed.
pub struct UpstreamStream {
    io: Io,
    /// A write failed because the peer is gone; later writes are dropped.
    write_gone: bool,
}

enum Io {
    Plain(TokioIo<TcpStream>),
    /// A plain connection whose socket a pool also holds, to check it while idle (`pinned`).
    Shared(TokioIo<SharedTcp>),
    /// Boxed: a TLS session is ~1 KiB and plain connections should not pay for it.
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl UpstreamStream {
    /// A plain TCP connection.
    pub fn plain(tcp: TokioIo<TcpStream>) -> UpstreamStream {
        UpstreamStream {
            io: Io::Plain(tcp),
            write_gone: false,
        }
    }

    /// A plain TCP connection that a pool can look at while hyper owns it (`idle::silent`). The
    /// pool's handle is weak: the socket closes when hyper's connection drops it, as a plain one.
    pub fn shared(tcp: TcpStream) -> (UpstreamStream, Weak<TcpStream>) {
        let tcp = Arc::new(tcp);
        let weak = Arc::downgrade(&tcp);
        let stream = UpstreamStream {
            io: Io::Shared(TokioIo::new(SharedTcp(tcp))),
            write_gone: false,
        };
        (stream, weak)
    }

    fn tls(tls: Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>) -> UpstreamStream {
        UpstreamStream {
            io: Io::Tls(tls),
            write_gone: false,
        }
    }

    /// Applies the rule above to a write's outcome: a peer that is gone took `n` bytes.
    fn written<T>(&mut self, r: Poll<std::io::Result<T>>, n: T) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Ready(Err(e)) if peer_gone(&e) => {
                tracing::debug!(error = %e, "upstream stopped reading; reading its answer");
                self.write_gone = true;
                Poll::Ready(Ok(n))
            }
            r => r,
        }
    }
}

/// Whether a write failed because the peer closed or reset the connection (so it may have
/// answered already): the one test of both engines.
pub(crate) fn peer_gone(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    matches!(e.kind(), BrokenPipe | ConnectionReset | ConnectionAborted)
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        match &self.io {
            Io::Plain(s) => s.connected(),
            Io::Shared(_) => Connected::new(),
            Io::Tls(s) => {
                let (tcp, session) = s.inner().get_ref();
                let c = tcp.connected();
                if session.alpn_protocol() == Some(b"h2") {
                    c.negotiated_h2()
                } else {
                    c
                }
            }
        }
    }
}

impl hyper::rt::Read for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Shared(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.write_gone {
            return Poll::Ready(Ok(buf.len()));
        }
        let r = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Shared(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        };
        this.written(r, buf.len())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.write_gone {
            return Poll::Ready(Ok(()));
        }
        let r = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Shared(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        };
        this.written(r, ())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.write_gone {
            return Poll::Ready(Ok(()));
        }
        match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Shared(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let all = bufs.iter().map(|b| b.len()).sum();
        if this.write_gone {
            return Poll::Ready(Ok(all));
        }
        let r = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Shared(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        };
        this.written(r, all)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Shared(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// A TCP connection shared by hyper's connection task (which does all its I/O) and a pool that
/// only looks at its readiness while it is idle (`idle::silent`). The I/O is tokio's own
/// readiness-then-try sequence, as `TcpStream`'s `AsyncRead`/`AsyncWrite` do it.
pub struct SharedTcp(Arc<TcpStream>);

impl tokio::io::AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            std::task::ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read_buf(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r.map(drop)),
            }
        }
    }
}

impl tokio::io::AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write);
        Poll::Ready(r)
    }
}
