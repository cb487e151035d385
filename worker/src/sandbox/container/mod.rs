//! Container sandbox: each task in a fresh, locked-down Docker container (bollard).
//!
//! ```text
//! ContainerSandbox::run(spec)
//!  ├─ prestart::PrestartPool::take()    a prestarted container that fits the task, if any
//!  ├─ else launch::Launcher::launch()   create + attach + start; from create on a
//!  │   ├─ allow-list, inspect image     ContainerGuard owns the container and removes
//!  │   │  (pull only if allowed)        it on every path, dropped futures included
//!  │   ├─ create  (limits::create_body: every limit in one place)
//!  │   ├─ attach  (stdin + stdout + stderr; the stub writes nothing before its request)
//!  │   └─ start   (docker-init → krill-stub, waiting on stdin)
//!  └─ Launched::run()
//!      ├─ hand over: one Request frame (script, interpreter, env + secrets) on stdin
//!      ├─ loop: frames → Event::Output / Event::Sensitive on the bounded channel
//!      │        deadline or cancel → Terminate frame → after kill_grace: kill
//!      ├─ exit frame → usage + OOM from the cgroup (stats API fallback) → Release
//!      └─ guard.remove_later(): forced removal on the sandbox's TaskTracker
//! ```
//!
//! Secrets travel only in the request on stdin: they are not in the container's
//! config, so `docker inspect` does not show them. `launch` and `Launched::run`
//! are separate so that containers can be prestarted: the sandbox owns its
//! prestart pool ([`ContainerSandbox::start_prestart`], `--prestart`) as the
//! process sandbox owns its prestarted helpers.
//!
//! Modules: `settings` (configuration, paths), `launch` (one container up),
//! `limits` (every Docker setting in one function), `session` (one task in a
//! launched container), `usage` (cgroup figures), `cleanup` (guards, removal,
//! sweep), [`prestart`] (the pool).

mod cleanup;
mod launch;
mod limits;
pub mod prestart;
pub mod scratch;
mod session;
mod settings;
pub mod stub;
mod usage;

use std::sync::{Arc, Mutex, OnceLock};

use bollard::Docker;
use broker::protocol::SandboxKind;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use cleanup::ContainerGuard;
pub use limits::{
    stub_user, LABEL_HOST, LABEL_MANAGED, LABEL_TASK, LABEL_WORKER, PIDS_OVERHEAD, READONLY_PATHS,
    STUB_CAPS,
};
pub use session::{LaunchTimings, Launched};
use settings::Settings;
pub use settings::{
    ContainerConfig, SweepScope, Tuning, DEFAULT_CGROUP_ROOT, DEFAULT_IMAGE, DEFAULT_KILL_GRACE,
    DEFAULT_NETWORK, DEFAULT_NOFILE, DEFAULT_PATH, DEFAULT_STUB_PATH, FALLBACK_USER, OUTPUT_DIR,
    STUB_TARGET, SWEEP_GRACE, TMP_DIR, WORK_DIR,
};

use super::{Event, Outcome, Sandbox, SandboxError, Spec};
use bollard::errors::Error as DockerError;
use cleanup::Cleanup;
use launch::Launcher;
use prestart::{PrestartConfig, PrestartPool};
use tracing::warn;

/// The container sandbox: launches a container per task, fresh or prestarted.
#[derive(Debug)]
pub struct ContainerSandbox {
    launcher: Arc<Launcher>,
    /// Containers prestarted for tasks to come (`--prestart`), once started.
    prestart: OnceLock<PrestartPool>,
}

impl ContainerSandbox {
    /// Connects to the engine named by `DOCKER_HOST` (else the local socket),
    /// negotiates the API version, and checks that the engine answers, that the
    /// allow-list is not empty and that the stub exists.
    pub async fn connect(cfg: ContainerConfig) -> Result<Self, SandboxError> {
        Self::connect_tuned(cfg, Tuning::default()).await
    }

