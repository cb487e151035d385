//! Bulk submission: many tasks over one connection, every result on one
//! exclusive reply queue of the client's, matched to its task by correlation id.
//!
//! [`Client::submit`](crate::client::Client::submit) declares a durable reply
//! queue per task (`krill.reply.<id>`) so that `krill wait` works from any
//! process and across restarts; that is one queue declare per task and a confirm
//! awaited before the next publish. A submitter that stays connected until its
//! results arrive (a pipeline stage, a test harness, a benchmark) does not need
//! that: [`BulkClient`] declares one exclusive, auto-deleted queue
//! `krill.reply.client.<uuid>` for its whole life, publishes without waiting for
//! each confirm (up to [`DEFAULT_WINDOW`] unconfirmed at once), and hands each
//! result to the [`Ticket`] of its task.
//!
//! The trade-off: the reply queue dies with the connection. Results of tasks
//! still running when the client goes away are dropped by the broker (the worker
//! sees them as unroutable and logs it); use `Client` when results must outlive
//! the submitter.
//!
//! ```no_run
//! # async fn f() -> Result<(), broker::client::ClientError> {
//! use broker::bulk::BulkClient;
//! use broker::protocol::Task;
//! let client = BulkClient::connect("amqp://127.0.0.1:5672/%2f").await?;
//! let mut tickets = Vec::new();
//! for i in 0..1000 {
//!     tickets.push(client.submit("default", &Task::new(format!("t-{i}"), "true")).await?);
//! }
//! for t in tickets {
//!     let result = t.result(None).await?;
//!     assert_eq!(result.status, broker::protocol::Status::Succeeded);
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{Channel, Confirmation, Connection, PublisherConfirm};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::client::{open_named, task_properties, ClientError};
use crate::protocol::{Task, TaskResult};
use crate::topology;
use crate::trust::Credentials;

/// Prefix of a bulk client's reply queue; the rest is a random UUID.
pub const CLIENT_REPLY_PREFIX: &str = "krill.reply.client.";
/// Published tasks whose confirm has not arrived yet, at most (back-pressure:
/// `submit` waits when the window is full).
pub const DEFAULT_WINDOW: usize = 1024;

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<TaskResult>>>>;

/// A connection for submitting many tasks and collecting their results.
#[derive(Debug)]
pub struct BulkClient {
    conn: Connection,
    channel: Channel,
    reply_queue: String,
    waiters: Waiters,
    window: Arc<Semaphore>,
    reader: tokio::task::JoinHandle<()>,
    creds: Credentials,
}

/// One submitted task: its publish confirm and, later, its result.
#[derive(Debug)]
pub struct Ticket {
    id: String,
    pool: String,
    confirm: Option<(PublisherConfirm, OwnedSemaphorePermit)>,
    result: oneshot::Receiver<TaskResult>,
}

