//! One concurrency key's line on one connection: consume the line queue (a
//! channel of its own, single active consumer), hold its waiting tasks, start
//! them in order, say why the others wait. See the [module](super) map.

mod rules;
mod settle;
mod tell;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::protocol::{BlockReason, LineStep, Status, Task, WaitedOn};
use broker::topology;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::Connection;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::task::TaskTracker;

use crate::consumer;
use crate::intake::{decode, without_delivery_count, Incoming, Intake, Settle};
use crate::keyed::log::Start;
use crate::keyed::LinesError;
use crate::outbound::Stamp;
use crate::peers::Verdict;
use crate::worker::Shared;
use broker::trust::PublicKey;
use settle::LineSettle;

/// Deliveries of a line a worker holds at most (the rest wait in the queue, in order).
pub const LINE_WINDOW: u16 = 1000;
/// How long the next task of a line may wait for a slot on this worker, with
/// nothing of the key running here, before the line is handed to another worker.
pub const HANDOVER_AFTER: Duration = Duration::from_secs(3);
/// How long a worker that gave a line away waits before it consumes it again.
pub const HANDOVER_PAUSE: Duration = Duration::from_secs(2);
/// How often a waiting task's `blocked` event is sent again (for late watchers).
pub const BLOCKED_AGAIN: Duration = Duration::from_secs(5);
/// How often a line looks again without being woken.
pub const TICK: Duration = Duration::from_secs(1);
/// How long a line that failed for a reason of its own waits before it tries again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Why a line stopped being served.
#[derive(Debug)]
enum Served {
    /// Given away (draining, or no slot here): its channel was closed.
    Released,
    /// The worker stops.
    Stopping,
}

