//! AMQP plumbing shared by every side that talks to RabbitMQ — the submitting
//! client, the worker, the tests and the bench — neither side importing the
//! other's: publish with confirms, URL redaction, a private queue bound to an
//! exchange (a tap), a passive look at a queue (a peek), a stream read from an
//! offset, `x-death`, and failover over a list of broker URLs (a cluster's nodes).

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};
use std::time::Duration;

/// The broker URL used when none is given (also `KRILL_AMQP_URL`).
pub const DEFAULT_AMQP_URL: &str = "amqp://127.0.0.1:5672/%2f";

/// How long one node of a list gets to accept a connection before the next
/// one is tried (a node that is down refuses at once; one that hangs does not).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The URLs of a comma-separated list (`KRILL_AMQP_URL` may name every node of
/// a cluster), in order, blanks dropped. One URL is a list of one.
pub fn urls(list: &str) -> Vec<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// The list with each URL's password replaced, for messages.
pub fn redact_urls(list: &str) -> String {
    urls(list)
        .into_iter()
        .map(redact_url)
        .collect::<Vec<_>>()
        .join(",")
}

/// A connection made by [`connect_any`]: which URL of the list answered.
#[derive(Debug)]
pub struct Connected {
    pub conn: Connection,
    /// Position of the URL in the list.
    pub index: usize,
    /// That URL, redacted (safe to log, show or put in a heartbeat).
    pub url: String,
}

/// Connects to the first URL of `list` that answers, trying them in order
/// starting at `start` (taken modulo the list's length, so a caller that lost
/// node `i` passes `i + 1` and tries the others first). Each try gets
/// [`CONNECT_TIMEOUT`]. The error is the last node's, with every URL tried.
pub async fn connect_any(
    list: &str,
    start: usize,
    props: ConnectionProperties,
) -> Result<Connected, ConnectAnyError> {
    let all = urls(list);
    if all.is_empty() {
        return Err(ConnectAnyError::NoUrl);
    }
    let mut last = None;
    for k in 0..all.len() {
        let index = (start + k) % all.len();
        let url = all[index];
        match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, props.clone())).await {
            Ok(Ok(conn)) => {
                return Ok(Connected {
                    conn,
                    index,
                    url: redact_url(url),
                })
            }
            Ok(Err(e)) => last = Some(ConnectAnyError::Refused(e)),
            Err(_) => last = Some(ConnectAnyError::TimedOut(CONNECT_TIMEOUT)),
        }
    }
    Err(last.unwrap_or(ConnectAnyError::NoUrl))
}

/// [`connect_any`] from the list's first URL, for callers that need only the
/// connection (tools, the bench, tests).
pub async fn connect_first(
    list: &str,
    props: ConnectionProperties,
) -> Result<Connection, ConnectAnyError> {
    Ok(connect_any(list, 0, props).await?.conn)
}

/// Why no node of a list could be reached (the last node's reason).
#[derive(Debug, thiserror::Error)]
pub enum ConnectAnyError {
    #[error("no broker URL given")]
    NoUrl,
    /// Shown with the last node's reason: callers print this error as the
    /// source of theirs (`cannot reach RabbitMQ at …: {source}`).
    #[error("no node answered; the last: {0}")]
    Refused(lapin::Error),
    #[error("no node answered; the last did not within {0:?}")]
    TimedOut(Duration),
}

/// `base` scaled by a factor in [0.5, 1.5): reconnecting clients of a node that
/// died spread out instead of arriving at the next one together. The factor
/// comes from the clock's nanoseconds, which is enough for spreading.
pub fn jittered(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let factor = 0.5 + f64::from(nanos % 1000) / 1000.0;
    base.mul_f64(factor)
}

/// Why a confirmed publish did not go through.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    /// A mandatory message that no queue is bound to take (the routing key).
    #[error("nothing is bound to routing key `{0}`")]
    Unroutable(String),
    #[error("the broker refused the message (queue full or out of resources)")]
    Nacked,
}

/// Publishes with confirms; with `mandatory`, an unroutable message is an error.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
    mandatory: bool,
) -> Result<(), PublishError> {
    let confirm = channel
        .basic_publish(
            ShortString::from(exchange),
            ShortString::from(key),
            BasicPublishOptions {
                mandatory,
                ..BasicPublishOptions::default()
            },
            body,
            props,
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable(key.to_string())),
        Confirmation::Nack(_) => Err(PublishError::Nacked),
    }
}

/// The URL with any password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:**REDACTED**{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A private queue and the consumer reading it (no acks).
#[derive(Debug)]
pub struct Tap {
    /// The queue's name (the broker's, when it was asked to name it).
    pub queue: String,
    pub consumer: Consumer,
}

