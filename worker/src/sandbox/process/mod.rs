//! Process sandbox: the script runs as an unprivileged user in fresh mount, pid,
//! ipc, uts (and, unless it may use the network, net) namespaces, in a cgroup
//! that limits its memory, processes and cpu, in a minimal root of its own (the
//! host's program directories read-only, a private tmpfs for its home, /tmp and
//! /dev/shm; see [`fs`]), fenced by Landlock ([`fence`]), with no capabilities,
//! no_new_privs, a seccomp filter, a clean environment and stdin from /dev/null.
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
//!     scratch/                     mount point of its tmpfs  ┐ inside its mount
//!     root/                        mount point of its root   ┘ namespace only
//! ```
//!
//! The task sees `krill/` as `/krill` and its scratch as `/work` (`$HOME`),
//! `/tmp` and `/dev/shm`.

pub mod cgroup;
pub mod cgroupns;
mod fence;
pub mod fs;
pub mod init;
mod layout;
pub mod message;
mod mounts;
mod pump;
mod ready;
mod special;
mod sweep;

use std::fs::{self as stdfs, File};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use broker::protocol::{Enforcement, Landlock, SandboxKind, Usage};
use nix::unistd::Uid;
use tokio::io::AsyncWriteExt;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::cgroup::Driver;
pub use self::layout::NOFILE;
use self::layout::{OUTPUT_FILE, SENSITIVE_FILE};
use self::message::{Report, TaskConfig};
use self::ready::{Helper, Launcher, Ready};
use self::sweep::{lock, mount_work_tmpfs, unmount_work_tmpfs};
use super::uids::UidPool;
use super::{Effective, Event, Exit, Outcome, Sandbox, SandboxError, Spec};
use crate::liveness::Liveness;
use crate::output::read_capped;
use crate::phases;
use broker::protocol::DEFAULT_INTERPRETER;

