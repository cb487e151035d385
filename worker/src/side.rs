//! The worker's side consumers, one set per connection: the cancellation stream
//! (replayed from its start, so a cancel sent while this worker was down still
//! stops the task when it is delivered) and `krill.dead.notify` (answers tasks
//! RabbitMQ dead-lettered itself, so their submitters get a terminal result).

use std::sync::Arc;

use broker::protocol::{Control, Status, TaskResult};
use broker::topology::{CANCEL_STREAM, DEAD_NOTIFY_QUEUE, POOL_QUEUE_PREFIX, REASON_HEADER};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection};

use crate::worker::Shared;

/// Stream consumers must bound their unacked deliveries.
const STREAM_PREFETCH: u16 = 500;

/// Consumes every cancellation of the retention window, then live ones. Sends on
/// `caught_up` once it has read a marker it published after subscribing: from then
/// on every cancel sent before this worker connected is known.
pub async fn cancellations(
    shared: Arc<Shared>,
    conn: Arc<Connection>,
    caught_up: tokio::sync::oneshot::Sender<()>,
) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(STREAM_PREFETCH, BasicQosOptions::default())
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-stream-offset"),
        AMQPValue::LongString(LongString::from("first")),
    );
    let mut consumer = ch
        .basic_consume(
            ShortString::from(CANCEL_STREAM),
            ShortString::from(format!("krill-cancels.{}", shared.id)),
            BasicConsumeOptions::default(),
            args,
        )
        .await?;
    let marker = format!("krill-sync.{}.{}", shared.id, uuid::Uuid::new_v4().simple());
    shared
        .run
        .outbound
        .cancel_marker(&marker)
        .await
        .map_err(|e| lapin::Error::from(std::io::Error::other(e.to_string())))?;
    let mut caught_up = Some(caught_up);
    while let Some(d) = consumer.next().await {
        let d = d?;
        let cmd = serde_json::from_slice::<Control>(&d.data);
        if let Ok(Control::Cancel { task_id }) = &cmd {
            if *task_id == marker {
                if let Some(tx) = caught_up.take() {
                    let _ = tx.send(());
                }
                d.acker.ack(BasicAckOptions::default()).await?;
                continue;
            }
        }
        if let Ok(Control::Cancel { task_id }) = cmd {
            if shared
                .tasks
                .cancel(&task_id, "cancelled by request (krill cancel)")
            {
                tracing::info!(%task_id, "cancelled a running task");
            }
        }
        d.acker.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

/// Answers tasks that RabbitMQ dead-lettered (not the worker: those carry
/// `x-krill-reason` and were answered when they were dead-lettered).
pub async fn dead_notify(shared: Arc<Shared>, conn: Arc<Connection>) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(16, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            ShortString::from(DEAD_NOTIFY_QUEUE),
            ShortString::from(format!("krill-dead-notify.{}", shared.id)),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(d) = consumer.next().await {
        let d = d?;
        if let Some((reply_to, result)) = answer_for(&d.properties, &shared.id) {
            let (id, error) = (result.id.clone(), result.error.clone());
            if !shared.run.outbound.answer(result, &reply_to).await {
                continue; // not acked: answered by whoever gets it next
            }
            tracing::warn!(task_id = %id, ?error, "answered a task RabbitMQ dead-lettered");
        }
        d.acker.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

/// The result owed for a message RabbitMQ dead-lettered from a pool queue, if any.
pub fn answer_for(props: &BasicProperties, worker: &str) -> Option<(String, TaskResult)> {
    let headers = props.headers().as_ref()?;
    if headers.contains_key(REASON_HEADER) {
        return None;
    }
    let reply_to = props.reply_to().as_ref()?.as_str().to_string();
    let id = props.message_id().as_ref()?.as_str().to_string();
    let (reason, queue, count) = first_death(headers)?;
    if !queue.starts_with(POOL_QUEUE_PREFIX) {
        return None;
    }
    let mut result = TaskResult::new(id, Status::WorkerLost);
    result.worker = Some(worker.to_string());
    result.error = Some(format!(
        "dead-lettered by RabbitMQ from {queue} ({reason}) after {count} deliveries: \
         the task kept losing its worker; it is kept in krill.dead (see `krill dead list`)"
    ));
    Some((reply_to, result))
}

/// `(reason, queue, count)` of the most recent entry of the `x-death` header.
fn first_death(headers: &FieldTable) -> Option<(String, String, i64)> {
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    let text = |k: &str| match first.inner().get(k) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_string()),
        _ => None,
    };
    let count = match first.inner().get("count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        _ => 0,
    };
    Some((text("reason")?, text("queue")?, count))
}
