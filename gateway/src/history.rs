//! Recording history: task events and the workers' copies of final results
//! (`krill.results`), of every watched pool whoever submitted the task, from a
//! durable queue of the gateway's own, so what was published while it is down
//! is recorded when it is back; results of the tasks the gateway submitted
//! also from its one durable reply queue ([`replies_queue`]: every task it
//! publishes names it as `reply_to`, so no queue is declared per task; the
//! same result twice merges to one row). Merging is pure ([`merge_event`],
//! [`merge_result`]); [`run`] is the consuming loop.

use std::sync::Arc;
use std::time::Duration;

use broker::protocol::{TaskEvent, TaskResult, TaskState};
use broker::topology;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::ConnectionProperties;
use tokio_util::sync::CancellationToken;

use crate::store::{now_ms, Store, StoreError, TaskRow, Tx};
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
            // The first end stays (a refused copy of the id ends too).
            if t.status.is_none() {
                t.worker = Some(ev.worker.clone());
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

/// Most messages of the history queues written in one transaction: what
/// has arrived while the last batch was written, up to the prefetch.
pub const BATCH: usize = 64;

/// Records one event.
pub async fn record_event(store: &Store, ev: &TaskEvent) -> Result<(), StoreError> {
    let _merging = store.merge_lock().await;
    let mut tx = store.begin().await?;
    event_in(&mut tx, ev).await?;
    tx.commit().await
}

async fn event_in(tx: &mut Tx, ev: &TaskEvent) -> Result<(), StoreError> {
    let row = tx.get(&ev.task_id).await?;
    let detail = ev.error.clone().or_else(|| {
        ev.blocked
            .as_ref()
            .and_then(|b| serde_json::to_string(b).ok())
    });
    tx.add_event(
        &ev.task_id,
        ev.state.as_str(),
        &ev.worker,
        ev.at.timestamp_millis(),
        detail.as_deref(),
    )
    .await?;
    tx.put(&merge_event(row, ev)).await
}

/// Records one result; `pool` (when known: the routing key of a worker's
/// copy) names the pool of a task not seen before.
pub async fn record_result(
    store: &Store,
    r: &TaskResult,
    pool: Option<&str>,
) -> Result<(), StoreError> {
    let _merging = store.merge_lock().await;
    let mut tx = store.begin().await?;
    result_in(&mut tx, r, pool).await?;
    tx.commit().await
}

async fn result_in(tx: &mut Tx, r: &TaskResult, pool: Option<&str>) -> Result<(), StoreError> {
    let mut row = tx.get(&r.id).await?.unwrap_or_else(|| TaskRow {
        id: r.id.clone(),
        ..TaskRow::default()
    });
    if row.pool.is_empty() {
        if let Some(p) = pool {
            row.pool = p.to_string();
        }
    }
    if let Some(first) = row
        .result
        .as_deref()
        .and_then(|s| serde_json::from_str::<TaskResult>(s).ok())
    {
        if !same_answer(&first, r) {
            // The first final result of an id stays: a later, different one is
            // a refusal of someone's copy of the id (a forged or replayed task
            // is answered `rejected`, `bad_signature`, …) or a late
            // `worker_lost` of a held copy; it goes in the timeline only.
            let detail = format!(
                "a later result for this id was not recorded ({} from {}); the first stays",
                r.status.as_str(),
                r.worker.as_deref().unwrap_or("an unnamed worker")
            );
            return tx
                .add_event(
                    &r.id,
                    "result_ignored",
                    r.worker.as_deref().unwrap_or(""),
                    now_ms(),
                    Some(&detail),
                )
                .await;
        }
    }
    tx.put(&merge_result(row, r)?).await
}

/// Whether two results are copies of one answer (the worker's copy to
/// `krill.results` and the reply queue's): the same worker, attempt, status and
/// sandbox.
fn same_answer(a: &TaskResult, b: &TaskResult) -> bool {
    a.worker == b.worker
        && a.attempt == b.attempt
        && a.status == b.status
        && a.sandbox_id == b.sandbox_id
}

/// One message of the history queue: a task event, or a worker's copy of a
/// final result (from `krill.results`: with its pool); or of the reply queue:
/// a result (no pool: the row has it from the submit).
enum Recorded {
    Event(TaskEvent),
    Result(Box<TaskResult>, Option<String>),
}

impl Recorded {
    fn task_id(&self) -> &str {
        match self {
            Recorded::Event(ev) => &ev.task_id,
            Recorded::Result(r, _) => &r.id,
        }
    }

    async fn save_in(&self, tx: &mut Tx) -> Result<(), StoreError> {
        match self {
            Recorded::Event(ev) => event_in(tx, ev).await,
            Recorded::Result(r, pool) => result_in(tx, r, pool.as_deref()).await,
        }
    }
}

/// Records a batch in one transaction: all of it, or (an error) nothing.
async fn save_all(store: &Store, recs: &[Recorded]) -> Result<(), StoreError> {
    let _merging = store.merge_lock().await;
    let mut tx = store.begin().await?;
    for rec in recs {
        rec.save_in(&mut tx).await?;
    }
    tx.commit().await
}

/// The durable reply queue of the gateway whose event queue is `queue`: the
/// `reply_to` of every task it submits (gateways sharing an event queue share
/// it too). Not a `krill.reply.*` name: submitters may not read it.
pub fn replies_queue(queue: &str) -> String {
    format!("{queue}.replies")
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
    // The node of the URL list to try first: after the one lost, the next.
    let mut next = 0;
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = consume(&w, &store, &notify, &mut next) => r,
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
    let conn = broker::amqp::connect_first(
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
        args.clone(),
    )
    .await?;
    ch.queue_declare(
        ShortString::from(replies_queue(&w.queue).as_str()),
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

async fn consume(
    w: &Watch,
    store: &Store,
    notify: &Notifier,
    next: &mut usize,
) -> anyhow::Result<()> {
    let c = broker::amqp::connect_any(
        &w.amqp_url,
        *next,
        ConnectionProperties::default().with_connection_name("krill-gateway-history".into()),
    )
    .await?;
    *next = c.index + 1;
    tracing::info!(url = %c.url, "history: broker node reached");
    let conn = c.conn;
    let ch = conn.create_channel().await?;
    declare(&ch, w).await?;
    ch.basic_qos(64, BasicQosOptions::default()).await?;
    let replies = replies_queue(&w.queue);
    let mut consumers = Vec::new();
    for queue in [w.queue.as_str(), replies.as_str()] {
        consumers.push(
            ch.basic_consume(
                ShortString::from(queue),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?,
        );
    }
    let mut consumer = futures_util::stream::select_all(consumers);
    tracing::info!(queue = %w.queue, %replies, "history: recording task events and results");
    while let Some(first) = consumer.next().await {
        // What else has arrived meanwhile goes into the same transaction.
        let mut batch = vec![first?];
        let took_unix_us = crate::phases::on().then(crate::phases::unix_us);
        while batch.len() < BATCH {
            match consumer.next().now_or_never() {
                Some(Some(d)) => batch.push(d?),
                _ => break,
            }
        }
        let mut recs = Vec::with_capacity(batch.len());
        let mut taken = Vec::with_capacity(batch.len());
        for delivery in batch {
            match parse(&delivery, &replies) {
                Ok(rec) => {
                    recs.push(rec);
                    taken.push(delivery);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "history: dropping a message that does not parse");
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                }
            }
        }
        if recs.is_empty() {
            continue;
        }
        // Waiters answer from the result now; the store has it once committed.
        for rec in &recs {
            if let Recorded::Result(r, _) = rec {
                notify.taken(Arc::new((**r).clone()));
            }
        }
        let saved = save_all(store, &recs).await;
        let committed_unix_us = took_unix_us.map(|_| crate::phases::unix_us());
        let saved = match saved {
            Ok(()) => vec![true; recs.len()],
            // One at a time then, so one message that cannot be stored does
            // not hold back the others of its batch.
            Err(_) if recs.len() > 1 => {
                let mut saved = Vec::with_capacity(recs.len());
                for rec in &recs {
                    let one = save_all(store, std::slice::from_ref(rec)).await;
                    if let Err(e) = &one {
                        tracing::warn!(error = %e, task_id = %rec.task_id(), "history: storing a message failed");
                    }
                    saved.push(one.is_ok());
                }
                saved
            }
            Err(e) => {
                tracing::warn!(error = %e, task_id = %recs[0].task_id(), "history: storing a message failed");
                vec![false]
            }
        };
        for ((delivery, rec), ok) in taken.iter().zip(&recs).zip(&saved) {
            // Settled either way: stored, or to come again (the store or
            // the redelivery answers the waiters then).
            notify.stored(rec.task_id());
            if *ok {
                delivery.acker.ack(BasicAckOptions::default()).await?;
            } else {
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?;
            }
        }
        if let (Some(took_unix_us), Some(committed_unix_us)) = (took_unix_us, committed_unix_us) {
            let notified_unix_us = crate::phases::unix_us();
            for rec in &recs {
                if let Recorded::Result(r, pool) = rec {
                    tracing::debug!(target: crate::phases::TARGET, task_id = %r.id,
                        from = if pool.is_some() { "results" } else { "replies" },
                        batch = recs.len(), took_unix_us, committed_unix_us, notified_unix_us,
                        "result recorded");
                }
            }
        }
        if saved.contains(&false) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(())
}

/// A delivery of the history queues as what it records.
fn parse(delivery: &lapin::message::Delivery, replies: &str) -> serde_json::Result<Recorded> {
    if delivery.exchange.as_str() == topology::RESULTS_EXCHANGE {
        let pool = delivery.routing_key.to_string();
        serde_json::from_slice::<TaskResult>(&delivery.data)
            .map(|r| Recorded::Result(Box::new(r), Some(pool)))
    } else if delivery.routing_key.as_str() == replies {
        serde_json::from_slice::<TaskResult>(&delivery.data)
            .map(|r| Recorded::Result(Box::new(r), None))
    } else {
        serde_json::from_slice::<TaskEvent>(&delivery.data).map(Recorded::Event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::protocol::Status;

    fn event(id: &str, state: TaskState) -> TaskEvent {
        let status = matches!(state, TaskState::Finished).then_some(Status::Succeeded);
        TaskEvent {
            version: 1,
            task_id: id.into(),
            pool: "p".into(),
            state,
            worker: "w1".into(),
            submitter: None,
            status,
            error: None,
            attempt: 1,
            at: chrono::Utc::now(),
            blocked: None,
        }
    }

    #[tokio::test]
    async fn one_batch_merges_several_messages_of_a_task_and_an_uncommitted_one_keeps_nothing() {
        let store = Store::open("sqlite::memory:").await.expect("store");
        let mut r = TaskResult::new("t1", Status::Succeeded);
        r.stdout = "hi\n".into();
        let batch = [
            Recorded::Event(event("t1", TaskState::Started)),
            Recorded::Result(Box::new(r), None),
            Recorded::Event(event("t1", TaskState::Finished)),
            Recorded::Event(event("t2", TaskState::Started)),
        ];
        save_all(&store, &batch).await.expect("batch");
        let t1 = store.get("t1").await.expect("get").expect("t1");
        assert_eq!(t1.state, "finished");
        assert_eq!(t1.status.as_deref(), Some("succeeded"));
        assert_eq!(t1.pool, "p", "the first event named the pool");
        assert!(t1.result.as_deref().is_some_and(|r| r.contains("hi")));
        assert_eq!(store.events("t1").await.expect("events").len(), 2);
        assert_eq!(
            store.get("t2").await.expect("get").expect("t2").state,
            "started"
        );

        // A transaction dropped before its commit leaves nothing.
        let mut tx = store.begin().await.expect("begin");
        event_in(&mut tx, &event("t3", TaskState::Started))
            .await
            .expect("in tx");
        assert!(tx.get("t3").await.expect("get").is_some());
        drop(tx);
        assert!(store.get("t3").await.expect("get").is_none());
    }
}
