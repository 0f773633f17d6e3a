//! The admin listener: health, readiness, metrics, the JSON API and the status page.
//!
//! Invariants:
//! - Separate from traffic (its own listener and connections).
//! - Every request passes [`guard::check`] before any handler runs: its `Host` must be the
//!   connection's own local address, `localhost` or an `admin.allowed_hosts` entry (DNS
//!   rebinding); an `Origin` other than the listener's own, or `Sec-Fetch-Site: cross-site`, is
//!   refused (web pages). Mutations also need `Authorization: Bearer <token>` (constant-time
//!   compare) when a token source is configured, and `Content-Type: application/json` when they
//!   carry a body or declare a type. See `docs/operations.md`, "Threat model".
//! - The token source ([`token`]) is re-read for every mutation, off the runtime. A configured
//!   source that yields no token refuses every mutation with 503 naming the reason, is logged at
//!   warn on each change of reason and counted; it never opens mutations. With no source at all
//!   the listener refuses to bind anything but a loopback address and warns at start; a source
//!   that yields no token at start also refuses a non-loopback bind.
//! - Every refusal changes nothing, answers JSON `{"error": ...}` and counts
//!   `flipgate_admin_refusals_total{reason}`; refusal logs are rate-limited per reason.
//! - Every error is JSON `{"error": ...}` with 400 (bad JSON), 401 (token), 403 (Host, Origin),
//!   404 (unknown route or path), 405, 415 (not JSON), 422 (refused change), 500 (applied but not
//!   persisted; the body also says `"persisted": false`) or 503 (token source yields no token,
//!   another process owns the runtime state, or the state file cannot be read: nothing changes).
//! - Reads (`GET`) never wait for a change in progress: they serve the published snapshot, reload
//!   status and persistence status. A mutation is applied on the blocking pool (it takes the
//!   control lock) and answered once the state file holds it, or after `PERSIST_WAIT` at most.
//! - `/readyz` stays 200 while state is not persisted or owned by another process (traffic is
//!   served correctly; taking the instance out of rotation would turn a disk problem into an
//!   outage) and says so in its body, one `state: ...` line per problem.

pub mod analysis;
pub mod guard;
pub mod instances;
pub mod rollout;
pub mod token;
pub mod view;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::control::state::writer::{pid_text, Ownership, PersistStatus};
use crate::control::{Action, Control, ControlError, Durability};
use guard::{Access, Refusal, TokenState};
use token::TokenSource;
use view::{RouteView, RoutesView};

const STATUS_PAGE: &str = include_str!("status.html");

/// How often one kind of refusal is logged at most (the counter sees every one).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// Longest wait for a mutation's state to reach the disk before answering that it has not yet.
pub const PERSIST_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Shared state of the admin listener.
pub struct Admin {
    pub control: Arc<Control>,
    /// Set once listeners are bound and a config is loaded: `/readyz` answers 200 from then on.
    pub ready: Arc<AtomicBool>,
    /// Where mutations' bearer token comes from (start-time settings).
    token: TokenSource,
    /// `admin.allowed_hosts`, normalised (start-time settings).
    allowed_hosts: Vec<String>,
    /// The token problem last logged, so a broken source is logged once per change of reason
    /// rather than once per request.
    token_problem: Mutex<Option<String>>,
    /// When each refusal reason was last logged (indexed like `Refusal::REASONS`).
    refusal_logged: Mutex<[Option<Instant>; 5]>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin listener {0} is not loopback and no admin token is configured (set admin.token_env or admin.token_file); refusing to expose unauthenticated control")]
    Unprotected(SocketAddr),
    #[error("admin listener {0} is not loopback and the admin token source yields no token ({1}); refusing to start")]
    TokenUnusable(SocketAddr, String),
    #[error("cannot bind admin listener {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// The loopback rule: an admin listener other processes' networks can reach needs a usable token.
/// `run` applies it when it binds, `check` before (`crate::preflight`).
pub fn exposure(addr: SocketAddr, token: &TokenState) -> Result<(), AdminError> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    match token {
        TokenState::Open => Err(AdminError::Unprotected(addr)),
        TokenState::Unusable(why) => Err(AdminError::TokenUnusable(addr, why.clone())),
        TokenState::Token(_) => Ok(()),
    }
}

type Resp = Response<Full<Bytes>>;

