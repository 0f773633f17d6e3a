//! Runtime split state per route, and its persistence in `state.dir`.
//!
//! Invariants: a `RouteState` always names targets that exist in the route it belongs to (the
//! control plane checks before it writes, and restore drops entries made against another split of
//! the file). Each persisted route records the file split it was made against (`FileSplit`: the
//! split's own fields, never instance lists or other target options), compared by value. The state
//! file is replaced atomically (temp file, fsync, rename, fsync of the directory), so a crash leaves
//! the old or the new file, never a torn one; only the holder of the directory's lock (`lock`)
//! writes it, from the writer thread (`writer`), and it removes the temp files earlier writers left.
//! A state file that cannot be *read* (an I/O or permission error) is never moved aside or
//! replaced: the decisions in it may still be needed. One that reads but does not parse (corrupt,
//! unknown version) is copied aside, because it can never be used. Runtime state that the route
//! file stopped matching (its route left the file, or its split changed) is kept apart as `parked`,
//! never mixed into `routes`, so a file that was only half-written can get it back (see `control`);
//! files written before `parked` existed read as having none, and it is written only when there is
//! some, so a file without parked state reads the same to an older binary.

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod lock;
pub mod shared;
pub mod writer;

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
    /// Instances an operator drained, by target name (`control::drain`). Written only when
    /// there are some, so a state without drains reads the same to an older binary.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drained: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// The route's rollout ladder (`control::rollout`): running, paused, or how the last one
    /// ended. Absent from files written before rollouts existed, and written only when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::control::rollout::Rollout>,
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
            drained: BTreeMap::new(),
            rollout: None,
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
    /// With a shared store (`[state] backend = "etcd"`): `state` holds a circuit trip taken while
    /// the store was away, judged on the store's key at this revision and not yet written there;
    /// kept across a restart so the trip is still written when the store is back. Written only
    /// when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trip_pending_at: Option<i64>,
}

impl Persisted {
    /// `state` as made against `route`'s split in the file now.
    pub fn new(route: &Route, split: FileSplit, state: RouteState) -> Persisted {
        Persisted {
            split: Some(split),
            fingerprint: legacy_fingerprint(route),
            state,
            trip_pending_at: None,
        }
    }

    /// Whether this was made against the split `route` has in the file now.
    pub fn made_against(&self, route: &Route) -> bool {
        made_against(self.split.as_ref(), self.fingerprint, route)
    }
}

/// Whether a state recorded with `split` (or, in files from before `split` existed, only the
/// legacy `fingerprint`) was made against the split `route` has in the file now.
fn made_against(split: Option<&FileSplit>, fingerprint: u64, route: &Route) -> bool {
    match split {
        Some(s) => *s == FileSplit::of(route),
        None => fingerprint == legacy_fingerprint(route),
    }
}

/// Runtime state the route file no longer matches, kept for a while in case the file was only
/// half-written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parked {
    /// The route file's split the state was made against: it is restored only for this same
    /// split (compared by value, as `Persisted::split`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<FileSplit>,
    /// `legacy_fingerprint` of the same split, for older binaries (and read from files without
    /// `split`).
    #[serde(default)]
    pub fingerprint: u64,
    pub state: RouteState,
    /// Unix milliseconds when it was set aside; it is dropped `control::PARKED_GRACE` later.
    pub since_unix_ms: u64,
    /// Length in bytes of the route file that set it aside.
    pub displaced_by_len: u64,
    /// xxh3 hash of that file: the state is only restored by a file that begins with it.
    pub displaced_by_hash: u64,
    /// Set aside because its route left the file (else: its split changed). Only then is
    /// dropping it for good a warning: the operator was told it was kept in case the route returns.
    #[serde(default)]
    pub route_removed: bool,
}

