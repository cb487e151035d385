//! Handling one delivery: decode, answer what cannot run, run the rest, publish
//! the result with confirms, and only then ack. Every delivery ends as exactly one
//! result, or a dead letter with its reason (or both, for malformed messages).

use std::sync::{Arc, Mutex};

use broker::protocol::{Status, TaskEvent, TaskResult, TaskState as State, PROTOCOL_VERSION};
use broker::topology::{
    self, CONTENT_TYPE, DEAD_EXCHANGE, EVENTS_EXCHANGE, REASON_HEADER, WORKER_HEADER,
};
use chrono::Utc;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Acker, BasicProperties};
use tokio::sync::OwnedSemaphorePermit;

use crate::intake::{decode, Intake};
use crate::publisher::Published;
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
                publish_result(&shared, &result, reply_to).await;
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
                    finish(&shared, &result, &reply_to, &Arc::new(Mutex::new(acker))).await;
                    return;
                }
            }
            if shared.tasks.is_cancelled(&id) {
                let mut result = TaskResult::new(id.clone(), Status::Cancelled);
                result.attempt = attempt;
                result.worker = Some(shared.id.clone());
                result.error = Some("cancelled before it started".into());
                shared.run.metrics.finished(result.status, None);
                finish(&shared, &result, &reply_to, &Arc::new(Mutex::new(acker))).await;
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
                event(&shared, &id, State::Started, None, attempt),
                runner::run(&shared.run, *task, attempt, cancel, reason)
            );
            metrics.ran(result.sandbox, ran.elapsed());
            metrics.finished(result.status, result.sandbox);
            // Remember before forgetting it runs: a redelivery in between must find one or the other.
            shared.tasks.remember(&result, &reply_to);
            shared.tasks.finish(&id);
            finish(&shared, &result, &reply_to, &acker).await;
        }
    }
}

/// Publishes the result (confirmed), the finished event, then acks.
async fn finish(shared: &Shared, result: &TaskResult, reply_to: &str, acker: &Arc<Mutex<Acker>>) {
    shared.tasks.remember(result, reply_to);
    let published = publish_result(shared, result, reply_to).await;
    event(
        shared,
        &result.id,
        State::Finished,
        Some(result),
        result.attempt,
    )
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

/// Publishes a result to `reply_to`; false when the worker gave up (shutting down
/// with the broker unreachable), in which case the task must not be acked.
async fn publish_result(shared: &Shared, result: &TaskResult, reply_to: &str) -> bool {
    let body = match serde_json::to_vec(result) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize a result");
            return false;
        }
    };
    let props = BasicProperties::default()
        .with_content_type(ShortString::from(CONTENT_TYPE))
        .with_delivery_mode(2)
        .with_correlation_id(ShortString::from(result.id.as_str()))
        .with_message_id(ShortString::from(format!("{}.result", result.id)));
    match shared
        .run
        .publisher
        .confirmed("", reply_to, &body, props, true)
        .await
    {
        Ok(Published::Confirmed) => true,
        Ok(Published::Unroutable) => {
            tracing::warn!(task_id = %result.id, reply_to, "reply queue is gone; the result is only in the finished event");
            true
        }
        Err(e) => {
            tracing::error!(task_id = %result.id, error = %e, "result not published");
            false
        }
    }
}

/// Publishes a task event (best effort: events are for observers).
async fn event(shared: &Shared, id: &str, state: State, result: Option<&TaskResult>, attempt: u32) {
    let ev = TaskEvent {
        version: PROTOCOL_VERSION,
        task_id: id.to_string(),
        pool: shared.pool.clone(),
        state,
        worker: shared.id.clone(),
        status: result.map(|r| r.status),
        error: result.and_then(|r| r.error.clone()),
        attempt,
        at: Utc::now(),
    };
    if let Ok(body) = serde_json::to_vec(&ev) {
        let props = BasicProperties::default().with_content_type(ShortString::from(CONTENT_TYPE));
        let key = topology::task_event_key(&shared.pool, state.as_str());
        shared
            .run
            .publisher
            .fast(EVENTS_EXCHANGE, &key, &body, props)
            .await;
    }
}

/// Sends a copy of the message to `krill.dead` with the reason, then acks it. If
/// that is impossible, rejects it without requeue so RabbitMQ dead-letters it.
async fn dead_letter(
    shared: &Shared,
    data: &[u8],
    props: &BasicProperties,
    reason: &str,
    acker: Acker,
) {
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from(REASON_HEADER),
        AMQPValue::LongString(LongString::from(reason)),
    );
    headers.insert(
        ShortString::from(WORKER_HEADER),
        AMQPValue::LongString(LongString::from(shared.id.as_str())),
    );
    headers.insert(
        ShortString::from("x-krill-pool"),
        AMQPValue::LongString(LongString::from(shared.pool.as_str())),
    );
    let props = props
        .clone()
        .with_headers(FieldTable::from(headers.inner().clone()));
    let dead = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        shared
            .run
            .publisher
            .confirmed(DEAD_EXCHANGE, "", data, props, false),
    )
    .await;
    let res = match dead {
        Ok(Ok(_)) => acker.ack(BasicAckOptions::default()).await,
        _ => {
            acker
                .nack(BasicNackOptions {
                    requeue: false,
                    ..BasicNackOptions::default()
                })
                .await
        }
    };
    if let Err(e) = res {
        tracing::warn!(error = %e, "could not settle a malformed message; the broker will redeliver it");
    }
}
