//! What the worker is told, one set of consumers per connection: its control
//! queue (cancel, drain, resume), the cancellation stream (replayed from its
//! start, so a cancel sent while this worker was down still stops the task when
//! it is delivered) and `krill.dead.notify` (answers tasks RabbitMQ
//! dead-lettered itself, so their submitters get a terminal result).
//!
//! ```text
//! Listener::open(shared, conn)                 declares and consumes the control queue
//! Listener::run(caught_up)                     until the control queue ends (the connection is re-made)
//!  ├─ control queue krill.control.worker.<id>  Control → apply(): cancel a task, drain, resume
//!  ├─ cancellations (stream, from "first")     Cancel → TaskState::cancel_by; the marker → caught up
//!  └─ dead notify                              answer_for() → Outbound::answer, then ack
//!     (these two failing is logged, and costs what they do, not the connection)
//! ```
//!
//! Every control message is checked first (`trust::control::decide`): signed
//! by a trusted key with the control right (or unsigned on an
//! `--allow-unsigned` pool) it is obeyed; a cancel signed by a key without it
//! stops only tasks that key signed; anything else is ignored with a warning,
//! a metric and an audit line (where it concerns this worker).
//!
//! [`apply`] and [`answer_for`] hold the decisions and do no I/O: they are
//! tested without a broker.

use std::sync::Arc;

use broker::amqp::{self, StreamFrom};
use broker::protocol::{Control, Status, TaskResult};
use broker::topology::{
    CANCEL_STREAM, CONTROL_EXCHANGE, CONTROL_QUEUE_PREFIX, DEAD_NOTIFY_QUEUE, POOL_QUEUE_PREFIX,
    REASON_HEADER,
};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio::sync::oneshot;

use crate::trust::control::{self as trust_control, Decision};
use crate::worker::Shared;

/// Stream consumers must bound their unacked deliveries.
const STREAM_PREFETCH: u16 = 500;
/// Unacked dead-notify deliveries at most.
const DEAD_NOTIFY_PREFETCH: u16 = 16;
/// The reason a cancelled task's result gives.
pub const CANCELLED_BY_REQUEST: &str = "cancelled by request (krill cancel)";
/// Task id prefix of the marker a worker publishes to learn it has caught up
/// with the cancellation stream (never a request).
pub const SYNC_MARKER_PREFIX: &str = "krill-sync.";

