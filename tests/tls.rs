//! HTTPS termination and upstream TLS, over real handshakes on loopback. Certificates are made by
//! the test with `rcgen` (a throwaway CA signing ECDSA and Ed25519 leaves); no key is committed.
mod support;

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    /// A leaf for `names` with a fresh key of `alg`: (cert PEM, key PEM, cert DER).
    fn leaf(
        &self,
        names: &[&str],
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> (String, String, CertificateDer<'static>) {
        let key = KeyPair::generate_for(alg).unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

async fn handshake(
    addr: std::net::SocketAddr,
    sni: &str,
    roots: &rustls::RootCertStore,
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

fn served_cert(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0].clone()
}

fn write_pair(dir: &Path, name: &str, pair: &(String, String, CertificateDer<'static>)) {
    write_atomic(&dir.join(format!("{name}.pem")), &pair.0);
    write_atomic(&dir.join(format!("{name}.key")), &pair.1);
}

fn tls_section() -> &'static str {
    "\n[server.tls]\nlisten = \"127.0.0.1:0\"\ncerts = [{ cert = \"a.pem\", key = \"a.key\" }, { cert = \"w.pem\", key = \"w.key\" }]\n"
}

/// GET `path` over an established TLS stream, with h2 or HTTP/1.1 as ALPN chose.
async fn get_over(s: TlsStream<TcpStream>, host: &str, path: &str) -> (u16, String) {
    let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
    let req = http::Request::builder()
        .uri(format!("https://{host}{path}"))
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = if h2 {
        let (mut tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut req = req;
        req.headers_mut().remove("host");
        tx.send_request(req).await.unwrap()
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = req;
        *req.uri_mut() = path.parse().unwrap();
        tx.send_request(req).await.unwrap()
    };
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn start_tls_gateway(
    ca: &Ca,
) -> (
    Gw,
    (String, String, CertificateDer<'static>),
    (String, String, CertificateDer<'static>),
) {
    let blue = spawn_upstream("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let a = ca.leaf(&["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let w = ca.leaf(&["*.wild.test"], &rcgen::PKCS_ED25519);
    write_pair(dir.path(), "a", &a);
    write_pair(dir.path(), "w", &w);
    let cfg = config("blue", &[("blue", blue.addr)], "") + tls_section();
    (Gw::start_in(dir, &cfg).await, a, w)
}

fn tls_addr(gw: &Gw) -> std::net::SocketAddr {
    gw.gateway.as_ref().unwrap().tls_addr.expect("TLS listener")
}

#[tokio::test]
async fn sni_picks_the_certificate_by_its_own_names_and_alpn_negotiates_h2() {
    let ca = Ca::new();
    let (gw, a, w) = start_tls_gateway(&ca).await;
    let addr = tls_addr(&gw);
    let roots = ca.roots();

    let s = handshake(addr, "a.test", &roots, &[b"h2", b"http/1.1"]).await;
    assert_eq!(served_cert(&s), a.2, "exact name gets its own certificate");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(get_over(s, "a.test", "/").await, (200, "blue".into()));

    let s = handshake(addr, "bot.wild.test", &roots, &[b"h2", b"http/1.1"]).await;
    assert_eq!(
        served_cert(&s),
        w.2,
        "wildcard name gets the wildcard certificate"
    );
    assert_eq!(get_over(s, "bot.wild.test", "/").await.0, 200);

    // HTTP/1.1 by ALPN, and the upstream learns the request came over HTTPS.
    let s = handshake(addr, "a.test", &roots, &[b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, body) = get_over(s, "a.test", "/headers").await;
    assert_eq!(status, 200);
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["x-forwarded-proto"], "https");
    gw.stop().await;
}

#[tokio::test]
async fn replaced_certificate_is_served_and_a_broken_one_is_refused() {
    let ca = Ca::new();
    let (gw, a, _w) = start_tls_gateway(&ca).await;
    let addr = tls_addr(&gw);
    let roots = ca.roots();
    let resolver = gw.gateway.as_ref().unwrap().tls.clone().unwrap();

    // A renewed certificate (new key) replaces the old one for new connections.
    let renewed = ca.leaf(&["a.test"], &rcgen::PKCS_ECDSA_P384_SHA384);
    write_pair(gw.dir.path(), "a", &renewed);
    wait_until(
        "renewed certificate served",
        std::time::Duration::from_secs(10),
        || async { served_cert(&handshake(addr, "a.test", &roots, &[b"h2"]).await) == renewed.2 },
    )
    .await;
    assert_ne!(renewed.2, a.2);

    // A broken replacement (a certificate whose key is not the one on disk) is refused whole and
    // the renewed certificate keeps serving.
    let other = ca.leaf(&["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    write_atomic(&gw.dir.path().join("a.pem"), &other.0);
    wait_until(
        "broken pair rejected",
        std::time::Duration::from_secs(10),
        || {
            let r = resolver.clone();
            async move { r.last_error().is_some() }
        },
    )
    .await;
    let err = resolver.last_error().unwrap();
    assert!(err.contains("a.pem") && err.contains("a.key"), "{err}");
    let s = handshake(addr, "a.test", &roots, &[b"h2"]).await;
    assert_eq!(served_cert(&s), renewed.2);
    assert_eq!(get_over(s, "a.test", "/").await.0, 200, "still serving");

    // Garbage instead of a key: refused too, still serving.
    write_atomic(&gw.dir.path().join("a.key"), "not a key\n");
    wait_until(
        "garbage key rejected",
        std::time::Duration::from_secs(10),
        || {
            let r = resolver.clone();
            async move { r.last_error().is_some_and(|e| e.contains("private key")) }
        },
    )
    .await;
    assert_eq!(
        served_cert(&handshake(addr, "a.test", &roots, &[b"h2"]).await),
        renewed.2
    );
    gw.stop().await;
}

#[tokio::test]
async fn bad_certificates_fail_start_with_the_file_named() {
    let blue = spawn_upstream("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let a = ca.leaf(&["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let b = ca.leaf(&["a.test"], &rcgen::PKCS_ED25519);
    write_atomic(&dir.path().join("a.pem"), &a.0);
    write_atomic(&dir.path().join("a.key"), &b.1); // mismatched
    let cfg = config("blue", &[("blue", blue.addr)], "")
        + "\n[server.tls]\nlisten = \"127.0.0.1:0\"\ncerts = [{ cert = \"a.pem\", key = \"a.key\" }]\n";
    let file = dir.path().join("flipgate.toml");
    write_atomic(&file, &cfg);
    let err = match flipgate::Gateway::start(&file).await {
        Ok(_) => panic!("must not start with a mismatched pair"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("a.pem") && err.contains("do not form a usable pair"),
        "{err}"
    );
}

/// A TLS upstream on loopback with a certificate for `up.test`, ALPN h2 + http/1.1, answering
/// "secure <version>".
async fn spawn_tls_upstream(ca: &Ca) -> std::net::SocketAddr {
    let leaf = ca.leaf(&["up.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let certs = vec![leaf.2.clone()];
    let key = rustls::pki_types::PrivateKeyDer::try_from(
        rustls::pki_types::pem::PemObject::from_pem_slice(leaf.1.as_bytes())
            .map(|k: rustls::pki_types::PrivatePkcs8KeyDer| k.secret_pkcs8_der().to_vec())
            .unwrap(),
    )
    .unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = format!("secure {:?}", req.version());
                        Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
                            Bytes::from(body),
                        )))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_tls_with_configured_ca_and_sni_over_http1_and_h2() {
    let ca = Ca::new();
    let up = spawn_tls_upstream(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    write_atomic(&dir.path().join("ca.pem"), &ca.cert.pem());
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nupstream_timeout = \"5s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"state\"\n\
         [[routes]]\nname = \"h1\"\npath_prefix = \"/one\"\nlive = \"secure\"\n\
         [routes.targets]\nsecure = {{ instances = [\"{up}\"], tls = true, sni = \"up.test\", ca = \"ca.pem\" }}\n\
         [[routes]]\nname = \"h2\"\npath_prefix = \"/two\"\nlive = \"secure\"\n\
         [routes.targets]\nsecure = {{ instances = [\"{up}\"], tls = true, http2 = true, sni = \"up.test\", ca = \"ca.pem\" }}\n\
         [[routes]]\nname = \"wrongname\"\npath_prefix = \"/three\"\nlive = \"secure\"\n\
         [routes.targets]\nsecure = {{ instances = [\"{up}\"], tls = true, sni = \"other.test\", ca = \"ca.pem\" }}\n"
    );
    let gw = Gw::start_in(dir, &cfg).await;
    let c = client();
    let r = get(&c, &gw.url("/one"), &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "secure HTTP/1.1"));
    let r = get(&c, &gw.url("/two"), &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "secure HTTP/2.0"));
    // A certificate that does not name the SNI we send is not trusted: 502, not a silent pass.
    let r = get(&c, &gw.url("/three"), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.text(), "flipgate: could not connect to the upstream\n");
    gw.stop().await;
}

/// Issue 17 item 6: an upstream certificate flipgate does not trust is a configuration problem,
/// logged with its cause (not only a 502 that says "refused").
#[tokio::test]
async fn an_untrusted_upstream_certificate_is_logged_with_its_cause() {
    let ca = Ca::new();
    let up = spawn_tls_upstream(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    write_atomic(&dir.path().join("ca.pem"), &ca.cert.pem());
    let file = dir.path().join("flipgate.toml");
    write_atomic(
        &file,
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"state\"\n\
             [[routes]]\nname = \"bot\"\nlive = \"secure\"\n\
             [routes.targets]\nsecure = {{ instances = [\"{up}\"], tls = true, sni = \"other.test\", ca = \"ca.pem\" }}\n"
        ),
    );
    let fg = support::proc::Proc::start(&file);
    let r = get(&client(), &fg.url("/"), &[]).await;
    assert_eq!(r.status, 502);
    wait_until(
        "the TLS failure logged",
        std::time::Duration::from_secs(10),
        || async {
            fg.logged("upstream TLS handshake failed") && fg.logged("invalid peer certificate")
        },
    )
    .await;
}

#[test]
fn upstream_tls_options_are_validated_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    std::fs::write(dir.path().join("empty.pem"), "no certificates here\n").unwrap();
    let head = "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\n";
    let cases = [
        (
            "blue = { instances = [\"127.0.0.1:1\"], sni = \"x.test\" }\n",
            "5:8: routes[bot].targets.blue: `sni` and `ca` apply to TLS upstreams only; add `tls = true`",
        ),
        (
            "blue = { instances = [\"127.0.0.1:1\"], tls = true, sni = \"bad name!\" }\n",
            "5:8: routes[bot].targets.blue: sni `bad name!` is not a valid DNS name or IP address",
        ),
        (
            "blue = { instances = [\"127.0.0.1:1\"], tls = true, ca = \"missing.pem\" }\n",
            "5:8: routes[bot].targets.blue: ca: cannot read CA file",
        ),
        (
            "blue = { instances = [\"127.0.0.1:1\"], tls = true, ca = \"empty.pem\" }\n",
            "holds no usable PEM certificate",
        ),
    ];
    for (target, want) in cases {
        let err = flipgate::config::parse(&file, &format!("{head}{target}"))
            .expect_err(target)
            .to_string();
        assert!(err.contains(want), "{target}: got {err}");
    }
}

// ---------------------------------------------------------------- HTTPS on the HTTP/1.1 engine
//
// HTTPS clients whose ALPN chose `http/1.1` (or that offer no ALPN) are served by the HTTP/1.1
// engine, as plain ones; `h2` stays on hyper. These run on whichever engine the process selects
// (CI runs this suite again with `FLIPGATE_HTTP1=hyper`); where the engines differ on the wire
// the test says which answer it expects from which.

/// A gateway in front of `up` with the TLS listener (certificates for `a.test` and `*.wild.test`)
/// and `server` added to `[server]`.
async fn tls_gateway_for(ca: &Ca, up: std::net::SocketAddr, server: &str) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    write_pair(
        dir.path(),
        "a",
        &ca.leaf(&["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256),
    );
    write_pair(
        dir.path(),
        "w",
        &ca.leaf(&["*.wild.test"], &rcgen::PKCS_ED25519),
    );
    let cfg = with_server(&config("blue", &[("blue", up)], ""), server) + tls_section();
    Gw::start_in(dir, &cfg).await
}

/// Every read below is bounded by this, so a broken case fails instead of hanging.
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

/// One HTTP/1.1 response read off a raw stream: the head as sent (names in their case) and the
/// body (`Content-Length` or chunked; chunked is returned de-chunked).
struct RawResponse {
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    fn status(&self) -> u16 {
        self.head[9..12].parse().unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one response from `s`, keeping bytes past it in `buf` (pipelined answers).
async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> RawResponse {
    use tokio::io::AsyncReadExt;
    async fn more<S: tokio::io::AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
            .await
            .expect("response within the deadline")
            .expect("read");
        assert!(
            n > 0,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        more(s, buf).await;
    };
    let head = String::from_utf8(buf.drain(..end).collect()).unwrap();
    let mut r = RawResponse {
        head,
        body: Vec::new(),
    };
    if r.header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                more(s, buf).await;
            };
            let size_line = String::from_utf8(buf.drain(..line_end + 2).collect()).unwrap();
            let size =
                usize::from_str_radix(size_line.trim().split(';').next().unwrap(), 16).unwrap();
            while buf.len() < size + 2 {
                more(s, buf).await;
            }
            r.body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break;
            }
        }
    } else {
        let n: usize = r.header("content-length").map_or(0, |v| v.parse().unwrap());
        while buf.len() < n {
            more(s, buf).await;
        }
        r.body = buf.drain(..n).collect();
    }
    r
}

/// A raw HTTP/1.1 upstream answering every request (read up to the end of its head; the tests
/// send bodyless requests to it) with a header whose name is in mixed case: the engine relays
/// heads verbatim, hyper's path re-encodes them in lowercase. So the case a client sees says
/// which engine served it.
async fn spawn_case_probe() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).into_owned();
                        buf.drain(..i + 4);
                        let path = head.split(' ').nth(1).unwrap_or("").to_string();
                        let proto = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("x-forwarded-proto")
                                    .then(|| v.trim().to_string())
                            })
                            .unwrap_or_default();
                        let body = format!("{path} {proto}");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nX-Case-Probe: Kept\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// The header name the client sees for `X-Case-Probe`: verbatim from the engine, lowercase from
/// hyper.
fn probe_name() -> &'static str {
    if flipgate::serve::h1::enabled() {
        "X-Case-Probe"
    } else {
        "x-case-probe"
    }
}

#[tokio::test]
async fn https_http11_keep_alive_and_pipelining_are_served_by_the_engine() {
    use tokio::io::AsyncWriteExt;
    let ca = Ca::new();
    let gw = tls_gateway_for(&ca, spawn_case_probe().await, "").await;
    let addr = tls_addr(&gw);
    let roots = ca.roots();
    // ALPN http/1.1, and no ALPN at all (HTTP/1.1 then): both the engine's.
    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let mut s = handshake(addr, "a.test", &roots, alpn).await;
        let mut buf = Vec::new();
        // One at a time on the kept-alive connection...
        for i in 0..3 {
            let req = format!("GET /one/{i} HTTP/1.1\r\nHost: a.test\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let r = read_response(&mut s, &mut buf).await;
            assert_eq!(r.status(), 200, "{}", r.head);
            assert!(
                r.head.contains(&format!("\r\n{}: Kept\r\n", probe_name())),
                "{alpn:?}: {}",
                r.head
            );
            assert_eq!(r.body, format!("/one/{i} https").as_bytes());
        }
        // ...then three pipelined in one write, answered in order.
        let reqs: String = (0..3)
            .map(|i| format!("GET /two/{i} HTTP/1.1\r\nHost: a.test\r\n\r\n"))
            .collect();
        s.write_all(reqs.as_bytes()).await.unwrap();
        for i in 0..3 {
            let r = read_response(&mut s, &mut buf).await;
            assert_eq!(r.status(), 200, "{}", r.head);
            assert!(
                r.head.contains(&format!("\r\n{}: Kept\r\n", probe_name())),
                "{}",
                r.head
            );
            assert_eq!(r.body, format!("/two/{i} https").as_bytes());
        }
        assert!(buf.is_empty());
    }
    // ALPN h2 stays on hyper (HTTP/2), lowercase names as HTTP/2 requires.
    let s = handshake(addr, "a.test", &roots, &[b"h2", b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        get_over(s, "a.test", "/h2").await,
        (200, "/h2 https".into())
    );
    gw.stop().await;
}

#[tokio::test]
async fn https_http11_bodies_and_forwarding_headers() {
    use tokio::io::AsyncWriteExt;
    let ca = Ca::new();
    let blue = spawn_upstream("blue").await;
    let gw = tls_gateway_for(&ca, blue.addr, "").await;
    let mut s = handshake(tls_addr(&gw), "a.test", &ca.roots(), &[b"http/1.1"]).await;
    let mut buf = Vec::new();
    // A POST with a Content-Length body (the engine relays it).
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 11\r\n\r\nhello there")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(
        (r.status(), r.body.as_slice()),
        (200, &b"hello there"[..]),
        "{}",
        r.head
    );
    // A POST with a chunked body (the engine hands the connection to hyper, mid-connection:
    // the decrypted bytes it read are put back in front of the TLS stream).
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nchunk\r\n6\r\ned bod\r\n1\r\ny\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(
        (r.status(), r.body.as_slice()),
        (200, &b"chunked body"[..]),
        "{}",
        r.head
    );
    // The same connection still serves, and the upstream learns the request came over HTTPS.
    s.write_all(b"GET /headers HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-Proto: http\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(r.status(), 200, "{}", r.head);
    let h: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(h["x-forwarded-proto"], "https", "{h}");
    assert_eq!(h["x-forwarded-host"], "a.test", "{h}");
    assert_eq!(blue.hits(), 3);
    gw.stop().await;
}

/// A WebSocket echo upstream answering every text message with `echo:message`.
async fn spawn_ws_echo() -> std::net::SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                        let reply =
                            tokio_tungstenite::tungstenite::Message::text(format!("echo:{t}"));
                        if ws.send(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_over_https_http11() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ca = Ca::new();
    let gw = tls_gateway_for(&ca, spawn_ws_echo().await, "").await;
    let s = handshake(tls_addr(&gw), "a.test", &ca.roots(), &[b"http/1.1"]).await;
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://a.test/chat", s)
        .await
        .expect("WebSocket handshake over TLS through the proxy");
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        match tokio::time::timeout(DEADLINE, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), format!("echo:m{i}")),
            other => panic!("no echo: {other:?}"),
        }
    }
    ws.close(None).await.unwrap();
    gw.stop().await;
}

#[tokio::test]
async fn https_client_stalled_mid_head_is_cut_at_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = Ca::new();
    let blue = spawn_upstream("blue").await;
    let gw = tls_gateway_for(&ca, blue.addr, "header_read_timeout = \"1s\"").await;
    let roots = ca.roots();
    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let mut s = handshake(tls_addr(&gw), "a.test", &roots, alpn).await;
        // Half a head, then nothing: the server closes the connection without an answer.
        s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Slow: ")
            .await
            .unwrap();
        let mut got = Vec::new();
        let end = tokio::time::timeout(DEADLINE, s.read_to_end(&mut got))
            .await
            .expect("the server closes a stalled client");
        // A close with or without TLS close_notify; never a response.
        let _ = end;
        assert!(
            !got.starts_with(b"HTTP/1.1 200"),
            "{alpn:?}: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert_eq!(blue.hits(), 0);
    gw.stop().await;
}
