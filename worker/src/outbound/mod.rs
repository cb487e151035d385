//! Everything the worker sends, built and published in one place: results,
//! task events, live log chunks, heartbeats, dead letters, answers for tasks
//! RabbitMQ dead-lettered, and the cancellation stream's catch-up marker.
//!
//! ```text
//! consumer, runner (log pump), control, daemon
//!        │  typed calls: result(), event(), log(), heartbeat(), dead_letter(), …
//!        ▼
//!   Outbound (this module: builds the protocol messages; what changes a
//!        │    result before it leaves sits in `finish_result`: stamp.rs seals
//!        │    sensitive outputs to the submitter, names the signer)
//!        ▼  one Outgoing value per message
//!   dyn Sink ── AmqpSink (amqp.rs: the broker's names, properties, confirms,
//!            │             retries across reconnects; the only user of lapin here)
//!            └─ MemorySink (memory.rs: records what was sent; tests)
//! ```
//!
//! Every final result also goes, as it left (masked, sealed), to
//! `krill.results` (routing key = pool) for history recorders such as the
//! gateway: [`Outbound::history`], confirmed and published side by side with
//! the reply, cut to [`HISTORY_BUDGET`] so a big output is not kept twice.
//!
//! A final result is encoded once, by [`Outbound::finish_result`]: a
//! [`Ready`] holds its JSON (and its history copy's), and no longer its
//! output text; the publish, its retries and the recent-results cache share
//! those bytes.
//!
//! Results, dead letters, answers and the marker are confirmed publishes: a
//! sink retries them across reconnects until the broker confirms, or the
//! worker gives up at shutdown. Events, log chunks and heartbeats are best
//! effort: dropped while there is no connection.
//!
//! Every result fits: [`Outbound::finish_result`] cuts it to the worker's
//! result budget ([`budget`], well below the broker's `max_message_size`).
//! A result the broker still refuses for good (406: too large, invalid) is not
//! retried: [`Outbound::result`] sends the small result of [`budget::small`]
//! instead. Whether results go out at all is tracked in [`Health`] by the sink:
//! a worker that cannot publish them for longer than a bound is degraded.

pub mod amqp;
pub mod budget;
pub mod memory;
pub mod ready;
pub mod stamp;

use std::fmt;
use std::sync::Arc;

use broker::protocol::{
    Blocked, Heartbeat, LineRecord, LineStep, LogChunk, TaskEvent, TaskResult, TaskState as State,
    PROTOCOL_VERSION,
};
use chrono::Utc;
use futures_util::future::BoxFuture;
use lapin::BasicProperties;

use crate::health::Health;
use crate::snapshot::Snapshot;

pub use amqp::{AmqpSink, Channels};
pub use memory::MemorySink;
pub use ready::Ready;
pub use stamp::Stamp;

/// How long a dead letter may take to be confirmed before the message is
/// rejected instead (RabbitMQ then dead-letters it itself, without the reason).
pub const DEAD_LETTER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// One message leaving the worker, before it is put on the wire.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A task's result, to the queue named in its `reply_to` (confirmed, mandatory).
    Result {
        result: Arc<Ready>,
        reply_to: String,
    },
    /// The history copy of a final result ([`Ready::history_body`]), to
    /// `krill.results` with the pool as routing key (confirmed, not
    /// mandatory: nothing bound, nothing kept).
    History { result: Arc<Ready>, pool: String },
    /// The result owed for a task RabbitMQ dead-lettered itself (confirmed, mandatory).
    Answer {
        result: Arc<Ready>,
        reply_to: String,
    },
    /// A task event (best effort).
    Event(TaskEvent),
    /// A live log chunk (best effort).
    Log(LogChunk),
    /// This worker's heartbeat (best effort).
    Heartbeat(Box<Heartbeat>),
    /// A copy of a message that is not a task this worker can take, with the
    /// reason (confirmed).
    DeadLetter(Box<DeadLetter>),
    /// A cancel of a task id no task has, on the cancellation stream: reading
    /// it back tells that everything before it was read (confirmed).
    CancelMarker(String),
    /// A claim of a signed task, appended to the pool's claims stream
    /// (confirmed, mandatory: a missing stream is unroutable).
    Claim { stream: String, body: Vec<u8> },
    /// A record of the line log of concurrency keys (confirmed).
    Line(LineRecord),
}