impl BulkClient {
    /// Connects, declares the common exchanges and this client's reply queue,
    /// and starts reading results.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with_window(url, DEFAULT_WINDOW).await
    }

    /// [`BulkClient::connect`] with at most `window` unconfirmed publishes.
    pub async fn connect_with_window(url: &str, window: usize) -> Result<Self, ClientError> {
        // Same connection set-up as the single-task client, including the passive
        // topology check a least-privilege submitter needs.
        let (conn, channel) = open_named(url, "krill-bulk").await?;

        let reply_queue = format!("{CLIENT_REPLY_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let replies = conn.create_channel().await?;
        let consumer = crate::amqp::tap(&replies, &reply_queue, &[], "krill-bulk")
            .await?
            .consumer;
        let waiters: Waiters = Arc::default();
        let reader = tokio::spawn(read_results(replies, consumer, waiters.clone()));
        Ok(BulkClient {
            conn,
            channel,
            reply_queue,
            waiters,
            window: Arc::new(Semaphore::new(window.max(1))),
            reader,
            creds: Credentials::default(),
        })
    }

    /// Seals and signs every task with `creds` from now on.
    pub fn with_credentials(mut self, creds: Credentials) -> Self {
        self.creds = creds;
        self
    }

    /// The queue results come back on (`reply_to` of every task this client submits).
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    /// Validates and publishes `task` to `pool` (persistent, mandatory) without
    /// waiting for its confirm; waits only when [`DEFAULT_WINDOW`] publishes are
    /// unconfirmed. The confirm and the result are in the returned [`Ticket`].
    pub async fn submit(&self, pool: &str, task: &Task) -> Result<Ticket, ClientError> {
        if !topology::valid_pool(pool) {
            return Err(ClientError::Pool(pool.to_string()));
        }
        task.validate()?;
        let (body, headers) = self.creds.prepare_task(pool, &self.reply_queue, task)?;
        let permit = self
            .window
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Nacked)?;
        let (tx, rx) = oneshot::channel();
        self.lock().insert(task.id.clone(), tx);
        let props = task_properties(task)
            .with_reply_to(ShortString::from(self.reply_queue.as_str()))
            .with_headers(headers);
        let published = self
            .channel
            .basic_publish(
                ShortString::from(topology::TASKS_EXCHANGE),
                ShortString::from(pool),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                props,
            )
            .await;
        match published {
            Ok(confirm) => Ok(Ticket {
                id: task.id.clone(),
                pool: pool.to_string(),
                confirm: Some((confirm, permit)),
                result: rx,
            }),
            Err(e) => {
                self.lock().remove(&task.id);
                Err(e.into())
            }
        }
    }

    /// How many submitted tasks have no result yet.
    pub fn outstanding(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<TaskResult>>> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the connection (the reply queue goes with it).
    pub async fn close(self) {
        self.reader.abort();
        let _ = self.conn.close(200, ShortString::from("bye")).await;
    }
}

impl Drop for BulkClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Ticket {
    /// The task's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the broker's confirm: `Ok` once the task is safely queued.
    /// Calling it again after it returned is a no-op.
    pub async fn confirmed(&mut self) -> Result<(), ClientError> {
        let Some((confirm, _permit)) = self.confirm.take() else {
            return Ok(());
        };
        match confirm.await? {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(ClientError::Unroutable(self.pool.clone())),
            Confirmation::Nack(_) => Err(ClientError::Nacked),
        }
    }

    /// Waits for the confirm, then for the task's first result (up to `timeout`).
    pub async fn result(mut self, timeout: Option<Duration>) -> Result<TaskResult, ClientError> {
        let id = self.id.clone();
        let wait = async move {
            self.confirmed().await?;
            self.result.await.map_err(|_| {
                ClientError::Amqp(lapin::Error::from(
                    lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
                ))
            })
        };
        match timeout {
            Some(t) => tokio::time::timeout(t, wait)
                .await
                .map_err(|_| ClientError::Timeout(id, t))?,
            None => wait.await,
        }
    }
}

/// Hands each result to its ticket; results for unknown ids (a second copy after
/// a redelivery, or a task whose ticket was dropped) are dropped.
async fn read_results(_channel: Channel, mut consumer: lapin::Consumer, waiters: Waiters) {
    while let Some(delivery) = consumer.next().await {
        let Ok(delivery) = delivery else { break };
        let result = match serde_json::from_slice::<TaskResult>(&delivery.data) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring unparsable message on the bulk reply queue");
                continue;
            }
        };
        let key = delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_else(|| result.id.clone());
        let waiter = waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        match waiter {
            Some(tx) => {
                let _ = tx.send(result);
            }
            None => tracing::debug!(task_id = %key, "dropping a result nobody waits for"),
        }
    }
    // The connection is gone: wake every waiter with an error.
    waiters
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_queue_names_are_in_the_topology() {
        let name = format!("{CLIENT_REPLY_PREFIX}{}", uuid::Uuid::new_v4().simple());
        assert!(name.starts_with(topology::REPLY_QUEUE_PREFIX));
    }
}
