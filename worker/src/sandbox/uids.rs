//! A uid of its own for every sandbox: the worker claims a range of host uids
//! (`--sandbox-uids 200000-200063`, or `auto`), and each sandbox — a process
//! helper or a task container, started ahead or not — holds one [`UidLease`]
//! from its launch until every process of its task is gone. Per-user kernel
//! budgets (inotify, mqueue bytes, pipe pages, epoll watches, `RLIMIT_NPROC`)
//! are then never shared between two tasks, nor with a host user.
//!
//! Several workers on one host must use disjoint ranges: each uid a worker
//! claims is locked (`flock`) in [`LOCK_DIR`]`/<uid>.lock` for the worker's
//! life, so a second worker claiming it fails at start, naming the holder. A
//! dead worker's locks go with its process. With `auto`, a worker takes the
//! first free uids from [`AUTO_FIRST`] on.
//!
//! The gid of a lease is its uid (a group of its own too).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use tokio::sync::Notify;

/// Host-wide directory of the uid locks.
pub const LOCK_DIR: &str = "/run/krill/uids";
/// Where `auto` starts looking (above the ids distributions hand out, below
/// the 2^31 that some tools mishandle).
pub const AUTO_FIRST: u32 = 200_000;
/// How far `auto` looks.
pub const AUTO_SPAN: u32 = 100_000;
/// How long a launch waits for a uid while every one is held (a task that
/// just ended gives its uid back once its processes are gone).
pub const LEASE_WAIT: Duration = Duration::from_secs(30);

/// Which uids a worker uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UidSpec {
    /// The first free uids from [`AUTO_FIRST`], as many as the worker needs.
    Auto,
    /// `first..=last`, all of them.
    Range(u32, u32),
}

impl FromStr for UidSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(UidSpec::Auto);
        }
        let bad = || format!("`{s}`: expected `auto` or a range like 200000-200063");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (a, b): (u32, u32) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if a == 0 || b < a || b == u32::MAX {
            return Err(format!(
                "`{s}`: the range must be ascending, exclude 0 (root) and 4294967295"
            ));
        }
        Ok(UidSpec::Range(a, b))
    }
}

impl std::fmt::Display for UidSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UidSpec::Auto => f.write_str("auto"),
            UidSpec::Range(a, b) => write!(f, "{a}-{b}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UidError {
    #[error(
        "--sandbox-uids {spec} holds {have} uids; this worker needs at least {need} ({why}): \
         widen the range"
    )]
    TooFew {
        spec: UidSpec,
        have: usize,
        need: usize,
        why: String,
    },
    #[error(
        "uid {uid} of --sandbox-uids is in use by worker `{holder}` on this host ({lock}): \
         give each worker on a host a disjoint range (or `auto`)"
    )]
    Taken {
        uid: u32,
        holder: String,
        lock: String,
    },
    #[error("uid {uid} of --sandbox-uids is the host user `{name}`: choose uids no host user has")]
    HostUser { uid: u32, name: String },
    #[error(
        "--sandbox-uids auto found only {found} free uids from {AUTO_FIRST} on; {need} needed"
    )]
    Exhausted { found: usize, need: usize },
    #[error("every sandbox uid stayed in use for {0:?}")]
    Busy(Duration),
    #[error("uid lock {path}: {source}")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The uids a worker claimed; hands them out one sandbox at a time.
pub struct UidPool {
    spec: UidSpec,
    free: Mutex<VecDeque<u32>>,
    returned: Notify,
    total: usize,
    _locks: Vec<Flock<File>>,
}

impl std::fmt::Debug for UidPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UidPool")
            .field("spec", &self.spec)
            .field("total", &self.total)
            .field("free", &self.free())
            .finish()
    }
}

/// One sandbox's uid (and gid); back to the pool when dropped.
#[derive(Debug)]
pub struct UidLease {
    uid: u32,
    pool: Arc<UidPool>,
}

impl UidLease {
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// A group of its own: the same number.
    pub fn gid(&self) -> u32 {
        self.uid
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        self.pool.lock().push_back(self.uid);
        self.pool.returned.notify_one();
    }
}

