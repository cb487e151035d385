//! Concurrency keys: the fields a keyed task carries, what a waiting task is
//! told (who holds its key, its place in the line) and the records of the
//! line log (which worker started and finished a keyed task).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest concurrency key accepted.
pub const MAX_KEY_LEN: usize = 128;
/// The largest `max_concurrent` the protocol accepts (a pool may allow less).
pub const MAX_CONCURRENT_LIMIT: u32 = 64;

/// Whether `key` is a valid concurrency key: 1-128 characters of `A-Z a-z 0-9 _ . : / -`.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-'))
}

/// Why a task that could run is not running yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BlockReason {
    /// Its concurrency key is held by as many tasks as it allows.
    Key,
    /// Its turn came but the worker holding its line has no free slot.
    NoFreeSlot,
    /// The worker holding its line is draining.
    Draining,
}

impl BlockReason {
    pub const ALL: [BlockReason; 3] = [
        BlockReason::Key,
        BlockReason::NoFreeSlot,
        BlockReason::Draining,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::Key => "key",
            BlockReason::NoFreeSlot => "no_free_slot",
            BlockReason::Draining => "draining",
        }
    }
}

/// A task holding a concurrency key (running it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyHolder {
    pub task_id: String,
    /// The worker running it.
    pub worker: String,
    pub started_at: DateTime<Utc>,
    /// Who submitted it, when tasks are signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitter: Option<String>,
}

/// Why a keyed task waits, as the `blocked` event, `krill status` and `krill wait` say it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Blocked {
    pub key: String,
    pub reason: BlockReason,
    /// Tasks of the key ahead of this one that have not started (0: it is next).
    pub ahead: u32,
    /// The tasks holding the key now.
    pub holders: Vec<KeyHolder>,
    /// The worker holding the key's line (where the task will start).
    pub line_worker: String,
}

/// Humanised duration: `3m12s`, `45s`, `1h02m`.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// A short form of a task id for humans: `0192…c3d4` (ids of 12 characters or fewer as they are).
pub fn short_id(id: &str) -> String {
    if id.len() <= 12 || !id.is_ascii() {
        id.to_string()
    } else {
        format!("{}…{}", &id[..4], &id[id.len() - 4..])
    }
}

impl Blocked {
    /// The one line a human reads, e.g. `waiting for prod-db: task 0192…c3d4
    /// (worker w-7, running 3m12s) holds it; 2 ahead of this task`.
    pub fn describe(&self, now: DateTime<Utc>) -> String {
        let holders: Vec<String> = self
            .holders
            .iter()
            .map(|h| {
                let by = h
                    .submitter
                    .as_deref()
                    .map(|s| format!(", submitted by {s}"))
                    .unwrap_or_default();
                format!(
                    "task {} (worker {}, running {}{by})",
                    short_id(&h.task_id),
                    h.worker,
                    human_duration((now - h.started_at).num_seconds())
                )
            })
            .collect();
        let why = match (self.reason, holders.len()) {
            (BlockReason::Key, 0) => "its line is being handed over".to_string(),
            (BlockReason::Key, 1) => format!("{} holds it", holders[0]),
            (BlockReason::Key, _) => format!("{} hold it", holders.join(" and ")),
            (BlockReason::NoFreeSlot, _) => format!(
                "its turn came, but worker {} has no free slot",
                self.line_worker
            ),
            (BlockReason::Draining, _) => {
                format!("worker {} holding its line is draining", self.line_worker)
            }
        };
        let ahead = match self.ahead {
            0 => "next in line".to_string(),
            1 => "1 ahead of this task".to_string(),
            n => format!("{n} ahead of this task"),
        };
        format!("waiting for {}: {why}; {ahead}", self.key)
    }
}

/// How long a keyed task waited for its key, in its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitedOn {
    pub key: String,
    /// From the moment a worker held it in the key's line until it started, ms.
    pub waited_ms: u64,
}

/// One key's line as the worker holding it reports it in its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LineView {
    pub key: String,
    pub holders: Vec<KeyHolder>,
    /// Waiting task ids, next first.
    pub waiting: Vec<String>,
    /// Set when the next task waits for another reason than the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<BlockReason>,
}

/// What a record of the line log says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineStep {
    /// A worker is about to start the task (written, and confirmed, before it starts).
    Start,
    /// The task's result is confirmed (or it was answered without running).
    Done,
    /// A marker a worker writes to know it has read the log up to now.
    Marker,
}

/// A record of the line log stream (`krill.lines.log`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LineRecord {
    pub version: u32,
    pub pool: String,
    pub key: String,
    pub task_id: String,
    pub step: LineStep,
    pub worker: String,
    pub at: DateTime<Utc>,
}

/// A key announcement on the keys stream (`krill.keys`): the key's line queue
/// exists; every worker of the pool consumes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyAnnounce {
    pub version: u32,
    pub pool: String,
    pub key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(valid_key("prod-db"));
        assert!(valid_key("env/prod:web_1.a"));
        assert!(!valid_key(""));
        assert!(!valid_key("has space"));
        assert!(!valid_key("ünï"));
        assert!(!valid_key(&"k".repeat(MAX_KEY_LEN + 1)));
        assert!(valid_key(&"k".repeat(MAX_KEY_LEN)));
    }

    #[test]
    fn blocked_reads_as_one_line() {
        let now = Utc::now();
        let b = Blocked {
            key: "prod-db".into(),
            reason: BlockReason::Key,
            ahead: 2,
            holders: vec![KeyHolder {
                task_id: "0192f4c8-7d1e-7c3a-9a51-5f0e1b2cc3d4".into(),
                worker: "w-7".into(),
                started_at: now - chrono::Duration::seconds(192),
                submitter: None,
            }],
            line_worker: "w-7".into(),
        };
        assert_eq!(
            b.describe(now),
            "waiting for prod-db: task 0192…c3d4 (worker w-7, running 3m12s) holds it; 2 ahead of this task"
        );
    }
}
