//! Whether the worker can still deliver what it owes: a worker that cannot
//! publish results for longer than a bound is *degraded* — it stops claiming
//! tasks, says so in its heartbeat and fails `/readyz` — until a result goes
//! out again.
//!
//! The sink reports each confirmed result publish: [`Health::begin`] when it
//! starts (the [`Pending`] guard it returns ends it), [`Pending::published`]
//! once the broker confirmed it. A streak starts when a result begins to wait
//! for its confirm with nothing else waiting, and ends when a result is
//! confirmed (or when nothing waits any more); [`Health::degraded`] is true
//! once the streak is older than the bound. So a worker is degraded whether its
//! results fail and are retried (no connection, nacks, a closed channel) or
//! hang (a broker that blocks publishers never answers).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long results may fail to go out before the worker is degraded.
pub const DEFAULT_DEGRADED_AFTER: Duration = Duration::from_secs(60);
/// What the heartbeat and `/readyz` say while degraded.
pub const CANNOT_PUBLISH: &str = "cannot publish results";

/// The worker's delivery health (shared; cheap to query).
#[derive(Debug)]
pub struct Health {
    after: Duration,
    streak: Mutex<Streak>,
}

/// Result publishes waiting for their confirm.
#[derive(Debug, Default)]
struct Streak {
    /// How many are waiting now.
    waiting: usize,
    /// Since when some result has waited, with none confirmed since.
    since: Option<Instant>,
}

/// One result publish waiting for its confirm; dropping it ends the wait
/// without a confirm (the worker gave up, or the broker refused the message:
/// a small result follows).
#[derive(Debug)]
#[must_use = "the publish is waiting until the guard is dropped"]
pub struct Pending<'a> {
    health: &'a Health,
}

impl Default for Health {
    fn default() -> Self {
        Health::new(DEFAULT_DEGRADED_AFTER)
    }
}

impl Health {
    /// Degraded once a result has waited for its confirm longer than `after`.
    pub fn new(after: Duration) -> Self {
        Health {
            after,
            streak: Mutex::new(Streak::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Streak> {
        self.streak
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A result publish starts waiting for its confirm.
    pub fn begin(&self) -> Pending<'_> {
        self.begin_at(Instant::now())
    }

    fn begin_at(&self, now: Instant) -> Pending<'_> {
        let mut s = self.lock();
        s.waiting += 1;
        s.since.get_or_insert(now);
        Pending { health: self }
    }

    fn confirmed_at(&self, now: Instant) {
        let mut s = self.lock();
        // Results still waiting start a new streak now: the broker answers.
        s.since = (s.waiting > 1).then_some(now);
    }

    fn ended(&self) {
        let mut s = self.lock();
        s.waiting = s.waiting.saturating_sub(1);
        if s.waiting == 0 {
            s.since = None;
        }
    }

    /// Why the worker is degraded, if it is.
    pub fn degraded(&self) -> Option<&'static str> {
        self.degraded_at(Instant::now())
    }

    fn degraded_at(&self, now: Instant) -> Option<&'static str> {
        let since = self.lock().since?;
        (now.saturating_duration_since(since) >= self.after).then_some(CANNOT_PUBLISH)
    }

    /// The bound.
    pub fn after(&self) -> Duration {
        self.after
    }
}

impl Pending<'_> {
    /// The broker confirmed this result (or said its queue is gone): results go out.
    pub fn published(self) {
        self.health.confirmed_at(Instant::now());
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.health.ended();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn degraded_once_a_result_waits_longer_than_the_bound_and_until_one_is_confirmed() {
        let h = Health::new(S(60));
        let t0 = Instant::now();
        assert_eq!(h.degraded_at(t0), None);
        let a = h.begin_at(t0);
        assert_eq!(h.degraded_at(t0 + S(59)), None);
        // A later one does not move the start of the streak.
        let b = h.begin_at(t0 + S(30));
        assert_eq!(h.degraded_at(t0 + S(60)), Some(CANNOT_PUBLISH));
        // One is confirmed: the broker answers; the other starts a new streak.
        h.confirmed_at(t0 + S(100));
        drop(a);
        assert_eq!(h.degraded_at(t0 + S(120)), None);
        assert_eq!(h.degraded_at(t0 + S(160)), Some(CANNOT_PUBLISH));
        drop(b);
        assert_eq!(h.degraded_at(t0 + S(200)), None, "nothing waits");
    }

    #[test]
    fn a_quick_confirm_never_degrades() {
        let h = Health::new(Duration::ZERO);
        h.begin().published();
        assert_eq!(h.degraded(), None);
        // Gave up or refused: nothing waits any more.
        drop(h.begin());
        assert_eq!(h.degraded(), None);
        let _waiting = h.begin();
        assert_eq!(h.degraded(), Some(CANNOT_PUBLISH));
    }
}
