//! Every exchange, queue and argument name of the queue contract, and `declare()`:
//! the single source of truth for what exists on the broker.
//!
//! | name | kind | purpose |
//! |---|---|---|
//! | `krill.tasks` | direct exchange | routing key = pool name |
//! | `krill.pool.<pool>` | quorum queue | delivery limit, DLX `krill.dead`, reject-publish, at-least-once dead-lettering |
//! | `krill.dead` | fanout exchange + quorum queue | dead letters, reason in the `x-krill-reason` header |
//! | `krill.reply.<task id>` | classic durable queue, expires | one task's result, for `krill wait` |
//! | `krill.reply.client.<uuid>` | exclusive queue | results for one long-lived client |
//! | `krill.events` | topic exchange | `task.<pool>.<state>`, `worker.<id>.heartbeat` |
//! | `krill.logs` | topic exchange | live log chunks, routing key = task id |
//! | `krill.control` | topic exchange | `cancel.<task id>`, `drain.<worker>`, `resume.<worker>` |
//! | `krill.heartbeats` | stream queue, bound to `krill.events` with `worker.*.heartbeat` | recent heartbeats, so `krill status` sees workers that went silent |
//! | `krill.dead.notify` | quorum queue on `krill.dead` | workers answer tasks RabbitMQ dead-lettered (delivery limit) |
//! | `krill.cancellations` | stream on `krill.control` (`cancel.#`) | every cancel of the last 24 h, replayed by each worker at start |
//! | `krill.claims.<pool>` | stream, published to directly | claims of signed tasks: the first claim of a message in stream order runs it (replay protection) |
//! | `krill.line.<pool>.<key>` | classic durable queue, single active consumer | a concurrency key's line: its tasks in submit order |
//! | `krill.keys` | stream | key announcements: which lines exist (every worker of the pool consumes each) |
//! | `krill.lines.log` | stream | start/done records of keyed tasks: start evidence for redeliveries, holders after a restart |

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

/// Direct exchange tasks are published to; the routing key is the pool name.
pub const TASKS_EXCHANGE: &str = "krill.tasks";
/// Fanout exchange (and queue of the same name) for dead letters.
pub const DEAD_EXCHANGE: &str = "krill.dead";
/// Queue holding dead letters.
pub const DEAD_QUEUE: &str = "krill.dead";
/// Topic exchange for task events and worker heartbeats.
pub const EVENTS_EXCHANGE: &str = "krill.events";
/// Topic exchange for live log chunks (routing key = task id).
pub const LOGS_EXCHANGE: &str = "krill.logs";
/// Topic exchange, routing key = pool: a copy of every final result (the
/// worker's masked, sealed, history-capped form) for recorders such as the
/// gateway's history queue. Nothing bound: the broker drops it.
pub const RESULTS_EXCHANGE: &str = "krill.results";
/// Topic exchange for control commands.
pub const CONTROL_EXCHANGE: &str = "krill.control";
/// Queue on `krill.dead` that workers consume to answer tasks RabbitMQ dead-lettered
/// itself (delivery limit reached), so their submitters get a terminal result.
pub const DEAD_NOTIFY_QUEUE: &str = "krill.dead.notify";
/// Stream of cancellations (bound to `krill.control` with `cancel.#`), kept for
/// [`CANCEL_RETENTION`]; a worker replays it at start, so a queued task cancelled
/// while no worker (or another worker) was running is still never started.
pub const CANCEL_STREAM: &str = "krill.cancellations";
/// How long cancellations are kept in [`CANCEL_STREAM`] (RabbitMQ `x-max-age`).
pub const CANCEL_RETENTION: &str = "1D";
/// Prefix of pool queues.
pub const POOL_QUEUE_PREFIX: &str = "krill.pool.";
/// Prefix of per-task reply queues.
pub const REPLY_QUEUE_PREFIX: &str = "krill.reply.";
/// Prefix of per-worker control queues.
pub const CONTROL_QUEUE_PREFIX: &str = "krill.control.worker.";
/// The pool used when none is named.
pub const DEFAULT_POOL: &str = "default";
/// How many times a task may be delivered before RabbitMQ dead-letters it
/// (a task that keeps killing workers ends in `krill.dead`).
pub const DELIVERY_LIMIT: i64 = 5;
/// How long an unread per-task reply queue is kept (ms): 7 days.
pub const REPLY_QUEUE_EXPIRES_MS: i64 = 7 * 24 * 3600 * 1000;
/// Header carrying why a message was dead-lettered by a worker.
pub const REASON_HEADER: &str = "x-krill-reason";
/// Set (true) on an unsigned task a client published again after its
/// connection was lost before the confirm: the first copy may be queued too,
/// so a worker handles this one as a redelivery (it runs it only once no
/// worker started the task).
pub const RESENT_HEADER: &str = "x-krill-resent";
/// Header carrying the worker that dead-lettered a message.
pub const WORKER_HEADER: &str = "x-krill-worker";
/// Header carrying the pool of a message a worker dead-lettered.
pub const POOL_HEADER: &str = "x-krill-pool";
/// Header carrying the human-readable detail of a trust rejection (the reason
/// code is in [`REASON_HEADER`]); never a secret.
pub const DETAIL_HEADER: &str = "x-krill-detail";
/// Header carrying the name of the key that signed a dead-lettered task.
pub const SUBMITTER_HEADER: &str = "x-krill-submitter";
/// Prefix of a pool's claims stream.
pub const CLAIMS_STREAM_PREFIX: &str = "krill.claims.";
/// How long claims are kept (`x-max-age`): above the longest validity a pool
/// accepts plus clock skew (`broker::trust::MAX_VALIDITY`, `CLOCK_SKEW`).
pub const CLAIMS_RETENTION: &str = "2D";
/// Header RabbitMQ's quorum queues set on redelivered messages.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
/// Content type of every message.
pub const CONTENT_TYPE: &str = "application/json";

