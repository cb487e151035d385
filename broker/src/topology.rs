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
/// Topic exchange for control commands.
pub const CONTROL_EXCHANGE: &str = "krill.control";
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
/// Header carrying the worker that dead-lettered a message.
pub const WORKER_HEADER: &str = "x-krill-worker";
/// Header RabbitMQ's quorum queues set on redelivered messages.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
/// Content type of every message.
pub const CONTENT_TYPE: &str = "application/json";

/// Name of a pool's queue.
pub fn pool_queue(pool: &str) -> String {
    format!("{POOL_QUEUE_PREFIX}{pool}")
}

/// Name of the per-task reply queue `krill wait` reads.
pub fn reply_queue(task_id: &str) -> String {
    format!("{REPLY_QUEUE_PREFIX}{task_id}")
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

/// The arguments of a per-task reply queue.
pub fn reply_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
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
    for topic in [EVENTS_EXCHANGE, LOGS_EXCHANGE, CONTROL_EXCHANGE] {
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
    Ok(())
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
        assert!(valid_pool("default"));
        assert!(valid_pool("gpu-2"));
        assert!(!valid_pool(""));
        assert!(!valid_pool("a.b"));
        assert!(!valid_pool("A"));
    }
}
