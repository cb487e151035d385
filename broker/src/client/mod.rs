//! The submitting side: submit tasks, wait for results, follow logs, send
//! control commands (the AMQP plumbing it shares with the worker is in
//! [`amqp`](crate::amqp)).
//!
//! Results are read from the per-task reply queue `krill.reply.<id>` (durable, expiring),
//! so `wait` works from any process, after the submitter crashed and across broker
//! restarts. Results may be delivered more than once in a crash window; `wait`
//! returns the first terminal result for the id and deletes the queue, so later
//! copies are dropped by the broker.

mod follow;
pub mod link;

pub use follow::{FinishWatch, LogFollower, ProgressWatch};
pub use link::{Link, Links};

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::Serialize;

use crate::amqp::{self, publish_confirmed};
use crate::protocol::{Control, KeyAnnounce, Task, TaskResult, TaskState};
use crate::topology::{self, CONTENT_TYPE};
use crate::trust::{Credentials, TrustError};

/// How long `wait` keeps trying to reconnect to a broker that went away.
pub const RECONNECT_FOR: Duration = Duration::from_secs(300);

/// What went wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach RabbitMQ at {url}: {source}")]
    Connect {
        url: String,
        source: amqp::ConnectAnyError,
    },
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("invalid task: {0}")]
    Invalid(#[from] crate::protocol::TaskError),
    #[error("invalid pool name `{0}` (1-64 characters of a-z 0-9 - _)")]
    Pool(String),
    #[error("no queue for pool `{0}`: no worker has declared it yet (start a worker with KRILL_POOL={0})")]
    Unroutable(String),
    #[error("the broker refused the message (queue full or out of resources)")]
    Nacked,
    #[error("no result for task {0} within {1:?}")]
    Timeout(String, Duration),
    #[error("the krill exchanges do not exist on this broker and this user may not create them: start a worker first (workers declare them)")]
    NoTopology,
    #[error("serializing: {0}")]
    Json(#[from] serde_json::Error),
    #[error("signing or sealing: {0}")]
    Trust(#[from] TrustError),
}

impl From<amqp::PublishError> for ClientError {
    fn from(e: amqp::PublishError) -> Self {
        match e {
            amqp::PublishError::Amqp(e) => ClientError::Amqp(e),
            amqp::PublishError::Unroutable(key) => ClientError::Unroutable(key),
            amqp::PublishError::Nacked => ClientError::Nacked,
        }
    }
}

/// A connection to the broker for submitters. With [`Credentials`] (see
/// [`Client::with_credentials`]) it seals secrets to the pool key and signs
/// every task and control message it sends.
///
/// Given a list of URLs (a cluster's nodes) it fails over: `submit`, the
/// control messages and `wait` reconnect to the next node when theirs is lost
/// ([`link`]).
#[derive(Debug)]
pub struct Client {
    links: Links,
    creds: Credentials,
}

/// The AMQP properties of a task message.
pub fn task_properties(task: &Task) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from(CONTENT_TYPE))
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(task.id.as_str()))
        .with_correlation_id(ShortString::from(task.id.as_str()))
        .with_reply_to(ShortString::from(topology::reply_queue(&task.id)))
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_type(ShortString::from("krill.task.v1"))
}

/// Connects as `name` to the first node of the list that answers, from the
/// one at `start`, opens a channel with publisher confirms and checks the
/// exchanges exist (shared by every client kind). Also says which node.
pub(crate) async fn open_at(
    url: &str,
    name: &str,
    start: usize,
) -> Result<(Connection, Channel, usize), ClientError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    // Any node of a cluster will do: every queue Krill uses is replicated.
    let connected = amqp::connect_any(url, start, props)
        .await
        .map_err(|source| ClientError::Connect {
            url: amqp::redact_urls(url),
            source,
        })?;
    let conn = connected.conn;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    ensure_topology(&conn).await?;
    Ok((conn, channel, connected.index))
}

