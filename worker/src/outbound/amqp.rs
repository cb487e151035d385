//! The broker side of [`Outbound`](super::Outbound): every exchange, routing
//! key and property of what the worker publishes, across broker reconnects.
//!
//! The connection loop owns the connection and puts its current channels in a
//! `watch`; every publish takes the channels from there. A confirmed publish
//! (results and their history copies, answers, dead letters, the cancel
//! marker) that fails because the broker went away waits for the next
//! connection and tries again, so a result
//! finished while the broker was down is published once it is back. Log chunks,
//! events and heartbeats are best effort: dropped while there is no connection
//! or the broker blocks publishers (a memory or disk alarm), and when they
//! cannot go out within [`BEST_EFFORT_WAIT`] (followers see a gap in `seq`), so
//! no sender waits on them.
//!
//! A message the broker refuses for good — bigger than its `max_message_size`
//! (checked before sending, and answered 406 by the broker), or otherwise
//! invalid (406) — is not retried: [`PublishError::Refused`]. A refusal
//! closes the channel it came on; the next publish opens another one on the
//! same connection. Result publishes report to [`Health`]: waiting for long,
//! the worker is degraded.

use std::sync::Arc;
use std::time::Duration;

use broker::amqp::{publish_confirmed, PublishError as AmqpError};
use broker::protocol::Control;
use broker::topology::{
    self, CONTENT_TYPE, CONTROL_EXCHANGE, DEAD_EXCHANGE, EVENTS_EXCHANGE, LOGS_EXCHANGE,
    POOL_HEADER, REASON_HEADER, REPLY_QUEUE_PREFIX, RESULTS_EXCHANGE, WORKER_HEADER,
};
use futures_util::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ErrorKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{DeadLetter, Health, Outgoing, PublishError, Published, Sink};

/// The longest a best-effort message (event, log chunk, heartbeat) may take
/// to go out before it is dropped.
pub const BEST_EFFORT_WAIT: Duration = Duration::from_secs(2);

/// Nacks in a row for a result before its publishing channel is closed (the
/// next try opens another on the same connection).
const NACKS_BEFORE_NEW_CHANNEL: u32 = 3;
/// How many times a result returned unroutable is sent again while its reply
/// queue is still there (see [`AmqpSink::still_there`]); then it is believed.
const UNROUTABLE_CHECKS: u32 = 5;

/// The channels of the current connection.
#[derive(Debug, Clone)]
pub struct Channels {
    /// Publisher confirms on: results and dead letters.
    pub confirm: Channel,
    /// No confirms: events, heartbeats and log chunks.
    pub fast: Channel,
    /// Their connection: a channel the broker closed is opened again on it.
    pub conn: Arc<Connection>,
}

/// Channels opened again on the current connection after the broker closed
/// the ones in [`Channels`].
#[derive(Debug, Default)]
struct Reopened {
    conn: Option<Arc<Connection>>,
    confirm: Option<Channel>,
    fast: Option<Channel>,
}

/// Publishes to RabbitMQ on the current connection's channels; cheap to clone.
#[derive(Debug, Clone)]
pub struct AmqpSink {
    rx: watch::Receiver<Option<Channels>>,
    give_up: CancellationToken,
    health: Arc<Health>,
    /// The broker's `max_message_size`: a bigger body is refused before sending.
    max_message: usize,
    reopened: Arc<tokio::sync::Mutex<Reopened>>,
}

/// One message as it goes on the wire.
struct Wire {
    exchange: &'static str,
    key: String,
    /// A result's body is shared with the result ([`super::Ready`]): not copied here.
    body: Arc<Vec<u8>>,
    props: BasicProperties,
    mandatory: bool,
    confirmed: bool,
    /// A task's result (or answer): what [`Health`] is about.
    result: bool,
}

