//! The state one worker shares between its loops and its running tasks.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::Health;
use crate::keyed::Lines;
use crate::runner::RunCtx;
use crate::snapshot::Snapshot;
use crate::state::TaskState;

/// Shared by the connection loop, the heartbeat, the HTTP server and every task.
#[derive(Debug)]
pub struct Shared {
    pub id: String,
    pub pool: String,
    pub host: String,
    pub cfg: Config,
    pub run: RunCtx,
    pub tasks: TaskState,
    /// Signatures, trusted keys, pool keys, claims, audit.
    pub trust: crate::trust::Trust,
    /// Cancelled last, when every loop must end.
    pub root: CancellationToken,
    /// Cancelled on SIGTERM: stop claiming for good.
    pub shutdown: CancellationToken,
    /// Drained remotely (`krill drain`); `krill resume` clears it.
    pub draining: watch::Sender<bool>,
    /// One permit per slot; held by a task from delivery to ack.
    pub slots: Arc<Semaphore>,
    pub started: Instant,
    /// Whether results still go out (the sink reports to it).
    pub health: Arc<Health>,
    /// Why the claim loop stopped claiming on its own, once it did (what the
    /// heartbeat says: it follows the claims, not the health alone).
    pub not_claiming: std::sync::Mutex<Option<&'static str>>,
    /// The concurrency-key lines this worker serves.
    pub lines: Lines,
    /// Who in the pool is alive and runs what, from the heartbeats.
    pub peers: crate::peers::Peers,
    /// The broker node of the current (or last) connection, redacted.
    pub broker: std::sync::Mutex<Option<String>>,
}

impl Shared {
    /// Shared state for worker `id` with `run` and `cfg`; nothing is started.
    pub fn new(id: &str, host: &str, cfg: Config, run: RunCtx) -> Self {
        Shared {
            id: id.to_string(),
            pool: cfg.pool.clone(),
            host: host.to_string(),
            run,
            tasks: TaskState::default(),
            trust: crate::trust::Trust::open(id, &cfg.pool),
            root: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            draining: watch::channel(false).0,
            slots: Arc::new(Semaphore::new(cfg.concurrency as usize)),
            started: Instant::now(),
            health: Arc::new(Health::new(cfg.degraded_after)),
            not_claiming: std::sync::Mutex::new(None),
            lines: Lines::new(),
            peers: crate::peers::Peers::new(cfg.heartbeat_interval),
            broker: std::sync::Mutex::new(None),
            cfg,
        }
    }

    /// The same with `trust` (the keys and rules from the flags) instead of an open pool.
    pub fn with_trust(mut self, trust: crate::trust::Trust) -> Self {
        self.trust = trust;
        self
    }

    /// The same, reporting `health` (the one the outbound sink updates).
    pub fn with_health(mut self, health: Arc<Health>) -> Self {
        self.health = health;
        self
    }

    /// Why the worker does not claim although nobody told it to stop, if it
    /// does not: it cannot publish results.
    pub fn degraded(&self) -> Option<&'static str> {
        self.health.degraded()
    }

    /// Whether the worker is not claiming tasks (drained or shutting down).
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow() || self.shutdown.is_cancelled()
    }

    pub fn slots_free(&self) -> u32 {
        u32::try_from(self.slots.available_permits()).unwrap_or(u32::MAX)
    }

    /// The worker as its heartbeat and metrics report it now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            worker: self.id.clone(),
            host: self.host.clone(),
            pool: self.pool.clone(),
            slots_total: self.cfg.concurrency,
            slots_free: self.slots_free(),
            draining: self.is_draining(),
            degraded: self
                .not_claiming
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .map(str::to_string),
            running: self.tasks.running(),
            uptime: self.started.elapsed(),
            heartbeat_interval: self.cfg.heartbeat_interval,
            connected: self.run.outbound.connected(),
            prestarted: self.run.sandboxes.prestarted(),
            lines: self.lines.views(),
            broker: self
                .broker
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            asking: self.peers.asking(),
            process: self.peers.process().to_string(),
            // Answering is promising: each one listed will never start here.
            disowned: self
                .peers
                .asked(&self.id, &self.pool)
                .into_iter()
                .filter(|id| self.tasks.disown(id))
                .collect(),
        }
    }

    /// Sends a heartbeat (`stopping`: the last one, on exit).
    pub async fn send_heartbeat(&self, stopping: bool) {
        self.run
            .outbound
            .heartbeat(&self.snapshot(), stopping)
            .await;
    }
}

/// A worker's shared state over `sink`, with the default configuration, no
/// sandbox enabled and nothing started: for unit tests of the layers above
/// the sandboxes.
#[cfg(test)]
pub(crate) fn for_tests(sink: Arc<dyn crate::outbound::Sink>) -> Arc<Shared> {
    for_tests_with(sink, crate::trust::Trust::open("w-test", "p-test"))
}

/// [`for_tests`] with `trust` (keys, rules) instead of an open pool.
#[cfg(test)]
pub(crate) fn for_tests_with(
    sink: Arc<dyn crate::outbound::Sink>,
    trust: crate::trust::Trust,
) -> Arc<Shared> {
    use clap::Parser as _;
    let cfg = Config::parse_from(["krill-worker", "--worker-id", "w-test", "--pool", "p-test"]);
    let run = RunCtx {
        worker_id: "w-test".into(),
        policy: Arc::new(cfg.policy()),
        sandboxes: crate::sandboxes::Sandboxes::default(),
        outbound: crate::outbound::Outbound::new(sink, "w-test", "p-test"),
        metrics: Arc::new(crate::metrics::Metrics::new("w-test", "p-test")),
    };
    Arc::new(Shared::new("w-test", "test-host", cfg, run).with_trust(trust))
}