/// Prefix of concurrency-key line queues.
pub const LINE_QUEUE_PREFIX: &str = "krill.line.";
/// Exchange (direct) of keyed tasks and key announcements: each line queue is
/// bound by its own name, the keys stream by [`KEYS_STREAM`]. Submitters publish
/// there, so they need no write on the default exchange (which would let them
/// put a forged result into anyone's reply queue).
pub const LINES_EXCHANGE: &str = "krill.lines";
/// Stream of key announcements ([`crate::protocol::KeyAnnounce`]).
pub const KEYS_STREAM: &str = "krill.keys";
/// How long key announcements are kept: a line whose last submit is older is
/// not found by a worker that starts later (its queue and tasks are kept).
pub const KEYS_RETENTION: &str = "7D";
/// Stream of line records ([`crate::protocol::LineRecord`]).
pub const LINES_LOG_STREAM: &str = "krill.lines.log";
/// How long line records are kept (longer than any task may run).
pub const LINES_LOG_RETENTION: &str = "2D";

/// Name of a concurrency key's line queue.
pub fn line_queue(pool: &str, key: &str) -> String {
    format!("{LINE_QUEUE_PREFIX}{pool}.{key}")
}

/// The arguments of a line queue: classic (RabbitMQ 3.10's quorum queues put a
/// returned message behind the ready ones, which would let a later task of the
/// key start before a returned earlier one; classic queues return it to its
/// place) with a single active consumer (the worker holding the line).
pub fn line_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(short("x-queue-type"), long("classic"));
    args.insert(short("x-single-active-consumer"), AMQPValue::Boolean(true));
    args
}

fn stream_arguments(max_age: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(short("x-queue-type"), long("stream"));
    args.insert(short("x-max-age"), long(max_age));
    args.insert(
        short("x-stream-max-segment-size-bytes"),
        AMQPValue::LongLongInt(1 << 20),
    );
    args
}

