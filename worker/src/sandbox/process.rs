//! Process sandbox: the script runs as an unprivileged user in its own session,
//! with a clean environment, stdin from /dev/null, rlimits, a private work dir,
//! and a deadline that kills its whole process group.
//!
//! Layout of one task on disk (everything removed when the task ends):
//!
//! ```text
//! <work_root>/<worker>/            root 0711, locked by the live worker (flock)
//!   <task>.<rand>/                 root 0711: the task cannot rename what is inside
//!     krill/script                 root 0644: the script
//!     krill/output                 task user 0600: $KRILL_OUTPUT
//!     krill/sensitive_output       task user 0600: $KRILL_SENSITIVE_OUTPUT
//!     home/                        task user 0700: $HOME and the working directory
//! ```

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use broker::protocol::{Enforcement, SandboxKind, Stream, Usage};
use bytes::Bytes;
use nix::unistd::{Gid, Uid, User};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdout};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Event, Exit, Outcome, Sandbox, SandboxError, Spec};
use crate::output::read_capped;

/// Time between SIGTERM and SIGKILL when a task is stopped.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long output is still read after the script exited (a process that escaped
/// the group may hold the pipes open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);
/// Open-file limit of a task.
const NOFILE: u64 = 1024;
/// PATH given to scripts.
const TASK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const OUTPUT_FILE: &str = "output";
const SENSITIVE_FILE: &str = "sensitive_output";
const READ_CHUNK: usize = 64 * 1024;

/// Process sandbox configuration.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// User name or uid scripts run as.
    pub user: String,
    /// Root of the per-task work dirs.
    pub work_root: PathBuf,
    /// This worker's id (its work dirs live under `<work_root>/<worker_id>`).
    pub worker_id: String,
}

/// Runs scripts as an unprivileged user on this host.
#[derive(Debug)]
pub struct ProcessSandbox {
    uid: Uid,
    gid: Gid,
    root: PathBuf,
    mine: PathBuf,
    _lock: File,
}

