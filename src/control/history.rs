//! The recent past of every target, for the status page's charts and `flipgate status --watch`:
//! request rate, error rate and p99 latency per sample interval (5 s), the last `POINTS` (180, so
//! 15 minutes), with the control plane's events in that time as markers.
//!
//! Invariants:
//! - Bounded: one shared time axis and, per (route, target), one ring of at most `POINTS` points;
//!   the oldest point is dropped first. A route or target that leaves the snapshot (a reload) is
//!   dropped at the next sample; a new one starts empty (its first sample is only a baseline).
//! - Nothing here runs on, or is written by, the request path. The sampling task reads what the
//!   request path already counts: the per-target Prometheus handles (`TargetMetrics::counts`:
//!   atomic loads, and the histogram's collect lock, which recording never takes). A point is the
//!   difference between two samples: requests per second, the 5xx share of those requests, and
//!   the p99 estimated from the difference of the cumulative latency buckets. The history's own
//!   lock is taken only by the sampling task and by API reads.
//! - The task wakes once per interval while the snapshot has routes, else only when a new one is
//!   published (`control::wake`), and stops on shutdown.
//! - Markers are read from `control::events` when the history is viewed, never copied: they are
//!   the events of the route (and route file reloads) within `POINTS` intervals of the newest
//!   point.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::control::events::Event;
use crate::control::wake::{self, Wake};
use crate::control::{unix_ms, Control};
use crate::observe::metrics::{Counts, LATENCY_BUCKETS};

/// Points kept per target (and on the time axis).
pub const POINTS: usize = 180;
/// The sample interval: `POINTS` of it make 15 minutes.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Overrides `INTERVAL` in milliseconds (at least 10), for tests that cannot wait 5 s a point.
pub const INTERVAL_ENV: &str = "FLIPGATE_HISTORY_INTERVAL_MS";

/// The event kinds marked on the time axis (`rollout` covers a rollout's start, each step, its
/// waits for traffic, pauses and end: `control::rollout` pushes them all under that kind).
const MARKED: &[&str] = &[
    "flip",
    "promote",
    "canary",
    "rollback",
    "trip",
    "reset",
    "reload",
    "reload_rejected",
    "rollout",
];

/// The sample interval in force: `INTERVAL`, or `INTERVAL_ENV` when set to a number of
/// milliseconds of at least 10.
pub fn interval_from_env() -> Duration {
    std::env::var(INTERVAL_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms >= 10)
        .map_or(INTERVAL, Duration::from_millis)
}

/// At most `cap` values, oldest dropped first; allocated once.
#[derive(Debug)]
pub struct Ring<T> {
    buf: VecDeque<T>,
    cap: usize,
}

impl<T> Ring<T> {
    pub fn new(cap: usize) -> Ring<T> {
        Ring {
            buf: VecDeque::with_capacity(cap),
            cap,
        }
    }

    pub fn push(&mut self, v: T) {
        if self.buf.len() == self.cap {
            self.buf.pop_front();
        }
        self.buf.push_back(v);
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.buf.iter()
    }
}

/// One sample interval of one target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Requests per second.
    pub rate: f64,
    /// Share of the interval's requests answered 5xx; `None` without requests.
    pub error_rate: Option<f64>,
    /// Estimated p99 time to the response head, in milliseconds; `None` without requests.
    pub p99_ms: Option<f64>,
}

