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
//!
//! **Never started.** A heartbeat cannot say "I never started X" for a
//! delivery lost in flight to its worker, so a redelivery no heartbeat lists
//! *asks*: its worker's heartbeats carry `asking: [X]`, and every peer that has
//! neither started X nor is about to promises never to start it and says so in
//! its own heartbeats (`disowned: [X]`, [`crate::state::TaskState::disown`]).
//! X never started anywhere — and runs — when every worker process of the pool
//! that was alive since X was published (so may have had the delivery) has
//! disowned it: known from the heartbeat stream's history (read at each
//! connect, [`HISTORY`] back) plus the live heartbeats ([`Peers::never_started`]).
//! A process that may have had X and cannot answer (lost, stopped, replaced by
//! a restart) keeps the old rule: wait for the bound, then `worker_lost`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::collections::HashSet;

use broker::amqp::StreamFrom;
use broker::protocol::Heartbeat;
use broker::topology::{ALL_HEARTBEATS, EVENTS_EXCHANGE, HEARTBEATS_STREAM};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::options::BasicAckOptions;
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
/// How far back a (re)connecting worker reads the heartbeat stream (it keeps
/// an hour): a redelivered task published earlier than this (less
/// [`PUBLISH_SKEW`]) cannot be proven never started, and keeps the old rule.
pub const HISTORY: Duration = Duration::from_secs(600);
/// How long the history read may take before the view stays incomplete (no
/// "never started" on this connection; everything else works as before).
pub const HISTORY_TIMEOUT: Duration = Duration::from_secs(30);
/// Clock difference allowed between a task's publisher and the workers.
pub const PUBLISH_SKEW: chrono::TimeDelta = chrono::TimeDelta::seconds(30);
/// How long a peer's question is answered in this worker's heartbeats.
pub const ASK_KEPT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
struct Seen {
    heard: Instant,
    interval: Duration,
    /// When its process started (its clock).
    began: DateTime<Utc>,
    stopping: bool,
    /// The tasks it runs, with when each started.
    running: HashMap<String, DateTime<Utc>>,
    /// When it sent its latest heartbeat (its clock), and its pool.
    sent_at: DateTime<Utc>,
    pool: String,
    /// The tasks it promised never to start (its latest heartbeat).
    disowned: HashSet<String>,
    /// The last heartbeat of the process this id ran before (a restart).
    replaced: Option<DateTime<Utc>>,
    /// Its process's random id (None: a worker too old to send one).
    process: Option<String>,
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
    /// Every heartbeat stored since then is known (the history read of this
    /// connection caught up); `None`: not (yet) on this connection.
    complete_since: Option<DateTime<Utc>>,
    /// Tasks peers ask about: who asks, its pool, when first heard.
    asked: HashMap<String, (String, String, Instant)>,
    /// Tasks this worker asks about (how many waits ask each).
    asking: HashMap<String, usize>,
}