/// A message to dead-letter, as it was delivered, and why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub data: Vec<u8>,
    /// The delivery's properties (its headers are kept; the reason is added).
    pub props: BasicProperties,
    pub reason: String,
    pub worker: String,
    pub pool: String,
    /// More headers (`x-krill-detail`, `x-krill-submitter` of a trust refusal).
    pub extra: Vec<(String, String)>,
}

/// What became of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The broker confirmed it.
    Confirmed,
    /// Nothing was bound to the routing key (a reply queue that expired or was deleted).
    Unroutable,
    /// Sent without confirmation (best effort).
    Sent,
    /// Not sent: no connection right now (best effort).
    Dropped,
}

/// Why a publish did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("gave up publishing: the worker is stopping and the broker is unreachable")]
    GaveUp,
    /// The broker refused this message for good (too large, invalid): trying
    /// it again would fail again.
    #[error("the broker refused the message: {0}")]
    Refused(String),
    #[error("cannot serialize the message")]
    Encode(#[source] serde_json::Error),
    #[error("the line log stream does not exist")]
    NoLineLog,
}

/// Where outgoing messages go: the broker ([`AmqpSink`]), or memory in tests
/// ([`MemorySink`]).
pub trait Sink: Send + Sync + fmt::Debug {
    /// Publishes `msg`: confirmed ones are retried until the broker confirms
    /// or the worker gives up; best-effort ones are sent once or dropped.
    fn send(&self, msg: Outgoing) -> BoxFuture<'_, Result<Published, PublishError>>;

    /// Whether messages can go out right now (a live connection).
    fn connected(&self) -> bool;
}

/// The result budget of an [`Outbound`] made with [`Outbound::new`]: what
/// RabbitMQ's default `max_message_size` leaves (see `Config::result_budget`).
pub const DEFAULT_RESULT_BUDGET: usize = 120 << 20;

/// Most serialized bytes of a result's history copy (on `krill.results`):
/// recorders keep a capped output, so a big result does not travel twice
/// whole. A result within it is sent as it is (no copy is made).
pub const HISTORY_BUDGET: usize = 1 << 20;

/// How long the history copy may still take once the result itself is
/// confirmed (they are published side by side), before the task is acked
/// without it: the finished event still carries the status to recorders.
pub const HISTORY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The worker's handle for sending (cheap to clone).
#[derive(Clone)]
pub struct Outbound {
    sink: Arc<dyn Sink>,
    worker: String,
    pool: String,
    /// Most serialized bytes one result may take.
    budget: usize,
}

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbound")
            .field("sink", &self.sink)
            .field("worker", &self.worker)
            .field("pool", &self.pool)
            .field("budget", &self.budget)
            .finish()
    }
}

impl Outbound {
    /// Sends through `sink` on behalf of worker `worker` serving `pool`.
    pub fn new(sink: Arc<dyn Sink>, worker: &str, pool: &str) -> Self {
        Outbound {
            sink,
            worker: worker.to_string(),
            pool: pool.to_string(),
            budget: DEFAULT_RESULT_BUDGET,
        }
    }

    /// The same, with results cut to at most `bytes` serialized bytes.
    pub fn with_result_budget(mut self, bytes: u64) -> Self {
        self.budget = usize::try_from(bytes).unwrap_or(usize::MAX);
        self
    }

    /// Most serialized bytes one result may take.
    pub fn result_budget(&self) -> usize {
        self.budget
    }

    /// Whether messages can go out right now.
    pub fn connected(&self) -> bool {
        self.sink.connected()
    }

