//! Where the admin bearer token comes from, read fresh for every mutation.
//!
//! Invariants:
//! - A source is *configured* when the route file sets `admin.token_file` or names
//!   `admin.token_env`, or when the variable `token_env` names (by default `FLIPGATE_ADMIN_TOKEN`)
//!   is present in the environment at all. Only with no configured source is the state
//!   [`TokenState::Open`].
//! - The variable comes first if it holds a usable token, then the file. A configured source that
//!   yields none (file deleted, empty, whitespace only, a directory, a dangling symlink,
//!   unreadable, not UTF-8, too large; variable unset, blank or not UTF-8) is
//!   [`TokenState::Unusable`] with a reason naming the source: mutations are refused, never
//!   opened (fail closed).
//! - A usable token is trimmed, non-empty, and only visible ASCII and spaces, so it can be sent in
//!   an `Authorization` field at all.
//! - The file is only opened if it is a regular file (after symlinks) and at most 64 KiB are
//!   read, so a FIFO, a device or a huge file never blocks or exhausts the caller. Callers run
//!   [`TokenSource::resolve`] off the async runtime (it touches the disk).

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::guard::TokenState;

/// Largest token file read.
const MAX_FILE: u64 = 64 * 1024;

/// The token settings of `[admin]`, fixed at start.
#[derive(Debug, Clone)]
pub struct TokenSource {
    env: Option<String>,
    env_explicit: bool,
    file: Option<PathBuf>,
}

impl TokenSource {
    /// From the validated `[admin]` table.
    pub fn new(admin: &crate::config::Admin) -> TokenSource {
        TokenSource {
            env: admin.token_env.clone(),
            env_explicit: admin.token_env_explicit,
            file: admin.token_file.clone(),
        }
    }

    /// What the source yields now, from the process environment and the file system.
    pub fn resolve(&self) -> TokenState {
        self.resolve_with(|name| std::env::var_os(name))
    }

    /// [`resolve`](Self::resolve) with the environment passed in, so tests need not mutate the
    /// process environment.
    pub fn resolve_with(&self, env: impl Fn(&str) -> Option<OsString>) -> TokenState {
        let mut problems = Vec::new();
        let mut configured = self.file.is_some();
        if let Some(name) = &self.env {
            match env(name) {
                None if self.env_explicit => {
                    configured = true;
                    problems.push(format!("admin token env {name}: not set"));
                }
                None => {}
                Some(value) => {
                    configured = true;
                    let token = value.to_str().ok_or("not valid UTF-8").and_then(usable);
                    match token {
                        Ok(t) => return TokenState::Token(t),
                        Err(why) => problems.push(format!("admin token env {name}: {why}")),
                    }
                }
            }
        }
        if let Some(path) = &self.file {
            match read_file(path) {
                Ok(t) => return TokenState::Token(t),
                Err(why) => {
                    problems.insert(0, format!("admin token file {}: {why}", path.display()))
                }
            }
        }
        if configured {
            TokenState::Unusable(problems.join("; "))
        } else {
            TokenState::Open
        }
    }
}

/// A token as written, if it can be one.
fn usable(s: &str) -> Result<String, &'static str> {
    let t = s.trim();
    if t.is_empty() {
        return Err(if s.is_empty() {
            "empty"
        } else {
            "whitespace only"
        });
    }
    if !t.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(
            "contains characters an Authorization field cannot carry (control or non-ASCII)",
        );
    }
    Ok(t.to_string())
}

