//! How a keyed task's delivery is settled: the line log's `done` record is
//! written before the ack, so the next holder of the line knows its result
//! stands; a task that does not run is answered here.

use std::sync::Arc;

use broker::protocol::{LineStep, Status, TaskResult, TaskState as State};
use futures_util::future::BoxFuture;

use crate::intake::Settle;
use crate::worker::Shared;

use super::{Entry, Line};

/// Settles a keyed task's delivery: writes the `done` record first, so a later
/// holder of the line that gets it again knows its result stands.
#[derive(Debug)]
pub(super) struct LineSettle {
    pub(super) inner: Arc<dyn Settle>,
    pub(super) shared: Arc<Shared>,
    pub(super) key: String,
    pub(super) id: String,
}

impl LineSettle {
    async fn done(&self) {
        if let Err(e) = self
            .shared
            .run
            .outbound
            .line(&self.key, &self.id, LineStep::Done)
            .await
        {
            tracing::warn!(task_id = %self.id, error = %e, "could not write the done record");
        }
    }
}

impl Settle for LineSettle {
    fn ack(&self) -> BoxFuture<'_, Result<(), lapin::Error>> {
        Box::pin(async move {
            self.done().await;
            self.inner.ack().await
        })
    }

    fn reject(&self) -> BoxFuture<'_, Result<(), lapin::Error>> {
        Box::pin(async move {
            self.done().await;
            self.inner.reject().await
        })
    }

    /// Given back unstarted (a claim that could not be made): no done record.
    fn requeue(&self) -> BoxFuture<'_, Result<(), lapin::Error>> {
        self.inner.requeue()
    }
}

impl Line {
    /// Answers a task that does not run (rejected, cancelled, superseded): its
    /// result, its finished event, the done record, then the ack.
    pub(super) async fn answer(&mut self, entry: Entry, status: Status, error: String) {
        let out = &self.shared.run.outbound;
        let mut r = TaskResult::new(entry.task.id.clone(), status);
        r.worker = Some(self.shared.id.clone());
        r.attempt = entry.attempt;
        r.error = Some(error);
        r.waited_on = Some(self.waited(&entry));
        self.shared.run.metrics.finished(status, None);
        let mut stamp = entry.stamp.clone();
        stamp.reply_key = entry.task.reply_key.clone();
        let r = out.finish_result(r, &stamp);
        self.shared.tasks.remember(&r, &entry.reply_to);
        if out.result(&r, &entry.reply_to).await {
            out.event(&r.id, State::Finished, Some(&r), r.attempt).await;
            let _ = out.line(&self.key, &r.id, LineStep::Done).await;
            if let Err(e) = entry.incoming.settle.ack().await {
                tracing::warn!(task_id = %r.id, error = %e, "ack failed; the broker will give it again");
            }
        }
    }
}