/// Time between SIGTERM and SIGKILL when a task is stopped.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long output is still read after the script's namespace is gone.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);
/// Deadline of the start-up probe task.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// What to check when the start-up probe task fails.
const PROBE_FIX: &str = "check --sandbox-helper, --process-rootfs and --process-bind";
/// PATH given to scripts.
pub const TASK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
    /// `--process-bind`: extra read-only binds (host source, target in the view).
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// `--process-rootfs`: a directory whose top-level directories make the
    /// task's programs instead of the host's /usr, /bin, /sbin, /lib*.
    pub rootfs: Option<PathBuf>,
    /// This worker's host-wide lock: a task cgroup or work dir whose worker
    /// holds none belongs to a dead worker and is swept.
    pub liveness: Arc<Liveness>,
    /// The worker network (`None`: the pool gives no task network).
    pub net: Option<Arc<crate::sandbox::net::Net>>,
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
    liveness: Arc<Liveness>,
    /// The worker network, for tasks with network.
    net: Option<Arc<crate::sandbox::net::Net>>,
    _lock: File,
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
        if let Some(dir) = &cfg.rootfs {
            if !dir.join("usr").is_dir() && !dir.join("bin").is_dir() {
                return Err(SandboxError::Setup(format!(
                    "--process-rootfs {}: not a root filesystem (no usr/ or bin/ in it; \
                     export one with `scripts/images --export-rootfs krill/python:1 DIR`)",
                    dir.display()
                )));
            }
        }
        let view = message::ViewConfig {
            rootfs: cfg.rootfs.clone(),
            binds: cfg.binds.clone(),
        };
        let root = cfg.work_root.clone();
        stdfs::create_dir_all(&root)?;
        stdfs::set_permissions(&root, stdfs::Permissions::from_mode(0o711))?;
        // Locked before the dir exists: a sweeping worker never takes it for a dead one's.
        let work_lock = lock(&root.join(format!("{}.lock", cfg.worker_id)))?;
        let mine = root.join(&cfg.worker_id);
        stdfs::create_dir_all(&mine)?;
        stdfs::set_permissions(&mine, stdfs::Permissions::from_mode(0o711))?;
        let mounted = mount_work_tmpfs(&mine);
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
                mine: mine.clone(),
                disk_bytes: cfg.disk_bytes,
                view,
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
            liveness: cfg.liveness.clone(),
            net: cfg.net.clone(),
            _lock: work_lock,
        })
    }

    /// What the init is told when the task is claimed (paths in the task's view).
    fn task_config(spec: &Spec) -> TaskConfig {
        let krill = PathBuf::from(layout::TASK_MOUNT);
        let home = PathBuf::from(layout::HOME);
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
        let taking = std::time::Instant::now();
        let waiting = self.ready.waiting();
        let ready::Prepared {
            mut child,
            mut dir,
            cgroup: cg,
            status: mut status_r,
            config: mut config_w,
            uid,
            landlock,
            ..
        } = self.ready.take(spec.limits.network).await?;
        let take_us = phases::us(taking);
        let setting_up = std::time::Instant::now();
        dir.claim(&spec.task_id, &spec.script)?;
        let helper = child.id().unwrap_or(0);
        // Joined to the worker bridge before the task is known to the helper:
        // the script starts with its network in place.
        let lease = match (&self.net, spec.limits.network) {
            (Some(net), true) => {
                let lease = net
                    .lease(&spec.limits.network_allow)
                    .await
                    .map_err(net_error)?;
                net.attach(&lease, helper).await.map_err(net_error)?;
                Some(lease)
            }
            (None, true) => {
                return Err(SandboxError::Setup(
                    "the task has network but the worker has no network set up".into(),
                ))
            }
            _ => None,
        };
        let sandbox_id = format!("{}/{}", self.worker_id, dir.name);
        if let Some(cg) = &cg {
            cg.apply(&spec.limits)
                .map_err(SandboxError::setup_io("limiting the task cgroup"))?;
        }
        let config = message::frame(&Self::task_config(&spec))
            .map_err(|e| SandboxError::Setup(format!("encoding the task config: {e}")))?;
        let helper = helper as i32;
        let setup_us = phases::us(setting_up);
        let running = std::time::Instant::now();
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
        let report_us = phases::us(running);
        let draining = std::time::Instant::now();
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
        let drain_us = phases::us(draining);
        let collecting = std::time::Instant::now();
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
        tracing::debug!(target: phases::TARGET, task_id = %spec.task_id, waiting, take_us,
            setup_us, report_us, drain_us, collect_us = phases::us(collecting), "sandbox phases");
        let task_id = spec.task_id.clone();
        self.cleanup.spawn(async move {
            let reaping = std::time::Instant::now();
            if tokio::time::timeout(KILL_GRACE, child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            let reap_us = phases::us(reaping);
            let removing = std::time::Instant::now();
            let _ = tokio::task::spawn_blocking(move || {
                drop(cg);
                drop(dir);
            })
            .await;
            tracing::debug!(target: phases::TARGET, %task_id, reap_us,
                remove_us = phases::us(removing), end_unix_us = phases::unix_us(), "sandbox cleanup");
            // Every process of the task is gone (its pid namespace and cgroup
            // are): its uid and its address may serve another sandbox.
            drop(uid);
            drop(lease);
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
            landlock: Some(match landlock {
                fence::State::Full => Landlock::Full,
                fence::State::Partial => Landlock::Partial,
                fence::State::Off => Landlock::Off,
            }),
        })
    }

    /// Removes dead workers' task cgroups and work dirs, and (`startup`) this
    /// worker's own from an earlier life (see [`sweep`]).
    fn sweep_leftovers(&self, startup: bool) -> Result<usize, SandboxError> {
        let cgroups = match &self.cgroups {
            Some(d) => sweep::cgroups(d.as_ref(), &self.worker_id, &self.liveness, startup),
            None => 0,
        };
        Ok(cgroups + sweep::work_dirs(&self.root, &self.mine, startup)?)
    }

    /// Runs `exit 0` with the default interpreter and the pool's default limits:
    /// the helper starts, the view is built, the fence applies and a program
    /// runs, or the error says what is missing.
    pub async fn probe(&self, defaults: &Effective, worker_id: &str) -> Result<(), SandboxError> {
        let spec = Spec {
            task_id: format!("probe-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            worker_id: worker_id.to_string(),
            script: "exit 0".into(),
            interpreter: DEFAULT_INTERPRETER.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            limits: Effective {
                timeout: PROBE_TIMEOUT,
                network: false,
                ..defaults.clone()
            },
            image: None,
        };
        let (tx, mut rx) = mpsc::channel(16);
        let output = tokio::spawn(async move {
            let mut out = Vec::new();
            while let Some(ev) = rx.recv().await {
                if let Event::Output(_, b) = ev {
                    out.extend_from_slice(&b);
                }
            }
            out
        });
        let ran = self.run_task(spec, tx, CancellationToken::new()).await;
        let out = output.await.unwrap_or_default();
        let out = String::from_utf8_lossy(&out);
        match ran {
            Ok(o) if o.exit == Exit::Code(0) => {
                tracing::info!(landlock = ?o.landlock, "process sandbox probe ran");
                Ok(())
            }
            Ok(o) => Err(SandboxError::Unusable(format!(
                "the process sandbox cannot run a task: `{}` ended with {:?}: {} ({PROBE_FIX})",
                DEFAULT_INTERPRETER.join(" "),
                o.exit,
                out.trim()
            ))),
            Err(e) => Err(SandboxError::Probe {
                fix: PROBE_FIX,
                source: Box::new(e),
            }),
        }
    }
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
        let removed = self.sweep_leftovers(true)?;
        self.ready.refill();
        Ok(removed)
    }

    async fn reap(&self) -> Result<usize, SandboxError> {
        // A dead worker's task network grants too (its tasks died with it).
        let grants = match &self.net {
            Some(net) => net.sweep().await,
            None => 0,
        };
        Ok(self.sweep_leftovers(false)? + grants)
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

fn net_error(e: crate::sandbox::net::NetError) -> SandboxError {
    SandboxError::Setup(format!("joining the task to the worker network: {e}"))
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
