//! The etcd state backend (`[state] backend = "etcd"`, cargo feature `etcd`): a fleet of replicas
//! shares each route's runtime state through one key per route, `{prefix}routes/{name}`.
//!
//! Invariants: the client runs on its own OS thread with its own single-threaded runtime, so the
//! control plane's blocking callers (`Backend::cas`, from the blocking pool) never wait on the
//! serving runtime, and a slow store never stalls the data path (which never touches it). Every
//! write is a transaction conditioned on the key's `mod_revision` as the writer last saw it (0:
//! absent): two replicas acting at once cannot interleave, a lost race answers with the key's
//! current value. The session connects, seeds an empty prefix once from the local state (each key
//! created only if absent, so replicas starting together seed it once), reads every key, then
//! watches the prefix from the revision it read; when the watch or a request fails it marks the
//! store down (`flipgate_state_backend_up` 0), backs off and starts over with a full read, so no
//! change made while it was away is missed. While down, changes are refused at once (`Cas::Down`)
//! and nothing is written; circuit trips wait in `pending` (one per route, the newest) and are
//! written, still conditioned on the revision they were judged on, once the store is back. Every
//! second the thread also publishes this replica's circuit window totals under
//! `{prefix}windows/{route}/{replica}`, bound to its lease, and sets the sum of the other live
//! replicas' (gathered on the same key revision) as each window's `fleet` part; while the store is
//! down that part is zero. The password is read once at start and never logged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::{mpsc, watch};

use super::shared::{Backend, Cas, StoreStatus};
use super::Persisted;
use crate::config::{Etcd as EtcdConfig, Secret};
use crate::control::circuit::window::Totals;
use crate::control::Control;

/// First wait before reconnecting; doubles up to `BACKOFF_MAX`.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The control plane's handle on the etcd thread.
pub struct Etcd {
    requests: mpsc::UnboundedSender<Request>,
    status: Arc<Mutex<StoreStatus>>,
    timeout: Duration,
    routes: String,
    /// True once the first connection attempt has finished (either way).
    settled: watch::Receiver<bool>,
}

enum Request {
    Cas {
        route: String,
        rev: i64,
        value: Vec<u8>,
        reply: std::sync::mpsc::SyncSender<Cas>,
    },
    Trip {
        route: String,
        rev: i64,
        value: Vec<u8>,
    },
    Stop,
}

/// Why the store could not be used at start (the password or a certificate cannot be read).
#[derive(Debug, thiserror::Error)]
#[error("state.etcd: {0}")]
pub struct StartError(String);

impl Etcd {
    /// Starts the etcd thread for `control` and connects it as its shared store.
    pub fn start(control: &Arc<Control>, cfg: &EtcdConfig) -> Result<Arc<Etcd>, StartError> {
        let options = options(cfg)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let status = Arc::new(Mutex::new(StoreStatus {
            backend: "etcd".into(),
            endpoints: cfg.endpoints.clone(),
            prefix: cfg.prefix.clone(),
            replica: cfg.replica.clone(),
            up: false,
            error: Some("connecting".into()),
            routes_behind: Vec::new(),
            trips_pending: Vec::new(),
        }));
        let (settled_tx, settled) = watch::channel(false);
        let thread = Thread {
            control: Arc::downgrade(control),
            endpoints: cfg.endpoints.clone(),
            options,
            timeout: cfg.timeout,
            routes: format!("{}routes/", cfg.prefix),
            windows: format!("{}windows/", cfg.prefix),
            replica: cfg.replica.clone(),
            lease: std::sync::atomic::AtomicI64::new(0),
            status: status.clone(),
            settled: settled_tx,
        };
        std::thread::Builder::new()
            .name("flipgate-etcd".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("can build the etcd thread's runtime");
                rt.block_on(thread.run(rx));
            })
            .map_err(|e| StartError(format!("cannot start the etcd thread: {e}")))?;
        let etcd = Arc::new(Etcd {
            requests: tx,
            status,
            timeout: cfg.timeout,
            routes: format!("{}routes/", cfg.prefix),
            settled,
        });
        control.set_shared(etcd.clone());
        // Trips taken while the store was away before a restart: written once it answers.
        for (route, rev, value) in control.trips_pending() {
            etcd.trip(&route, rev, value);
        }
        Ok(etcd)
    }

    /// Waits (at most `within`) for the first connection attempt, so a replica that starts serving
    /// serves the fleet's state when the store answers.
    pub async fn settle(&self, within: Duration) -> bool {
        let mut rx = self.settled.clone();
        let _ = tokio::time::timeout(within, rx.wait_for(|s| *s)).await;
        self.status().up
    }

    fn key(&self, route: &str) -> String {
        format!("{}{route}", self.routes)
    }
}