/// Serves `key`'s line for as long as the connection lives: consumes it, gives
/// it away when asked to, and consumes it again (not while draining).
pub async fn keep(
    shared: Arc<Shared>,
    conn: Arc<Connection>,
    key: String,
    handlers: TaskTracker,
) -> Result<(), LinesError> {
    let mut draining = shared.draining.subscribe();
    loop {
        while shared.is_draining() {
            tokio::select! {
                _ = shared.root.cancelled() => return Ok(()),
                _ = draining.changed() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
            if !conn.status().connected() {
                return Ok(());
            }
        }
        let pause = match serve(&shared, &conn, &key, &handlers).await {
            Ok(Served::Stopping) => return Ok(()),
            Ok(Served::Released) => HANDOVER_PAUSE,
            Err(e) => {
                if !conn.status().connected() {
                    return Ok(());
                }
                tracing::warn!(%key, error = %crate::error::chain(&e), "line stopped; serving it again soon");
                RETRY_AFTER
            }
        };
        tokio::select! {
            _ = shared.root.cancelled() => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
        if !conn.status().connected() {
            return Ok(());
        }
    }
}

async fn serve(
    shared: &Arc<Shared>,
    conn: &Connection,
    key: &str,
    handlers: &TaskTracker,
) -> Result<Served, LinesError> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(LINE_WINDOW, BasicQosOptions::default())
        .await?;
    topology::declare_line(&ch, &shared.pool, key).await?;
    let mut consumer = ch
        .basic_consume(
            ShortString::from(topology::line_queue(&shared.pool, key)),
            ShortString::from(format!("krill-line.{}.{key}", shared.id)),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut line = Line {
        shared: shared.clone(),
        key: key.to_string(),
        waiting: VecDeque::new(),
        holders: Vec::new(),
        permit: None,
        done_tx,
        handlers: handlers.clone(),
        head: None,
        told_all: Instant::now(),
        supersede: Vec::new(),
    };
    let mut wake = shared.lines.subscribe();
    let mut log = shared.lines.log.subscribe();
    let mut live = shared.peers.subscribe();
    let mut draining = shared.draining.subscribe();
    let mut tick = tokio::time::interval(TICK);
    let result = loop {
        let need_slot = line.wants_slot();
        tokio::select! {
            biased;
            _ = shared.root.cancelled() => break Ok(Served::Stopping),
            d = consumer.next() => match d {
                Some(Ok(d)) => line.arrive(d.into()).await,
                Some(Err(e)) => break Err(e.into()),
                None => break Err(LinesError::Ended("line")),
            },
            Some(id) = done_rx.recv() => line.ended(&id),
            permit = shared.slots.clone().acquire_owned(), if need_slot => {
                if let Ok(p) = permit {
                    line.permit = Some(p);
                }
            }
            _ = wake.changed() => {}
            _ = log.changed() => {}
            _ = live.changed() => {}
            _ = draining.changed() => {}
            _ = tick.tick() => {}
        }
        line.step().await;
        if line.should_release() {
            tracing::info!(%key, "giving the line to another worker");
            break Ok(Served::Released);
        }
    };
    shared.lines.set_view(key, None);
    if !matches!(result, Ok(Served::Stopping)) {
        // Closing the channel gives every held delivery back, in its place, and
        // makes the next consumer the active one in the same step.
        let _ = ch.close(200, ShortString::from("line released")).await;
    }
    result
}

/// What is known of a delivery that was delivered before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Redelivered: the line log has not been asked yet.
    Unknown,
    /// Never started: it runs as if new.
    Fresh,
    /// Started, and its holder is gone or it was this worker's: the consumer
    /// decides as for any redelivery (its result again, `worker_lost`, or a run again).
    Again,
}

#[derive(Debug)]
struct Entry {
    incoming: Incoming,
    task: Box<Task>,
    reply_to: String,
    attempt: u32,
    arrived: Instant,
    class: Class,
    /// What its last `blocked` event said.
    told: Option<String>,
    /// Its signature, checked on arrival (`None`: unsigned, allowed on this pool).
    signer: Option<PublicKey>,
    /// What every answer of it carries (its signer's name, trust warnings).
    stamp: Stamp,
}

#[derive(Debug)]
enum HolderKind {
    /// Running here, started by this line.
    Local,
    /// Started by `start.worker`, which may still run it (or runs here, adopted):
    /// its delivery is held until the line log says it is done, or its holder is lost.
    Watched(Box<Entry>),
}

#[derive(Debug)]
struct Holder {
    task_id: String,
    submitter: Option<String>,
    worker: String,
    started_at: DateTime<Utc>,
    kind: HolderKind,
}

struct Line {
    shared: Arc<Shared>,
    key: String,
    waiting: VecDeque<Entry>,
    holders: Vec<Holder>,
    permit: Option<OwnedSemaphorePermit>,
    done_tx: mpsc::UnboundedSender<String>,
    handlers: TaskTracker,
    /// Why the next task waits, since when.
    head: Option<(BlockReason, Instant)>,
    told_all: Instant,
    /// Tasks that supersede the ones before them, not yet applied.
    supersede: Vec<String>,
}

impl Line {
    async fn arrive(&mut self, mut incoming: Incoming) {
        // A line is a classic queue: RabbitMQ never sets a delivery count
        // there, so one in the message is its publisher's (a forged redelivery).
        incoming.props = without_delivery_count(incoming.props);
        // The signature first: nothing unsigned (on a pool that trusts keys) or
        // forged may wait in a line, let alone supersede a task there. A refused
        // one goes through the consumer, which refuses and dead-letters it.
        let env = match self.shared.trust.envelope(&incoming.props, &incoming.data) {
            Ok(env) => env,
            Err(_) => {
                self.spawn_handle(incoming, None);
                return;
            }
        };
        let (task, reply_to, attempt, redelivered) =
            match decode(&incoming.props, &incoming.data, incoming.redelivered) {
                Intake::Task {
                    task,
                    reply_to,
                    attempt,
                    redelivered,
                } => (task, reply_to, attempt, redelivered),
                Intake::Bad { .. } => {
                    // Rejected (where it can be answered) and dead-lettered, as on the pool queue.
                    self.spawn_handle(incoming, None);
                    return;
                }
            };
        let entry = Entry {
            incoming,
            task,
            reply_to,
            attempt,
            arrived: Instant::now(),
            class: if redelivered {
                Class::Unknown
            } else {
                Class::Fresh
            },
            told: None,
            signer: env.signer.as_ref().map(|s| s.key),
            stamp: Stamp {
                submitter: env.signer.as_ref().map(|s| s.name.clone()),
                warnings: env.warnings.clone(),
                reply_key: None,
            },
        };
        let limit = self.shared.cfg.max_concurrent_limit;
        if entry.task.concurrency_key.as_deref() != Some(self.key.as_str()) {
            let why = format!(
                "published to the line of concurrency key `{}` but its concurrency_key is {:?}",
                self.key, entry.task.concurrency_key
            );
            self.answer(entry, Status::Rejected, why).await;
            return;
        }
        if let Some(m) = entry.task.max_concurrent.filter(|m| *m > limit) {
            let why = format!("max_concurrent {m} is above this pool's maximum of {limit}");
            self.answer(entry, Status::Rejected, why).await;
            return;
        }
        if entry.task.supersede {
            self.supersede.push(entry.task.id.clone());
        }
        self.waiting.push_back(entry);
    }

    fn spawn_handle(&self, mut incoming: Incoming, waited: Option<WaitedOn>) {
        let shared = self.shared.clone();
        let permit = self.permit_now();
        incoming.line = waited;
        self.handlers.spawn(async move {
            let slot = match permit {
                Some(p) => p,
                None => match shared.slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            consumer::handle(shared, incoming, slot).await;
        });
    }

    fn permit_now(&self) -> Option<OwnedSemaphorePermit> {
        self.shared.slots.clone().try_acquire_owned().ok()
    }

    fn ended(&mut self, id: &str) {
        self.holders
            .retain(|h| !(h.task_id == id && matches!(h.kind, HolderKind::Local)));
    }

    fn local_running(&self) -> usize {
        self.holders
            .iter()
            .filter(|h| matches!(h.kind, HolderKind::Local))
            .count()
    }

    fn wants_slot(&self) -> bool {
        self.permit.is_none() && matches!(self.head, Some((BlockReason::NoFreeSlot, _)))
    }

    fn should_release(&self) -> bool {
        rules::release(
            self.local_running(),
            self.shared.is_draining(),
            self.head,
            Instant::now(),
        )
    }

    async fn step(&mut self) {
        self.classify().await;
        self.watch_holders().await;
        self.apply_supersede().await;
        self.drop_cancelled().await;
        self.start().await;
        self.tell().await;
    }

    /// Asks the line log what became of each redelivered task.
    async fn classify(&mut self) {
        if !self.waiting.iter().any(|e| e.class == Class::Unknown) {
            return;
        }
        if let Err(e) = self
            .shared
            .lines
            .log
            .catch_up(&self.shared.run.outbound)
            .await
        {
            tracing::warn!(key = %self.key, error = %e, "cannot read the line log; redelivered tasks wait");
            return;
        }
        let shared = self.shared.clone();
        let lines = &shared.lines;
        let mut keep = VecDeque::new();
        let now = Instant::now();
        while let Some(mut e) = self.waiting.pop_front() {
            if e.class != Class::Unknown {
                keep.push_back(e);
                continue;
            }
            let id = e.task.id.clone();
            if lines.log.is_done(&id) {
                tracing::info!(task_id = %id, key = %self.key, "redelivered keyed task already finished; its result stands");
                let _ = e.incoming.settle.ack().await;
                continue;
            }
            match lines.log.started(&id) {
                None => e.class = Class::Fresh,
                Some(start) if start.worker == self.shared.id => {
                    if self.shared.tasks.is_running(&id) {
                        let settle: Arc<dyn Settle> = Arc::new(LineSettle {
                            inner: e.incoming.settle.clone(),
                            shared: self.shared.clone(),
                            key: self.key.clone(),
                            id: id.clone(),
                        });
                        self.shared.tasks.adopt(&id, &settle);
                        e.incoming.settle = settle;
                        self.watch(e, start);
                        continue;
                    }
                    e.class = Class::Again;
                }
                Some(start) => match self.shared.peers.verdict(&start.worker, start.at, now) {
                    Verdict::Alive => {
                        tracing::info!(task_id = %id, holder = %start.worker, key = %self.key,
                            "redelivered keyed task still held by a live worker; waiting for it");
                        self.watch(e, start);
                        continue;
                    }
                    Verdict::Lost => e.class = Class::Again,
                },
            }
            keep.push_back(e);
        }
        self.waiting = keep;
    }

    fn watch(&mut self, e: Entry, start: Start) {
        self.holders.push(Holder {
            task_id: e.task.id.clone(),
            submitter: e.stamp.submitter.clone(),
            worker: start.worker,
            started_at: start.at,
            kind: HolderKind::Watched(Box::new(e)),
        });
    }

    /// Lets go of watched holders that finished (ack) or whose worker is lost
    /// (back to the front of the line, to be answered or run again).
    async fn watch_holders(&mut self) {
        let now = Instant::now();
        let mut lost = Vec::new();
        let mut i = 0;
        while i < self.holders.len() {
            let h = &self.holders[i];
            let HolderKind::Watched(_) = &h.kind else {
                i += 1;
                continue;
            };
            let done = self.shared.lines.log.is_done(&h.task_id);
            let gone = h.worker != self.shared.id
                && self.shared.peers.verdict(&h.worker, h.started_at, now) == Verdict::Lost;
            if !done && !gone {
                i += 1;
                continue;
            }
            let h = self.holders.remove(i);
            let HolderKind::Watched(e) = h.kind else {
                continue;
            };
            if done {
                let _ = e.incoming.settle.ack().await;
            } else {
                tracing::info!(task_id = %h.task_id, holder = %h.worker, key = %self.key,
                    "the worker holding this key is lost");
                lost.push(e);
            }
        }
        for mut e in lost.into_iter().rev() {
            e.class = Class::Again;
            self.waiting.push_front(*e);
        }
    }

    async fn apply_supersede(&mut self) {
        while let Some(newer) = self.supersede.pop() {
            let ended = {
                let waiting: Vec<(&str, Class)> = self
                    .waiting
                    .iter()
                    .map(|e| (e.task.id.as_str(), e.class))
                    .collect();
                rules::superseded(&waiting, &newer)
            };
            // Taken out from the back (the positions stay true), answered oldest first.
            let mut old: Vec<Entry> = ended
                .iter()
                .rev()
                .filter_map(|&i| self.waiting.remove(i))
                .collect();
            old.reverse();
            for e in old {
                let why = format!(
                    "superseded by task {newer} (a newer task of concurrency key `{}` with supersede) before it started",
                    self.key
                );
                self.answer(e, Status::Superseded, why).await;
            }
        }
    }

    async fn drop_cancelled(&mut self) {
        let mut i = 0;
        while i < self.waiting.len() {
            let e = &self.waiting[i];
            if e.class != Class::Unknown
                && self
                    .shared
                    .tasks
                    .is_cancelled(&e.task.id, e.signer.as_ref())
            {
                if let Some(e) = self.waiting.remove(i) {
                    let why = format!(
                        "cancelled while waiting for concurrency key `{}` (it never started)",
                        self.key
                    );
                    self.answer(e, Status::Cancelled, why).await;
                }
            } else {
                i += 1;
            }
        }
    }

    /// Starts the next tasks while the key, a slot and the worker allow.
    async fn start(&mut self) {
        let reason = loop {
            let Some(head) = self.waiting.front() else {
                break None;
            };
            if let Some(r) = rules::head_blocked(
                head.class,
                head.task.max_concurrent,
                self.holders.len(),
                self.shared.is_draining(),
            ) {
                break Some(r);
            }
            let Some(permit) = self.permit.take().or_else(|| self.permit_now()) else {
                break Some(BlockReason::NoFreeSlot);
            };
            let id = head.task.id.clone();
            if let Err(e) = self
                .shared
                .run
                .outbound
                .line(&self.key, &id, LineStep::Start)
                .await
            {
                tracing::warn!(task_id = %id, error = %e, "cannot write the start record; the task waits");
                self.permit = Some(permit);
                break Some(BlockReason::Key);
            }
            let Some(e) = self.waiting.pop_front() else {
                break None;
            };
            let waited = self.waited(&e);
            let submitter = e.stamp.submitter.clone();
            let mut incoming = e.incoming;
            incoming.redelivered = e.class == Class::Again;
            incoming.settle = Arc::new(LineSettle {
                inner: incoming.settle.clone(),
                shared: self.shared.clone(),
                key: self.key.clone(),
                id: id.clone(),
            });
            incoming.line = Some(waited);
            self.holders.push(Holder {
                task_id: id.clone(),
                submitter,
                worker: self.shared.id.clone(),
                started_at: Utc::now(),
                kind: HolderKind::Local,
            });
            let shared = self.shared.clone();
            let done = self.done_tx.clone();
            shared.lines.started_here();
            self.handlers.spawn(async move {
                consumer::handle(shared.clone(), incoming, permit).await;
                shared.lines.ended_here();
                let _ = done.send(id);
            });
        };
        self.head = rules::next_head(reason, self.head, Instant::now());
    }
}
