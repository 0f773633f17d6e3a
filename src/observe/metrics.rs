//! Prometheus metrics: one registry per process, handles resolved ahead of the request path.
//!
//! Invariants: label values come only from the config (route and target names, fixed status
//! classes and error kinds), never from request data, so cardinality is bounded by the route file.
//! The data path touches only pre-resolved `TargetMetrics` handles (atomic adds, no label lookup,
//! no allocation). Gauges describing the split are written by the control plane at publish time.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::observe::labels::{
    ClientErrorKind, LocalErrorKind, UpstreamErrorKind, ADMIN_REFUSALS, GRPC_CODES,
};

/// Latency buckets for a proxy: 100 µs .. 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Every metric family of the contract (SPEC.md, "Metrics").
pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    client_errors: IntCounterVec,
    local_errors: IntCounterVec,
    grpc: IntCounterVec,
    pub split_percent: prometheus::GaugeVec,
    pub live_target: IntGaugeVec,
    pub circuit_tripped: IntGaugeVec,
    pub rollbacks: IntCounterVec,
    pub flips: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_success: IntGauge,
    /// 1 while the runtime state's store answers (always for the file backend), 0 while a shared
    /// store (etcd) is unreachable.
    pub state_backend_up: IntGauge,
    pub config_generation: IntGauge,
    pub open_tunnels: IntGaugeVec,
    /// Admin requests refused before any handler ran, by `admin::guard::Refusal::reason`.
    pub admin_refusals: IntCounterVec,
    pub state_persist_failures: IntCounter,
    /// `rule_requests_total{route,rule}`: requests each cohort rule matched (handles per rule,
    /// resolved at snapshot build by `rule`).
    rule_requests: IntCounterVec,
    /// `rollout_step{route}`: the canary percent of the running rollout's step (0 when none).
    pub rollout_step: IntGaugeVec,
    /// `rollouts_total{route,result}`: rollouts ended, by result (promoted, rolled_back, aborted).
    pub rollouts: IntCounterVec,
    /// `analysis_evidence{route,kind}`: log10 of the sequential e-value that the candidate is
    /// worse (`control::circuit::analysis`), kinds `errors` and `latency`.
    analysis_evidence: prometheus::GaugeVec,
    /// `shadow_requests_total{route,target,code}`: shadow copies by outcome (`ShadowMetrics`).
    shadow_requests: IntCounterVec,
}

/// What became of a shadow copy (`serve::shadow`): the `code` label of
/// `shadow_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowOutcome {
    /// The shadow target answered, with this status.
    Answered(u16),
    /// No answer: the connection failed or was reset, or no instance passes its health checks.
    Error,
    /// No answer within the shadow's `timeout`.
    Timeout,
    /// Not sent: `max_in_flight` copies were already out, or flipgate's own limits
    /// (`max_upstream_connections`, every instance drained) refused it.
    Dropped,
}

impl ShadowOutcome {
    /// Every `code` label value, in `ShadowMetrics` order.
    pub const LABELS: [&'static str; 8] = [
        "1xx", "2xx", "3xx", "4xx", "5xx", "error", "timeout", "dropped",
    ];

    fn index(self) -> usize {
        match self {
            ShadowOutcome::Answered(status) => class(status),
            ShadowOutcome::Error => 5,
            ShadowOutcome::Timeout => 6,
            ShadowOutcome::Dropped => 7,
        }
    }
}

/// Pre-resolved `shadow_requests_total` handles of one (route, shadow target).
#[derive(Clone)]
pub struct ShadowMetrics([IntCounter; 8]);

impl ShadowMetrics {
    /// Counts one copy's outcome.
    #[inline]
    pub fn record(&self, outcome: ShadowOutcome) {
        self.0[outcome.index()].inc();
    }
}

