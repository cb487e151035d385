//! Container sandbox: each task in a fresh, locked-down Docker container (bollard).
//!
//! ```text
//! ContainerSandbox::run(spec)
//!  ├─ launch()                          create + attach + start; from create on a
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
//! are separate so that containers can be started ahead of their tasks.

mod cleanup;
mod limits;
pub mod scratch;
mod session;
mod settings;
mod usage;
pub mod warm;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
};
use bollard::Docker;
use broker::protocol::{Enforcement, SandboxKind};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

pub use cleanup::ContainerGuard;
pub use limits::{LABEL_MANAGED, LABEL_TASK, LABEL_WORKER, PIDS_OVERHEAD};
pub use session::{LaunchTimings, Launched};
pub use settings::{
    ContainerConfig, SweepScope, Tuning, DEFAULT_CGROUP_ROOT, DEFAULT_IMAGE, DEFAULT_KILL_GRACE,
    DEFAULT_NETWORK, DEFAULT_NOFILE, DEFAULT_PATH, DEFAULT_STUB_PATH, FALLBACK_USER, OUTPUT_DIR,
    STUB_TARGET, SWEEP_GRACE, TMP_DIR, WORK_DIR,
};
pub(crate) use settings::{ImageFacts, Settings};

use super::uids;
use super::{Event, Outcome, Sandbox, SandboxError, Spec};
use cleanup::Cleanup;

