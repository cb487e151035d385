//! Live output of the tasks followed here, from one shared consumer per
//! gateway: a transient queue bound once to every log chunk (`krill.logs`,
//! `#`) whose chunks go to the buffer of their task, if it is followed; no
//! queue or binding is declared per task. A task submitted here is followed
//! (its buffer opened) before it is published, so `GET /v1/tasks/{id}/logs`
//! gives every chunk from the first one, however late a client connects; a
//! task submitted elsewhere is followed from the first request for its logs
//! on. After the end (and [`LINGER`]), the stored output serves.
//!
//! ```text
//! krill.logs ──#──▶ run(): one queue, one consumer ──route(task_id)──▶ Buffer ──▶ send(): SSE
//!                                            (chunks of tasks not followed are dropped)
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::response::sse::Event;
use broker::protocol::{LogChunk, Stream};
use broker::topology;
use futures_util::StreamExt;
use lapin::ConnectionProperties;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::AppState;

/// Most bytes of output kept for one task; past it, chunks are no longer kept
/// and readers are told the live copy was cut (the stored output has it).
pub const MAX_BYTES: usize = 16 << 20;
/// How long a finished task's buffer stays after its last chunk, for clients
/// that connect just then (the stored output serves them afterwards too).
pub const LINGER: Duration = Duration::from_secs(30);
/// How long the gateway waits at its start for the shared consumer to be
/// bound before it serves anyway (tasks accepted meanwhile miss live chunks).
pub const BIND_WAIT: Duration = Duration::from_secs(10);

/// The buffers of the tasks being followed, and whether the shared consumer
/// is bound (chunks published from then on reach it).
#[derive(Debug)]
pub struct Live {
    tasks: Mutex<HashMap<String, Arc<Buffer>>>,
    bound: watch::Sender<bool>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            tasks: Mutex::default(),
            bound: watch::channel(false).0,
        }
    }
}

