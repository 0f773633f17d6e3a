//! Traffic listeners: accept loops that hand connections (plain, or TLS-terminated) to the
//! HTTP/1.1 engine (`h1`) or to hyper, with the proxy as the service.
//!
//! Which engine: plain connections, and TLS ones whose ALPN chose `http/1.1` or nothing, start on
//! the engine (which hands what it does not serve to hyper); TLS with ALPN `h2` is hyper's. With
//! `FLIPGATE_HTTP1=hyper` every connection is hyper's. Either way a TLS connection's `ConnInfo`
//! says `https`, which sets `X-Forwarded-Proto: https`.
//!
//! Invariants: a listener is bound once, at start, and never rebuilt by a reload. Each connection is
//! watched by a `GracefulShutdown` (hyper's) or the shutdown signal (the engine's), so on shutdown the accept loop stops first (the socket is
//! closed, so a second process on the same port with `SO_REUSEPORT` gets every new connection),
//! then every connection is asked to finish (HTTP/1 `Connection: close` after the current
//! response, HTTP/2 GOAWAY) and gets up to the drain timeout, which upgraded tunnels (WebSockets)
//! share: they may run until that deadline, then are closed. Every connection task (the HTTP/1.1
//! engine's, hyper's, TLS handshakes) belongs to the listener's `JoinSet`, so at the deadline the
//! ones still open are aborted, closing their sockets, on every path. An accept error (e.g. out of file descriptors) is
//! logged and retried after a short pause; it never ends the loop. With `max_connections`, a
//! connection over the limit gets a bare `503` (plain) or is closed (TLS, before the handshake)
//! and the loop keeps serving the others. The TLS handshake is bounded by `header_read_timeout`.
//!
//! Idle connections: hyper's HTTP/1 header read timer also runs while a kept-alive connection waits
//! for its next request, so an idle HTTP/1 connection is closed after the smaller of
//! `idle_timeout` and `header_read_timeout` (which is also the slowloris bound). HTTP/2
//! connections are pinged every `idle_timeout` and closed when a ping goes unanswered within
//! `header_read_timeout`.

pub mod h1;
pub mod proxy;
pub mod shadow;
pub mod tls;
pub mod write_deadline;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::policy::error::{ClientErrorKind, LocalErrorKind, ProxyError};
use crate::serve::proxy::{ConnInfo, Proxy};
use crate::serve::write_deadline::WriteDeadline;

/// Connection-level settings from `[server]`; re-read from the live snapshot at each accept, so a
/// reload changes them for new connections (established ones keep theirs).
#[derive(Clone, Debug, PartialEq)]
pub struct ConnSettings {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub drain_timeout: Duration,
    pub idle_timeout: Duration,
    /// A write to the client that makes no progress this long ends the connection.
    pub body_idle_timeout: Duration,
    /// Concurrent downstream connections, all listeners together; 0 = unlimited.
    pub max_connections: usize,
}

impl ConnSettings {
    pub fn from_config(s: &crate::config::Server) -> ConnSettings {
        ConnSettings {
            header_read_timeout: s.header_read_timeout,
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
            drain_timeout: s.drain_timeout,
            idle_timeout: s.idle_timeout,
            body_idle_timeout: s.body_idle_timeout,
            max_connections: s.max_connections,
        }
    }
}

