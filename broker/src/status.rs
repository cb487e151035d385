//! What the pool is doing, from the heartbeat stream and the pool queues: every
//! worker seen recently (live, draining, lost or stopped), the tasks each is
//! running, each pool's depth, and why queued tasks are not starting.
//!
//! Heartbeats are read from the stream [`topology::HEARTBEATS_STREAM`] starting a
//! few minutes back (a timestamp offset), so the last heartbeat of a worker that
//! died is still there: a worker silent for more than [`LOST_AFTER_INTERVALS`]
//! of its own intervals is lost. Ready counts come from a passive `queue.declare`
//! of each pool queue; unacknowledged counts are estimated from the live workers'
//! busy slots (a worker holds one slot per unacked delivery), which needs no
//! management plugin.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::options::BasicAckOptions;
use lapin::types::ShortString;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use serde::Serialize;

use crate::amqp::{self, StreamFrom};
use crate::protocol::{BlockReason, Heartbeat, KeyHolder, LineView, RunningTask};
use crate::topology;

/// A worker silent for this many of its heartbeat intervals is taken as lost.
pub const LOST_AFTER_INTERVALS: u64 = 3;
/// How far back the heartbeat stream is read by default.
pub const DEFAULT_SINCE: Duration = Duration::from_secs(10 * 60);
/// Prefetch of the stream consumer (RabbitMQ requires one for streams).
const STREAM_PREFETCH: u16 = 1000;
/// Reading stops once the stream has been quiet this long (caught up).
const SETTLE: Duration = Duration::from_millis(400);
/// … or this long when nothing at all has arrived.
const FIRST_WAIT: Duration = Duration::from_millis(1500);
/// Catching up never takes longer than this (a busy stream is never quiet).
const CATCH_UP_MAX: Duration = Duration::from_secs(5);

/// What went wrong gathering the status.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot reach RabbitMQ at {url}: {source}")]
    Connect {
        url: String,
        source: crate::amqp::ConnectAnyError,
    },
    #[error("reading the heartbeat stream (krill.heartbeats): {0}")]
    Stream(lapin::Error),
    #[error("the broker ended the heartbeat stream consumer")]
    StreamEnded,
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
}

/// Where a worker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Heartbeating and claiming tasks.
    Live,
    /// Heartbeating, not claiming (`krill drain`, or shutting down).
    Draining,
    /// Heartbeating, not claiming because something is wrong with it (it
    /// cannot publish results); it claims again once that is over.
    Degraded,
    /// Its heartbeat stopped without a goodbye (crashed, killed, cut off).
    Lost,
    /// Sent its last heartbeat on a clean exit.
    Stopped,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Live => "live",
            WorkerState::Draining => "draining",
            WorkerState::Degraded => "degraded",
            WorkerState::Lost => "lost",
            WorkerState::Stopped => "stopped",
        }
    }

    /// Whether the worker is still up (live, draining or degraded).
    pub fn is_up(self) -> bool {
        matches!(
            self,
            WorkerState::Live | WorkerState::Draining | WorkerState::Degraded
        )
    }
}

/// One worker, as its last heartbeat describes it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct WorkerStatus {
    pub id: String,
    pub host: String,
    /// The broker node its last heartbeat said it is connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    pub pool: String,
    pub state: WorkerState,
    pub krill_version: String,
    pub slots_total: u32,
    pub slots_free: u32,
    /// Tasks running at the last heartbeat (empty for lost and stopped workers:
    /// what they ran is no longer running there).
    pub running: Vec<RunningTask>,
    pub uptime_secs: u64,
    pub interval_secs: u64,
    /// When its last heartbeat was sent.
    pub last_seen: DateTime<Utc>,
    /// Seconds since then.
    pub silent_secs: u64,
    /// What the last heartbeat said the worker ran (kept for lost workers: those
    /// tasks end as `worker_lost`, or run again if they allow it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_running: Vec<RunningTask>,
    /// Why it is degraded (`cannot publish results`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// The concurrency-key lines it holds (live workers only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<LineView>,
}

