//! The result message: how a task ended, what it printed and what it set.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::task::{SandboxKind, PROTOCOL_VERSION};

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The script exited 0.
    Succeeded,
    /// The script exited non-zero or was killed by a signal of its own doing.
    Failed,
    /// The script ran past its deadline and was killed.
    TimedOut,
    /// Cancelled by `krill cancel` or by a worker shutdown.
    Cancelled,
    /// Killed by the sandbox's memory limit.
    OomKilled,
    /// Refused before running: invalid message or against the pool's policy. See `error`.
    Rejected,
    /// The sandbox could not be set up or failed. See `error`.
    SandboxError,
    /// The worker running it was lost and the task does not allow a retry.
    WorkerLost,
    /// Ended before it started by a newer task of its concurrency key that set
    /// `supersede` (named in `error`).
    Superseded,
}

impl Status {
    /// Every status, in a stable order (for metrics and docs).
    pub const ALL: [Status; 9] = [
        Status::Succeeded,
        Status::Failed,
        Status::TimedOut,
        Status::Cancelled,
        Status::OomKilled,
        Status::Rejected,
        Status::SandboxError,
        Status::WorkerLost,
        Status::Superseded,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::TimedOut => "timed_out",
            Status::Cancelled => "cancelled",
            Status::OomKilled => "oom_killed",
            Status::Rejected => "rejected",
            Status::SandboxError => "sandbox_error",
            Status::WorkerLost => "worker_lost",
            Status::Superseded => "superseded",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One output variable set by the script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputVar {
    pub name: String,
    /// The value; empty when it is `sealed`.
    pub value: String,
    /// Set through `$KRILL_SENSITIVE_OUTPUT`: masked everywhere but in this field.
    #[serde(default)]
    pub sensitive: bool,
    /// A sensitive value sealed to the task's `reply_key`: base64 of a libsodium
    /// sealed box of the value's UTF-8 bytes (`value` is then empty). Opened by
    /// the submitter's X25519 secret key (`krill wait --show-sensitive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
}

/// Whether the sandbox could apply every limit it was asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// Every limit was applied.
    #[default]
    Enforced,
    /// The worker runs with `--allow-degraded-limits` and could not apply some (no cgroup).
    Degraded,
}

/// How much of the process sandbox's Landlock fence (reads and executes only
/// inside the task's view, writes only to its scratch and output files) the
/// kernel applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Landlock {
    /// Every rule and scope.
    Full,
    /// An older Landlock ABI: the rights it knows.
    Partial,
    /// Not applied: the kernel has no Landlock (or it is disabled).
    Off,
}

/// The egress policy a task with network ran under: the public internet, plus
/// the non-public destinations in `allow`; never the host, loopback,
/// link-local, the worker bridge (other tasks), or the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkApplied {
    /// Granted non-public destinations, `CIDR` or `CIDR:PORTS` (the pool's
    /// resolvers on port 53 come on top).
    pub allow: Vec<String>,
}

/// When the task was queued, started and finished.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

/// What the task used, where the sandbox can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    /// User + system CPU time, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_ms: Option<u64>,
    /// Peak memory, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
}

/// The result of one task. Every task that reaches a worker ends as exactly one
/// result (or, when even that is impossible, a dead letter with its reason).
///
/// Text fields are UTF-8: invalid bytes are replaced by U+FFFD and `lossy` is set.
/// Every secret, sensitive output and added mask is `***` in stdout, stderr and error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskResult {
    pub version: u32,
    /// The task's id.
    pub id: String,
    pub status: Status,
    /// The script's exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended the script, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// Output past the task's `output_bytes` was discarded.
    #[serde(default)]
    pub truncated: bool,
    /// Output had bytes that are not UTF-8; they were replaced by U+FFFD.
    #[serde(default)]
    pub lossy: bool,
    /// Output variables, in the order they were set (the last value of a name wins).
    #[serde(default)]
    pub outputs: Vec<OutputVar>,
    /// Problems reading the output files (a malformed line, a symlink, too large).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_errors: Vec<String>,
    /// Things the submitter should know that did not change the status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// What went wrong that was not the script's own doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The worker that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The name of the trusted key that signed the task (absent: unsigned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxKind>,
    /// Container id (container sandbox) or cgroup/pid (process sandbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// 1 for the first run; more when the task was run again after a worker loss.
    #[serde(default = "one")]
    pub attempt: u32,
    #[serde(default)]
    pub limits: Enforcement,
    /// Process sandbox: whether its Landlock fence was applied (absent for containers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landlock: Option<Landlock>,
    /// The egress policy a task with network ran under (absent: no network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkApplied>,
    #[serde(default)]
    pub timings: Timings,
    #[serde(default)]
    pub usage: Usage,
    /// For a keyed task: how long it waited for its key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_on: Option<super::lines::WaitedOn>,
}