/// Declares the lines' exchange and two streams, the keys stream bound to the
/// exchange (idempotent; workers do at start, and submitters allowed to). A
/// failure closes `channel`.
pub async fn declare_lines(channel: &Channel) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            short(LINES_EXCHANGE),
            ExchangeKind::Direct,
            durable(),
            FieldTable::default(),
        )
        .await?;
    for (name, age) in [
        (KEYS_STREAM, KEYS_RETENTION),
        (LINES_LOG_STREAM, LINES_LOG_RETENTION),
    ] {
        channel
            .queue_declare(
                short(name),
                QueueDeclareOptions::durable(),
                stream_arguments(age),
            )
            .await?;
    }
    channel
        .queue_bind(
            short(KEYS_STREAM),
            short(LINES_EXCHANGE),
            short(KEYS_STREAM),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Declares a key's line queue and binds it to [`LINES_EXCHANGE`] by its name
/// (idempotent: every submitter and worker may). The exchange must exist.
pub async fn declare_line(channel: &Channel, pool: &str, key: &str) -> Result<(), lapin::Error> {
    let line = line_queue(pool, key);
    channel
        .queue_declare(
            short(&line),
            QueueDeclareOptions::durable(),
            line_queue_arguments(),
        )
        .await?;
    channel
        .queue_bind(
            short(&line),
            short(LINES_EXCHANGE),
            short(&line),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Name of a pool's queue.
pub fn pool_queue(pool: &str) -> String {
    format!("{POOL_QUEUE_PREFIX}{pool}")
}

/// Name of the per-task reply queue `krill wait` reads.
pub fn reply_queue(task_id: &str) -> String {
    format!("{REPLY_QUEUE_PREFIX}{task_id}")
}

/// Name of a pool's claims stream (replay protection of signed tasks).
pub fn claims_stream(pool: &str) -> String {
    format!("{CLAIMS_STREAM_PREFIX}{pool}")
}

/// The arguments of a claims stream.
pub fn claims_stream_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(short("x-queue-type"), long("stream"));
    args.insert(short("x-max-age"), long(CLAIMS_RETENTION));
    args.insert(
        short("x-stream-max-segment-size-bytes"),
        AMQPValue::LongLongInt(4 << 20),
    );
    args
}

/// Declares a pool's claims stream. Idempotent. Like the heartbeat stream, a
/// failure closes `channel`: use a channel of its own.
pub async fn declare_claims(channel: &Channel, pool: &str) -> Result<(), lapin::Error> {
    channel
        .queue_declare(
            short(&claims_stream(pool)),
            QueueDeclareOptions::durable(),
            claims_stream_arguments(),
        )
        .await?;
    Ok(())
}

/// Routing key of a task event.
pub fn task_event_key(pool: &str, state: &str) -> String {
    format!("task.{pool}.{state}")
}

/// Routing key of a worker's heartbeat.
pub fn heartbeat_key(worker: &str) -> String {
    format!("worker.{worker}.heartbeat")
}

/// Binding key that matches every heartbeat.
pub const ALL_HEARTBEATS: &str = "worker.*.heartbeat";

/// Stream queue keeping recent heartbeats (bound to [`EVENTS_EXCHANGE`] with
/// [`ALL_HEARTBEATS`]): `krill status` reads it from a few minutes back, so a worker
/// whose heartbeat stopped is still seen, and shown as lost.
pub const HEARTBEATS_STREAM: &str = "krill.heartbeats";
/// How long the heartbeat stream keeps messages (RabbitMQ drops whole segments
/// older than this).
pub const HEARTBEATS_MAX_AGE: &str = "1h";
/// Segment size of the heartbeat stream: small, so retention can drop old ones.
pub const HEARTBEATS_SEGMENT_BYTES: i64 = 8 << 20;
/// Upper bound on the heartbeat stream's size on disk.
pub const HEARTBEATS_MAX_BYTES: i64 = 256 << 20;

/// Routing key of a control command.
pub fn control_key(action: &str, target: &str) -> String {
    format!("{action}.{target}")
}

/// Whether `pool` is a valid pool name: 1-64 characters of `a-z 0-9 - _`.
pub fn valid_pool(pool: &str) -> bool {
    !pool.is_empty()
        && pool.len() <= 64
        && pool
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn short(s: &str) -> ShortString {
    ShortString::from(s)
}

/// The arguments of a pool queue (quorum, delivery limit, dead-lettering).
/// Changing any of them makes `declare` fail on a broker that has the old ones
/// (PRECONDITION_FAILED), which is why they live here and nowhere else.
pub fn pool_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(short("x-queue-type"), long("quorum"));
    args.insert(
        short("x-delivery-limit"),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    args.insert(short("x-dead-letter-exchange"), long(DEAD_EXCHANGE));
    args.insert(short("x-overflow"), long("reject-publish"));
    args.insert(short("x-dead-letter-strategy"), long("at-least-once"));
    args
}

/// The arguments of the heartbeat stream. Like the pool queue's, changing them makes
/// `declare_heartbeats` fail with PRECONDITION_FAILED on a broker that has the old ones.
pub fn heartbeats_stream_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(short("x-queue-type"), long("stream"));
    args.insert(short("x-max-age"), long(HEARTBEATS_MAX_AGE));
    args.insert(
        short("x-stream-max-segment-size-bytes"),
        AMQPValue::LongLongInt(HEARTBEATS_SEGMENT_BYTES),
    );
    args.insert(
        short("x-max-length-bytes"),
        AMQPValue::LongLongInt(HEARTBEATS_MAX_BYTES),
    );
    args
}

/// The arguments of a per-task reply queue: a quorum queue (replicated like
/// the pool queue; on a cluster a classic reply queue lives on one node, and a
/// result published while that node is down comes back unroutable and is lost
/// to the waiting submitter, as tests/tests/cluster.rs showed), expiring when
/// unused.
pub fn reply_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(short("x-queue-type"), long("quorum"));
    args.insert(
        short("x-expires"),
        AMQPValue::LongLongInt(REPLY_QUEUE_EXPIRES_MS),
    );
    args
}

fn durable() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

/// Declares the exchanges and the dead-letter queue. Idempotent.
pub async fn declare_common(channel: &Channel) -> Result<(), lapin::Error> {
    let none = FieldTable::default;
    channel
        .exchange_declare(
            short(TASKS_EXCHANGE),
            ExchangeKind::Direct,
            durable(),
            none(),
        )
        .await?;
    channel
        .exchange_declare(
            short(DEAD_EXCHANGE),
            ExchangeKind::Fanout,
            durable(),
            none(),
        )
        .await?;
    for topic in [
        EVENTS_EXCHANGE,
        LOGS_EXCHANGE,
        CONTROL_EXCHANGE,
        RESULTS_EXCHANGE,
    ] {
        channel
            .exchange_declare(short(topic), ExchangeKind::Topic, durable(), none())
            .await?;
    }
    let mut dead_args = FieldTable::default();
    dead_args.insert(short("x-queue-type"), long("quorum"));
    channel
        .queue_declare(short(DEAD_QUEUE), QueueDeclareOptions::durable(), dead_args)
        .await?;
    channel
        .queue_bind(
            short(DEAD_QUEUE),
            short(DEAD_EXCHANGE),
            short(""),
            QueueBindOptions::default(),
            none(),
        )
        .await?;
    let mut notify_args = FieldTable::default();
    notify_args.insert(short("x-queue-type"), long("quorum"));
    channel
        .queue_declare(
            short(DEAD_NOTIFY_QUEUE),
            QueueDeclareOptions::durable(),
            notify_args,
        )
        .await?;
    channel
        .queue_bind(
            short(DEAD_NOTIFY_QUEUE),
            short(DEAD_EXCHANGE),
            short(""),
            QueueBindOptions::default(),
            none(),
        )
        .await?;
    channel
        .queue_declare(
            short(CANCEL_STREAM),
            QueueDeclareOptions::durable(),
            cancel_stream_arguments(),
        )
        .await?;
    channel
        .queue_bind(
            short(CANCEL_STREAM),
            short(CONTROL_EXCHANGE),
            short("cancel.#"),
            QueueBindOptions::default(),
            none(),
        )
        .await?;
    Ok(())
}

/// The arguments of the cancellation stream.
pub fn cancel_stream_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(short("x-queue-type"), long("stream"));
    args.insert(short("x-max-age"), long(CANCEL_RETENTION));
    args.insert(
        short("x-stream-max-segment-size-bytes"),
        AMQPValue::LongLongInt(1 << 20),
    );
    args
}

