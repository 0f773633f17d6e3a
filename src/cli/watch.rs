//! `flipgate status --watch`: the status page's charts in a terminal, as sparklines.
//!
//! Invariants: reads only `GET /api/v1/history` (like every client command, it talks to the admin
//! API alone). Redraws every `EVERY`: on a terminal in place (cursor home, clear), otherwise as
//! plain blocks one after another (a log or a pipe keeps every frame). Ends on Ctrl-C (exit 0),
//! after `--count` frames, or on the first failed call (exit 1). Each sparkline covers the whole
//! history: a column is the largest value of its share of the points, scaled to the line's own
//! largest; the newest point is on the right, columns without data are blank.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use super::{call, AdminArgs, Failure};
use crate::control::history::{HistoryView, RouteHistory};

/// How often the view is redrawn.
const EVERY: Duration = Duration::from_secs(2);
/// Columns per sparkline.
pub const WIDTH: usize = 30;
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// Runs the watch until Ctrl-C or `count` frames; `route` limits it to one route.
pub async fn run(
    admin: &AdminArgs,
    route: Option<&str>,
    count: Option<u64>,
) -> Result<(), Failure> {
    let tty = std::io::stdout().is_terminal();
    let mut frames = 0u64;
    // One listener for the whole watch: a Ctrl-C during a call ends it as well as one between.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let bytes = tokio::select! {
            r = call(admin, http::Method::GET, "/api/v1/history", None) => r?,
            _ = &mut ctrl_c => {
                println!();
                return Ok(());
            }
        };
        let h: HistoryView = serde_json::from_slice(&bytes)
            .map_err(|e| Failure(format!("unexpected answer: {e}")))?;
        if let Some(r) = route {
            if !h.routes.iter().any(|x| x.name == r) {
                return Err(Failure(format!("unknown route `{r}`")));
            }
        }
        let text = frame(&h, route, crate::control::unix_ms(), &admin.admin);
        let mut out = std::io::stdout().lock();
        let _ = if tty {
            write!(out, "\x1b[H\x1b[2J{text}")
        } else {
            writeln!(out, "{text}")
        };
        let _ = out.flush();
        frames += 1;
        if count.is_some_and(|c| frames >= c) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = &mut ctrl_c => {
                println!();
                return Ok(());
            }
        }
    }
}

/// One frame: per route, a line per target with its rate, error rate and p99 sparklines and
/// latest values, a line marking events under them, and the latest few events.
pub fn frame(h: &HistoryView, only: Option<&str>, now_unix_ms: u64, admin: &str) -> String {
    let span = h.interval_ms * h.capacity as u64;
    let mut out = format!(
        "flipgate {admin}: last {}, a point every {}, redrawn every {}s (Ctrl-C to quit)\n",
        humantime::format_duration(Duration::from_millis(span)),
        humantime::format_duration(Duration::from_millis(h.interval_ms)),
        EVERY.as_secs()
    );
    for r in h.routes.iter().filter(|r| only.is_none_or(|o| o == r.name)) {
        out.push('\n');
        out.push_str(&route_block(h, r, now_unix_ms));
    }
    if h.routes.is_empty() {
        out.push_str("no routes\n");
    }
    out
}

fn route_block(h: &HistoryView, r: &RouteHistory, now_unix_ms: u64) -> String {
    let name_w = r
        .targets
        .iter()
        .map(|t| t.name.chars().count())
        .chain([6])
        .max()
        .unwrap_or(6);
    let col = |title: &str| format!("{title:<w$}", w = WIDTH + 10);
    let mut out = format!(
        "{}\n  {:<name_w$}  {}{}{}\n",
        r.name,
        "TARGET",
        col("REQ/S"),
        col("ERRORS"),
        "P99"
    );
    if h.t.is_empty() {
        out.push_str("  collecting: the first point comes after one interval\n");
        return out;
    }
    for t in &r.targets {
        let rate = last(&t.rate).map_or("-".into(), |v| format!("{v:.1}"));
        let errors = last(&t.error_rate).map_or("-".into(), |v| format!("{:.1}%", v * 100.0));
        let p99 = last(&t.p99_ms).map_or("-".into(), |v| format!("{v:.0}ms"));
        out.push_str(&format!(
            "  {:<name_w$}  {} {rate:<8} {} {errors:<8} {} {p99}\n",
            t.name,
            sparkline(&t.rate, WIDTH),
            sparkline(&t.error_rate, WIDTH),
            sparkline(&t.p99_ms, WIDTH),
        ));
    }
    if !r.markers.is_empty() {
        let marks = marker_line(&h.t, h.interval_ms, r.markers.iter().map(|m| m.at_ms));
        out.push_str(&format!(
            "  {:<name_w$}  {marks}          {marks}          {marks}\n",
            "events"
        ));
        for m in r.markers.iter().rev().take(3) {
            let ago = now_unix_ms.saturating_sub(m.at_ms) / 1000;
            out.push_str(&format!(
                "    {:>5} ago  {}: {}\n",
                humantime::format_duration(Duration::from_secs(ago)).to_string(),
                m.kind,
                m.message
            ));
        }
    }
    out
}

