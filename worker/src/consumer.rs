//! Claiming tasks, and one delivery's whole life: decode it, decide what it
//! needs, run it or answer it, publish the result with confirms, and only
//! then ack. Every delivery ends as exactly one result, or a dead letter with
//! its reason (or both, for malformed messages that can still be answered).
//!
//! ```text
//! claim(shared, conn, channel, handlers)           one per connection
//!  ├─ basic.qos(slots not held by keyed tasks); basic.consume on krill.pool.<pool>
//!  │   (cancelled while draining, and made again when that number changes)
//!  └─ select! { root stop | shutdown | drain change | delivery | connection health }
//!       delivery → wait for a free slot → handlers.spawn(handle(delivery, slot))
//! handle(shared, incoming, slot)                   one per delivery; the slot is held until the ack
//!  ├─ gate::Gate::open: the signature (refused → rejected + dead letter, nothing made)
//!  ├─ intake::decode → Bad → Gate::malformed: `rejected` result (where it can be answered) + dead letter
//!  └─ Task → Gate::admit (key's restrictions, sealed secrets opened) → decide():
//!       Reused (finished here, another reply_to: rejected there, nothing of the run)
//!       | Resend (finished here) | Adopted (running here) | Answer (worker_lost, cancelled)
//!       Run → Gate::claim → runner::run → Outbound::finish_result → remember → finish()
//! finish(): Outbound::result (confirmed) → finished event → ack (not when the result was given up)
//! ```
//!
//! Every result leaves through `Outbound::finish_result` with the task's
//! [`Stamp`](crate::outbound::Stamp) (its signer's name, the trust warnings,
//! sensitive outputs sealed to the submitter). [`decide`] does no I/O;
//! [`handle`] talks to the broker only through the outbound sink and the
//! delivery's [`Settle`]: both are tested in memory.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use broker::protocol::{Status, Task, TaskResult, TaskState as State};
use broker::topology;
use chrono::Utc;
use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::TaskTracker;

use crate::cancel::Cancel;
use crate::gate::{Delivery, Gate};
use crate::intake::{decode, Incoming, Intake, Settle};
use crate::outbound::Ready;
use crate::phases;
use crate::runner;
use crate::state::Running;
use crate::trust::AuditEvent;
use crate::worker::Shared;

/// How often the claim loop checks that its connection is still up.
pub const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Why claiming stopped (the connection is then made again).
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("broker")]
    Amqp(#[from] lapin::Error),
    #[error("the broker cancelled the consumer (queue deleted?)")]
    CancelledByBroker,
    #[error("connection closed")]
    ConnectionClosed,
}

/// Claims tasks on `channel` (prefetch = slots) until the worker stops
/// (`Ok`) or the connection breaks. Consumes only while not draining.
pub async fn claim(
    shared: &Arc<Shared>,
    conn: &Connection,
    channel: &Channel,
    handlers: &TaskTracker,
) -> Result<(), ClaimError> {
    let mut draining = shared.draining.subscribe();
    let mut keyed = shared.lines.running_here();
    let mut generation = 0u32;
    let mut consumer: Option<Consumer> = None;
    let mut prefetch = 0u16;
    let mut cancelling = false;
    let mut health = tokio::time::interval(HEALTH_EVERY);
    // What the heartbeat says now (from an earlier connection, perhaps).
    let mut was_degraded = *shared
        .not_claiming
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        // A worker that cannot publish results stops claiming until it can.
        let degraded = shared.degraded();
        // Prefetch = the slots keyed tasks do not hold: a pool delivery never
        // waits here for a slot while another worker has one free.
        let free = shared
            .cfg
            .concurrency
            .saturating_sub(*keyed.borrow_and_update());
        let want_prefetch = u16::try_from(free).unwrap_or(u16::MAX);
        let want = !shared.is_draining() && degraded.is_none() && want_prefetch > 0;
        if want && consumer.is_none() {
            generation += 1;
            channel
                .basic_qos(want_prefetch, BasicQosOptions::default())
                .await?;
            let tag = format!("krill-worker.{}.{generation}", shared.id);
            consumer = Some(
                channel
                    .basic_consume(
                        ShortString::from(topology::pool_queue(&shared.pool)),
                        ShortString::from(tag),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?,
            );
            prefetch = want_prefetch;
            cancelling = false;
        } else if (!want || want_prefetch != prefetch) && !cancelling {
            if let Some(c) = &consumer {
                if shared.is_draining() && degraded.is_none() {
                    tracing::info!("draining: no more claims");
                }
                // Deliveries already sent still come, and are handled; the
                // consumer is made again with the new prefetch once it ended.
                channel
                    .basic_cancel(c.tag(), BasicCancelOptions::default())
                    .await?;
                cancelling = true;
            }
        }
        // Said once the consumer is cancelled (or back): what the heartbeat
        // says is already true.
        if degraded != was_degraded {
            match degraded {
                Some(why) => tracing::error!(reason = why, after = ?shared.health.after(),
                    "degraded: no more claims until results go out again"),
                None => tracing::info!("results go out again: claiming"),
            }
            was_degraded = degraded;
            *shared
                .not_claiming
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = degraded;
            shared.send_heartbeat(false).await;
        }
        tokio::select! {
            biased;
            _ = shared.root.cancelled() => {
                let _ = conn.close(200, ShortString::from("worker stopping")).await;
                return Ok(());
            }
            _ = shared.shutdown.cancelled(), if !cancelling && consumer.is_some() => {}
            _ = draining.changed() => shared.send_heartbeat(false).await,
            _ = keyed.changed() => {}
            d = next(&mut consumer) => match d {
                Some(Ok(delivery)) => {
                    let Ok(slot) = shared.slots.clone().acquire_owned().await else { continue };
                    handlers.spawn(handle(shared.clone(), delivery.into(), slot));
                }
                Some(Err(e)) => return Err(e.into()),
                None => {
                    consumer = None;
                    if !cancelling {
                        return Err(ClaimError::CancelledByBroker);
                    }
                }
            },
            _ = health.tick() => {
                if !conn.status().connected() {
                    return Err(ClaimError::ConnectionClosed);
                }
            }
        }
    }
}