    /// The last step before a result leaves the worker: what is returned is
    /// what is remembered for redeliveries, published and described in the
    /// finished event. Whatever must change a result on its way out belongs
    /// here, in this order: first the task's [`Stamp`] (its signer's name, the
    /// trust warnings, and every sensitive value sealed to the submitter: only
    /// ciphertext leaves), then the size budget — the result is cut to it in
    /// the order [`budget`] states, counting the sealed values as they leave
    /// (sealing makes a value larger, so cutting first could leave a result
    /// over the budget; sealed values are dropped whole, never cut).
    pub fn finish_result(&self, mut result: TaskResult, stamp: &Stamp) -> Arc<Ready> {
        stamp.apply(&mut result);
        match budget::fit(&mut result, self.budget) {
            Ok(None) => {}
            Ok(Some(warning)) => {
                tracing::warn!(task_id = %result.id, %warning, "result cut to its size budget");
            }
            Err(total) => {
                let why = format!(
                    "it would take {total} bytes, over the worker's result size limit of {} \
                     bytes even without its output",
                    self.budget
                );
                tracing::error!(task_id = %result.id, reason = %why, "result replaced by a small one");
                result = budget::small(&result, &why);
                // The small one carries the signer and the trust warnings too.
                stamp.apply(&mut result);
            }
        }
        // Encoded once, here: the output text is in the bodies only from now on.
        Arc::new(Ready::encode(result, HISTORY_BUDGET))
    }

    /// Publishes a result to `reply_to`, confirmed. True when the task may be
    /// acked: confirmed, or its reply queue is gone (the result is then only in
    /// the finished event); false when the worker gave up (shutting down with the
    /// broker unreachable): the task must not be acked.
    /// The history copy ([`Outbound::history`]) goes out at the same time.
    pub async fn result(&self, result: &Arc<Ready>, reply_to: &str) -> bool {
        let reply = self.reply(result, reply_to);
        let history = self.history(result);
        tokio::pin!(reply, history);
        let (ok, recorded) = tokio::select! {
            ok = &mut reply => (ok, false),
            () = &mut history => (reply.await, true),
        };
        if !recorded && tokio::time::timeout(HISTORY_WAIT, history).await.is_err() {
            tracing::warn!(task_id = %result.id,
                "the history copy of the result was not confirmed in time; recorders have only the finished event");
        }
        ok
    }

    /// Publishes an answer to a message that is not the task whose id it
    /// names (`rejected`) to `reply_to` only: no history copy, which would
    /// stand in for that task's own result. True as [`Outbound::result`].
    pub async fn refusal(&self, result: &Arc<Ready>, reply_to: &str) -> bool {
        self.reply(result, reply_to).await
    }

    /// Publishes the history copy of a final result to `krill.results`
    /// (routing key = pool), confirmed: the same masked and sealed result that
    /// goes to the reply queue, cut to [`HISTORY_BUDGET`] when bigger (cut and
    /// encoded with the result, [`Ready::encode`]).
    pub async fn history(&self, result: &Arc<Ready>) {
        let msg = Outgoing::History {
            result: result.clone(),
            pool: self.pool.clone(),
        };
        if let Err(e) = self.sink.send(msg).await {
            tracing::warn!(task_id = %result.id, error = %e, "history copy of the result not published");
        }
    }

    /// Publishes a result to its reply queue (see [`Outbound::result`]).
    async fn reply(&self, result: &Arc<Ready>, reply_to: &str) -> bool {
        let msg = Outgoing::Result {
            result: result.clone(),
            reply_to: reply_to.to_string(),
        };
        let mut sent = self.sink.send(msg).await;
        if let Err(PublishError::Refused(why)) = &sent {
            // Not retried: the same message would be refused again. A small
            // result that says what happened goes instead.
            tracing::error!(task_id = %result.id, reason = %why,
                "the broker refused the result for good; sending a small one instead");
            let small = budget::small(result, &format!("the broker refused it ({why})"));
            let msg = Outgoing::Result {
                result: Arc::new(Ready::encode(small, HISTORY_BUDGET)),
                reply_to: reply_to.to_string(),
            };
            sent = self.sink.send(msg).await;
        }
        match sent {
            Ok(Published::Unroutable) => {
                tracing::warn!(task_id = %result.id, reply_to,
                    "reply queue is gone; the result is only in the finished event");
                true
            }
            Ok(_) => true,
            Err(PublishError::Refused(why)) => {
                // Nothing smaller can be sent; do not hold the task for ever.
                tracing::error!(task_id = %result.id, reason = %why,
                    "even the small result was refused; the outcome is only in the finished event");
                true
            }
            Err(e) => {
                tracing::error!(task_id = %result.id, error = %e, "result not published");
                false
            }
        }
    }

