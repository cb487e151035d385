//! Who in the pool is alive, and who runs which task: one view of the
//! heartbeats every worker publishes (`worker.<id>.heartbeat` on
//! `krill.events`, each listing the tasks it runs), heard by this worker on
//! its current connection.
//!
//! A peer is lost once it said goodbye, restarted after the task started, or
//! was silent for more than [`LOST_AFTER`] of its intervals while this worker
//! was connected (time without a connection does not count, and a fresh
//! connection gives every peer [`RECONNECT_GRACE`] to come back). A task that
//! a live peer's heartbeat stops listing was finished there; a task no
//! heartbeat lists within that same bound has no live holder.
//!
//! Both the concurrency-key lines (is a key's holder alive) and the claim
//! loop (may a redelivered task still run elsewhere) ask it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use broker::protocol::Heartbeat;
use broker::topology::{ALL_HEARTBEATS, EVENTS_EXCHANGE};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::Connection;
use tokio::sync::watch;

/// A peer silent for this many of its heartbeat intervals is lost.
pub const LOST_AFTER: u32 = 3;
/// After this worker (re)connects, a peer gets this long more before its
/// silence counts: it may still be waiting out its reconnect backoff (after a
/// broker restart every worker reconnects, each on its own schedule).
/// At least `connection::MAX_BACKOFF` (a test there keeps it so).
pub const RECONNECT_GRACE: Duration = Duration::from_secs(10);
/// How long a task that left a peer's running list is remembered.
pub const ENDED_KEPT: Duration = Duration::from_secs(600);
/// A peer whose process began this long after a task started is a new process.
const CLOCK_SLACK_SECS: i64 = 2;

#[derive(Debug, Clone)]
struct Seen {
    heard: Instant,
    interval: Duration,
    /// When its process started (its clock).
    began: DateTime<Utc>,
    stopping: bool,
    /// The tasks it runs, with when each started.
    running: HashMap<String, DateTime<Utc>>,
}

/// How a task left a peer's running list.
#[derive(Debug, Clone)]
struct Ended {
    worker: String,
    /// The same process dropped it (finished there); otherwise the peer
    /// restarted or said goodbye with it still running (lost).
    finished: bool,
    at: Instant,
}

/// What is known of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It may still run the task: wait.
    Alive,
    /// It cannot be running it any more.
    Lost,
}

/// What is known of whoever runs a task elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// `worker` runs it and may still: wait.
    Running(String),
    /// `worker` ran it to its end: its result is the task's.
    Finished(String),
    /// The worker that ran it is gone (`None`: no live worker said it runs
    /// it within the bound).
    Lost(Option<String>),
    /// Nobody is known to run it yet, and the bound is not over: wait.
    Unknown,
}

#[derive(Debug, Default)]
struct Inner {
    seen: HashMap<String, Seen>,
    ended: HashMap<String, Ended>,
    /// When this worker began listening on its current connection.
    since: Option<Instant>,
}

