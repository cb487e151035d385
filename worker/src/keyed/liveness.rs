//! Whether the worker that started a keyed task may still be running it, from
//! the heartbeats this worker hears: lost once it said goodbye, restarted after
//! the task started, or was silent for more than [`LOST_AFTER`] of its intervals
//! while this worker was connected (time without a connection does not count,
//! and a fresh connection gives every peer [`RECONNECT_GRACE`] to come back).
//!
//! Interim: issue #18's peers view (heartbeat stream, "lost = silent for > 3
//! intervals of broker availability observed by this worker", `holder::wait`)
//! answers the same question more carefully; once it is on main, [`Liveness::verdict`]
//! is answered by it and this module goes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use broker::protocol::Heartbeat;
use broker::topology::{ALL_HEARTBEATS, EVENTS_EXCHANGE};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::Connection;
use tokio::sync::watch;

use super::LinesError;

/// A peer silent for this many of its heartbeat intervals is lost.
pub const LOST_AFTER: u32 = 3;
/// After this worker (re)connects, a peer gets this long more before its
/// silence counts: it may still be waiting out its reconnect backoff (after a
/// broker restart every worker reconnects, each on its own schedule).
/// At least `connection::MAX_BACKOFF` (a test there keeps it so).
pub const RECONNECT_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Seen {
    heard: Instant,
    interval: Duration,
    /// When its process started (its clock).
    began: DateTime<Utc>,
    stopping: bool,
}

/// What is known of a holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It may still run the task: wait.
    Alive,
    /// It cannot be running it any more.
    Lost,
}

/// The heartbeats heard on the current connection.
#[derive(Debug)]
pub struct Liveness {
    seen: Mutex<HashMap<String, Seen>>,
    /// When this worker began listening on its current connection.
    since: Mutex<Option<Instant>>,
    default_interval: Duration,
    changed: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Liveness {
    pub fn new(default_interval: Duration) -> Self {
        Liveness {
            seen: Mutex::default(),
            since: Mutex::new(None),
            default_interval,
            changed: watch::channel(0).0,
        }
    }

    /// Takes in a heartbeat heard at `now`.
    pub fn observe(&self, hb: &Heartbeat, now: Instant) {
        let began = hb.sent_at - chrono::Duration::seconds(hb.uptime_secs as i64);
        lock(&self.seen).insert(
            hb.worker.clone(),
            Seen {
                heard: now,
                interval: Duration::from_secs(hb.interval_secs.max(1)),
                began,
                stopping: hb.stopping,
            },
        );
        self.changed.send_modify(|n| *n += 1);
    }

    /// Starts (or restarts, on a new connection) the silence clock.
    pub fn listening(&self, now: Instant) {
        *lock(&self.since) = Some(now);
    }

    /// Whether `worker`, which started a task at `started_at`, may still run it.
    pub fn verdict(&self, worker: &str, started_at: DateTime<Utc>, now: Instant) -> Verdict {
        let Some(since) = *lock(&self.since) else {
            return Verdict::Alive;
        };
        let seen = lock(&self.seen).get(worker).cloned();
        let (heard, interval) = match &seen {
            Some(s) if s.stopping => return Verdict::Lost,
            // Its process began after the task started: a new process, the task is gone.
            Some(s) if s.began > started_at + chrono::Duration::seconds(2) => return Verdict::Lost,
            Some(s) => (s.heard.max(since + RECONNECT_GRACE), s.interval),
            None => (since + RECONNECT_GRACE, self.default_interval),
        };
        if now.saturating_duration_since(heard) > interval * LOST_AFTER {
            Verdict::Lost
        } else {
            Verdict::Alive
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Listens to every heartbeat until the connection breaks.
pub async fn tail(live: &Liveness, conn: &Connection) -> Result<(), LinesError> {
    let ch = conn.create_channel().await?;
    let mut tap = broker::amqp::tap(&ch, "", &[(EVENTS_EXCHANGE, ALL_HEARTBEATS)], "").await?;
    live.listening(Instant::now());
    while let Some(d) = tap.consumer.next().await {
        let d = d?;
        if let Ok(hb) = serde_json::from_slice::<Heartbeat>(&d.data) {
            live.observe(&hb, Instant::now());
        }
    }
    Err(LinesError::Ended("heartbeats"))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn silence_counts_only_after_the_reconnect_grace_and_goodbye_or_restart_is_lost_at_once() {
        let live = Liveness::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let started = Utc::now() - chrono::Duration::seconds(30);
        live.listening(t0);
        live.observe(&hb("w1", 100, false), t0);
        assert_eq!(live.verdict("w1", started, t0), Verdict::Alive);
        // Silent, but this worker only just connected: the peer may be reconnecting.
        let soon = t0 + RECONNECT_GRACE;
        assert_eq!(live.verdict("w1", started, soon), Verdict::Alive);
        let late = soon + Duration::from_secs(4);
        assert_eq!(live.verdict("w1", started, late), Verdict::Lost);
        // Never heard of: the same bound from the connection on.
        assert_eq!(live.verdict("w9", started, soon), Verdict::Alive);
        assert_eq!(live.verdict("w9", started, late), Verdict::Lost);
        // Goodbye, or a process that began after the task started.
        live.observe(&hb("w2", 100, true), t0);
        assert_eq!(live.verdict("w2", started, t0), Verdict::Lost);
        live.observe(&hb("w3", 5, false), t0);
        assert_eq!(live.verdict("w3", started, t0), Verdict::Lost);
    }
}
