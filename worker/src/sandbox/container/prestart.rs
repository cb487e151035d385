//! Prestarted single-use containers: for each allow-listed image, a few
//! containers already created, attached and started with the pool's default
//! limits, each with its krill-stub waiting on stdin for exactly one task.
//!
//! ```text
//! PrestartPool::start                       one refill loop per image (TaskTracker)
//!  └─ refill(image): while ready < size: Launcher::launch(prestart spec)
//!                    then sleep until a take() wakes it, or PRUNE_EVERY passes
//!                    (drops containers that died while waiting)
//! PrestartPool::take(spec) → Option<Launched>
//!  ├─ network the pool's containers lack, other disk or output-file sizes → None (fresh)
//!  ├─ nothing ready for the image → None (fresh); the refill is already running
//!  ├─ memory / cpus / pids differ → the Engine's update call, then hand over
//!  │                                (update refused → that container is removed; None)
//!  └─ same limits → hand over as it is
//! ```
//!
//! A taken container is handed the task like a fresh one ([`Launched::run`]:
//! the request on the attached stdin, frames back on the attached stdout), and
//! removed in the background once the stub reported: never reused. Only the
//! start is moved off the critical path; what the task can see and do is what a
//! fresh container gives it, since both come from the same
//! [`limits::create_body`](super::limits). A prestarted container is labelled
//! like any other (`krill.managed`, `krill.worker`), with `krill.task=prestart-…`
//! (the task is not known at creation, and labels cannot change): the start-up
//! sweep removes those a crashed worker left, and [`PrestartPool::close`] removes the
//! rest at shutdown. A worker that dies leaves no running ones either: the stub's
//! stdin closes with the worker's attach connection, and the stub exits.
//!
//! A container that dies while it waits is reported with its reason (what it
//! printed, its exit code, the engine's error) and its image's refill backs off
//! (0.5 s doubling to 30 s) until a prestarted container of it is used again:
//! a stub or image that cannot run does not start containers in a tight loop.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bollard::models::ContainerUpdateBody;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::launch::Launcher;
use super::limits;
use super::session::Launched;
use super::settings::ImageFacts;
use crate::sandbox::{Effective, Spec};

/// Prestarted containers per image when the container sandbox is on (`--prestart`).
pub const DEFAULT_PRESTART: u32 = 2;
/// Prefix of the task id (and so of the name and `krill.task` label) of a
/// prestarted container.
pub const PRESTART_PREFIX: &str = "prestart-";
/// How often idle containers are checked for having died while waiting (a
/// task also skips dead ones when it takes one).
pub const PRUNE_EVERY: Duration = Duration::from_secs(5);
/// Longest pause between failed refills of one image.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How the pool is set up.
#[derive(Debug, Clone)]
pub struct PrestartConfig {
    /// Containers kept ready per image.
    pub per_image: usize,
    /// The pool's default limits: what prestarted containers are created with.
    pub defaults: Effective,
    pub worker_id: String,
}

/// How a task's limits compare with the prestarted containers'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Same limits: hand over as it is.
    Same,
    /// Memory, cpus or pids differ: the Engine's update call first.
    Update,
    /// Network, disk or output-file sizes differ (fixed at creation): a fresh container.
    Fresh,
}

/// Whether a task with limits `want` can run in a container created with `have`.
pub fn fit(have: &Effective, want: &Effective, allow_network: bool) -> Fit {
    let net = |e: &Effective| e.network && allow_network;
    if net(have) != net(want)
        || have.disk_bytes != want.disk_bytes
        || have.output_file_bytes != want.output_file_bytes
    {
        Fit::Fresh
    } else if have.memory_bytes != want.memory_bytes
        || have.cpus.to_bits() != want.cpus.to_bits()
        || have.pids != want.pids
    {
        Fit::Update
    } else {
        Fit::Same
    }
}

/// Counters, for logs and tests.
#[derive(Debug, Default)]
pub struct PrestartStats {
    /// Tasks handed a prestarted container.
    pub hits: AtomicU64,
    /// … of which after an update of their limits.
    pub updated: AtomicU64,
    /// Tasks that got a fresh container (limits, network, or nothing ready).
    pub misses: AtomicU64,
    /// Containers started for the pool.
    pub started: AtomicU64,
}