/// Declares an exclusive, auto-delete queue `queue` (`""`: the broker names
/// it), binds it to each `(exchange, routing key)` of `bindings`, and consumes
/// it without acks as `tag` (`""`: the broker's tag). Gone with the channel's
/// connection.
pub async fn tap(
    channel: &Channel,
    queue: &str,
    bindings: &[(&str, &str)],
    tag: &str,
) -> Result<Tap, lapin::Error> {
    let q = channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    for (exchange, key) in bindings {
        channel
            .queue_bind(
                q.name().clone(),
                ShortString::from(*exchange),
                ShortString::from(*key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let consumer = channel
        .basic_consume(
            q.name().clone(),
            ShortString::from(tag),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(Tap {
        queue: q.name().to_string(),
        consumer,
    })
}

/// A passive declare of `queue` on a channel of its own (a missing queue
/// closes the channel it is asked on): its message and consumer counts, or
/// `None` when it does not exist.
pub async fn peek(conn: &Connection, queue: &str) -> Result<Option<lapin::Queue>, lapin::Error> {
    let ch = conn.create_channel().await?;
    let found = ch
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    match found {
        Ok(q) => {
            let _ = ch.close(200, ShortString::from("peeked")).await;
            Ok(Some(q))
        }
        // Refused on a live connection: there is no such queue.
        Err(_) if conn.status().connected() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where a stream consumer starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFrom {
    /// The stream's first record still kept.
    First,
    /// The first record stored at or after this Unix time (seconds).
    Since(u64),
}

/// Consumes the stream `stream` on `ch` from `from`, with `prefetch` (a stream
/// consumer must have one). `tag` names the consumer; empty lets the broker name it.
pub async fn consume_stream(
    ch: &Channel,
    stream: &str,
    tag: &str,
    prefetch: u16,
    from: StreamFrom,
) -> Result<Consumer, lapin::Error> {
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let offset = match from {
        StreamFrom::First => AMQPValue::LongString(LongString::from("first")),
        StreamFrom::Since(unix) => AMQPValue::Timestamp(unix),
    };
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-stream-offset"), offset);
    ch.basic_consume(
        ShortString::from(stream),
        ShortString::from(tag),
        BasicConsumeOptions::default(),
        args,
    )
    .await
}

/// The most recent entry of a message's `x-death` header (RabbitMQ's record
/// of why and where it was dead-lettered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    /// `delivery_limit`, `rejected`, `expired`, `maxlen`, …
    pub reason: String,
    /// The queue it was dead-lettered from.
    pub queue: String,
    /// How many times it was dead-lettered from there for that reason.
    pub count: i64,
}

/// The latest `x-death` entry of `headers`, when there is one.
pub fn first_death(headers: &FieldTable) -> Option<Death> {
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    let count = match first.inner().get("count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        _ => 0,
    };
    Some(Death {
        reason: header_text(first, "reason")?,
        queue: header_text(first, "queue")?,
        count,
    })
}

/// A text header (long or short string).
pub fn header_text(h: &FieldTable, key: &str) -> Option<String> {
    match h.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, LongString};

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("amqp://krill:s3cret@rabbit:5672/%2f"),
            "amqp://krill:**REDACTED**@rabbit:5672/%2f"
        );
        assert_eq!(
            redact_url("amqp://127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
    }

    #[test]
    fn url_lists_are_split_and_redacted() {
        assert_eq!(
            urls(" amqp://a:5681/%2f, ,amqp://b:5682/%2f,"),
            vec!["amqp://a:5681/%2f", "amqp://b:5682/%2f"]
        );
        assert_eq!(urls("amqp://a/%2f"), vec!["amqp://a/%2f"]);
        assert!(urls(" , ").is_empty());
        assert_eq!(
            redact_urls("amqp://u:p@a/%2f,amqp://u:q@b/%2f"),
            "amqp://u:**REDACTED**@a/%2f,amqp://u:**REDACTED**@b/%2f"
        );
        for _ in 0..100 {
            let j = jittered(Duration::from_millis(1000));
            assert!(j >= Duration::from_millis(500) && j < Duration::from_millis(1500));
        }
    }

    #[tokio::test]
    async fn connect_any_says_no_url() {
        let r = connect_any(" ", 0, ConnectionProperties::default()).await;
        assert!(matches!(r, Err(ConnectAnyError::NoUrl)));
    }

    #[test]
    fn the_latest_death_is_read() {
        let entry = |reason: &str, queue: &str, count| {
            let mut t = FieldTable::default();
            t.insert(
                ShortString::from("reason"),
                AMQPValue::LongString(LongString::from(reason)),
            );
            t.insert(
                ShortString::from("queue"),
                AMQPValue::ShortString(ShortString::from(queue)),
            );
            t.insert(ShortString::from("count"), AMQPValue::LongInt(count));
            AMQPValue::FieldTable(t)
        };
        let mut h = FieldTable::default();
        assert_eq!(first_death(&h), None);
        h.insert(
            ShortString::from("x-death"),
            AMQPValue::FieldArray(FieldArray::from(vec![
                entry("delivery_limit", "krill.pool.p", 5),
                entry("expired", "older", 1),
            ])),
        );
        assert_eq!(
            first_death(&h),
            Some(Death {
                reason: "delivery_limit".into(),
                queue: "krill.pool.p".into(),
                count: 5
            })
        );
    }
}