impl UidPool {
    /// Claims the uids of `spec` under `lock_dir` for `worker` (`auto`: `want`
    /// of them); fails unless there are at least `need` (`why` says what they
    /// are for).
    pub fn claim(
        spec: &UidSpec,
        lock_dir: &Path,
        worker: &str,
        need: usize,
        want: usize,
        why: &str,
    ) -> Result<Arc<UidPool>, UidError> {
        std::fs::create_dir_all(lock_dir).map_err(|e| lock_error(lock_dir, e))?;
        // Root-only, like the worker locks beside it: a task that could open a
        // lock file could hold a `flock` on it.
        {
            use std::os::unix::fs::PermissionsExt as _;
            let private = std::fs::Permissions::from_mode(0o700);
            std::fs::set_permissions(lock_dir, private.clone())
                .map_err(|e| lock_error(lock_dir, e))?;
            if lock_dir.parent() == Some(Path::new("/run/krill")) {
                let _ = std::fs::set_permissions("/run/krill", private);
            }
        }
        let mut locks = Vec::new();
        let mut uids = VecDeque::new();
        match spec {
            UidSpec::Range(a, b) => {
                let have = (b - a) as usize + 1;
                if have < need {
                    return Err(UidError::TooFew {
                        spec: spec.clone(),
                        have,
                        need,
                        why: why.to_string(),
                    });
                }
                for uid in *a..=*b {
                    if let Some(name) = host_user(uid) {
                        return Err(UidError::HostUser { uid, name });
                    }
                    match try_lock(lock_dir, uid, worker)? {
                        Ok(l) => locks.push(l),
                        Err(holder) => {
                            return Err(UidError::Taken {
                                uid,
                                holder,
                                lock: lock_path(lock_dir, uid).display().to_string(),
                            })
                        }
                    }
                    uids.push_back(uid);
                }
            }
            UidSpec::Auto => {
                let want = want.max(need);
                for uid in AUTO_FIRST..AUTO_FIRST + AUTO_SPAN {
                    if uids.len() == want {
                        break;
                    }
                    if host_user(uid).is_some() {
                        continue;
                    }
                    if let Ok(l) = try_lock(lock_dir, uid, worker)? {
                        locks.push(l);
                        uids.push_back(uid);
                    }
                }
                if uids.len() < need {
                    return Err(UidError::Exhausted {
                        found: uids.len(),
                        need,
                    });
                }
            }
        }
        Ok(Arc::new(UidPool {
            spec: spec.clone(),
            total: uids.len(),
            free: Mutex::new(uids),
            returned: Notify::new(),
            _locks: locks,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<u32>> {
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A free uid now, if there is one (the least recently returned).
    pub fn try_lease(self: &Arc<Self>) -> Option<UidLease> {
        let uid = self.lock().pop_front()?;
        Some(UidLease {
            uid,
            pool: self.clone(),
        })
    }

    /// A free uid, waiting up to `wait` for one to come back.
    pub async fn lease(self: &Arc<Self>, wait: Duration) -> Result<UidLease, UidError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let returned = self.returned.notified();
            if let Some(l) = self.try_lease() {
                return Ok(l);
            }
            if tokio::time::timeout_at(deadline, returned).await.is_err() {
                return self.try_lease().ok_or(UidError::Busy(wait));
            }
        }
    }

    /// Uids not leased now.
    pub fn free(&self) -> usize {
        self.lock().len()
    }

    /// Every uid this worker claimed.
    pub fn total(&self) -> usize {
        self.total
    }

    /// First and last uid claimed (for logs).
    pub fn span(&self) -> String {
        match self.spec {
            UidSpec::Range(a, b) => format!("{a}-{b}"),
            UidSpec::Auto => {
                let q = self.lock();
                let (lo, hi) = (q.iter().min().copied(), q.iter().max().copied());
                match (lo, hi) {
                    (Some(lo), Some(hi)) => format!("auto: {} uids in {lo}-{hi}", self.total),
                    _ => format!("auto: {} uids", self.total),
                }
            }
        }
    }
}

fn lock_path(dir: &Path, uid: u32) -> PathBuf {
    dir.join(format!("{uid}.lock"))
}

fn lock_error(path: &Path, source: std::io::Error) -> UidError {
    UidError::Lock {
        path: path.display().to_string(),
        source,
    }
}

/// Locks `uid` for `worker`; `Err(holder)` when another live worker holds it.
fn try_lock(dir: &Path, uid: u32, worker: &str) -> Result<Result<Flock<File>, String>, UidError> {
    let path = lock_path(dir, uid);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| lock_error(&path, e))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut l) => {
            // Who holds it, for the next claimant's message.
            let _ = l.set_len(0);
            let _ = l.rewind();
            let _ = l.write_all(worker.as_bytes());
            Ok(Ok(l))
        }
        Err((mut f, _)) => {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            Ok(Err(if holder.is_empty() {
                "unknown".into()
            } else {
                holder
            }))
        }
    }
}