/// The prestarted containers of one worker (cheap to clone).
#[derive(Debug, Clone)]
pub struct PrestartPool {
    inner: Arc<Inner>,
}

struct Inner {
    launcher: Arc<Launcher>,
    cfg: PrestartConfig,
    ready: Mutex<HashMap<String, VecDeque<Launched>>>,
    /// Pre-started containers of each image that died before use, since one was
    /// last used: the refill waits longer before each new start.
    deaths: Mutex<HashMap<String, u32>>,
    wake: HashMap<String, Notify>,
    stop: CancellationToken,
    loops: TaskTracker,
    stats: PrestartStats,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrestartPool")
            .field("per_image", &self.cfg.per_image)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl PrestartPool {
    /// Starts filling a pool of `cfg.per_image` containers for each allow-listed image.
    pub(super) fn start(launcher: Arc<Launcher>, cfg: PrestartConfig) -> Self {
        let images = launcher.settings.cfg.images.clone();
        let inner = Arc::new(Inner {
            wake: images.iter().map(|i| (i.clone(), Notify::new())).collect(),
            ready: Mutex::new(
                images
                    .iter()
                    .map(|i| (i.clone(), VecDeque::new()))
                    .collect(),
            ),
            deaths: Mutex::new(HashMap::new()),
            launcher,
            cfg,
            stop: CancellationToken::new(),
            loops: TaskTracker::new(),
            stats: PrestartStats::default(),
        });
        for image in images {
            inner.loops.spawn(refill(inner.clone(), image));
        }
        info!(
            per_image = inner.cfg.per_image,
            "prestarting containers for each allowed image"
        );
        PrestartPool { inner }
    }

    /// A started container for `spec` with its limits applied, or `None` when the
    /// task needs a fresh one. Never blocks on a container start.
    pub async fn take(&self, spec: &Spec) -> Option<Launched> {
        let inner = &self.inner;
        let allow_network = inner.launcher.settings.cfg.allow_network;
        let image = inner.launcher.allowed_image(spec.image.as_deref()).ok()?;
        let fit = fit(&inner.cfg.defaults, &spec.limits, allow_network);
        let taken = match fit {
            Fit::Fresh => None,
            Fit::Same | Fit::Update => inner.pop_alive(&image),
        };
        let Some(launched) = taken else {
            inner.stats.misses.fetch_add(1, Ordering::Relaxed);
            debug!(task_id = %spec.task_id, ?fit, "no prestarted container for this task");
            return None;
        };
        // A container of this image lived to be used: its refill is healthy.
        inner.lock_deaths().remove(&image);
        if let Some(wake) = inner.wake.get(&image) {
            wake.notify_one();
        }
        if fit == Fit::Update {
            let id = launched.id().to_string();
            if let Err(e) = self.update(&id, spec).await {
                warn!(container_id = %launched.id(), error = %e,
                    "could not apply the task's limits to a prestarted container; starting a fresh one");
                inner.stats.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            inner.stats.updated.fetch_add(1, Ordering::Relaxed);
        }
        inner.stats.hits.fetch_add(1, Ordering::Relaxed);
        debug!(task_id = %spec.task_id, container_id = %launched.id(), ?fit, "task handed a prestarted container");
        Some(launched)
    }

    /// Applies `spec`'s memory, cpu and pids limits to a prestarted container,
    /// computed by the same function that writes a fresh container's.
    async fn update(&self, id: &str, spec: &Spec) -> Result<(), bollard::errors::Error> {
        let launcher = &self.inner.launcher;
        // Only the limits are read from it; the image facts shape mounts and the user.
        let facts = ImageFacts {
            uid: 0,
            gid: 0,
            path: String::new(),
            env: Vec::new(),
            volumes: Vec::new(),
        };
        let hc = limits::host_config(&launcher.settings, spec, &facts, None);
        let body = ContainerUpdateBody {
            memory: hc.memory,
            memory_swap: hc.memory_swap,
            nano_cpus: hc.nano_cpus,
            pids_limit: hc.pids_limit,
            ..Default::default()
        };
        launcher.docker.update_container(id, body).await
    }

    /// Containers ready for `image` now.
    pub fn ready(&self, image: &str) -> usize {
        self.inner.lock().get(image).map_or(0, VecDeque::len)
    }

    /// Containers waiting, every image.
    pub fn ready_total(&self) -> usize {
        self.inner.lock().values().map(VecDeque::len).sum()
    }

    pub fn stats(&self) -> &PrestartStats {
        &self.inner.stats
    }

    /// Stops refilling and removes every container still waiting (the container
    /// sandbox's `close()` then waits for the removals).
    pub async fn close(&self) {
        self.inner.stop.cancel();
        self.inner.loops.close();
        self.inner.loops.wait().await;
        let idle: Vec<Launched> = self
            .inner
            .lock()
            .values_mut()
            .flat_map(std::mem::take)
            .collect();
        let n = idle.len();
        // Dropping a Launched removes its container on the sandbox's tracker.
        drop(idle);
        let s = &self.inner.stats;
        info!(
            removed = n,
            hits = s.hits.load(Ordering::Relaxed),
            updated = s.updated.load(Ordering::Relaxed),
            misses = s.misses.load(Ordering::Relaxed),
            "prestarted containers removed"
        );
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Launched>>> {
        self.ready.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_deaths(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.deaths.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a death of `image`'s container and reports why (off this thread:
    /// the engine is asked), then removes what is left of it.
    fn died(self: &Arc<Self>, image: &str, l: Launched, seen: String) {
        *self.lock_deaths().entry(image.to_string()).or_default() += 1;
        let retry_in = self.backoff(image);
        let docker = self.launcher.docker.clone();
        let image = image.to_string();
        self.loops.spawn(async move {
            let id = l.id().to_string();
            let state = docker
                .inspect_container(&id, None)
                .await
                .ok()
                .and_then(|i| i.state);
            let exit = state.as_ref().and_then(|s| s.exit_code);
            let oom = state.as_ref().and_then(|s| s.oom_killed).unwrap_or(false);
            let engine = state
                .and_then(|s| s.error)
                .filter(|e| !e.is_empty())
                .unwrap_or_default();
            warn!(container_id = %id, %image, ?exit, oom_killed = oom, engine_error = %engine,
                output = %seen.trim(), ?retry_in, "a prestarted container died before use; its refill backs off");
            drop(l);
        });
    }

    /// How long `image`'s refill waits before its next start.
    fn backoff(&self, image: &str) -> Duration {
        match self.lock_deaths().get(image).copied().unwrap_or(0) {
            0 => Duration::ZERO,
            n => (Duration::from_millis(500) * 2u32.saturating_pow(n.min(16) - 1)).min(MAX_BACKOFF),
        }
    }

    fn count(&self, image: &str) -> usize {
        self.lock().get(image).map_or(0, VecDeque::len)
    }

    fn spec(&self, image: &str) -> Spec {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        Spec {
            task_id: format!("{PRESTART_PREFIX}{}", &suffix[..12]),
            worker_id: self.cfg.worker_id.clone(),
            script: String::new(),
            interpreter: Vec::new(),
            env: Vec::new(),
            limits: self.cfg.defaults.clone(),
            image: Some(image.to_string()),
        }
    }

    /// The oldest ready container of `image` that is still alive; dead ones
    /// (removed by another worker's sweep, killed, engine restarted, a stub
    /// that cannot run) are reported and dropped.
    fn pop_alive(self: &Arc<Self>, image: &str) -> Option<Launched> {
        let mut dead = Vec::new();
        let found = {
            let mut ready = self.lock();
            let q = ready.get_mut(image)?;
            let mut found = None;
            while let Some(mut l) = q.pop_front() {
                match alive(&mut l) {
                    Ok(()) => {
                        found = Some(l);
                        break;
                    }
                    Err(seen) => dead.push((l, seen)),
                }
            }
            found
        };
        for (l, seen) in dead {
            self.died(image, l, seen);
        }
        found
    }

    /// Drops ready containers that died while waiting (reported, and what is
    /// left of them removed).
    fn prune(self: &Arc<Self>, image: &str) {
        let mut dead = Vec::new();
        if let Some(q) = self.lock().get_mut(image) {
            let mut keep = VecDeque::new();
            while let Some(mut l) = q.pop_front() {
                match alive(&mut l) {
                    Ok(()) => keep.push_back(l),
                    Err(seen) => dead.push((l, seen)),
                }
            }
            *q = keep;
        }
        for (l, seen) in dead {
            self.died(image, l, seen);
        }
    }
}

/// Whether a waiting container's attach stream is still open and silent: the
/// stub writes nothing before its request, so anything ready to read (data or
/// the end of the stream) means the container died or was removed; the error
/// is what was read. Polls without blocking.
fn alive(l: &mut Launched) -> Result<(), String> {
    let mut seen = String::new();
    loop {
        match l.output.next().now_or_never() {
            None if seen.is_empty() => return Ok(()),
            None => return Err(seen),
            Some(None) => {
                if seen.is_empty() {
                    seen.push_str("(the attach stream ended)");
                }
                return Err(seen);
            }
            Some(Some(Ok(out))) if seen.len() < 4096 => {
                seen.push_str(String::from_utf8_lossy(&out.into_bytes()).trim());
                seen.push(' ');
            }
            Some(Some(Ok(_))) => return Err(seen),
            Some(Some(Err(e))) => return Err(format!("{seen}(attach stream: {e})")),
        }
    }
}

/// Keeps `image`'s pool full until the pool stops.
async fn refill(inner: Arc<Inner>, image: String) {
    let mut backoff = Duration::from_millis(500);
    let Some(wake) = inner.wake.get(&image) else {
        return;
    };
    loop {
        while inner.count(&image) < inner.cfg.per_image {
            let spec = inner.spec(&image);
            if inner.stop.is_cancelled() {
                return;
            }
            // Its containers die before use: not again at once.
            let wait = inner.backoff(&image);
            if !wait.is_zero() {
                tokio::select! {
                    _ = inner.stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                inner.prune(&image);
            }
            // Not cut short at shutdown: a create whose answer is never read
            // leaves a container no guard owns. `close()` waits for it instead,
            // and the container is removed like the other idle ones.
            let launched = inner.launcher.launch(&spec).await;
            if inner.stop.is_cancelled() {
                return;
            }
            match launched {
                Ok(l) => {
                    inner.stats.started.fetch_add(1, Ordering::Relaxed);
                    debug!(%image, container_id = %l.id(), timings = ?l.timings(), "prestarted a container");
                    if let Some(q) = inner.lock().get_mut(&image) {
                        q.push_back(l);
                    }
                    backoff = Duration::from_millis(500);
                }
                Err(e) => {
                    warn!(%image, error = %e, retry_in = ?backoff, "could not prestart a container");
                    tokio::select! {
                        _ = inner.stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        tokio::select! {
            biased;
            _ = inner.stop.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(PRUNE_EVERY) => inner.prune(&image),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Effective {
        Effective {
            timeout: Duration::from_secs(60),
            memory_bytes: 512 << 20,
            cpus: 1.0,
            pids: 256,
            disk_bytes: 256 << 20,
            output_file_bytes: 1 << 20,
            network: false,
            network_allow: Vec::new(),
        }
    }

    #[test]
    fn same_limits_fit_as_they_are() {
        let mut want = limits();
        want.timeout = Duration::from_secs(5);
        assert_eq!(fit(&limits(), &want, false), Fit::Same);
    }

    #[test]
    fn memory_cpus_and_pids_are_updated() {
        for change in [
            |e: &mut Effective| e.memory_bytes = 64 << 20,
            |e: &mut Effective| e.cpus = 0.5,
            |e: &mut Effective| e.pids = 32,
        ] {
            let mut want = limits();
            change(&mut want);
            assert_eq!(fit(&limits(), &want, false), Fit::Update);
        }
    }

    #[test]
    fn network_disk_and_output_files_need_a_fresh_container() {
        let mut want = limits();
        want.network = true;
        assert_eq!(fit(&limits(), &want, true), Fit::Fresh);
        // Network asked for but not allowed: both get `none`, so it fits.
        assert_eq!(fit(&limits(), &want, false), Fit::Same);
        let mut want = limits();
        want.disk_bytes = 1 << 20;
        assert_eq!(fit(&limits(), &want, false), Fit::Fresh);
        let mut want = limits();
        want.output_file_bytes = 1 << 10;
        assert_eq!(fit(&limits(), &want, false), Fit::Fresh);
    }
}