fn last(values: &[Option<f64>]) -> Option<f64> {
    values.iter().rev().find_map(|v| *v)
}

/// The columns `len` points take in a line of `width`: one each, right-aligned, when they fit,
/// else `width` shares of them.
fn column(i: usize, len: usize, width: usize) -> usize {
    if len <= width {
        width - len + i
    } else {
        i * width / len
    }
}

/// `values` as a line of `width` bars (see the module doc).
pub fn sparkline(values: &[Option<f64>], width: usize) -> String {
    let mut cols: Vec<Option<f64>> = vec![None; width];
    for (i, v) in values.iter().enumerate() {
        if let Some(v) = v {
            let c = &mut cols[column(i, values.len(), width)];
            *c = Some(c.map_or(*v, |x| x.max(*v)));
        }
    }
    let max = cols.iter().flatten().fold(0.0f64, |a, b| a.max(*b));
    cols.iter()
        .map(|c| match c {
            None => ' ',
            Some(_) if max <= 0.0 => BARS[0],
            Some(v) => BARS[((v / max) * 7.0).round().clamp(0.0, 7.0) as usize],
        })
        .collect()
}

/// A line of `WIDTH` with `^` under the column of each marker (the point whose interval holds it;
/// the column before the first point for an earlier one).
fn marker_line(t: &[u64], interval_ms: u64, at: impl Iterator<Item = u64>) -> String {
    let mut line = vec![' '; WIDTH];
    for a in at {
        let Some(first) = t.first() else { break };
        let col = if a + interval_ms < *first {
            // Before the first point (the history is younger than the span): just left of it.
            column(0, t.len(), WIDTH).saturating_sub(1)
        } else {
            column(
                t.iter().position(|x| *x >= a).unwrap_or(t.len() - 1),
                t.len(),
                WIDTH,
            )
        };
        line[col] = '^';
    }
    line.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_to_their_own_largest_value() {
        let v: Vec<Option<f64>> = [0.0, 1.0, 2.0, 4.0, 8.0].into_iter().map(Some).collect();
        assert_eq!(sparkline(&v, 5), "▁▂▃▅█");
        // Right-aligned, gaps blank, all-zero flat.
        assert_eq!(sparkline(&[None, Some(0.0), Some(0.0)], 5), "   ▁▁");
        // More points than columns: the largest of each share.
        let many: Vec<Option<f64>> = (0..60).map(|i| Some(f64::from(i % 2))).collect();
        assert_eq!(sparkline(&many, 3), "███");
        assert_eq!(sparkline(&[], 3), "   ");
    }

    #[test]
    fn markers_fall_under_their_point() {
        let t = [10_000, 15_000, 20_000];
        let line = marker_line(&t, 5_000, [12_000, 20_000].into_iter());
        assert_eq!(line.len(), WIDTH);
        let cols: Vec<usize> = line
            .chars()
            .enumerate()
            .filter(|(_, c)| *c == '^')
            .map(|(i, _)| i)
            .collect();
        assert_eq!(cols, [WIDTH - 2, WIDTH - 1]);
        // Before the first point: the column left of it.
        let line = marker_line(&t, 5_000, [1_000].into_iter());
        assert_eq!(line.find('^'), Some(WIDTH - 4));
    }
}