/// One concurrency key: who holds it, who waits, in order.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct KeyStatus {
    pub pool: String,
    pub key: String,
    /// The worker holding the key's line (its tasks start there).
    pub line_worker: String,
    pub holders: Vec<KeyHolder>,
    /// Waiting task ids, next first.
    pub waiting: Vec<String>,
    /// Why the next one waits, when not for the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<BlockReason>,
}

/// The keys of the live workers' lines, by pool and key.
pub fn key_status(workers: &[WorkerStatus]) -> Vec<KeyStatus> {
    let mut keys: Vec<KeyStatus> = workers
        .iter()
        .filter(|w| w.state.is_up())
        .flat_map(|w| {
            w.lines.iter().map(|l| KeyStatus {
                pool: w.pool.clone(),
                key: l.key.clone(),
                line_worker: w.id.clone(),
                holders: l.holders.clone(),
                waiting: l.waiting.clone(),
                blocked: l.blocked,
            })
        })
        .collect();
    keys.sort_by(|a, b| (&a.pool, &a.key).cmp(&(&b.pool, &b.key)));
    keys
}

/// One pool: its queue and the workers serving it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PoolStatus {
    pub pool: String,
    pub queue: String,
    /// Whether the pool queue exists (a worker declares it on start).
    pub exists: bool,
    /// Messages waiting to be claimed.
    pub ready: u64,
    /// Messages claimed and not yet acked: tasks running or prefetched, estimated
    /// from the live workers' busy slots.
    pub unacked: u64,
    /// Consumers of the queue, as the broker counts them.
    pub consumers: u32,
    pub workers_live: u32,
    pub workers_draining: u32,
    /// Up, not claiming because they cannot publish results.
    #[serde(default)]
    pub workers_degraded: u32,
    pub workers_lost: u32,
    pub workers_stopped: u32,
    /// Slots of the live (not draining) workers.
    pub slots_total: u32,
    pub slots_free: u32,
    pub running: u32,
    /// Why ready tasks are not starting, when they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// The whole picture.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Report {
    pub generated_at: DateTime<Utc>,
    /// How far back heartbeats were read.
    pub since_secs: u64,
    pub workers: Vec<WorkerStatus>,
    pub pools: Vec<PoolStatus>,
    /// Concurrency keys with a holder or a waiting task.
    pub keys: Vec<KeyStatus>,
}

/// The latest heartbeat of every worker seen in the stream.
#[derive(Debug)]
pub struct HeartbeatReader {
    conn: Connection,
    _channel: Channel,
    consumer: Consumer,
    latest: BTreeMap<String, Heartbeat>,
    since: Duration,
}

impl HeartbeatReader {
    /// Connects, declares the stream (idempotent) and starts reading it `since` ago.
    pub async fn open(url: &str, since: Duration) -> Result<Self, StatusError> {
        let props = ConnectionProperties::default().with_connection_name("krill status".into());
        let conn = crate::amqp::connect_any(url, 0, props)
            .await
            .map_err(|source| StatusError::Connect {
                url: crate::amqp::redact_urls(url),
                source,
            })?
            .conn;
        // Declared on a channel of its own: a user who may read the stream but not
        // configure it (a submitter) still gets the status once a worker declared it.
        let declare = conn.create_channel().await?;
        if topology::declare_heartbeats(&declare).await.is_ok() {
            let _ = declare.close(200, ShortString::from("declared")).await;
        }
        let channel = conn.create_channel().await?;
        let from = Utc::now() - chrono::Duration::from_std(since).unwrap_or_default();
        let consumer = amqp::consume_stream(
            &channel,
            topology::HEARTBEATS_STREAM,
            "",
            STREAM_PREFETCH,
            StreamFrom::Since(from.timestamp().max(0) as u64),
        )
        .await
        .map_err(StatusError::Stream)?;
        Ok(HeartbeatReader {
            conn,
            _channel: channel,
            consumer,
            latest: BTreeMap::new(),
            since,
        })
    }