/// The host user with this uid, if any (`/etc/passwd` and NSS).
fn host_user(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("krill-uids-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn specs_parse() {
        assert_eq!("auto".parse::<UidSpec>(), Ok(UidSpec::Auto));
        assert_eq!(
            "200000-200063".parse::<UidSpec>(),
            Ok(UidSpec::Range(200_000, 200_063))
        );
        for bad in ["", "5", "9-3", "0-10", "a-b", "1-4294967295"] {
            assert!(bad.parse::<UidSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn too_small_a_range_is_refused_with_the_reason() {
        let d = dir();
        let err = UidPool::claim(
            &UidSpec::Range(300_000, 300_003),
            &d,
            "w",
            8,
            8,
            "4 slots + 4 ahead",
        )
        .expect_err("too small");
        let msg = err.to_string();
        assert!(
            msg.contains("holds 4 uids") && msg.contains("at least 8"),
            "{msg}"
        );
        assert!(msg.contains("4 slots + 4 ahead"), "{msg}");
    }

    #[test]
    fn overlapping_ranges_fail_fast_naming_the_holder() {
        let d = dir();
        let a = UidPool::claim(&UidSpec::Range(300_010, 300_019), &d, "worker-a", 4, 4, "x")
            .expect("first claim");
        let err = UidPool::claim(&UidSpec::Range(300_015, 300_030), &d, "worker-b", 4, 4, "x")
            .expect_err("overlap");
        let msg = err.to_string();
        assert!(
            msg.contains("uid 300015") && msg.contains("worker-a"),
            "{msg}"
        );
        // Auto skips what is held.
        let auto = UidPool::claim(&UidSpec::Auto, &d, "worker-c", 3, 5, "x").expect("auto");
        assert_eq!(auto.total(), 5);
        drop(a);
        // Released with its holder.
        UidPool::claim(&UidSpec::Range(300_015, 300_030), &d, "worker-b", 4, 4, "x")
            .expect("free again");
    }

    #[test]
    fn host_users_are_refused() {
        let d = dir();
        // 65534 is `nobody` on Debian.
        if host_user(65534).is_some() {
            let err = UidPool::claim(&UidSpec::Range(65530, 65534), &d, "w", 1, 1, "x")
                .expect_err("nobody");
            assert!(err.to_string().contains("host user"), "{err}");
        }
    }

    #[tokio::test]
    async fn leases_are_exclusive_and_come_back() {
        let d = dir();
        let pool =
            UidPool::claim(&UidSpec::Range(300_040, 300_041), &d, "w", 2, 2, "x").expect("claim");
        let a = pool.try_lease().expect("one");
        let b = pool.try_lease().expect("two");
        assert_ne!(a.uid(), b.uid());
        assert_eq!(a.gid(), a.uid());
        assert!(pool.try_lease().is_none());
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.lease(Duration::from_secs(10)).await.map(|l| l.uid()) })
        };
        let back = a.uid();
        drop(a);
        assert_eq!(waiter.await.expect("join").expect("lease"), back);
        let err = pool.lease(Duration::from_millis(10)).await;
        assert!(err.is_ok(), "the waiter's lease was dropped: free again");
        drop(b);
    }
}