impl ProcessSandbox {
    /// Checks that privileges can be dropped and prepares this worker's work dir.
    pub fn new(cfg: &ProcessConfig) -> Result<Self, SandboxError> {
        if !Uid::effective().is_root() {
            return Err(SandboxError::Setup(
                "the process sandbox must start as root to drop privileges to the task user \
                 (run the worker as root, or use --sandbox container)"
                    .into(),
            ));
        }
        let (uid, gid) = resolve_user(&cfg.user)?;
        if uid.is_root() {
            return Err(SandboxError::Setup("the task user must not be root".into()));
        }
        let root = cfg.work_root.clone();
        fs::create_dir_all(&root)?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o711))?;
        let mine = root.join(&cfg.worker_id);
        fs::create_dir_all(&mine)?;
        fs::set_permissions(&mine, fs::Permissions::from_mode(0o711))?;
        let lock = File::create(root.join(format!("{}.lock", cfg.worker_id)))?;
        nix::fcntl::Flock::lock(
            lock.try_clone()?,
            nix::fcntl::FlockArg::LockExclusiveNonblock,
        )
        .map(std::mem::forget)
        .map_err(|(_, e)| SandboxError::Setup(format!("locking the work dir: {e}")))?;
        Ok(ProcessSandbox {
            uid,
            gid,
            root,
            mine,
            _lock: lock,
        })
    }

    /// Creates the task's private directories and files.
    fn prepare(&self, spec: &Spec) -> Result<TaskDir, SandboxError> {
        let dir = self.mine.join(format!(
            "{}.{}",
            spec.task_id,
            uuid::Uuid::new_v4().simple()
        ));
        let guard = TaskDir(dir.clone());
        fs::create_dir(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o711))?;
        let krill = dir.join("krill");
        fs::create_dir(&krill)?;
        fs::set_permissions(&krill, fs::Permissions::from_mode(0o755))?;
        let script = krill.join("script");
        fs::write(&script, spec.script.as_bytes())?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o644))?;
        for name in [OUTPUT_FILE, SENSITIVE_FILE] {
            let path = krill.join(name);
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            nix::unistd::chown(&path, Some(self.uid), Some(self.gid)).map_err(io)?;
        }
        let home = dir.join("home");
        fs::create_dir(&home)?;
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700))?;
        nix::unistd::chown(&home, Some(self.uid), Some(self.gid)).map_err(io)?;
        Ok(guard)
    }

    /// The one function that applies every limit to the child, between fork and exec.
    fn apply_limits(&self, cmd: &mut tokio::process::Command, spec: &Spec) {
        let uid = self.uid.as_raw();
        let gid = self.gid.as_raw();
        let fsize = spec.limits.disk_bytes;
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (setsid, setrlimit, setgroups, setgid, setuid,
        // prctl); it allocates nothing and touches no locks.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for (res, v) in [
                    (libc::RLIMIT_CORE, 0),
                    (libc::RLIMIT_NOFILE, NOFILE),
                    (libc::RLIMIT_FSIZE, fsize),
                ] {
                    let lim = libc::rlimit {
                        rlim_cur: v,
                        rlim_max: v,
                    };
                    if libc::setrlimit(res, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Supplementary groups, then gid, then uid: once uid changes, the
                // others can no longer be changed.
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // Set after setuid: a change of credentials clears it.
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                    || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    async fn run_task(
        &self,
        spec: Spec,
        events: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> Result<Outcome, SandboxError> {
        let dir = self.prepare(&spec)?;
        let krill = dir.0.join("krill");
        let home = dir.0.join("home");
        let mut cmd = tokio::process::Command::new(&spec.interpreter[0]);
        cmd.args(&spec.interpreter[1..])
            .arg(krill.join("script"))
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PATH", TASK_PATH)
            .env("HOME", &home)
            .env("TMPDIR", &home)
            .env("KRILL_OUTPUT", krill.join(OUTPUT_FILE))
            .env("KRILL_SENSITIVE_OUTPUT", krill.join(SENSITIVE_FILE))
            .env("KRILL_TASK_ID", &spec.task_id)
            .current_dir(&home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        self.apply_limits(&mut cmd, &spec);
        let sandbox_id = dir.0.display().to_string();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                // The task's own mistake (no such interpreter): a result like a shell's.
                let code = if e.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                };
                let msg = format!(
                    "krill: cannot run interpreter `{}`: {e}\n",
                    spec.interpreter[0]
                );
                let _ = events
                    .send(Event::Output(Stream::Stderr, Bytes::from(msg)))
                    .await;
                return Ok(Outcome {
                    exit: Exit::Code(code),
                    outputs: Ok(Bytes::new()),
                    sensitive: Ok(Bytes::new()),
                    usage: Usage::default(),
                    sandbox_id,
                    enforcement: Enforcement::Degraded,
                });
            }
        };
        let pgid = child.id().map(|p| p as i32);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let watcher = SensitiveWatch::new(krill.clone(), spec.limits.output_file_bytes);
        let reader = tokio::spawn(pump(stdout, stderr, events, watcher));
        let deadline = tokio::time::Instant::now() + spec.limits.timeout;
        let exit = tokio::select! {
            status = child.wait() => match status {
                Ok(s) => match (s.code(), s.signal()) {
                    (Some(c), _) => Exit::Code(c),
                    (None, Some(sig)) => Exit::Signal(sig),
                    _ => Exit::Code(-1),
                },
                Err(e) => return Err(SandboxError::Io(e)),
            },
            _ = tokio::time::sleep_until(deadline) => {
                stop(&mut child, pgid).await;
                Exit::TimedOut
            }
            _ = cancel.cancelled() => {
                stop(&mut child, pgid).await;
                Exit::Cancelled
            }
        };
        // Whatever the script left running in its group dies with it.
        kill_group(pgid, libc::SIGKILL);
        let mut reader = reader;
        if tokio::time::timeout(DRAIN_AFTER_EXIT, &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
        let outputs = read_capped(&krill, OUTPUT_FILE, spec.limits.output_file_bytes)
            .map(Bytes::from)
            .map_err(|e| e.to_string());
        let sensitive = read_capped(&krill, SENSITIVE_FILE, spec.limits.output_file_bytes)
            .map(Bytes::from)
            .map_err(|e| e.to_string());
        drop(dir);
        Ok(Outcome {
            exit,
            outputs,
            sensitive,
            usage: Usage::default(),
            sandbox_id,
            enforcement: Enforcement::Degraded,
        })
    }
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
        // Work dirs of workers whose lock is free belong to dead workers.
        let mut removed = 0;
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            let path = entry.path();
            if !entry.file_type()?.is_dir() || path == self.mine {
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
                removed += fs::read_dir(&path).map(|d| d.count()).unwrap_or(0);
                let _ = fs::remove_dir_all(&path);
                let _ = fs::remove_file(&lock_path);
            }
        }
        Ok(removed)
    }

    async fn ready(&self) -> bool {
        self.mine.is_dir()
    }
}

