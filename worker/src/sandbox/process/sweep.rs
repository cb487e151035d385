//! Removing what dead workers left of the process sandbox (their task cgroups
//! and work dirs, found by their free locks), this worker's work-dir tmpfs, and
//! its work-root lock.

use std::fs::{self as stdfs, File};
use std::path::Path;

use super::cgroup::{self, Driver};
use crate::liveness::Liveness;
use crate::sandbox::SandboxError;

/// Removes task cgroups of dead workers (by `liveness`), and (`startup`) those
/// of `worker_id`, this worker, from an earlier life under the same id
/// (nothing runs yet then); then the lock files of dead workers.
pub(super) fn cgroups(
    driver: &dyn Driver,
    worker_id: &str,
    liveness: &Liveness,
    startup: bool,
) -> usize {
    let mut removed = 0;
    for k in driver.krill_dirs() {
        let Ok(workers) = stdfs::read_dir(&k) else {
            continue;
        };
        for w in workers.flatten() {
            let worker = w.file_name().to_string_lossy().into_owned();
            let mine = worker == worker_id;
            if !w.path().is_dir() || (mine && !startup) || (!mine && liveness.alive(&worker)) {
                continue;
            }
            for t in stdfs::read_dir(w.path()).into_iter().flatten().flatten() {
                if t.path().is_dir() {
                    let name = format!("{worker}/{}", t.file_name().to_string_lossy());
                    if cgroup::remove(driver, &name).is_ok() {
                        removed += 1;
                    }
                }
            }
            if !mine {
                let _ = stdfs::remove_dir(w.path());
            }
        }
    }
    liveness.remove_dead_locks();
    removed
}

/// Removes the work dirs of workers under the work root `root` whose lock is
/// free, and (`startup`) the leftovers in `mine` (this worker's dir) from an
/// earlier life.
pub(super) fn work_dirs(root: &Path, mine: &Path, startup: bool) -> Result<usize, SandboxError> {
    let mut removed = 0;
    for entry in stdfs::read_dir(root)? {
        let entry = entry?;
        let path = entry.path();
        if !entry.file_type()?.is_dir() {
            continue;
        }
        if path == mine {
            if startup {
                for t in stdfs::read_dir(&path)?.flatten() {
                    removed += 1;
                    let _ = stdfs::remove_dir_all(t.path());
                }
            }
            continue;
        }
        let lock_path = root.join(format!("{}.lock", entry.file_name().to_string_lossy()));
        // Held while the dir is removed: its worker cannot come back meanwhile.
        let held = match File::open(&lock_path) {
            Ok(f) => nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).ok(),
            Err(_) => None,
        };
        if held.is_some() || !lock_path.exists() {
            removed += stdfs::read_dir(&path).map(|d| d.count()).unwrap_or(0);
            unmount_work_tmpfs(&path);
            let _ = stdfs::remove_dir_all(&path);
            let _ = stdfs::remove_file(&lock_path);
        }
    }
    Ok(removed)
}

/// Mounts a tmpfs on this worker's work dir, unless one is there already: each
/// task's few files (script, output files) then cost no disk inode work, and
/// their memory is charged to the task's cgroup. Where mounting is not allowed
/// the dir stays on its filesystem. Returns whether the dir is a tmpfs mount.
pub(super) fn mount_work_tmpfs(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let dev = |p: &std::path::Path| stdfs::metadata(p).map(|m| m.dev()).ok();
    if let Some(parent) = dir.parent() {
        if dev(dir).is_some() && dev(dir) != dev(parent) {
            return true; // already a mount point (an earlier life of this worker)
        }
    }
    match nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some("mode=0711"),
    ) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e,
                "could not mount a tmpfs on the work dir; task dirs stay on its filesystem");
            false
        }
    }
}

/// Unmounts a work dir's tmpfs (lazily: a dying task may still hold it).
pub(super) fn unmount_work_tmpfs(dir: &std::path::Path) {
    let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
}

/// Takes an exclusive flock on `path`, held for the life of the returned file.
/// A worker restarted right after a crash may find the lock still held for a
/// moment by its predecessor's dying sandbox processes: it retries this long.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) fn lock(path: &std::path::Path) -> Result<File, SandboxError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    // Root-only, like the worker locks in /run/krill (a task that could open it
    // could hold a shared flock on it).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    // Also when an older worker created it with a wider mode.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match nix::fcntl::Flock::lock(f.try_clone()?, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(held) => {
                std::mem::forget(held);
                return Ok(f);
            }
            Err((_, e)) if std::time::Instant::now() >= deadline => {
                return Err(SandboxError::Setup(format!(
                    "locking {} (is another worker running with this id?): {e}",
                    path.display()
                )))
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}
