//! HTTPS termination: certificates chosen by SNI, hot-reloaded through validate-then-swap.
//!
//! Invariants: the handshake reads the certificate set through one `ArcSwap` load; a new set is
//! published only when *every* configured pair loaded: each chain parses, its key parses (PKCS#8,
//! PKCS#1 or SEC1 PEM: RSA, ECDSA P-256/P-384, Ed25519) and matches the leaf's public key, and the
//! leaf names at least one DNS name. Otherwise the error is logged, counted in the reload status,
//! and the previous certificates keep serving. SNI picks the pair whose leaf certificate names the
//! host (exact first, then a `*.` wildcard one label deep, as RFC 6125 allows); a client without
//! SNI or with an unknown name gets the first configured pair, as nginx's default server does.
//!
//! Crypto provider: `ring`. It is maintained by the rustls project, builds with only a C compiler
//! (aws-lc-rs needs cmake and, for some targets, Go/NASM), is small, and its suites are the modern
//! set we want: TLS 1.3 AES-GCM/ChaCha20-Poly1305, and for TLS 1.2 only ECDHE with AEAD ciphers.
//! Protocol versions are pinned to TLS 1.2 and 1.3; ALPN offers `h2` then `http/1.1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::{mpsc, watch};

use crate::config::CertPair;

/// Why a certificate set was refused; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: no PEM certificate found")]
    NoCert(PathBuf),
    #[error("{0}: no usable PEM private key found (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(PathBuf),
    #[error("{0}: certificate is not valid X.509: {1}")]
    BadCert(PathBuf, String),
    #[error("{0}: certificate names no DNS name (subjectAltName)")]
    NoNames(PathBuf),
    #[error("{cert} and {key} do not form a usable pair: {reason}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("no certificates configured")]
    Empty,
}

/// One loaded pair and the names its leaf certificate covers.
#[derive(Debug)]
struct Entry {
    /// Lower-case exact names.
    exact: Vec<String>,
    /// Wildcard suffixes including the dot: `*.example.com` -> `.example.com`.
    wildcard: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// A complete, validated certificate set.
#[derive(Debug)]
pub struct CertSet {
    entries: Vec<Entry>,
    /// Hash of every file's bytes: an unchanged set is not reloaded.
    hash: u64,
}

impl CertSet {
    /// Loads and checks every pair; all or nothing.
    pub fn load(pairs: &[CertPair]) -> Result<CertSet, TlsError> {
        if pairs.is_empty() {
            return Err(TlsError::Empty);
        }
        let provider = crate::upstream::crypto_provider();
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut entries = Vec::with_capacity(pairs.len());
        for p in pairs {
            let cert_pem = std::fs::read(&p.cert).map_err(|e| TlsError::Read(p.cert.clone(), e))?;
            let key_pem = std::fs::read(&p.key).map_err(|e| TlsError::Read(p.key.clone(), e))?;
            hasher.update(&cert_pem);
            hasher.update(&key_pem);
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
                .collect::<Result<_, _>>()
                .map_err(|e| TlsError::BadCert(p.cert.clone(), e.to_string()))?;
            if chain.is_empty() {
                return Err(TlsError::NoCert(p.cert.clone()));
            }
            let key = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|_| TlsError::NoKey(p.key.clone()))?;
            let (exact, wildcard) = names(&chain[0]).map_err(|e| match e {
                None => TlsError::NoNames(p.cert.clone()),
                Some(msg) => TlsError::BadCert(p.cert.clone(), msg),
            })?;
            let key =
                CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::Pair {
                    cert: p.cert.clone(),
                    key: p.key.clone(),
                    reason: e.to_string(),
                })?;
            entries.push(Entry {
                exact,
                wildcard,
                key: Arc::new(key),
            });
        }
        Ok(CertSet {
            entries,
            hash: hasher.digest(),
        })
    }

    /// The pair for an SNI name (already lower-case, as rustls hands it over).
    fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        if let Some(name) = sni {
            if let Some(e) = self
                .entries
                .iter()
                .find(|e| e.exact.iter().any(|n| n == name))
            {
                return &e.key;
            }
            if let Some(dot) = name.find('.') {
                let suffix = &name[dot..];
                if let Some(e) = self
                    .entries
                    .iter()
                    .find(|e| e.wildcard.iter().any(|w| w == suffix))
                {
                    return &e.key;
                }
            }
        }
        &self.entries[0].key
    }
}

