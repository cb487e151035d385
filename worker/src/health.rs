//! Whether the worker can still deliver what it owes: a worker that cannot
//! publish results for longer than a bound is *degraded* — it stops claiming
//! tasks, says so in its heartbeat and fails `/readyz` — until a result goes
//! out again.
//!
//! The sink reports each confirmed result publish: [`Health::failed`] when an
//! attempt fails (and will be retried), [`Health::published`] when one is
//! confirmed. The failing streak starts at the first failure after a success;
//! [`Health::degraded`] is true once it is older than the bound.

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
    /// Since when result publishes have been failing, with no success since.
    failing_since: Mutex<Option<Instant>>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new(DEFAULT_DEGRADED_AFTER)
    }
}

impl Health {
    /// Degraded once publishes have failed for longer than `after`.
    pub fn new(after: Duration) -> Self {
        Health {
            after,
            failing_since: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.failing_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A result publish failed and will be tried again.
    pub fn failed(&self) {
        self.failed_at(Instant::now());
    }

    fn failed_at(&self, now: Instant) {
        self.lock().get_or_insert(now);
    }

    /// A result was confirmed: whatever failed before is over.
    pub fn published(&self) {
        *self.lock() = None;
    }

    /// Why the worker is degraded, if it is.
    pub fn degraded(&self) -> Option<&'static str> {
        self.degraded_at(Instant::now())
    }

    fn degraded_at(&self, now: Instant) -> Option<&'static str> {
        let since = (*self.lock())?;
        (now.saturating_duration_since(since) >= self.after).then_some(CANNOT_PUBLISH)
    }

    /// The bound.
    pub fn after(&self) -> Duration {
        self.after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degraded_only_after_failing_for_the_bound_and_until_a_success() {
        let h = Health::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(h.degraded_at(t0), None);
        h.failed_at(t0);
        assert_eq!(h.degraded_at(t0 + Duration::from_secs(59)), None);
        // Later failures do not move the start of the streak.
        h.failed_at(t0 + Duration::from_secs(30));
        assert_eq!(
            h.degraded_at(t0 + Duration::from_secs(60)),
            Some(CANNOT_PUBLISH)
        );
        h.published();
        assert_eq!(h.degraded_at(t0 + Duration::from_secs(120)), None);
        // A new streak starts from its own first failure.
        h.failed_at(t0 + Duration::from_secs(200));
        assert_eq!(h.degraded_at(t0 + Duration::from_secs(230)), None);
    }
}
