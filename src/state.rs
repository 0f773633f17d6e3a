//! Runtime split state per route, and its persistence in `state.dir`.
//!
//! Invariants: a `RouteState` always names targets that exist in the route it belongs to (the
//! control plane checks before it writes, and restore drops entries made against another split of
//! the file). Each persisted route records the file split it was made against (`FileSplit`: the
//! split's own fields, never instance lists or other target options), compared by value. The state file is replaced atomically (temp file, fsync, rename, fsync of the
//! directory), so a crash leaves the old or the new file, never a torn one. A file that cannot be
//! read or parsed never stops serving: it is copied (or, unreadable, moved) aside and flipgate starts
//! from the route file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Route, Sticky};

/// Where a value in force came from; shown in status so operators know what to edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    File,
    Admin,
    Circuit,
}

/// Why and when a circuit rolled a route back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trip {
    /// Human-readable reason with the observed figures.
    pub reason: String,
    /// The target that was rolled back away from.
    pub target: String,
    pub error_rate: f64,
    pub requests: u64,
    /// Unix seconds.
    pub at: u64,
}

/// The split in force for one route: the file's values, possibly overridden at runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteState {
    pub live: String,
    pub live_source: Source,
    /// Canary target, kept when the percent drops to 0 so `canary ROUTE 5` can resume it.
    pub canary_target: Option<String>,
    /// Basis points, 0..=10_000.
    pub canary_bp: u16,
    pub canary_source: Source,
    /// The live target before the last flip, for `rollback`.
    pub previous: Option<String>,
    pub tripped: Option<Trip>,
    /// Unix milliseconds until which the live target is watched after a flip or promote.
    pub bake_until_unix_ms: Option<u64>,
}

/// What a target does in a route's split; a target that takes a new role is judged afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Live,
    /// The canary target while its percent is above 0.
    Canary,
    /// Takes no share of new requests.
    Idle,
}

impl RouteState {
    /// The state the route file alone describes.
    pub fn from_file(route: &Route) -> RouteState {
        RouteState {
            live: route.live.clone(),
            live_source: Source::File,
            canary_target: route.canary.as_ref().map(|c| c.target.clone()),
            canary_bp: route.canary.as_ref().map_or(0, |c| c.basis_points),
            canary_source: Source::File,
            previous: None,
            tripped: None,
            bake_until_unix_ms: None,
        }
    }

    /// The role of `target` in this split.
    pub fn role(&self, target: &str) -> Role {
        if self.canary_bp > 0 && self.canary_target.as_deref() == Some(target) {
            Role::Canary
        } else if self.live == target {
            Role::Live
        } else {
            Role::Idle
        }
    }
}

/// A route's split as the route file states it: what a runtime overlay is made against. Only the
/// split's own fields: scaling a target (instances, TLS, health checks) states no new intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSplit {
    pub live: String,
    /// Target names, sorted.
    pub targets: Vec<String>,
    pub canary: Option<FileCanary>,
}

/// The file's `[routes.canary]`, as part of `FileSplit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCanary {
    pub target: String,
    pub basis_points: u16,
    /// `none`, `header:NAME` or `cookie:NAME`.
    pub sticky: String,
}

impl FileSplit {
    /// The split section of `route`.
    pub fn of(route: &Route) -> FileSplit {
        let mut targets: Vec<String> = route.targets.iter().map(|t| t.name.clone()).collect();
        targets.sort();
        FileSplit {
            live: route.live.clone(),
            targets,
            canary: route.canary.as_ref().map(|c| FileCanary {
                target: c.target.clone(),
                basis_points: c.basis_points,
                sticky: match &c.sticky {
                    Sticky::None => "none".into(),
                    Sticky::Header(h) => format!("header:{h}"),
                    Sticky::Cookie(c) => format!("cookie:{c}"),
                },
            }),
        }
    }
}

/// The fingerprint flipgate wrote before `FileSplit` existed: a hash of `Debug` output that also
/// covered instance lists. Written alongside `split` so an older binary (a rollback of the
/// upgrade) still restores the file; read only from files without `split`, where it is the best
/// match there is (it only matches if the route's targets are unchanged, instances included).
pub fn legacy_fingerprint(route: &Route) -> u64 {
    let text = format!("{:?}|{:?}|{:?}", route.live, route.canary, route.targets);
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

/// One persisted route: its state and the file split it was made against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    /// The route file's split this state was made against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<FileSplit>,
    /// `legacy_fingerprint` of the same split, for older binaries.
    #[serde(default)]
    pub fingerprint: u64,
    pub state: RouteState,
}