    /// Publishes the result owed for a task RabbitMQ dead-lettered; true once confirmed.
    /// Its history copy goes out beside it, to `pool` (the task's, which
    /// need not be this worker's).
    pub async fn answer(&self, result: TaskResult, reply_to: &str, pool: &str) -> bool {
        let result = Arc::new(Ready::encode(result, HISTORY_BUDGET));
        let copy = Outgoing::History {
            result: result.clone(),
            pool: pool.to_string(),
        };
        let msg = Outgoing::Answer {
            result,
            reply_to: reply_to.to_string(),
        };
        let (sent, _) = tokio::join!(
            self.sink.send(msg),
            tokio::time::timeout(HISTORY_WAIT, self.sink.send(copy))
        );
        sent.is_ok()
    }

    /// A task event (best effort: events are for observers). `result` is the
    /// task's result for `finished` events.
    pub async fn event(
        &self,
        task_id: &str,
        state: State,
        result: Option<&TaskResult>,
        attempt: u32,
    ) {
        let submitter = result.and_then(|r| r.submitter.clone());
        self.event_by(task_id, state, result, attempt, submitter)
            .await;
    }

    /// [`Outbound::event`] naming the key that signed the task (`submitter`).
    pub async fn event_by(
        &self,
        task_id: &str,
        state: State,
        result: Option<&TaskResult>,
        attempt: u32,
        submitter: Option<String>,
    ) {
        let ev = TaskEvent {
            version: PROTOCOL_VERSION,
            task_id: task_id.to_string(),
            pool: self.pool.clone(),
            state,
            worker: self.worker.clone(),
            submitter,
            status: result.map(|r| r.status),
            error: result.and_then(|r| r.error.clone()),
            attempt,
            at: Utc::now(),
            blocked: None,
        };
        self.best_effort(Outgoing::Event(ev)).await;
    }

    /// A `blocked` event: the task waits in its key's line (best effort).
    pub async fn blocked(&self, task_id: &str, blocked: Blocked, submitter: Option<String>) {
        let ev = TaskEvent {
            version: PROTOCOL_VERSION,
            task_id: task_id.to_string(),
            pool: self.pool.clone(),
            state: State::Blocked,
            worker: self.worker.clone(),
            status: None,
            error: None,
            attempt: 1,
            at: Utc::now(),
            submitter,
            blocked: Some(blocked),
        };
        self.best_effort(Outgoing::Event(ev)).await;
    }

    /// A record of the line log, confirmed (retried across reconnects until the
    /// broker takes it, or the worker gives up).
    pub async fn line(&self, key: &str, task_id: &str, step: LineStep) -> Result<(), PublishError> {
        let rec = LineRecord {
            version: PROTOCOL_VERSION,
            pool: self.pool.clone(),
            key: key.to_string(),
            task_id: task_id.to_string(),
            step,
            worker: self.worker.clone(),
            at: Utc::now(),
        };
        match self.sink.send(Outgoing::Line(rec)).await? {
            Published::Unroutable => Err(PublishError::NoLineLog),
            _ => Ok(()),
        }
    }

    /// A live log chunk (best effort: followers see a gap in `seq`).
    pub async fn log(&self, chunk: LogChunk) {
        self.best_effort(Outgoing::Log(chunk)).await;
    }