/// The point between two samples of one target `elapsed` apart. Counters that went backwards
/// (a reload removed the target's series and the next one made them again, between two samples)
/// count from zero, as Prometheus' `rate` does.
pub fn point(before: &Counts, after: &Counts, elapsed: Duration) -> Point {
    let zero = Counts::default();
    let before = if after.requests < before.requests || after.observed < before.observed {
        &zero
    } else {
        before
    };
    let requests = after.requests.saturating_sub(before.requests);
    let errors = after.errors.saturating_sub(before.errors);
    let secs = elapsed.as_secs_f64();
    let buckets: Vec<u64> = after
        .buckets
        .iter()
        .enumerate()
        .map(|(i, a)| a.saturating_sub(before.buckets.get(i).copied().unwrap_or(0)))
        .collect();
    let observed = after.observed.saturating_sub(before.observed);
    Point {
        rate: if secs > 0.0 {
            requests as f64 / secs
        } else {
            0.0
        },
        error_rate: (requests > 0).then(|| (errors.min(requests)) as f64 / requests as f64),
        p99_ms: quantile(0.99, LATENCY_BUCKETS, &buckets, observed).map(|s| s * 1000.0),
    }
}

/// The `q` quantile of observations counted in cumulative `buckets` (one per upper bound in
/// `bounds`, `total` with the `+Inf` bucket), interpolated linearly inside its bucket as
/// Prometheus' `histogram_quantile` does; the largest bound when it falls in `+Inf`; `None` when
/// nothing was observed.
pub fn quantile(q: f64, bounds: &[f64], buckets: &[u64], total: u64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (&upper, &cumulative) in bounds.iter().zip(buckets) {
        if cumulative as f64 >= rank && cumulative > below {
            let inside = (cumulative - below) as f64;
            return Some(lower + (upper - lower) * (rank - below as f64) / inside);
        }
        below = below.max(cumulative);
        lower = upper;
    }
    bounds.last().copied()
}

struct Series {
    name: Arc<str>,
    last: Counts,
    points: Ring<Point>,
}

struct RouteSeries {
    name: Arc<str>,
    targets: Vec<Series>,
}

struct Inner {
    /// Unix milliseconds at the end of each point's interval.
    times: Ring<u64>,
    last_sample: Option<Instant>,
    routes: Vec<RouteSeries>,
}

/// Every target's recent points (see the module doc).
pub struct History {
    interval: Duration,
    inner: Mutex<Inner>,
}

/// One sample: per route, per target, its counts, in snapshot order.
pub type Sample = Vec<(Arc<str>, Vec<(Arc<str>, Counts)>)>;

impl History {
    pub fn new(interval: Duration) -> History {
        History {
            interval,
            inner: Mutex::new(Inner {
                times: Ring::new(POINTS),
                last_sample: None,
                routes: Vec::new(),
            }),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Takes in one sample taken at `at` (`now_unix_ms` on the wall clock): a point for every
    /// target that was in the previous sample, a baseline for a new one; routes and targets not
    /// in `sample` are dropped.
    pub fn record(&self, at: Instant, now_unix_ms: u64, sample: Sample) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = inner.last_sample.map(|l| at.saturating_duration_since(l));
        inner.last_sample = Some(at);
        if elapsed.is_some() {
            inner.times.push(now_unix_ms);
        }
        let mut old = std::mem::take(&mut inner.routes);
        inner.routes = sample
            .into_iter()
            .map(|(route, targets)| {
                let mut was = old
                    .iter()
                    .position(|r| r.name == route)
                    .map(|i| old.swap_remove(i));
                let targets = targets
                    .into_iter()
                    .map(|(name, counts)| {
                        let prev = was.as_mut().and_then(|r| {
                            r.targets
                                .iter()
                                .position(|t| t.name == name)
                                .map(|i| r.targets.swap_remove(i))
                        });
                        match (prev, elapsed) {
                            (Some(mut s), Some(elapsed)) => {
                                s.points.push(point(&s.last, &counts, elapsed));
                                s.last = counts;
                                s
                            }
                            _ => Series {
                                name,
                                last: counts,
                                points: Ring::new(POINTS),
                            },
                        }
                    })
                    .collect();
                RouteSeries {
                    name: route,
                    targets,
                }
            })
            .collect();
    }

    /// The history as the API serves it, with `events` in its time span as markers.
    pub fn view(&self, events: &[Event]) -> HistoryView {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let t: Vec<u64> = inner.times.iter().copied().collect();
        // The whole span the axis covers.
        let span = u64::try_from((self.interval * POINTS as u32).as_millis()).unwrap_or(u64::MAX);
        let since = t
            .last()
            .copied()
            .unwrap_or_else(unix_ms)
            .saturating_sub(span);
        let pad = |s: &Series, f: fn(&Point) -> Option<f64>| -> Vec<Option<f64>> {
            std::iter::repeat_n(None, t.len().saturating_sub(s.points.len()))
                .chain(s.points.iter().map(f))
                .collect()
        };
        HistoryView {
            interval_ms: u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX),
            capacity: POINTS,
            routes: inner
                .routes
                .iter()
                .map(|r| RouteHistory {
                    name: r.name.to_string(),
                    targets: r
                        .targets
                        .iter()
                        .map(|s| TargetHistory {
                            name: s.name.to_string(),
                            rate: pad(s, |p| Some(round(p.rate, 1e3))),
                            error_rate: pad(s, |p| p.error_rate.map(|e| round(e, 1e5))),
                            p99_ms: pad(s, |p| p.p99_ms.map(|l| round(l, 1e2))),
                        })
                        .collect(),
                    markers: events
                        .iter()
                        .filter(|e| e.at_ms >= since)
                        .filter(|e| MARKED.contains(&e.kind))
                        .filter(|e| match &e.route {
                            Some(route) => route.as_str() == &*r.name,
                            None => e.kind.starts_with("reload"),
                        })
                        .map(|e| Marker {
                            at_ms: e.at_ms,
                            kind: e.kind.to_string(),
                            message: e.message.clone(),
                        })
                        .collect(),
                })
                .collect(),
            t,
        }
    }
}