impl Backend for Etcd {
    fn cas(&self, route: &str, rev: i64, value: &Persisted) -> Cas {
        let body = match serde_json::to_vec(value) {
            Ok(b) => b,
            Err(e) => return Cas::Down(format!("cannot encode the state: {e}")),
        };
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let sent = self.requests.send(Request::Cas {
            route: self.key(route),
            rev,
            value: body,
            reply,
        });
        if sent.is_err() {
            return Cas::Down("the etcd client has stopped".into());
        }
        answer
            .recv_timeout(self.timeout + Duration::from_secs(1))
            .unwrap_or_else(|_| Cas::Down(format!("no answer within {:?}", self.timeout)))
    }

    fn trip(&self, route: &str, rev: i64, value: Persisted) {
        if let Ok(body) = serde_json::to_vec(&value) {
            let _ = self.requests.send(Request::Trip {
                route: self.key(route),
                rev,
                value: body,
            });
        }
    }

    fn status(&self) -> StoreStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn stop(&self) {
        let _ = self.requests.send(Request::Stop);
    }
}

/// Reads what the connection needs from files and the environment (password, certificates),
/// connecting nothing: `flipgate check` and start fail on the same errors.
pub fn check(cfg: &EtcdConfig) -> Result<(), StartError> {
    options(cfg).map(|_| ())
}

/// Connection options from the config: timeouts, keep-alive, user and TLS.
fn options(cfg: &EtcdConfig) -> Result<ConnectOptions, StartError> {
    let mut o = ConnectOptions::new()
        .with_connect_timeout(cfg.timeout)
        .with_timeout(cfg.timeout)
        .with_keep_alive(Duration::from_secs(1), cfg.timeout)
        .with_keep_alive_while_idle(true);
    if let (Some(user), Some(secret)) = (&cfg.username, &cfg.password) {
        let password = match secret {
            Secret::File(p) => std::fs::read_to_string(p)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| StartError(format!("password_file {}: {e}", p.display())))?,
            Secret::Env(v) => std::env::var(v)
                .map_err(|_| StartError(format!("password_env `{v}` is not set")))?,
        };
        o = o.with_user(user.clone(), password);
    }
    if let Some(ca) = &cfg.ca {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| StartError(format!("{}: {e}", p.display())))
        };
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let Some((cert, key)) = &cfg.identity {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        o = o.with_tls(tls);
    }
    Ok(o)
}

struct Thread {
    control: Weak<Control>,
    endpoints: Vec<String>,
    options: ConnectOptions,
    timeout: Duration,
    /// `{prefix}routes/`.
    routes: String,
    /// `{prefix}windows/`: `{route}/{replica}` keys, each bound to its replica's lease.
    windows: String,
    replica: String,
    /// The lease the published window totals are bound to (0: none).
    lease: std::sync::atomic::AtomicI64,
    status: Arc<Mutex<StoreStatus>>,
    settled: watch::Sender<bool>,
}