async fn next(
    consumer: &mut Option<Consumer>,
) -> Option<Result<lapin::message::Delivery, lapin::Error>> {
    match consumer {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// What a well-formed task needs, from what this worker knows.
#[derive(Debug)]
pub enum Decision {
    /// A redelivery of a task that finished here: its result, sent again.
    Resend(Arc<Ready>),
    /// A redelivery of a task still running here: it now settles this delivery.
    Adopted,
    /// Answered without running (`worker_lost`, or cancelled before it started).
    Answer(Box<TaskResult>),
    /// The id of a task that finished here, in a message naming another reply
    /// queue than its first: answered `rejected` there ([`REUSED`]), with
    /// nothing of that run, and not remembered, copied to the history or
    /// announced as the task's end (it is not that task's result).
    Reused,
    /// A redelivery that must not run again and may still run elsewhere: wait
    /// for its holder ([`crate::held`]), then `worker_lost` or nothing.
    Held,
    /// Run it.
    Run,
}

/// Decides what a task signed by `signer` needs (no I/O; an adoption swaps the
/// running task's delivery for this one).
pub fn decide(
    shared: &Shared,
    task: &Task,
    attempt: u32,
    redelivered: bool,
    reply_to: &str,
    signer: Option<&broker::trust::PublicKey>,
    settle: &Arc<dyn Settle>,
) -> Decision {
    let id = &task.id;
    let answer = |status, error: &str| {
        let mut result = TaskResult::new(id.clone(), status);
        result.attempt = attempt;
        result.worker = Some(shared.id.clone());
        result.error = Some(error.to_string());
        Decision::Answer(Box::new(result))
    };
    // A result remembered here goes only to the reply queue it went to first,
    // whatever the message says of itself: a redelivery is the same message
    // (the same reply_to), and a message naming another queue is someone who
    // learnt the id — signed by any trusted key or not, "redelivered" by a
    // forged `x-delivery-count` (the classic line queues pass one on) or not.
    // It gets no output of that run, and nothing runs for it.
    let remembered = shared.tasks.recent_with_reply(id);
    if let Some((_, first)) = &remembered {
        if first != reply_to {
            return Decision::Reused;
        }
    }
    if redelivered {
        if let Some((result, _)) = remembered {
            return Decision::Resend(result);
        }
        if shared.tasks.adopt(id, settle) {
            return Decision::Adopted;
        }
        if !task.retry_on_worker_loss {
            return Decision::Held;
        }
    } else if !task.retry_on_worker_loss && signer.is_none() {
        // Another message with the id of a task that ran or runs (a submit
        // published again after its confirm was lost): the task id is the
        // idempotency handle, so it is answered from that run, not run again.
        // A signed message's copies are the claims stream's to refuse
        // (`replayed`, audited and dead-lettered: gate::claim). The result
        // goes only to the reply queue it went to first (above).
        if let Some((result, _)) = remembered {
            return Decision::Resend(result);
        }
        if shared.tasks.is_running(id) || shared.peers.knows(id) {
            return Decision::Held;
        }
    }
    if shared.tasks.is_cancelled(id, signer) {
        return answer(Status::Cancelled, "cancelled before it started");
    }
    // Promised to a peer never to start it (that peer runs it): wait for it.
    if !shared.tasks.reserve(id) {
        return Decision::Held;
    }
    Decision::Run
}

/// The error of a [`Decision::Reused`] answer.
pub const REUSED: &str =
    "a task with this id already ran; its result went to the reply queue of its first submission";

/// When a task was published (the earlier of its `submitted_at` and the
/// message's timestamp, not after now), if it says.
fn published(task: &Task, amqp_timestamp: Option<u64>) -> Option<chrono::DateTime<Utc>> {
    let stamp = amqp_timestamp
        .and_then(|s| i64::try_from(s).ok())
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0));
    let at = match (task.submitted_at, stamp) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }?;
    Some(at.min(Utc::now()))
}

