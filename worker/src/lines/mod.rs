//! Concurrency keys: at most `max_concurrent` tasks with the same key run at
//! once across the pool, in submit order, none dropped.
//!
//! Each key has a line: a classic durable queue `krill.line.<pool>.<key>` with a
//! single active consumer. Every worker of the pool consumes every line (it
//! learns them from the keys stream); the broker delivers a line's tasks only to
//! its active consumer, so one worker at a time holds a line, in the queue's
//! order. It keeps the line's waiting tasks unacked (they take no slot), starts
//! the next when fewer than its `max_concurrent` run and a slot is free, and
//! answers cancelled and superseded waiting tasks at once. A worker that dies
//! (or loses its connection) gives the line back whole: the broker returns its
//! deliveries to their places and the next consumer becomes active.
//!
//! ```text
//! run(shared, conn)                 per connection, beside the claim loop
//!  ├─ log::tail          krill.lines.log: start/done records (start evidence)
//!  └─ keys               krill.keys: one line::keep(key) per key of this pool
//!       line::keep → line::serve: consume the line (own channel, SAC), step():
//!         classify redeliveries (log: never started / held by a live worker / done / lost)
//!         answer cancelled, superseded, rejected; start the head when the key and a slot allow
//!         (start record confirmed first; the delivery is settled through LineSettle,
//!          which writes the done record before the ack); blocked events; the view
//!         release the line (close its channel) while draining, or when the head
//!         waits for a slot here with nothing of the key running here
//! ```

pub mod line;

use std::collections::HashSet;
use std::sync::Arc;

use broker::amqp::{self, StreamFrom};
use broker::protocol::{valid_key, KeyAnnounce};
use broker::topology::{self, KEYS_STREAM};
use futures_util::StreamExt;
use lapin::options::BasicAckOptions;
use lapin::types::ShortString;
use lapin::Connection;
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

use crate::keyed::{log, LinesError};
use crate::worker::Shared;

/// Serves every line of this worker's pool on `conn` until it breaks. A broker
/// without streams (or a user without the permission) cannot serve keyed
/// tasks: that is logged and the rest of the worker goes on.
pub async fn run(
    shared: Arc<Shared>,
    conn: Arc<Connection>,
    handlers: TaskTracker,
) -> Result<(), LinesError> {
    let ch = conn.create_channel().await?;
    topology::declare_lines(&ch).await?;
    let _ = ch.close(200, ShortString::from("declared")).await;
    let lines = &shared.lines;
    tokio::select! {
        r = log::tail(&lines.log, &conn, &shared.id) => r,
        r = keys(&shared, &conn, &handlers) => r,
    }
}

/// Reads the keys stream from its first record and keeps a line for each key of
/// this pool.
async fn keys(
    shared: &Arc<Shared>,
    conn: &Arc<Connection>,
    handlers: &TaskTracker,
) -> Result<(), LinesError> {
    let ch = conn.create_channel().await?;
    let mut consumer = amqp::consume_stream(
        &ch,
        KEYS_STREAM,
        &format!("krill-keys.{}", shared.id),
        500,
        StreamFrom::First,
    )
    .await?;
    let mut known = HashSet::new();
    // Announcements of new keys refused at the cap (counted, said once).
    let mut refused = 0u64;
    let mut lines = JoinSet::new();
    loop {
        tokio::select! {
            d = consumer.next() => {
                let Some(d) = d else { return Err(LinesError::Ended("keys stream")) };
                let d = d?;
                if let Ok(a) = serde_json::from_slice::<KeyAnnounce>(&d.data) {
                    if a.pool == shared.pool && valid_key(&a.key) && !known.contains(&a.key) {
                        if known.len() >= shared.cfg.max_lines {
                            refused += 1;
                            if refused == 1 {
                                tracing::error!(key = %a.key, max_lines = shared.cfg.max_lines,
                                    "the cap of concurrency-key lines is reached (--max-lines): this key \
                                     and any further one are not served by this worker; their tasks wait \
                                     in their lines (key announcements are unsigned: a flood of made-up \
                                     keys fills the cap)");
                            }
                            shared.run.metrics.line_refused();
                        } else {
                            known.insert(a.key.clone());
                            tracing::info!(key = %a.key, "serving the line of a concurrency key");
                            lines.spawn(line::keep(shared.clone(), conn.clone(), a.key, handlers.clone()));
                        }
                    }
                }
                d.acker.ack(BasicAckOptions::default()).await?;
            }
            Some(ended) = lines.join_next() => {
                if let Ok(Err(e)) = ended {
                    return Err(e);
                }
            }
        }
    }
}
