//! What the container sandbox is configured with: what an operator sets
//! ([`ContainerConfig`]), what rarely changes ([`Tuning`]), the paths inside a
//! task container, and what it learns about an image ([`ImageFacts`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::scratch;
use crate::liveness::Liveness;
use crate::sandbox::uids::UidPool;

/// The default allow-list: the base image built by `scripts/images`.
pub const DEFAULT_IMAGE: &str = "krill/base:1";
/// Where the worker expects the static krill-stub (`scripts/build-stub` builds it).
pub const DEFAULT_STUB_PATH: &str = "/usr/local/bin/krill-stub";
/// Docker network for tasks that ask for network on a pool that allows it.
pub const DEFAULT_NETWORK: &str = "bridge";
/// After Terminate, how long before the container is killed: the stub's own
/// SIGTERM→SIGKILL grace (2 s) plus its drain grace (1 s) plus slack.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(4);
/// Open-file limit (soft = hard) in task containers.
pub const DEFAULT_NOFILE: u64 = 1024;
/// Where the host's cgroup filesystem is mounted.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The user tasks run as when the image's own user is root or not numeric.
pub const FALLBACK_USER: (u32, u32) = (65534, 65534);
/// `PATH` for the script when the image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the stub is bind-mounted (read-only) in the container.
pub const STUB_TARGET: &str = "/.krill/stub";
/// The output-variable files' directory (a small tmpfs).
pub const OUTPUT_DIR: &str = "/.krill/out";
/// The script's work dir and `HOME` (a tmpfs).
pub const WORK_DIR: &str = "/work";
/// A tmpfs too.
pub const TMP_DIR: &str = "/tmp";

/// A container that stopped (or was created and never started) less than this
/// ago may still be handled by its live worker; the default sweep leaves it.
pub const SWEEP_GRACE: Duration = Duration::from_secs(30);

/// Which managed containers [`Sandbox::sweep`] removes; never the ones this
/// sandbox is running.
///
/// A crashed worker's containers stop by themselves: the engine closes their
/// stdin with the worker's attach connection and the stub stops the script
/// (SIGTERM, SIGKILL 2 s later) and exits. So what is left to sweep is stopped
/// containers, and the default removes only those, whichever worker made them:
/// safe when several workers share one engine (Compose scale on one socket,
/// e2e tests), which `All` is not: it would kill their running tasks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SweepScope {
    /// Containers not running for at least [`Tuning::sweep_grace`] (exited, dead, or
    /// created and never started), from any worker.
    #[default]
    Abandoned,
    /// `Abandoned`, plus every container (running too) whose `krill.worker` label
    /// starts with this prefix: for a worker restarted under a stable id prefix.
    WorkerPrefix(String),
    /// Every managed container on the engine: only when this worker is the
    /// engine's only Krill worker.
    All,
}

/// What an operator sets for the container sandbox (`Default`: the documented defaults).
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// Images tasks may use, exactly as written in tasks; the first is the default.
    pub images: Vec<String>,
    /// Pull an allowed image that is not present (else the task fails with `ImageMissing`).
    pub allow_pull: bool,
    /// Let tasks that ask for network have it (on [`Tuning::network`]).
    pub allow_network: bool,
    /// The static krill-stub binary on this host.
    pub stub_path: PathBuf,
    /// Host uids task containers run as, one per container (its gid the same
    /// number) from creation until it is removed. `None`: the image's non-root
    /// numeric user, else [`FALLBACK_USER`], shared by every container.
    pub uids: Option<Arc<UidPool>>,
    /// The worker network tasks with network join (`None`: [`Tuning::network`] as is).
    pub net: Option<Arc<crate::sandbox::net::Net>>,
}

impl Default for ContainerConfig {
    fn default() -> Self {
        ContainerConfig {
            images: vec![DEFAULT_IMAGE.to_string()],
            allow_pull: false,
            allow_network: false,
            net: None,
            stub_path: PathBuf::from(DEFAULT_STUB_PATH),
            uids: None,
        }
    }
}

/// Settings that rarely change (`Default`: the documented defaults); see
/// [`ContainerSandbox::connect_tuned`].
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Docker network mode for tasks with network.
    pub network: String,
    /// After Terminate, how long before the container is killed.
    pub kill_grace: Duration,
    /// Open-file limit in task containers.
    pub nofile: u64,
    /// OCI runtime (e.g. `runsc` for gVisor); `None` is the engine's default.
    pub runtime: Option<String>,
    /// Where the host's cgroup filesystem is mounted (for usage and OOM kills).
    pub cgroup_root: PathBuf,
    /// What `sweep()` removes.
    pub sweep: SweepScope,
    /// How long a container must have been stopped before the default sweep takes it.
    pub sweep_grace: Duration,
    /// Where each container's scratch tmpfs is mounted on the host (see
    /// [`scratch`](super::scratch); used when the engine shares this worker's mounts).
    pub scratch_root: PathBuf,
    /// This worker's host-wide lock: containers are labelled with its host set
    /// (`krill.host`), and a container of that set whose worker holds no lock
    /// is removed by any sweep, running or not. `None`: by age only.
    pub liveness: Option<Arc<Liveness>>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            network: DEFAULT_NETWORK.to_string(),
            kill_grace: DEFAULT_KILL_GRACE,
            nofile: DEFAULT_NOFILE,
            runtime: None,
            cgroup_root: PathBuf::from(DEFAULT_CGROUP_ROOT),
            sweep: SweepScope::Abandoned,
            sweep_grace: SWEEP_GRACE,
            scratch_root: PathBuf::from(scratch::DEFAULT_SCRATCH_ROOT),
            liveness: None,
        }
    }
}

/// Both halves of the configuration, shared by every task.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    pub cfg: ContainerConfig,
    pub tuning: Tuning,
    /// One scratch tmpfs per container under this root (`None`: a tmpfs per
    /// mount, where the engine cannot see this worker's mounts).
    pub scratch: Option<PathBuf>,
}

/// What the sandbox needs to know about an image.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ImageFacts {
    pub uid: u32,
    pub gid: u32,
    /// `PATH` from the image's environment.
    pub path: String,
    /// The rest of the image's environment (e.g. `LANG`): the script's defaults,
    /// which the task's own env overrides. Never any `KRILL_*` name.
    pub env: Vec<(String, String)>,
    /// `VOLUME`s the image declares (each gets a tmpfs instead).
    pub volumes: Vec<String>,
}