/// Whether the message is a copy its submitter published again
/// ([`topology::RESENT_HEADER`]).
fn resent(props: &lapin::BasicProperties) -> bool {
    props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(topology::RESENT_HEADER))
        .is_some_and(|v| matches!(v, lapin::types::AMQPValue::Boolean(true)))
}

/// The answer to a task whose worker was lost mid-run.
pub fn worker_lost(shared: &Shared, id: &str, attempt: u32, holder: Option<&str>) -> TaskResult {
    let mut result = TaskResult::new(id.to_string(), Status::WorkerLost);
    result.attempt = attempt;
    result.worker = Some(shared.id.clone());
    let who = holder.map_or_else(String::new, |w| format!(" ({w})"));
    result.error = Some(format!(
        "the worker running this task{who} was lost mid-run; it was not run again \
         because the task does not set retry_on_worker_loss"
    ));
    result
}

/// Handles one delivery to the end. `slot` is held until the ack (a redelivery
/// waiting for its holder elsewhere lets it go: [`crate::held`]).
pub async fn handle(shared: Arc<Shared>, incoming: Incoming, slot: OwnedSemaphorePermit) {
    let began = std::time::Instant::now();
    let began_unix = phases::unix_us();
    let Incoming {
        data,
        props,
        redelivered,
        settle,
        line,
    } = incoming;
    let d = Delivery {
        data: &data,
        props: &props,
        settle: &settle,
    };
    let Some(mut gate) = Gate::open(&shared, d, redelivered).await else {
        return;
    };
    let mut intake = decode(&props, &data, redelivered);
    if let Intake::Task { task, reply_to, .. } = &intake {
        if let (Some(key), None) = (&task.concurrency_key, &line) {
            intake = Intake::Bad {
                reason: format!(
                    "a task with concurrency_key `{key}` must be published to its line queue \
                     `{}` (exchange `krill.lines`, routing key = that name), not to the pool queue",
                    topology::line_queue(&shared.pool, key)
                ),
                id: Some(task.id.clone()),
                reply_to: Some(reply_to.clone()),
            };
        }
    }
    let (mut task, reply_to, attempt, redelivered) = match intake {
        Intake::Bad {
            reason,
            id,
            reply_to,
        } => {
            gate.malformed(&shared, d, &reason, id, reply_to).await;
            return;
        }
        Intake::Task {
            task,
            reply_to,
            attempt,
            redelivered,
        } => (task, reply_to, attempt, redelivered),
    };
    if !gate.admit(&shared, d, &mut task).await {
        return;
    }
    let id = task.id.clone();
    let stamp = gate.stamp(task.reply_key.clone());
    let signer = gate.signer();
    let mut decision = decide(
        &shared,
        &task,
        attempt,
        redelivered,
        &reply_to,
        signer.as_ref(),
        &settle,
    );
    // A copy its submitter published again after losing the connection
    // before the confirm (`RESENT_HEADER`, unsigned tasks only: signed copies
    // are the claims stream's): the first copy may be queued too, and may
    // run or have run elsewhere, so it is handled as a redelivery — it waits
    // for a holder, or runs once every worker that may have had the first
    // copy says it never started it. A copy of a task that ran here was
    // answered from that run above (the same reply queue only).
    if matches!(decision, Decision::Run)
        && signer.is_none()
        && !task.retry_on_worker_loss
        && line.is_none()
        && resent(&props)
    {
        tracing::info!(task_id = %id, "a copy its submitter published again after a lost connection: making sure no other copy ran");
        shared.tasks.release(&id);
        decision = Decision::Held;
    }
    let mut slot = Some(slot);
    if let Decision::Held = decision {
        // A keyed task's line already waited for its holder (lines::line).
        let at = published(&task, *props.timestamp());
        let outcome = match (&line, slot.take()) {
            (None, Some(s)) => crate::held::wait(&shared, &id, s, at).await,
            (_, s) => {
                slot = s;
                crate::held::Outcome::Lost(None)
            }
        };
        match outcome {
            crate::held::Outcome::Lost(holder) => {
                let r = worker_lost(&shared, &id, attempt, holder.as_deref());
                decision = Decision::Answer(Box::new(r));
            }
            crate::held::Outcome::Finished(holder) => {
                tracing::info!(task_id = %id, holder = %holder,
                    "redelivered task was finished by the worker that held it; its result is the one");
                if let Err(e) = settle.ack().await {
                    tracing::warn!(task_id = %id, error = %e, "ack failed; the broker will redeliver");
                }
                return;
            }
            crate::held::Outcome::NeverStarted if shared.tasks.reserve(&id) => {
                tracing::info!(task_id = %id, attempt,
                    "redelivered task never started anywhere (every worker that may have had it says so); running it");
                decision = Decision::Run;
            }
            crate::held::Outcome::NeverStarted => {
                let r = worker_lost(&shared, &id, attempt, None);
                decision = Decision::Answer(Box::new(r));
            }
            crate::held::Outcome::Stopping => return,
        }
    }
    let _slot = slot;
    match decision {
        Decision::Resend(result) => {
            tracing::info!(task_id = %id, "redelivered task already finished here; sending its result again");
            finish(&shared, &result, &reply_to, &settle).await;
        }
        Decision::Reused => {
            tracing::warn!(task_id = %id, reply_to = %reply_to, key = ?stamp.submitter,
                "a message reused the id of a task that ran here, naming another reply queue: rejected, nothing of that run sent");
            shared.run.metrics.finished(Status::Rejected, None);
            let mut result = TaskResult::rejected(id.clone(), REUSED);
            result.attempt = attempt;
            result.worker = Some(shared.id.clone());
            let result = shared.run.outbound.finish_result(result, &stamp);
            let trust = &shared.trust;
            let mut line = trust.task_line(
                AuditEvent::TaskRejected,
                Some(&id),
                Some(&gate.env),
                Some(&task),
            );
            line.reason = Some("reused_id".into());
            line.detail = Some(REUSED.into());
            trust.audit.record(line);
            shared.run.outbound.refusal(&result, &reply_to).await;
            if let Err(e) = settle.ack().await {
                tracing::warn!(task_id = %id, error = %e, "ack failed; the broker will redeliver");
            }
        }
        Decision::Adopted => {
            tracing::info!(task_id = %id, "redelivered task still running here; adopted the new delivery");
        }
        Decision::Answer(mut result) => {
            shared.run.metrics.finished(result.status, None);
            result.waited_on = line.clone();
            let result = shared.run.outbound.finish_result(*result, &stamp);
            gate.finished(&shared, &result);
            shared.tasks.remember(&result, &reply_to);
            finish(&shared, &result, &reply_to, &settle).await;
        }
        Decision::Held => {}
        Decision::Run => {
            if !gate.claim(&shared, d, &task, attempt).await {
                shared.tasks.release(&id);
                return;
            }
            let cancel = Cancel::child_of(&shared.root);
            let settle = Arc::new(Mutex::new(settle.clone()));
            let kind = task.sandbox.unwrap_or(shared.run.policy.kinds[0]);
            shared.tasks.start(
                &id,
                Running {
                    started_at: Utc::now(),
                    sandbox: kind,
                    submitter: stamp.submitter.clone(),
                    signer,
                    cancel: cancel.clone(),
                    settle: settle.clone(),
                },
            );
            let metrics = &shared.run.metrics;
            if let Some(waited) = crate::metrics::queue_wait(task.submitted_at, *props.timestamp())
            {
                metrics.queued(waited);
            }
            let ran = std::time::Instant::now();
            let intake_us = phases::us(began);
            let out = &shared.run.outbound;
            // The started event goes out while the task starts (joined, not
            // spawned: it is sent before the finished event can be).
            let ((), result) = tokio::join!(
                out.event_by(&id, State::Started, None, attempt, stamp.submitter.clone()),
                runner::run(&shared.run, *task, attempt, cancel)
            );
            let mut result = result;
            result.waited_on = line;
            let run_us = phases::us(ran);
            metrics.ran(result.sandbox, ran.elapsed());
            metrics.finished(result.status, result.sandbox);
            let sealing = std::time::Instant::now();
            // The older results the cache would drop for this one go before
            // it is encoded, not after (the output is held twice meanwhile).
            shared
                .tasks
                .make_room(result.stdout.len() + result.stderr.len());
            // Before it is remembered or sent anywhere: only ciphertext leaves.
            let result = out.finish_result(result, &stamp);
            gate.finished(&shared, &result);
            // Remember before forgetting it runs: a redelivery in between must find one or the other.
            shared.tasks.remember(&result, &reply_to);
            shared.tasks.finish(&id);
            // The delivery to settle is read only now: a redelivery may have replaced it.
            let settle = settle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let seal_us = phases::us(sealing);
            let f = finish(&shared, &result, &reply_to, &settle).await;
            tracing::debug!(target: phases::TARGET, task_id = %id, start_unix_us = began_unix,
                intake_us, run_us, seal_us, published_unix_us = f.published_unix_us,
                publish_us = f.publish_us, event_us = f.event_us, ack_us = f.ack_us, "task phases");
        }
    }
}

