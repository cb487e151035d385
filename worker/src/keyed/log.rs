//! The line log (`krill.lines.log`, a stream): a `start` record is written and
//! confirmed before a keyed task starts, a `done` record once its result is
//! confirmed. It is the start evidence a line reads when the broker gives it a
//! task again: a task with no `start` never ran (it was only waiting in a line
//! whose worker went away), one with `start` and no `done` is held by the worker
//! that wrote it, one with `done` has its result standing. Every worker reads it
//! from its start on each connection.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use broker::amqp::{self, StreamFrom};
use broker::protocol::{LineRecord, LineStep};
use broker::topology::LINES_LOG_STREAM;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::options::BasicAckOptions;
use lapin::Connection;
use tokio::sync::watch;

use super::LinesError;
use crate::outbound::Outbound;

/// Ids remembered at most (the oldest are forgotten first).
pub const LOG_MEMORY: usize = 200_000;
/// How long a catch-up may take before a line gives up on it for now.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// Who started a keyed task, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub worker: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct State {
    started: HashMap<String, Start>,
    done: HashSet<String>,
    markers: HashSet<String>,
    order: VecDeque<String>,
}

/// What this worker has read of the line log.
#[derive(Debug)]
pub struct LineLog {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl Default for LineLog {
    fn default() -> Self {
        LineLog {
            state: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LineLog {
    /// Takes in one record (pure; the tail calls it).
    pub fn observe(&self, rec: &LineRecord) {
        {
            let mut s = lock(&self.state);
            let id = rec.task_id.clone();
            match rec.step {
                LineStep::Start => {
                    // The first start wins: a later one is a run again after a loss.
                    s.started.entry(id.clone()).or_insert(Start {
                        worker: rec.worker.clone(),
                        at: rec.at,
                    });
                }
                LineStep::Done => {
                    s.done.insert(id.clone());
                }
                LineStep::Marker => {
                    s.markers.insert(id.clone());
                }
            }
            s.order.push_back(id);
            while s.order.len() > LOG_MEMORY {
                if let Some(old) = s.order.pop_front() {
                    s.started.remove(&old);
                    s.done.remove(&old);
                    s.markers.remove(&old);
                }
            }
        }
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn started(&self, id: &str) -> Option<Start> {
        lock(&self.state).started.get(id).cloned()
    }

    pub fn is_done(&self, id: &str) -> bool {
        lock(&self.state).done.contains(id)
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Writes a marker and waits until the tail has read it back: from then on
    /// every record written before is known.
    pub async fn catch_up(&self, outbound: &Outbound) -> Result<(), LinesError> {
        let marker = format!("krill-sync.{}", uuid::Uuid::new_v4().simple());
        let mut changed = self.subscribe();
        outbound
            .line("", &marker, LineStep::Marker)
            .await
            .map_err(LinesError::Log)?;
        tokio::time::timeout(CATCH_UP_TIMEOUT, async {
            loop {
                if lock(&self.state).markers.contains(&marker) {
                    return;
                }
                if changed.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
        .map_err(|_| LinesError::CatchUp)
    }
}

/// Reads the line log from its first record, then live ones, until the
/// connection breaks.
pub async fn tail(log: &LineLog, conn: &Connection, worker: &str) -> Result<(), LinesError> {
    let ch = conn.create_channel().await?;
    let mut consumer = amqp::consume_stream(
        &ch,
        LINES_LOG_STREAM,
        &format!("krill-lines-log.{worker}"),
        500,
        StreamFrom::First,
    )
    .await?;
    while let Some(d) = consumer.next().await {
        let d = d?;
        if let Ok(rec) = serde_json::from_slice::<LineRecord>(&d.data) {
            log.observe(&rec);
        }
        d.acker.ack(BasicAckOptions::default()).await?;
    }
    Err(LinesError::Ended("line log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, step: LineStep, worker: &str) -> LineRecord {
        LineRecord {
            version: 1,
            pool: "p".into(),
            key: "k".into(),
            task_id: id.into(),
            step,
            worker: worker.into(),
            at: Utc::now(),
        }
    }

    #[test]
    fn the_first_start_wins_and_done_is_remembered() {
        let log = LineLog::default();
        assert!(log.started("t1").is_none());
        log.observe(&rec("t1", LineStep::Start, "w1"));
        log.observe(&rec("t1", LineStep::Start, "w2"));
        assert_eq!(log.started("t1").map(|s| s.worker), Some("w1".into()));
        assert!(!log.is_done("t1"));
        log.observe(&rec("t1", LineStep::Done, "w2"));
        assert!(log.is_done("t1"));
    }
}
