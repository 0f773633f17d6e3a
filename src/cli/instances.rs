//! The deploy-script commands for single instances: `drain`, `undrain` and `wait-drained`.
//!
//! Invariants: they only talk to the admin API (`POST .../instances/{addr}/{drain,undrain}`,
//! `GET /api/v1/routes/{name}`), like every client command. `wait-drained` polls at a fixed,
//! bounded interval (`POLL`) until the instance reports `drained` (drained, nothing in flight):
//! exit 0; it fails at once (exit 1) when the instance is not drained at all (someone undrained
//! it, or it was never drained: waiting could never end well) and when `--timeout` passes.

use std::time::Duration;

use clap::Args;

use super::{call, encode, AdminArgs, Failure};
use crate::admin::instances::InstanceView;
use crate::admin::view::RouteView;

/// How often `wait-drained` asks.
const POLL: Duration = Duration::from_millis(200);

/// ROUTE TARGET ADDR.
#[derive(Args, Debug)]
pub struct InstanceArgs {
    pub route: String,
    pub target: String,
    /// The instance's `host:port`, as the route file lists it.
    pub addr: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// ROUTE TARGET ADDR [--timeout 60s].
#[derive(Args, Debug)]
pub struct WaitArgs {
    #[command(flatten)]
    pub instance: InstanceArgs,
    /// Give up (exit 1) after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// The instance `a` names in a route view.
fn find(view: &RouteView, a: &InstanceArgs) -> Result<InstanceView, Failure> {
    let t = view
        .targets
        .iter()
        .find(|t| t.name == a.target)
        .ok_or_else(|| Failure(format!("route `{}` has no target `{}`", a.route, a.target)))?;
    t.instance_status
        .iter()
        .find(|i| i.addr == a.addr)
        .cloned()
        .ok_or_else(|| {
            Failure(format!(
                "target `{}` of route `{}` has no instance `{}`",
                a.target, a.route, a.addr
            ))
        })
}

fn line(a: &InstanceArgs, i: &InstanceView) -> String {
    format!(
        "{}/{} {}: {} ({} in flight)\n",
        a.route, a.target, a.addr, i.state, i.in_flight
    )
}

/// `drain` / `undrain`: prints the instance's state after the change.
pub async fn drain(a: InstanceArgs, drain: bool) -> Result<String, Failure> {
    let verb = if drain { "drain" } else { "undrain" };
    let path = format!(
        "/api/v1/routes/{}/targets/{}/instances/{}/{verb}",
        encode(&a.route),
        encode(&a.target),
        encode(&a.addr)
    );
    let bytes = call(&a.admin, http::Method::POST, &path, None).await?;
    let view: RouteView =
        serde_json::from_slice(&bytes).map_err(|e| Failure(format!("unexpected answer: {e}")))?;
    Ok(line(&a, &find(&view, &a)?))
}

/// `wait-drained`: see the module doc.
pub async fn wait_drained(w: WaitArgs) -> Result<String, Failure> {
    let a = &w.instance;
    let path = format!("/api/v1/routes/{}", encode(&a.route));
    let deadline = tokio::time::Instant::now() + w.timeout;
    loop {
        let bytes = call(&a.admin, http::Method::GET, &path, None).await?;
        let view: RouteView = serde_json::from_slice(&bytes)
            .map_err(|e| Failure(format!("unexpected answer: {e}")))?;
        let i = find(&view, a)?;
        match i.state.as_str() {
            "drained" => return Ok(line(a, &i)),
            "draining" => {}
            other => {
                return Err(Failure(format!(
                    "{}/{} {} is not drained (state {other}); run `flipgate drain {} {} {}` first",
                    a.route, a.target, a.addr, a.route, a.target, a.addr
                )))
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(Failure(format!(
                "{}/{} {} still has {} in flight after {}",
                a.route,
                a.target,
                a.addr,
                i.in_flight,
                humantime::format_duration(w.timeout)
            )));
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}