/// Pre-resolved handles for one (route, target): what the request path records into.
#[derive(Clone)]
pub struct TargetMetrics {
    /// Indexed by status class: 0 = 1xx .. 4 = 5xx.
    requests: [IntCounter; 5],
    duration: Histogram,
    /// Indexed by `UpstreamErrorKind as usize`.
    errors: [IntCounter; 4],
    /// The route's `client_errors_total`, indexed by `ClientErrorKind as usize`.
    client: [IntCounter; ClientErrorKind::ALL.len()],
    /// The route's `local_errors_total`, indexed by `LocalErrorKind as usize`.
    local: [IntCounter; LocalErrorKind::ALL.len()],
    /// gRPC calls by status code (indexed by code).
    grpc: [IntCounter; 17],
    /// Open upgraded tunnels (WebSockets) to this target.
    pub tunnels: IntGauge,
}

impl TargetMetrics {
    /// Records one finished request: its status and time to response headers.
    #[inline]
    pub fn record(&self, status: u16, seconds: f64) {
        self.requests[class(status)].inc();
        self.duration.observe(seconds);
    }

    /// Counts an answer flipgate gave itself before any upstream exchange (413, a 503 of its own
    /// limits) in `requests_total`, without a duration (which measures upstream answers).
    #[inline]
    pub fn answered(&self, status: u16) {
        self.requests[class(status)].inc();
    }

    /// Records an upstream fault against this target.
    #[inline]
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.errors[kind as usize].inc();
    }

    /// Records a gRPC call's status code.
    #[inline]
    pub fn grpc(&self, code: u8) {
        self.grpc[usize::from(code).min(16)].inc();
    }

    /// Records a client-side failure on this target's route (never against the target).
    #[inline]
    pub fn client_error(&self, kind: ClientErrorKind) {
        self.client[kind as usize].inc();
    }

    /// Records a failure of flipgate's own limits or resources on this target's route.
    #[inline]
    pub fn local_error(&self, kind: LocalErrorKind) {
        self.local[kind as usize].inc();
    }
}

/// One target's cumulative counts, as `control::history` samples them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// `requests_total`, all classes.
    pub requests: u64,
    /// `requests_total{code="5xx"}`.
    pub errors: u64,
    /// `request_duration_seconds`: the cumulative count at each bound of `LATENCY_BUCKETS`.
    pub buckets: Vec<u64>,
    /// `request_duration_seconds_count` (the `+Inf` bucket).
    pub observed: u64,
}

impl TargetMetrics {
    /// This target's cumulative counts. Off the request path: atomic loads, and the histogram's
    /// collect lock, which recording never takes (the same read a `/metrics` scrape does).
    pub fn counts(&self) -> Counts {
        use prometheus::core::Metric;
        let m = self.duration.metric();
        let h = m.get_histogram();
        Counts {
            requests: self.requests.iter().map(IntCounter::get).sum(),
            errors: self.requests[4].get(),
            buckets: h
                .get_bucket()
                .iter()
                .map(|b| b.cumulative_count())
                .collect(),
            observed: h.get_sample_count(),
        }
    }
}

/// The index of a status's class: 0 = 1xx .. 4 = 5xx.
#[inline]
fn class(status: u16) -> usize {
    (status / 100).clamp(1, 5) as usize - 1
}

/// Handles for flipgate's own answers that belong to no route, counted under `route=""`: a
/// request no route matches (`client_errors_total{kind="no_route"}`), a bad `Host` (`bad_request`),
/// a head HTTP/1's parser refused (`head_too_large`), a connection over `max_connections`
/// (`local_errors_total{kind="busy"}`). Resolved once, held by every snapshot.
#[derive(Clone)]
pub struct UnroutedMetrics {
    /// `requests_total{route="",target=""}` by status class, as `TargetMetrics::requests`.
    requests: [IntCounter; 5],
    no_route: IntCounter,
    client: [IntCounter; ClientErrorKind::ALL.len()],
    local: [IntCounter; LocalErrorKind::ALL.len()],
}

impl UnroutedMetrics {
    /// Counts an answer in `requests_total{route="",target=""}` by its status class.
    #[inline]
    pub fn answered(&self, status: u16) {
        self.requests[class(status)].inc();
    }

    /// Records a 404: no route for the request's host and path.
    #[inline]
    pub fn no_route(&self) {
        self.no_route.inc();
    }

