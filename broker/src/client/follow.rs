//! What a submitter follows of one task while it runs: its live log chunks,
//! its `blocked`/`started` events and its `finished` event.

use futures_util::StreamExt;
use lapin::Channel;

use crate::protocol::{LogChunk, TaskEvent, TaskState};

/// Live log chunks of one task, in order.
#[derive(Debug)]
pub struct LogFollower {
    pub(super) _channel: Channel,
    pub(super) consumer: lapin::Consumer,
    pub(super) next_seq: u64,
    pub(super) missed: u64,
}

impl LogFollower {
    /// The next chunk; `None` once the consumer ends. A chunk with `eof` is the last.
    /// Duplicates are dropped; gaps in `seq` (chunks published before this follower
    /// was bound, or dropped while the worker had no connection) are counted in
    /// [`LogFollower::missed`].
    pub async fn next(&mut self) -> Option<LogChunk> {
        loop {
            let delivery = self.consumer.next().await?.ok()?;
            let Ok(chunk) = serde_json::from_slice::<LogChunk>(&delivery.data) else {
                continue;
            };
            if chunk.seq < self.next_seq {
                continue;
            }
            self.missed += chunk.seq - self.next_seq;
            self.next_seq = chunk.seq + 1;
            return Some(chunk);
        }
    }

    /// How many chunks were skipped so far (gaps in `seq`).
    pub fn missed(&self) -> u64 {
        self.missed
    }
}

/// The `finished` event of one task (see [`Client::watch_finished`]).
#[derive(Debug)]
pub struct FinishWatch {
    pub(super) _channel: Channel,
    pub(super) consumer: lapin::Consumer,
    pub(super) id: String,
}

impl FinishWatch {
    /// Waits for the task's `finished` event; `None` once the consumer ends.
    pub async fn next(&mut self) -> Option<TaskEvent> {
        loop {
            let delivery = self.consumer.next().await?.ok()?;
            match serde_json::from_slice::<TaskEvent>(&delivery.data) {
                Ok(ev) if ev.task_id == self.id && ev.state == TaskState::Finished => {
                    return Some(ev)
                }
                _ => continue,
            }
        }
    }
}

/// The `blocked` and `started` events of one task (see [`Client::watch_progress`]).
#[derive(Debug)]
pub struct ProgressWatch {
    pub(super) _channel: Channel,
    pub(super) consumer: lapin::Consumer,
    pub(super) id: String,
}

impl ProgressWatch {
    /// The task's next `blocked` or `started` event; `None` once the consumer ends.
    pub async fn next(&mut self) -> Option<TaskEvent> {
        loop {
            let delivery = self.consumer.next().await?.ok()?;
            match serde_json::from_slice::<TaskEvent>(&delivery.data) {
                Ok(ev) if ev.task_id == self.id => return Some(ev),
                _ => continue,
            }
        }
    }
}