/// Why the control consumers stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("broker")]
    Amqp(#[from] lapin::Error),
    #[error("publishing the cancellation stream's marker")]
    Marker(#[source] crate::outbound::PublishError),
    #[error("the {0} consumer ended")]
    Ended(&'static str),
}

/// The control consumers of one connection.
#[derive(Debug)]
pub struct Listener {
    shared: Arc<Shared>,
    conn: Arc<Connection>,
    _channel: Channel,
    control: Consumer,
}

impl Listener {
    /// Declares and consumes this worker's own control queue (exclusive, gone
    /// with the connection): from here on no control message is missed.
    pub async fn open(shared: Arc<Shared>, conn: Arc<Connection>) -> Result<Self, ControlError> {
        let ch = conn.create_channel().await?;
        let queue = format!("{CONTROL_QUEUE_PREFIX}{}", shared.id);
        let tag = format!("krill-control.{}", shared.id);
        let control = broker::amqp::tap(&ch, &queue, &[(CONTROL_EXCHANGE, "#")], &tag)
            .await?
            .consumer;
        Ok(Listener {
            shared,
            conn,
            _channel: ch,
            control,
        })
    }

    /// Serves the three consumers until one fails or ends. `caught_up` is sent
    /// once every cancel published before this worker subscribed is known.
    pub async fn run(mut self, caught_up: oneshot::Sender<()>) -> Result<(), ControlError> {
        let shared = self.shared.clone();
        let conn = self.conn.clone();
        // The side consumers' failure (a broker without streams, say) costs
        // what they do, not the connection: they are logged and left.
        let side = async {
            tokio::join!(
                logged(
                    "cancellation stream",
                    cancellations(&shared, &conn, caught_up)
                ),
                logged("dead-letter notifications", dead_notify(&shared, &conn)),
            );
            std::future::pending::<()>().await
        };
        tokio::select! {
            r = async {
                while let Some(d) = self.control.next().await {
                    let d = d?;
                    apply(&shared, d.routing_key.as_str(), &d.properties, &d.data);
                }
                Err(ControlError::Ended("control queue"))
            } => r,
            () = side => Ok(()),
        }
    }
}

async fn logged(
    name: &'static str,
    fut: impl std::future::Future<Output = Result<(), ControlError>>,
) {
    if let Err(e) = fut.await {
        tracing::warn!(consumer = name, error = %crate::error::chain(&e), "side consumer ended");
    }
}

/// What a control message does on this worker, once its signature is
/// checked (no I/O: it changes the worker's state only).
pub fn apply(shared: &Shared, routing_key: &str, props: &BasicProperties, data: &[u8]) {
    let cmd = match serde_json::from_slice::<Control>(data) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring malformed control message");
            return;
        }
    };
    // This worker's own catch-up marker is not a request.
    if matches!(&cmd, Control::Cancel { task_id } if task_id.starts_with(SYNC_MARKER_PREFIX)) {
        return;
    }
    // Decided and recorded only when it concerns this worker: a drain/resume
    // addressed to it, a cancel of a task running here (a cancel of a task not
    // seen yet is remembered, and checked against its signer when it comes).
    let concerns = match &cmd {
        Control::Cancel { task_id } => shared.tasks.is_running(task_id),
        Control::Drain { worker } | Control::Resume { worker } => {
            Control::addresses(worker, &shared.id)
        }
    };
    if !concerns && !matches!(cmd, Control::Cancel { .. }) {
        return;
    }
    let (decision, key) = trust_control::decide(&shared.trust, routing_key, props, data, &cmd);
    if concerns {
        let metrics = &shared.run.metrics.trust;
        trust_control::record(&shared.trust, metrics, routing_key, &cmd, &decision, key);
    }
    let Some(by) = obeyed_by(decision) else {
        return;
    };
    match cmd {
        Control::Cancel { task_id } => {
            let here = shared.tasks.cancel_by(&task_id, CANCELLED_BY_REQUEST, by);
            shared.lines.wake();
            tracing::info!(%task_id, running_here = here, "cancel received");
        }
        // `send_replace`: the flag changes even while no claim loop watches it
        // (between connections, or before claims start).
        Control::Drain { .. } => {
            tracing::info!("drain requested");
            shared.draining.send_replace(true);
        }
        Control::Resume { .. } => {
            tracing::info!("resume requested");
            shared.draining.send_replace(false);
        }
    }
}

/// Who a decision obeys: `Some(None)` an operator (anything), `Some(Some(key))`
/// a key without the control right (its own tasks), `None` nobody.
fn obeyed_by(decision: Decision) -> Option<Option<broker::trust::PublicKey>> {
    match decision {
        Decision::Ignore(_) => None,
        Decision::Obey => Some(None),
        Decision::OwnTasks(key) => Some(Some(key)),
    }
}

/// Consumes every cancellation of the retention window, then live ones. Sends on
/// `caught_up` once it has read a marker it published after subscribing: from then
/// on every cancel sent before this worker connected is known.
async fn cancellations(
    shared: &Shared,
    conn: &Connection,
    caught_up: oneshot::Sender<()>,
) -> Result<(), ControlError> {
    let ch = conn.create_channel().await?;
    let mut consumer = amqp::consume_stream(
        &ch,
        CANCEL_STREAM,
        &format!("krill-cancels.{}", shared.id),
        STREAM_PREFETCH,
        StreamFrom::First,
    )
    .await?;
    let marker = format!(
        "{SYNC_MARKER_PREFIX}{}.{}",
        shared.id,
        uuid::Uuid::new_v4().simple()
    );
    shared
        .run
        .outbound
        .cancel_marker(&marker)
        .await
        .map_err(ControlError::Marker)?;
    let mut caught_up = Some(caught_up);
    while let Some(d) = consumer.next().await {
        let d = d?;
        match serde_json::from_slice::<Control>(&d.data) {
            Ok(Control::Cancel { task_id }) if task_id == marker => {
                if let Some(tx) = caught_up.take() {
                    let _ = tx.send(());
                }
            }
            Ok(Control::Cancel { task_id }) if task_id.starts_with(SYNC_MARKER_PREFIX) => {}
            Ok(cmd @ Control::Cancel { .. }) => {
                // Audited by the control queue's copy where it concerns a
                // running task (this stream replays a whole day at start).
                let rk = d.routing_key.as_str();
                let (decision, _) =
                    trust_control::decide(&shared.trust, rk, &d.properties, &d.data, &cmd);
                if let (Some(by), Control::Cancel { task_id }) = (obeyed_by(decision), cmd) {
                    let here = shared.tasks.cancel_by(&task_id, CANCELLED_BY_REQUEST, by);
                    shared.lines.wake();
                    if here {
                        tracing::info!(%task_id, "cancelled a running task");
                    }
                }
            }
            _ => {}
        }
        d.acker.ack(BasicAckOptions::default()).await?;
    }
    Err(ControlError::Ended("cancellation stream"))
}

