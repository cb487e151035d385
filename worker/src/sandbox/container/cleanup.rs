//! Removing task containers: a guard that removes its container on every path
//! (dropped included), and the sweep of what crashed workers left: at start-up
//! and every [`REAP_EVERY`](crate::sandbox::REAP_EVERY) after.
//!
//! A container is swept when (never one this sandbox holds):
//! - it is of this worker's host set ([`LABEL_HOST`]) and its worker holds no
//!   lock (dead: SIGKILL, OOM kill, crash), running or not; or it is this
//!   worker's own from an earlier life under the same id (start-up only);
//! - it has not been running for [`Tuning::sweep_grace`](super::Tuning) (exited,
//!   dead, or created and never started), whoever made it;
//! - the scope says so ([`SweepScope`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerSummary, ContainerSummaryStateEnum};
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::Docker;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::limits::{LABEL_HOST, LABEL_MANAGED, LABEL_WORKER};
use super::scratch::Scratch;
use super::settings::SweepScope;
use crate::liveness::Liveness;
use crate::sandbox::uids::UidLease;
use crate::sandbox::SandboxError;

/// Attempts at removing one container before giving up (the sweep is the backstop).
const REMOVE_ATTEMPTS: u32 = 3;

/// What every guard needs to remove its container in the background.
#[derive(Debug, Clone)]
pub(super) struct Cleanup {
    pub docker: Docker,
    pub tracker: TaskTracker,
    /// Containers this sandbox created and has not removed yet; the sweep skips them.
    pub live: Arc<Mutex<HashSet<String>>>,
    /// This worker's host-wide lock (see [`Tuning::liveness`](super::Tuning)).
    pub liveness: Option<Arc<Liveness>>,
}