/// The heartbeats heard (kept over reconnects; the silence clock restarts).
#[derive(Debug)]
pub struct Peers {
    inner: Mutex<Inner>,
    default_interval: Duration,
    changed: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Peers {
    pub fn new(default_interval: Duration) -> Self {
        Peers {
            inner: Mutex::default(),
            default_interval,
            changed: watch::channel(0).0,
        }
    }

    /// Takes in a heartbeat heard at `now`.
    pub fn observe(&self, hb: &Heartbeat, now: Instant) {
        let began = hb.sent_at - chrono::Duration::seconds(hb.uptime_secs as i64);
        let running: HashMap<String, DateTime<Utc>> = hb
            .running
            .iter()
            .map(|r| (r.id.clone(), r.started_at))
            .collect();
        let mut inner = lock(&self.inner);
        let Inner { seen, ended, .. } = &mut *inner;
        if let Some(prev) = seen.get(&hb.worker) {
            let same = (prev.began - began).num_seconds().abs() <= CLOCK_SLACK_SECS;
            for id in prev.running.keys().filter(|id| !running.contains_key(*id)) {
                let e = Ended {
                    worker: hb.worker.clone(),
                    finished: same,
                    at: now,
                };
                ended.insert(id.clone(), e);
            }
        }
        if hb.stopping {
            for id in running.keys() {
                let e = Ended {
                    worker: hb.worker.clone(),
                    finished: false,
                    at: now,
                };
                ended.insert(id.clone(), e);
            }
        } else {
            // Listed (again): whatever was said of it before is past.
            for id in running.keys() {
                ended.remove(id);
            }
        }
        ended.retain(|_, e| now.saturating_duration_since(e.at) < ENDED_KEPT);
        seen.insert(
            hb.worker.clone(),
            Seen {
                heard: now,
                interval: Duration::from_secs(hb.interval_secs.max(1)),
                began,
                stopping: hb.stopping,
                running,
            },
        );
        drop(inner);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Starts (or restarts, on a new connection) the silence clock.
    pub fn listening(&self, now: Instant) {
        lock(&self.inner).since = Some(now);
    }

    /// Whether `worker`, which started a task at `started_at`, may still run it.
    pub fn verdict(&self, worker: &str, started_at: DateTime<Utc>, now: Instant) -> Verdict {
        let inner = lock(&self.inner);
        Self::judge(
            &inner,
            self.default_interval,
            worker,
            started_at,
            now,
            Duration::ZERO,
        )
    }

    fn judge(
        inner: &Inner,
        default_interval: Duration,
        worker: &str,
        started_at: DateTime<Utc>,
        now: Instant,
        extra: Duration,
    ) -> Verdict {
        let Some(since) = inner.since else {
            return Verdict::Alive;
        };
        let (heard, interval) = match inner.seen.get(worker) {
            Some(s) if s.stopping => return Verdict::Lost,
            // Its process began after the task started: a new process, the task is gone.
            Some(s) if s.began > started_at + chrono::Duration::seconds(CLOCK_SLACK_SECS) => {
                return Verdict::Lost
            }
            Some(s) => (s.heard.max(since + RECONNECT_GRACE) + extra, s.interval),
            None => (since + RECONNECT_GRACE + extra, default_interval),
        };
        if now.saturating_duration_since(heard) > interval * LOST_AFTER {
            Verdict::Lost
        } else {
            Verdict::Alive
        }
    }

    /// Who runs task `id` elsewhere, asked by a worker that has waited for the
    /// answer since `waiting_since`: a live holder, one that finished it, a
    /// lost one, or (still within the bound) nobody known yet. A holder is
    /// lost once silent for [`LOST_AFTER`] intervals plus [`RECONNECT_GRACE`]
    /// (it may be reconnecting itself), or at once on a goodbye or restart.
    pub fn holder(&self, id: &str, waiting_since: Instant, now: Instant) -> Holder {
        let inner = lock(&self.inner);
        let listed = inner
            .seen
            .iter()
            .filter_map(|(w, s)| s.running.get(id).map(|at| (w, *at)))
            .max_by_key(|(_, at)| *at);
        if let Some((worker, started_at)) = listed {
            // Its own reconnect (a node lost, a broker restart) may take a
            // backoff: RECONNECT_GRACE more than a key's holder gets.
            let extra = RECONNECT_GRACE;
            return match Self::judge(
                &inner,
                self.default_interval,
                worker,
                started_at,
                now,
                extra,
            ) {
                Verdict::Alive => Holder::Running(worker.clone()),
                Verdict::Lost => Holder::Lost(Some(worker.clone())),
            };
        }
        if let Some(e) = inner.ended.get(id) {
            return match e.finished {
                true => Holder::Finished(e.worker.clone()),
                false => Holder::Lost(Some(e.worker.clone())),
            };
        }
        let Some(since) = inner.since else {
            return Holder::Unknown;
        };
        // The holder may be reconnecting: as long as a named one gets.
        let from = waiting_since.max(since) + RECONNECT_GRACE;
        if now.saturating_duration_since(from) > self.default_interval * LOST_AFTER {
            Holder::Lost(None)
        } else {
            Holder::Unknown
        }
    }

    /// The longest a redelivered task waits for a holder nobody names (on a
    /// connection made before it began waiting): the bound of [`Peers::holder`].
    pub fn unknown_bound(&self) -> Duration {
        RECONNECT_GRACE + self.default_interval * LOST_AFTER
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Listens to every heartbeat until the connection breaks; meanwhile and
/// afterwards nobody is judged lost until the next connection listens again.
pub async fn tail(peers: &Peers, conn: &Connection) -> Result<(), lapin::Error> {
    let r = listen(peers, conn).await;
    lock(&peers.inner).since = None;
    r
}

async fn listen(peers: &Peers, conn: &Connection) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await?;
    let mut tap = broker::amqp::tap(&ch, "", &[(EVENTS_EXCHANGE, ALL_HEARTBEATS)], "").await?;
    peers.listening(Instant::now());
    while let Some(d) = tap.consumer.next().await {
        let d = d?;
        if let Ok(hb) = serde_json::from_slice::<Heartbeat>(&d.data) {
            peers.observe(&hb, Instant::now());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::protocol::{RunningTask, SandboxKind};

    fn hb(worker: &str, uptime: u64, stopping: bool) -> Heartbeat {
        Heartbeat {
            version: 1,
            worker: worker.into(),
            host: "h".into(),
            pool: "p".into(),
            krill_version: "0".into(),
            slots_total: 1,
            slots_free: 1,
            draining: false,
            running: Vec::new(),
            broker: None,
            uptime_secs: uptime,
            interval_secs: 1,
            stopping,
            sent_at: Utc::now(),
            lines: Vec::new(),
            degraded: None,
        }
    }

    fn running(mut h: Heartbeat, id: &str, started: DateTime<Utc>) -> Heartbeat {
        h.running.push(RunningTask {
            id: id.into(),
            started_at: started,
            sandbox: SandboxKind::Process,
            submitter: None,
        });
        h
    }

    #[test]
    fn silence_counts_only_after_the_reconnect_grace_and_goodbye_or_restart_is_lost_at_once() {
        let peers = Peers::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let started = Utc::now() - chrono::Duration::seconds(30);
        peers.listening(t0);
        peers.observe(&hb("w1", 100, false), t0);
        assert_eq!(peers.verdict("w1", started, t0), Verdict::Alive);
        // Silent, but this worker only just connected: the peer may be reconnecting.
        let soon = t0 + RECONNECT_GRACE;
        assert_eq!(peers.verdict("w1", started, soon), Verdict::Alive);
        let late = soon + Duration::from_secs(4);
        assert_eq!(peers.verdict("w1", started, late), Verdict::Lost);
        // Never heard of: the same bound from the connection on.
        assert_eq!(peers.verdict("w9", started, soon), Verdict::Alive);
        assert_eq!(peers.verdict("w9", started, late), Verdict::Lost);
        // Goodbye, or a process that began after the task started.
        peers.observe(&hb("w2", 100, true), t0);
        assert_eq!(peers.verdict("w2", started, t0), Verdict::Lost);
        peers.observe(&hb("w3", 5, false), t0);
        assert_eq!(peers.verdict("w3", started, t0), Verdict::Lost);
    }

    #[test]
    fn a_task_is_held_while_its_worker_lives_finished_when_it_drops_it_and_lost_with_it() {
        let peers = Peers::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let started = Utc::now() - chrono::Duration::seconds(30);
        peers.listening(t0);
        peers.observe(&running(hb("a", 100, false), "x", started), t0);
        assert_eq!(peers.holder("x", t0, t0), Holder::Running("a".into()));
        // Silent past the bound (3 intervals and its own reconnect's grace,
        // after this worker's): lost, with the worker named.
        let edge = t0 + RECONNECT_GRACE * 2 + Duration::from_secs(3);
        assert_eq!(peers.holder("x", t0, edge), Holder::Running("a".into()));
        let late = edge + Duration::from_secs(1);
        assert_eq!(peers.holder("x", t0, late), Holder::Lost(Some("a".into())));
        // Heard again (it reconnected), then without the task: it finished it.
        peers.observe(&running(hb("a", 130, false), "x", started), late);
        assert_eq!(peers.holder("x", t0, late), Holder::Running("a".into()));
        peers.observe(&hb("a", 131, false), late);
        assert_eq!(peers.holder("x", t0, late), Holder::Finished("a".into()));

        // A new process of the same worker no longer lists it: lost at once.
        peers.observe(&running(hb("b", 100, false), "y", started), t0);
        peers.observe(&hb("b", 1, false), t0);
        assert_eq!(peers.holder("y", t0, t0), Holder::Lost(Some("b".into())));
        // Goodbye with it still listed: lost.
        peers.observe(&running(hb("c", 100, true), "z", started), t0);
        assert_eq!(peers.holder("z", t0, t0), Holder::Lost(Some("c".into())));

        // Nobody lists it: wait for the bound, then lost.
        assert_eq!(peers.holder("w", t0, t0), Holder::Unknown);
        assert_eq!(peers.holder("w", t0, late), Holder::Lost(None));
        // The bound runs from when the waiting began.
        assert_eq!(peers.holder("w", late, late), Holder::Unknown);
        let bound = peers.unknown_bound();
        assert_eq!(peers.holder("w", late, late + bound), Holder::Unknown);
        let past = late + bound + Duration::from_millis(1);
        assert_eq!(peers.holder("w", late, past), Holder::Lost(None));
    }
}