/// `v` to the nearest `1 / per` (the API's figures need no more digits than a chart shows).
fn round(v: f64, per: f64) -> f64 {
    (v * per).round() / per
}

/// `GET /api/v1/history`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryView {
    /// The sample interval: each point covers this much time.
    pub interval_ms: u64,
    /// The most points kept.
    pub capacity: usize,
    /// Unix milliseconds at the end of each point, oldest first.
    pub t: Vec<u64>,
    pub routes: Vec<RouteHistory>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteHistory {
    pub name: String,
    pub targets: Vec<TargetHistory>,
    /// Events on the route (and route file reloads) in the span the axis covers (`capacity`
    /// points back from the newest), oldest first.
    pub markers: Vec<Marker>,
}

/// One target's points, aligned with `HistoryView::t` (`null` where it has none: before it
/// existed, or an interval without requests for the error rate and p99).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetHistory {
    pub name: String,
    /// Requests per second.
    pub rate: Vec<Option<f64>>,
    /// 5xx share of the interval's requests, 0..1.
    pub error_rate: Vec<Option<f64>>,
    /// Estimated p99 time to the response head, ms.
    pub p99_ms: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The event's kind (`flip`, `trip`, `reload`, `rollout`, ...).
    pub kind: String,
    pub message: String,
}