/// Builds the HTTP/1.1 + h2c connection builder.
pub fn builder(settings: &ConnSettings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // hyper's header timer also runs while a kept-alive connection waits for its next
        // request, so it is the HTTP/1 idle timeout as well.
        .header_read_timeout(settings.header_read_timeout.min(settings.idle_timeout))
        .max_buf_size(settings.max_header_bytes.max(8192))
        .max_headers(settings.max_headers)
        .keep_alive(true)
        // A client that shuts down its sending side after a complete request still gets its
        // answer (the HTTP/1.1 engine answers it too).
        .half_close(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(settings.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(settings.idle_timeout))
        .keep_alive_timeout(settings.header_read_timeout);
    b
}

/// Binds a TCP listener, optionally with `SO_REUSEPORT` so a new process can take over the port.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// After steering a reuse-port group away from a stopping listener, how long it keeps accepting
/// the connections whose handshakes were already under way.
pub const HANDOVER_GRACE: Duration = Duration::from_millis(100);

/// Prepares a zero-downtime handover on shutdown: when other processes listen on the same port
/// (`SO_REUSEPORT`), attaches a classic BPF program to the port's reuse-port group that sends
/// every new connection to the group's second socket, the next process, instead of hashing some
/// onto ours: connections queued on a listener when it closes are reset by the kernel (unless
/// `net.ipv4.tcp_migrate_req` is on), so none must arrive once we stop. Out of range (we are
/// alone), the kernel falls back to its hash, i.e. to us. Returns whether a grace period applies.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn reuse_port_handover(listener: &TcpListener) -> bool {
    use std::os::fd::AsRawFd;
    let sock = socket2::SockRef::from(listener);
    if !sock.reuse_port().unwrap_or(false) {
        return false;
    }
    let mut code = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 1,
    }];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: `prog` points to a valid one-instruction program that outlives the call; the kernel
    // copies it. The fd is a live listening socket borrowed from `listener`.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            std::ptr::from_ref(&prog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot steer the reuse-port group; closing the listener directly");
        return false;
    }
    true
}

#[cfg(not(target_os = "linux"))]
fn reuse_port_handover(_listener: &TcpListener) -> bool {
    false
}

/// One open downstream connection, counted (across every listener) until dropped.
struct ConnSlot {
    proxy: Arc<Proxy>,
    /// Open connections including this one, when it was taken.
    count: usize,
}

impl ConnSlot {
    fn take(proxy: &Arc<Proxy>) -> ConnSlot {
        ConnSlot {
            count: proxy.connections.fetch_add(1, Ordering::AcqRel) + 1,
            proxy: proxy.clone(),
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if self.proxy.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.proxy.closed.notify_waiters();
        }
    }
}

/// The hyper service for one downstream connection.
fn service(
    proxy: Arc<Proxy>,
    info: Arc<ConnInfo>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<crate::serve::proxy::ProxyBody>,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<
        Output = Result<http::Response<crate::serve::proxy::ProxyBody>, std::convert::Infallible>,
    > + Send,
> + Clone {
    service_fn(move |req| {
        let proxy = proxy.clone();
        let info = info.clone();
        async move { Ok::<_, std::convert::Infallible>(proxy.serve_until_cut(req, &info).await) }
    })
}

/// Serves a connection with hyper (HTTP/1.1 with upgrades, or h2c) until it closes; on shutdown
/// it is asked to finish (HTTP/1 `Connection: close` after the current response, HTTP/2 GOAWAY).
/// Used for connections the HTTP/1.1 engine hands over (`h1`).
pub async fn serve_with_hyper<I>(
    io: I,
    proxy: Arc<Proxy>,
    info: Arc<ConnInfo>,
    builder: &auto::Builder<TokioExecutor>,
    body_idle: Duration,
    mut stop: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Box::pin(WriteDeadline::new(io, body_idle)));
    let conn = builder.serve_connection_with_upgrades(io, service(proxy.clone(), info.clone()));
    let mut conn = std::pin::pin!(conn);
    if !*stop.borrow_and_update() {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    ended_with(&proxy, &info, &*e);
                }
                return;
            }
            _ = stop.changed() => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        ended_with(&proxy, &info, &*e);
    }
}

