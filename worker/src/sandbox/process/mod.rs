//! Process sandbox: the script runs as an unprivileged user in fresh mount, pid,
//! ipc, uts (and, unless it may use the network, net) namespaces, in a cgroup
//! that limits its memory, processes and cpu, with the host read-only, a private
//! tmpfs for its home, /tmp and /dev/shm, no capabilities, no_new_privs, a
//! seccomp filter, a clean environment and stdin from /dev/null.
//!
//! ```text
//! worker ──posix_spawn──▶ krill-sandbox-init (joins the cgroup, unshares) ──fork──▶ init (pid 1) ──▶ script
//! ```
//!
//! (see [`init`] for who does what, [`message`] for the wire between the worker
//! and the helper, [`fs`] for the filesystem view, [`cgroup`] for limits and usage). A deadline or cancel sends SIGTERM to the helper's
//! process group, and after [`KILL_GRACE`] SIGKILLs the helper, which takes the
//! pid namespace down with it; the cgroup is then killed and removed too.
//!
//! Layout of one task on the host (everything removed when the task ends):
//!
//! ```text
//! <work_root>/<worker>/            root 0711, a tmpfs, locked by the live worker (flock)
//!   <task>.<rand>/                 root 0711: the task cannot rename what is inside
//!     krill/script                 root 0644: the script
//!     krill/output                 task user 0600: $KRILL_OUTPUT
//!     krill/sensitive_output       task user 0600: $KRILL_SENSITIVE_OUTPUT
//!     home/                        mount point of the task's private $HOME
//!     scratch/                     mount point of its tmpfs (inside its namespace only)
//! ```

pub mod cgroup;
pub mod cgroupns;
pub mod fs;
pub mod init;
mod layout;
pub mod message;
mod pump;
mod ready;

use std::fs::{self as stdfs, File};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use broker::protocol::{Enforcement, SandboxKind, Usage};
use nix::unistd::Uid;
use tokio::io::AsyncWriteExt;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::cgroup::Driver;
pub use self::layout::NOFILE;
use self::layout::{OUTPUT_FILE, SENSITIVE_FILE};
use self::message::{Report, TaskConfig};
use self::ready::{Helper, Launcher, Ready, TaskDir};
use super::uids::UidPool;
use super::{Event, Exit, Outcome, Sandbox, SandboxError, Spec};
use crate::output::read_capped;

/// Time between SIGTERM and SIGKILL when a task is stopped.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long output is still read after the script's namespace is gone.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);
/// PATH given to scripts.
pub const TASK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Host-wide directory of live workers' locks: a task cgroup whose worker holds
/// no lock here belongs to a dead worker and is swept.
pub const LOCK_DIR: &str = "/run/krill/workers";

/// Process sandbox configuration.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// The uids scripts run as, one per sandbox.
    pub uids: Arc<UidPool>,
    /// Root of the per-task work dirs.
    pub work_root: PathBuf,
    /// This worker's id (its work dirs live under `<work_root>/<worker_id>`).
    pub worker_id: String,
    /// Run without cgroup limits where no cgroup can be used (results say
    /// `limits: degraded`); otherwise refuse to start.
    pub allow_degraded_limits: bool,
    /// The `krill-sandbox-init` binary (default: next to this executable, else
    /// this executable re-executed).
    pub helper_path: Option<PathBuf>,
    /// Helpers kept prestarted for their tasks (the worker's slots).
    pub slots: usize,
    /// Scratch size of prestarted helpers (the pool's default `disk`; a
    /// task asking another size has its scratch resized).
    pub disk_bytes: u64,
}

/// Runs scripts as an unprivileged user in namespaces and a cgroup on this host.
#[derive(Debug)]
pub struct ProcessSandbox {
    root: PathBuf,
    mine: PathBuf,
    worker_id: String,
    cgroups: Option<Arc<dyn Driver>>,
    /// Prestarted helpers, one per slot.
    ready: Arc<Ready>,
    /// Removal of finished tasks' cgroups and dirs, off the path to the result.
    cleanup: tokio_util::task::TaskTracker,
    /// This worker's work dir is a tmpfs it mounted (unmounted on drop).
    mounted: bool,
    _lock: File,
    _host_lock: File,
}