impl Parked {
    /// Sets aside `p` (a route's persisted state, with the split it was made against) because
    /// the route file of `displaced_by_len` bytes hashing to `displaced_by_hash` no longer matches it.
    pub fn of(
        p: &Persisted,
        since_unix_ms: u64,
        displaced_by_len: u64,
        displaced_by_hash: u64,
        route_removed: bool,
    ) -> Parked {
        Parked {
            split: p.split.clone(),
            fingerprint: p.fingerprint,
            state: p.state.clone(),
            since_unix_ms,
            displaced_by_len,
            displaced_by_hash,
            route_removed,
        }
    }

    /// Whether this was made against the split `route` has in the file now.
    pub fn made_against(&self, route: &Route) -> bool {
        made_against(self.split.as_ref(), self.fingerprint, route)
    }
}

/// The persisted routes, by route name.
pub type Routes = BTreeMap<String, Persisted>;

/// Everything the state file holds.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Saved {
    /// Per route in the route file: its state and the split it was made against.
    pub routes: Routes,
    /// Per route name: state set aside by a reload, in case the route file comes back.
    pub parked: BTreeMap<String, Parked>,
}

impl Saved {
    /// Parses a state file's bytes; the error says why they are not a usable state.
    pub fn parse(bytes: &[u8]) -> Result<Saved, String> {
        match serde_json::from_slice::<StateFile>(bytes) {
            Ok(f) if f.version == 1 => Ok(Saved {
                routes: f.routes,
                parked: f.parked,
            }),
            Ok(f) => Err(format!("unsupported version {}", f.version)),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[derive(Debug, Deserialize)]
struct StateFile {
    version: u32,
    routes: Routes,
    #[serde(default)]
    parked: BTreeMap<String, Parked>,
}

#[derive(Serialize)]
struct StateFileRef<'a> {
    version: u32,
    routes: &'a Routes,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    parked: &'a BTreeMap<String, Parked>,
}

/// What the state file held when it was read.
#[derive(Debug)]
pub enum Loaded {
    /// No state file (first start, or the directory does not exist).
    Absent,
    /// What it holds, and a hash of the file's bytes (to notice when it changes).
    Saved(Saved, u64),
    /// Read, but not usable: why, and the hash of its bytes.
    Corrupt(String, u64),
}

/// Reads and writes `state.json` in the state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// Prefix of the temp files a write goes through (`.state.json.tmp-<pid>`).
const TMP_PREFIX: &str = ".state.json.tmp-";

impl Store {
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state file.
    pub fn file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Reads the state file. `Err` means it exists but cannot be read (permissions, I/O error, not a
    /// file): the caller must not treat that as "no state".
    pub fn read(&self) -> std::io::Result<Loaded> {
        let text = match std::fs::read(self.file()) {
            Ok(t) => t,
            // No directory, or a path component that is a file: there is no state file.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(Loaded::Absent)
            }
            Err(e) => return Err(e),
        };
        let hash = xxhash_rust::xxh3::xxh3_64(&text);
        Ok(match Saved::parse(&text) {
            Ok(saved) => Loaded::Saved(saved, hash),
            Err(why) => Loaded::Corrupt(why, hash),
        })
    }

    /// Keeps a copy of a corrupt state file as `state.json.bad-<unix>`, so the next write does not
    /// destroy what an operator may want to inspect. Returns the copy's path.
    pub fn quarantine(&self) -> std::io::Result<PathBuf> {
        let bad = self
            .dir
            .join(format!("state.json.bad-{}", crate::clock::unix_secs()));
        std::fs::copy(self.file(), &bad)?;
        Ok(bad)
    }

    /// Removes the temp files of earlier writers (killed mid-write). Only the lock holder calls
    /// this: no other process writes, so none of them is in use. Returns how many were removed.
    pub fn remove_stale_tmp(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(TMP_PREFIX))
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count()
    }

    /// Atomically replaces the state file. On failure the temp file is removed.
    pub fn save(&self, saved: &Saved) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let body = serde_json::to_vec_pretty(&StateFileRef {
            version: 1,
            routes: &saved.routes,
            parked: &saved.parked,
        })
        .map_err(std::io::Error::other)?;
        let tmp = self.dir.join(format!("{TMP_PREFIX}{}", std::process::id()));
        if let Err(e) = write_then_rename(&tmp, &body, &self.file()) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        // The rename is durable once the directory is.
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Writes `body` to `tmp`, fsyncs it and renames it to `to`.
fn write_then_rename(tmp: &Path, body: &[u8], to: &Path) -> std::io::Result<()> {
    let mut f = std::fs::File::create(tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(tmp, to)
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
        let Loaded::Saved(Saved { routes, .. }, _) = Store::new(dir.path()).read().unwrap() else {
            panic!("readable")
        };
        assert!(routes["bot"].made_against(&r));
        let scaled = route(&BASE.replace("\"10.0.0.1:80\"", "\"10.0.0.1:81\""));
        assert!(!routes["bot"].made_against(&scaled));
    }

    #[test]
    fn parked_state_round_trips_and_is_only_written_when_there_is_some() {
        let r = route(BASE);
        let state = RouteState::from_file(&r);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut saved = Saved::default();
        saved.routes.insert(
            "bot".into(),
            Persisted::new(&r, FileSplit::of(&r), state.clone()),
        );
        store.save(&saved).unwrap();
        let text = std::fs::read_to_string(store.file()).unwrap();
        assert!(!text.contains("parked"), "{text}");
        let p = Parked::of(&saved.routes["bot"], 1_000, 42, 7, true);
        assert_eq!(p.split, Some(FileSplit::of(&r)));
        assert_eq!(p.fingerprint, legacy_fingerprint(&r));
        saved.parked.insert("other".into(), p);
        store.save(&saved).unwrap();
        let Loaded::Saved(back, _) = store.read().unwrap() else {
            panic!("readable")
        };
        assert_eq!(back, saved);
        assert!(back.parked["other"].made_against(&r));
        let scaled = route(&BASE.replace("\"10.0.0.1:80\"", "\"10.0.0.1:81\""));
        assert!(back.parked["other"].made_against(&scaled));
        let moved = route(&BASE.replace("percent = 5", "percent = 6"));
        assert!(!back.parked["other"].made_against(&moved));
    }

    #[test]
    fn parked_state_from_before_the_split_field_restores_by_its_fingerprint() {
        // As written by a binary that parked state but had no `split` yet.
        let r = route(BASE);
        let state = serde_json::to_string(&RouteState::from_file(&r)).unwrap();
        let old = format!(
            r#"{{"version": 1, "routes": {{}}, "parked": {{"bot": {{"fingerprint": {}, "state": {state}, "since_unix_ms": 5, "displaced_by_len": 10, "displaced_by_hash": 11}}}}}}"#,
            legacy_fingerprint(&r),
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.json"), old).unwrap();
        let Loaded::Saved(saved, _) = Store::new(dir.path()).read().unwrap() else {
            panic!("readable")
        };
        let p = &saved.parked["bot"];
        assert!(p.split.is_none() && !p.route_removed);
        assert!(p.made_against(&r));
        let scaled = route(&BASE.replace("\"10.0.0.1:80\"", "\"10.0.0.1:81\""));
        assert!(!p.made_against(&scaled));
    }

    #[test]
    fn unreadable_is_an_error_and_absent_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        assert!(matches!(store.read(), Ok(Loaded::Absent)));
        std::fs::create_dir(store.file()).unwrap();
        assert!(store.read().is_err());
        std::fs::write(dir.path().join("file"), "").unwrap();
        assert!(matches!(
            Store::new(&dir.path().join("file/state")).read(),
            Ok(Loaded::Absent)
        ));
    }

    #[test]
    fn a_failed_save_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        // The rename fails: a non-empty directory stands where the file goes.
        std::fs::create_dir_all(store.file().join("x")).unwrap();
        assert!(store.save(&Saved::default()).is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }
}