/// Removes a task's directory when dropped, on every path.
struct TaskDir(PathBuf);

impl Drop for TaskDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.0.display(), error = %e, "failed to remove task dir");
            }
        }
    }
}

/// TERM to the group, a grace, then KILL.
async fn stop(child: &mut Child, pgid: Option<i32>) {
    kill_group(pgid, libc::SIGTERM);
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        kill_group(pgid, libc::SIGKILL);
        let _ = child.wait().await;
    }
}

fn kill_group(pgid: Option<i32>, sig: libc::c_int) {
    if let Some(p) = pgid.filter(|p| *p > 1) {
        // SAFETY: killpg has no memory-safety preconditions; `p` is the group the
        // child created with setsid, never 0 or 1.
        unsafe {
            libc::killpg(p, sig);
        }
    }
}

/// Watches `$KRILL_SENSITIVE_OUTPUT` for changes so new values are masked before
/// anything printed after them.
struct SensitiveWatch {
    dir: PathBuf,
    cap: u64,
    seen: Option<(u64, SystemTime)>,
}

impl SensitiveWatch {
    fn new(dir: PathBuf, cap: u64) -> Self {
        SensitiveWatch {
            dir,
            cap,
            seen: None,
        }
    }

    /// The file's content if it changed since the last call.
    fn changed(&mut self) -> Option<Bytes> {
        let meta = fs::symlink_metadata(self.dir.join(SENSITIVE_FILE)).ok()?;
        let stamp = (meta.len(), meta.modified().ok()?);
        if meta.len() == 0 || self.seen == Some(stamp) {
            return None;
        }
        self.seen = Some(stamp);
        read_capped(&self.dir, SENSITIVE_FILE, self.cap)
            .ok()
            .map(Bytes::from)
    }
}

/// Reads both pipes until EOF, sending sensitive-file changes before the output
/// that follows them.
async fn pump(
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    events: mpsc::Sender<Event>,
    mut watch: SensitiveWatch,
) {
    let mut out = stdout;
    let mut err = stderr;
    let mut buf_out = vec![0u8; READ_CHUNK];
    let mut buf_err = vec![0u8; READ_CHUNK];
    while out.is_some() || err.is_some() {
        let (stream, n) = tokio::select! {
            r = read_opt(&mut out, &mut buf_out), if out.is_some() => (Stream::Stdout, r),
            r = read_opt(&mut err, &mut buf_err), if err.is_some() => (Stream::Stderr, r),
        };
        match n {
            0 => match stream {
                Stream::Stdout => out = None,
                Stream::Stderr => err = None,
            },
            n => {
                if let Some(content) = watch.changed() {
                    if events.send(Event::Sensitive(content)).await.is_err() {
                        return;
                    }
                }
                let buf = if stream == Stream::Stdout {
                    &buf_out
                } else {
                    &buf_err
                };
                if events
                    .send(Event::Output(stream, Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    if let Some(content) = watch.changed() {
        let _ = events.send(Event::Sensitive(content)).await;
    }
}

async fn read_opt<R: tokio::io::AsyncRead + Unpin>(r: &mut Option<R>, buf: &mut [u8]) -> usize {
    match r {
        Some(r) => r.read(buf).await.unwrap_or(0),
        None => 0,
    }
}

fn resolve_user(user: &str) -> Result<(Uid, Gid), SandboxError> {
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(match User::from_uid(Uid::from_raw(uid)).map_err(io)? {
            Some(u) => (u.uid, u.gid),
            None => (Uid::from_raw(uid), Gid::from_raw(uid)),
        });
    }
    let name = CString::new(user).map_err(|_| SandboxError::Setup("invalid user name".into()))?;
    let _ = name;
    match User::from_name(user).map_err(io)? {
        Some(u) => Ok((u.uid, u.gid)),
        None => Err(SandboxError::Setup(format!("no such user `{user}`"))),
    }
}

fn io(e: nix::Error) -> SandboxError {
    SandboxError::Io(std::io::Error::from(e))
}

#[allow(dead_code)]
fn exists(p: &Path) -> bool {
    p.exists()
}