fn one() -> u32 {
    1
}

impl TaskResult {
    /// A result with nothing but the id and status (fill in the rest).
    pub fn new(id: impl Into<String>, status: Status) -> Self {
        TaskResult {
            version: PROTOCOL_VERSION,
            id: id.into(),
            status,
            exit_code: None,
            signal: None,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            lossy: false,
            outputs: Vec::new(),
            output_errors: Vec::new(),
            warnings: Vec::new(),
            error: None,
            worker: None,
            submitter: None,
            sandbox: None,
            sandbox_id: None,
            attempt: 1,
            limits: Enforcement::Enforced,
            landlock: None,
            network: None,
            timings: Timings::default(),
            usage: Usage::default(),
            waited_on: None,
        }
    }

    /// A result for a task the worker refused, with the reason.
    pub fn rejected(id: impl Into<String>, error: impl Into<String>) -> Self {
        let mut r = TaskResult::new(id, Status::Rejected);
        r.error = Some(error.into());
        r
    }

    /// The value of output variable `name`, if set.
    pub fn output(&self, name: &str) -> Option<&str> {
        self.outputs
            .iter()
            .rev()
            .find(|o| o.name == name)
            .map(|o| o.value.as_str())
    }

    /// The process exit code a CLI should mirror: the script's own code, 128+signal
    /// when a signal ended it, 124 timed out, 130 cancelled, 137 OOM, 125 anything krill-side.
    pub fn exit_code_for_cli(&self) -> i32 {
        match self.status {
            Status::Succeeded => 0,
            Status::Failed => match (self.exit_code, self.signal) {
                (Some(c), _) => c,
                (None, Some(s)) => 128 + s,
                (None, None) => 1,
            },
            Status::TimedOut => 124,
            Status::Cancelled | Status::Superseded => 130,
            Status::OomKilled => 137,
            Status::Rejected | Status::SandboxError | Status::WorkerLost => 125,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_unknown_fields() {
        let mut r = TaskResult::new("t1", Status::Failed);
        r.exit_code = Some(3);
        r.outputs.push(OutputVar {
            name: "answer".into(),
            value: "42".into(),
            sensitive: false,
            sealed: None,
        });
        let json = serde_json::to_string(&r).expect("serializes");
        assert!(json.contains(r#""status":"failed""#), "{json}");
        let back: TaskResult = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, r);
        assert_eq!(back.output("answer"), Some("42"));
        let bad = json.replacen('{', r#"{"extra":1,"#, 1);
        assert!(serde_json::from_str::<TaskResult>(&bad).is_err());
    }

    #[test]
    fn cli_exit_codes_mirror_the_task() {
        let mut r = TaskResult::new("t", Status::Failed);
        r.exit_code = Some(3);
        assert_eq!(r.exit_code_for_cli(), 3);
        r.exit_code = None;
        r.signal = Some(11);
        assert_eq!(r.exit_code_for_cli(), 139);
        for (s, c) in [
            (Status::Succeeded, 0),
            (Status::TimedOut, 124),
            (Status::Cancelled, 130),
            (Status::Rejected, 125),
            (Status::SandboxError, 125),
            (Status::WorkerLost, 125),
            (Status::OomKilled, 137),
        ] {
            assert_eq!(TaskResult::new("t", s).exit_code_for_cli(), c, "{s}");
        }
    }
}
