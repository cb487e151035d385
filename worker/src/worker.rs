//! The state one worker shares between its loops and its running tasks.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::runner::RunCtx;
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
    /// Cancelled last, when every loop must end.
    pub root: CancellationToken,
    /// Cancelled on SIGTERM: stop claiming for good.
    pub shutdown: CancellationToken,
    /// Drained remotely (`krill drain`); `krill resume` clears it.
    pub draining: watch::Sender<bool>,
    /// One permit per slot; held by a task from delivery to ack.
    pub slots: Arc<Semaphore>,
    pub started: Instant,
}

impl Shared {
    /// Whether the worker is not claiming tasks (drained or shutting down).
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow() || self.shutdown.is_cancelled()
    }

    pub fn slots_free(&self) -> u32 {
        u32::try_from(self.slots.available_permits()).unwrap_or(u32::MAX)
    }
}
