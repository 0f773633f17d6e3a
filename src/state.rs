//! Runtime split state per route, and its persistence in `state.dir`.
//!
//! Invariants: a `RouteState` always names targets that exist in the route it belongs to (the
//! control plane checks before it writes, and restore drops entries whose file fingerprint no
//! longer matches). The state file is replaced atomically (temp file, fsync, rename, fsync of the
//! directory), so a crash leaves the old or the new file, never a torn one. A file that cannot be
//! read or parsed never stops serving: it is copied (or, unreadable, moved) aside and flipgate starts
//! from the route file. Runtime state that the route file stopped matching (its route left the file,
//! or its split section changed) is kept apart as `parked`, never mixed into `routes`, so a file that
//! was only half-written can get it back (see `control`); files written before `parked` existed read
//! as having none.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

impl RouteState {
    /// The state the route file alone describes.
    pub fn from_file(route: &crate::config::Route) -> RouteState {
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
}

/// One persisted route: its state and the file fingerprint it was made against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    pub fingerprint: u64,
    pub state: RouteState,
}

/// Runtime state the route file no longer matches, kept for a while in case the file was only
/// half-written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parked {
    /// The split section the state was made against: it is restored only for this same section.
    pub fingerprint: u64,
    pub state: RouteState,
    /// Unix milliseconds when it was set aside; it is dropped `control::PARKED_GRACE` later.
    pub since_unix_ms: u64,
    /// Length in bytes of the route file that set it aside.
    pub displaced_by_len: u64,
    /// xxh3 hash of that file: the state is only restored by a file that begins with it.
    pub displaced_by_hash: u64,
    /// Set aside because its route left the file (else: its split section changed). Only then is
    /// dropping it for good a warning: the operator was told it was kept in case the route returns.
    #[serde(default)]
    pub route_removed: bool,
}

/// Everything the state file holds.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Saved {
    /// Per route in the route file: its state and the fingerprint it was made against.
    pub routes: BTreeMap<String, Persisted>,
    /// Per route name: state set aside by a reload, in case the route file comes back.
    pub parked: BTreeMap<String, Parked>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    routes: BTreeMap<String, Persisted>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    parked: BTreeMap<String, Parked>,
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

    /// Loads the persisted state. A missing file is an empty state; an unreadable or corrupt one is
    /// logged, copied to `state.json.bad-<unix>` and treated as empty.
    pub fn load(&self) -> Saved {
        let path = self.file();
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Saved::default(),
            Err(e) => {
                self.quarantine(&path, &format!("unreadable: {e}"));
                return Saved::default();
            }
        };
        match serde_json::from_slice::<StateFile>(&text) {
            Ok(f) if f.version == 1 => Saved {
                routes: f.routes,
                parked: f.parked,
            },
            Ok(f) => {
                self.quarantine(&path, &format!("unsupported version {}", f.version));
                Saved::default()
            }
            Err(e) => {
                self.quarantine(&path, &e.to_string());
                Saved::default()
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
    pub fn save(&self, saved: &Saved) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let body = serde_json::to_vec_pretty(&StateFile {
            version: 1,
            routes: saved.routes.clone(),
            parked: saved.parked.clone(),
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