impl Thread {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Request>) {
        let this = Arc::new(self);
        // The connected client while the store is up.
        let (link_tx, mut link) = watch::channel::<Option<Client>>(None);
        let session = tokio::spawn(this.clone().session(link_tx));
        let windows = tokio::spawn(this.clone().windows(link.clone()));
        let mut pending: BTreeMap<String, (i64, Vec<u8>)> = BTreeMap::new();
        // Pending trips are also retried on a timer: a write can fail while the link stays up.
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = retry.tick(), if !pending.is_empty() => {
                    this.flush(&mut pending, &link).await;
                }
                req = rx.recv() => match req {
                    None | Some(Request::Stop) => break,
                    Some(Request::Cas { route, rev, value, reply }) => {
                        let client = link.borrow().clone();
                        let outcome = match client {
                            Some(mut c) => this.cas(&mut c, &route, rev, value).await,
                            None => Cas::Down(this.down_reason()),
                        };
                        if let Cas::Down(why) = &outcome {
                            tracing::debug!(key = %route, error = %why, "change refused: etcd did not take it");
                        }
                        let _ = reply.send(outcome);
                    }
                    Some(Request::Trip { route, rev, value }) => {
                        pending.insert(route, (rev, value));
                        this.flush(&mut pending, &link).await;
                    }
                },
                changed = link.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    this.flush(&mut pending, &link).await;
                }
            }
        }
        session.abort();
        windows.abort();
        // A replica that stops drops out of the fleet's circuit sums at once, not at lease expiry.
        let lease = this.lease.load(std::sync::atomic::Ordering::Relaxed);
        let client = link.borrow().clone();
        if let (Some(mut c), true) = (client, lease != 0) {
            let _ = tokio::time::timeout(Duration::from_secs(1), c.lease_revoke(lease)).await;
        }
    }

    fn down_reason(&self) -> String {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .error
            .clone()
            .unwrap_or_else(|| "etcd is unreachable".into())
    }

    fn set_status(&self, up: bool, error: Option<String>) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if s.up && !up {
            tracing::error!(error = ?error, "etcd unreachable: serving the last known state; admin changes answer 503 until it is back");
        } else if !s.up && up {
            tracing::info!(endpoints = ?self.endpoints, "etcd reachable: following the fleet's shared state");
        }
        s.up = up;
        s.error = error;
        if let Some(c) = self.control.upgrade() {
            c.metrics.state_backend_up.set(up as i64);
            s.routes_behind = c.routes_behind();
        }
    }

    /// Writes the circuit trips taken while the store was down (or just now); each is dropped if
    /// its route's key moved since the state it was judged on (then that newer state is taken in).
    async fn flush(
        &self,
        pending: &mut BTreeMap<String, (i64, Vec<u8>)>,
        link: &watch::Receiver<Option<Client>>,
    ) {
        let client = link.borrow().clone();
        if let Some(mut c) = client {
            let keys: Vec<String> = pending.keys().cloned().collect();
            for key in keys {
                let (rev, value) = pending[&key].clone();
                match self.cas(&mut c, &key, rev, value).await {
                    Cas::Accepted(_) => {
                        tracing::info!(key = %key, "circuit trip written to etcd");
                        pending.remove(&key);
                    }
                    Cas::Conflict(..) => {
                        tracing::info!(key = %key, "circuit trip not written: the route changed in etcd meanwhile (a newer decision wins)");
                        pending.remove(&key);
                    }
                    Cas::Down(_) => {}
                }
            }
        }
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.trips_pending = pending
            .keys()
            .map(|k| k.strip_prefix(&self.routes).unwrap_or(k).to_string())
            .collect();
    }

    /// One compare-and-swap on `key` (at revision `rev`); a lost race is taken in here too.
    async fn cas(&self, client: &mut Client, key: &str, rev: i64, value: Vec<u8>) -> Cas {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, None)]);
        let r = match tokio::time::timeout(self.timeout, client.txn(txn)).await {
            Err(_) => return Cas::Down(format!("etcd did not answer within {:?}", self.timeout)),
            Ok(Err(e)) => return Cas::Down(format!("etcd: {e}")),
            Ok(Ok(r)) => r,
        };
        let header_rev = r.header().map_or(0, |h| h.revision());
        if r.succeeded() {
            return Cas::Accepted(header_rev);
        }
        let now = r.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(g) => Some(g.kvs().first().cloned()),
            _ => None,
        });
        let (now_rev, value) = match now.flatten() {
            Some(kv) => (kv.mod_revision(), parse(&kv)),
            None => (header_rev, None),
        };
        if let (Some(c), Some(route)) = (self.control.upgrade(), key.strip_prefix(&self.routes)) {
            c.take_in(route, now_rev, value.clone());
        }
        Cas::Conflict(now_rev, value.map(Box::new))
    }

    /// Connects, seeds, reads and watches; starts over after any failure, with backoff.
    async fn session(self: Arc<Self>, link: watch::Sender<Option<Client>>) {
        let mut failures = 0u32;
        loop {
            let why = match self.connected(&link).await {
                Ok(()) => return, // the control plane is gone
                Err(e) => e,
            };
            link.send_replace(None);
            failures = failures.saturating_add(1);
            self.set_status(false, Some(why));
            self.settled.send_replace(true);
            let wait = BACKOFF_FIRST
                .saturating_mul(1 << failures.saturating_sub(1).min(5))
                .min(BACKOFF_MAX);
            tokio::time::sleep(wait).await;
        }
    }

    /// One session; `Err` says why it ended.
    async fn connected(&self, link: &watch::Sender<Option<Client>>) -> Result<(), String> {
        let t = self.timeout;
        let mut client = tokio::time::timeout(
            t,
            Client::connect(&self.endpoints, Some(self.options.clone())),
        )
        .await
        .map_err(|_| format!("no connection to {:?} within {t:?}", self.endpoints))?
        .map_err(|e| format!("cannot connect to {:?}: {e}", self.endpoints))?;
        let Some(control) = self.control.upgrade() else {
            return Ok(());
        };
        self.seed(&mut client, &control).await?;
        let all = tokio::time::timeout(
            t,
            client.get(self.routes.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await
        .map_err(|_| format!("etcd did not answer within {t:?}"))?
        .map_err(|e| format!("etcd: {e}"))?;
        let read_at = all.header().map_or(0, |h| h.revision());
        for kv in all.kvs() {
            self.take(&control, kv, true);
        }
        drop(control);
        let mut stream = client
            .watch(
                self.routes.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(read_at + 1),
                ),
            )
            .await
            .map_err(|e| format!("etcd watch: {e}"))?;
        link.send_replace(Some(client));
        self.set_status(true, None);
        self.settled.send_replace(true);
        loop {
            let resp = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Err("etcd watch ended".into()),
                Err(e) => return Err(format!("etcd watch: {e}")),
            };
            if resp.canceled() {
                return Err(format!("etcd watch cancelled: {}", resp.cancel_reason()));
            }
            let Some(control) = self.control.upgrade() else {
                return Ok(());
            };
            for ev in resp.events() {
                if let Some(kv) = ev.kv() {
                    self.take(&control, kv, ev.event_type() == EventType::Put);
                }
            }
            let behind = control.routes_behind();
            self.status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .routes_behind = behind;
        }
    }

    /// Hands one key's value (or its deletion) to the control plane.
    fn take(&self, control: &Control, kv: &KeyValue, put: bool) {
        let Ok(key) = kv.key_str() else { return };
        let Some(route) = key.strip_prefix(&self.routes) else {
            return;
        };
        let value = if put { parse(kv) } else { None };
        control.take_in(route, kv.mod_revision(), value);
    }

    /// Seeds an empty prefix from the local state, each key only if absent (once fleet-wide).
    async fn seed(&self, client: &mut Client, control: &Control) -> Result<(), String> {
        let t = self.timeout;
        let count = tokio::time::timeout(
            t,
            client.get(
                self.routes.as_str(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            ),
        )
        .await
        .map_err(|_| format!("etcd did not answer within {t:?}"))?
        .map_err(|e| format!("etcd: {e}"))?
        .count();
        if count > 0 {
            return Ok(());
        }
        let mut seeded = 0;
        for (name, p) in control.persisted_now() {
            let key = format!("{}{name}", self.routes);
            let body = serde_json::to_vec(&p).map_err(|e| e.to_string())?;
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), body, None)]);
            let r = tokio::time::timeout(t, client.txn(txn))
                .await
                .map_err(|_| format!("etcd did not answer within {t:?}"))?
                .map_err(|e| format!("etcd: {e}"))?;
            seeded += r.succeeded() as usize;
        }
        if seeded > 0 {
            tracing::info!(routes = seeded, prefix = %self.routes, "seeded the empty etcd prefix from this replica's state");
            control.events.push(
                "state_seeded",
                None,
                format!(
                    "seeded etcd ({}) with this replica's state of {seeded} routes",
                    self.routes
                ),
            );
        }
        Ok(())
    }
}

