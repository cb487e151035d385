//! Recording history: task events and the workers' copies of final results
//! (`krill.results`), of every watched pool whoever submitted the task, from a
//! durable queue of the gateway's own, so what was published while it is down
//! is recorded when it is back; results of the tasks the gateway submitted
//! also from their reply queues (the same result twice merges to one row). Merging is pure ([`merge_event`],
//! [`merge_result`]); [`run`] is the consuming loop.

use std::sync::Arc;
use std::time::Duration;

use broker::protocol::{TaskEvent, TaskResult, TaskState};
use broker::topology;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use crate::store::{now_ms, Store, StoreError, TaskRow};
use crate::Notifier;

/// Folds one event into a task's row (`None`: not seen before). A later state
/// never goes back: a late `started` does not undo `finished`.
pub fn merge_event(row: Option<TaskRow>, ev: &TaskEvent) -> TaskRow {
    let mut t = row.unwrap_or_else(|| TaskRow {
        id: ev.task_id.clone(),
        pool: ev.pool.clone(),
        state: "queued".into(),
        ..TaskRow::default()
    });
    let at = ev.at.timestamp_millis();
    let rank = |s: &str| match s {
        "queued" => 0,
        "blocked" => 1,
        "started" => 2,
        _ => 3,
    };
    let state = ev.state.as_str();
    if rank(state) >= rank(&t.state) {
        t.state = state.to_string();
    }
    if t.submitter.is_none() {
        t.submitter = ev.submitter.clone();
    }
    match ev.state {
        TaskState::Blocked => {
            t.blocked = ev
                .blocked
                .as_ref()
                .and_then(|b| serde_json::to_string(b).ok());
        }
        TaskState::Started => {
            t.blocked = None;
            t.worker = Some(ev.worker.clone());
            t.attempt = Some(i64::from(ev.attempt));
            t.started_at = Some(at);
        }
        TaskState::Finished => {
            t.blocked = None;
            t.worker = Some(ev.worker.clone());
            if t.status.is_none() {
                t.status = ev.status.map(|s| s.as_str().to_string());
                t.error = ev.error.clone();
            }
            t.finished_at.get_or_insert(at);
        }
    }
    t.updated_at = now_ms();
    t
}

/// Folds a task's result into its row. The stored copy keeps no sensitive value
/// in clear: a sensitive output is kept only as its ciphertext (sealed to the
/// submitter's key), else as `***`.
pub fn merge_result(mut t: TaskRow, r: &TaskResult) -> Result<TaskRow, StoreError> {
    let mut r = r.clone();
    for o in &mut r.outputs {
        if o.sensitive && !o.value.is_empty() {
            o.value = "***".into();
        }
    }
    t.state = "finished".into();
    t.status = Some(r.status.as_str().to_string());
    t.exit_code = r.exit_code.map(i64::from);
    t.error = r.error.clone();
    t.worker = r.worker.clone().or(t.worker);
    t.submitter = r.submitter.clone().or(t.submitter);
    t.sandbox = r.sandbox.map(|s| s.as_str().to_string());
    t.attempt = Some(i64::from(r.attempt));
    t.blocked = None;
    // A task submitted straight to the queue has no `queued` event: its own
    // `submitted_at` (the CLI sets it) comes back as the result's `queued_at`.
    if t.submitted_at.is_none() {
        t.submitted_at = r.timings.queued_at.map(|q| q.timestamp_millis());
    }
    if let Some(s) = r.timings.started_at {
        t.started_at = Some(s.timestamp_millis());
    }
    if let Some(f) = r.timings.finished_at {
        t.finished_at = Some(f.timestamp_millis());
    }
    t.result = Some(serde_json::to_string(&r)?);
    t.updated_at = now_ms();
    Ok(t)
}

/// Records one event.
pub async fn record_event(store: &Store, ev: &TaskEvent) -> Result<(), StoreError> {
    let _merging = store.merge_lock().await;
    let row = store.get(&ev.task_id).await?;
    let detail = ev.error.clone().or_else(|| {
        ev.blocked
            .as_ref()
            .and_then(|b| serde_json::to_string(b).ok())
    });
    store
        .add_event(
            &ev.task_id,
            ev.state.as_str(),
            &ev.worker,
            ev.at.timestamp_millis(),
            detail.as_deref(),
        )
        .await?;
    store.put(&merge_event(row, ev)).await
}