fn json_props() -> BasicProperties {
    BasicProperties::default().with_content_type(ShortString::from(CONTENT_TYPE))
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

impl Wire {
    fn of(msg: &Outgoing) -> Result<Wire, serde_json::Error> {
        let best_effort = |exchange, key, body| Wire {
            exchange,
            key,
            body: Arc::new(body),
            props: json_props(),
            mandatory: false,
            confirmed: false,
            result: false,
        };
        Ok(match msg {
            Outgoing::Result { result, reply_to } => Wire {
                exchange: "",
                key: reply_to.clone(),
                body: result.body().clone(),
                props: json_props()
                    .with_delivery_mode(2)
                    .with_correlation_id(ShortString::from(result.id.as_str()))
                    .with_message_id(ShortString::from(format!("{}.result", result.id))),
                mandatory: true,
                confirmed: true,
                result: true,
            },
            Outgoing::History { result, pool } => Wire {
                exchange: RESULTS_EXCHANGE,
                key: pool.clone(),
                body: result.history_body().clone(),
                props: json_props()
                    .with_delivery_mode(2)
                    .with_correlation_id(ShortString::from(result.id.as_str()))
                    .with_message_id(ShortString::from(format!("{}.history", result.id))),
                mandatory: false,
                confirmed: true,
                result: false,
            },
            Outgoing::Answer { result, reply_to } => Wire {
                exchange: "",
                key: reply_to.clone(),
                body: result.body().clone(),
                props: json_props()
                    .with_delivery_mode(2)
                    .with_correlation_id(ShortString::from(result.id.as_str())),
                mandatory: true,
                confirmed: true,
                result: true,
            },
            Outgoing::Event(ev) => best_effort(
                EVENTS_EXCHANGE,
                topology::task_event_key(&ev.pool, ev.state.as_str()),
                serde_json::to_vec(ev)?,
            ),
            Outgoing::Log(chunk) => best_effort(
                LOGS_EXCHANGE,
                chunk.task_id.clone(),
                serde_json::to_vec(chunk)?,
            ),
            Outgoing::Heartbeat(hb) => best_effort(
                EVENTS_EXCHANGE,
                topology::heartbeat_key(&hb.worker),
                serde_json::to_vec(&**hb)?,
            ),
            Outgoing::DeadLetter(dead) => Wire {
                exchange: DEAD_EXCHANGE,
                key: String::new(),
                body: Arc::new(dead.data.clone()),
                props: dead_props(dead),
                mandatory: false,
                confirmed: true,
                result: false,
            },
            Outgoing::Claim { stream, body } => Wire {
                exchange: "",
                key: stream.clone(),
                body: Arc::new(body.clone()),
                props: json_props(),
                mandatory: true,
                confirmed: true,
                result: false,
            },
            Outgoing::CancelMarker(marker) => Wire {
                exchange: CONTROL_EXCHANGE,
                key: topology::control_key("cancel", marker),
                body: Arc::new(serde_json::to_vec(&Control::Cancel {
                    task_id: marker.clone(),
                })?),
                props: json_props(),
                mandatory: false,
                confirmed: true,
                result: false,
            },
            Outgoing::Line(rec) => Wire {
                exchange: "",
                key: topology::LINES_LOG_STREAM.to_string(),
                body: Arc::new(serde_json::to_vec(rec)?),
                props: json_props().with_delivery_mode(2),
                mandatory: true,
                confirmed: true,
                result: false,
            },
        })
    }
}

/// The delivery's properties with the reason, the worker and the pool added to its headers.
fn dead_props(dead: &DeadLetter) -> BasicProperties {
    let mut headers = dead.props.headers().clone().unwrap_or_default();
    headers.insert(ShortString::from(REASON_HEADER), text(&dead.reason));
    headers.insert(ShortString::from(WORKER_HEADER), text(&dead.worker));
    headers.insert(ShortString::from(POOL_HEADER), text(&dead.pool));
    for (name, value) in &dead.extra {
        headers.insert(ShortString::from(name.as_str()), text(value));
    }
    dead.props
        .clone()
        .with_headers(FieldTable::from(headers.inner().clone()))
}

/// Whether the broker refused a message for good: a 406 (`PRECONDITION_FAILED`:
/// over `max_message_size`, or invalid) would come back for the same message.
fn refused_for_good(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)))
}

