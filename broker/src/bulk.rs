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
//! **Which reply queue.** Given one URL, the reply queue is exclusive and
//! auto-deleted: it dies with the connection, and results of tasks still
//! running when the client goes away are dropped by the broker (the worker sees
//! them as unroutable and logs it); use `Client` when results must outlive the
//! submitter. Given a list of URLs (a cluster's nodes), it is a **quorum
//! queue** (replicated like the pool queue, expiring [`REPLICATED_REPLY_EXPIRES_MS`]
//! after its last use, deleted by [`BulkClient::close`]), and the client
//! **fails over**: when its node is lost it reconnects to the next one
//! ([`crate::client::link`]), consumes the same reply queue again (results
//! are acked only once handed to their ticket, so none is lost with the
//! node), and publishes again each task whose confirm was lost (the same
//! bytes; an unsigned copy marked [`topology::RESENT_HEADER`], a signed one
//! refused `replayed` by the claims stream: the task runs once). What a
//! replicated reply queue costs per result is in the README's benchmarks
//! ("On the cluster"). [`Replies`] chooses either way explicitly.
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation, PublisherConfirm};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::amqp::{self, publish_confirmed, PublishError};
use crate::client::link::{lost, Link, Links};
use crate::client::{resent_properties, task_properties, ClientError, RECONNECT_FOR};
use crate::protocol::{Task, TaskResult};
use crate::topology;
use crate::trust::Credentials;

/// Prefix of a bulk client's reply queue; the rest is a random UUID.
pub const CLIENT_REPLY_PREFIX: &str = "krill.reply.client.";
/// Published tasks whose confirm has not arrived yet, at most (back-pressure:
/// `submit` waits when the window is full).
pub const DEFAULT_WINDOW: usize = 1024;
/// A replicated reply queue is deleted by the broker this long after it was
/// last used (its client died without [`BulkClient::close`]).
pub const REPLICATED_REPLY_EXPIRES_MS: i64 = 3600 * 1000;
/// A nacked task (on a client with a replicated reply queue) is published
/// again this many times, backing off from 100 ms.
const NACK_RETRIES: u32 = 5;
/// Results a replicated reply queue's consumer holds unacked at most.
const REPLY_PREFETCH: u16 = 512;

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<TaskResult>>>>;

/// The kind of reply queue a [`BulkClient`] reads its results from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replies {
    /// Exclusive and auto-deleted: gone with the connection (no failover).
    Exclusive,
    /// A quorum queue: survives the loss of a node, and the client fails over.
    Replicated,
}

impl Replies {
    /// Replicated when `url` lists more than one node.
    pub fn for_urls(url: &str) -> Replies {
        match amqp::urls(url).len() {
            0 | 1 => Replies::Exclusive,
            _ => Replies::Replicated,
        }
    }
}

/// A connection for submitting many tasks and collecting their results.
#[derive(Debug)]
pub struct BulkClient {
    inner: Arc<Inner>,
    reader: tokio::task::JoinHandle<()>,
    creds: Credentials,
}

#[derive(Debug)]
struct Inner {
    links: Links,
    reply_queue: String,
    replies: Replies,
    waiters: Waiters,
    window: Arc<Semaphore>,
    /// Set by [`BulkClient::close`]: a confirm lost after it is not made good.
    closed: AtomicBool,
}

/// One submitted task: its publish confirm and, later, its result.
///
/// The confirm is settled in the background from the moment of the publish
/// (its window slot is free again once the broker confirms), not when the
/// ticket is asked: a confirm lost with its node is made good at once, side by
/// side with every other one, whether or not anybody awaits this ticket.
#[derive(Debug)]
pub struct Ticket {
    id: String,
    confirm: Option<Settling>,
    result: oneshot::Receiver<TaskResult>,
}

/// A ticket's confirm: known already, or being settled by a task of its own.
#[derive(Debug)]
enum Settling {
    Done(Result<(), ClientError>),
    Spawned(tokio::task::JoinHandle<Result<(), ClientError>>),
}

/// A publish whose confirm is awaited, and what to publish again if the
/// connection is lost first.
#[derive(Debug)]
enum Pending {
    Sent {
        confirm: PublisherConfirm,
        again: Option<Box<Again>>,
    },
    Done(Result<(), ClientError>),
}

/// Everything needed to publish a task again on another connection.
#[derive(Debug)]
struct Again {
    inner: Arc<Inner>,
    pool: String,
    body: Vec<u8>,
    props: BasicProperties,
}