fn json(status: StatusCode, body: &impl serde::Serialize) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(body).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, msg: impl Into<String>) -> Resp {
    json(status, &serde_json::json!({ "error": msg.into() }))
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FlipBody {
    target: Option<String>,
    /// Checked by `requires_healthy`.
    #[serde(default)]
    #[allow(dead_code)]
    require_healthy: bool,
}

/// Whether a flip or promote body asks for `"require_healthy": true` (`Control::act_checked`).
pub fn requires_healthy(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|v| v.get("require_healthy") == Some(&serde_json::Value::Bool(true)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryBody {
    percent: f64,
    target: Option<String>,
}

/// The route and verb a request would change, if it is a mutation (`POST
/// /api/v1/routes/{name}/{verb}`): those get the token and content-type checks.
pub fn mutation_target(method: &Method, path: &str) -> Option<(String, String)> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (method, segments.as_slice()) {
        (&Method::POST, ["api", "v1", "routes", name, verb]) => {
            Some((name.to_string(), verb.to_string()))
        }
        (&Method::POST, ["api", "v1", "routes", name, "rollout", sub]) => {
            Some((name.to_string(), format!("rollout/{sub}")))
        }
        (&Method::POST, ["api", "v1", "routes", name, rest @ ..]) => {
            Some((name.to_string(), instances::verb(rest)?))
        }
        _ => None,
    }
}

/// Parses a mutation's JSON body into the action it asks for. Pure, so the fuzz target reaches
/// it; an error is the status and message to answer.
pub fn parse_action(verb: &str, body: &[u8]) -> Result<Action, (StatusCode, String)> {
    let empty = body.iter().all(|b| b.is_ascii_whitespace());
    let bad = |e: serde_json::Error| (StatusCode::BAD_REQUEST, format!("bad JSON body: {e}"));
    match verb {
        "flip" => {
            let b: FlipBody = if empty {
                FlipBody::default()
            } else {
                serde_json::from_slice(body).map_err(bad)?
            };
            Ok(Action::Flip { target: b.target })
        }
        "canary" => {
            if empty {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "bad JSON body: expected {\"percent\": N}".into(),
                ));
            }
            let b: CanaryBody = serde_json::from_slice(body).map_err(bad)?;
            Ok(Action::Canary {
                percent: b.percent,
                target: b.target,
            })
        }
        _ if verb.starts_with("targets/") || matches!(verb, "promote" | "rollback" | "reset") => {
            if !empty && serde_json::from_slice::<serde_json::Value>(body).is_err() {
                return Err((StatusCode::BAD_REQUEST, "bad JSON body".into()));
            }
            Ok(match verb {
                "promote" => Action::Promote,
                "rollback" => Action::Rollback,
                "reset" => Action::Reset,
                _ => instances::action(verb)
                    .ok_or_else(|| (StatusCode::NOT_FOUND, format!("unknown action `{verb}`")))?,
            })
        }
        _ => Err((StatusCode::NOT_FOUND, format!("unknown action `{verb}`"))),
    }
}

impl Admin {
    pub fn new(control: Arc<Control>, ready: Arc<AtomicBool>) -> Arc<Admin> {
        let cfg = control.config();
        Arc::new(Admin {
            control,
            ready,
            token: TokenSource::new(&cfg.admin),
            allowed_hosts: cfg.admin.allowed_hosts.clone(),
            token_problem: Mutex::new(None),
            refusal_logged: Mutex::new([None; 5]),
        })
    }

    /// Logs a change of the token source's health: warn when it starts yielding no token (or the
    /// reason changes), info when it yields one again.
    fn note_token(&self, state: &TokenState) {
        let problem = match state {
            TokenState::Unusable(why) => Some(why.clone()),
            _ => None,
        };
        let mut last = self.token_problem.lock().unwrap_or_else(|e| e.into_inner());
        if *last == problem {
            return;
        }
        match &problem {
            Some(why) => tracing::warn!(
                reason = %why,
                "admin token source yields no token: every admin mutation is refused (503) until it does"
            ),
            None => tracing::info!("admin token source yields a token again; mutations accepted"),
        }
        *last = problem;
    }

    /// The token state for one mutation: read off the runtime (it may touch the disk).
    async fn token_state(&self) -> TokenState {
        let source = self.token.clone();
        let state = tokio::task::spawn_blocking(move || source.resolve())
            .await
            .unwrap_or_else(|_| {
                TokenState::Unusable("admin token source: read task failed".into())
            });
        self.note_token(&state);
        state
    }