/// A connection hyper served ended with an error. A request head over the limits was answered
/// 431 by hyper's parser itself (on either engine: the HTTP/1.1 engine hands such heads over):
/// it is recorded like every answer flipgate gives (`Proxy::refused`).
fn ended_with(proxy: &Proxy, info: &ConnInfo, e: &(dyn std::error::Error + 'static)) {
    tracing::debug!(error = %e, "connection ended with an error");
    let mut src = Some(e);
    while let Some(err) = src {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            // `is_parse_too_large` also covers a request-target over hyper's bound, answered 414
            // (told apart only by its text).
            if h.is_parse_too_large() && !h.to_string().contains("URI too long") {
                let e = ProxyError::Client(ClientErrorKind::HeadTooLarge);
                proxy.refused(info.peer.ip(), e);
            }
            return;
        }
        src = err.source();
    }
}

/// The HTTP/1.1 engine's settings from `[server]`.
fn h1_settings(settings: &ConnSettings) -> crate::serve::h1::Settings {
    crate::serve::h1::Settings {
        header_timeout: settings.header_read_timeout,
        idle_timeout: settings.idle_timeout,
        max_head_bytes: settings.max_header_bytes.max(8192),
        max_headers: settings.max_headers,
        body_idle_timeout: settings.body_idle_timeout,
    }
}

/// Serves a connection (plain, or TLS after the handshake) with the HTTP/1.1 engine, then with
/// hyper if the engine hands it over.
async fn serve_h1<D: crate::serve::h1::downstream::Downstream>(
    stream: D,
    proxy: Arc<Proxy>,
    info: Arc<ConnInfo>,
    settings: crate::serve::h1::Settings,
    builder: &auto::Builder<TokioExecutor>,
    stop: watch::Receiver<bool>,
) {
    let served = crate::serve::h1::serve(stream, proxy.clone(), info.clone(), settings, stop);
    if let Some(h) = served.await {
        let body_idle = settings.body_idle_timeout;
        serve_with_hyper(h.io, proxy, info, builder, body_idle, h.stop).await;
    }
}

/// Answer for a connection over `max_connections`.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 35\r\nconnection: close\r\n\r\nflipgate: too many open connections\n";