    /// Reads the stream up to now: until it is quiet for a moment, or a heartbeat
    /// sent after reading began arrives (the stream is ordered, so everything
    /// before it has been read), or [`CATCH_UP_MAX`] has passed.
    pub async fn catch_up(&mut self) -> Result<(), StatusError> {
        let began = Utc::now();
        let give_up = tokio::time::Instant::now() + CATCH_UP_MAX;
        let mut wait = FIRST_WAIT;
        loop {
            let quiet = (tokio::time::Instant::now() + wait).min(give_up);
            let Ok(next) = tokio::time::timeout_at(quiet, self.consumer.next()).await else {
                return Ok(());
            };
            if let Some(sent_at) = self.take(next).await? {
                if sent_at > began {
                    return Ok(());
                }
            }
            wait = SETTLE;
        }
    }

    /// Reads whatever arrives for `period` (for `--watch`).
    pub async fn read_for(&mut self, period: Duration) -> Result<(), StatusError> {
        let deadline = tokio::time::Instant::now() + period;
        while let Ok(next) = tokio::time::timeout_at(deadline, self.consumer.next()).await {
            self.take(next).await?;
        }
        Ok(())
    }

    /// Records one delivery; returns when its heartbeat was sent.
    async fn take(
        &mut self,
        next: Option<Result<lapin::message::Delivery, lapin::Error>>,
    ) -> Result<Option<DateTime<Utc>>, StatusError> {
        let delivery = match next {
            Some(d) => d.map_err(StatusError::Stream)?,
            None => return Err(StatusError::StreamEnded),
        };
        delivery.acker.ack(BasicAckOptions::default()).await?;
        Ok(match serde_json::from_slice::<Heartbeat>(&delivery.data) {
            Ok(hb) => {
                let sent_at = hb.sent_at;
                self.observe(hb);
                Some(sent_at)
            }
            Err(_) => None,
        })
    }

    /// Records a heartbeat if it is newer than what is known of its worker.
    pub fn observe(&mut self, hb: Heartbeat) {
        match self.latest.get(&hb.worker) {
            Some(known) if known.sent_at > hb.sent_at => {}
            _ => {
                self.latest.insert(hb.worker.clone(), hb);
            }
        }
    }

    /// Builds the report as of now: the workers from their heartbeats, and every
    /// pool they serve plus `pools`, with its queue depth.
    pub async fn report(&self, pools: &[String]) -> Result<Report, StatusError> {
        let now = Utc::now();
        let horizon = now - chrono::Duration::from_std(self.since).unwrap_or_default();
        let mut workers: Vec<WorkerStatus> = self
            .latest
            .values()
            .filter(|hb| hb.sent_at >= horizon)
            .map(|hb| worker_status(hb, now))
            .collect();
        workers.sort_by(|a, b| (a.state, &a.pool, &a.id).cmp(&(b.state, &b.pool, &b.id)));
        let names: BTreeSet<String> = workers
            .iter()
            .map(|w| w.pool.clone())
            .chain(pools.iter().cloned())
            .collect();
        let mut out = Vec::new();
        for pool in names {
            let depth = queue_depth(&self.conn, &topology::pool_queue(&pool)).await?;
            out.push(pool_status(&pool, depth, &workers));
        }
        Ok(Report {
            generated_at: now,
            since_secs: self.since.as_secs(),
            keys: key_status(&workers),
            workers,
            pools: out,
        })
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.conn.close(200, ShortString::from("bye")).await;
    }
}

/// Reads the heartbeat stream `since` back and reports (one shot).
pub async fn gather(url: &str, since: Duration, pools: &[String]) -> Result<Report, StatusError> {
    let mut reader = HeartbeatReader::open(url, since).await?;
    reader.catch_up().await?;
    let report = reader.report(pools).await;
    reader.close().await;
    report
}