/// Answers tasks that RabbitMQ dead-lettered (not the worker: those carry
/// `x-krill-reason` and were answered when they were dead-lettered).
async fn dead_notify(shared: &Shared, conn: &Connection) -> Result<(), ControlError> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(DEAD_NOTIFY_PREFETCH, BasicQosOptions::default())
        .await?;
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
        if notified(shared, &d.properties).await {
            d.acker.ack(BasicAckOptions::default()).await?;
        }
        // Else not acked: answered by whoever gets it next.
    }
    Err(ControlError::Ended("dead-letter notifications"))
}

/// Answers one dead-letter notification when it is owed an answer; true when
/// it may be acked (answered, or nothing was owed).
pub async fn notified(shared: &Shared, props: &BasicProperties) -> bool {
    let Some((reply_to, pool, result)) = answer_for(props, &shared.id) else {
        return true;
    };
    let (id, error) = (result.id.clone(), result.error.clone());
    if !shared.run.outbound.answer(result, &reply_to, &pool).await {
        return false;
    }
    tracing::warn!(task_id = %id, ?error, "answered a task RabbitMQ dead-lettered");
    true
}

/// The result owed for a message RabbitMQ dead-lettered from a pool queue, if
/// any: (reply queue, pool, result).
pub fn answer_for(props: &BasicProperties, worker: &str) -> Option<(String, String, TaskResult)> {
    let headers = props.headers().as_ref()?;
    if headers.contains_key(REASON_HEADER) {
        return None;
    }
    let reply_to = props.reply_to().as_ref()?.as_str().to_string();
    let id = props.message_id().as_ref()?.as_str().to_string();
    let broker::amqp::Death {
        reason,
        queue,
        count,
    } = broker::amqp::first_death(headers)?;
    let pool = queue.strip_prefix(POOL_QUEUE_PREFIX)?.to_string();
    let mut result = TaskResult::new(id, Status::WorkerLost);
    result.worker = Some(worker.to_string());
    result.error = Some(format!(
        "dead-lettered by RabbitMQ from {queue} ({reason}) after {count} deliveries: \
         the task kept losing its worker; it is kept in krill.dead (see `krill dead list`)"
    ));
    Some((reply_to, pool, result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cancel::Cancel;
    use crate::outbound::{MemorySink, Outgoing};
    use crate::state::Running;
    use lapin::types::FieldArray;
    use lapin::types::{AMQPValue, LongString};

    fn setup() -> (Arc<MemorySink>, Arc<Shared>) {
        let sink = Arc::new(MemorySink::default());
        let shared = crate::worker::for_tests(sink.clone());
        (sink, shared)
    }

    fn running(shared: &Shared, id: &str) -> Cancel {
        let cancel = Cancel::child_of(&shared.root);
        let settle: Arc<dyn crate::intake::Settle> =
            Arc::new(crate::intake::MemorySettle::default());
        shared.tasks.start(
            id,
            Running {
                started_at: chrono::Utc::now(),
                sandbox: broker::protocol::SandboxKind::Process,
                submitter: None,
                signer: None,
                cancel: cancel.clone(),
                settle: Arc::new(std::sync::Mutex::new(settle)),
            },
        );
        cancel
    }

    /// An unsigned control message, as an `--allow-unsigned` pool obeys it.
    fn send(shared: &Shared, data: &[u8]) {
        apply(shared, "test", &BasicProperties::default(), data);
    }

    fn json(c: &Control) -> Vec<u8> {
        serde_json::to_vec(c).expect("json")
    }

    #[test]
    fn cancel_stops_a_running_task_with_its_reason_and_is_remembered_for_later_ones() {
        let (sink, shared) = setup();
        let cancel = running(&shared, "t1");
        send(
            &shared,
            &json(&Control::Cancel {
                task_id: "t1".into(),
            }),
        );
        assert!(cancel.token().is_cancelled());
        assert_eq!(cancel.reason().as_deref(), Some(CANCELLED_BY_REQUEST));
        send(
            &shared,
            &json(&Control::Cancel {
                task_id: "t2".into(),
            }),
        );
        assert!(
            shared.tasks.is_cancelled("t2", None),
            "a queued task is cancelled when it comes"
        );
        assert!(sink.sent().is_empty(), "control sends nothing itself");
    }

    #[test]
    fn drain_and_resume_obey_only_what_addresses_this_worker() {
        let (_, shared) = setup();
        send(
            &shared,
            &json(&Control::Drain {
                worker: Some("someone-else".into()),
            }),
        );
        assert!(!shared.is_draining());
        send(
            &shared,
            &json(&Control::Drain {
                worker: Some("w-test".into()),
            }),
        );
        assert!(shared.is_draining());
        send(
            &shared,
            &json(&Control::Resume {
                worker: Some("someone-else".into()),
            }),
        );
        assert!(shared.is_draining());
        send(&shared, &json(&Control::Resume { worker: None }));
        assert!(!shared.is_draining());
        send(&shared, &json(&Control::Drain { worker: None }));
        assert!(shared.is_draining(), "a drain of all workers");
    }

    #[test]
    fn malformed_control_messages_change_nothing() {
        let (_, shared) = setup();
        let cancel = running(&shared, "t1");
        send(&shared, br#"{"action":"cancel","task_id":"t1","extra":1}"#);
        send(&shared, b"\xff");
        assert!(!cancel.token().is_cancelled());
        assert!(!shared.is_draining());
    }

    /// A pool trusting `alice` (no control right) and `ops` (control).
    fn trusted() -> (
        Arc<Shared>,
        broker::trust::Identity,
        broker::trust::Identity,
    ) {
        use broker::trust::{Identity, TrustedKeys};
        let alice = Identity::generate("alice").expect("key");
        let ops = Identity::generate("ops").expect("key");
        let mut trust = crate::trust::Trust::open("w-test", "p-test");
        let lines = format!("{}\n{} control\n", alice.public_line(), ops.public_line());
        trust.policy.trusted = TrustedKeys::parse(&lines).expect("keys");
        trust.policy.allow_unsigned = false;
        let shared = crate::worker::for_tests_with(Arc::new(MemorySink::default()), trust);
        (shared, alice, ops)
    }

    /// `c` on routing key `rk`, signed by `by` (unsigned without).
    fn signed(shared: &Shared, by: Option<&broker::trust::Identity>, rk: &str, c: &Control) {
        let body = json(c);
        let creds = broker::trust::Credentials::new(by.cloned(), None);
        let headers = creds.control_headers(rk, &body, std::time::Duration::from_secs(60));
        let props = BasicProperties::default().with_headers(headers);
        apply(shared, rk, &props, &body);
    }

    #[test]
    fn on_a_trusted_pool_only_a_control_key_drains_and_only_once_per_message() {
        let (shared, alice, ops) = trusted();
        let drain = Control::Drain { worker: None };
        signed(&shared, None, "drain.all", &drain);
        assert!(!shared.is_draining(), "unsigned: ignored");
        signed(&shared, Some(&alice), "drain.all", &drain);
        assert!(!shared.is_draining(), "no control right: ignored");
        let body = json(&drain);
        let creds = broker::trust::Credentials::new(Some(ops.clone()), None);
        let minute = std::time::Duration::from_secs(60);
        let other = BasicProperties::default().with_headers(creds.control_headers(
            "drain.other",
            &body,
            minute,
        ));
        apply(&shared, "drain.all", &other, &body);
        assert!(!shared.is_draining(), "signed for another routing key");
        let props = BasicProperties::default().with_headers(creds.control_headers(
            "drain.all",
            &body,
            minute,
        ));
        apply(&shared, "drain.all", &props, &body);
        assert!(shared.is_draining(), "the control key is obeyed");
        shared.draining.send_replace(false);
        apply(&shared, "drain.all", &props, &body);
        assert!(
            !shared.is_draining(),
            "the same signed message again is a replay"
        );
        let ignored = shared.run.metrics.encode();
        assert!(
            ignored.contains("krill_control_ignored_total{reason=\"not_allowed:control\"} 1"),
            "{ignored}"
        );
    }

    #[test]
    fn a_cancel_signed_without_the_control_right_stops_only_the_signers_own_tasks() {
        let (shared, alice, ops) = trusted();
        let theirs = running(&shared, "t1");
        let cancel = |id: &str| Control::Cancel { task_id: id.into() };
        signed(&shared, None, "cancel.t1", &cancel("t1"));
        assert!(!theirs.token().is_cancelled(), "unsigned: ignored");
        signed(&shared, Some(&alice), "cancel.t1", &cancel("t1"));
        assert!(!theirs.token().is_cancelled(), "not alice's task");
        assert!(!shared.tasks.is_cancelled("t1", None));
        assert!(shared.tasks.is_cancelled("t1", Some(&alice.public())));
        signed(&shared, Some(&ops), "cancel.t1", &cancel("t1"));
        assert!(theirs.token().is_cancelled(), "the control key's cancel");
    }

    fn dead_props(reason: &str, queue: &str, krill_reason: bool) -> BasicProperties {
        let mut death = FieldTable::default();
        death.insert(
            ShortString::from("reason"),
            AMQPValue::LongString(LongString::from(reason)),
        );
        death.insert(
            ShortString::from("queue"),
            AMQPValue::LongString(LongString::from(queue)),
        );
        death.insert(ShortString::from("count"), AMQPValue::LongLongInt(5));
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("x-death"),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        if krill_reason {
            headers.insert(
                ShortString::from(REASON_HEADER),
                AMQPValue::LongString(LongString::from("invalid task message")),
            );
        }
        BasicProperties::default()
            .with_headers(headers)
            .with_reply_to(ShortString::from("krill.reply.t1"))
            .with_message_id(ShortString::from("t1"))
    }

    #[tokio::test]
    async fn a_task_rabbitmq_dead_lettered_from_a_pool_queue_is_answered_worker_lost() {
        let (sink, shared) = setup();
        assert!(
            notified(
                &shared,
                &dead_props("delivery_limit", "krill.pool.p", false)
            )
            .await
        );
        let sent = sink.sent();
        let [Outgoing::Answer { result, reply_to }, Outgoing::History { result: copy, pool }] =
            sent.as_slice()
        else {
            panic!("one answer and its history copy: {sent:?}");
        };
        assert_eq!(pool, "p", "the pool it was dead-lettered from");
        assert_eq!(copy.decode_history(), result.decode());
        assert_eq!(reply_to, "krill.reply.t1");
        assert_eq!(result.status, Status::WorkerLost);
        let error = result.error.as_deref().unwrap_or("");
        assert!(
            error.contains("krill.pool.p (delivery_limit) after 5 deliveries"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn what_the_worker_dead_lettered_or_other_queues_dropped_is_not_answered_again() {
        let (sink, shared) = setup();
        assert!(notified(&shared, &dead_props("rejected", "krill.pool.p", true)).await);
        assert!(notified(&shared, &dead_props("expired", "krill.reply.x", false)).await);
        assert!(sink.sent().is_empty());
    }

    #[tokio::test]
    async fn an_answer_that_cannot_be_published_is_left_unacked() {
        let (sink, shared) = setup();
        sink.refuse();
        assert!(
            !notified(
                &shared,
                &dead_props("delivery_limit", "krill.pool.p", false)
            )
            .await
        );
    }
}