/// DNS names of a leaf certificate, split into exact and wildcard. `Err(None)`: it has none.
fn names(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, Vec<String>), Option<String>> {
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| Some(format!("{e:?}")))?;
    let (mut exact, mut wildcard) = (Vec::new(), Vec::new());
    for n in cert.valid_dns_names() {
        let n = n.to_ascii_lowercase();
        match n.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') => wildcard.push(suffix.to_string()),
            _ => exact.push(n),
        }
    }
    if exact.is_empty() && wildcard.is_empty() {
        return Err(None);
    }
    Ok((exact, wildcard))
}

/// The rustls certificate resolver: the live `CertSet`, swapped whole on reload.
#[derive(Debug)]
pub struct Resolver {
    set: ArcSwap<CertSet>,
    /// Why the last reload was refused (cleared by the next good one), for tests and operators.
    last_error: std::sync::Mutex<Option<String>>,
    /// Certificate sets published since start (the first one is 1).
    generation: std::sync::atomic::AtomicU64,
}

impl Resolver {
    /// A resolver serving `set`.
    pub fn new(set: CertSet) -> Arc<Resolver> {
        Arc::new(Resolver {
            set: ArcSwap::from_pointee(set),
            last_error: std::sync::Mutex::new(None),
            generation: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// Why the last reload attempt was refused, if it was (the old certificates still serve).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().map(|e| e.clone()).unwrap_or(None)
    }

    /// How many certificate sets have been published (1 after start).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Validates the pairs and, only if all are good and something changed, swaps them in.
    /// Returns whether a new set was published.
    pub fn reload(&self, pairs: &[CertPair]) -> Result<bool, TlsError> {
        let set = match CertSet::load(pairs) {
            Ok(set) => set,
            Err(e) => {
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(e.to_string());
                }
                return Err(e);
            }
        };
        if let Ok(mut last) = self.last_error.lock() {
            *last = None;
        }
        let old = self.set.load();
        if set.hash == old.hash && set.entries.len() == old.entries.len() {
            return Ok(false);
        }
        self.set.store(Arc::new(set));
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(true)
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.set.load().pick(hello.server_name()).clone())
    }
}

