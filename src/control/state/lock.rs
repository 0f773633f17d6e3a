//! The state directory's lock: of all processes on one `state.dir`, exactly one writes `state.json`.
//!
//! Invariants: the lock is an advisory `flock(LOCK_EX)` on `state.dir/flipgate.lock`, only ever
//! taken without waiting; it is held exactly as long as its `DirLock` lives, and the kernel drops
//! it when the process dies however it dies (`kill -9` included), so a crashed owner never blocks
//! the next one. The file holds the owner's PID, for messages only: the lock decides, never the
//! file's contents. Two handles in one process exclude each other too (locks belong to open files).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

/// The lock file's name inside `state.dir`.
pub const LOCK_FILE: &str = "flipgate.lock";

/// Holding this means: this process is the one that writes the state file.
#[derive(Debug)]
pub struct DirLock {
    /// Kept open for the lock's lifetime; closing it releases the lock.
    _file: File,
}

/// The outcome of one attempt to take the lock.
#[derive(Debug)]
pub enum Attempt {
    /// Taken: this process writes.
    Locked(DirLock),
    /// Another live process holds it (its PID, when it could be read).
    HeldBy(Option<u32>),
    /// The directory or the lock file could not be created or opened (an unwritable or missing
    /// disk): nobody can hold the lock there either.
    Failed(std::io::Error),
}

/// Tries once to take the lock on `dir`, creating the directory and the lock file if needed.
pub fn try_lock(dir: &Path) -> Attempt {
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Attempt::Failed(e);
    }
    let mut file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))
    {
        Ok(f) => f,
        Err(e) => return Attempt::Failed(e),
    };
    match flock_nonblocking(&file) {
        Ok(true) => {
            // Best effort: the PID only makes messages more helpful.
            let _ = file
                .set_len(0)
                .and_then(|_| file.write_all(format!("{}\n", std::process::id()).as_bytes()));
            Attempt::Locked(DirLock { _file: file })
        }
        Ok(false) => {
            let mut text = String::new();
            let pid = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            Attempt::HeldBy(pid)
        }
        Err(e) => Attempt::Failed(e),
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` when another open file holds it.
#[cfg(unix)]
#[allow(unsafe_code)]
fn flock_nonblocking(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own for the duration of the call; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Without `flock` there is no exclusion: every process believes it owns the directory.
#[cfg(not(unix))]
fn flock_nonblocking(_file: &File) -> std::io::Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let Attempt::Locked(first) = try_lock(&state) else {
            panic!("first attempt takes the lock")
        };
        match try_lock(&state) {
            Attempt::HeldBy(pid) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("second holder: {other:?}"),
        }
        drop(first);
        // Free once no process holds the open file: a child another test forks in the same
        // moment shares it until its exec closes it (O_CLOEXEC), so wait for that, bounded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !matches!(try_lock(&state), Attempt::Locked(_)) {
            assert!(
                std::time::Instant::now() < deadline,
                "the lock was never released"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn an_uncreatable_directory_fails() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "").unwrap();
        assert!(matches!(
            try_lock(&dir.path().join("file/state")),
            Attempt::Failed(_)
        ));
    }
}
