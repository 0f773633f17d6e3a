//! Operator drain of single instances (`drain` / `undrain` from a deploy script), as part of a
//! route's runtime state.
//!
//! Invariants: drains live in `RouteState::drained` (target name -> instance addresses), so they
//! are published, persisted, restored and followed with the rest of the route's runtime state.
//! They name only instances the route file lists: a drain of anything else is refused (`422`), and
//! when a reload removes an instance (or its target) its drain goes with it (`prune`); an instance
//! added back later starts undrained. A drain is not part of the split: a change of the split in
//! the file, which resets the split's overlay, keeps the drains of the instances still listed
//! (`carry`). The snapshot builder turns them into each instance's flag (`upstream::balance`).

use std::collections::BTreeSet;

use crate::config::Route;
use crate::control::state::RouteState;
use crate::control::ControlError;

/// Drains (`drain = true`) or undrains instance `addr` of `target` in `s`. Returns the event kind
/// and message; an instance already in that state is acknowledged as such.
pub fn apply(
    route: &Route,
    s: &mut RouteState,
    target: &str,
    addr: &str,
    drain: bool,
) -> Result<(&'static str, String), ControlError> {
    let t = super::target_of(route, target)?;
    let spec = &route.targets[route.target_index(&t).expect("checked")];
    if !spec.instances.iter().any(|a| a.as_str() == addr) {
        let known: Vec<&str> = spec.instances.iter().map(|a| a.as_str()).collect();
        return Err(ControlError::Rejected(format!(
            "target `{t}` of route `{}` has no instance `{addr}`; its instances are: {}",
            route.name,
            known.join(", ")
        )));
    }
    let kind = if drain { "drain" } else { "undrain" };
    let set = s.drained.entry(t.clone()).or_default();
    let changed = if drain {
        set.insert(addr.to_string())
    } else {
        set.remove(addr)
    };
    if set.is_empty() {
        s.drained.remove(&t);
    }
    let left = available(route, s, &t);
    let message = match (drain, changed) {
        (true, true) if left == 0 => format!(
            "instance {addr} of `{t}` drained; every instance of `{t}` is drained now: its requests get 503"
        ),
        (true, true) => format!("instance {addr} of `{t}` drained ({left} left taking requests)"),
        (true, false) => format!("instance {addr} of `{t}` was already drained"),
        (false, true) => format!("instance {addr} of `{t}` undrained"),
        (false, false) => format!("instance {addr} of `{t}` was not drained"),
    };
    Ok((kind, message))
}

/// How many instances of `target` are not drained in `s`.
fn available(route: &Route, s: &RouteState, target: &str) -> usize {
    let Some(i) = route.target_index(target) else {
        return 0;
    };
    let drained = s.drained.get(target);
    route.targets[i]
        .instances
        .iter()
        .filter(|a| drained.is_none_or(|d| !d.contains(a.as_str())))
        .count()
}

/// Drops the drains of instances (and targets) `route` no longer lists.
pub fn prune(route: &Route, s: &mut RouteState) {
    s.drained.retain(|target, addrs| {
        let Some(i) = route.target_index(target) else {
            return false;
        };
        let listed: BTreeSet<&str> = route.targets[i]
            .instances
            .iter()
            .map(|a| a.as_str())
            .collect();
        addrs.retain(|a| listed.contains(a.as_str()));
        !addrs.is_empty()
    });
}

/// Keeps `old`'s drains in `s` (a state rebuilt from the file), for the instances `route` lists.
pub fn carry(route: &Route, old: &RouteState, s: &mut RouteState) {
    s.drained = old.drained.clone();
    prune(route, s);
}

/// Whether instance `addr` of `target` is drained in `s`.
pub fn is_drained(s: &RouteState, target: &str, addr: &str) -> bool {
    s.drained.get(target).is_some_and(|d| d.contains(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(text: &str) -> Route {
        crate::config::parse(std::path::Path::new("t.toml"), text)
            .unwrap()
            .routes[0]
            .clone()
    }

    const BASE: &str = "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"10.0.0.1:80\", \"10.0.0.2:80\"]\ngreen = [\"10.0.1.1:80\"]\n";

    #[test]
    fn drain_names_only_listed_instances_and_is_idempotent() {
        let r = route(BASE);
        let mut s = RouteState::from_file(&r);
        assert!(matches!(
            apply(&r, &mut s, "red", "10.0.0.1:80", true),
            Err(ControlError::UnknownTarget { .. })
        ));
        assert!(matches!(
            apply(&r, &mut s, "blue", "10.0.0.9:80", true),
            Err(ControlError::Rejected(_))
        ));
        apply(&r, &mut s, "blue", "10.0.0.1:80", true).unwrap();
        let (_, again) = apply(&r, &mut s, "blue", "10.0.0.1:80", true).unwrap();
        assert!(again.contains("already"), "{again}");
        assert!(is_drained(&s, "blue", "10.0.0.1:80"));
        let (_, all) = apply(&r, &mut s, "blue", "10.0.0.2:80", true).unwrap();
        assert!(all.contains("503"), "{all}");
        apply(&r, &mut s, "blue", "10.0.0.1:80", false).unwrap();
        apply(&r, &mut s, "blue", "10.0.0.2:80", false).unwrap();
        assert!(s.drained.is_empty());
        assert_eq!(s, RouteState::from_file(&r));
    }

    #[test]
    fn a_removed_instance_loses_its_drain_and_a_split_change_keeps_the_rest() {
        let r = route(BASE);
        let mut s = RouteState::from_file(&r);
        apply(&r, &mut s, "blue", "10.0.0.1:80", true).unwrap();
        apply(&r, &mut s, "blue", "10.0.0.2:80", true).unwrap();
        let scaled = route(&BASE.replace("\"10.0.0.1:80\", ", ""));
        let mut pruned = s.clone();
        prune(&scaled, &mut pruned);
        assert!(!is_drained(&pruned, "blue", "10.0.0.1:80"));
        assert!(is_drained(&pruned, "blue", "10.0.0.2:80"));
        let flipped = route(&BASE.replace("live = \"blue\"", "live = \"green\""));
        let mut fresh = RouteState::from_file(&flipped);
        carry(&flipped, &s, &mut fresh);
        assert!(is_drained(&fresh, "blue", "10.0.0.1:80"));
    }
}