/// The heartbeats heard (kept over reconnects; the silence clock restarts).
#[derive(Debug)]
pub struct Peers {
    inner: Mutex<Inner>,
    default_interval: Duration,
    changed: watch::Sender<u64>,
    /// This worker process's random id.
    process: String,
    /// Bumped when this worker should send a heartbeat now: it began asking,
    /// or a peer asked something new.
    poke: watch::Sender<u64>,
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
            process: uuid::Uuid::new_v4().simple().to_string(),
            poke: watch::channel(0).0,
        }
    }

    /// Takes in a heartbeat heard at `now`. One older than the latest of its
    /// worker (the history read overlaps the live ones) changes nothing.
    pub fn observe(&self, hb: &Heartbeat, now: Instant) {
        let began = hb.sent_at - chrono::Duration::seconds(hb.uptime_secs as i64);
        let mut new_ask = false;
        let running: HashMap<String, DateTime<Utc>> = hb
            .running
            .iter()
            .map(|r| (r.id.clone(), r.started_at))
            .collect();
        let mut inner = lock(&self.inner);
        let Inner {
            seen, ended, asked, ..
        } = &mut *inner;
        let mut replaced = None;
        if let Some(prev) = seen.get(&hb.worker) {
            let same = match (&prev.process, &hb.process) {
                (Some(a), Some(b)) => a == b,
                _ => (prev.began - began).num_seconds().abs() <= CLOCK_SLACK_SECS,
            };
            if hb.sent_at < prev.sent_at {
                // Late (from the history): only an earlier process still counts.
                if !same {
                    if let Some(p) = seen.get_mut(&hb.worker) {
                        p.replaced = p.replaced.max(Some(hb.sent_at));
                    }
                }
                return;
            }
            replaced = if same {
                prev.replaced
            } else {
                Some(prev.sent_at)
            };
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
        for id in &hb.asking {
            if !asked.contains_key(id) {
                asked.insert(id.clone(), (hb.worker.clone(), hb.pool.clone(), now));
                new_ask = true;
            }
        }
        asked.retain(|_, (_, _, at)| now.saturating_duration_since(*at) < ASK_KEPT);
        seen.insert(
            hb.worker.clone(),
            Seen {
                heard: now,
                interval: Duration::from_secs(hb.interval_secs.max(1)),
                began,
                stopping: hb.stopping,
                running,
                sent_at: hb.sent_at,
                pool: hb.pool.clone(),
                disowned: hb.disowned.iter().cloned().collect(),
                replaced,
                process: hb.process.clone(),
            },
        );
        drop(inner);
        self.changed.send_modify(|n| *n += 1);
        if new_ask {
            self.poke.send_modify(|n| *n += 1);
        }
    }

    /// The tasks peers of `pool` other than `me` ask about (to answer in the
    /// next heartbeat).
    pub fn asked(&self, me: &str, pool: &str) -> Vec<String> {
        let inner = lock(&self.inner);
        let mut v: Vec<String> = inner
            .asked
            .iter()
            .filter(|(_, (w, p, at))| w != me && p == pool && at.elapsed() < ASK_KEPT)
            .map(|(id, _)| id.clone())
            .collect();
        v.sort();
        v
    }

    /// This worker process's random id (sent in its heartbeats).
    pub fn process(&self) -> &str {
        &self.process
    }

    /// Whether a heartbeat lists task `id`, or did within [`ENDED_KEPT`]
    /// (some worker runs or ran it).
    pub fn knows(&self, id: &str) -> bool {
        let inner = lock(&self.inner);
        inner.ended.contains_key(id) || inner.seen.values().any(|s| s.running.contains_key(id))
    }

    /// The tasks this worker asks about now.
    pub fn asking(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.inner).asking.keys().cloned().collect();
        v.sort();
        v
    }

    /// Asks the peers about task `id` until the guard is dropped.
    pub fn ask(&self, id: &str) -> Asking<'_> {
        *lock(&self.inner).asking.entry(id.to_string()).or_insert(0) += 1;
        self.poke.send_modify(|n| *n += 1);
        Asking {
            peers: self,
            id: id.to_string(),
        }
    }

    /// Prompts for a heartbeat now ([`Peers::ask`], a new question heard).
    pub fn pokes(&self) -> watch::Receiver<u64> {
        self.poke.subscribe()
    }

    /// The history read caught up: every heartbeat stored since `from` is known.
    pub fn complete(&self, from: DateTime<Utc>) {
        let mut inner = lock(&self.inner);
        if inner.since.is_some() {
            inner.complete_since = Some(from);
        }
        drop(inner);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Whether task `id`, published at `published` (its submitter's clock),
    /// never started anywhere, asked by `me` of `pool` (which has not started
    /// it itself): every worker process of the pool that may have had its
    /// delivery — heard within its interval of the publish, or later — has
    /// promised never to start it. False when that cannot be known: the view
    /// is not complete back to then, or such a process did not (cannot) answer.
    pub fn never_started(&self, id: &str, published: DateTime<Utc>, me: &str, pool: &str) -> bool {
        let inner = lock(&self.inner);
        let Some(complete) = inner.complete_since else {
            return false;
        };
        let from = published - PUBLISH_SKEW;
        let longest = inner
            .seen
            .values()
            .map(|s| s.interval)
            .chain([self.default_interval])
            .max()
            .unwrap_or(self.default_interval);
        let span = |d: Duration| chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX);
        if complete > from - span(longest) {
            return false;
        }
        inner
            .seen
            .iter()
            .filter(|(_, s)| s.pool == pool)
            .all(|(w, s)| {
                let window = from - span(s.interval);
                // An earlier process of this id lived since then: it cannot answer.
                if s.replaced.is_some_and(|at| at >= window) {
                    return false;
                }
                if w == me {
                    // Its own latest heartbeat, not an earlier process's.
                    return s.process.as_deref() == Some(self.process.as_str());
                }
                s.sent_at < window || (s.process.is_some() && s.disowned.contains(id))
            })
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

/// Stops asking about a task when dropped.
#[derive(Debug)]
pub struct Asking<'a> {
    peers: &'a Peers,
    id: String,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        let mut inner = lock(&self.peers.inner);
        if let Some(n) = inner.asking.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                inner.asking.remove(&self.id);
            }
        }
    }
}