    /// [`ContainerSandbox::connect`] with non-default [`Tuning`].
    pub async fn connect_tuned(cfg: ContainerConfig, tuning: Tuning) -> Result<Self, SandboxError> {
        if cfg.images.is_empty() {
            return Err(SandboxError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the container sandbox's image allow-list is empty",
            )));
        }
        stub::check(&cfg.stub_path).map_err(SandboxError::Unusable)?;
        let docker = Docker::connect_with_defaults()
            .map_err(SandboxError::engine("connecting to the engine"))?
            .negotiate_version()
            .await
            .map_err(SandboxError::engine("the engine does not answer"))?;
        docker
            .ping()
            .await
            .map_err(SandboxError::engine("the engine does not answer"))?;
        let scratch = match scratch::usable(
            &tuning.scratch_root,
            std::env::var("DOCKER_HOST").ok().as_deref(),
        ) {
            Ok(()) => Some(tuning.scratch_root.clone()),
            Err(why) => {
                warn!(reason = %why,
                    "containers get a tmpfs of disk_bytes per writable mount, not one in total");
                None
            }
        };
        let launcher = Launcher {
            cleanup: Cleanup {
                docker: docker.clone(),
                tracker: TaskTracker::new(),
                live: Arc::new(Mutex::new(Default::default())),
                liveness: tuning.liveness.clone(),
            },
            docker,
            settings: Arc::new(Settings {
                cfg,
                tuning,
                scratch,
            }),
        };
        let sandbox = ContainerSandbox {
            launcher: Arc::new(launcher),
            prestart: OnceLock::new(),
        };
        sandbox.check_images().await?;
        Ok(sandbox)
    }

    /// Removes what the sweep covers (see cleanup.rs; `startup`: nothing of
    /// this worker's runs yet), then the scratch mounts of containers that are
    /// gone (a crashed worker's).
    async fn sweep_all(&self, startup: bool) -> Result<usize, SandboxError> {
        let settings = &self.launcher.settings;
        let removed = self
            .launcher
            .cleanup
            .sweep(&settings.tuning.sweep, settings.tuning.sweep_grace, startup)
            .await?;
        let mut stale = 0;
        if let Some(root) = &settings.scratch {
            for (name, dir) in scratch::older_than(root, settings.tuning.sweep_grace) {
                let gone = matches!(
                    self.launcher.docker.inspect_container(&name, None).await,
                    Err(DockerError::DockerResponseServerError {
                        status_code: 404,
                        ..
                    })
                );
                if gone {
                    scratch::remove_stale(&dir);
                    stale += 1;
                }
            }
        }
        Ok(removed + stale)
    }

    /// Every allowed image is on the engine (pulled first when pulls are
    /// allowed): a worker that cannot serve one says so at start.
    async fn check_images(&self) -> Result<(), SandboxError> {
        for image in &self.launcher.settings.cfg.images {
            match self.launcher.image_facts(image).await {
                Ok(_) => {}
                Err(SandboxError::ImageMissing(i)) => {
                    return Err(SandboxError::Unusable(format!(
                        "the allowed image `{i}` is not on the engine: build it (scripts/images \
                         builds krill/base:1 and krill/python:1), drop it from --image, or \
                         pass --allow-pull"
                    )))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn config(&self) -> &ContainerConfig {
        &self.launcher.settings.cfg
    }

    pub fn tuning(&self) -> &Tuning {
        &self.launcher.settings.tuning
    }

    /// The allow-listed image for `requested` (`None`: the default image).
    pub fn allowed_image(&self, requested: Option<&str>) -> Result<String, SandboxError> {
        self.launcher.allowed_image(requested)
    }

    /// Creates, attaches and starts the container for `spec`; its stub then
    /// waits for the task, which [`Launched::run`] hands over.
    pub async fn launch(&self, spec: &Spec) -> Result<Launched, SandboxError> {
        self.launcher.launch(spec).await
    }

    /// Starts keeping `cfg.per_image` containers prestarted per allowed image
    /// (after the start-up sweep; once: later calls change nothing).
    pub fn start_prestart(&self, cfg: PrestartConfig) {
        if cfg.per_image > 0 {
            let _ = self
                .prestart
                .set(PrestartPool::start(self.launcher.clone(), cfg));
        }
    }

    /// The prestart pool, once started.
    pub fn prestart_pool(&self) -> Option<&PrestartPool> {
        self.prestart.get()
    }
}

impl Sandbox for ContainerSandbox {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Container
    }

    async fn run(
        &self,
        spec: Spec,
        events: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> Result<Outcome, SandboxError> {
        let prestarted = match self.prestart.get() {
            Some(pool) => pool.take(&spec).await,
            None => None,
        };
        let launched = match prestarted {
            Some(launched) => launched,
            None => self.launch(&spec).await?,
        };
        launched.run(&spec, events, cancel).await
    }

    async fn sweep(&self) -> Result<usize, SandboxError> {
        self.sweep_all(true).await
    }

    async fn reap(&self) -> Result<usize, SandboxError> {
        self.sweep_all(false).await
    }

    async fn ready(&self) -> bool {
        self.launcher.docker.ping().await.is_ok()
    }

    fn prestarted(&self) -> usize {
        self.prestart.get().map_or(0, PrestartPool::ready_total)
    }

    /// Removes the prestarted containers, then waits for every removal.
    async fn close(&self) {
        if let Some(pool) = self.prestart.get() {
            pool.close().await;
        }
        self.launcher.cleanup.drain().await;
    }
}