    /// The heartbeat of the worker as `now` describes it (best effort).
    /// `stopping`: the last one, sent on a clean exit.
    pub async fn heartbeat(&self, now: &Snapshot, stopping: bool) {
        let hb = Heartbeat {
            version: PROTOCOL_VERSION,
            worker: now.worker.clone(),
            host: now.host.clone(),
            pool: now.pool.clone(),
            krill_version: env!("CARGO_PKG_VERSION").to_string(),
            slots_total: now.slots_total,
            slots_free: now.slots_free,
            draining: now.draining,
            running: now.running.clone(),
            uptime_secs: now.uptime.as_secs(),
            interval_secs: now.heartbeat_interval.as_secs().max(1),
            stopping,
            degraded: now.degraded.clone(),
            sent_at: Utc::now(),
            lines: now.lines.clone(),
            broker: now.broker.clone(),
            asking: now.asking.clone(),
            disowned: now.disowned.clone(),
            process: Some(now.process.clone()),
        };
        self.best_effort(Outgoing::Heartbeat(Box::new(hb))).await;
    }

    /// Sends a copy of a message to the dead letters with `reason`; true once
    /// confirmed within [`DEAD_LETTER_TIMEOUT`].
    pub async fn dead_letter(&self, data: &[u8], props: &BasicProperties, reason: &str) -> bool {
        self.dead_letter_with(data, props, reason, Vec::new()).await
    }

    /// [`Outbound::dead_letter`] with more headers.
    pub async fn dead_letter_with(
        &self,
        data: &[u8],
        props: &BasicProperties,
        reason: &str,
        extra: Vec<(String, String)>,
    ) -> bool {
        let msg = Outgoing::DeadLetter(Box::new(DeadLetter {
            data: data.to_vec(),
            props: props.clone(),
            reason: reason.to_string(),
            worker: self.worker.clone(),
            pool: self.pool.clone(),
            extra,
        }));
        matches!(
            tokio::time::timeout(DEAD_LETTER_TIMEOUT, self.sink.send(msg)).await,
            Ok(Ok(_))
        )
    }

    /// Publishes the cancellation stream's catch-up marker, confirmed.
    pub async fn cancel_marker(&self, marker: &str) -> Result<(), PublishError> {
        self.sink
            .send(Outgoing::CancelMarker(marker.to_string()))
            .await
            .map(|_| ())
    }

    /// Appends a claim to `stream` (the pool's claims stream), confirmed.
    pub async fn claim(&self, stream: &str, body: Vec<u8>) -> Result<Published, PublishError> {
        self.sink
            .send(Outgoing::Claim {
                stream: stream.to_string(),
                body,
            })
            .await
    }