/// Listens to every heartbeat until the connection breaks (and reads the
/// heartbeat stream's last [`HISTORY`] beside it); meanwhile and afterwards
/// nobody is judged lost until the next connection listens again.
pub async fn tail(peers: &Peers, conn: &Connection, me: &str) -> Result<(), lapin::Error> {
    let r = listen(peers, conn, me).await;
    let mut inner = lock(&peers.inner);
    inner.since = None;
    inner.complete_since = None;
    r
}

async fn listen(peers: &Peers, conn: &Connection, me: &str) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await?;
    let mut tap = broker::amqp::tap(&ch, "", &[(EVENTS_EXCHANGE, ALL_HEARTBEATS)], "").await?;
    peers.listening(Instant::now());
    let history = async {
        match tokio::time::timeout(HISTORY_TIMEOUT, history(peers, conn, me)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, stream = HEARTBEATS_STREAM,
                "cannot read the heartbeat history: redelivered tasks no heartbeat lists are answered worker_lost after the bound"),
            Err(_) => tracing::warn!(stream = HEARTBEATS_STREAM,
                "the heartbeat history did not catch up in time: redelivered tasks no heartbeat lists are answered worker_lost after the bound"),
        }
        std::future::pending::<()>().await
    };
    tokio::pin!(history);
    loop {
        tokio::select! {
            () = &mut history => {}
            d = tap.consumer.next() => {
                let Some(d) = d else { return Ok(()) };
                let d = d?;
                if let Ok(hb) = serde_json::from_slice::<Heartbeat>(&d.data) {
                    peers.observe(&hb, Instant::now());
                }
            }
        }
    }
}

