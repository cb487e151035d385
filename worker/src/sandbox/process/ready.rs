//! Sandbox helpers started ahead of their tasks: one per slot waits, already in
//! a fresh cgroup and fresh namespaces, for the task it will run (single use,
//! like the pre-started containers).
//!
//! Joining a cgroup v1 costs an RCU grace period (10–20 ms here, mostly waiting)
//! and a spawn a few milliseconds; a waiting helper moves both off the path from
//! claim to result. A task that may use the network gets a helper started for
//! it (its view has resolv.conf), whose fresh net namespace the worker then
//! joins to the worker bridge (`sandbox::net`).

use std::fs::{self as stdfs, OpenOptions};
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::Child;

use nix::unistd::{Gid, Uid};

use crate::sandbox::uids::{UidLease, UidPool, LEASE_WAIT};

use super::cgroup::{Driver, TaskCgroup};
use super::init;
use super::layout::{NOFILE, OUTPUT_FILE, SENSITIVE_FILE};
use super::message::{self, SandboxConfig};
use crate::sandbox::SandboxError;

/// The program started as each task's sandbox helper.
#[derive(Debug, Clone)]
pub struct Helper {
    pub path: PathBuf,
    /// argv[0] that makes `krill-worker` run as the helper (re-executed self).
    pub arg0: Option<&'static str>,
}

impl Helper {
    /// An explicit path must exist; otherwise `krill-sandbox-init` next to this
    /// executable, else this executable itself (slower to start: it is large).
    pub fn locate(explicit: Option<&PathBuf>) -> Result<Helper, SandboxError> {
        if let Some(p) = explicit {
            if !p.is_file() {
                return Err(SandboxError::Setup(format!(
                    "sandbox helper {} not found",
                    p.display()
                )));
            }
            return Ok(Helper {
                path: p.clone(),
                arg0: None,
            });
        }
        let sibling = std::env::current_exe()
            .ok()
            .map(|exe| exe.with_file_name(init::BINARY))
            .filter(|p| p.is_file());
        Ok(match sibling {
            Some(path) => Helper { path, arg0: None },
            None => Helper {
                path: PathBuf::from("/proc/self/exe"),
                arg0: Some(init::ARG0),
            },
        })
    }
}

/// A task's directory on the host; removed when dropped, on every path.
///
/// ```text
/// <task>.<unique>/   root 0711 (`<unique>` until the task is known)
///   krill/script     root 0644: the script              ┐ the task's
///   krill/output     task user 0600: $KRILL_OUTPUT      │ /krill
///   krill/sensitive_output   task user 0600             ┘
///   scratch/         mount point of its tmpfs  ┐ inside its mount
///   root/            mount point of its root   ┘ namespace only
/// ```
#[derive(Debug)]
pub struct TaskDir {
    /// Where it is on the host now.
    pub path: PathBuf,
    /// Its name on the host now.
    pub name: String,
}

impl TaskDir {
    fn create(parent: &Path, name: &str, uid: Uid, gid: Gid) -> Result<TaskDir, SandboxError> {
        let dir = parent.join(name);
        let guard = TaskDir {
            path: dir.clone(),
            name: name.to_string(),
        };
        stdfs::create_dir(&dir)?;
        stdfs::set_permissions(&dir, stdfs::Permissions::from_mode(0o711))?;
        let krill = dir.join("krill");
        stdfs::create_dir(&krill)?;
        stdfs::set_permissions(&krill, stdfs::Permissions::from_mode(0o755))?;
        for file in [OUTPUT_FILE, SENSITIVE_FILE] {
            let path = krill.join(file);
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            nix::unistd::chown(&path, Some(uid), Some(gid)).map_err(std::io::Error::from)?;
        }
        for sub in ["scratch", "root"] {
            stdfs::create_dir(dir.join(sub))?;
            stdfs::set_permissions(dir.join(sub), stdfs::Permissions::from_mode(0o700))?;
        }
        Ok(guard)
    }

    /// Renames it on the host to carry the task's id (`<task>.<unique>`, for
    /// operators and the sweep) and writes the script into it.
    pub fn claim(&mut self, task_id: &str, script: &str) -> Result<(), SandboxError> {
        let name = format!("{task_id}.{}", self.name);
        let to = self.path.with_file_name(&name);
        stdfs::rename(&self.path, &to)?;
        self.path = to;
        self.name = name;
        let path = self.path.join("krill").join("script");
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(path)?;
        f.write_all(script.as_bytes())?;
        Ok(())
    }
}

impl Drop for TaskDir {
    fn drop(&mut self) {
        if let Err(e) = stdfs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.path.display(), error = %e, "failed to remove task dir");
            }
        }
    }
}

