//! Launching one container: the allow-list, the image's facts (pulled only if
//! allowed), create with every limit ([`limits::create_body`]), attach, start.
//! Shared by fresh launches and the prestart pool.

use std::sync::Arc;
use std::time::Instant;

use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
};
use bollard::Docker;
use broker::protocol::Enforcement;
use futures_util::StreamExt;
use tracing::{debug, warn};

use super::cleanup::{Cleanup, ContainerGuard};
use super::limits;
use super::scratch;
use super::session::{LaunchTimings, Launched};
use super::settings::{ImageFacts, Settings, DEFAULT_PATH, FALLBACK_USER};
use crate::sandbox::{uids, SandboxError, Spec};

/// What launching needs: the engine, the settings, and the removal of what it made.
#[derive(Debug)]
pub(super) struct Launcher {
    pub(super) docker: Docker,
    pub(super) settings: Arc<Settings>,
    pub(super) cleanup: Cleanup,
}

impl Launcher {
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
        // Its address on the worker network, granted before the script can start.
        let net = match (
            &self.settings.cfg.net,
            spec.limits.network && self.settings.cfg.allow_network,
        ) {
            (Some(net), true) => Some(
                net.lease(&spec.limits.network_allow)
                    .await
                    .map_err(|e| SandboxError::Docker(format!("worker network: {e}")))?,
            ),
            // Used as a library without a worker network: Tuning::network as is.
            _ => None,
        };
        let body = limits::create_body(
            &self.settings,
            spec,
            &image,
            &facts,
            scratch.as_ref(),
            net.as_ref().map(|l| l.addr),
        );
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| match e {
                DockerError::DockerResponseServerError {
                    status_code: 404, ..
                } => SandboxError::ImageMissing(image.clone()),
                e => SandboxError::engine("creating the container")(e),
            })?;
        let mut guard = ContainerGuard::new(&self.cleanup, created.id, lease, scratch);
        guard.hold_net(net);
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
            .map_err(SandboxError::engine("attaching to the container"))?;
        let t_attach = t0.elapsed();

        self.docker
            .start_container(&id, None)
            .await
            .map_err(SandboxError::engine("starting the container"))?;
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
            script_user: (facts.uid, facts.gid),
            settings: self.settings.clone(),
            enforcement,
            timings,
        })
    }

    /// Inspects `image`, pulling it first when it is missing and pulls are allowed.
    pub async fn image_facts(&self, image: &str) -> Result<ImageFacts, SandboxError> {
        let info = match self.docker.inspect_image(image).await {
            Ok(info) => info,
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) if self.settings.cfg.allow_pull => {
                self.pull(image).await?;
                self.docker
                    .inspect_image(image)
                    .await
                    .map_err(SandboxError::engine(format!("inspecting image {image}")))?
            }
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Err(SandboxError::ImageMissing(image.to_string())),
            Err(e) => return Err(SandboxError::engine(format!("inspecting image {image}"))(e)),
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
            step.map_err(SandboxError::engine(format!("pulling image {image}")))?;
        }
        Ok(())
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