/// The sampling task (see the module doc).
pub async fn run(control: Arc<Control>, mut shutdown: watch::Receiver<bool>) {
    let history = control.history.clone();
    let mut tick = tokio::time::interval(history.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published = control.published();
    loop {
        let any = || !control.snapshots().load().routes.is_empty();
        match wake::next(&mut tick, &mut published, &mut shutdown, any).await {
            Wake::Stop => return,
            Wake::Changed => continue,
            Wake::Tick => {}
        }
        let snap = control.snapshots().load_full();
        let sample: Sample = snap
            .routes
            .iter()
            .map(|r| {
                let targets = r
                    .targets
                    .iter()
                    .map(|t| (t.name.clone(), t.metrics.counts()))
                    .collect();
                (r.name.clone(), targets)
            })
            .collect();
        // tokio's clock, so a test on a paused clock measures its own intervals.
        history.record(tokio::time::Instant::now().into_std(), unix_ms(), sample);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_cap_values() {
        let mut r = Ring::new(3);
        assert!(r.is_empty());
        for i in 0..10 {
            r.push(i);
            assert!(r.len() <= 3);
        }
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), [7, 8, 9]);
        assert_eq!(r.buf.capacity(), Ring::<i32>::new(3).buf.capacity());
    }

    fn counts(requests: u64, errors: u64, latencies_ms: &[f64]) -> Counts {
        let buckets = LATENCY_BUCKETS
            .iter()
            .map(|b| latencies_ms.iter().filter(|l| **l / 1000.0 <= *b).count() as u64)
            .collect();
        Counts {
            requests,
            errors,
            buckets,
            observed: latencies_ms.len() as u64,
        }
    }

    #[test]
    fn quantile_interpolates_inside_the_bucket() {
        // 100 observations, all in (5 ms, 10 ms]: p99 is 99 % of the way through that bucket.
        let c = counts(100, 0, &[7.0; 100]);
        let p = quantile(0.99, LATENCY_BUCKETS, &c.buckets, c.observed).unwrap();
        assert!((p - (0.005 + 0.005 * 0.99)).abs() < 1e-12, "{p}");
        // None observed: no estimate. All beyond the last bound: the last bound.
        assert_eq!(quantile(0.99, LATENCY_BUCKETS, &c.buckets, 0), None);
        let slow = counts(10, 0, &[60_000.0; 10]);
        assert_eq!(
            quantile(0.99, LATENCY_BUCKETS, &slow.buckets, slow.observed),
            Some(10.0)
        );
    }

    #[test]
    fn a_point_is_the_difference_of_two_samples() {
        // Before: 1000 fast requests. In the interval: 98 at ~1 ms and 2 at ~300 ms, 5 errors.
        let fast = vec![0.8; 1000];
        let before = counts(1000, 0, &fast);
        let mut during = fast.clone();
        during.extend(std::iter::repeat_n(0.8, 98));
        during.extend([300.0, 300.0]);
        let after = counts(1100, 5, &during);
        let p = point(&before, &after, Duration::from_secs(5));
        assert_eq!(p.rate, 20.0);
        assert_eq!(p.error_rate, Some(0.05));
        // p99 of the interval lies in the (250 ms, 500 ms] bucket: the old fast requests do not
        // pull it down.
        let p99 = p.p99_ms.unwrap();
        assert!((250.0..=500.0).contains(&p99), "{p99}");
        // Counters made again from zero: the new counts are the interval's.
        let again = counts(30, 3, &[0.8; 30]);
        let p = point(&after, &again, Duration::from_secs(5));
        assert_eq!((p.rate, p.error_rate), (6.0, Some(0.1)));
        assert!(p.p99_ms.unwrap() <= 1.0);
        // An interval without requests: rate 0, no error rate, no p99.
        let idle = point(&after, &after, Duration::from_secs(5));
        assert_eq!(
            idle,
            Point {
                rate: 0.0,
                error_rate: None,
                p99_ms: None
            }
        );
    }

    fn sample(routes: &[(&str, &[(&str, u64)])]) -> Sample {
        routes
            .iter()
            .map(|(r, ts)| {
                (
                    Arc::from(*r),
                    ts.iter()
                        .map(|(t, n)| (Arc::from(*t), counts(*n, 0, &vec![1.0; *n as usize])))
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn targets_come_and_go_with_the_snapshot_and_points_stay_bounded() {
        let h = History::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let at = |i: u32| t0 + Duration::from_secs(5) * i;
        h.record(at(0), 0, sample(&[("web", &[("blue", 0)])]));
        let v = h.view(&[]);
        assert!(v.t.is_empty() && v.routes[0].targets[0].rate.is_empty());
        h.record(at(1), 5_000, sample(&[("web", &[("blue", 50)])]));
        // green appears: a baseline only, padded to the axis.
        h.record(
            at(2),
            10_000,
            sample(&[("web", &[("blue", 100), ("green", 7)])]),
        );
        h.record(
            at(3),
            15_000,
            sample(&[("web", &[("blue", 100), ("green", 17)])]),
        );
        let v = h.view(&[]);
        assert_eq!(v.t, [5_000, 10_000, 15_000]);
        let web = &v.routes[0];
        assert_eq!(web.targets[0].rate, [Some(10.0), Some(10.0), Some(0.0)]);
        assert_eq!(web.targets[1].rate, [None, None, Some(2.0)]);
        assert_eq!(web.targets[0].error_rate[2], None);
        // green and the route `web` leave, `api` arrives.
        h.record(at(4), 20_000, sample(&[("api", &[("a", 1)])]));
        let v = h.view(&[]);
        assert_eq!(v.routes.len(), 1);
        assert_eq!(v.routes[0].name, "api");
        assert_eq!(v.routes[0].targets[0].rate, [None, None, None, None]);
        // Bounded: after many samples, POINTS points.
        for i in 5..(POINTS as u32 + 50) {
            h.record(
                at(i),
                u64::from(i) * 5_000,
                sample(&[("api", &[("a", u64::from(i))])]),
            );
        }
        let v = h.view(&[]);
        assert_eq!(v.t.len(), POINTS);
        assert_eq!(v.routes[0].targets[0].rate.len(), POINTS);
        assert_eq!(v.routes[0].targets[0].rate[POINTS - 1], Some(0.2));
    }

    #[test]
    fn markers_are_the_routes_events_and_reloads_in_the_span() {
        let h = History::new(Duration::from_secs(5));
        let t0 = Instant::now();
        h.record(t0, 1_000_000, sample(&[("web", &[("blue", 0)])]));
        h.record(
            t0 + Duration::from_secs(5),
            1_005_000,
            sample(&[("web", &[("blue", 0)])]),
        );
        let ev = |at: u64, kind: &'static str, route: Option<&str>| Event {
            at,
            at_ms: at * 1000,
            kind,
            route: route.map(str::to_string),
            message: format!("{kind} at {at}"),
        };
        let events = [
            ev(104, "flip", Some("web")), // before the span (15 minutes back from 1005 s)
            ev(105, "flip", Some("web")), // in it (the axis covers 15 minutes)
            ev(1002, "trip", Some("api")), // another route
            ev(1003, "reload", None),     // a reload: every route
            ev(1004, "persisted", None),  // not a marker
            ev(1004, "rollout", Some("web")),
        ];
        let v = h.view(&events);
        let kinds: Vec<(u64, &str)> = v.routes[0]
            .markers
            .iter()
            .map(|m| (m.at_ms, m.kind.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                (105_000, "flip"),
                (1_003_000, "reload"),
                (1_004_000, "rollout")
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_samples_once_per_interval_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flipgate.toml");
        std::fs::write(
            &path,
            "[admin]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"state\"\n[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:9\"]\n",
        )
        .unwrap();
        let config = crate::config::Config::load(&path).unwrap();
        let metrics = Arc::new(crate::observe::metrics::Metrics::new());
        let control = Control::new(config, metrics).unwrap();
        assert_eq!(control.history.interval(), INTERVAL);
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(run(control.clone(), rx));
        // The first sample (a baseline) is taken at once; 50 requests follow in the first interval.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let snap = control.snapshots().load_full();
        let blue = &snap.route("bot").unwrap().targets[0];
        for _ in 0..50 {
            blue.metrics.record(200, 0.003);
        }
        // A minute of (virtual) time: twelve points, no more.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let v = control.history.view(&[]);
        assert_eq!(v.t.len(), 12);
        let rate = &v.routes[0].targets[0].rate;
        assert_eq!(rate[0], Some(10.0));
        assert!(rate[1..].iter().all(|r| *r == Some(0.0)), "{rate:?}");
        let p99 = v.routes[0].targets[0].p99_ms[0].unwrap();
        assert!((2.5..=5.0).contains(&p99), "{p99}");
        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("stops on shutdown")
            .unwrap();
    }
}