/// Reads the heartbeat stream from [`HISTORY`] ago up to this worker's own
/// latest heartbeat, then marks the view complete from then.
async fn history(peers: &Peers, conn: &Connection, me: &str) -> Result<(), lapin::Error> {
    let began = Utc::now();
    let from = began - chrono::TimeDelta::from_std(HISTORY).unwrap_or(chrono::TimeDelta::MAX);
    let ch = conn.create_channel().await?;
    let unix = u64::try_from(from.timestamp()).unwrap_or(0);
    let mut c =
        broker::amqp::consume_stream(&ch, HEARTBEATS_STREAM, "", 500, StreamFrom::Since(unix))
            .await?;
    let (t0, mut read) = (Instant::now(), 0u64);
    while let Some(d) = c.next().await {
        let d = d?;
        read += 1;
        d.acker.ack(BasicAckOptions::default()).await?;
        let Ok(hb) = serde_json::from_slice::<Heartbeat>(&d.data) else {
            continue;
        };
        // Heard as long ago as it was sent (its silence counts from then).
        let age = (Utc::now() - hb.sent_at).to_std().unwrap_or_default();
        let now = Instant::now();
        peers.observe(&hb, now.checked_sub(age).unwrap_or(now));
        if hb.worker == me && hb.sent_at >= began {
            peers.complete(from);
            tracing::info!(
                heartbeats = read,
                took_ms = t0.elapsed().as_millis() as u64,
                "heartbeat history read (the last 10 min)"
            );
            let _ = ch.close(200, "history read".into()).await;
            return Ok(());
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
            asking: Vec::new(),
            disowned: Vec::new(),
            process: None,
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
    fn a_task_never_started_once_every_process_that_may_have_had_it_disowned_it() {
        let peers = Peers::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let published = Utc::now();
        // Not before the history caught up on this connection.
        let with = |mut h: Heartbeat, process: &str| {
            h.process = Some(process.into());
            h
        };
        peers.listening(t0);
        peers.observe(&with(hb("me", 100, false), peers.process()), t0);
        peers.observe(&with(hb("a", 100, false), "pa"), t0);
        assert!(!peers.never_started("x", published, "me", "p"));
        peers.complete(published - chrono::TimeDelta::seconds(600));
        // A peer alive since the publish has not answered yet.
        assert!(!peers.never_started("x", published, "me", "p"));
        let _asking = peers.ask("x");
        assert_eq!(peers.asking(), ["x"]);
        let mut answer = with(hb("a", 101, false), "pa");
        answer.disowned = vec!["x".into()];
        peers.observe(&answer, t0);
        assert!(peers.never_started("x", published, "me", "p"));
        // Not for another task; a peer of another pool does not count.
        assert!(!peers.never_started("y", published, "me", "p"));
        let mut other = hb("o", 100, false);
        other.pool = "q".into();
        peers.observe(&other, t0);
        assert!(peers.never_started("x", published, "me", "p"));
        // A peer restarted since the publish: its earlier process cannot answer.
        let mut b = with(hb("b", 100, false), "pb");
        b.disowned = vec!["x".into()];
        peers.observe(&b, t0);
        assert!(peers.never_started("x", published, "me", "p"));
        // However quick the restart (the same start second): another process.
        let mut b2 = with(hb("b", 100, false), "pb2");
        b2.disowned = vec!["x".into()];
        peers.observe(&b2, t0);
        assert!(!peers.never_started("x", published, "me", "p"));
        // An earlier process of this worker's own id, heard last: not known.
        let own = Peers::new(Duration::from_secs(1));
        own.listening(t0);
        own.complete(published - chrono::TimeDelta::seconds(600));
        own.observe(&with(hb("me", 100, false), "an-earlier-me"), t0);
        assert!(!own.never_started("x", published, "me", "p"));
        own.observe(&with(hb("me", 1, false), own.process()), t0);
        assert!(
            !own.never_started("x", published, "me", "p"),
            "it restarted since"
        );
        // A view complete only from after the publish knows too little.
        let fresh = Peers::new(Duration::from_secs(1));
        fresh.listening(t0);
        fresh.complete(published);
        assert!(!fresh.never_started("x", published, "me", "p"));
        // A connection lost: not complete any more.
        let later = Peers::new(Duration::from_secs(1));
        later.complete(published - chrono::TimeDelta::seconds(600));
        assert!(
            !later.never_started("x", published, "me", "p"),
            "not listening"
        );
    }

    #[test]
    fn a_peer_answers_what_others_ask_and_a_late_heartbeat_changes_nothing() {
        let peers = Peers::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let pokes = peers.pokes();
        let mut asks = hb("b", 100, false);
        asks.asking = vec!["x".into()];
        peers.observe(&asks, t0);
        assert!(
            pokes.has_changed().unwrap_or(false),
            "a new question: heartbeat now"
        );
        assert_eq!(peers.asked("a", "p"), ["x"]);
        assert!(peers.asked("b", "p").is_empty(), "not its own");
        assert!(peers.asked("a", "q").is_empty(), "not another pool's");
        // An older heartbeat (read from the history after a live one) is ignored.
        let started = Utc::now() - chrono::Duration::seconds(30);
        let mut old = running(hb("b", 90, false), "z", started);
        old.sent_at -= chrono::TimeDelta::seconds(10);
        peers.listening(t0);
        peers.observe(&old, t0);
        assert_eq!(peers.holder("z", t0, t0), Holder::Unknown);
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
