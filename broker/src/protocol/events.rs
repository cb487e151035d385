//! Observational messages: task events, worker heartbeats and live log chunks.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::result::Status;
use super::task::SandboxKind;

/// A task's life-cycle step, published on `krill.events` as `task.<pool>.<state>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// A worker claimed it and is setting up the sandbox.
    Started,
    /// Its result has been published.
    Finished,
    /// It waits in its concurrency key's line (see `blocked`).
    Blocked,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Started => "started",
            TaskState::Finished => "finished",
            TaskState::Blocked => "blocked",
        }
    }
}

/// A task event. Carries no output and no secrets: only who, what and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskEvent {
    pub version: u32,
    pub task_id: String,
    pub pool: String,
    pub state: TaskState,
    pub worker: String,
    /// The name of the trusted key that signed the task (absent: unsigned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Masked, for `finished` events whose result has an `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// For `blocked` events: what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<super::lines::Blocked>,
}

/// A task a worker is running, as its heartbeat reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunningTask {
    pub id: String,
    pub started_at: DateTime<Utc>,
    pub sandbox: SandboxKind,
    /// The name of the trusted key that signed it (absent: unsigned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitter: Option<String>,
}

/// A worker's heartbeat, published every few seconds on `krill.events` as `worker.<id>.heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub version: u32,
    pub worker: String,
    pub host: String,
    pub pool: String,
    /// The worker's software version.
    pub krill_version: String,
    pub slots_total: u32,
    pub slots_free: u32,
    pub draining: bool,
    /// Tasks running right now (not every task the worker ever ran).
    pub running: Vec<RunningTask>,
    pub uptime_secs: u64,
    /// Seconds between heartbeats; a worker silent for 3 of them is taken as lost.
    pub interval_secs: u64,
    /// Set on the last heartbeat of a worker that is exiting.
    #[serde(default)]
    pub stopping: bool,
    /// Why the worker does not claim tasks although nobody told it to stop
    /// (`cannot publish results`); absent while it is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    pub sent_at: DateTime<Utc>,
    /// The concurrency-key lines this worker holds (it is their active consumer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<super::lines::LineView>,
    /// The broker node the worker is connected to (the URL of its
    /// `KRILL_AMQP_URL` list that answered, password redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// Redelivered tasks this worker holds that no heartbeat lists: "did any
    /// of you start one of these?" (issue 18). Absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub asking: Vec<String>,
    /// Tasks a peer asked about that this worker never started and has
    /// promised never to start (its answer to `asking`). Absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disowned: Vec<String>,
    /// A random id of this worker process, new at each start: tells a
    /// restart under the same worker id apart however quick it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
}

/// Which output stream a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A batch of a running task's (masked) output, published on `krill.logs` with the
/// task id as routing key. Transient: only followers bound at the time receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogChunk {
    pub version: u32,
    pub task_id: String,
    /// 0, 1, 2, … per task, over both streams; a gap means a chunk was missed.
    pub seq: u64,
    pub stream: Stream,
    /// Masked text; invalid UTF-8 replaced by U+FFFD.
    pub data: String,
    /// When the first and last byte of this chunk were read.
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    /// Set on the last chunk of the task (its `data` may be empty).
    #[serde(default)]
    pub eof: bool,
}
