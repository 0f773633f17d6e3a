//! What the data path sees: an immutable, fully compiled view of routes, splits and upstreams.
//!
//! Invariants: built only from a validated `Config` plus the runtime `RouteState`s (whose target
//! names the control plane has checked); published with one `ArcSwap::store`, so a request sees
//! either the whole old or the whole new routing, split and circuit view; carries a generation that
//! grows with every publish. Per-target counters, metric handles and upstream balancing state
//! are carried over between snapshots by (route, target) name, so a reload loses no counts. So is
//! each target's circuit window, except when the target takes a new role (becomes live or the
//! running canary, by whatever change): then it starts a fresh window, so it is judged only on
//! what it does in that role, never on outcomes from before (a re-armed canary is not tripped again
//! by the errors that tripped it). Requests still in flight record into the window they started
//! with. Each instance's drain flag is set from the route's runtime state (`control::drain`) when
//! the snapshot is built; its in-flight count and flag are shared by address with the previous
//! snapshot's upstream even when the target's table changed (`upstream::balance`). A route's
//! shadow traffic is compiled here too (`shadow`), paused while its target is live.

pub mod router;
pub mod rules;
pub mod shadow;
pub mod split;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Circuit, Config, Preview, Route};
use crate::control::circuit::window::Window;
use crate::control::state::{Role, RouteState};
use crate::observe::metrics::{Metrics, TargetMetrics};
use crate::snapshot::router::Router;
use crate::snapshot::split::Split;
use crate::upstream::Upstream;

/// One published generation of routing.
pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    pub router: Router,
    pub routes: Vec<RouteEntry>,
    /// Where answers that belong to no route are counted (`route=""`).
    pub unrouted: crate::observe::metrics::UnroutedMetrics,
}

/// A route as the data path uses it.
pub struct RouteEntry {
    pub name: Arc<str>,
    /// In the config's (sorted by name) order.
    pub targets: Vec<Arc<TargetEntry>>,
    pub split: Split,
    pub preview: Option<Preview>,
    /// Cohort rules, tried after preview and before the split (`policy::rules`).
    pub rules: rules::Rules,
    pub circuit: Option<Circuit>,
    /// Shadow traffic (`[routes.shadow]`): `None` without it, and while its target is live.
    pub shadow: Option<Arc<shadow::Shadow>>,
    /// The runtime state this entry was compiled from, for status and the circuit task.
    pub state: RouteState,
}

/// A target of a route with everything a request needs, resolved in advance.
pub struct TargetEntry {
    pub route: Arc<str>,
    pub name: Arc<str>,
    pub upstream: Arc<Upstream>,
    /// Outcome window for the circuit.
    pub window: Arc<Window>,
    pub metrics: TargetMetrics,
    /// The route's gRPC failure codes (`policy::grpc`).
    pub grpc_errors: u32,
}

impl Snapshot {
    /// An empty snapshot (no routes), generation 0; used before the first config is loaded.
    pub fn empty() -> Snapshot {
        Snapshot {
            generation: 0,
            config: Arc::new(
                crate::config::parse(std::path::Path::new("<empty>"), EMPTY).expect("valid"),
            ),
            router: Router::default(),
            routes: Vec::new(),
            unrouted: Default::default(),
        }
    }

    /// Builds a snapshot. `previous` lends its per-target windows and upstreams for reuse.
    pub fn build(
        generation: u64,
        config: Arc<Config>,
        states: &HashMap<String, RouteState>,
        previous: &Snapshot,
        metrics: &Metrics,
    ) -> Snapshot {
        let mut router = Router::default();
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, route) in config.routes.iter().enumerate() {
            router.insert(&route.hosts, &route.path_prefix, i);
            let state = states
                .get(&route.name)
                .cloned()
                .unwrap_or_else(|| RouteState::from_file(route));
            routes.push(build_route(route, state, previous, metrics));
        }
        Snapshot {
            generation,
            config,
            router,
            routes,
            unrouted: metrics.unrouted(),
        }
    }

    /// Finds a route by name (control plane and admin only; the data path uses the router).
    pub fn route(&self, name: &str) -> Option<&RouteEntry> {
        self.routes.iter().find(|r| &*r.name == name)
    }
}

const EMPTY: &str = "[[routes]]\nname = \"none\"\npath_prefix = \"/__flipgate_unconfigured__\"\nlive = \"none\"\n[routes.targets]\nnone = [\"127.0.0.1:9\"]\n";

fn build_route(
    route: &Route,
    state: RouteState,
    previous: &Snapshot,
    metrics: &Metrics,
) -> RouteEntry {
    let name: Arc<str> = route.name.as_str().into();
    let old = previous.route(&route.name);
    // A target that now takes a share in a role it did not have is judged afresh.
    let new_role = |target: &str| {
        let role = state.role(target);
        role != Role::Idle && old.is_some_and(|o| o.state.role(target) != role)
    };
    let targets = route
        .targets
        .iter()
        .map(|t| {
            let old_t = old.and_then(|r| r.targets.iter().find(|x| *x.name == *t.name));
            let window_len = route
                .circuit
                .as_ref()
                .map_or(std::time::Duration::from_secs(30), |c| c.window);
            let slow = route.circuit.as_ref().and_then(|c| c.max_p99);
            let window = match old_t {
                Some(o)
                    if o.window.length() == Window::new(window_len, slow).length()
                        && old_slow(old, slow)
                        && !new_role(&t.name) =>
                {
                    o.window.clone()
                }
                _ => Arc::new(Window::new(window_len, slow)),
            };
            let upstream = match old_t {
                Some(o) if o.upstream.same_as(t) => o.upstream.clone(),
                o => Arc::new(Upstream::new(t, o.map(|o| &*o.upstream))),
            };
            // The operator's drains, from the runtime state (`control::drain`).
            for (i, a) in t.instances.iter().enumerate() {
                let drained = crate::control::drain::is_drained(&state, &t.name, a.as_str());
                upstream.set_drained(i, drained);
            }
            Arc::new(TargetEntry {
                route: name.clone(),
                name: t.name.as_str().into(),
                upstream,
                window,
                metrics: metrics.target(&route.name, &t.name),
                grpc_errors: route.grpc_errors,
            })
        })
        .collect::<Vec<_>>();
    let index = |n: &str| route.target_index(n).unwrap_or(0);
    let canary = state
        .canary_target
        .as_deref()
        .filter(|_| state.canary_bp > 0)
        .map(|c| {
            let sticky = route
                .canary
                .as_ref()
                .map_or(crate::config::Sticky::None, |c| c.sticky.clone());
            (index(c), state.canary_bp, sticky)
        });
    let previous_shadow = old.and_then(|r| r.shadow.as_deref());
    let shadow = shadow::build(route, &state.live, &targets, previous_shadow, metrics);
    RouteEntry {
        split: Split::new(&route.name, index(&state.live), canary),
        name,
        targets,
        shadow,
        preview: route.preview.clone(),
        rules: rules::Rules::build(route, metrics),
        circuit: route.circuit.clone(),
        state,
    }
}

fn old_slow(old: Option<&RouteEntry>, slow: Option<std::time::Duration>) -> bool {
    old.and_then(|r| r.circuit.as_ref()).and_then(|c| c.max_p99) == slow
}