    async fn best_effort(&self, msg: Outgoing) {
        if let Err(e) = self.sink.send(msg).await {
            tracing::debug!(error = %e, "best-effort message not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::protocol::Status;

    fn outbound(sink: &Arc<MemorySink>, budget: u64) -> Outbound {
        Outbound::new(sink.clone(), "w1", "p1").with_result_budget(budget)
    }

    #[tokio::test]
    async fn a_result_over_the_budget_leaves_cut_to_it() {
        let sink = Arc::new(MemorySink::default());
        let out = outbound(&sink, 256 << 10);
        let mut r = TaskResult::new("t1", Status::Succeeded);
        r.stdout = "\u{0}".repeat(1 << 20);
        let r = out.finish_result(r, &Stamp::default());
        assert!(r.body().len() <= 256 << 10);
        assert!(r.truncated);
        assert!(out.result(&r, "q").await);
        assert_eq!(sink.results().len(), 1);
    }

    #[tokio::test]
    async fn every_result_has_a_history_copy_capped_to_its_budget() {
        let sink = Arc::new(MemorySink::default());
        let out = outbound(&sink, 8 << 20);
        let mut r = TaskResult::new("t1", Status::Succeeded);
        r.stdout = "y".repeat(3 << 20);
        let r = out.finish_result(r, &Stamp::default());
        assert!(!r.truncated, "the reply keeps it whole");
        assert!(out.result(&r, "q").await);
        let history = sink.history();
        assert_eq!(history.len(), 1);
        let (copy, pool) = &history[0];
        assert_eq!(pool, "p1");
        assert_eq!(copy.status, Status::Succeeded);
        assert!(copy.truncated && copy.stdout.len() < HISTORY_BUDGET);
        assert!(serde_json::to_vec(copy).expect("json").len() <= HISTORY_BUDGET);
        assert_eq!(sink.results()[0].0.stdout.len(), 3 << 20);
        // A small one goes as it is.
        let small = out.finish_result(TaskResult::new("t2", Status::Failed), &Stamp::default());
        assert!(out.result(&small, "q").await);
        assert_eq!(sink.history()[1].0, small.decode());
    }

    #[tokio::test]
    async fn a_result_the_broker_refuses_for_good_becomes_a_small_one() {
        let sink = Arc::new(MemorySink::default());
        // The worker was told the broker takes more than it does.
        sink.refuse_results_over(64 << 10);
        let out = outbound(&sink, 8 << 20);
        let mut r = TaskResult::new("t1", Status::Succeeded);
        r.stdout = "x".repeat(1 << 20);
        let r = out.finish_result(r, &Stamp::default());
        assert!(out.result(&r, "q").await, "the task may be acked");
        let sent = sink.results();
        assert_eq!(sent.len(), 1, "only the small one went out");
        let (small, reply_to) = &sent[0];
        assert_eq!(reply_to, "q");
        assert_eq!(small.status, Status::SandboxError);
        assert!(small.stdout.is_empty() && small.truncated);
        let e = small.error.as_deref().expect("error");
        assert!(
            e.contains("ended succeeded") && e.contains("refused"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_result_whose_fixed_part_is_over_the_budget_is_replaced() {
        let sink = Arc::new(MemorySink::default());
        let out = outbound(&sink, 16 << 10);
        let mut r = TaskResult::new("t1", Status::Failed);
        r.error = Some("e".repeat(64 << 10));
        r.sandbox_id = Some("s".repeat(32 << 10));
        let stamp = Stamp {
            submitter: Some("alice".into()),
            warnings: vec!["an unsigned task on an open pool".into()],
            reply_key: None,
        };
        let r = out.finish_result(r, &stamp);
        assert_eq!(r.status, Status::SandboxError);
        assert!(r.body().len() <= 16 << 10);
        assert_eq!(
            r.submitter.as_deref(),
            Some("alice"),
            "the small one is stamped too"
        );
        assert_eq!(r.warnings, stamp.warnings);
    }

    /// Sealing makes a value larger: the budget counts it sealed. A value that
    /// fits in clear but not sealed is dropped whole (never cut: a cut
    /// ciphertext opens to nothing), and what leaves is within the budget.
    #[tokio::test]
    async fn sealed_values_are_counted_as_they_leave() {
        use broker::protocol::OutputVar;
        let sink = Arc::new(MemorySink::default());
        let budget = 130 << 10;
        let out = outbound(&sink, budget);
        let id = broker::trust::Identity::generate("alice").expect("key");
        let stamp = Stamp {
            submitter: Some("alice".into()),
            warnings: Vec::new(),
            reply_key: Some(id.reply_public().to_b64()),
        };
        let mut r = TaskResult::new("t1", Status::Succeeded);
        r.outputs.push(OutputVar {
            name: "token".into(),
            value: "v".repeat(100 << 10),
            sensitive: true,
            sealed: None,
        });
        assert!(
            serde_json::to_vec(&r).expect("json").len() < budget as usize,
            "it fits in clear"
        );
        let r = out.finish_result(r, &stamp);
        assert!(r.body().len() <= budget as usize);
        assert!(r.outputs.is_empty(), "dropped whole: {:?}", r.outputs.len());
        let warning = r.warnings.last().expect("the budget's warning");
        assert!(warning.contains("`token`"), "{warning}");
        assert!(!String::from_utf8_lossy(r.body()).contains("vvvv"));
    }
}