    #[inline]
    pub fn client_error(&self, kind: ClientErrorKind) {
        self.client[kind as usize].inc();
    }

    #[inline]
    pub fn local_error(&self, kind: LocalErrorKind) {
        self.local[kind as usize].inc();
    }
}

impl Default for UnroutedMetrics {
    /// Handles registered nowhere, for a snapshot built without a registry (`Snapshot::empty`).
    fn default() -> Self {
        let c = || must(IntCounter::new("unregistered", "unregistered"));
        UnroutedMetrics {
            requests: [c(), c(), c(), c(), c()],
            no_route: c(),
            client: ClientErrorKind::ALL.map(|_| c()),
            local: LocalErrorKind::ALL.map(|_| c()),
        }
    }
}

/// Options of a `flipgate_` metric. The namespace is set per family rather than on the registry,
/// so the process collector keeps the usual unprefixed `process_*` names dashboards expect.
fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("flipgate")
}

fn must<T>(r: prometheus::Result<T>) -> T {
    r.expect("static metric definitions are valid")
}

impl Metrics {
    /// Creates and registers every family; also the process collector and build info.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = must(IntCounterVec::new(
            opts(
                "requests_total",
                "Requests served, by route, target and status class.",
            ),
            &["route", "target", "code"],
        ));
        let duration = must(HistogramVec::new(
            HistogramOpts::from(opts(
                "request_duration_seconds",
                "Time from request received to upstream response headers, by route and target.",
            ))
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "target"],
        ));
        let upstream_errors = must(IntCounterVec::new(
            opts(
                "upstream_errors_total",
                "Upstream faults counted against a target.",
            ),
            &["route", "target", "kind"],
        ));
        let client_errors = must(IntCounterVec::new(
            opts(
                "client_errors_total",
                "Requests that failed on the client's side (bad request, body too large, aborted or \
                 stalled body), by route and kind; never counted against a target.",
            ),
            &["route", "kind"],
        ));
        let local_errors = must(IntCounterVec::new(
            opts(
                "local_errors_total",
                "Requests refused by flipgate's own limits or resources (upstream connection limit, \
                 descriptors), by route and kind; never counted against a target.",
            ),
            &["route", "kind"],
        ));
        let grpc = must(IntCounterVec::new(
            opts(
                "grpc_responses_total",
                "gRPC calls answered by the upstream, by route, target and grpc-status code name.",
            ),
            &["route", "target", "code"],
        ));
        let split_percent = must(prometheus::GaugeVec::new(
            opts(
                "split_percent",
                "Share of new requests each target gets now, in percent.",
            ),
            &["route", "target"],
        ));
        let live_target = must(IntGaugeVec::new(
            opts(
                "live_target",
                "1 for the live target of each route, 0 for the others.",
            ),
            &["route", "target"],
        ));
        let circuit_tripped = must(IntGaugeVec::new(
            opts(
                "circuit_tripped",
                "1 while a route is rolled back by its circuit.",
            ),
            &["route"],
        ));
        let rollbacks = must(IntCounterVec::new(
            opts(
                "rollbacks_total",
                "Rollbacks, by route and reason (circuit, sequential, latency, admin, file, rollout).",
            ),
            &["route", "reason"],
        ));
        let rollout_step = must(IntGaugeVec::new(
            opts(
                "rollout_step",
                "Canary percent of the running rollout's current step (0 when none), by route.",
            ),
            &["route"],
        ));
        let rollouts = must(IntCounterVec::new(
            opts(
                "rollouts_total",
                "Rollouts ended, by route and result (promoted, rolled_back, aborted).",
            ),
            &["route", "result"],
        ));
        let analysis_evidence = must(prometheus::GaugeVec::new(
            opts(
                "analysis_evidence",
                "log10 of the sequential test's e-value that the candidate is worse than its reference, by route and kind (errors, latency); the circuit trips at log10(1/false_trip), 0 when nothing is judged.",
            ),
            &["route", "kind"],
        ));
        let flips = must(IntCounterVec::new(
            opts("flips_total", "Changes of the live target, by route."),
            &["route"],
        ));
        let config_reloads = must(IntCounterVec::new(
            opts("config_reloads_total", "Route file reloads, by result."),
            &["result"],
        ));
        let config_last_reload_success = must(IntGauge::with_opts(opts(
            "config_last_reload_success",
            "1 if the last route file reload succeeded.",
        )));
        let state_backend_up = must(IntGauge::with_opts(opts(
            "state_backend_up",
            "1 while the runtime state's store answers (always for the file backend), 0 while the shared store (etcd) is unreachable.",
        )));
        state_backend_up.set(1);
        let config_generation = must(IntGauge::with_opts(opts(
            "config_generation",
            "Generation of the snapshot serving traffic; grows with every published change.",
        )));
        let open_tunnels = must(IntGaugeVec::new(
            opts(
                "open_tunnels",
                "Open upgraded connections (WebSockets), by route and target.",
            ),
            &["route", "target"],
        ));
        let admin_refusals = must(IntCounterVec::new(
            opts(
                "admin_refusals_total",
                "Admin API requests refused, by reason (host, cross_origin, unauthorized, token_unusable, content_type).",
            ),
            &["reason"],
        ));
        let state_persist_failures = must(IntCounter::with_opts(opts(
            "state_persist_failures_total",
            "Failed attempts to write the runtime state file (every retry counts). While it grows, \
             decisions are in force but would not survive a restart.",
        )));
        let rule_requests = must(IntCounterVec::new(
            opts(
                "rule_requests_total",
                "Requests a cohort rule ([[routes.rules]]) sent to its target, by route and rule.",
            ),
            &["route", "rule"],
        ));
        let shadow_requests = must(IntCounterVec::new(
            opts(
                "shadow_requests_total",
                "Shadow copies of live requests ([routes.shadow]), by route, shadow target and \
                 outcome: the status class of the discarded answer, or error, timeout, dropped.",
            ),
            &["route", "target", "code"],
        ));
        let build_info = must(IntGaugeVec::new(
            opts("build_info", "Build information; always 1."),
            &["version"],
        ));
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(client_errors.clone()),
            Box::new(local_errors.clone()),
            Box::new(grpc.clone()),
            Box::new(split_percent.clone()),
            Box::new(live_target.clone()),
            Box::new(circuit_tripped.clone()),
            Box::new(rollbacks.clone()),
            Box::new(flips.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_last_reload_success.clone()),
            Box::new(state_backend_up.clone()),
            Box::new(config_generation.clone()),
            Box::new(open_tunnels.clone()),
            Box::new(admin_refusals.clone()),
            Box::new(state_persist_failures.clone()),
            Box::new(rule_requests.clone()),
            Box::new(rollout_step.clone()),
            Box::new(rollouts.clone()),
            Box::new(analysis_evidence.clone()),
            Box::new(shadow_requests.clone()),
            Box::new(build_info),
        ] {
            must(registry.register(c));
        }
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = registry.register(Box::new(pc));
        }
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
        }
        for reason in ADMIN_REFUSALS {
            admin_refusals.with_label_values(&[reason]);
        }
        Metrics {
            registry,
            requests,
            duration,
            upstream_errors,
            client_errors,
            local_errors,
            grpc,
            split_percent,
            live_target,
            circuit_tripped,
            rollbacks,
            flips,
            config_reloads,
            config_last_reload_success,
            state_backend_up,
            config_generation,
            open_tunnels,
            admin_refusals,
            state_persist_failures,
            rule_requests,
            rollout_step,
            rollouts,
            analysis_evidence,
            shadow_requests,
        }
    }

    /// The pre-resolved `shadow_requests_total` handles of a route's shadow target; called when a
    /// snapshot is built (the series exist from then on, at 0).
    pub fn shadow(&self, route: &str, target: &str) -> ShadowMetrics {
        ShadowMetrics(ShadowOutcome::LABELS.map(|code| {
            self.shadow_requests
                .with_label_values(&[route, target, code])
        }))
    }

    /// Sets `analysis_evidence{route,kind}` (log10 e-values) for a route with a circuit.
    pub fn analysis_evidence(&self, route: &str, errors: f64, latency: f64) {
        self.analysis_evidence
            .with_label_values(&[route, "errors"])
            .set(errors);
        self.analysis_evidence
            .with_label_values(&[route, "latency"])
            .set(latency);
    }

    /// The pre-resolved `rule_requests_total` handle of one rule; called when a snapshot is built
    /// (the series exists from then on, at 0).
    pub fn rule(&self, route: &str, rule: &str) -> IntCounter {
        self.rule_requests.with_label_values(&[route, rule])
    }

    /// Forgets the series of a rule that left the config.
    pub fn forget_rule(&self, route: &str, rule: &str) {
        let _ = self.rule_requests.remove_label_values(&[route, rule]);
    }

    /// Resolves the handles of one (route, target); called when a snapshot is built. Also creates
    /// the route's flip and rollback series at 0, so `increase()` sees their first change.
    pub fn target(&self, route: &str, target: &str) -> TargetMetrics {
        self.flips.with_label_values(&[route]);
        for reason in [
            "circuit",
            "sequential",
            "latency",
            "admin",
            "file",
            "rollout",
        ] {
            self.rollbacks.with_label_values(&[route, reason]);
        }
        for result in ["promoted", "rolled_back", "aborted"] {
            self.rollouts.with_label_values(&[route, result]);
        }
        self.rollout_step.with_label_values(&[route]);
        let req = |code| self.requests.with_label_values(&[route, target, code]);
        let err = |kind| {
            self.upstream_errors
                .with_label_values(&[route, target, kind])
        };
        TargetMetrics {
            requests: [req("1xx"), req("2xx"), req("3xx"), req("4xx"), req("5xx")],
            duration: self.duration.with_label_values(&[route, target]),
            errors: [
                err("connect"),
                err("timeout"),
                err("reset"),
                err("status_5xx"),
            ],
            client: ClientErrorKind::ALL
                .map(|k| self.client_errors.with_label_values(&[route, k.label()])),
            local: LocalErrorKind::ALL
                .map(|k| self.local_errors.with_label_values(&[route, k.label()])),
            grpc: GRPC_CODES.map(|code| self.grpc.with_label_values(&[route, target, code])),
            tunnels: self.open_tunnels.with_label_values(&[route, target]),
        }
    }

    /// The `route=""` handles (`UnroutedMetrics`); the series exist from the start at 0.
    pub fn unrouted(&self) -> UnroutedMetrics {
        let req = |code| self.requests.with_label_values(&["", "", code]);
        UnroutedMetrics {
            requests: [req("1xx"), req("2xx"), req("3xx"), req("4xx"), req("5xx")],
            no_route: self.client_errors.with_label_values(&["", "no_route"]),
            client: ClientErrorKind::ALL
                .map(|k| self.client_errors.with_label_values(&["", k.label()])),
            local: LocalErrorKind::ALL
                .map(|k| self.local_errors.with_label_values(&["", k.label()])),
        }
    }

    /// Forgets the series of a (route, target) that left the config, so dashboards do not show
    /// ghosts. Counters restart from zero if it comes back, which Prometheus handles as a reset.
    pub fn forget_target(&self, route: &str, target: &str) {
        for code in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
            let _ = self.requests.remove_label_values(&[route, target, code]);
        }
        for kind in ["connect", "timeout", "reset", "status_5xx"] {
            let _ = self
                .upstream_errors
                .remove_label_values(&[route, target, kind]);
        }
        for code in GRPC_CODES {
            let _ = self.grpc.remove_label_values(&[route, target, code]);
        }
        for code in ShadowOutcome::LABELS {
            let _ = self
                .shadow_requests
                .remove_label_values(&[route, target, code]);
        }
        let _ = self.duration.remove_label_values(&[route, target]);
        let _ = self.split_percent.remove_label_values(&[route, target]);
        let _ = self.live_target.remove_label_values(&[route, target]);
        let _ = self.open_tunnels.remove_label_values(&[route, target]);
    }

    /// Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::with_capacity(16 * 1024);
        let encoder = prometheus::TextEncoder::new();
        let _ = encoder.encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