/// Checks that the exchanges exist with a passive declare, which needs no
/// `configure` permission (a least-privilege submitter has none); only when they
/// are missing does it try to declare them (an admin user can).
async fn ensure_topology(conn: &Connection) -> Result<(), ClientError> {
    let probe = conn.create_channel().await?;
    let passive = probe
        .exchange_declare(
            ShortString::from(topology::TASKS_EXCHANGE),
            lapin::ExchangeKind::Direct,
            lapin::options::ExchangeDeclareOptions {
                passive: true,
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    if passive.is_ok() {
        let _ = probe.close(200, ShortString::from("ok")).await;
        return Ok(());
    }
    let ch = conn.create_channel().await?;
    topology::declare_common(&ch)
        .await
        .map_err(|_| ClientError::NoTopology)?;
    let _ = ch.close(200, ShortString::from("ok")).await;
    Ok(())
}

impl Client {
    /// Connects and declares the common exchanges.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Ok(Client {
            links: Links::connect(url, "krill").await?,
            creds: Credentials::default(),
        })
    }

    /// Seals and signs with `creds` from now on.
    pub fn with_credentials(mut self, creds: Credentials) -> Self {
        self.creds = creds;
        self
    }

    /// What this client seals and signs with.
    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    /// The channel (publisher confirms on) of the current connection, for
    /// callers that need more (no failover: after a node is lost, the next
    /// `submit` or control message reconnects).
    pub fn channel(&self) -> Channel {
        self.links.current().channel
    }

    /// The current connection.
    fn conn(&self) -> Arc<Connection> {
        self.links.current().conn
    }

    /// Which URL of the list this client is connected to now (its position).
    pub fn node(&self) -> usize {
        self.links.current().index
    }

    /// Validates and publishes a task to `pool` (persistent, mandatory, confirmed).
    /// Declares the task's reply queue first so its result cannot be lost.
    /// A task with a `concurrency_key` goes to its key's line queue instead (see
    /// [`Client::submit_keyed`]).
    pub async fn submit(&self, pool: &str, task: &Task) -> Result<(), ClientError> {
        if !topology::valid_pool(pool) {
            return Err(ClientError::Pool(pool.to_string()));
        }
        task.validate()?;
        self.publish_task(pool, task, &topology::reply_queue(&task.id), true)
            .await
    }

    /// [`Client::submit`] with the result sent to `reply_to`, a durable queue
    /// the caller declared and consumes (the gateway's one reply queue for all
    /// its tasks): no queue is declared per task.
    pub async fn submit_replying_to(
        &self,
        pool: &str,
        task: &Task,
        reply_to: &str,
    ) -> Result<(), ClientError> {
        self.publish_task(pool, task, reply_to, false).await
    }

    /// Signs (and seals) `task` once, then publishes it, again on another node
    /// when the connection is lost before the confirm ([`Links::failover`]):
    /// the same bytes, the same signature. A copy the broker had taken after
    /// all is caught by the workers: an unsigned one carries
    /// [`topology::RESENT_HEADER`] and is handled as a redelivery (it waits
    /// for its first copy's run, or runs once nobody started it), a signed
    /// one is refused `replayed` by the claims stream (dead-lettered, no
    /// result). With `declare`, the per-task reply queue is declared first.
    async fn publish_task(
        &self,
        pool: &str,
        task: &Task,
        reply_to: &str,
        declare: bool,
    ) -> Result<(), ClientError> {
        if !topology::valid_pool(pool) {
            return Err(ClientError::Pool(pool.to_string()));
        }
        task.validate()?;
        let (body, headers) = self.creds.prepare_task(pool, reply_to, task)?;
        let signed = !headers.inner().is_empty();
        let props = task_properties(task)
            .with_reply_to(ShortString::from(reply_to))
            .with_headers(headers.clone());
        let resent = resent_properties(&props, signed);
        let body = &body;
        self.links
            .failover("submit", |link, tries| {
                let (props, resent) = (&props, &resent);
                async move {
                    if declare {
                        topology::declare_reply_queue(&link.channel, &task.id).await?;
                        if tries > 0 {
                            usable_reply_queue(&link, &task.id).await?;
                        }
                    }
                    // A nack (seen while a quorum queue elects a leader after
                    // its node was lost) is tried again too, as a marked copy.
                    let mut backoff = Duration::from_millis(100);
                    let mut nacks = 0;
                    loop {
                        let props = if tries == 0 && nacks == 0 { props } else { resent };
                        let sent = match &task.concurrency_key {
                            Some(key) => submit_keyed(&link, pool, key, body, props.clone()).await,
                            None => publish_confirmed(
                                &link.channel,
                                topology::TASKS_EXCHANGE,
                                pool,
                                body,
                                props.clone(),
                                true,
                            )
                            .await
                            .map_err(|e| match e {
                                amqp::PublishError::Unroutable(_) => {
                                    ClientError::Unroutable(pool.to_string())
                                }
                                e => e.into(),
                            }),
                        };
                        match sent {
                            Err(ClientError::Nacked) if nacks < SUBMIT_NACK_RETRIES => {
                                nacks += 1;
                                tracing::debug!(task_id = %task.id, nacks, "the task was nacked; publishing it again");
                                tokio::time::sleep(backoff).await;
                                backoff *= 2;
                            }
                            other => return other,
                        }
                    }
                }
            })
            .await
    }

    /// Waits for the first result of task `id` on its reply queue, reconnecting
    /// (for up to [`RECONNECT_FOR`]) if the broker goes away meanwhile.
    pub async fn wait(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<TaskResult, ClientError> {
        let fut = self.wait_inner(id);
        match timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| ClientError::Timeout(id.to_string(), t))?,
            None => fut.await,
        }
    }

    async fn wait_inner(&self, id: &str) -> Result<TaskResult, ClientError> {
        let mut link = self.links.current();
        let mut backoff = Duration::from_millis(200);
        let mut down_since: Option<tokio::time::Instant> = None;
        loop {
            match wait_on(&link.conn, id).await {
                Ok(Some(result)) => return Ok(result),
                Ok(None) | Err(_) => {
                    // The consumer ended or the connection broke: reconnect
                    // (to the next node, when this one is lost) and resume.
                    let since = *down_since.get_or_insert_with(tokio::time::Instant::now);
                    loop {
                        if since.elapsed() > RECONNECT_FOR {
                            return Err(ClientError::Connect {
                                url: amqp::redact_urls(self.links.url()),
                                source: amqp::ConnectAnyError::Refused(lapin::Error::from(
                                    lapin::ErrorKind::InvalidConnectionState(
                                        lapin::ConnectionState::Closed,
                                    ),
                                )),
                            });
                        }
                        tokio::time::sleep(amqp::jittered(backoff)).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        let next = match link.conn.status().connected() {
                            true => Ok(link.clone()),
                            false => self.links.relink(&link).await,
                        };
                        if let Ok(l) = next {
                            link = l;
                            down_since = None;
                            backoff = Duration::from_millis(200);
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Binds a transient queue to the task's live log chunks. Call before `submit`
    /// to see the output from the first byte.
    pub async fn follow(&self, id: &str) -> Result<LogFollower, ClientError> {
        let (channel, consumer) = self.subscribe(topology::LOGS_EXCHANGE, id).await?;
        Ok(LogFollower {
            _channel: channel,
            consumer,
            next_seq: 0,
            missed: 0,
        })
    }

    /// Binds a transient queue to the `finished` events of every pool, to learn
    /// when task `id` ends without taking its result from its reply queue.
    pub async fn watch_finished(&self, id: &str) -> Result<FinishWatch, ClientError> {
        let key = topology::task_event_key("*", TaskState::Finished.as_str());
        let (channel, consumer) = self.subscribe(topology::EVENTS_EXCHANGE, &key).await?;
        Ok(FinishWatch {
            _channel: channel,
            consumer,
            id: id.to_string(),
        })
    }

    /// Binds a transient queue to the `blocked` and `started` events of task `id`
    /// (every pool): what `krill wait` and `submit --follow` tell about a wait.
    pub async fn watch_progress(&self, id: &str) -> Result<ProgressWatch, ClientError> {
        let channel = self.conn().create_channel().await?;
        let blocked = topology::task_event_key("*", TaskState::Blocked.as_str());
        let started = topology::task_event_key("*", TaskState::Started.as_str());
        let tap = amqp::tap(
            &channel,
            "",
            &[
                (topology::EVENTS_EXCHANGE, blocked.as_str()),
                (topology::EVENTS_EXCHANGE, started.as_str()),
            ],
            "",
        )
        .await?;
        Ok(ProgressWatch {
            _channel: channel,
            consumer: tap.consumer,
            id: id.to_string(),
        })
    }

    /// Looks at task `id`'s result without taking it: the result is read from the
    /// reply queue and put back, so whoever waits for it still gets it.
    pub async fn peek(&self, id: &str) -> Result<Peek, ClientError> {
        let queue = topology::reply_queue(id);
        if amqp::peek(&self.conn(), &queue).await?.is_none() {
            return Ok(Peek::Missing);
        }
        let channel = self.conn().create_channel().await?;
        let got = channel
            .basic_get(
                ShortString::from(queue.as_str()),
                BasicGetOptions { no_ack: false },
            )
            .await?;
        let peek = match got {
            None => Peek::Pending,
            Some(msg) => {
                let parsed = serde_json::from_slice::<TaskResult>(&msg.delivery.data);
                msg.delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: true })
                    .await?;
                match parsed {
                    Ok(result) if result.id == id => Peek::Done(Box::new(result)),
                    _ => Peek::Pending,
                }
            }
        };
        let _ = channel.close(200, ShortString::from("bye")).await;
        Ok(peek)
    }

    /// A transient, exclusive queue bound to `exchange` with `key`, and its consumer.
    async fn subscribe(
        &self,
        exchange: &str,
        key: &str,
    ) -> Result<(Channel, lapin::Consumer), ClientError> {
        let channel = self.conn().create_channel().await?;
        let tap = amqp::tap(&channel, "", &[(exchange, key)], "").await?;
        Ok((channel, tap.consumer))
    }

    /// Asks every worker to cancel task `id` (running or still queued).
    pub async fn cancel(&self, id: &str) -> Result<(), ClientError> {
        self.control(
            &topology::control_key("cancel", id),
            &Control::Cancel {
                task_id: id.to_string(),
            },
        )
        .await
    }

    /// Asks one worker (or all) to stop claiming tasks.
    pub async fn drain(&self, worker: Option<&str>) -> Result<(), ClientError> {
        self.control(
            &topology::control_key("drain", worker.unwrap_or("all")),
            &Control::Drain {
                worker: worker.map(str::to_string),
            },
        )
        .await
    }

    /// Asks one worker (or all) to claim tasks again.
    pub async fn resume(&self, worker: Option<&str>) -> Result<(), ClientError> {
        self.control(
            &topology::control_key("resume", worker.unwrap_or("all")),
            &Control::Resume {
                worker: worker.map(str::to_string),
            },
        )
        .await
    }

    async fn control(&self, key: &str, msg: &Control) -> Result<(), ClientError> {
        let body = serde_json::to_vec(msg)?;
        let validity = match msg {
            Control::Cancel { .. } => crate::trust::CANCEL_VALIDITY,
            Control::Drain { .. } | Control::Resume { .. } => crate::trust::CONTROL_VALIDITY,
        };
        let props = BasicProperties::default()
            .with_content_type(ShortString::from(CONTENT_TYPE))
            .with_delivery_mode(2)
            .with_headers(self.creds.control_headers(key, &body, validity));
        // A nack means the broker did not take the message: a stream member
        // of `krill.cancellations` that is not up yet (a broker just started)
        // nacks. Control messages are idempotent, so publishing again is safe,
        // after a nack as on another node after a lost connection.
        let (body, props) = (&body, &props);
        self.links
            .failover("control message", |link, _| async move {
                let mut backoff = std::time::Duration::from_millis(100);
                let mut nacks = 0;
                loop {
                    match publish_confirmed(
                        &link.channel,
                        topology::CONTROL_EXCHANGE,
                        key,
                        body,
                        props.clone(),
                        false,
                    )
                    .await
                    {
                        Err(amqp::PublishError::Nacked) if nacks < CONTROL_NACK_RETRIES => {
                            nacks += 1;
                            tracing::debug!(key, "control message nacked; publishing it again");
                            tokio::time::sleep(backoff).await;
                            backoff *= 2;
                        }
                        other => return other.map_err(ClientError::from),
                    }
                }
            })
            .await
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.links.close().await;
    }
}

/// A keyed task: declare its line queue and bind it (idempotent), announce the
/// key on the keys stream (so every worker consumes the line), then publish the
/// task to the line, both through [`topology::LINES_EXCHANGE`]. Each step is
/// confirmed, in this order: the announcement may come twice, the task once.
async fn submit_keyed(
    link: &Link,
    pool: &str,
    key: &str,
    body: &[u8],
    task_props: BasicProperties,
) -> Result<(), ClientError> {
    // Workers declare the lines' exchange and streams; a submitter with the
    // least rights (deploy/rabbitmq) may not, and need not once they are there
    // (a passive declare needs no right). A refusal or a NOT_FOUND closes only
    // the channel it happened on.
    let ch = link.conn.create_channel().await?;
    let there = ch
        .exchange_declare(
            ShortString::from(topology::LINES_EXCHANGE),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    let ch = if there {
        ch
    } else {
        let ch = link.conn.create_channel().await?;
        topology::declare_lines(&ch).await?;
        ch
    };
    topology::declare_line(&ch, pool, key).await?;
    let _ = ch.close(200, ShortString::from("declared")).await;
    let announce = serde_json::to_vec(&KeyAnnounce {
        version: crate::protocol::PROTOCOL_VERSION,
        pool: pool.to_string(),
        key: key.to_string(),
    })?;
    let props = BasicProperties::default()
        .with_content_type(ShortString::from(CONTENT_TYPE))
        .with_delivery_mode(2);
    publish_confirmed(
        &link.channel,
        topology::LINES_EXCHANGE,
        topology::KEYS_STREAM,
        &announce,
        props,
        true,
    )
    .await?;
    let line = topology::line_queue(pool, key);
    publish_confirmed(
        &link.channel,
        topology::LINES_EXCHANGE,
        &line,
        body,
        task_props,
        true,
    )
    .await
    .map_err(ClientError::from)
}

/// The properties of a task published again after a lost connection: an
/// unsigned one is marked [`topology::RESENT_HEADER`] (its worker then makes
/// sure no copy of it ran or runs before it runs it); a signed one is left as
/// it is (its copies are the claims stream's to refuse).
pub(crate) fn resent_properties(props: &BasicProperties, signed: bool) -> BasicProperties {
    if signed {
        return props.clone();
    }
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from(topology::RESENT_HEADER),
        lapin::types::AMQPValue::Boolean(true),
    );
    props.clone().with_headers(headers)
}

/// The `type` of a probe message ([`usable_reply_queue`]); `wait` skips it.
const PROBE_TYPE: &str = "krill.probe";

/// Makes sure task `id`'s reply queue, declared again after a failover, takes
/// messages. Found on the cluster (RabbitMQ 3.10): a quorum queue declared on
/// a node that is SIGKILLed right then can be left with no leader at all (its
/// members on the other nodes followers in term 0, for as long as that node
/// is down), so the worker's result to it is nacked again and again. A probe
/// (expiring at once) is published to it with confirms, on a fresh channel;
/// when it is nacked the queue is deleted and declared anew on this node (it
/// cannot hold a result: it never had a leader, and this task is not
/// confirmed yet), [`REPLY_QUEUE_REMAKES`] times at most.
async fn usable_reply_queue(link: &Link, id: &str) -> Result<(), ClientError> {
    let queue = topology::reply_queue(id);
    let probe = || {
        BasicProperties::default()
            .with_type(ShortString::from(PROBE_TYPE))
            .with_expiration(ShortString::from("1"))
    };
    // Each probe on a channel of its own: a channel that published to the
    // leaderless queue keeps nacking for the queue declared anew in its place.
    let probe_once = || async {
        let ch = link.conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let sent = publish_confirmed(&ch, "", &queue, b"", probe(), true).await;
        let _ = ch.close(200, ShortString::from("probed")).await;
        Ok::<_, ClientError>(sent)
    };
    let mut pause = Duration::from_millis(250);
    for round in 0..REPLY_QUEUE_REMAKES {
        match probe_once().await? {
            Err(amqp::PublishError::Nacked) => {}
            // A submitter with the least rights (deploy/rabbitmq) may not
            // write the default exchange: it cannot probe, and goes on as
            // before probes existed.
            Err(amqp::PublishError::Amqp(e)) if access_refused(&e) => {
                tracing::debug!(queue = %queue, "no right to probe the reply queue");
                return Ok(());
            }
            other => return other.map_err(ClientError::from),
        }
        tracing::warn!(queue = %queue, round, "the reply queue takes no messages (no leader?): declaring it anew");
        link.channel
            .queue_delete(
                ShortString::from(queue.as_str()),
                QueueDeleteOptions::default(),
            )
            .await?;
        topology::declare_reply_queue(&link.channel, id).await?;
        tokio::time::sleep(amqp::jittered(pause)).await;
        pause *= 2;
    }
    probe_once().await?.map_err(ClientError::from)
}

/// The broker refused the operation for want of a permission (a soft error:
/// only the channel it happened on is closed).
fn access_refused(e: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(p)
            if matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED))
    )
}

