//! What a delivery is: its bytes, its properties and how to settle it
//! ([`Incoming`], [`Settle`]), and decoding it into a task or into the reason
//! it cannot be one ([`decode`], pure), and the dead-letter way out
//! ([`dead_letter`]). The signature is checked before decoding, by
//! [`gate`](crate::gate).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use broker::protocol::{Task, MAX_TASK_BYTES, PROTOCOL_VERSION};
use broker::topology::{CONTENT_TYPE, DELIVERY_COUNT_HEADER};
use futures_util::future::BoxFuture;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

use crate::outbound::Outbound;

/// How a delivery is settled with the broker: lapin's `Acker`, or
/// [`MemorySettle`] in tests.
pub trait Settle: Send + Sync + fmt::Debug {
    /// Acks: the delivery is done with.
    fn ack(&self) -> BoxFuture<'_, Result<(), lapin::Error>>;
    /// Rejects without requeue: RabbitMQ dead-letters it.
    fn reject(&self) -> BoxFuture<'_, Result<(), lapin::Error>>;
    /// Gives it back to the queue (it is redelivered, counted as a redelivery).
    fn requeue(&self) -> BoxFuture<'_, Result<(), lapin::Error>>;
}

impl Settle for lapin::Acker {
    fn ack(&self) -> BoxFuture<'_, Result<(), lapin::Error>> {
        Box::pin(async move {
            lapin::Acker::ack(self, BasicAckOptions::default())
                .await
                .map(drop)
        })
    }

    fn reject(&self) -> BoxFuture<'_, Result<(), lapin::Error>> {
        Box::pin(async move {
            self.nack(BasicNackOptions {
                requeue: false,
                ..BasicNackOptions::default()
            })
            .await
            .map(drop)
        })
    }

    fn requeue(&self) -> BoxFuture<'_, Result<(), lapin::Error>> {
        Box::pin(async move {
            self.nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .map(drop)
        })
    }
}

/// Counts how a delivery was settled (tests).
#[derive(Debug, Default)]
pub struct MemorySettle {
    acks: AtomicUsize,
    rejects: AtomicUsize,
    requeues: AtomicUsize,
}

impl MemorySettle {
    /// `(acks, rejects)` so far.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.acks.load(Ordering::Relaxed),
            self.rejects.load(Ordering::Relaxed),
        )
    }

    /// Requeues so far.
    pub fn requeues(&self) -> usize {
        self.requeues.load(Ordering::Relaxed)
    }
}

impl Settle for MemorySettle {
    fn ack(&self) -> BoxFuture<'_, Result<(), lapin::Error>> {
        self.acks.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }

    fn reject(&self) -> BoxFuture<'_, Result<(), lapin::Error>> {
        self.rejects.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }

    fn requeue(&self) -> BoxFuture<'_, Result<(), lapin::Error>> {
        self.requeues.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }
}

/// One delivery from the pool queue.
#[derive(Debug)]
pub struct Incoming {
    pub data: Vec<u8>,
    pub props: BasicProperties,
    /// The broker says it delivered it before.
    pub redelivered: bool,
    pub settle: std::sync::Arc<dyn Settle>,
    /// Set when it comes from its concurrency key's line (how long it waited there).
    pub line: Option<broker::protocol::WaitedOn>,
}

impl From<lapin::message::Delivery> for Incoming {
    fn from(d: lapin::message::Delivery) -> Self {
        Incoming {
            data: d.data,
            props: d.properties,
            redelivered: d.redelivered,
            settle: std::sync::Arc::new(d.acker),
            line: None,
        }
    }
}

/// What a delivery turned out to be.
#[derive(Debug)]
pub enum Intake {
    /// A well-formed task with somewhere to answer.
    Task {
        task: Box<Task>,
        reply_to: String,
        /// 1 for the first delivery, more after redeliveries.
        attempt: u32,
        /// The broker delivered it before (to this or another worker).
        redelivered: bool,
    },
    /// Not a task this worker can take. Answered `rejected` where `id` and
    /// `reply_to` are known, and dead-lettered with `reason` either way.
    Bad {
        reason: String,
        id: Option<String>,
        reply_to: Option<String>,
    },
}