/// A started helper waiting for its task's [`message::TaskConfig`].
#[derive(Debug)]
pub struct Prepared {
    pub child: Child,
    /// Its task's directory (created with it).
    pub dir: TaskDir,
    /// Its cgroup (limits are written when the task is known).
    pub cgroup: Option<TaskCgroup>,
    /// Where the init's report arrives.
    pub status: OwnedReadHalf,
    /// Where the task's config goes (then dropped: end-of-file for the helper).
    pub config: OwnedWriteHalf,
    /// Its `ready` line was read.
    pub ready: bool,
    /// The uid its task runs as: held until every process of the task is gone.
    pub uid: UidLease,
    /// How much of the Landlock fence its init could prepare (from `ready`).
    pub landlock: super::fence::State,
}

impl Prepared {
    /// Waits for the init's `ready` line: the view is built and it waits for
    /// the task (only then may the task's dir be renamed). A setup error the
    /// helper reported instead is returned.
    async fn until_ready(&mut self) -> Result<(), SandboxError> {
        use tokio::io::AsyncReadExt as _;
        if self.ready {
            return Ok(());
        }
        let mut line = Vec::new();
        let read = async {
            let mut byte = [0u8; 1];
            // One byte at a time: nothing after the line may be consumed.
            while line.len() < 64 * 1024 {
                match self.status.read(&mut byte).await {
                    Ok(1) if byte[0] == b'\n' => break,
                    Ok(1) => line.push(byte[0]),
                    _ => break,
                }
            }
        };
        if tokio::time::timeout(READY_WAIT, read).await.is_err() {
            return Err(SandboxError::Setup(format!(
                "the sandbox helper was not ready within {READY_WAIT:?}"
            )));
        }
        let line = String::from_utf8_lossy(&line);
        if let Some(landlock) = message::parse_ready(&line) {
            self.ready = true;
            self.landlock = landlock;
            return Ok(());
        }
        Err(SandboxError::Setup(match message::Report::parse(&line) {
            Some(message::Report::Error(e)) => e,
            _ => format!("the sandbox helper ended before it was ready: {line:?}"),
        }))
    }
}

/// How long a helper may take to build a task's view.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Starts helpers.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub helper: Helper,
    pub cgroups: Option<Arc<dyn Driver>>,
    pub worker_id: String,
    /// The uids tasks run as (one per sandbox).
    pub uids: Arc<UidPool>,
    /// This worker's work dir.
    pub mine: PathBuf,
    /// Scratch size until the task says otherwise (the pool's default).
    pub disk_bytes: u64,
    /// What the task's root is made of.
    pub view: message::ViewConfig,
}

impl Launcher {
    /// Creates a cgroup and starts a helper that joins it and unshares its
    /// namespaces (a fresh net namespace too; `network`: for a task with
    /// network), then waits for its config. Must run inside the runtime (the
    /// helper's pipes register with it).
    ///
    /// It runs on a runtime thread, synchronous as it is (the dir, the
    /// cgroup's mkdir, posix_spawn), and not on the blocking pool: the
    /// helper's `PR_SET_PDEATHSIG` fires when the *thread* that spawned it
    /// ends (prctl(2)), and a blocking-pool thread ends after 10 s idle —
    /// tried in issue 19, the helpers started ahead were killed
    /// ("the sandbox init ended without reporting the script's exit").
    pub fn launch(&self, network: bool, uid: UidLease) -> Result<Prepared, SandboxError> {
        let name = uuid::Uuid::new_v4().simple().to_string();
        let (task_uid, task_gid) = (Uid::from_raw(uid.uid()), Gid::from_raw(uid.gid()));
        let dir = TaskDir::create(&self.mine, &name, task_uid, task_gid)?;
        let cgroup = match &self.cgroups {
            Some(d) => Some(
                TaskCgroup::create(d.clone(), format!("{}/{name}", self.worker_id))
                    .map_err(SandboxError::setup_io("creating the task cgroup"))?,
            ),
            None => None,
        };
        let first = message::frame(&SandboxConfig {
            uid: task_uid.as_raw(),
            gid: task_gid.as_raw(),
            task_dir: dir.path.clone(),
            disk_bytes: self.disk_bytes,
            nofile: NOFILE,
            net_ns: true,
            network,
            cgroup_procs: cgroup
                .as_ref()
                .map(|cg| cg.procs_files().to_vec())
                .unwrap_or_default(),
            view: self.view.clone(),
        })
        .map_err(SandboxError::Setup)?;
        let (mut ours, theirs) = UnixStream::pair()?;
        let mut cmd = tokio::process::Command::new(&self.helper.path);
        if let Some(arg0) = self.helper.arg0 {
            cmd.arg0(arg0);
        }
        // No pre_exec: the standard library then starts the helper with
        // posix_spawn (vfork), not a fork of this large, multi-threaded process.
        cmd.env_clear()
            .env(init::ENV_FLAG, std::process::id().to_string())
            .current_dir("/")
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let spawned = cmd.spawn();
        // The command holds the helper's end of the socket: close this copy, or
        // the status would never reach end-of-file.
        drop(cmd);
        let child = spawned.map_err(SandboxError::setup_io("starting the sandbox helper"))?;
        // Small: fits the socket's buffer, so this blocking write returns at once.
        ours.write_all(&first)?;
        ours.set_nonblocking(true)?;
        let (status, config) = tokio::net::UnixStream::from_std(ours)?.into_split();
        Ok(Prepared {
            child,
            dir,
            cgroup,
            status,
            config,
            ready: false,
            uid,
            landlock: super::fence::State::Off,
        })
    }
}