impl AmqpSink {
    /// A sink reading channels from `rx`; confirmed publishes stop retrying once
    /// `give_up` is cancelled; result publishes report to `health`; bodies over
    /// `max_message` bytes are refused without being sent.
    pub fn new(
        rx: watch::Receiver<Option<Channels>>,
        give_up: CancellationToken,
        health: Arc<Health>,
        max_message: u64,
    ) -> Self {
        AmqpSink {
            rx,
            give_up,
            health,
            max_message: usize::try_from(max_message).unwrap_or(usize::MAX),
            reopened: Arc::default(),
        }
    }

    /// A channel to publish on: the connection's own, or, once the broker
    /// closed that one (a refused message does), another opened on the same
    /// connection. `None` while the connection itself is down.
    async fn usable(&self, chs: &Channels, confirm: bool) -> Option<Channel> {
        let own = if confirm { &chs.confirm } else { &chs.fast };
        if own.status().connected() {
            return Some(own.clone());
        }
        if !chs.conn.status().connected() {
            return None;
        }
        let mut r = self.reopened.lock().await;
        if !r.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, &chs.conn)) {
            *r = Reopened {
                conn: Some(chs.conn.clone()),
                ..Reopened::default()
            };
        }
        let slot = if confirm { &mut r.confirm } else { &mut r.fast };
        if let Some(c) = slot.as_ref().filter(|c| c.status().connected()) {
            return Some(c.clone());
        }
        let opened = async {
            let c = chs.conn.create_channel().await?;
            if confirm {
                c.confirm_select(ConfirmSelectOptions::default()).await?;
            }
            Ok::<_, lapin::Error>(c)
        }
        .await;
        match opened {
            Ok(c) => {
                tracing::info!(
                    confirm,
                    "the broker closed a publishing channel; opened another"
                );
                *slot = Some(c.clone());
                Some(c)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot open a publishing channel");
                None
            }
        }
    }

    /// Publishes with confirms, retrying across reconnects until confirmed
    /// (not when the broker refuses the message for good).
    async fn confirmed(&self, w: &Wire) -> Result<Published, PublishError> {
        if w.body.len() > self.max_message {
            return Err(PublishError::Refused(format!(
                "the message of {} bytes is over the broker's max_message_size of {} bytes",
                w.body.len(),
                self.max_message
            )));
        }
        // While a result waits for its confirm, the worker's health knows.
        let mut pending = w.result.then(|| self.health.begin());
        let mut rx = self.rx.clone();
        let mut backoff = Duration::from_millis(100);
        let mut unroutable_checks = 0;
        let mut nacks = 0;
        loop {
            let current = rx.borrow_and_update().clone();
            let channel = match &current {
                Some(chs) => self.usable(chs, true).await,
                None => None,
            };
            if let Some(ch) = channel {
                let publish = publish_confirmed(
                    &ch,
                    w.exchange,
                    &w.key,
                    &w.body,
                    w.props.clone(),
                    w.mandatory,
                );
                // A broker that blocks publishers may never answer: giving up
                // (at shutdown) must not wait for it.
                let sent = tokio::select! {
                    biased;
                    _ = self.give_up.cancelled() => return Err(PublishError::GaveUp),
                    sent = publish => sent,
                };
                match sent {
                    Ok(()) => {
                        if let Some(p) = pending.take() {
                            p.published();
                        }
                        return Ok(Published::Confirmed);
                    }
                    Err(AmqpError::Unroutable(_))
                        if unroutable_checks < UNROUTABLE_CHECKS
                            && self.still_there(current.as_ref(), w).await =>
                    {
                        unroutable_checks += 1;
                        tracing::warn!(queue = %w.key,
                            "the result came back unroutable but its reply queue exists (a node stopping?); will retry");
                    }
                    Err(AmqpError::Unroutable(_)) => {
                        if let Some(p) = pending.take() {
                            p.published();
                        }
                        return Ok(Published::Unroutable);
                    }
                    Err(AmqpError::Amqp(e)) if refused_for_good(&e) => {
                        return Err(PublishError::Refused(e.to_string()));
                    }
                    Err(AmqpError::Nacked) if w.result => {
                        // Seen on a cluster (RabbitMQ 3.10): after the node that
                        // led a quorum reply queue was killed, a channel that had
                        // not published to it before nacked every publish to it
                        // for minutes, while a new channel's were confirmed at
                        // once (the queue had a new leader). A few nacks in a
                        // row: close the channel, the next try opens another.
                        nacks += 1;
                        tracing::warn!(queue = %w.key, nacks, "the result was nacked: publish failed; will retry");
                        if nacks >= NACKS_BEFORE_NEW_CHANNEL {
                            nacks = 0;
                            tracing::warn!(queue = %w.key, "results keep being nacked: publishing on a new channel");
                            let _ = ch.close(200, ShortString::from("nacked")).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, exchange = w.exchange, "publish failed; will retry");
                    }
                }
            }
            // Wait for a new connection, or a little, then try again.
            tokio::select! {
                biased;
                _ = self.give_up.cancelled() => return Err(PublishError::GaveUp),
                _ = rx.changed() => {}
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Whether a result that came back unroutable should be sent again: its
    /// per-task reply queue (durable, replicated) still exists, or the
    /// connection broke before that could be told. A node that is stopping
    /// can return a message for a queue it no longer routes to; believing it
    /// would drop a result whose submitter is still waiting.
    async fn still_there(&self, chs: Option<&Channels>, w: &Wire) -> bool {
        if !w.result || !w.exchange.is_empty() || !w.key.starts_with(REPLY_QUEUE_PREFIX) {
            return false;
        }
        let Some(chs) = chs else { return true };
        match broker::amqp::peek(&chs.conn, &w.key).await {
            Ok(found) => found.is_some(),
            Err(_) => true,
        }
    }

    /// Publishes without confirms; dropped when there is no connection (or
    /// when it is over the broker's size limit).
    async fn fast(&self, w: Wire) -> Published {
        let current = self.rx.borrow().clone();
        let Some(chs) = current else {
            return Published::Dropped;
        };
        // A blocked connection (the broker's memory or disk alarm) sends
        // nothing until the broker lets go: a best-effort message is dropped
        // rather than hold up its sender (the log pump, the claim loop).
        if w.body.len() > self.max_message || chs.conn.status().blocked() {
            return Published::Dropped;
        }
        let publish = async {
            let ch = self.usable(&chs, false).await?;
            let res = ch
                .basic_publish(
                    ShortString::from(w.exchange),
                    ShortString::from(w.key),
                    BasicPublishOptions::default(),
                    &w.body,
                    w.props,
                )
                .await;
            match res {
                Ok(_) => Some(Published::Sent),
                Err(e) => {
                    tracing::debug!(error = %e, exchange = w.exchange, "best-effort publish dropped");
                    None
                }
            }
        };
        // Blocked after the check, or a connection that takes nothing:
        // still never longer than this.
        match tokio::time::timeout(BEST_EFFORT_WAIT, publish).await {
            Ok(Some(sent)) => sent,
            Ok(None) | Err(_) => Published::Dropped,
        }
    }
}

impl Sink for AmqpSink {
    fn send(&self, msg: Outgoing) -> BoxFuture<'_, Result<Published, PublishError>> {
        Box::pin(async move {
            let wire = Wire::of(&msg).map_err(PublishError::Encode)?;
            drop(msg);
            if wire.confirmed {
                self.confirmed(&wire).await
            } else {
                Ok(self.fast(wire).await)
            }
        })
    }

    fn connected(&self) -> bool {
        self.rx
            .borrow()
            .as_ref()
            // The connection, not its first confirm channel: that one may have
            // been closed (by the broker for a refused message, or after
            // nacks in a row) and another opened in its place.
            .is_some_and(|c| c.conn.status().connected())
    }
}