/// Classifies a delivery. Never panics, whatever the bytes.
pub fn decode(props: &BasicProperties, data: &[u8], redelivered: bool) -> Intake {
    let reply_to = props
        .reply_to()
        .as_ref()
        .map(|r| r.as_str().to_string())
        .filter(|r| !r.is_empty());
    let bad = |reason: String, id: Option<String>| Intake::Bad {
        reason,
        id,
        reply_to: reply_to.clone(),
    };
    let fallback_id = props
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_string())
        .filter(|m| broker::protocol::valid_id(m));
    if data.len() > MAX_TASK_BYTES {
        return bad(
            format!(
                "message is {} bytes, above the limit of {MAX_TASK_BYTES} bytes",
                data.len()
            ),
            fallback_id,
        );
    }
    if let Some(ct) = props.content_type() {
        let ct = ct.as_str();
        if !ct.is_empty() && !ct.starts_with(CONTENT_TYPE) {
            return bad(
                format!("content type `{ct}` is not supported (send `{CONTENT_TYPE}`)"),
                fallback_id,
            );
        }
    }
    let task: Task = match serde_json::from_slice(data) {
        Ok(t) => t,
        Err(e) => {
            // Answer if the id can still be found.
            return bad(format!("invalid task message: {e}"), id_of(props, data));
        }
    };
    if task.version != PROTOCOL_VERSION {
        let id = Some(task.id.clone()).filter(|i| broker::protocol::valid_id(i));
        return bad(
            format!(
                "unsupported protocol version {} (this worker speaks {PROTOCOL_VERSION})",
                task.version
            ),
            id,
        );
    }
    if !broker::protocol::valid_id(&task.id) {
        return bad(
            "task id must be 1-128 characters of A-Z a-z 0-9 . _ : -".into(),
            fallback_id,
        );
    }
    let Some(reply_to) = reply_to.clone() else {
        return bad(
            "no reply_to property: there is nowhere to send the result".into(),
            Some(task.id),
        );
    };
    // RabbitMQ's count, read only on what the broker itself says it delivers
    // again (`redelivered`, which no publisher can set): on a first delivery
    // the header is whatever the publisher put there — a classic queue (a
    // line) passes it on as sent, and so does a RabbitMQ 3.10 quorum queue to
    // a consumer (only basic.get shows its own 0) — and would make a copy look
    // like a redelivery (answered from the run, or run again under a new
    // claim: `tests/tests/reply_theft.rs`).
    let count = if redelivered {
        delivery_count(props)
    } else {
        0
    };
    Intake::Task {
        task: Box::new(task),
        reply_to,
        attempt: count.saturating_add(1),
        redelivered,
    }
}

/// The id of a message that may not parse as a task: its body's `id`, else
/// its `message_id` (only a valid task id).
pub fn id_of(props: &BasicProperties, data: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string))
        .filter(|i| broker::protocol::valid_id(i))
        .or_else(|| {
            props
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_string())
                .filter(|m| broker::protocol::valid_id(m))
        })
}

/// Sends a copy of the message to the dead letters with `reason` (and the
/// `extra` headers), then acks it. If that is impossible, rejects it without
/// requeue so RabbitMQ dead-letters it.
pub async fn dead_letter(
    out: &Outbound,
    data: &[u8],
    props: &BasicProperties,
    reason: &str,
    extra: Vec<(String, String)>,
    settle: &dyn Settle,
) {
    let res = if out.dead_letter_with(data, props, reason, extra).await {
        settle.ack().await
    } else {
        settle.reject().await
    };
    if let Err(e) = res {
        tracing::warn!(error = %e, "could not settle a dead-lettered message; the broker will redeliver it");
    }
}

