//! The broker side of [`Outbound`](super::Outbound): every exchange, routing
//! key and property of what the worker publishes, across broker reconnects.
//!
//! The connection loop owns the connection and puts its current channels in a
//! `watch`; every publish takes the channels from there. A confirmed publish
//! (results, answers, dead letters, the cancel marker) that fails because the
//! broker went away waits for the next connection and tries again, so a result
//! finished while the broker was down is published once it is back. Log chunks,
//! events and heartbeats are best effort: dropped while there is no connection
//! (followers see a gap in `seq`).

use std::time::Duration;

use broker::amqp::{publish_confirmed, PublishError as AmqpError};
use broker::protocol::Control;
use broker::topology::{
    self, CONTENT_TYPE, CONTROL_EXCHANGE, DEAD_EXCHANGE, EVENTS_EXCHANGE, LOGS_EXCHANGE,
    POOL_HEADER, REASON_HEADER, WORKER_HEADER,
};
use futures_util::future::BoxFuture;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{DeadLetter, Outgoing, PublishError, Published, Sink};

/// The channels of the current connection.
#[derive(Debug, Clone)]
pub struct Channels {
    /// Publisher confirms on: results and dead letters.
    pub confirm: Channel,
    /// No confirms: events, heartbeats and log chunks.
    pub fast: Channel,
}

/// Publishes to RabbitMQ on the current connection's channels; cheap to clone.
#[derive(Debug, Clone)]
pub struct AmqpSink {
    rx: watch::Receiver<Option<Channels>>,
    give_up: CancellationToken,
}

/// One message as it goes on the wire.
struct Wire {
    exchange: &'static str,
    key: String,
    body: Vec<u8>,
    props: BasicProperties,
    mandatory: bool,
    confirmed: bool,
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
            body,
            props: json_props(),
            mandatory: false,
            confirmed: false,
        };
        Ok(match msg {
            Outgoing::Result { result, reply_to } => Wire {
                exchange: "",
                key: reply_to.clone(),
                body: serde_json::to_vec(&**result)?,
                props: json_props()
                    .with_delivery_mode(2)
                    .with_correlation_id(ShortString::from(result.id.as_str()))
                    .with_message_id(ShortString::from(format!("{}.result", result.id))),
                mandatory: true,
                confirmed: true,
            },
            Outgoing::Answer { result, reply_to } => Wire {
                exchange: "",
                key: reply_to.clone(),
                body: serde_json::to_vec(&**result)?,
                props: json_props()
                    .with_delivery_mode(2)
                    .with_correlation_id(ShortString::from(result.id.as_str())),
                mandatory: true,
                confirmed: true,
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
                body: dead.data.clone(),
                props: dead_props(dead),
                mandatory: false,
                confirmed: true,
            },
            Outgoing::Claim { stream, body } => Wire {
                exchange: "",
                key: stream.clone(),
                body: body.clone(),
                props: json_props(),
                mandatory: true,
                confirmed: true,
            },
            Outgoing::CancelMarker(marker) => Wire {
                exchange: CONTROL_EXCHANGE,
                key: topology::control_key("cancel", marker),
                body: serde_json::to_vec(&Control::Cancel {
                    task_id: marker.clone(),
                })?,
                props: json_props(),
                mandatory: false,
                confirmed: true,
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

impl AmqpSink {
    /// A sink reading channels from `rx`; confirmed publishes stop retrying once
    /// `give_up` is cancelled.
    pub fn new(rx: watch::Receiver<Option<Channels>>, give_up: CancellationToken) -> Self {
        AmqpSink { rx, give_up }
    }

    /// Publishes with confirms, retrying across reconnects until confirmed.
    async fn confirmed(&self, w: &Wire) -> Result<Published, PublishError> {
        let mut rx = self.rx.clone();
        let mut backoff = Duration::from_millis(100);
        loop {
            let current = rx.borrow_and_update().clone();
            if let Some(ch) = current {
                match publish_confirmed(
                    &ch.confirm,
                    w.exchange,
                    &w.key,
                    &w.body,
                    w.props.clone(),
                    w.mandatory,
                )
                .await
                {
                    Ok(()) => return Ok(Published::Confirmed),
                    Err(AmqpError::Unroutable(_)) => return Ok(Published::Unroutable),
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

    /// Publishes without confirms; dropped when there is no connection.
    async fn fast(&self, w: Wire) -> Published {
        let current = self.rx.borrow().clone();
        let Some(ch) = current else {
            return Published::Dropped;
        };
        let res = ch
            .fast
            .basic_publish(
                ShortString::from(w.exchange),
                ShortString::from(w.key),
                BasicPublishOptions::default(),
                &w.body,
                w.props,
            )
            .await;
        match res {
            Ok(_) => Published::Sent,
            Err(e) => {
                tracing::debug!(error = %e, exchange = w.exchange, "best-effort publish dropped");
                Published::Dropped
            }
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
            .is_some_and(|c| c.confirm.status().connected())
    }
}