/// Declares everything a pool needs: the common exchanges, the pool's quorum
/// queue and its binding. Idempotent; safe to call from every worker and client.
pub async fn declare(channel: &Channel, pool: &str) -> Result<(), lapin::Error> {
    declare_common(channel).await?;
    let queue = pool_queue(pool);
    channel
        .queue_declare(
            short(&queue),
            QueueDeclareOptions::durable(),
            pool_queue_arguments(),
        )
        .await?;
    channel
        .queue_bind(
            short(&queue),
            short(TASKS_EXCHANGE),
            short(pool),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Declares the heartbeat stream and binds it to the events exchange. Idempotent.
/// A failure (no permission, or a broker without streams) closes `channel`: use a
/// channel of its own.
pub async fn declare_heartbeats(channel: &Channel) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            short(EVENTS_EXCHANGE),
            ExchangeKind::Topic,
            durable(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            short(HEARTBEATS_STREAM),
            QueueDeclareOptions::durable(),
            heartbeats_stream_arguments(),
        )
        .await?;
    channel
        .queue_bind(
            short(HEARTBEATS_STREAM),
            short(EVENTS_EXCHANGE),
            short(ALL_HEARTBEATS),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Declares the per-task reply queue (durable, expires when unused). Idempotent.
pub async fn declare_reply_queue(channel: &Channel, task_id: &str) -> Result<(), lapin::Error> {
    channel
        .queue_declare(
            short(&reply_queue(task_id)),
            QueueDeclareOptions::durable(),
            reply_queue_arguments(),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(pool_queue("default"), "krill.pool.default");
        assert_eq!(reply_queue("abc"), "krill.reply.abc");
        assert_eq!(task_event_key("p", "finished"), "task.p.finished");
        assert_eq!(heartbeat_key("w1"), "worker.w1.heartbeat");
        assert_eq!(claims_stream("p"), "krill.claims.p");
        assert!(valid_pool("default"));
        assert!(valid_pool("gpu-2"));
        assert!(!valid_pool(""));
        assert!(!valid_pool("a.b"));
        assert!(!valid_pool("A"));
    }
}