impl ProcessSandbox {
    /// Checks that privileges can be dropped and limits applied, and prepares
    /// this worker's work dir and cgroups.
    pub fn new(cfg: &ProcessConfig) -> Result<Self, SandboxError> {
        if !Uid::effective().is_root() {
            return Err(SandboxError::Setup(
                "the process sandbox must start as root to drop privileges to the task user \
                 (run the worker as root, or use --sandbox container)"
                    .into(),
            ));
        }
        let root = cfg.work_root.clone();
        stdfs::create_dir_all(&root)?;
        stdfs::set_permissions(&root, stdfs::Permissions::from_mode(0o711))?;
        let mine = root.join(&cfg.worker_id);
        stdfs::create_dir_all(&mine)?;
        stdfs::set_permissions(&mine, stdfs::Permissions::from_mode(0o711))?;
        let mounted = mount_work_tmpfs(&mine);
        let work_lock = lock(&root.join(format!("{}.lock", cfg.worker_id)))?;
        stdfs::create_dir_all(LOCK_DIR)?;
        let host_lock = lock(&PathBuf::from(LOCK_DIR).join(format!("{}.lock", cfg.worker_id)))?;
        let cgroups = choose_limits(
            cgroup::detect_host().and_then(|d| {
                d.init(&cfg.worker_id)
                    .map_err(|e| format!("preparing cgroup {}: {e}", d.version()))?;
                Ok(d)
            }),
            cfg.allow_degraded_limits,
        )?;
        let helper = Helper::locate(cfg.helper_path.as_ref())?;
        tracing::info!(helper = %helper.path.display(), ahead = cfg.slots, "process sandbox helper");
        let ready = Ready::new(
            Launcher {
                helper,
                cgroups: cgroups.clone(),
                worker_id: cfg.worker_id.clone(),
                uids: cfg.uids.clone(),
                work_root: root.clone(),
                mine: mine.clone(),
                disk_bytes: cfg.disk_bytes,
            },
            cfg.slots,
        );
        Ok(ProcessSandbox {
            mounted,
            ready,
            cleanup: tokio_util::task::TaskTracker::new(),
            root,
            mine,
            worker_id: cfg.worker_id.clone(),
            cgroups,
            _lock: work_lock,
            _host_lock: host_lock,
        })
    }

    /// What the init is told when the task is claimed.
    fn task_config(spec: &Spec, dir: &TaskDir) -> TaskConfig {
        let krill = dir.inner.join("krill");
        let home = dir.inner.join("home");
        let mut env = spec.env.clone();
        env.extend([
            ("PATH".to_string(), TASK_PATH.to_string()),
            ("HOME".to_string(), home.display().to_string()),
            ("TMPDIR".to_string(), "/tmp".to_string()),
            (
                "KRILL_OUTPUT".to_string(),
                krill.join(OUTPUT_FILE).display().to_string(),
            ),
            (
                "KRILL_SENSITIVE_OUTPUT".to_string(),
                krill.join(SENSITIVE_FILE).display().to_string(),
            ),
            ("KRILL_TASK_ID".to_string(), spec.task_id.clone()),
        ]);
        let mut argv = spec.interpreter.clone();
        argv.push(krill.join("script").display().to_string());
        TaskConfig {
            argv,
            env,
            cwd: home,
            disk_bytes: spec.limits.disk_bytes,
            nproc: spec.limits.pids,
        }
    }

