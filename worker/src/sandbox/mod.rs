//! Sandboxes: the interface both kinds implement, and what they are given and give back.
//!
//! The runner decides everything about a task (effective limits, environment) and
//! hands the sandbox a [`Spec`]. The sandbox runs the script, streams raw output as
//! [`Event`]s (the runner masks, caps and publishes it), enforces the deadline and
//! cancellation, and returns an [`Outcome`]. Limits are applied in exactly one
//! function per kind. Whatever happens, the sandbox removes everything it created.

pub mod container;
pub mod net;
pub mod process;
pub mod seccomp;
pub mod uids;

use std::future::Future;
use std::time::Duration;

use broker::protocol::{Enforcement, Landlock, SandboxKind, Stream, Usage};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often a worker removes what dead workers left (so within this, plus one
/// sweep's time, of any worker's death something is removed).
pub const REAP_EVERY: Duration = Duration::from_secs(15);

/// Everything a sandbox needs to run one task. Values in `env` may be secrets:
/// never log them.
#[derive(Clone)]
pub struct Spec {
    pub task_id: String,
    pub worker_id: String,
    pub script: String,
    /// Program and arguments; the path of the script file is appended.
    pub interpreter: Vec<String>,
    /// The task's env and secrets, merged (no `KRILL_*` names; the sandbox adds those).
    pub env: Vec<(String, String)>,
    pub limits: Effective,
    /// Container image as the task asked for it (`None`: the sandbox's default);
    /// the container sandbox checks it against its allow-list. `None` for the
    /// process sandbox.
    pub image: Option<String>,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec")
            .field("task_id", &self.task_id)
            .field("interpreter", &self.interpreter)
            .field(
                "env_names",
                &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("limits", &self.limits)
            .field("image", &self.image)
            .finish_non_exhaustive()
    }
}

/// The limits a task runs under: the task's, filled in and bounded by the pool's.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    pub timeout: Duration,
    pub memory_bytes: u64,
    pub cpus: f64,
    pub pids: u64,
    /// Size of the writable work dir and /tmp.
    pub disk_bytes: u64,
    /// Cap on each output-variable file.
    pub output_file_bytes: u64,
    pub network: bool,
    /// Non-public destinations granted (with `network`; the public internet needs none).
    pub network_allow: Vec<net::Allowance>,
}

/// Something the running script produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Raw bytes from stdout or stderr, in the order they were read.
    Output(Stream, Bytes),
    /// The whole current content of the `$KRILL_SENSITIVE_OUTPUT` file. Sent whenever
    /// it changed, before any output read after the change, so its values are
    /// masked before anything printed later leaves the worker.
    Sensitive(Bytes),
    /// Text the sandbox's own machinery wrote (the container stub's stderr):
    /// never shown to the submitter; the runner logs it masked and escaped.
    Diagnostic(Bytes),
}

/// How the script ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    TimedOut,
    Cancelled,
    OomKilled,
}

/// What a sandbox gives back once the script ended and everything is cleaned up.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub exit: Exit,
    /// Content of `$KRILL_OUTPUT`, or why it could not be read safely.
    pub outputs: Result<Bytes, String>,
    /// Content of `$KRILL_SENSITIVE_OUTPUT`, or why it could not be read safely.
    pub sensitive: Result<Bytes, String>,
    pub usage: Usage,
    /// Container id, or the cgroup/process id.
    pub sandbox_id: String,
    pub enforcement: Enforcement,
    /// Process sandbox: how much of its Landlock fence applied.
    pub landlock: Option<Landlock>,
}

/// What went wrong on the sandbox's side (never the script's own failure).
/// Variants with a `source` keep their cause, and (so the text a result or a
/// caller shows says why) also print it; [`crate::error::chain`] does not
/// print it twice.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The task's image is not on the allow-list: the task is rejected.
    #[error("image `{0}` is not allowed on this pool")]
    ImageNotAllowed(String),
    #[error("image `{0}` is not present on this worker and pulling is disabled")]
    ImageMissing(String),
    #[error("the {0} sandbox is not enabled on this worker")]
    NotEnabled(SandboxKind),
    /// A call to the container engine failed (`step` says which).
    #[error("docker: {step}: {source}")]
    Engine {
        step: String,
        #[source]
        source: bollard::errors::Error,
    },
    /// The container or its stub misbehaved (no engine error behind it).
    #[error("docker: {0}")]
    Docker(String),
    /// A step of the process sandbox's set-up failed on an I/O error.
    #[error("setting up the process sandbox: {step}: {source}")]
    SetupIo {
        step: String,
        #[source]
        source: std::io::Error,
    },
    /// The process sandbox cannot be set up (its helper said why, or a check failed).
    #[error("setting up the process sandbox: {0}")]
    Setup(String),
    /// The sandbox cannot run any task as configured (found at start).
    #[error("{0}")]
    Unusable(String),
    /// The process sandbox's start-up probe task could not run (`fix` says
    /// what to check).
    #[error("the process sandbox cannot run a task ({fix}): {source}")]
    Probe {
        fix: &'static str,
        #[source]
        source: Box<SandboxError>,
    },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Uids(#[from] uids::UidError),
}

impl SandboxError {
    /// A failed engine call at `step`.
    pub fn engine(step: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> SandboxError {
        let step = step.into();
        move |source| SandboxError::Engine { step, source }
    }

    /// A set-up step of the process sandbox that failed on `source`.
    pub fn setup_io(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
        let step = step.into();
        move |source| SandboxError::SetupIo { step, source }
    }
}

/// A kind of sandbox.
pub trait Sandbox: Send + Sync + 'static {
    fn kind(&self) -> SandboxKind;

    /// Runs one task to the end: enforces `spec.limits.timeout` (→ [`Exit::TimedOut`])
    /// and `cancel` (→ [`Exit::Cancelled`]), killing every process of the task, and
    /// removes everything it created before returning, on every path.
    fn run(
        &self,
        spec: Spec,
        events: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<Outcome, SandboxError>> + Send;

    /// Removes what a crashed worker left behind (containers, cgroups, work dirs),
    /// this worker's own from an earlier life under the same id included; called
    /// once at start-up, before any task. Returns how many were removed.
    fn sweep(&self) -> impl Future<Output = Result<usize, SandboxError>> + Send;

    /// Removes what dead workers on this host left (found by their free lock),
    /// never anything of this worker's that it may still be using; called
    /// periodically ([`REAP_EVERY`]). Returns how many were removed.
    fn reap(&self) -> impl Future<Output = Result<usize, SandboxError>> + Send;

    /// Whether the sandbox's backend is usable right now (for `/readyz`).
    fn ready(&self) -> impl Future<Output = bool> + Send;

    /// How many sandboxes it has prestarted that wait for a task now (single
    /// use, made ahead of their tasks so the start is off the claim → result path).
    fn prestarted(&self) -> usize {
        0
    }

    /// Waits for clean-up work the sandbox moved off the critical path (container
    /// removal after the result is known). Called once at worker shutdown.
    fn close(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