    /// Binds the admin listener, enforcing the loopback rule, and warns when mutations are open.
    /// With `reuse_port` (the traffic listener's setting) the admin port is shared too, so a new
    /// process started on the same route file can bind during a zero-downtime upgrade.
    pub async fn bind(
        &self,
        addr: SocketAddr,
        reuse_port: bool,
    ) -> Result<TcpListener, AdminError> {
        let state = self.token.resolve();
        exposure(addr, &state)?;
        match &state {
            TokenState::Open => tracing::warn!(
                admin = %addr,
                "admin API has no token: any local process can change routes (web pages are refused by the Host and Origin checks); set admin.token_env or admin.token_file"
            ),
            TokenState::Unusable(_) | TokenState::Token(_) => self.note_token(&state),
        }
        crate::serve::bind(addr, reuse_port).map_err(|e| AdminError::Bind(addr, e))
    }

    /// Answers a refused request: counted, logged (rate-limited per reason), JSON.
    fn refuse(&self, r: Refusal, method: &Method, path: &str) -> Resp {
        let reason = r.reason();
        self.control
            .metrics
            .admin_refusals
            .with_label_values(&[reason])
            .inc();
        // The token source's own health is logged by `note_token`, on change.
        if !matches!(r, Refusal::TokenUnusable(_)) {
            let i = Refusal::REASONS
                .iter()
                .position(|x| *x == reason)
                .unwrap_or(0);
            let now = Instant::now();
            let mut logged = self
                .refusal_logged
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if logged[i].is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_EVERY) {
                logged[i] = Some(now);
                tracing::warn!(
                    %reason, %method, path = %path.escape_debug(), error = %r,
                    "admin request refused (logged at most once a minute per reason; see flipgate_admin_refusals_total)"
                );
            }
        }
        error(r.status(), r.to_string())
    }

    /// Handles one admin request that arrived on a connection whose local address is `local`.
    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>, local: SocketAddr) -> Resp {
        let path = req.uri().path().trim_end_matches('/').to_string();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mutation = mutation_target(req.method(), &path);
        let token = match mutation {
            Some(_) => Some(self.token_state().await),
            None => None,
        };
        let access = match &token {
            Some(t) => Access::Mutate(t),
            None => Access::Read,
        };
        if let Err(r) = guard::check(
            req.method(),
            req.uri(),
            req.headers(),
            local,
            &self.allowed_hosts,
            access,
        ) {
            return self.refuse(r, req.method(), &path);
        }
        if let Some((name, verb)) = mutation {
            return self.mutate(req, name, verb).await;
        }
        match (req.method(), segments.as_slice()) {
            (&Method::GET, []) => text(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE),
            (&Method::GET, ["healthz"]) => text(StatusCode::OK, "text/plain", "ok\n"),
            (&Method::GET, ["readyz"]) => {
                if self.ready.load(Ordering::Acquire) {
                    let mut body = String::from("ready\n");
                    for line in state_lines(&self.control.persist_status()) {
                        body.push_str(&line);
                        body.push('\n');
                    }
                    // Ready either way: the last known state keeps serving while the store is
                    // away; the line says so.
                    if let Some(store) = self.control.store_status().filter(|s| !s.up) {
                        body.push_str(&format!(
                            "state: shared store ({}) unreachable: {}; serving the last known state, changes refused\n",
                            store.backend,
                            store.error.as_deref().unwrap_or("unknown")
                        ));
                    }
                    text(StatusCode::OK, "text/plain", body)
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
                }
            }
            (&Method::GET, ["metrics"]) => text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.control.metrics.render(),
            ),
            (&Method::GET, ["api", "v1", "routes"]) => {
                let snap = self.control.snapshots().load_full();
                let mut view = RoutesView::new(
                    &snap,
                    &self.control.last_reload(),
                    &self.control.persist_status(),
                );
                for (v, r) in view.routes.iter_mut().zip(&snap.routes) {
                    v.analysis = analysis::view(r, self.control.analysis.get(&r.name).as_ref());
                }
                if let Some(state) = view.state.as_mut() {
                    state.store = self.control.store_status();
                }
                json(StatusCode::OK, &view)
            }
            (&Method::GET, ["api", "v1", "events"]) => json(
                StatusCode::OK,
                &serde_json::json!({ "events": self.control.events.recent() }),
            ),
            (&Method::GET, ["api", "v1", "routes", name]) => self.route_view(name),
            // Compact: pretty-printed, each of its thousands of numbers would take a line.
            (&Method::GET, ["api", "v1", "history"]) => text(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec(&self.control.history.view(&self.control.events.recent()))
                    .unwrap_or_default(),
            ),
            (_, ["api", "v1", "routes", _, _])
            | (_, ["api", "v1", "routes", ..])
            | (_, ["metrics" | "healthz" | "readyz"]) => {
                error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
        }
    }

    fn route_view(&self, name: &str) -> Resp {
        let snap = self.control.snapshots().load_full();
        match snap.route(name) {
            Some(r) => {
                let mut v = RouteView::new(&snap, r, self.control.persist_status().persisted());
                v.analysis = analysis::view(r, self.control.analysis.get(name).as_ref());
                json(StatusCode::OK, &v)
            }
            None => error(StatusCode::NOT_FOUND, format!("unknown route `{name}`")),
        }
    }

    /// A mutation that passed the guard: read the body, apply.
    async fn mutate(self: &Arc<Self>, req: Request<Incoming>, name: String, verb: String) -> Resp {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, 64 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "request body unreadable or larger than 64 KiB",
                )
            }
        };
        if let Err(r) = guard::check_body(&parts.headers, &body) {
            return self.refuse(r, &parts.method, parts.uri.path());
        }
        let control = self.control.clone();
        let route = name.clone();
        let (result, ok) = if verb == "rollout" || verb.starts_with("rollout/") {
            let request = match rollout::parse(&verb, &body) {
                Ok(r) => r,
                Err((status, msg)) => return error(status, msg),
            };
            let ok = match request {
                rollout::Request::Start(_) => StatusCode::ACCEPTED,
                rollout::Request::Op(_) => StatusCode::OK,
            };
            let result = tokio::task::spawn_blocking(move || match request {
                rollout::Request::Start(b) => {
                    let config = control.config();
                    let r = config
                        .route(&route)
                        .ok_or_else(|| ControlError::UnknownRoute(route.clone()))?;
                    let plan = rollout::plan(r, b).map_err(ControlError::Rejected)?;
                    control.rollout_start(&route, plan)
                }
                rollout::Request::Op(op) => control.rollout_op(&route, op),
            })
            .await;
            (result, ok)
        } else {
            let action = match parse_action(&verb, &body) {
                Ok(a) => a,
                Err((status, msg)) => return error(status, msg),
            };
            let require = requires_healthy(&body);
            let result =
                tokio::task::spawn_blocking(move || control.act_checked(&route, action, require))
                    .await;
            (result, StatusCode::OK)
        };
        match result {
            Ok(Ok(applied)) => match self.control.durable(applied.version, PERSIST_WAIT).await {
                Durability::Persisted => {
                    let mut r = self.route_view(&name);
                    if r.status() == StatusCode::OK {
                        *r.status_mut() = ok;
                    }
                    r
                }
                Durability::Failed(e) => not_persisted(format!(
                    "applied, but the runtime state could not be persisted: {e}; flipgate retries in the background, and until a retry succeeds the change will not survive a restart"
                )),
                Durability::Pending => not_persisted(format!(
                    "applied, but not yet persisted after {}s (the state write is still in progress); until it is, the change will not survive a restart",
                    PERSIST_WAIT.as_secs()
                )),
            },
            Ok(Err(e)) => error(
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                e.to_string(),
            ),
            Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "control task failed"),
        }
    }
}