/// `props` without a delivery count header (for queues where RabbitMQ sets none).
pub fn without_delivery_count(props: BasicProperties) -> BasicProperties {
    let Some(headers) = props.headers() else {
        return props;
    };
    if !headers.inner().contains_key(DELIVERY_COUNT_HEADER) {
        return props;
    }
    let mut kept = FieldTable::default();
    for (k, v) in headers.inner() {
        if k.as_str() != DELIVERY_COUNT_HEADER {
            kept.insert(k.clone(), v.clone());
        }
    }
    props.with_headers(kept)
}

/// How many times RabbitMQ delivered the message before (quorum queues say so).
pub fn delivery_count(props: &BasicProperties) -> u32 {
    let Some(headers) = props.headers() else {
        return 0;
    };
    match headers.inner().get(DELIVERY_COUNT_HEADER) {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::ShortInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortShortUInt(n)) => u32::from(*n),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::ShortString;

    fn props() -> BasicProperties {
        BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_reply_to(ShortString::from("krill.reply.t1"))
    }

    fn reason(i: Intake) -> (String, Option<String>) {
        match i {
            Intake::Bad { reason, id, .. } => (reason, id),
            Intake::Task { .. } => panic!("expected a bad message"),
        }
    }

    #[test]
    fn a_delivery_count_header_can_be_taken_off() {
        let mut h = FieldTable::default();
        h.insert(
            ShortString::from(DELIVERY_COUNT_HEADER),
            AMQPValue::LongLongInt(3),
        );
        h.insert(ShortString::from("x-krill-key"), AMQPValue::Boolean(true));
        let p = without_delivery_count(props().with_headers(h));
        assert_eq!(delivery_count(&p), 0);
        let h = p.headers().clone().expect("headers");
        assert!(h.inner().contains_key("x-krill-key"), "the others stay");
    }

    #[test]
    fn good_task() {
        let i = decode(
            &props(),
            br#"{"version":1,"id":"t1","script":"true"}"#,
            false,
        );
        match i {
            Intake::Task {
                task,
                reply_to,
                attempt,
                redelivered,
            } => {
                assert_eq!(task.id, "t1");
                assert_eq!(reply_to, "krill.reply.t1");
                assert_eq!(attempt, 1);
                assert!(!redelivered);
            }
            Intake::Bad { reason, .. } => panic!("{reason}"),
        }
    }

    #[test]
    fn bad_messages_say_why_and_keep_the_id_when_they_can() {
        let (r, id) = reason(decode(&props(), b"{not json", false));
        assert!(r.contains("invalid task message"), "{r}");
        assert_eq!(id, None);
        let (r, id) = reason(decode(
            &props(),
            br#"{"version":1,"id":"t1","script":"x","colour":2}"#,
            false,
        ));
        assert!(r.contains("colour"), "{r}");
        assert_eq!(id.as_deref(), Some("t1"));
        let (r, _) = reason(decode(&props(), br#"{"version":1,"id":"t1"}"#, false));
        assert!(r.contains("script"), "{r}");
        let (r, id) = reason(decode(
            &props(),
            br#"{"version":7,"id":"t1","script":"x"}"#,
            false,
        ));
        assert!(r.contains("version 7"), "{r}");
        assert_eq!(id.as_deref(), Some("t1"));
        let xml = props().with_content_type(ShortString::from("text/xml"));
        let (r, _) = reason(decode(&xml, b"<task/>", false));
        assert!(r.contains("text/xml"), "{r}");
        let big = vec![b' '; MAX_TASK_BYTES + 1];
        let (r, _) = reason(decode(&props(), &big, false));
        assert!(r.contains("above the limit"), "{r}");
        let no_reply = BasicProperties::default();
        let (r, id) = reason(decode(
            &no_reply,
            br#"{"version":1,"id":"t1","script":"x"}"#,
            false,
        ));
        assert!(r.contains("reply_to"), "{r}");
        assert_eq!(id.as_deref(), Some("t1"));
    }
}