/// How many times a reply queue that takes no messages is deleted and
/// declared anew before the nack is returned.
const REPLY_QUEUE_REMAKES: u32 = 3;

/// A nacked task is published again this many times (backing off from 100 ms,
/// about 3 s in all) before the nack is returned.
const SUBMIT_NACK_RETRIES: u32 = 5;

/// Nacked control messages are published again this many times (backing off
/// from 100 ms) before the nack is returned.
const CONTROL_NACK_RETRIES: usize = 5;

/// Closes a channel when dropped, so a wait that is abandoned (a dropped future,
/// a timeout) leaves no consumer behind: its unacked deliveries go back to the queue.
struct CloseOnDrop(Channel);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let ch = self.0.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = ch.close(200, ShortString::from("wait over")).await;
            });
        }
    }
}

/// Consumes the reply queue until a result for `id` arrives. `Ok(None)`: the consumer ended.
/// Uses a channel of its own, closed when this returns or is dropped.
async fn wait_on(conn: &Connection, id: &str) -> Result<Option<TaskResult>, lapin::Error> {
    let guard = CloseOnDrop(conn.create_channel().await?);
    let channel = &guard.0;
    topology::declare_reply_queue(channel, id).await?;
    let queue = topology::reply_queue(id);
    let mut consumer = channel
        .basic_consume(
            ShortString::from(queue.as_str()),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        if delivery.properties.kind().as_ref().map(ShortString::as_str) == Some(PROBE_TYPE) {
            delivery.acker.ack(BasicAckOptions::default()).await?;
            continue;
        }
        let parsed = serde_json::from_slice::<TaskResult>(&delivery.data);
        let acked = delivery.acker.ack(BasicAckOptions::default()).await;
        match parsed {
            Ok(result) if result.id == id => {
                // The result is in hand: an ack that failed because the
                // connection broke right then must not lose it (the broker may
                // have taken the ack, and then no copy is left to wait for).
                if let Err(e) = acked {
                    tracing::debug!(task_id = id, error = %e, "ack of the result failed; keeping the result");
                    return Ok(Some(result));
                }
                // First terminal result wins; later copies hit a deleted queue.
                let _ = channel
                    .queue_delete(
                        ShortString::from(queue.as_str()),
                        QueueDeleteOptions::default(),
                    )
                    .await;
                return Ok(Some(result));
            }
            Ok(other) => {
                acked?;
                tracing::warn!(expected = id, got = %other.id, "ignoring result for another task")
            }
            Err(e) => {
                acked?;
                tracing::warn!(error = %e, "ignoring unparsable message on reply queue")
            }
        }
    }
    Ok(None)
}

/// What [`Client::peek`] found.
#[derive(Debug)]
pub enum Peek {
    /// No reply queue: no such task, or its result was already taken.
    Missing,
    /// The reply queue exists but holds no result yet (or someone is consuming it).
    Pending,
    /// The task's result (left in place).
    Done(Box<TaskResult>),
}

/// Serializes a control or event message (helper for other tools).
pub fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, ClientError> {
    Ok(serde_json::to_vec(v)?)
}