/// What a replica publishes for one route every `WINDOW_PERIOD`: its own window totals per target,
/// gathered on the route's state at revision `rev` (totals gathered on another state are not
/// summed: they judged another split).
#[derive(serde::Serialize, serde::Deserialize)]
struct Published {
    rev: i64,
    targets: BTreeMap<String, [u64; 3]>,
}

/// How often each replica publishes its window totals and reads the others'.
const WINDOW_PERIOD: Duration = Duration::from_secs(1);
/// Lease of the published totals: a replica that stops publishing drops out of the sum this long
/// after its last keep-alive.
const WINDOW_LEASE_SECS: i64 = 3;

impl Thread {
    /// The fleet-wide circuit's data: every `WINDOW_PERIOD`, publishes this replica's window totals
    /// of each route with a circuit under a lease, reads every replica's, and sets the sum of the
    /// others' (made on the same route state) as each target window's `fleet` part. While the
    /// store is down the fleet part is zero: each replica judges its own traffic.
    async fn windows(self: Arc<Self>, link: watch::Receiver<Option<Client>>) {
        let mut tick = tokio::time::interval(WINDOW_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lease: Option<(
            i64,
            etcd_client::LeaseKeeper,
            etcd_client::LeaseKeepAliveStream,
        )> = None;
        // What this replica last wrote under each of its keys (bound to `lease`).
        let mut published = BTreeMap::new();
        loop {
            tick.tick().await;
            let Some(control) = self.control.upgrade() else {
                return;
            };
            let client = link.borrow().clone();
            let ok = match client {
                Some(mut c) => {
                    self.exchange(&mut c, &control, &mut lease, &mut published)
                        .await
                }
                None => false,
            };
            if !ok {
                lease = None;
                published.clear();
                for r in &control.snapshots().load().routes {
                    for t in &r.targets {
                        t.window.set_fleet(Default::default());
                    }
                }
            }
        }
    }

    /// One publish-and-sum round; false when the store did not answer.
    async fn exchange(
        &self,
        client: &mut Client,
        control: &Control,
        lease: &mut Option<(
            i64,
            etcd_client::LeaseKeeper,
            etcd_client::LeaseKeepAliveStream,
        )>,
        published: &mut BTreeMap<String, Vec<u8>>,
    ) -> bool {
        let t = self.timeout;
        let snap = control.snapshots().load_full();
        if snap.routes.iter().all(|r| r.circuit.is_none()) {
            return true;
        }
        let revs = control.revisions();
        // Keep the lease alive, or take a new one.
        let alive = match lease.as_mut() {
            Some((_, keeper, stream)) => {
                keeper.keep_alive().await.is_ok()
                    && matches!(
                        tokio::time::timeout(t, stream.message()).await,
                        Ok(Ok(Some(r))) if r.ttl() > 0
                    )
            }
            None => false,
        };
        if !alive {
            let granted = async {
                let g = client.lease_grant(WINDOW_LEASE_SECS, None).await?;
                let (keeper, stream) = client.lease_keep_alive(g.id()).await?;
                Ok::<_, etcd_client::Error>((g.id(), keeper, stream))
            };
            match tokio::time::timeout(t, granted).await {
                Ok(Ok(l)) => {
                    // A new lease: whatever was bound to the old one is gone.
                    *lease = Some(l);
                    published.clear();
                }
                _ => return false,
            }
        }
        let lease_id = lease.as_ref().map_or(0, |l| l.0);
        self.lease
            .store(lease_id, std::sync::atomic::Ordering::Relaxed);
        let now_ms = crate::clock::now_ms();
        let now_unix_ms = crate::control::unix_ms();
        for r in snap.routes.iter().filter(|r| r.circuit.is_some()) {
            let key = format!("{}{}/{}", self.windows, r.name, self.replica);
            // Only routes the circuit watches now (a canary, a bake) are published, and only
            // when their totals changed: every put is a revision etcd keeps until it compacts.
            // A route no longer watched has its key deleted, so no old totals are summed when
            // it is watched again.
            if crate::control::current_candidate(&r.state, now_unix_ms).is_none() {
                if published.remove(&key).is_some() {
                    let del = client.delete(key, None);
                    if !matches!(tokio::time::timeout(t, del).await, Ok(Ok(_))) {
                        return false;
                    }
                }
                continue;
            }
            let mine = Published {
                rev: revs.get(&*r.name).copied().unwrap_or(0),
                targets: r
                    .targets
                    .iter()
                    .map(|tg| {
                        let w = tg.window.totals(now_ms);
                        (tg.name.to_string(), [w.requests, w.errors, w.slow])
                    })
                    .collect(),
            };
            let Ok(body) = serde_json::to_vec(&mine) else {
                continue;
            };
            if published.get(&key) == Some(&body) {
                continue;
            }
            let put = client.put(
                key.clone(),
                body.clone(),
                Some(etcd_client::PutOptions::new().with_lease(lease_id)),
            );
            if !matches!(tokio::time::timeout(t, put).await, Ok(Ok(_))) {
                return false;
            }
            published.insert(key, body);
        }
        let all = match tokio::time::timeout(
            t,
            client.get(self.windows.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await
        {
            Ok(Ok(r)) => r,
            _ => return false,
        };
        let mut sums: BTreeMap<(String, String), Totals> = BTreeMap::new();
        for kv in all.kvs() {
            let Some((route, replica)) = kv
                .key_str()
                .ok()
                .and_then(|k| k.strip_prefix(&self.windows))
                .and_then(|k| k.rsplit_once('/'))
            else {
                continue;
            };
            if replica == self.replica {
                continue;
            }
            let Ok(p) = serde_json::from_slice::<Published>(kv.value()) else {
                continue;
            };
            if revs.get(route).copied().unwrap_or(0) != p.rev {
                continue;
            }
            for (target, [requests, errors, slow]) in p.targets {
                let e = sums.entry((route.to_string(), target)).or_default();
                *e = e.plus(Totals {
                    requests,
                    errors,
                    slow,
                });
            }
        }
        for r in &snap.routes {
            for tg in &r.targets {
                let sum = sums
                    .get(&(r.name.to_string(), tg.name.to_string()))
                    .copied()
                    .unwrap_or_default();
                tg.window.set_fleet(sum);
            }
        }
        true
    }
}

/// A key's value as a route state; a value that does not parse is ignored (and logged).
fn parse(kv: &KeyValue) -> Option<Persisted> {
    match serde_json::from_slice::<Persisted>(kv.value()) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(key = %String::from_utf8_lossy(kv.key()), error = %e, "etcd value is not a flipgate route state; ignored");
            None
        }
    }
}