/// A worker's state from its last heartbeat, as of `now`.
pub fn worker_status(hb: &Heartbeat, now: DateTime<Utc>) -> WorkerStatus {
    let silent = (now - hb.sent_at).num_seconds().max(0) as u64;
    let state = if hb.stopping {
        WorkerState::Stopped
    } else if silent > LOST_AFTER_INTERVALS * hb.interval_secs.max(1) {
        WorkerState::Lost
    } else if hb.degraded.is_some() {
        WorkerState::Degraded
    } else if hb.draining {
        WorkerState::Draining
    } else {
        WorkerState::Live
    };
    let up = state.is_up();
    WorkerStatus {
        id: hb.worker.clone(),
        host: hb.host.clone(),
        broker: hb.broker.clone(),
        pool: hb.pool.clone(),
        state,
        krill_version: hb.krill_version.clone(),
        slots_total: hb.slots_total,
        slots_free: hb.slots_free,
        running: if up { hb.running.clone() } else { Vec::new() },
        uptime_secs: hb.uptime_secs,
        interval_secs: hb.interval_secs,
        last_seen: hb.sent_at,
        silent_secs: silent,
        last_running: if up { Vec::new() } else { hb.running.clone() },
        degraded: hb.degraded.clone().filter(|_| up),
        lines: if up { hb.lines.clone() } else { Vec::new() },
    }
}

/// Ready count and consumer count of a queue; `None` when it does not exist.
async fn queue_depth(conn: &Connection, queue: &str) -> Result<Option<(u64, u32)>, StatusError> {
    Ok(amqp::peek(conn, queue)
        .await?
        .map(|q| (u64::from(q.message_count()), q.consumer_count())))
}

/// A pool's figures and, when tasks wait, why.
pub fn pool_status(pool: &str, depth: Option<(u64, u32)>, workers: &[WorkerStatus]) -> PoolStatus {
    let mine: Vec<&WorkerStatus> = workers.iter().filter(|w| w.pool == pool).collect();
    let count = |s: WorkerState| mine.iter().filter(|w| w.state == s).count() as u32;
    let claiming: Vec<&&WorkerStatus> = mine
        .iter()
        .filter(|w| w.state == WorkerState::Live)
        .collect();
    let slots_total: u32 = claiming.iter().map(|w| w.slots_total).sum();
    let slots_free: u32 = claiming.iter().map(|w| w.slots_free).sum();
    let unacked: u64 = mine
        .iter()
        .filter(|w| w.state.is_up())
        .map(|w| u64::from(w.slots_total.saturating_sub(w.slots_free)))
        .sum();
    let running: u32 = mine.iter().map(|w| w.running.len() as u32).sum();
    let (exists, ready, consumers) = match depth {
        Some((ready, consumers)) => (true, ready, consumers),
        None => (false, 0, 0),
    };
    let mut status = PoolStatus {
        pool: pool.to_string(),
        queue: topology::pool_queue(pool),
        exists,
        ready,
        unacked,
        consumers,
        workers_live: count(WorkerState::Live),
        workers_draining: count(WorkerState::Draining),
        workers_degraded: count(WorkerState::Degraded),
        workers_lost: count(WorkerState::Lost),
        workers_stopped: count(WorkerState::Stopped),
        slots_total,
        slots_free,
        running,
        waiting: None,
    };
    status.waiting = why_waiting(&status);
    status
}