fn read_file(path: &Path) -> Result<String, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dangling = std::fs::symlink_metadata(path).is_ok();
            return Err(if dangling {
                "dangling symlink".into()
            } else {
                "not found".into()
            });
        }
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    if meta.is_dir() {
        return Err("is a directory".into());
    }
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE + 1).read_to_end(&mut buf))
        .map_err(|e| format!("cannot read: {e}"))?;
    if buf.len() as u64 > MAX_FILE {
        return Err("larger than 64 KiB".into());
    }
    let text = String::from_utf8(buf).map_err(|_| "not valid UTF-8".to_string())?;
    usable(&text).map_err(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(env: Option<&str>, explicit: bool, file: Option<&Path>) -> TokenSource {
        TokenSource {
            env: env.map(str::to_string),
            env_explicit: explicit,
            file: file.map(Path::to_path_buf),
        }
    }

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |n| {
            pairs
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| OsString::from(v))
        }
    }

    fn unusable(s: TokenState) -> String {
        match s {
            TokenState::Unusable(why) => why,
            other => panic!("expected unusable, got {other:?}"),
        }
    }

    #[test]
    fn env_variable() {
        let implicit = source(Some("FLIPGATE_ADMIN_TOKEN"), false, None);
        assert_eq!(implicit.resolve_with(env_of(&[])), TokenState::Open);
        assert_eq!(
            implicit.resolve_with(env_of(&[("FLIPGATE_ADMIN_TOKEN", " tok \n")])),
            TokenState::Token("tok".into())
        );
        // Present but blank: someone meant to set a token; closed, not open.
        let why = unusable(implicit.resolve_with(env_of(&[("FLIPGATE_ADMIN_TOKEN", "")])));
        assert_eq!(why, "admin token env FLIPGATE_ADMIN_TOKEN: empty");
        let why = unusable(implicit.resolve_with(env_of(&[("FLIPGATE_ADMIN_TOKEN", "  ")])));
        assert_eq!(why, "admin token env FLIPGATE_ADMIN_TOKEN: whitespace only");
        // Named in the file: it must be set.
        let explicit = source(Some("MY_TOKEN"), true, None);
        assert_eq!(
            unusable(explicit.resolve_with(env_of(&[]))),
            "admin token env MY_TOKEN: not set"
        );
        assert!(matches!(
            explicit.resolve_with(env_of(&[("MY_TOKEN", "a\u{7}b")])),
            TokenState::Unusable(_)
        ));
        assert_eq!(
            source(None, false, None).resolve_with(env_of(&[])),
            TokenState::Open
        );
    }

    #[test]
    fn file_states() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let s = source(Some("FG_UNSET_FOR_TEST"), false, Some(&path));
        let state = || s.resolve_with(env_of(&[]));
        let reason = |why: &str| format!("admin token file {}: {why}", path.display());

        assert_eq!(unusable(state()), reason("not found"));
        std::fs::write(&path, "tok\n").unwrap();
        assert_eq!(state(), TokenState::Token("tok".into()));
        std::fs::write(&path, "").unwrap();
        assert_eq!(unusable(state()), reason("empty"));
        std::fs::write(&path, " \n\t ").unwrap();
        assert_eq!(unusable(state()), reason("whitespace only"));
        std::fs::write(&path, b"\xff\xfe").unwrap();
        assert_eq!(unusable(state()), reason("not valid UTF-8"));
        std::fs::write(&path, vec![b'a'; MAX_FILE as usize + 1]).unwrap();
        assert_eq!(unusable(state()), reason("larger than 64 KiB"));
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert_eq!(unusable(state()), reason("is a directory"));
        std::fs::remove_dir(&path).unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone"), &path).unwrap();
        assert_eq!(unusable(state()), reason("dangling symlink"));
        std::fs::remove_file(&path).unwrap();
        // A FIFO would block a reader until a writer comes: refused without opening it.
        let made = std::process::Command::new("mkfifo").arg(&path).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        assert_eq!(unusable(state()), reason("not a regular file"));
        // Unreadable even for root: a path through a regular file (ENOTDIR).
        let through = dir.path().join("blocker");
        std::fs::write(&through, "").unwrap();
        let s = source(None, false, Some(&through.join("token")));
        assert!(unusable(s.resolve()).contains("cannot read"));
    }

    #[test]
    fn env_first_then_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "from-file").unwrap();
        let s = source(Some("T"), true, Some(&path));
        assert_eq!(
            s.resolve_with(env_of(&[("T", "from-env")])),
            TokenState::Token("from-env".into())
        );
        // A blank variable falls through to a good file.
        assert_eq!(
            s.resolve_with(env_of(&[("T", " ")])),
            TokenState::Token("from-file".into())
        );
        std::fs::remove_file(&path).unwrap();
        let why = unusable(s.resolve_with(env_of(&[("T", " ")])));
        assert!(why.starts_with("admin token file"), "{why}");
        assert!(why.ends_with("admin token env T: whitespace only"), "{why}");
    }
}
