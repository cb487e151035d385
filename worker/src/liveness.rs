//! Which Krill workers on this host are alive: each holds an exclusive `flock`
//! on `/run/krill/workers/<id>.lock` for its whole life, and the kernel drops it
//! the moment the process dies (SIGKILL, OOM kill, crash). Whatever a worker
//! made (containers, cgroups, work dirs) and whose lock is free belongs to a
//! dead worker and may be removed by any live one.
//!
//! A lock only says something about workers that share the lock directory.
//! `/run/krill/host-id` names that set (a random id made by the first worker
//! that finds none): containers carry it as a label, so a worker judges by lock
//! only the containers of its own set, and leaves others (another host using
//! the same engine, a worker in a container with a `/run` of its own) to the
//! age-based sweep.
//!
//! The directory and its parent are root-only (`0700`, the files `0600`; see
//! [`root_only_dir`]), besides being out of every task's view: a task that
//! could open a lock file could hold a shared `flock` on it, so that its
//! worker could not restart and the sweep would take a dead worker for a live
//! one.
//!
//! A dead worker's lock file is removed only while holding its lock, and a
//! worker that takes a lock checks that the file it locked is still the one at
//! the path: a lock is never held on a file that was unlinked under it.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// Krill's host-wide state: root-only.
pub const RUN_DIR: &str = "/run/krill";
/// Host-wide directory of live workers' locks.
pub const LOCK_DIR: &str = "/run/krill/workers";
/// Names the set of workers that share [`LOCK_DIR`].
pub const HOST_ID_FILE: &str = "/run/krill/host-id";
/// A worker restarted right after a crash may find its lock still held for a
/// moment by its predecessor's dying processes: it retries this long.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// What can go wrong taking this worker's lock.
#[derive(Debug, thiserror::Error)]
pub enum LivenessError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("locking {} (is another worker running with this id?): {source}", path.display())]
    Held {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LivenessError + 'a {
    move |source| LivenessError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// This worker's lock, and the means to ask about the others.
#[derive(Debug)]
pub struct Liveness {
    /// This worker's id.
    pub id: String,
    /// The id of the set of workers sharing the lock directory.
    pub host: String,
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Liveness {
    /// Takes this worker's lock in [`LOCK_DIR`] (making `/run/krill` root-only).
    pub fn acquire(id: &str) -> Result<Liveness, LivenessError> {
        root_only_dir(Path::new(RUN_DIR)).map_err(io("creating", Path::new(RUN_DIR)))?;
        Self::acquire_in(Path::new(LOCK_DIR), Path::new(HOST_ID_FILE), id, LOCK_WAIT)
    }

    /// Takes `id`'s lock in `dir`, waiting up to `wait` for it; `host_file`
    /// names the set.
    pub fn acquire_in(
        dir: &Path,
        host_file: &Path,
        id: &str,
        wait: Duration,
    ) -> Result<Liveness, LivenessError> {
        root_only_dir(dir).map_err(io("creating", dir))?;
        let host = host_id(host_file)?;
        let path = lock_path(dir, id);
        let deadline = Instant::now() + wait;
        loop {
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(io("opening", &path))?;
            // Also when an older worker made it with a wider mode.
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io("narrowing", &path))?;
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(held) => {
                    // Removed (by a sweeper that found it free) between open and lock?
                    let same = match (held.metadata(), std::fs::metadata(&path)) {
                        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                        _ => false,
                    };
                    if same {
                        return Ok(Liveness {
                            id: id.to_string(),
                            host,
                            dir: dir.to_path_buf(),
                            _lock: held,
                        });
                    }
                }
                Err((_, e)) if Instant::now() >= deadline => {
                    return Err(LivenessError::Held { path, source: e })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Whether worker `id` (of this host's set) is alive. This worker is.
    pub fn alive(&self, id: &str) -> bool {
        if id == self.id {
            return true;
        }
        match File::open(lock_path(&self.dir, id)) {
            // Held by someone: alive. Free: the lock is released at once.
            Ok(f) => Flock::lock(f, FlockArg::LockSharedNonblock).is_err(),
            Err(_) => false,
        }
    }

    /// Removes the lock files of dead workers (each while holding its lock);
    /// returns their ids.
    pub fn remove_dead_locks(&self) -> Vec<String> {
        let mut gone = Vec::new();
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".lock") else {
                continue;
            };
            if id == self.id {
                continue;
            }
            let Ok(f) = File::open(e.path()) else {
                continue;
            };
            if let Ok(held) = Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                if std::fs::remove_file(e.path()).is_ok() {
                    gone.push(id.to_string());
                }
                drop(held);
            }
        }
        gone
    }
}

/// Creates `dir` and narrows it to root only (`0700`), also when it exists
/// with a wider mode. Only `dir` itself: never its parents (`/run`, `/tmp`).
pub fn root_only_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

fn lock_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.lock"))
}

/// Reads the set's id, making it when there is none yet (atomically: a link
/// that fails when another worker made it first).
fn host_id(path: &Path) -> Result<String, LivenessError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    if let Some(id) = read(path) {
        return Ok(id);
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = File::create(&tmp).map_err(io("creating", &tmp))?;
    writeln!(f, "{}", uuid::Uuid::new_v4().simple()).map_err(io("writing", &tmp))?;
    drop(f);
    let _ = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    read(path).ok_or_else(|| LivenessError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source: std::io::Error::other("empty host id"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("krill-liveness-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn a_held_lock_is_alive_and_a_released_one_is_dead() {
        let d = dir();
        let host = d.join("host-id");
        let w = d.join("w");
        let a = Liveness::acquire_in(&w, &host, "a", Duration::ZERO).expect("a");
        let b = Liveness::acquire_in(&w, &host, "b", Duration::ZERO).expect("b");
        assert_eq!(a.host, b.host, "one set, one id");
        assert!(a.alive("b") && b.alive("a") && a.alive("a"));
        assert!(!a.alive("never-started"));
        assert!(a.remove_dead_locks().is_empty(), "nobody is dead");
        drop(b);
        assert!(!a.alive("b"));
        assert_eq!(a.remove_dead_locks(), vec!["b".to_string()]);
        assert!(!d.join("w").join("b.lock").exists());
        // The same id again, afterwards: a fresh file, alive.
        let b = Liveness::acquire_in(&w, &host, "b", Duration::ZERO).expect("b again");
        assert!(a.alive("b"));
        drop(b);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn lock_files_and_their_dir_are_root_only() {
        let d = dir();
        let w = d.join("w");
        std::fs::create_dir_all(&w).expect("w");
        std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let old = w.join("a.lock");
        std::fs::write(&old, b"").expect("old lock");
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let _a = Liveness::acquire_in(&w, &d.join("host-id"), "a", Duration::ZERO).expect("a");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode(&w), 0o700, "the dir, narrowed");
        assert_eq!(mode(&old), 0o600, "an older, wider lock file, narrowed");
        assert_ne!(mode(&d), 0o700, "its parent is left alone");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_second_worker_with_the_same_id_is_refused() {
        let d = dir();
        let host = d.join("host-id");
        let wait = Duration::from_millis(300);
        let _a = Liveness::acquire_in(&d, &host, "same", wait).expect("first");
        // Flocks are per open file: a second open in this process conflicts too.
        let err = Liveness::acquire_in(&d, &host, "same", wait).expect_err("second");
        assert!(err.to_string().contains("another worker"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