/// A 500 for a change that is in force but not (yet) in the state file.
fn not_persisted(msg: String) -> Resp {
    json(
        StatusCode::INTERNAL_SERVER_ERROR,
        &serde_json::json!({ "error": msg, "persisted": false }),
    )
}

/// The `/readyz` detail: one `state: ...` line per persistence problem, none when all is well.
pub fn state_lines(s: &PersistStatus) -> Vec<String> {
    let mut lines = Vec::new();
    match &s.ownership {
        Ownership::Owner => {}
        Ownership::Follower { pid } => lines.push(format!(
            "state: owned by flipgate process {} on the same state.dir; this process follows its decisions and refuses changes until it exits",
            pid_text(*pid)
        )),
        Ownership::Blocked { reason } => lines.push(format!("state: changes refused: {reason}")),
    }
    if !s.persisted() {
        lines.push(match (&s.ownership, &s.error) {
            (Ownership::Follower { .. }, _) => "state: not persisted: decisions this process made itself (circuit trips, reloads) are not in the state file".to_string(),
            (_, Some(e)) => format!("state: not persisted: {e}; decisions are in force, retrying"),
            (_, None) => "state: not persisted yet: a write is in progress".to_string(),
        });
    }
    lines
}

/// Serves the admin API on `listener` until shutdown.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        // The `Host` check compares against the address this connection reached: on a 0.0.0.0
        // listener that is the pod IP a kubelet or Prometheus dialled.
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, %peer, "admin connection without a local address");
                continue;
            }
        };
        let admin = admin.clone();
        let svc = service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, std::convert::Infallible>(admin.handle(req, local).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