impl BulkClient {
    /// Connects, declares the common exchanges and this client's reply queue,
    /// and starts reading results ([`Replies::for_urls`] chooses the queue).
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with_window(url, DEFAULT_WINDOW).await
    }

    /// [`BulkClient::connect`] with at most `window` unconfirmed publishes.
    pub async fn connect_with_window(url: &str, window: usize) -> Result<Self, ClientError> {
        Self::connect_with(url, window, Replies::for_urls(url)).await
    }

    /// [`BulkClient::connect`] with at most `window` unconfirmed publishes and
    /// the reply queue `replies`.
    pub async fn connect_with(
        url: &str,
        window: usize,
        replies: Replies,
    ) -> Result<Self, ClientError> {
        // Same connection set-up as the single-task client, including the passive
        // topology check a least-privilege submitter needs.
        let links = Links::connect(url, "krill-bulk").await?;
        let reply_queue = format!("{CLIENT_REPLY_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let consumer = consume_replies(&links.current(), &reply_queue, replies).await?;
        let inner = Arc::new(Inner {
            links,
            reply_queue,
            replies,
            waiters: Arc::default(),
            window: Arc::new(Semaphore::new(window.max(1))),
            closed: AtomicBool::new(false),
        });
        let reader = tokio::spawn(read_results(inner.clone(), consumer));
        Ok(BulkClient {
            inner,
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
        &self.inner.reply_queue
    }

    /// The kind of reply queue this client reads.
    pub fn replies(&self) -> Replies {
        self.inner.replies
    }

    /// Which URL of the list the client is connected to now (its position).
    pub fn node(&self) -> usize {
        self.inner.links.current().index
    }

    /// Validates and publishes `task` to `pool` (persistent, mandatory) without
    /// waiting for its confirm; waits only when [`DEFAULT_WINDOW`] publishes are
    /// unconfirmed. The confirm and the result are in the returned [`Ticket`].
    pub async fn submit(&self, pool: &str, task: &Task) -> Result<Ticket, ClientError> {
        if !topology::valid_pool(pool) {
            return Err(ClientError::Pool(pool.to_string()));
        }
        task.validate()?;
        let (body, headers) = self
            .creds
            .prepare_task(pool, &self.inner.reply_queue, task)?;
        let signed = !headers.inner().is_empty();
        let permit = self
            .inner
            .window
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Nacked)?;
        let (tx, rx) = oneshot::channel();
        self.lock().insert(task.id.clone(), tx);
        let props = task_properties(task)
            .with_reply_to(ShortString::from(self.inner.reply_queue.as_str()))
            .with_headers(headers);
        let link = self.inner.links.current();
        let published = match link.broken() {
            true => None,
            false => Some(
                link.channel
                    .basic_publish(
                        ShortString::from(topology::TASKS_EXCHANGE),
                        ShortString::from(pool),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &body,
                        props.clone(),
                    )
                    .await,
            ),
        };
        let failover = self.inner.replies == Replies::Replicated;
        let again = |body: Vec<u8>| Again {
            inner: self.inner.clone(),
            pool: pool.to_string(),
            body,
            props: resent_properties(&props, signed),
        };
        let pending = match published {
            Some(Ok(confirm)) => Pending::Sent {
                confirm,
                again: failover.then(|| Box::new(again(body))),
            },
            // The node was lost before the publish left: publish it on the next.
            Some(Err(e)) if failover && lost(&ClientError::Amqp(e.clone())) => {
                Pending::Done(again(body).publish(Some(link)).await)
            }
            None if failover => Pending::Done(again(body).publish(Some(link)).await),
            Some(Err(e)) => {
                self.lock().remove(&task.id);
                return Err(e.into());
            }
            None => {
                self.lock().remove(&task.id);
                return Err(ClientError::Amqp(lapin::Error::from(
                    lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
                )));
            }
        };
        let confirm = match pending {
            Pending::Done(r) => Settling::Done(r),
            sent => Settling::Spawned(tokio::spawn(settle(
                self.inner.clone(),
                task.id.clone(),
                pool.to_string(),
                sent,
                permit,
            ))),
        };
        Ok(Ticket {
            id: task.id.clone(),
            confirm: Some(confirm),
            result: rx,
        })
    }

    /// How many submitted tasks have no result yet.
    pub fn outstanding(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<TaskResult>>> {
        self.inner
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the connection (an exclusive reply queue goes with it; a
    /// replicated one is deleted first).
    pub async fn close(self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.reader.abort();
        if self.inner.replies == Replies::Replicated {
            let link = self.inner.links.current();
            let _ = link
                .channel
                .queue_delete(
                    ShortString::from(self.inner.reply_queue.as_str()),
                    QueueDeleteOptions::default(),
                )
                .await;
        }
        self.inner.links.close().await;
    }
}

impl Drop for BulkClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Again {
    /// Publishes the task again (marked as a copy when unsigned) and waits for
    /// its confirm, failing over to the next node as often as that allows.
    /// `lost`: the link the first publish was lost with, if known.
    async fn publish(&self, lost: Option<Link>) -> Result<(), ClientError> {
        if let Some(l) = lost {
            if l.broken() {
                self.inner.links.relink(&l).await?;
            }
        }
        let pool = self.pool.as_str();
        self.inner
            .links
            .failover("bulk submit", |link, _| async move {
                let mut backoff = Duration::from_millis(100);
                for nacks in 0.. {
                    let sent = publish_confirmed(
                        &link.channel,
                        topology::TASKS_EXCHANGE,
                        pool,
                        &self.body,
                        self.props.clone(),
                        true,
                    )
                    .await;
                    match sent {
                        Err(PublishError::Nacked) if nacks < NACK_RETRIES => {
                            tokio::time::sleep(backoff).await;
                            backoff *= 2;
                        }
                        Err(PublishError::Unroutable(_)) => {
                            return Err(ClientError::Unroutable(pool.to_string()))
                        }
                        other => return other.map_err(ClientError::from),
                    }
                }
                unreachable!("the loop returns")
            })
            .await
    }
}

impl Ticket {
    /// The task's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the broker's confirm: `Ok` once the task is safely queued.
    /// Calling it again after it returned is a no-op. On a client with a
    /// replicated reply queue, a confirm lost with its node was made good (in
    /// the background, as soon as the loss was seen) by publishing the task
    /// again on the next node, unless its result had come already.
    pub async fn confirmed(&mut self) -> Result<(), ClientError> {
        match self.confirm.take() {
            None => Ok(()),
            Some(Settling::Done(r)) => r,
            Some(Settling::Spawned(h)) => h.await.unwrap_or_else(|e| {
                Err(ClientError::Amqp(lapin::Error::from(
                    lapin::ErrorKind::InvalidConnectionState(match e.is_cancelled() {
                        true => lapin::ConnectionState::Closed,
                        false => lapin::ConnectionState::Error,
                    }),
                )))
            }),
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

/// Settles one publish: waits for its confirm (holding its window slot until
/// then) and, on a client with a replicated reply queue, publishes the task
/// again when it was nacked or its confirm was lost with the node — unless
/// its result came meanwhile (the first copy was taken and ran: a second one
/// would only keep a worker busy making sure it ran), or the client was closed.
async fn settle(
    inner: Arc<Inner>,
    id: String,
    pool: String,
    pending: Pending,
    _permit: OwnedSemaphorePermit,
) -> Result<(), ClientError> {
    let (confirm, again) = match pending {
        Pending::Done(r) => return r,
        Pending::Sent { confirm, again } => (confirm, again),
    };
    match confirm.await {
        Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => Ok(()),
        Ok(Confirmation::Ack(Some(_))) => Err(ClientError::Unroutable(pool)),
        Ok(Confirmation::Nack(_)) => match again {
            // Seen while a quorum queue elects a leader after its node
            // was lost: published again (as a marked copy), a few times.
            Some(again) => again.publish(None).await,
            None => Err(ClientError::Nacked),
        },
        Err(e) => match again {
            Some(again) if lost(&ClientError::Amqp(e.clone())) => {
                if inner.closed.load(Ordering::SeqCst) {
                    return Err(e.into());
                }
                if !inner.awaits(&id) {
                    tracing::debug!(task_id = %id,
                        "the confirm was lost with the broker node but the result came: not publishing the task again");
                    return Ok(());
                }
                tracing::warn!(task_id = %id, error = %e,
                    "the confirm was lost with the broker node; publishing the task again");
                let link = inner.links.current();
                again.publish(Some(link)).await
            }
            _ => Err(e.into()),
        },
    }
}

impl Inner {
    /// Whether task `id` still waits for its result here.
    fn awaits(&self, id: &str) -> bool {
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(id)
    }
}

/// Declares the reply queue on `link` (exclusive: made again on each
/// connection; replicated: durable, the same queue on every node) and consumes it.
async fn consume_replies(
    link: &Link,
    queue: &str,
    replies: Replies,
) -> Result<lapin::Consumer, ClientError> {
    let ch = link.conn.create_channel().await?;
    if replies == Replies::Exclusive {
        return Ok(amqp::tap(&ch, queue, &[], "krill-bulk").await?.consumer);
    }
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args.insert(
        ShortString::from("x-expires"),
        AMQPValue::LongLongInt(REPLICATED_REPLY_EXPIRES_MS),
    );
    // Only one consumer at a time gets its results: a second connection of the
    // same account that learnt the name (not exclusive: it must outlive its
    // node) registers, but gets nothing while this client consumes, and
    // RabbitMQ refuses a basic.get on it (RESOURCE_LOCKED).
    args.insert(
        ShortString::from("x-single-active-consumer"),
        AMQPValue::Boolean(true),
    );
    ch.queue_declare(
        ShortString::from(queue),
        QueueDeclareOptions::durable(),
        args,
    )
    .await?;
    ch.basic_qos(REPLY_PREFETCH, BasicQosOptions::default())
        .await?;
    Ok(ch
        .basic_consume(
            ShortString::from(queue),
            ShortString::from("krill-bulk"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?)
}

/// Hands each result to its ticket; results for unknown ids (a second copy after
/// a redelivery, or a task whose ticket was dropped) are dropped. On a
/// replicated reply queue a lost connection is followed to the next node
/// (for up to [`RECONNECT_FOR`]); an exclusive one ends with its connection.
async fn read_results(inner: Arc<Inner>, mut consumer: lapin::Consumer) {
    let mut link = inner.links.current();
    loop {
        while let Some(delivery) = consumer.next().await {
            let Ok(delivery) = delivery else { break };
            hand_over(&inner.waiters, &delivery);
            if inner.replies == Replies::Replicated {
                // Acked once handed over: a result delivered to a connection
                // that died comes back on the next.
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            }
        }
        if inner.replies == Replies::Exclusive {
            break;
        }
        match follow(&inner, &link).await {
            Some((l, c)) => {
                link = l;
                consumer = c;
            }
            None => break,
        }
    }
    // The connection is gone for good: wake every waiter with an error.
    inner
        .waiters
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
}

/// Reconnects after `lost` and consumes the replicated reply queue again.
async fn follow(inner: &Inner, lost: &Link) -> Option<(Link, lapin::Consumer)> {
    let since = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(100);
    let mut link = lost.clone();
    while since.elapsed() < RECONNECT_FOR {
        tokio::time::sleep(amqp::jittered(pause)).await;
        pause = (pause * 2).min(Duration::from_secs(5));
        if link.broken() {
            match inner.links.relink(&link).await {
                Ok(l) => link = l,
                Err(e) => {
                    tracing::warn!(error = %e, "bulk reply queue: no node answered; trying again");
                    continue;
                }
            }
        }
        match consume_replies(&link, &inner.reply_queue, inner.replies).await {
            Ok(c) => {
                tracing::info!(queue = %inner.reply_queue, "consuming the bulk reply queue again");
                return Some((link, c));
            }
            Err(e) => tracing::warn!(error = %e, "bulk reply queue: cannot consume it again yet"),
        }
    }
    None
}

/// Gives one result to the ticket waiting for it.
fn hand_over(waiters: &Waiters, delivery: &lapin::message::Delivery) {
    let result = match serde_json::from_slice::<TaskResult>(&delivery.data) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring unparsable message on the bulk reply queue");
            return;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_list_gets_a_replicated_reply_queue() {
        assert_eq!(Replies::for_urls("amqp://a/%2f"), Replies::Exclusive);
        assert_eq!(
            Replies::for_urls("amqp://a/%2f,amqp://b/%2f"),
            Replies::Replicated
        );
        assert_eq!(Replies::for_urls(" amqp://a/%2f, "), Replies::Exclusive);
    }

    #[test]
    fn reply_queue_names_are_in_the_topology() {
        let name = format!("{CLIENT_REPLY_PREFIX}{}", uuid::Uuid::new_v4().simple());
        assert!(name.starts_with(topology::REPLY_QUEUE_PREFIX));
    }
}