/// Serves traffic until `shutdown` flips, then drains: HTTP/1.1 and h2c, or with `tls` HTTPS with
/// ALPN h2/http1.1.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    settings: ConnSettings,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut settings = settings;
    let mut conn_builder = Arc::new(builder(&settings));
    let graceful = GracefulShutdown::new();
    // Every connection's task, so the drain deadline can end the ones still open.
    let mut conns = tokio::task::JoinSet::new();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut stopping = false;
    let mut grace: Option<tokio::time::Instant> = None;
    loop {
        let (stream, peer) = if stopping {
            // Take what the kernel already queued for us before closing the socket: with
            // SO_REUSEPORT those connections would otherwise be reset, not moved to the new process.
            tokio::select! {
                biased;
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(_) => break,
                },
                _ = std::future::ready(()) => break,
            }
        } else {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.changed(), if grace.is_none() => {
                    // With SO_REUSEPORT, first steer new connections to the other listeners of
                    // the port, and keep accepting while handshakes already under way land here.
                    if reuse_port_handover(&listener) {
                        grace = Some(tokio::time::Instant::now() + HANDOVER_GRACE);
                    } else {
                        stopping = true;
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(grace.unwrap_or_else(tokio::time::Instant::now)), if grace.is_some() => {
                    stopping = true;
                    continue;
                }
            }
        };
        while conns.try_join_next().is_some() {}
        let now = ConnSettings::from_config(&proxy.snapshot.load().config.server);
        if now != settings {
            conn_builder = Arc::new(builder(&now));
            settings = now;
        }
        let permit = ConnSlot::take(&proxy);
        if settings.max_connections > 0 && permit.count > settings.max_connections {
            tracing::debug!(%peer, "connection limit reached; refusing");
            if acceptor.is_none() {
                let proxy = proxy.clone();
                conns.spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let mut stream = stream;
                    proxy.refused(peer.ip(), ProxyError::Local(LocalErrorKind::Busy));
                    let _ = stream.write_all(BUSY).await;
                    let _ = stream.shutdown().await;
                    drop(permit);
                });
            }
            continue;
        }
        let _ = stream.set_nodelay(true);
        let info = Arc::new(ConnInfo::new(peer, acceptor.is_some()));
        let builder = conn_builder.clone();
        if acceptor.is_none() && crate::serve::h1::enabled() {
            let h1 = h1_settings(&settings);
            let (proxy, stop) = (proxy.clone(), shutdown.clone());
            conns.spawn(async move {
                serve_h1(stream, proxy, info, h1, &builder, stop).await;
                drop(permit);
            });
            continue;
        }
        match &acceptor {
            None => {
                let svc = service(proxy.clone(), info.clone());
                let proxy = proxy.clone();
                let io = WriteDeadline::new(stream, settings.body_idle_timeout);
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(Box::pin(io)), svc)
                    .into_owned();
                let fut = graceful.watch(conn);
                conns.spawn(async move {
                    if let Err(e) = fut.await {
                        ended_with(&proxy, &info, &*e);
                    }
                    drop(permit);
                });
            }
            Some(acceptor) => {
                let accept = acceptor.accept(crate::serve::h1::downstream::Tcp::new(stream));
                let watcher = graceful.watcher();
                let handshake_timeout = settings.header_read_timeout;
                let body_idle = settings.body_idle_timeout;
                let h1 = crate::serve::h1::enabled().then(|| h1_settings(&settings));
                let (proxy, stop) = (proxy.clone(), shutdown.clone());
                conns.spawn(async move {
                    let tls = match tokio::time::timeout(handshake_timeout, accept).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    // HTTP/1.1 by ALPN, or no ALPN (HTTP/1.1 then): the engine's, as plain ones.
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    if let Some(h1) = h1.filter(|_| !h2) {
                        serve_h1(tls, proxy, info, h1, &builder, stop).await;
                        drop(permit);
                        return;
                    }
                    let io = Box::pin(WriteDeadline::new(tls, body_idle));
                    let conn = builder
                        .serve_connection_with_upgrades(
                            TokioIo::new(io),
                            service(proxy.clone(), info.clone()),
                        )
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        ended_with(&proxy, &info, &*e);
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    let drain_timeout = proxy.snapshot.load().config.server.drain_timeout;
    let deadline = crate::clock::deadline(tokio::time::Instant::now(), drain_timeout);
    drain(graceful, &proxy, drain_timeout).await;
    // At the deadline, a request still waiting for its upstream gets a 503 (hyper's path answers
    // it now, briefly awaited; the engine as its connection is closed), then every connection
    // still open, on every path, is closed.
    if !conns.is_empty() {
        proxy.cut.cut();
        let _ = tokio::time::timeout(CUT_GRACE, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
    proxy.tunnels.drain(deadline).await;
}

/// How long, past the drain deadline, hyper's connections get to write the 503 of a request cut
/// before its answer.
const CUT_GRACE: Duration = Duration::from_millis(250);

/// Waits for open connections to finish, at most `timeout`: those hyper serves (`graceful`) and
/// those the HTTP/1.1 engine serves (counted in `proxy.connections`; they close themselves once
/// idle after the shutdown signal).
pub async fn drain(graceful: GracefulShutdown, proxy: &Proxy, timeout: Duration) {
    let open = proxy.connections.load(Ordering::Acquire);
    if open > 0 {
        tracing::info!(connections = open, "draining connections");
    }
    let all_closed = async {
        graceful.shutdown().await;
        loop {
            let closed = proxy.closed.notified();
            let mut closed = std::pin::pin!(closed);
            closed.as_mut().enable();
            if proxy.connections.load(Ordering::Acquire) == 0 {
                return;
            }
            closed.await;
        }
    };
    if tokio::time::timeout(timeout, all_closed).await.is_err() {
        tracing::warn!(
            connections = proxy.connections.load(Ordering::Acquire),
            "drain timeout reached; closing remaining connections"
        );
    }
}