impl Persisted {
    /// `state` as made against `route`'s split in the file now.
    pub fn new(route: &Route, split: FileSplit, state: RouteState) -> Persisted {
        Persisted {
            split: Some(split),
            fingerprint: legacy_fingerprint(route),
            state,
        }
    }

    /// Whether this was made against the split `route` has in the file now.
    pub fn made_against(&self, route: &Route) -> bool {
        match &self.split {
            Some(s) => *s == FileSplit::of(route),
            None => self.fingerprint == legacy_fingerprint(route),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    routes: BTreeMap<String, Persisted>,
}

/// Reads and writes `state.json` in the state directory.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    fn file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Loads persisted routes. A missing file is an empty state; an unreadable or corrupt one is
    /// logged, copied to `state.json.bad-<unix>` and treated as empty.
    pub fn load(&self) -> BTreeMap<String, Persisted> {
        let path = self.file();
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
            Err(e) => {
                self.quarantine(&path, &format!("unreadable: {e}"));
                return BTreeMap::new();
            }
        };
        match serde_json::from_slice::<StateFile>(&text) {
            Ok(f) if f.version == 1 => f.routes,
            Ok(f) => {
                self.quarantine(&path, &format!("unsupported version {}", f.version));
                BTreeMap::new()
            }
            Err(e) => {
                self.quarantine(&path, &e.to_string());
                BTreeMap::new()
            }
        }
    }

    fn quarantine(&self, path: &Path, why: &str) {
        let bad = self
            .dir
            .join(format!("state.json.bad-{}", crate::clock::unix_secs()));
        // Copy when it can be read; otherwise move it aside so the next save cannot destroy it.
        let copied = std::fs::copy(path, &bad).is_ok() || std::fs::rename(path, &bad).is_ok();
        tracing::error!(
            path = %path.display(),
            error = why,
            kept_copy = %if copied { bad.display().to_string() } else { "failed".into() },
            "CORRUPT or unreadable runtime state file ignored; serving the route file's split"
        );
    }

    /// Atomically replaces the state file.
    pub fn save(&self, routes: &BTreeMap<String, Persisted>) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let body = serde_json::to_vec_pretty(&StateFile {
            version: 1,
            routes: routes.clone(),
        })
        .map_err(std::io::Error::other)?;
        let tmp = self
            .dir
            .join(format!(".state.json.tmp-{}", std::process::id()));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.file())?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(text: &str) -> Route {
        let cfg = crate::config::parse(Path::new("t.toml"), text).unwrap();
        cfg.routes[0].clone()
    }

    const BASE: &str = "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"10.0.0.1:80\"]\ngreen = [\"10.0.0.2:80\"]\n[routes.canary]\ntarget = \"green\"\npercent = 5\nsticky = \"header:x-user-id\"\n";

    #[test]
    fn the_file_split_has_a_stable_encoding() {
        // Pinned: a change here drops every overlay on upgrade, so it must be deliberate.
        assert_eq!(
            serde_json::to_string(&FileSplit::of(&route(BASE))).unwrap(),
            r#"{"live":"blue","targets":["blue","green"],"canary":{"target":"green","basis_points":500,"sticky":"header:x-user-id"}}"#
        );
    }

    #[test]
    fn only_the_split_s_own_fields_count() {
        let base = FileSplit::of(&route(BASE));
        let scaled = BASE.replace(
            "blue = [\"10.0.0.1:80\"]",
            "blue = [\"10.0.0.1:80\", \"10.0.0.3:80\"]",
        );
        assert_eq!(FileSplit::of(&route(&scaled)), base);
        for changed in [
            BASE.replace("percent = 5", "percent = 6"),
            BASE.replace("header:x-user-id", "cookie:uid"),
            BASE.replace("live = \"blue\"", "live = \"green\"")
                .replace("target = \"green\"", "target = \"blue\""),
            BASE.replace("green = [", "red = [\"10.0.0.9:80\"]\ngreen = ["),
        ] {
            assert_ne!(FileSplit::of(&route(&changed)), base, "{changed}");
        }
    }

    #[test]
    fn files_from_before_the_split_field_restore_by_their_fingerprint() {
        let r = route(BASE);
        let state = RouteState::from_file(&r);
        let old = format!(
            r#"{{"version": 1, "routes": {{"bot": {{"fingerprint": {}, "state": {}}}}}}}"#,
            legacy_fingerprint(&r),
            serde_json::to_string(&state).unwrap()
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.json"), old).unwrap();
        let routes = Store::new(dir.path()).load();
        assert!(routes["bot"].made_against(&r));
        let scaled = route(&BASE.replace("\"10.0.0.1:80\"", "\"10.0.0.1:81\""));
        assert!(!routes["bot"].made_against(&scaled));
    }
}