/// The container sandbox.
#[derive(Debug)]
pub struct ContainerSandbox {
    docker: Docker,
    settings: Arc<Settings>,
    cleanup: Cleanup,
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
        let meta = tokio::fs::metadata(&cfg.stub_path).await.map_err(|e| {
            SandboxError::Io(std::io::Error::new(
                e.kind(),
                format!(
                    "krill-stub at {} (build it with scripts/build-stub): {e}",
                    cfg.stub_path.display()
                ),
            ))
        })?;
        if !meta.is_file() {
            return Err(SandboxError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("krill-stub at {} is not a file", cfg.stub_path.display()),
            )));
        }
        let docker = Docker::connect_with_defaults()
            .map_err(|e| SandboxError::Docker(format!("connecting to the engine: {e}")))?
            .negotiate_version()
            .await
            .map_err(|e| SandboxError::Docker(format!("the engine does not answer: {e}")))?;
        docker
            .ping()
            .await
            .map_err(|e| SandboxError::Docker(format!("the engine does not answer: {e}")))?;
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
        Ok(ContainerSandbox {
            cleanup: Cleanup {
                docker: docker.clone(),
                tracker: TaskTracker::new(),
                live: Arc::new(Mutex::new(Default::default())),
            },
            docker,
            settings: Arc::new(Settings {
                cfg,
                tuning,
                scratch,
            }),
        })
    }

    pub fn config(&self) -> &ContainerConfig {
        &self.settings.cfg
    }

    pub fn tuning(&self) -> &Tuning {
        &self.settings.tuning
    }

    /// The allow-listed image for `requested` (`None`: the default image).
    pub fn allowed_image(&self, requested: Option<&str>) -> Result<String, SandboxError> {
        match requested {
            None => self
                .settings
                .cfg
                .images
                .first()
                .cloned()
                .ok_or_else(|| SandboxError::ImageNotAllowed(String::new())),
            Some(image) if self.settings.cfg.images.iter().any(|i| i == image) => {
                Ok(image.to_string())
            }
            Some(image) => Err(SandboxError::ImageNotAllowed(image.to_string())),
        }
    }

    /// Creates, attaches and starts the container for `spec`; its stub then
    /// waits for the task, which [`Launched::run`] hands over.
    pub async fn launch(&self, spec: &Spec) -> Result<Launched, SandboxError> {
        let t0 = Instant::now();
        let image = self.allowed_image(spec.image.as_deref())?;
        let mut facts = self.image_facts(&image).await?;
        // Its own uid, held until the container is removed.
        let lease = match &self.settings.cfg.uids {
            Some(pool) => Some(pool.lease(uids::LEASE_WAIT).await?),
            None => None,
        };
        if let Some(l) = &lease {
            (facts.uid, facts.gid) = (l.uid(), l.gid());
        }
        let t_image = t0.elapsed();

        let name = container_name(&spec.task_id);
        // Its disk in total: one tmpfs for /work, /tmp, /dev/shm and volumes.
        let scratch = match &self.settings.scratch {
            Some(root) => Some(scratch::Scratch::create(
                root,
                &name,
                spec.limits.disk_bytes,
                facts.uid,
                facts.gid,
                facts.volumes.len(),
            )?),
            None => None,
        };
        let body = limits::create_body(&self.settings, spec, &image, &facts, scratch.as_ref());
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| match e {
                DockerError::DockerResponseServerError {
                    status_code: 404, ..
                } => SandboxError::ImageMissing(image.clone()),
                e => SandboxError::Docker(format!("creating the container: {e}")),
            })?;
        let guard = ContainerGuard::new(&self.cleanup, created.id, lease, scratch);
        let id = guard.id().to_string();
        let enforcement = if created.warnings.is_empty() {
            Enforcement::Enforced
        } else {
            warn!(container_id = %id, warnings = ?created.warnings, "engine did not apply every limit");
            Enforcement::Degraded
        };
        let t_create = t0.elapsed();

        let options = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .logs(false)
            .build();
        let attached = self
            .docker
            .attach_container(&id, Some(options))
            .await
            .map_err(|e| SandboxError::Docker(format!("attaching to the container: {e}")))?;
        let t_attach = t0.elapsed();

        self.docker
            .start_container(&id, None)
            .await
            .map_err(|e| SandboxError::Docker(format!("starting the container: {e}")))?;
        let t_start = t0.elapsed();
        let timings = LaunchTimings {
            image: t_image,
            create: t_create - t_image,
            attach: t_attach - t_create,
            start: t_start - t_attach,
        };
        debug!(container_id = %id, ?timings, "container launched");
        Ok(Launched {
            guard,
            docker: self.docker.clone(),
            input: attached.input,
            output: attached.output,
            path: facts.path,
            image_env: facts.env,
            settings: self.settings.clone(),
            enforcement,
            timings,
        })
    }

    /// Inspects `image`, pulling it first when it is missing and pulls are allowed.
    async fn image_facts(&self, image: &str) -> Result<ImageFacts, SandboxError> {
        let info = match self.docker.inspect_image(image).await {
            Ok(info) => info,
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) if self.settings.cfg.allow_pull => {
                self.pull(image).await?;
                self.docker
                    .inspect_image(image)
                    .await
                    .map_err(|e| SandboxError::Docker(format!("inspecting image {image}: {e}")))?
            }
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Err(SandboxError::ImageMissing(image.to_string())),
            Err(e) => {
                return Err(SandboxError::Docker(format!(
                    "inspecting image {image}: {e}"
                )))
            }
        };
        let config = info.config.unwrap_or_default();
        let (uid, gid) = limits::task_user(config.user.as_deref(), FALLBACK_USER);
        let mut path = None;
        let mut env = Vec::new();
        for entry in config.env.unwrap_or_default() {
            match entry.split_once('=') {
                Some(("PATH", value)) => path = Some(value.to_string()),
                Some((name, _)) if name.is_empty() || name.starts_with("KRILL_") => {}
                Some((name, value)) => env.push((name.to_string(), value.to_string())),
                None => {}
            }
        }
        let path = path.unwrap_or_else(|| DEFAULT_PATH.to_string());
        let volumes = config
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter(|v| v.starts_with('/') && !v.starts_with("/.krill"))
            .collect();
        Ok(ImageFacts {
            uid,
            gid,
            path,
            env,
            volumes,
        })
    }

    async fn pull(&self, image: &str) -> Result<(), SandboxError> {
        let options = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let mut progress = self.docker.create_image(Some(options), None, None);
        while let Some(step) = progress.next().await {
            step.map_err(|e| SandboxError::Docker(format!("pulling image {image}: {e}")))?;
        }
        Ok(())
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
        let launched = self.launch(&spec).await?;
        launched.run(&spec, events, cancel).await
    }

    async fn sweep(&self) -> Result<usize, SandboxError> {
        let removed = self
            .cleanup
            .sweep(
                &self.settings.tuning.sweep,
                self.settings.tuning.sweep_grace,
            )
            .await?;
        // Scratch mounts of containers that are gone (a crashed worker's).
        let mut stale = 0;
        if let Some(root) = &self.settings.scratch {
            for (name, dir) in scratch::older_than(root, self.settings.tuning.sweep_grace) {
                let gone = matches!(
                    self.docker.inspect_container(&name, None).await,
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

    async fn ready(&self) -> bool {
        self.docker.ping().await.is_ok()
    }

    async fn close(&self) {
        self.cleanup.drain().await;
    }
}

/// `krill-<task id, sanitised>-<random>`: readable in `docker ps`, never colliding.
fn container_name(task_id: &str) -> String {
    let task: String = task_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("krill-{task}-{}", &suffix[..8])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn container_names_are_valid_and_unique() {
        let a = container_name("0192f4c8-7d1e/../x y");
        let b = container_name("0192f4c8-7d1e/../x y");
        assert!(a.starts_with("krill-0192f4c8-7d1e_.._x_y-"));
        assert_ne!(a, b);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
    }
}