impl Cleanup {
    fn live(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for background removals, then removes whatever this sandbox created
    /// and still holds (a guard whose removal was not queued yet when asked).
    pub async fn drain(&self) {
        self.tracker.close();
        self.tracker.wait().await;
        let left: Vec<String> = self.live().iter().cloned().collect();
        for id in left {
            if let Err(e) = remove_with_retries(&self.docker, &id).await {
                tracing::warn!(container = %id, error = %e, "failed to remove container at close");
            }
            self.live().remove(&id);
        }
        // Anything else of this worker's (a create whose answer never came back).
        if let Some(l) = &self.liveness {
            match self
                .list(&[
                    format!("{LABEL_WORKER}={}", l.id),
                    format!("{LABEL_HOST}={}", l.host),
                ])
                .await
            {
                Ok(found) => {
                    for c in found {
                        if let Some(id) = c.id {
                            let _ = remove(&self.docker, &id).await;
                        }
                    }
                }
                Err(e) => warn!(error = %e, "listing this worker's containers at close"),
            }
        }
    }

    /// Managed containers with every label in `labels` (`k=v`).
    async fn list(&self, labels: &[String]) -> Result<Vec<ContainerSummary>, SandboxError> {
        let mut wanted = vec![format!("{LABEL_MANAGED}=true")];
        wanted.extend_from_slice(labels);
        let filters = HashMap::from([("label", wanted)]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(SandboxError::engine("listing containers"))
    }

    /// Removes the containers labelled `krill.managed=true` that are swept (see
    /// the module's doc), except this sandbox's own; `startup`: nothing of this
    /// worker's runs yet. Returns how many were removed.
    pub async fn sweep(
        &self,
        scope: &SweepScope,
        grace: Duration,
        startup: bool,
    ) -> Result<usize, SandboxError> {
        let found = self.list(&[]).await?;
        let mut removed = 0;
        for c in found {
            let Some(id) = c.id.clone() else { continue };
            if self.live().contains(&id) {
                continue;
            }
            let dead = self.dead_workers(&c, startup);
            if !dead && !self.covers(scope, grace, &c).await {
                continue;
            }
            if dead {
                let worker = c.labels.as_ref().and_then(|l| l.get(LABEL_WORKER));
                debug!(container_id = %id, ?worker, "removing a container of a dead worker");
            }
            match remove(&self.docker, &id).await {
                Ok(()) => removed += 1,
                Err(e) => warn!(container_id = %id, error = %e, "sweep could not remove container"),
            }
        }
        Ok(removed)
    }

    /// Whether `c` belongs to a dead worker of this host set, or (`startup`) to
    /// this worker's earlier life.
    fn dead_workers(&self, c: &ContainerSummary, startup: bool) -> bool {
        let (Some(l), Some(labels)) = (&self.liveness, c.labels.as_ref()) else {
            return false;
        };
        if labels.get(LABEL_HOST) != Some(&l.host) {
            return false;
        }
        match labels.get(LABEL_WORKER) {
            Some(w) if *w == l.id => startup,
            Some(w) => !l.alive(w),
            None => false,
        }
    }

    /// Whether `scope` covers the container `c`.
    async fn covers(&self, scope: &SweepScope, grace: Duration, c: &ContainerSummary) -> bool {
        let prefix = match scope {
            SweepScope::All => return true,
            SweepScope::WorkerPrefix(prefix) => Some(prefix.as_str()),
            SweepScope::Abandoned => None,
        };
        let worker = c.labels.as_ref().and_then(|l| l.get(LABEL_WORKER));
        if prefix.is_some_and(|p| worker.is_some_and(|w| w.starts_with(p))) {
            return true;
        }
        let now = chrono::Utc::now();
        let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        match c.state {
            Some(ContainerSummaryStateEnum::CREATED) => c
                .created
                .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                .is_some_and(|t| now - t >= grace),
            Some(ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD) => {
                let Some(id) = c.id.as_deref() else {
                    return false;
                };
                // The list has no stop time: ask for it.
                let finished = match self.docker.inspect_container(id, None).await {
                    Ok(info) => info.state.and_then(|s| s.finished_at),
                    Err(_) => None,
                };
                finished
                    .and_then(|f| chrono::DateTime::parse_from_rfc3339(&f).ok())
                    .is_some_and(|t| now - t.with_timezone(&chrono::Utc) >= grace)
            }
            // Running, paused, restarting, being removed: a live worker's, or soon gone.
            _ => false,
        }
    }
}

/// Owns one container: removes it (forced, with anonymous volumes) when told to,
/// or in the background when dropped, whatever the path (error, panic, cancelled future).
#[derive(Debug)]
pub struct ContainerGuard {
    id: String,
    cleanup: Cleanup,
    armed: bool,
    /// The uid its processes run as: given back once the container is gone
    /// (kept for good when its removal failed).
    uid: Option<UidLease>,
    /// Its scratch tmpfs on the host, unmounted once the container is gone.
    scratch: Option<Scratch>,
    /// Its address on the worker network: given back once the container is gone.
    net: Option<crate::sandbox::net::Lease>,
}

impl ContainerGuard {
    pub(super) fn new(
        cleanup: &Cleanup,
        id: String,
        uid: Option<UidLease>,
        scratch: Option<Scratch>,
    ) -> Self {
        cleanup.live().insert(id.clone());
        ContainerGuard {
            id,
            cleanup: cleanup.clone(),
            armed: true,
            uid,
            scratch,
            net: None,
        }
    }

    /// Holds the container's network address until it is removed.
    pub(super) fn hold_net(&mut self, lease: Option<crate::sandbox::net::Lease>) {
        self.net = lease;
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Removes the container now and waits for it.
    pub async fn remove(mut self) -> Result<(), SandboxError> {
        self.armed = false;
        let result = remove_with_retries(&self.cleanup.docker, &self.id).await;
        self.cleanup.live().remove(&self.id);
        release(self.uid.take(), result.is_ok());
        drop(self.scratch.take());
        drop(self.net.take());
        result
    }

    /// Removes the container in the background (the sandbox's `close()` waits for it).
    pub fn remove_later(self) {
        drop(self);
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!(container_id = %self.id, "no runtime to remove container; the next sweep will");
            return;
        };
        let cleanup = self.cleanup.clone();
        let id = std::mem::take(&mut self.id);
        let uid = self.uid.take();
        let scratch = self.scratch.take();
        let net = self.net.take();
        self.cleanup.tracker.spawn_on(
            async move {
                let removed = remove_with_retries(&cleanup.docker, &id).await;
                if let Err(e) = &removed {
                    warn!(container_id = %id, error = %e, "failed to remove container");
                }
                cleanup.live().remove(&id);
                release(uid, removed.is_ok());
                drop(scratch);
                drop(net);
            },
            &runtime,
        );
    }
}

/// Gives a removed container's uid back; one whose container may still run
/// is never handed to another (kept until the worker exits).
fn release(uid: Option<UidLease>, removed: bool) {
    if let Some(uid) = uid {
        if removed {
            drop(uid);
        } else {
            warn!(
                uid = uid.uid(),
                "keeping the uid of a container that could not be removed"
            );
            std::mem::forget(uid);
        }
    }
}

async fn remove_with_retries(docker: &Docker, id: &str) -> Result<(), SandboxError> {
    let mut attempt = 1;
    loop {
        match remove(docker, id).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt >= REMOVE_ATTEMPTS => return Err(e),
            Err(e) => {
                debug!(container_id = %id, error = %e, attempt, "retrying container removal");
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
                attempt += 1;
            }
        }
    }
}

/// Force-removes a container and its anonymous volumes; gone already is success.
pub(super) async fn remove(docker: &Docker, id: &str) -> Result<(), SandboxError> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        // Another remover (a concurrent sweep) is on it.
        Err(DockerError::DockerResponseServerError {
            status_code: 409,
            message,
        }) if message.contains("already in progress") => Ok(()),
        Err(e) => Err(SandboxError::engine(format!("removing container {id}"))(e)),
    }
}