/// Why the ready tasks of a pool are not starting (None when none wait).
fn why_waiting(p: &PoolStatus) -> Option<String> {
    if !p.exists {
        if p.workers_live
            + p.workers_draining
            + p.workers_degraded
            + p.workers_lost
            + p.workers_stopped
            > 0
        {
            // Seen only through old heartbeats of a pool whose queue is gone.
            return None;
        }
        return Some(format!(
            "the queue {} does not exist: no worker has served pool `{}` (start one with KRILL_POOL={})",
            p.queue, p.pool, p.pool
        ));
    }
    if p.ready == 0 {
        return None;
    }
    let n = p.ready;
    let tasks = if n == 1 { "task waits" } else { "tasks wait" };
    Some(if p.workers_live == 0 && p.workers_degraded > 0 {
        format!(
            "{n} {tasks}: every worker of pool `{}` that is up is degraded ({} cannot publish \
             results; they claim again once results go out)",
            p.pool, p.workers_degraded
        )
    } else if p.workers_live == 0 && p.workers_draining == 0 {
        let lost = if p.workers_lost > 0 {
            format!(" ({} lost)", p.workers_lost)
        } else {
            String::new()
        };
        format!("{n} {tasks}: no live worker serves pool `{}`{lost}", p.pool)
    } else if p.workers_live == 0 {
        format!(
            "{n} {tasks}: every live worker of pool `{}` is draining ({} draining; `krill resume --all` to resume)",
            p.pool, p.workers_draining
        )
    } else if p.slots_free == 0 {
        format!(
            "{n} {tasks}: all {} slots are busy; they start as running tasks finish",
            p.slots_total
        )
    } else {
        format!(
            "{n} {tasks}: {} slots free, they should be claimed in a moment",
            p.slots_free
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{SandboxKind, PROTOCOL_VERSION};

    fn hb(id: &str, pool: &str, age_secs: i64) -> Heartbeat {
        Heartbeat {
            version: PROTOCOL_VERSION,
            worker: id.into(),
            host: "h".into(),
            pool: pool.into(),
            krill_version: "0".into(),
            slots_total: 2,
            slots_free: 2,
            draining: false,
            degraded: None,
            asking: Vec::new(),
            disowned: Vec::new(),
            process: None,
            running: Vec::new(),
            broker: None,
            uptime_secs: 1,
            interval_secs: 5,
            stopping: false,
            sent_at: Utc::now() - chrono::Duration::seconds(age_secs),
            lines: Vec::new(),
        }
    }

    #[test]
    fn states_from_heartbeats() {
        let now = Utc::now();
        assert_eq!(
            worker_status(&hb("a", "p", 1), now).state,
            WorkerState::Live
        );
        assert_eq!(
            worker_status(&hb("a", "p", 20), now).state,
            WorkerState::Lost
        );
        let mut d = hb("a", "p", 1);
        d.draining = true;
        assert_eq!(worker_status(&d, now).state, WorkerState::Draining);
        let mut s = hb("a", "p", 1);
        s.stopping = true;
        assert_eq!(worker_status(&s, now).state, WorkerState::Stopped);
        let mut lost = hb("a", "p", 60);
        lost.running.push(RunningTask {
            id: "t".into(),
            started_at: now,
            sandbox: SandboxKind::Process,
            submitter: None,
        });
        let w = worker_status(&lost, now);
        assert!(w.running.is_empty(), "a lost worker runs nothing");
        assert_eq!(w.last_running.len(), 1);
    }

    #[test]
    fn waiting_is_explained() {
        let now = Utc::now();
        let none = pool_status("p", Some((2, 0)), &[]);
        assert!(none
            .waiting
            .as_deref()
            .unwrap_or("")
            .contains("no live worker"));
        let mut d = hb("a", "p", 1);
        d.draining = true;
        let drained = pool_status("p", Some((1, 0)), &[worker_status(&d, now)]);
        assert!(drained
            .waiting
            .as_deref()
            .unwrap_or("")
            .contains("draining"));
        let mut busy = hb("a", "p", 1);
        busy.slots_free = 0;
        let full = pool_status("p", Some((3, 1)), &[worker_status(&busy, now)]);
        assert!(full
            .waiting
            .as_deref()
            .unwrap_or("")
            .contains("slots are busy"));
        assert_eq!(full.unacked, 2);
        let idle = pool_status("p", Some((0, 1)), &[worker_status(&hb("a", "p", 1), now)]);
        assert!(idle.waiting.is_none());
        let missing = pool_status("q", None, &[]);
        assert!(missing
            .waiting
            .as_deref()
            .unwrap_or("")
            .contains("does not exist"));
    }
}