/// How long each step of [`finish`] took (µs), for [`phases`].
#[derive(Debug, Clone, Copy, Default)]
struct Finished {
    /// When the result's publish began (wall clock).
    published_unix_us: u64,
    /// The result's publish, until its confirm.
    publish_us: u64,
    /// The finished event.
    event_us: u64,
    /// The ack (0 when the result was given up).
    ack_us: u64,
}

/// Publishes the result (confirmed), the finished event, then acks (unless the
/// result was given up: the task then goes back to the queue).
async fn finish(
    shared: &Shared,
    result: &Arc<Ready>,
    reply_to: &str,
    settle: &Arc<dyn Settle>,
) -> Finished {
    let out = &shared.run.outbound;
    let mut f = Finished {
        published_unix_us: phases::unix_us(),
        ..Finished::default()
    };
    let t = std::time::Instant::now();
    let published = out.result(result, reply_to).await;
    f.publish_us = phases::us(t);
    let t = std::time::Instant::now();
    out.event(&result.id, State::Finished, Some(&**result), result.attempt)
        .await;
    f.event_us = phases::us(t);
    if published {
        shared.tasks.delivered(&result.id);
        let t = std::time::Instant::now();
        let acked = settle.ack().await;
        f.ack_us = phases::us(t);
        if let Err(e) = acked {
            // The channel died: the broker requeues the task and whoever gets it
            // answers from the result (here) or as worker_lost (elsewhere).
            tracing::warn!(task_id = %result.id, error = %e, "ack failed; the broker will redeliver");
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A result as the worker keeps it once it is finished.
    fn ready(r: TaskResult) -> Arc<Ready> {
        Arc::new(Ready::encode(r, crate::outbound::HISTORY_BUDGET))
    }
    use crate::intake::MemorySettle;
    use crate::outbound::{MemorySink, Outgoing};
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::BasicProperties;

    /// A delivery of `body` answered on `krill.reply.<id>`.
    fn delivery(body: &str, id: &str, redelivered: bool) -> (Incoming, Arc<MemorySettle>) {
        let settle = Arc::new(MemorySettle::default());
        let props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(id))
            .with_reply_to(ShortString::from(format!("krill.reply.{id}")));
        let incoming = Incoming {
            data: body.as_bytes().to_vec(),
            props,
            redelivered,
            settle: settle.clone(),
            line: None,
        };
        (incoming, settle)
    }

    fn task_json(id: &str, extra: &str) -> String {
        format!(r#"{{"version":1,"id":"{id}","script":"true"{extra}}}"#)
    }

    async fn handled(shared: &Arc<Shared>, incoming: Incoming) {
        let slot = shared
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("a free slot");
        handle(shared.clone(), incoming, slot).await;
    }

    fn setup() -> (Arc<MemorySink>, Arc<Shared>) {
        let sink = Arc::new(MemorySink::default());
        let shared = crate::worker::for_tests(sink.clone());
        (sink, shared)
    }

    #[tokio::test]
    async fn a_malformed_task_is_rejected_dead_lettered_and_acked() {
        let (sink, shared) = setup();
        let (d, settle) = delivery(
            r#"{"version":1,"id":"t1","script":"x","colour":2}"#,
            "t1",
            false,
        );
        handled(&shared, d).await;
        let results = sink.results();
        assert_eq!(results.len(), 1, "{:?}", sink.sent());
        assert_eq!(results[0].0.status, Status::Rejected);
        assert_eq!(results[0].1, "krill.reply.t1");
        assert!(results[0]
            .0
            .error
            .as_deref()
            .unwrap_or("")
            .contains("colour"));
        let dead = sink.dead_letters();
        assert_eq!(dead.len(), 1);
        assert!(dead[0].contains("colour"), "{dead:?}");
        assert_eq!(
            settle.counts(),
            (1, 0),
            "acked once the dead letter is confirmed"
        );
        assert!(sink.events().is_empty(), "nothing ran");
    }

    #[tokio::test]
    async fn an_unanswerable_message_is_only_dead_lettered_and_rejected_when_that_fails() {
        let (sink, shared) = setup();
        let settle = Arc::new(MemorySettle::default());
        let d = Incoming {
            data: b"\xff not json".to_vec(),
            props: BasicProperties::default(),
            redelivered: false,
            settle: settle.clone(),
            line: None,
        };
        handled(&shared, d).await;
        assert!(sink.results().is_empty());
        assert_eq!(sink.dead_letters().len(), 1);
        assert_eq!(settle.counts(), (1, 0));

        // The broker is gone for good: rejected, so RabbitMQ dead-letters it itself.
        sink.refuse();
        let settle = Arc::new(MemorySettle::default());
        let d = Incoming {
            data: b"\xff not json".to_vec(),
            props: BasicProperties::default(),
            redelivered: false,
            settle: settle.clone(),
            line: None,
        };
        handled(&shared, d).await;
        assert_eq!(settle.counts(), (0, 1));
    }

    #[tokio::test]
    async fn a_redelivered_task_that_finished_here_gets_its_result_again_without_running() {
        let (sink, shared) = setup();
        let mut earlier = TaskResult::new("t1", Status::Succeeded);
        earlier.stdout = "ran once\n".into();
        shared.tasks.remember(&ready(earlier), "krill.reply.t1");
        let (d, settle) = delivery(&task_json("t1", ""), "t1", true);
        handled(&shared, d).await;
        let results = sink.results();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].0.stdout, "ran once\n");
        let states: Vec<State> = sink.events().iter().map(|e| e.state).collect();
        assert_eq!(states, vec![State::Finished], "not started again");
        assert_eq!(settle.counts(), (1, 0));
    }

    #[tokio::test]
    async fn a_redelivered_task_still_running_here_is_adopted_and_its_new_delivery_acked_at_the_end(
    ) {
        let (sink, shared) = setup();
        let first = Arc::new(MemorySettle::default());
        let first_dyn: Arc<dyn Settle> = first.clone();
        let running = Arc::new(Mutex::new(first_dyn));
        shared.tasks.start(
            "t1",
            Running {
                started_at: Utc::now(),
                sandbox: broker::protocol::SandboxKind::Process,
                submitter: None,
                signer: None,
                cancel: Cancel::child_of(&shared.root),
                settle: running.clone(),
            },
        );
        let (d, second) = delivery(&task_json("t1", ""), "t1", true);
        handled(&shared, d).await;
        assert!(sink.sent().is_empty(), "nothing sent: {:?}", sink.sent());
        assert_eq!(second.counts(), (0, 0), "not settled yet");
        // The running task settles whichever delivery is current when it ends.
        let current = running.lock().expect("lock").clone();
        current.ack().await.expect("ack");
        assert_eq!(second.counts(), (1, 0));
        assert_eq!(first.counts(), (0, 0));
    }

    #[tokio::test]
    async fn a_redelivered_task_lost_elsewhere_is_answered_worker_lost_unless_it_may_run_again() {
        let (sink, shared) = setup();
        // Its holder said goodbye with it still running.
        let now = std::time::Instant::now();
        shared.peers.listening(now);
        let mut hb = peer_heartbeat("w-other", "t1");
        hb.stopping = true;
        shared.peers.observe(&hb, now);
        let (d, settle) = delivery(&task_json("t1", ""), "t1", true);
        handled(&shared, d).await;
        let results = sink.results();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].0.status, Status::WorkerLost);
        assert!(results[0]
            .0
            .error
            .as_deref()
            .unwrap_or("")
            .contains("retry_on_worker_loss"));
        assert!(
            results[0]
                .0
                .error
                .as_deref()
                .unwrap_or("")
                .contains("(w-other)"),
            "the lost holder is named: {:?}",
            results[0].0
        );
        assert_eq!(settle.counts(), (1, 0));
        // It is remembered: a further redelivery gets the same answer.
        assert!(shared.tasks.recent("t1").is_some());

        // May run again: it runs (here no sandbox is enabled, so it fails on the sandbox's side).
        let (sink, shared) = setup();
        let (d, settle) = delivery(
            &task_json("t2", r#","retry_on_worker_loss":true"#),
            "t2",
            true,
        );
        handled(&shared, d).await;
        let results = sink.results();
        assert_eq!(results.len(), 1);
        assert_eq!(
            results[0].0.status,
            Status::SandboxError,
            "{:?}",
            results[0].0
        );
        assert_eq!(settle.counts(), (1, 0));
    }

    #[tokio::test]
    async fn a_second_message_with_the_id_of_a_task_that_ran_is_answered_from_that_run() {
        let (sink, shared) = setup();
        let mut earlier = TaskResult::new("t1", Status::Succeeded);
        earlier.stdout = "ran once\n".into();
        shared.tasks.remember(&ready(earlier), "krill.reply.t1");
        // Not a redelivery: the same id published again.
        let (d, settle) = delivery(&task_json("t1", ""), "t1", false);
        handled(&shared, d).await;
        let results = sink.results();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].0.stdout, "ran once\n");
        let states: Vec<State> = sink.events().iter().map(|e| e.state).collect();
        assert_eq!(states, vec![State::Finished], "not started again");
        assert_eq!(settle.counts(), (1, 0));
    }

    #[tokio::test]
    async fn a_message_reusing_an_id_with_another_reply_queue_gets_no_output_of_that_run() {
        let (sink, shared) = setup();
        let mut earlier = TaskResult::new("t1", Status::Succeeded);
        earlier.stdout = "secret output\n".into();
        shared.tasks.remember(&ready(earlier), "krill.reply.victim");
        // Someone who learnt the id publishes it again, naming its own queue.
        let (mut d, settle) = delivery(&task_json("t1", ""), "t1", false);
        d.props = d.props.with_reply_to(ShortString::from("amq.gen-attacker"));
        handled(&shared, d).await;
        let results = sink.results();
        assert_eq!(results.len(), 1, "{results:?}");
        let (r, to) = &results[0];
        assert_eq!(to, "amq.gen-attacker");
        assert_eq!(r.status, Status::Rejected, "{r:?}");
        assert!(r.stdout.is_empty() && r.outputs.is_empty(), "{r:?}");
        assert!(
            sink.history().is_empty() && sink.events().is_empty(),
            "not the task's result: no history copy, no event"
        );
        assert_eq!(settle.counts(), (1, 0));
    }

    #[test]
    fn a_result_remembered_here_goes_only_to_its_first_reply_queue_whatever_the_copy_says() {
        let (_, shared) = setup();
        let mut earlier = TaskResult::new("t1", Status::Succeeded);
        earlier.stdout = "secret output\n".into();
        shared.tasks.remember(&ready(earlier), "krill.reply.victim");
        let task = Task::new("t1", "true");
        let mut retry = task.clone();
        retry.retry_on_worker_loss = true;
        let key = broker::trust::Identity::generate("mallory")
            .expect("key")
            .public();
        let settle: Arc<dyn Settle> = Arc::new(MemorySettle::default());
        // Redelivered (a forged count makes any message so), signed by some
        // trusted key, or a task that may run again: none gets the result
        // elsewhere, none runs.
        for (t, redelivered, signer) in [
            (&task, true, None),
            (&task, false, Some(&key)),
            (&task, true, Some(&key)),
            (&retry, false, None),
        ] {
            let d = decide(
                &shared,
                t,
                1,
                redelivered,
                "amq.gen-attacker",
                signer,
                &settle,
            );
            assert!(
                matches!(d, Decision::Reused),
                "{redelivered} {signer:?}: {d:?}"
            );
        }
        // A real redelivery (its first reply queue) is answered from the run.
        let d = decide(&shared, &task, 2, true, "krill.reply.victim", None, &settle);
        assert!(matches!(d, Decision::Resend(_)), "{d:?}");
    }

    #[tokio::test]
    async fn a_task_cancelled_before_it_started_is_answered_cancelled() {
        let (sink, shared) = setup();
        assert!(!shared
            .tasks
            .cancel("t1", "cancelled by request (krill cancel)"));
        let (d, settle) = delivery(&task_json("t1", ""), "t1", false);
        handled(&shared, d).await;
        let results = sink.results();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].0.status, Status::Cancelled);
        assert_eq!(
            results[0].0.error.as_deref(),
            Some("cancelled before it started")
        );
        assert_eq!(settle.counts(), (1, 0));
    }

    #[tokio::test]
    async fn a_task_runs_with_started_then_finished_and_is_acked_after_its_result() {
        let (sink, shared) = setup();
        let (d, settle) = delivery(&task_json("t1", ""), "t1", false);
        handled(&shared, d).await;
        let sent = sink.sent();
        let kinds: Vec<&str> = sent
            .iter()
            .map(|m| match m {
                Outgoing::Event(e) if e.state == State::Started => "started",
                Outgoing::Result { .. } => "result",
                Outgoing::Event(e) if e.state == State::Finished => "finished",
                _ => "other",
            })
            .filter(|k| *k != "other")
            .collect();
        assert_eq!(kinds, vec!["started", "result", "finished"]);
        let finished = sink.events().pop().expect("finished event");
        assert_eq!(finished.status, Some(Status::SandboxError));
        assert_eq!(finished.pool, "p-test");
        assert_eq!(finished.worker, "w-test");
        assert_eq!(settle.counts(), (1, 0));
        assert_eq!(shared.tasks.running_count(), 0);
        assert_eq!(
            shared.slots_free(),
            shared.cfg.concurrency,
            "the slot is back"
        );
    }

    #[tokio::test]
    async fn a_result_that_cannot_be_published_is_not_acked() {
        let (sink, shared) = setup();
        sink.refuse();
        let (d, settle) = delivery(&task_json("t1", ""), "t1", false);
        handled(&shared, d).await;
        assert_eq!(settle.counts(), (0, 0), "left for the broker to redeliver");
    }

    /// A heartbeat of `worker` (interval 1 s) running `task`.
    fn peer_heartbeat(worker: &str, task: &str) -> broker::protocol::Heartbeat {
        use broker::protocol::{Heartbeat, RunningTask, SandboxKind};
        Heartbeat {
            version: 1,
            worker: worker.into(),
            host: "h".into(),
            pool: "p-test".into(),
            krill_version: "0".into(),
            slots_total: 1,
            slots_free: 0,
            draining: false,
            running: vec![RunningTask {
                id: task.into(),
                started_at: Utc::now() - chrono::Duration::seconds(5),
                sandbox: SandboxKind::Process,
                submitter: None,
            }],
            broker: None,
            uptime_secs: 100,
            interval_secs: 1,
            stopping: false,
            sent_at: Utc::now(),
            lines: Vec::new(),
            degraded: None,
            asking: Vec::new(),
            disowned: Vec::new(),
            process: None,
        }
    }

    #[tokio::test]
    async fn a_redelivery_whose_holder_is_alive_waits_and_is_acked_without_a_result_when_it_finishes(
    ) {
        let (sink, shared) = setup();
        let now = std::time::Instant::now();
        shared.peers.listening(now);
        let mut hb = peer_heartbeat("w-other", "t1");
        shared.peers.observe(&hb, now);
        let (d, settle) = delivery(&task_json("t1", ""), "t1", true);
        let waiting = tokio::spawn({
            let shared = shared.clone();
            async move { handled(&shared, d).await }
        });
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!waiting.is_finished(), "it waits while its holder lives");
        assert_eq!(settle.counts(), (0, 0));
        // The holder's next heartbeat no longer lists it: it finished it.
        hb.running.clear();
        hb.uptime_secs += 1;
        hb.sent_at = Utc::now();
        shared.peers.observe(&hb, std::time::Instant::now());
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("done once the holder finished")
            .expect("join");
        assert_eq!(settle.counts(), (1, 0), "acked");
        assert!(
            sink.results().is_empty(),
            "no second result: the holder's is the one"
        );
    }

    /// `d` marked as published again by its submitter (`RESENT_HEADER`).
    fn resent_copy(mut d: Incoming) -> Incoming {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(topology::RESENT_HEADER),
            AMQPValue::Boolean(true),
        );
        d.props = d.props.with_headers(headers);
        d
    }

    #[tokio::test]
    async fn a_copy_published_again_does_not_run_while_its_first_copy_runs_elsewhere() {
        let (sink, shared) = setup();
        let now = std::time::Instant::now();
        shared.peers.listening(now);
        let mut hb = peer_heartbeat("w-other", "t1");
        shared.peers.observe(&hb, now);
        // Not a redelivery for the broker: a new message, marked as a copy.
        let (d, settle) = delivery(&task_json("t1", ""), "t1", false);
        let waiting = tokio::spawn({
            let shared = shared.clone();
            async move { handled(&shared, resent_copy(d)).await }
        });
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!waiting.is_finished(), "it waits while the first copy runs");
        assert!(sink.events().is_empty(), "not started: {:?}", sink.events());
        hb.running.clear();
        hb.uptime_secs += 1;
        hb.sent_at = Utc::now();
        shared.peers.observe(&hb, std::time::Instant::now());
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("done once the first copy finished")
            .expect("join");
        assert_eq!(settle.counts(), (1, 0), "acked");
        assert!(sink.results().is_empty(), "no second result, no second run");

        // Without the mark the same message is a new task and runs at once
        // (here no sandbox is enabled, so it fails on the sandbox's side).
        let (sink, shared) = setup();
        let (d, settle) = delivery(&task_json("t2", ""), "t2", false);
        handled(&shared, d).await;
        assert_eq!(sink.results().len(), 1);
        assert_eq!(settle.counts(), (1, 0));
        // A marked copy of a task that ran here is answered from that run.
        let (d, settle) = delivery(&task_json("t2", ""), "t2", false);
        handled(&shared, resent_copy(d)).await;
        let results = sink.results();
        assert_eq!(results.len(), 2);
        assert_eq!(results[1].0.status, results[0].0.status);
        assert_eq!(settle.counts(), (1, 0));
    }

    #[test]
    fn the_delivery_count_header_counts_only_on_a_delivery_the_broker_says_is_again() {
        let (_, shared) = setup();
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(topology::DELIVERY_COUNT_HEADER),
            AMQPValue::LongLongInt(1),
        );
        let props = BasicProperties::default()
            .with_reply_to(ShortString::from("r"))
            .with_headers(headers);
        let decoded =
            |redelivered| match decode(&props, task_json("t1", "").as_bytes(), redelivered) {
                Intake::Task {
                    task,
                    attempt,
                    redelivered,
                    ..
                } => (task, attempt, redelivered),
                Intake::Bad { reason, .. } => panic!("a task: {reason}"),
            };
        // A first delivery: the header is the publisher's, a forgery.
        let (_, attempt, redelivered) = decoded(false);
        assert_eq!((attempt, redelivered), (1, false));
        // Delivered again by the broker: its count is the attempt.
        let (task, attempt, redelivered) = decoded(true);
        assert_eq!((attempt, redelivered), (2, true));
        let settle: Arc<dyn Settle> = Arc::new(MemorySettle::default());
        assert!(matches!(
            decide(&shared, &task, attempt, redelivered, "", None, &settle),
            Decision::Held
        ));
    }
}
