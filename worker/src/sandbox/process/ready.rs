//! Sandbox helpers started ahead of their tasks: one per slot waits, already in
//! a fresh cgroup and fresh namespaces, for the task it will run (single use,
//! like the pre-started containers).
//!
//! Joining a cgroup v1 costs an RCU grace period (10–20 ms here, mostly waiting)
//! and a spawn a few milliseconds; a waiting helper moves both off the path from
//! claim to result. A task that may use the network (no fresh net namespace)
//! gets a helper started for it.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::Child;

use super::cgroup::{Driver, TaskCgroup};
use super::init;
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

/// A started helper waiting for its task's [`init::InitConfig`].
#[derive(Debug)]
pub struct Prepared {
    pub child: Child,
    /// Its cgroup (limits are written when the task is known).
    pub cgroup: Option<TaskCgroup>,
    /// Unique part of the names of its cgroup and of its task's work dir.
    pub name: String,
    /// Where the init's report arrives.
    pub status: OwnedReadHalf,
    /// Where the task's config goes (then dropped: end-of-file for the helper).
    pub config: OwnedWriteHalf,
}

/// Starts helpers.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub helper: Helper,
    pub cgroups: Option<Arc<dyn Driver>>,
    pub worker_id: String,
}

impl Launcher {
    /// Creates a cgroup and starts a helper that joins it and unshares its
    /// namespaces (`net_ns`: a fresh net namespace too), then waits for its
    /// config. Must run inside the runtime (the helper's pipes register with it).
    pub fn launch(&self, net_ns: bool) -> Result<Prepared, SandboxError> {
        let name = uuid::Uuid::new_v4().simple().to_string();
        let cgroup = match &self.cgroups {
            Some(d) => Some(
                TaskCgroup::create(d.clone(), format!("{}/{name}", self.worker_id))
                    .map_err(|e| SandboxError::Setup(format!("creating the task cgroup: {e}")))?,
            ),
            None => None,
        };
        let (ours, theirs) = UnixStream::pair()?;
        let mut cmd = tokio::process::Command::new(&self.helper.path);
        if let Some(arg0) = self.helper.arg0 {
            cmd.arg0(arg0);
        }
        if let Some(cg) = &cgroup {
            cmd.args(cg.procs_files());
        }
        // No pre_exec: the standard library then starts the helper with
        // posix_spawn (vfork), not a fork of this large, multi-threaded process.
        cmd.env_clear()
            .env(init::ENV_FLAG, std::process::id().to_string())
            .env(init::ENV_NET_NS, if net_ns { "1" } else { "0" })
            .current_dir("/")
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let spawned = cmd.spawn();
        // The command holds the helper's end of the socket: close this copy, or
        // the status would never reach end-of-file.
        drop(cmd);
        let child = spawned
            .map_err(|e| SandboxError::Setup(format!("starting the sandbox helper: {e}")))?;
        ours.set_nonblocking(true)?;
        let (status, config) = tokio::net::UnixStream::from_std(ours)?.into_split();
        Ok(Prepared {
            child,
            cgroup,
            name,
            status,
            config,
        })
    }
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
    pub fn take(self: &Arc<Self>, net_ns: bool) -> Result<Prepared, SandboxError> {
        let mut found = None;
        if net_ns {
            while let Some(mut p) = self.lock().pop() {
                // One that died waiting (killed from outside) is dropped.
                if matches!(p.child.try_wait(), Ok(None)) {
                    found = Some(p);
                    break;
                }
            }
        }
        self.refill();
        match found {
            Some(p) => Ok(p),
            None => self.launcher.launch(net_ns),
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
                match ready.launcher.launch(true) {
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
