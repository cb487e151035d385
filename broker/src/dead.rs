//! The dead-letter queue: list what is in `krill.dead` with the reasons, and put
//! tasks back on their pool's queue.
//!
//! Listing takes every message with `basic.get` and returns them (nack, requeue),
//! so the queue is unchanged afterwards; a replay publishes a clean copy (no
//! dead-letter headers) to `krill.tasks` with confirms and only then acks the dead one.
//!
//! A signed task keeps its signature headers (and so its signer, its sealed
//! secrets and its restrictions). A client with an identity adds a *replay
//! authorization* (`broker::trust::sign`): workers take it from a key with the
//! control right in place of the task's own expiry and replay checks, so an
//! expired or already-claimed task can be run again on purpose. Without one, a
//! worker with trusted keys rejects the copy as `replayed` or `expired`.

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::BasicProperties;
use serde::Serialize;

use crate::amqp::{first_death, header_text, publish_confirmed};
use crate::client::{Client, ClientError};
use crate::topology::{
    DEAD_QUEUE, DETAIL_HEADER, POOL_HEADER, POOL_QUEUE_PREFIX, REASON_HEADER, SUBMITTER_HEADER,
    TASKS_EXCHANGE,
};
use crate::trust::sign::{self, KEY_HEADER, NOT_AFTER_HEADER, SIGNATURE_HEADER};
use crate::trust::{now_unix, REPLAY_VALIDITY};

/// One dead letter, as `krill dead list` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DeadLetter {
    /// The task id (`message_id`), when the message had one.
    pub id: Option<String>,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The pool it was sent to, when known.
    pub pool: Option<String>,
    /// More about a trust rejection (`reason` is then its code, like `bad_signature`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The name of the key that signed it, when a worker verified that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitter: Option<String>,
    /// Whether it carries a signature.
    pub signed: bool,
    /// Who dead-lettered it: a worker id, or `rabbitmq`.
    pub by: String,
    pub bytes: usize,
}

/// Describes a dead message from its properties.
pub fn describe(props: &BasicProperties, bytes: usize) -> DeadLetter {
    let empty = FieldTable::default();
    let h = props.headers().as_ref().unwrap_or(&empty);
    let id = props.message_id().as_ref().map(|m| m.as_str().to_string());
    let pool = header_text(h, POOL_HEADER).or_else(|| {
        first_death(h).and_then(|d| d.queue.strip_prefix(POOL_QUEUE_PREFIX).map(str::to_string))
    });
    let detail = header_text(h, DETAIL_HEADER);
    let submitter = header_text(h, SUBMITTER_HEADER);
    let signed = h.inner().contains_key(SIGNATURE_HEADER);
    match header_text(h, REASON_HEADER) {
        Some(reason) => DeadLetter {
            id,
            reason,
            detail,
            submitter,
            signed,
            pool,
            by: header_text(h, crate::topology::WORKER_HEADER).unwrap_or_else(|| "worker".into()),
            bytes,
        },
        None => {
            let why = first_death(h).map_or_else(|| "unknown".into(), |d| d.reason);
            let reason = match why.as_str() {
                "delivery_limit" => {
                    "delivery limit reached: the task kept losing its worker".to_string()
                }
                "rejected" => "rejected by a worker".to_string(),
                "expired" => "message expired".to_string(),
                "maxlen" => "queue length limit".to_string(),
                other => other.to_string(),
            };
            DeadLetter {
                id,
                reason,
                detail,
                submitter,
                signed,
                pool,
                by: "rabbitmq".into(),
                bytes,
            }
        }
    }
}

impl Client {
    /// Every message in `krill.dead` (the queue is left as it was).
    pub async fn dead_list(&self) -> Result<Vec<DeadLetter>, ClientError> {
        let ch = self.channel();
        let mut held = Vec::new();
        let mut out = Vec::new();
        while let Some(msg) = ch
            .basic_get(
                ShortString::from(DEAD_QUEUE),
                BasicGetOptions { no_ack: false },
            )
            .await?
        {
            out.push(describe(&msg.delivery.properties, msg.delivery.data.len()));
            held.push(msg.delivery.acker);
        }
        for acker in held {
            acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await?;
        }
        Ok(out)
    }

    /// Puts dead tasks back on their pool's queue: the one with id `id`, or all
    /// when `id` is None. Returns the ids replayed and the ones that could not be.
    pub async fn dead_replay(
        &self,
        id: Option<&str>,
    ) -> Result<(Vec<String>, Vec<String>), ClientError> {
        let ch = self.channel();
        let mut held = Vec::new();
        let mut done = Vec::new();
        let mut skipped = Vec::new();
        while let Some(msg) = ch
            .basic_get(
                ShortString::from(DEAD_QUEUE),
                BasicGetOptions { no_ack: false },
            )
            .await?
        {
            let d = msg.delivery;
            let info = describe(&d.properties, d.data.len());
            let wanted = match id {
                Some(want) => info.id.as_deref() == Some(want),
                None => true,
            };
            if !wanted {
                held.push(d.acker);
                continue;
            }
            let label = info.id.clone().unwrap_or_else(|| "(no id)".into());
            let Some(pool) = info.pool.clone() else {
                skipped.push(format!("{label}: pool unknown"));
                held.push(d.acker);
                continue;
            };
            let props = d
                .properties
                .clone()
                .with_headers(self.replay_headers(d.properties.headers().as_ref(), &pool));
            match publish_confirmed(&ch, TASKS_EXCHANGE, &pool, &d.data, props, true)
                .await
                .map_err(ClientError::from)
            {
                Ok(()) => {
                    d.acker.ack(BasicAckOptions::default()).await?;
                    done.push(label);
                }
                Err(e) => {
                    skipped.push(format!("{label}: {e}"));
                    held.push(d.acker);
                }
            }
        }
        for acker in held {
            acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await?;
        }
        Ok((done, skipped))
    }

    /// The headers of a replayed copy: the task's own signature headers, and a
    /// replay authorization of this client's identity when it has one.
    fn replay_headers(&self, dead: Option<&FieldTable>, pool: &str) -> FieldTable {
        let mut out = FieldTable::default();
        let Some(h) = dead else { return out };
        for name in [KEY_HEADER, SIGNATURE_HEADER, NOT_AFTER_HEADER] {
            if let Some(v) = h.inner().get(name) {
                out.insert(ShortString::from(name), v.clone());
            }
        }
        if let (Some(id), Some(sig)) = (
            self.credentials().identity.as_ref(),
            header_text(h, SIGNATURE_HEADER),
        ) {
            let not_after = now_unix() + REPLAY_VALIDITY.as_secs();
            sign::sign_replay(id, pool, &sig, not_after).put_replay(&mut out);
        }
        out
    }
}