/// The server TLS config: TLS 1.2 and 1.3 (ring's default, modern suites), ALPN h2 + http/1.1.
pub fn server_config(resolver: Arc<Resolver>) -> Arc<rustls::ServerConfig> {
    let mut config =
        rustls::ServerConfig::builder_with_provider(crate::upstream::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Quiet time after the last file event before reloading certificates.
pub const DEBOUNCE: Duration = Duration::from_millis(150);
/// Fallback poll for missed events (and for cert paths changed by a route-file reload).
pub const POLL: Duration = Duration::from_secs(5);

/// Watches the certificate files' directories and reloads on change, until shutdown. The pairs
/// are read from `current()` each time, so a route-file reload that changes `server.tls.certs`
/// takes effect at the next event or poll.
pub async fn watch_certs(
    resolver: Arc<Resolver>,
    current: impl Fn() -> Vec<CertPair> + Send + 'static,
    mut shutdown: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut dirs: Vec<PathBuf> = current()
        .iter()
        .flat_map(|p| [dir_of(&p.cert), dir_of(&p.key)])
        .collect();
    dirs.sort();
    dirs.dedup();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Reads are not changes (reading the files must not wake this watcher or another).
        if res.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            let _ = tx.send(());
        }
    })
    .map(|mut w| {
        for d in &dirs {
            if let Err(e) = w.watch(d, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %d.display(), error = %e, "cannot watch certificate directory; relying on polling");
            }
        }
        w
    });
    let _watcher = watcher
        .map_err(|e| tracing::warn!(error = %e, "cannot watch certificates; relying on polling"))
        .ok();
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            Some(()) = rx.recv() => loop {
                tokio::select! {
                    Some(()) = rx.recv() => continue,
                    _ = tokio::time::sleep(DEBOUNCE) => break,
                }
            },
            _ = poll.tick() => {}
        }
        let pairs = current();
        let r = resolver.clone();
        let outcome = tokio::task::spawn_blocking(move || r.reload(&pairs)).await;
        match outcome {
            Ok(Ok(true)) => {
                last_error = None;
                tracing::info!("TLS certificates reloaded");
            }
            Ok(Ok(false)) => last_error = None,
            Ok(Err(e)) => {
                let msg = e.to_string();
                if last_error.as_ref() != Some(&msg) {
                    tracing::error!(error = %msg, "TLS certificates rejected; the previous ones keep serving");
                }
                last_error = Some(msg);
            }
            Err(_) => {}
        }
    }
}

fn dir_of(p: &Path) -> PathBuf {
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, file: &str, names: &[&str]) -> (CertPair, CertificateDer<'static>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let p = CertPair {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}.key")),
        };
        std::fs::write(&p.cert, cert.pem()).unwrap();
        std::fs::write(&p.key, key.serialize_pem()).unwrap();
        (p, cert.der().clone())
    }

    #[test]
    fn sni_exact_then_wildcard_one_label_deep_else_first() {
        let dir = tempfile::tempdir().unwrap();
        let (a, a_der) = pair(dir.path(), "a", &["a.test", "www.a.test"]);
        let (w, w_der) = pair(dir.path(), "w", &["*.wild.test", "exact.other.test"]);
        let set = CertSet::load(&[a, w]).unwrap();
        let served = |sni: Option<&str>| set.pick(sni).cert[0].clone();
        assert_eq!(served(Some("a.test")), a_der);
        assert_eq!(served(Some("www.a.test")), a_der);
        assert_eq!(served(Some("bot.wild.test")), w_der);
        assert_eq!(served(Some("exact.other.test")), w_der);
        assert_eq!(
            served(Some("wild.test")),
            a_der,
            "a wildcard does not cover its parent"
        );
        assert_eq!(served(Some("a.b.wild.test")), a_der, "nor two labels deep");
        assert_eq!(
            served(Some("unknown.test")),
            a_der,
            "unknown names get the first pair"
        );
        assert_eq!(served(None), a_der, "no SNI gets the first pair");
    }

    #[test]
    fn a_set_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = pair(dir.path(), "a", &["a.test"]);
        let (b, _) = pair(dir.path(), "b", &["b.test"]);
        std::fs::copy(&a.key, &b.key).unwrap(); // b's certificate with a's key
        let err = CertSet::load(&[a.clone(), b]).unwrap_err().to_string();
        assert!(
            err.contains("b.pem") && err.contains("do not form a usable pair"),
            "{err}"
        );
        let resolver = Resolver::new(CertSet::load(std::slice::from_ref(&a)).unwrap());
        let missing = CertPair {
            cert: dir.path().join("nope.pem"),
            key: a.key.clone(),
        };
        assert!(resolver.reload(&[missing]).is_err());
        assert!(resolver.last_error().unwrap().contains("nope.pem"));
        assert_eq!(resolver.generation(), 1, "nothing was published");
        assert!(
            !resolver.reload(&[a]).unwrap(),
            "unchanged files are not republished"
        );
        assert_eq!(resolver.last_error(), None);
        assert!(matches!(CertSet::load(&[]), Err(TlsError::Empty)));
    }
}
