//! The worker as observers see it at one moment: what its heartbeat and its
//! metrics report. Plain data, taken from the worker's shared state
//! (`Shared::snapshot`) and read by `outbound` and `metrics`, which so need
//! nothing of the worker itself.

use std::time::Duration;

use broker::protocol::{LineView, RunningTask, SandboxKind};

/// The worker's state at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub worker: String,
    pub host: String,
    pub pool: String,
    pub slots_total: u32,
    pub slots_free: u32,
    /// Not claiming tasks (drained or shutting down).
    pub draining: bool,
    /// Not claiming because something is wrong (`cannot publish results`).
    pub degraded: Option<String>,
    /// Running tasks, oldest first.
    pub running: Vec<RunningTask>,
    pub uptime: Duration,
    pub heartbeat_interval: Duration,
    /// Connected to the broker.
    pub connected: bool,
    /// Sandboxes prestarted and waiting for a task, by kind.
    pub prestarted: Vec<(SandboxKind, usize)>,
    /// The concurrency-key lines this worker holds.
    pub lines: Vec<LineView>,
    /// The broker node it is connected to (redacted URL), once it connected.
    pub broker: Option<String>,
    /// Redelivered tasks it asks its peers about (`crate::peers`).
    pub asking: Vec<String>,
    /// Tasks peers asked about that it promised never to start.
    pub disowned: Vec<String>,
    /// This process's random id (`Heartbeat::process`).
    pub process: String,
}