impl Live {
    /// The buffer of task `id`, if it is followed here.
    pub fn get(&self, id: &str) -> Option<Arc<Buffer>> {
        self.lock().get(id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Buffer>>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a chunk to its task's buffer; dropped when the task is not followed.
    pub fn route(&self, c: LogChunk) {
        if let Some(buf) = self.get(&c.task_id) {
            let eof = c.eof;
            buf.push(c);
            if eof {
                buf.end();
            }
        }
    }

    /// How many tasks are followed now.
    pub fn followed(&self) -> usize {
        self.lock().len()
    }

    /// Waits (at most `limit`) until the shared consumer is bound; whether it is.
    pub async fn bound(&self, limit: Duration) -> bool {
        let mut rx = self.bound.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|b| *b))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops following task `id` now (its submit failed: no chunk will come).
    pub fn forget(&self, id: &str) {
        if let Some(buf) = self.lock().remove(id) {
            buf.end();
        }
    }
}

/// One task's chunks so far.
#[derive(Debug)]
pub struct Buffer {
    inner: Mutex<Inner>,
    /// Bumped on every change (a chunk, the end).
    changed: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    chunks: Vec<LogChunk>,
    bytes: usize,
    ended: bool,
    /// More than [`MAX_BYTES`] came: later chunks were not kept.
    cut: bool,
    /// The `seq` the next chunk should have (a repeat below it is dropped).
    next_seq: u64,
}

/// What a reader gets from [`Buffer::since`].
#[derive(Debug)]
pub struct Read {
    pub chunks: Vec<LogChunk>,
    /// No more chunks will come.
    pub ended: bool,
    pub cut: bool,
}

impl Default for Buffer {
    fn default() -> Self {
        Buffer {
            inner: Mutex::new(Inner::default()),
            changed: watch::channel(0).0,
        }
    }
}

impl Buffer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps a chunk (unless a repeat, after the end, or over [`MAX_BYTES`]).
    pub fn push(&self, c: LogChunk) {
        {
            let mut i = self.lock();
            if i.ended || c.seq < i.next_seq {
                return;
            }
            i.next_seq = c.seq + 1;
            if i.cut || i.bytes + c.data.len() > MAX_BYTES {
                i.cut = true;
            } else {
                i.bytes += c.data.len();
                i.chunks.push(c);
            }
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// No more chunks will come.
    pub fn end(&self) {
        self.lock().ended = true;
        self.changed.send_modify(|n| *n += 1);
    }

    /// The chunks from index `from` on.
    pub fn since(&self, from: usize) -> Read {
        let i = self.lock();
        Read {
            chunks: i.chunks.get(from..).unwrap_or_default().to_vec(),
            ended: i.ended,
            cut: i.cut,
        }
    }

    /// Tells of every change from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Follows task `id` (its buffer, opened unless it is followed already) until
/// its last chunk, its row finishes, or the gateway stops; the buffer goes
/// [`LINGER`] later.
pub fn open(st: &Arc<AppState>, id: &str) -> Arc<Buffer> {
    let buf = {
        let mut tasks = st.live.lock();
        if let Some(b) = tasks.get(id) {
            return b.clone();
        }
        let b = Arc::new(Buffer::default());
        tasks.insert(id.to_string(), b.clone());
        b
    };
    let (st2, id, buf2) = (st.clone(), id.to_string(), buf.clone());
    st.tasks.spawn(async move {
        let mut notes = st2.notify.subscribe();
        let mut changes = buf2.subscribe();
        loop {
            if buf2.since(usize::MAX).ended {
                break;
            }
            tokio::select! {
                _ = st2.shutdown.cancelled() => break,
                r = changes.changed() => if r.is_err() { break },
                m = notes.recv() => {
                    let mine = match m {
                        Ok(changed) => changed == id,
                        Err(_) => true,
                    };
                    // Finished without a last chunk (cancelled before it ran,
                    // rejected …): nothing more will come.
                    if mine && finished(&st2, &id).await {
                        break;
                    }
                }
            }
        }
        buf2.end();
        tokio::select! {
            _ = st2.shutdown.cancelled() => {}
            _ = tokio::time::sleep(LINGER) => {}
        }
        let mut tasks = st2.live.lock();
        if tasks.get(&id).is_some_and(|b| Arc::ptr_eq(b, &buf2)) {
            tasks.remove(&id);
        }
    });
    buf
}

/// The shared consumer: every log chunk of the broker to [`Live::route`],
/// until `shutdown`, reconnecting when the broker goes away (chunks published
/// while it is away are not seen: the stored output has them).
pub async fn run(st: Arc<AppState>) {
    let mut backoff = Duration::from_millis(200);
    // The node of the URL list to try first: after the one lost, the next.
    let mut next = 0;
    loop {
        let outcome = tokio::select! {
            _ = st.shutdown.cancelled() => return,
            r = consume(&st, &mut next) => r,
        };
        st.live.bound.send_replace(false);
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "live logs: consumer stopped; reconnecting");
        }
        tokio::select! {
            _ = st.shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn consume(st: &AppState, next: &mut usize) -> anyhow::Result<()> {
    let c = broker::amqp::connect_any(
        &st.amqp_url,
        *next,
        ConnectionProperties::default().with_connection_name("krill-gateway-logs".into()),
    )
    .await?;
    *next = c.index + 1;
    tracing::info!(url = %c.url, "live logs: broker node reached");
    let conn = c.conn;
    let ch = conn.create_channel().await?;
    topology::declare_common(&ch).await?;
    // Transient, this connection's alone: chunks are live-only.
    let broker::amqp::Tap {
        queue,
        mut consumer,
    } = broker::amqp::tap(
        &ch,
        "",
        &[(topology::LOGS_EXCHANGE, "#")],
        "krill-gateway-logs",
    )
    .await?;
    st.live.bound.send_replace(true);
    tracing::info!(%queue, "live logs: one consumer for every followed task");
    while let Some(d) = consumer.next().await {
        let d = d?;
        match serde_json::from_slice::<LogChunk>(&d.data) {
            Ok(c) => st.live.route(c),
            Err(e) => {
                tracing::debug!(error = %e, "live logs: dropping a chunk that does not parse")
            }
        }
    }
    Ok(())
}

/// Sends the buffer's chunks as SSE events from the first one, then the live
/// ones as they come, then `end` (after a `cut` event when chunks past
/// [`MAX_BYTES`] were not kept: the stored output has them).
pub async fn send(buf: Arc<Buffer>, tx: mpsc::Sender<Event>, shutdown: CancellationToken) {
    let mut changes = buf.subscribe();
    let mut next = 0;
    loop {
        changes.mark_unchanged();
        let read = buf.since(next);
        next += read.chunks.len();
        for c in read.chunks {
            let name = match c.stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            if tx
                .send(Event::default().event(name).data(c.data))
                .await
                .is_err()
            {
                return;
            }
        }
        if read.ended {
            if read.cut {
                let why = format!(
                    "the live copy keeps {MAX_BYTES} bytes; the rest is in the stored output"
                );
                let _ = tx.send(Event::default().event("cut").data(why)).await;
            }
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = changes.changed() => if r.is_err() { break },
        }
    }
    let _ = tx.send(Event::default().event("end").data("")).await;
}

async fn finished(st: &AppState, id: &str) -> bool {
    matches!(st.store.get(id).await, Ok(Some(t)) if t.state == "finished" && t.result.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(task: &str, seq: u64, data: &str) -> LogChunk {
        LogChunk {
            version: 1,
            task_id: task.into(),
            seq,
            stream: Stream::Stdout,
            data: data.into(),
            first_at: chrono::Utc::now(),
            last_at: chrono::Utc::now(),
            eof: false,
        }
    }

    #[test]
    fn a_reader_gets_everything_from_the_first_chunk_and_the_cap_is_said() {
        let b = Buffer::default();
        b.push(chunk("t", 0, "first\n"));
        b.push(chunk("t", 1, "second\n"));
        b.push(chunk("t", 1, "second\n"));
        let r = b.since(0);
        assert_eq!(r.chunks.len(), 2, "the repeat is dropped");
        assert!(!r.ended && !r.cut);
        assert_eq!(b.since(1).chunks[0].data, "second\n");
        assert!(b.since(5).chunks.is_empty());
        b.push(chunk("t", 2, &"x".repeat(MAX_BYTES)));
        b.end();
        let r = b.since(2);
        assert!(r.chunks.is_empty() && r.ended && r.cut);
    }

    #[test]
    fn chunks_go_to_their_own_tasks_buffer_and_others_are_dropped() {
        let live = Live::default();
        let (a, b) = (Arc::new(Buffer::default()), Arc::new(Buffer::default()));
        live.lock().insert("a".into(), a.clone());
        live.lock().insert("b".into(), b.clone());
        live.route(chunk("a", 0, "for a\n"));
        live.route(chunk("c", 0, "for nobody\n"));
        let mut last = chunk("b", 0, "for b\n");
        last.eof = true;
        live.route(last);
        let data = |buf: &Buffer| {
            buf.since(0)
                .chunks
                .into_iter()
                .map(|c| c.data)
                .collect::<Vec<_>>()
        };
        assert_eq!(data(&a), ["for a\n"]);
        assert_eq!(data(&b), ["for b\n"]);
        assert!(!a.since(0).ended && b.since(0).ended, "eof ends b alone");
        assert!(live.get("c").is_none());
    }
}
