//! Handling one delivery: decode, answer what cannot run, run the rest, publish
//! the result with confirms, and only then ack. Every delivery ends as exactly one
//! result, or a dead letter with its reason (or both, for malformed messages).

use std::sync::{Arc, Mutex};

use broker::protocol::{Status, TaskResult, TaskState as State};
use chrono::Utc;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::{Acker, BasicProperties};
use tokio::sync::OwnedSemaphorePermit;

use crate::intake::{decode, Intake};
use crate::runner;
use crate::state::Running;
use crate::worker::Shared;

/// Handles one delivery to the end. `_slot` is held until the ack.
pub async fn handle(shared: Arc<Shared>, delivery: Delivery, _slot: OwnedSemaphorePermit) {
    let Delivery {
        data,
        properties,
        redelivered,
        acker,
        ..
    } = delivery;
    match decode(&properties, &data, redelivered) {
        Intake::Bad {
            reason,
            id,
            reply_to,
        } => {
            tracing::warn!(%reason, task_id = ?id, "malformed task message");
            shared.run.metrics.finished(Status::Rejected, None);
            if let (Some(id), Some(reply_to)) = (&id, &reply_to) {
                let mut result = TaskResult::rejected(id.clone(), reason.clone());
                result.worker = Some(shared.id.clone());
                let result = shared.run.outbound.finish_result(result);
                shared.run.outbound.result(&result, reply_to).await;
            }
            dead_letter(&shared, &data, &properties, &reason, acker).await;
        }
        Intake::Task {
            task,
            reply_to,
            attempt,
            redelivered,
        } => {
            let id = task.id.clone();
            if redelivered {
                if let Some(result) = shared.tasks.recent(&id) {
                    tracing::info!(task_id = %id, "redelivered task already finished here; sending its result again");
                    finish(&shared, &result, &reply_to, &Arc::new(Mutex::new(acker))).await;
                    return;
                }
                if shared.tasks.adopt(&id, acker.clone()) {
                    tracing::info!(task_id = %id, "redelivered task still running here; adopted the new delivery");
                    return;
                }
                if !task.retry_on_worker_loss {
                    let mut result = TaskResult::new(id.clone(), Status::WorkerLost);
                    result.attempt = attempt;
                    result.worker = Some(shared.id.clone());
                    result.error = Some(
                        "the worker running this task was lost mid-run; it was not run again \
                         because the task does not set retry_on_worker_loss"
                            .into(),
                    );
                    shared.run.metrics.finished(result.status, None);
                    answer(&shared, result, &reply_to, acker).await;
                    return;
                }
            }
            if shared.tasks.is_cancelled(&id) {
                let mut result = TaskResult::new(id.clone(), Status::Cancelled);
                result.attempt = attempt;
                result.worker = Some(shared.id.clone());
                result.error = Some("cancelled before it started".into());
                shared.run.metrics.finished(result.status, None);
                answer(&shared, result, &reply_to, acker).await;
                return;
            }
            let cancel = shared.root.child_token();
            let reason: runner::CancelReason = Arc::new(Mutex::new(None));
            let acker = Arc::new(Mutex::new(acker));
            let kind = task.sandbox.unwrap_or(shared.run.policy.kinds[0]);
            shared.tasks.start(
                &id,
                Running {
                    started_at: Utc::now(),
                    sandbox: kind,
                    cancel: cancel.clone(),
                    reason: reason.clone(),
                    acker: acker.clone(),
                },
            );
            let metrics = &shared.run.metrics;
            if let Some(waited) =
                crate::metrics::queue_wait(task.submitted_at, *properties.timestamp())
            {
                metrics.queued(waited);
            }
            let ran = std::time::Instant::now();
            // The started event goes out while the task starts (joined, not
            // spawned: it is sent before the finished event can be).
            let ((), result) = tokio::join!(
                shared
                    .run
                    .outbound
                    .event(&id, State::Started, None, attempt),
                runner::run(&shared.run, *task, attempt, cancel, reason)
            );
            metrics.ran(result.sandbox, ran.elapsed());
            metrics.finished(result.status, result.sandbox);
            let result = shared.run.outbound.finish_result(result);
            // Remember before forgetting it runs: a redelivery in between must find one or the other.
            shared.tasks.remember(&result, &reply_to);
            shared.tasks.finish(&id);
            finish(&shared, &result, &reply_to, &acker).await;
        }
    }
}

/// Publishes the result (confirmed), the finished event, then acks.
async fn finish(
    shared: &Shared,
    result: &Arc<TaskResult>,
    reply_to: &str,
    acker: &Arc<Mutex<Acker>>,
) {
    let out = &shared.run.outbound;
    let published = out.result(result, reply_to).await;
    out.event(&result.id, State::Finished, Some(result), result.attempt)
        .await;
    if published {
        let acker = acker.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Err(e) = acker.ack(BasicAckOptions::default()).await {
            // The channel died: the broker requeues the task and whoever gets it
            // answers from the result (here) or as worker_lost (elsewhere).
            tracing::warn!(task_id = %result.id, error = %e, "ack failed; the broker will redeliver");
        }
    }
}

/// Remembers a result this worker answers with (for redeliveries), then sends it.
async fn answer(shared: &Shared, result: TaskResult, reply_to: &str, acker: Acker) {
    let result = shared.run.outbound.finish_result(result);
    shared.tasks.remember(&result, reply_to);
    finish(shared, &result, reply_to, &Arc::new(Mutex::new(acker))).await;
}

/// Sends a copy of the message to the dead letters with the reason, then acks
/// it. If that is impossible, rejects it without requeue so RabbitMQ
/// dead-letters it.
async fn dead_letter(
    shared: &Shared,
    data: &[u8],
    props: &BasicProperties,
    reason: &str,
    acker: Acker,
) {
    let res = if shared.run.outbound.dead_letter(data, props, reason).await {
        acker.ack(BasicAckOptions::default()).await
    } else {
        acker
            .nack(BasicNackOptions {
                requeue: false,
                ..BasicNackOptions::default()
            })
            .await
    };
    if let Err(e) = res {
        tracing::warn!(error = %e, "could not settle a malformed message; the broker will redeliver it");
    }
}
