//! The admin listener: health, readiness, metrics, the JSON API and the status page.
//!
//! Invariants: separate from traffic (its own listener and connections). Mutating calls need
//! `Authorization: Bearer <token>`, compared in constant time; with no token configured the
//! listener refuses to bind anything but a loopback address. Every error is JSON `{"error": ...}`
//! with 400 (bad JSON), 401 (auth; nothing changes), 404 (unknown route or path), 405, 422 (refused
//! change), 500 (applied but not persisted; the body also says `"persisted": false`) or 503
//! (another process owns the runtime state, or the state file cannot be read: nothing changes).
//! Reads (`GET`) never wait for a change in progress: they serve the published snapshot, reload
//! status and persistence status. A mutation is applied on the blocking pool (it takes the control
//! lock) and answered once the state file holds it, or after `PERSIST_WAIT` at most. `/readyz`
//! stays 200 while state is not persisted or owned by another process (traffic is served
//! correctly; taking the instance out of rotation would turn a disk problem into an outage) and
//! says so in its body, one `state: ...` line per problem.

pub mod view;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::control::{Action, Control, Durability};
use crate::state::writer::{pid_text, Ownership, PersistStatus};
use view::{RouteView, RoutesView};

const STATUS_PAGE: &str = include_str!("status.html");

/// Longest wait for a mutation's state to reach the disk before answering that it has not yet.
pub const PERSIST_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Shared state of the admin listener.
pub struct Admin {
    pub control: Arc<Control>,
    /// Set once listeners are bound and a config is loaded: `/readyz` answers 200 from then on.
    pub ready: Arc<AtomicBool>,
    token_env: Option<String>,
    token_file: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin listener {0} is not loopback and no admin token is configured (set admin.token_env or admin.token_file); refusing to expose unauthenticated control")]
    Unprotected(SocketAddr),
    #[error("cannot bind admin listener {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryBody {
    percent: f64,
    target: Option<String>,
}

impl Admin {
    pub fn new(control: Arc<Control>, ready: Arc<AtomicBool>) -> Arc<Admin> {
        let cfg = control.config();
        Arc::new(Admin {
            control,
            ready,
            token_env: cfg.admin.token_env.clone(),
            token_file: cfg.admin.token_file.clone(),
        })
    }

    /// The bearer token in force, if any: the env var first, then the token file (re-read per call
    /// so a rotated Secret takes effect without a restart).
    fn token(&self) -> Option<String> {
        if let Some(v) = self.token_env.as_ref().and_then(|n| std::env::var(n).ok()) {
            if !v.trim().is_empty() {
                return Some(v.trim().to_string());
            }
        }
        self.token_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// Binds the admin listener, enforcing the loopback rule.
    /// With `reuse_port` (the traffic listener's setting) the admin port is shared too, so a new
    /// process started on the same route file can bind during a zero-downtime upgrade.
    pub async fn bind(
        &self,
        addr: SocketAddr,
        reuse_port: bool,
    ) -> Result<TcpListener, AdminError> {
        if self.token().is_none() && !addr.ip().is_loopback() {
            return Err(AdminError::Unprotected(addr));
        }
        crate::server::bind(addr, reuse_port).map_err(|e| AdminError::Bind(addr, e))
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = self.token() else {
            return true;
        };
        // The scheme is case-insensitive (RFC 9110 §11.1); the token is not.
        let Some(given) = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
        else {
            return false;
        };
        bool::from(given.trim().as_bytes().ct_eq(token.as_bytes()))
    }

    /// Handles one admin request.
    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().trim_end_matches('/').to_string();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
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
                json(
                    StatusCode::OK,
                    &RoutesView::new(
                        &snap,
                        &self.control.last_reload(),
                        &self.control.persist_status(),
                    ),
                )
            }
            (&Method::GET, ["api", "v1", "events"]) => json(
                StatusCode::OK,
                &serde_json::json!({ "events": self.control.events.recent() }),
            ),
            (&Method::GET, ["api", "v1", "routes", name]) => self.route_view(name),
            (&Method::POST, ["api", "v1", "routes", name, verb]) => {
                let (name, verb) = (name.to_string(), verb.to_string());
                self.mutate(req, name, verb).await
            }
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
            Some(r) => json(
                StatusCode::OK,
                &RouteView::new(&snap, r, self.control.persist_status().persisted()),
            ),
            None => error(StatusCode::NOT_FOUND, format!("unknown route `{name}`")),
        }
    }

    async fn mutate(self: &Arc<Self>, req: Request<Incoming>, name: String, verb: String) -> Resp {
        if !self.authorized(&req) {
            return error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
        }
        let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "request body unreadable or larger than 64 KiB",
                )
            }
        };
        let empty = body.iter().all(|b| b.is_ascii_whitespace());
        let parse_err =
            |e: serde_json::Error| error(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}"));
        let action = match verb.as_str() {
            "flip" => {
                let b: FlipBody = if empty {
                    FlipBody::default()
                } else {
                    match serde_json::from_slice(&body) {
                        Ok(b) => b,
                        Err(e) => return parse_err(e),
                    }
                };
                Action::Flip { target: b.target }
            }
            "canary" => {
                if empty {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad JSON body: expected {\"percent\": N}",
                    );
                }
                match serde_json::from_slice::<CanaryBody>(&body) {
                    Ok(b) => Action::Canary {
                        percent: b.percent,
                        target: b.target,
                    },
                    Err(e) => return parse_err(e),
                }
            }
            "promote" | "rollback" | "reset" => {
                if !empty && serde_json::from_slice::<serde_json::Value>(&body).is_err() {
                    return error(StatusCode::BAD_REQUEST, "bad JSON body");
                }
                match verb.as_str() {
                    "promote" => Action::Promote,
                    "rollback" => Action::Rollback,
                    _ => Action::Reset,
                }
            }
            _ => return error(StatusCode::NOT_FOUND, format!("unknown action `{verb}`")),
        };
        let control = self.control.clone();
        let route = name.clone();
        let result = tokio::task::spawn_blocking(move || control.act(&route, action)).await;
        match result {
            Ok(Ok(applied)) => match self.control.durable(applied.version, PERSIST_WAIT).await {
                Durability::Persisted => self.route_view(&name),
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
        let (stream, _) = tokio::select! {
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
        let admin = admin.clone();
        let svc = service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, std::convert::Infallible>(admin.handle(req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
