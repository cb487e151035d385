//! A redelivered task that must not run twice, and that ran elsewhere: it is
//! answered `worker_lost` only once the worker that held it is known to be gone
//! ([`crate::peers`]); until then the delivery waits here, and when that worker
//! finishes the task after all (it had only lost its broker connection), its
//! result is the task's and the delivery is acked without another.
//!
//! The slot is let go after [`SLOT_AT_MOST`]: a holder that runs a long task
//! keeps the delivery here, not a slot (the delivery still counts against this
//! consumer's prefetch).
//!
//! Meanwhile it asks the peers whether any of them started it
//! ([`crate::peers::Peers::ask`]): a task that no worker which may have had its
//! delivery ever started (a delivery lost in flight) is run after all
//! ([`Outcome::NeverStarted`]), not answered `worker_lost`.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::OwnedSemaphorePermit;

use crate::peers::Holder;
use crate::worker::Shared;

/// How long a waiting redelivery keeps its slot.
pub const SLOT_AT_MOST: Duration = Duration::from_secs(30);
/// How often the holder is judged again without a heartbeat to prompt it.
const RECHECK: Duration = Duration::from_millis(500);

/// How the wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The holder is gone (named, if known): answer `worker_lost`.
    Lost(Option<String>),
    /// The holder finished it: its result is the one.
    Finished(String),
    /// Nobody ever started it (every worker that may have had it promised
    /// never to): run it.
    NeverStarted,
    /// This worker stops: the delivery goes back to the queue with its connection.
    Stopping,
}

/// Waits until task `id` (published at `published`, when known) is known
/// never started, or its holder elsewhere gone or done.
pub async fn wait(
    shared: &Shared,
    id: &str,
    slot: OwnedSemaphorePermit,
    published: Option<DateTime<Utc>>,
) -> Outcome {
    let since = Instant::now();
    let mut changed = shared.peers.subscribe();
    // Without a publish time, nobody can be shown never to have had it.
    let _asking = published.map(|_| shared.peers.ask(id));
    let mut slot = Some(slot);
    let mut said = false;
    loop {
        let now = Instant::now();
        match shared.peers.holder(id, since, now) {
            Holder::Lost(worker) => return Outcome::Lost(worker),
            Holder::Finished(worker) => return Outcome::Finished(worker),
            Holder::Running(worker) if !said => {
                tracing::info!(task_id = %id, holder = %worker,
                    "redelivered task still runs on a live worker (it lost its broker connection?); waiting for it");
                said = true;
            }
            // Not while it runs or ran here (a duplicate message of it).
            Holder::Unknown
                if !shared.tasks.is_running(id)
                    && shared.tasks.recent(id).is_none()
                    && published.is_some_and(|at| {
                        shared.peers.never_started(id, at, &shared.id, &shared.pool)
                    }) =>
            {
                return Outcome::NeverStarted
            }
            Holder::Running(_) | Holder::Unknown => {}
        }
        if slot.is_some() && now.saturating_duration_since(since) > SLOT_AT_MOST {
            slot = None;
            tracing::info!(task_id = %id, "still waiting for its holder; its slot is free again");
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return Outcome::Stopping,
            _ = shared.root.cancelled() => return Outcome::Stopping,
            _ = changed.changed() => {}
            () = tokio::time::sleep(RECHECK) => {}
        }
    }
}