    async fn run_task(
        &self,
        spec: Spec,
        events: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> Result<Outcome, SandboxError> {
        let ready::Prepared {
            mut child,
            mut dir,
            cgroup: cg,
            status: mut status_r,
            config: mut config_w,
            uid,
            ..
        } = self.ready.take(!spec.limits.network).await?;
        dir.claim(&spec.task_id, &spec.script)?;
        let sandbox_id = format!("{}/{}", self.worker_id, dir.name);
        if let Some(cg) = &cg {
            cg.apply(&spec.limits)
                .map_err(SandboxError::setup_io("limiting the task cgroup"))?;
        }
        let config = message::frame(&Self::task_config(&spec, &dir))
            .map_err(|e| SandboxError::Setup(format!("encoding the task config: {e}")))?;
        let helper = child.id().map(|p| p as i32).unwrap_or(0);
        // Dropping the write half afterwards shuts it down.
        tokio::spawn(async move {
            let _ = config_w.write_all(&config).await;
        });
        let watcher =
            pump::SensitiveWatch::new(dir.path.join("krill"), spec.limits.output_file_bytes);
        let reader = tokio::spawn(pump::pump(
            child.stdout.take(),
            child.stderr.take(),
            events,
            watcher,
        ));
        // The init reports once every process of the task is gone (or the
        // helper died first: end-of-file without a report).
        let deadline = tokio::time::Instant::now() + spec.limits.timeout;
        let (stopped, mut report) = tokio::select! {
            report = read_report(&mut status_r) => (None, report),
            _ = tokio::time::sleep_until(deadline) => (Some(Exit::TimedOut), None),
            _ = cancel.cancelled() => (Some(Exit::Cancelled), None),
        };
        if stopped.is_some() {
            stop(&mut child, helper).await;
            report = tokio::time::timeout(DRAIN_AFTER_EXIT, read_report(&mut status_r))
                .await
                .unwrap_or_default();
        }
        let mut reader = reader;
        if tokio::time::timeout(DRAIN_AFTER_EXIT, &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
        // What the task used; the namespaces' teardown, the cgroup and the
        // task dir are left to the clean-up, off the path to the result.
        let (usage, oom_kills) = match &cg {
            Some(cg) => (cg.usage(), cg.oom_kills()),
            None => (Usage::default(), 0),
        };
        let exit = decide(stopped, report, oom_kills)?;
        let krill = dir.path.join("krill");
        let cap = spec.limits.output_file_bytes;
        let outputs = read_capped(&krill.join(OUTPUT_FILE), cap, "KRILL_OUTPUT")
            .map(bytes::Bytes::from)
            .map_err(|e| e.to_string());
        let sensitive = read_capped(&krill.join(SENSITIVE_FILE), cap, "KRILL_SENSITIVE_OUTPUT")
            .map(bytes::Bytes::from)
            .map_err(|e| e.to_string());
        self.cleanup.spawn(async move {
            if tokio::time::timeout(KILL_GRACE, child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            let _ = tokio::task::spawn_blocking(move || {
                drop(cg);
                drop(dir);
            })
            .await;
            // Every process of the task is gone (its pid namespace and cgroup
            // are): its uid may serve another sandbox.
            drop(uid);
        });
        Ok(Outcome {
            exit,
            outputs,
            sensitive,
            usage,
            sandbox_id,
            enforcement: if self.cgroups.is_some() {
                Enforcement::Enforced
            } else {
                Enforcement::Degraded
            },
        })
    }

    /// Whether the worker that owns `id` is alive (holds its host-wide lock).
    fn worker_alive(&self, id: &str) -> bool {
        if id == self.worker_id {
            return true;
        }
        let path = PathBuf::from(LOCK_DIR).join(format!("{id}.lock"));
        match File::open(&path) {
            Ok(f) => {
                nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err()
            }
            Err(_) => false,
        }
    }

    /// Removes task cgroups of dead workers, and this worker's own from an
    /// earlier life under the same id (nothing runs yet when the sweep runs).
    fn sweep_cgroups(&self) -> usize {
        let Some(driver) = &self.cgroups else {
            return 0;
        };
        let mut removed = 0;
        for k in driver.krill_dirs() {
            let Ok(workers) = stdfs::read_dir(&k) else {
                continue;
            };
            for w in workers.flatten() {
                let worker = w.file_name().to_string_lossy().into_owned();
                let mine = worker == self.worker_id;
                if !w.path().is_dir() || (!mine && self.worker_alive(&worker)) {
                    continue;
                }
                for t in stdfs::read_dir(w.path()).into_iter().flatten().flatten() {
                    if t.path().is_dir() {
                        let name = format!("{worker}/{}", t.file_name().to_string_lossy());
                        if cgroup::remove(driver.as_ref(), &name).is_ok() {
                            removed += 1;
                        }
                    }
                }
                if !mine {
                    let _ = stdfs::remove_dir(w.path());
                }
            }
        }
        // Lock files of dead workers.
        for e in stdfs::read_dir(LOCK_DIR).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".lock") {
                if !self.worker_alive(id) {
                    let _ = stdfs::remove_file(e.path());
                }
            }
        }
        removed
    }
}

/// Mounts a tmpfs on this worker's work dir, unless one is there already: each
/// task's few files (script, output files) then cost no disk inode work, and
/// their memory is charged to the task's cgroup. Where mounting is not allowed
/// the dir stays on its filesystem. Returns whether the dir is a tmpfs mount.
fn mount_work_tmpfs(dir: &std::path::Path) -> bool {
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
fn unmount_work_tmpfs(dir: &std::path::Path) {
    let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
}

impl Drop for ProcessSandbox {
    fn drop(&mut self) {
        if self.mounted {
            unmount_work_tmpfs(&self.mine);
            let _ = stdfs::remove_dir(&self.mine);
        }
    }
}

/// The cgroup driver to limit tasks with; `None` (degraded) only when allowed.
fn choose_limits(
    detected: Result<Arc<dyn Driver>, String>,
    allow_degraded: bool,
) -> Result<Option<Arc<dyn Driver>>, SandboxError> {
    match detected {
        Ok(d) => {
            tracing::info!(cgroup = d.version(), "process sandbox limits by cgroup");
            Ok(Some(d))
        }
        Err(why) if allow_degraded => {
            tracing::warn!(reason = %why,
                "process sandbox without cgroup limits (--allow-degraded-limits): results say `limits: degraded`");
            Ok(None)
        }
        Err(why) => Err(SandboxError::Setup(format!(
            "{why}; refusing to run tasks without memory, pids and cpu limits \
             (use --allow-degraded-limits to run them anyway)"
        ))),
    }
}

/// How the task ended, from what the worker did (`stopped`), what the init
/// reported, and what the memory cgroup saw.
fn decide(
    stopped: Option<Exit>,
    report: Option<Report>,
    oom_kills: u64,
) -> Result<Exit, SandboxError> {
    if let Some(exit) = stopped {
        return Ok(exit);
    }
    match report {
        Some(Report::Exit(0)) => Ok(Exit::Code(0)),
        Some(Report::Exit(_) | Report::Signal(_)) if oom_kills > 0 => Ok(Exit::OomKilled),
        Some(Report::Exit(c)) => Ok(Exit::Code(c)),
        Some(Report::Signal(s)) => Ok(Exit::Signal(s)),
        Some(Report::Error(e)) => Err(SandboxError::Setup(e)),
        // The helper or init itself was OOM-killed: the whole task went with it.
        None if oom_kills > 0 => Ok(Exit::OomKilled),
        None => Err(SandboxError::Setup(
            "the sandbox init ended without reporting the script's exit".into(),
        )),
    }
}

/// Reads the report line (the init's, or the helper's error); `None` at
/// end-of-file without one.
async fn read_report(r: &mut tokio::net::unix::OwnedReadHalf) -> Option<Report> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.contains(&b'\n') && buf.len() < 64 * 1024 {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Report::parse(&String::from_utf8_lossy(&buf))
}

impl Sandbox for ProcessSandbox {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Process
    }

    async fn run(
        &self,
        spec: Spec,
        events: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> Result<Outcome, SandboxError> {
        self.run_task(spec, events, cancel).await
    }

    async fn sweep(&self) -> Result<usize, SandboxError> {
        // Helpers waiting from before would be swept with their cgroups.
        let stale = self.ready.clear();
        let _ = tokio::task::spawn_blocking(move || drop(stale)).await;
        let mut removed = self.sweep_cgroups();
        // Work dirs of workers whose lock is free belong to dead workers; this
        // worker's own leftovers come from an earlier life under the same id.
        for entry in stdfs::read_dir(&self.root)? {
            let entry = entry?;
            let path = entry.path();
            if !entry.file_type()?.is_dir() {
                continue;
            }
            if path == self.mine {
                for t in stdfs::read_dir(&path)?.flatten() {
                    removed += 1;
                    let _ = stdfs::remove_dir_all(t.path());
                }
                continue;
            }
            let lock_path = self
                .root
                .join(format!("{}.lock", entry.file_name().to_string_lossy()));
            let free = match File::open(&lock_path) {
                Ok(f) => {
                    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
                }
                Err(_) => true,
            };
            if free {
                removed += stdfs::read_dir(&path).map(|d| d.count()).unwrap_or(0);
                unmount_work_tmpfs(&path);
                let _ = stdfs::remove_dir_all(&path);
                let _ = stdfs::remove_file(&lock_path);
            }
        }
        self.ready.refill();
        Ok(removed)
    }

    async fn ready(&self) -> bool {
        self.mine.is_dir()
    }

    /// Helpers prestarted (one per slot) and waiting for a task.
    fn prestarted(&self) -> usize {
        self.ready.waiting()
    }

    async fn close(&self) {
        let waiting = self.ready.clear();
        self.cleanup.spawn_blocking(move || drop(waiting));
        self.cleanup.close();
        self.cleanup.wait().await;
    }
}

/// Takes an exclusive flock on `path`, held for the life of the returned file.
/// A worker restarted right after a crash may find the lock still held for a
/// moment by its predecessor's dying sandbox processes: it retries this long.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn lock(path: &std::path::Path) -> Result<File, SandboxError> {
    let f = File::create(path)?;
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

/// TERM to the helper's process group (the script and whatever stayed in its
/// group; the helper and the init ignore it), a grace, then SIGKILL to the
/// helper, which takes the whole pid namespace with it.
async fn stop(child: &mut Child, helper: i32) {
    if helper > 1 {
        // SAFETY: killpg has no memory-safety preconditions; `helper` is the
        // group the helper created with setsid, never 0 or 1.
        unsafe {
            libc::killpg(helper, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_cgroup_refuses_unless_degraded_limits_are_allowed() {
        let err = choose_limits(Err("no usable cgroup".into()), false).expect_err("refused");
        assert!(err.to_string().contains("--allow-degraded-limits"), "{err}");
        assert!(choose_limits(Err("no usable cgroup".into()), true)
            .expect("allowed")
            .is_none());
        let v2: Arc<dyn Driver> = Arc::new(cgroup::V2 {
            base: "/sys/fs/cgroup/x".into(),
            base_is_root: false,
        });
        let chosen = choose_limits(Ok(v2), false).expect("usable").expect("some");
        assert_eq!(chosen.version(), "v2");
    }

    #[test]
    fn exits_are_decided_from_the_report_and_the_memory_cgroup() {
        let d = |s, r, o| decide(s, r, o).ok();
        assert_eq!(d(None, Some(Report::Exit(0)), 0), Some(Exit::Code(0)));
        assert_eq!(d(None, Some(Report::Exit(3)), 0), Some(Exit::Code(3)));
        assert_eq!(d(None, Some(Report::Signal(11)), 0), Some(Exit::Signal(11)));
        assert_eq!(d(None, Some(Report::Signal(9)), 1), Some(Exit::OomKilled));
        assert_eq!(d(None, Some(Report::Exit(137)), 2), Some(Exit::OomKilled));
        assert_eq!(d(None, None, 1), Some(Exit::OomKilled));
        assert_eq!(
            d(Some(Exit::TimedOut), Some(Report::Signal(15)), 0),
            Some(Exit::TimedOut)
        );
        assert!(decide(None, None, 0).is_err());
        assert!(decide(None, Some(Report::Error("x".into())), 0).is_err());
    }
}
