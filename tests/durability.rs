//! Decisions are durable (issue 11, items 5, 7 and 9): an edit that leaves a route's split alone
//! keeps its trip, and a target that takes a new role is judged on a fresh window.
mod support;

use std::path::Path;
use std::sync::Arc;

use flipgate::circuit;
use flipgate::control::Control;

// ---- 5c: the split's own fields decide; a new role starts a fresh window ----

fn control_on(dir: &Path, text: &str) -> Arc<Control> {
    let path = dir.join("flipgate.toml");
    std::fs::write(&path, text).unwrap();
    let config = flipgate::config::Config::load(&path).unwrap();
    Control::new(config, Arc::new(flipgate::metrics::Metrics::new()))
}

fn reload(control: &Control, dir: &Path, text: &str) {
    let path = dir.join("flipgate.toml");
    std::fs::write(&path, text).unwrap();
    match control.reload(flipgate::config::Config::load(&path)) {
        flipgate::control::ReloadOutcome::Applied { .. } => {}
        other => panic!("reload not applied: {other:?}"),
    }
}

fn canary_file(blue: &str, percent: u32) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"state\"\n[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [{blue}]\ngreen = [\"127.0.0.1:9\"]\n[routes.canary]\ntarget = \"green\"\npercent = {percent}\n[routes.circuit]\nwindow = \"30s\"\nmin_requests = 20\nmax_error_rate = 0.05\n"
    )
}

fn record(control: &Control, target: &str, n: u64, error: bool) {
    let snap = control.snapshots().load_full();
    let t = snap
        .route("bot")
        .unwrap()
        .targets
        .iter()
        .find(|t| &*t.name == target)
        .unwrap()
        .clone();
    for _ in 0..n {
        t.window.record(flipgate::clock::now_ms(), error, 1);
    }
}

fn bot_state(control: &Control) -> flipgate::state::RouteState {
    control
        .snapshots()
        .load()
        .route("bot")
        .unwrap()
        .state
        .clone()
}

fn window_requests(control: &Control, target: &str) -> u64 {
    let snap = control.snapshots().load_full();
    let t = snap
        .route("bot")
        .unwrap()
        .targets
        .iter()
        .find(|t| &*t.name == target)
        .unwrap()
        .clone();
    t.window.totals(flipgate::clock::now_ms()).requests
}

#[tokio::test(start_paused = true)]
async fn adding_an_instance_keeps_the_trip() {
    let dir = tempfile::tempdir().unwrap();
    let control = control_on(dir.path(), &canary_file("\"127.0.0.1:9\"", 10));
    record(&control, "green", 20, true);
    assert_eq!(circuit::check_all(&control), 1);
    assert!(bot_state(&control).tripped.is_some());

    // Scaling the live target out is not a new intent for the split.
    reload(
        &control,
        dir.path(),
        &canary_file("\"127.0.0.1:9\", \"127.0.0.1:10\"", 10),
    );
    let s = bot_state(&control);
    assert!(s.tripped.is_some(), "{s:?}");
    assert_eq!(s.canary_bp, 0, "the tripped canary was re-armed: {s:?}");
}

#[tokio::test(start_paused = true)]
async fn a_canary_re_armed_by_the_file_is_judged_on_a_fresh_window() {
    let dir = tempfile::tempdir().unwrap();
    let control = control_on(dir.path(), &canary_file("\"127.0.0.1:9\"", 10));
    record(&control, "green", 20, true);
    assert_eq!(circuit::check_all(&control), 1);

    // The file states a new intent (20 %): the trip is dropped and the canary runs again, judged
    // only on what it does from now on, not on the errors that tripped it.
    reload(&control, dir.path(), &canary_file("\"127.0.0.1:9\"", 20));
    let s = bot_state(&control);
    assert!(s.tripped.is_none());
    assert_eq!(s.canary_bp, 2000);
    assert_eq!(window_requests(&control, "green"), 0);
    assert_eq!(circuit::check_all(&control), 0);
    record(&control, "green", 20, false);
    assert_eq!(circuit::check_all(&control), 0);

    // The file makes green live: it bakes on its own outcomes as live, not its canary-phase ones.
    record(&control, "green", 5, true);
    let flipped =
        canary_file("\"127.0.0.1:9\"", 20).replacen("live = \"blue\"", "live = \"green\"", 1);
    let flipped = flipped.replace("target = \"green\"", "target = \"blue\"");
    reload(&control, dir.path(), &format!("{flipped}bake = \"5m\"\n"));
    assert_eq!(bot_state(&control).live, "green");
    assert_eq!(window_requests(&control, "green"), 0);
}