/// Records one result; `pool` (when known: the routing key of a worker's
/// copy) names the pool of a task not seen before.
pub async fn record_result(
    store: &Store,
    r: &TaskResult,
    pool: Option<&str>,
) -> Result<(), StoreError> {
    let _merging = store.merge_lock().await;
    let mut row = store.get(&r.id).await?.unwrap_or_else(|| TaskRow {
        id: r.id.clone(),
        ..TaskRow::default()
    });
    if row.pool.is_empty() {
        if let Some(p) = pool {
            row.pool = p.to_string();
        }
    }
    store.put(&merge_result(row, r)?).await
}

/// One message of the history queue: a task event, or a worker's copy of a
/// final result (from `krill.results`).
enum Recorded {
    Event(TaskEvent),
    Result(Box<TaskResult>, String),
}

impl Recorded {
    fn task_id(&self) -> &str {
        match self {
            Recorded::Event(ev) => &ev.task_id,
            Recorded::Result(r, _) => &r.id,
        }
    }

    async fn save(&self, store: &Store) -> Result<(), StoreError> {
        match self {
            Recorded::Event(ev) => record_event(store, ev).await,
            Recorded::Result(r, pool) => record_result(store, r, Some(pool)).await,
        }
    }
}

/// What the recorder listens to.
#[derive(Debug, Clone)]
pub struct Watch {
    pub amqp_url: String,
    /// The gateway's durable event queue (shared by gateways of one database).
    pub queue: String,
    /// Pools whose events are recorded (`*`: every pool).
    pub pools: Vec<String>,
}

/// Consumes task events into the store until `shutdown`, reconnecting when
/// the broker goes away. An event is acked once it is stored.
pub async fn run(w: Watch, store: Store, notify: Arc<Notifier>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = consume(&w, &store, &notify) => r,
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "history: event consumer stopped; reconnecting");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Declares the gateway's event queue and its bindings (idempotent). Done once
/// before the gateway serves, so no event of a task it accepts is missed.
pub async fn declare_queue(w: &Watch) -> anyhow::Result<()> {
    let conn = Connection::connect(
        &w.amqp_url,
        ConnectionProperties::default().with_connection_name("krill-gateway-setup".into()),
    )
    .await?;
    let ch = conn.create_channel().await?;
    declare(&ch, w).await?;
    let _ = conn.close(200, ShortString::from("declared")).await;
    Ok(())
}

async fn declare(ch: &lapin::Channel, w: &Watch) -> anyhow::Result<()> {
    topology::declare_common(ch).await?;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    ch.queue_declare(
        ShortString::from(w.queue.as_str()),
        QueueDeclareOptions::durable(),
        args,
    )
    .await?;
    for pool in &w.pools {
        let pool = if pool == "*" { "*" } else { pool.as_str() };
        ch.queue_bind(
            ShortString::from(w.queue.as_str()),
            ShortString::from(topology::EVENTS_EXCHANGE),
            ShortString::from(format!("task.{pool}.*")),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        // The workers' copies of final results (routing key = pool).
        ch.queue_bind(
            ShortString::from(w.queue.as_str()),
            ShortString::from(topology::RESULTS_EXCHANGE),
            ShortString::from(if pool == "*" { "#" } else { pool }),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    Ok(())
}

async fn consume(w: &Watch, store: &Store, notify: &Notifier) -> anyhow::Result<()> {
    let conn = Connection::connect(
        &w.amqp_url,
        ConnectionProperties::default().with_connection_name("krill-gateway-history".into()),
    )
    .await?;
    let ch = conn.create_channel().await?;
    declare(&ch, w).await?;
    ch.basic_qos(64, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            ShortString::from(w.queue.as_str()),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %w.queue, "history: recording task events");
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let parsed = if delivery.exchange.as_str() == topology::RESULTS_EXCHANGE {
            let pool = delivery.routing_key.to_string();
            serde_json::from_slice::<TaskResult>(&delivery.data)
                .map(|r| Recorded::Result(Box::new(r), pool))
        } else {
            serde_json::from_slice::<TaskEvent>(&delivery.data).map(Recorded::Event)
        };
        match parsed {
            Ok(rec) => match rec.save(store).await {
                Ok(()) => {
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                    notify.notify(rec.task_id());
                }
                Err(e) => {
                    tracing::warn!(error = %e, task_id = %rec.task_id(), "history: storing a message failed");
                    delivery
                        .acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await?;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "history: dropping a message that does not parse");
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
        }
    }
    Ok(())
}