/// The helper that has waited longest: the one started at the previous take
/// is still joining its cgroup and building its root (issue 19: taking the
/// newest made most tasks wait for it, 3 ms at p50 and 20 ms above p95).
fn oldest<T>(waiting: &mut Vec<T>) -> Option<T> {
    (!waiting.is_empty()).then(|| waiting.remove(0))
}

/// Helpers ready for tasks without network, refilled in the background.
#[derive(Debug)]
pub struct Ready {
    launcher: Launcher,
    target: usize,
    waiting: Mutex<Vec<Prepared>>,
    /// Launches under way, so refills do not overshoot.
    pending: AtomicUsize,
}

impl Ready {
    pub fn new(launcher: Launcher, target: usize) -> Arc<Self> {
        Arc::new(Ready {
            launcher,
            target,
            waiting: Mutex::new(Vec::new()),
            pending: AtomicUsize::new(0),
        })
    }

    /// A helper for a task: a waiting one when the task has no network and one
    /// is alive, else one started now. Starts replacements in the background.
    pub async fn take(self: &Arc<Self>, network: bool) -> Result<Prepared, SandboxError> {
        let mut found = None;
        if !network {
            loop {
                let Some(mut p) = oldest(&mut self.lock()) else {
                    break;
                };
                // One that died or failed waiting (killed from outside) is dropped.
                if matches!(p.child.try_wait(), Ok(None)) && p.until_ready().await.is_ok() {
                    found = Some(p);
                    break;
                }
                tokio::task::spawn_blocking(move || drop(p));
            }
        }
        self.refill();
        match found {
            Some(p) => Ok(p),
            None => {
                // A uid comes back when a finished task's processes are gone.
                let uid = self.launcher.uids.lease(LEASE_WAIT).await?;
                let mut p = self.launcher.launch(network, uid)?;
                p.until_ready().await?;
                Ok(p)
            }
        }
    }

    /// Starts helpers in the background until `target` wait.
    pub fn refill(self: &Arc<Self>) {
        let have = self.lock().len() + self.pending.load(Ordering::SeqCst);
        let missing = self.target.saturating_sub(have);
        if missing == 0 {
            return;
        }
        self.pending.fetch_add(missing, Ordering::SeqCst);
        let ready = self.clone();
        tokio::spawn(async move {
            for _ in 0..missing {
                // No uid free (every one serves a task): the next take refills.
                let Some(uid) = ready.launcher.uids.try_lease() else {
                    tracing::debug!("no free sandbox uid to start a helper ahead");
                    ready.pending.fetch_sub(1, Ordering::SeqCst);
                    continue;
                };
                let launching = std::time::Instant::now();
                let at_unix_us = crate::phases::unix_us();
                let launched = ready.launcher.launch(false, uid);
                tracing::debug!(target: crate::phases::TARGET, at_unix_us,
                    launch_us = crate::phases::us(launching), "helper launched ahead");
                match launched {
                    Ok(p) => ready.lock().push(p),
                    Err(e) => tracing::warn!(error = %e, "could not start a sandbox helper ahead"),
                }
                ready.pending.fetch_sub(1, Ordering::SeqCst);
            }
        });
    }

    /// How many helpers wait.
    pub fn waiting(&self) -> usize {
        self.lock().len()
    }

    /// Takes every waiting helper out; dropping them stops them and removes
    /// their cgroups (which blocks: drop them off the runtime's threads).
    pub fn clear(&self) -> Vec<Prepared> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Prepared>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::oldest;

    #[test]
    fn a_task_takes_the_helper_that_waited_longest_and_each_once() {
        // Refills push at the back: [started first, started at the last take].
        let mut waiting = vec!["first", "second"];
        assert_eq!(oldest(&mut waiting), Some("first"));
        waiting.push("third");
        assert_eq!(oldest(&mut waiting), Some("second"));
        assert_eq!(oldest(&mut waiting), Some("third"));
        assert_eq!(
            oldest(&mut waiting),
            None,
            "single use: none is handed out twice"
        );
    }
}
