//! The wire messages of the queue contract (v1): plain serde data, no I/O.
//!
//! Every message is JSON. A [`Task`] goes to the pool's queue, a [`TaskResult`]
//! comes back on the queue named in the task's `reply_to` property, and the
//! observational messages ([`TaskEvent`], [`Heartbeat`], [`LogChunk`]) and
//! [`Control`] commands travel on their topic exchanges (see `crate::topology`).
//! The JSON Schema of each lives in `broker/schema/`, generated from these types.

mod control;
mod events;
mod lines;
mod result;
mod task;

pub use control::Control;
pub use events::{Heartbeat, LogChunk, RunningTask, Stream, TaskEvent, TaskState};
pub use lines::{
    human_duration, short_id, valid_key, BlockReason, Blocked, KeyAnnounce, KeyHolder, LineRecord,
    LineStep, LineView, WaitedOn, MAX_CONCURRENT_LIMIT, MAX_KEY_LEN,
};
pub use result::{
    Enforcement, Landlock, NetworkApplied, OutputVar, Status, TaskResult, Timings, Usage,
};
pub use task::{
    valid_env_name, valid_id, Limits, Network, NetworkAllow, SandboxKind, Sealed, Secret,
    SecretValue, Task, TaskError, DEFAULT_INTERPRETER, MAX_ID_LEN, PROTOCOL_VERSION,
};

/// The largest task message a worker accepts, in bytes (script, env and secrets included).
pub const MAX_TASK_BYTES: usize = 4 * 1024 * 1024;
