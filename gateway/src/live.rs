//! Live output of the tasks submitted here, kept from their first chunk: a
//! follower is bound to the task's log chunks before the task is published,
//! and what it receives is buffered until the task ends, so
//! `GET /v1/tasks/{id}/logs` gives every chunk from the start, however late a
//! client connects; after the end (and [`LINGER`]), the stored output serves.
//!
//! ```text
//! submit ── client.follow(id) (bound) ── publish ── start(): pump ──▶ Buffer ──▶ readers (SSE)
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::response::sse::Event;
use broker::client::LogFollower;
use broker::protocol::{LogChunk, Stream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::AppState;

/// Most bytes of output kept for one task; past it, chunks are no longer kept
/// and readers are told the live copy was cut (the stored output has it).
pub const MAX_BYTES: usize = 16 << 20;
/// How long a finished task's buffer stays after its last chunk, for clients
/// that connect just then (the stored output serves them afterwards too).
pub const LINGER: Duration = Duration::from_secs(30);

/// The buffers of the tasks being followed.
#[derive(Debug, Default)]
pub struct Live {
    tasks: Mutex<HashMap<String, Arc<Buffer>>>,
}

impl Live {
    /// The buffer of task `id`, if it is followed here.
    pub fn get(&self, id: &str) -> Option<Arc<Buffer>> {
        self.lock().get(id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Buffer>>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
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

    /// Keeps a chunk (unless over [`MAX_BYTES`]).
    pub fn push(&self, c: LogChunk) {
        {
            let mut i = self.lock();
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

/// Keeps the chunks `f` receives for task `id` until its last one, its row
/// finishes, or the gateway stops; the buffer goes [`LINGER`] later.
pub fn start(st: &Arc<AppState>, id: String, mut f: LogFollower) {
    let buf = Arc::new(Buffer::default());
    st.live.lock().insert(id.clone(), buf.clone());
    let st2 = st.clone();
    st.tasks.spawn(async move {
        let mut changes = st2.notify.subscribe();
        loop {
            tokio::select! {
                _ = st2.shutdown.cancelled() => break,
                c = f.next() => match c {
                    Some(c) => {
                        let eof = c.eof;
                        buf.push(c);
                        if eof { break; }
                    }
                    None => break,
                },
                m = changes.recv() => {
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
        buf.end();
        tokio::select! {
            _ = st2.shutdown.cancelled() => {}
            _ = tokio::time::sleep(LINGER) => {}
        }
        st2.live.lock().remove(&id);
    });
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

    fn chunk(seq: u64, data: &str) -> LogChunk {
        LogChunk {
            version: 1,
            task_id: "t".into(),
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
        b.push(chunk(0, "first\n"));
        b.push(chunk(1, "second\n"));
        let r = b.since(0);
        assert_eq!(r.chunks.len(), 2);
        assert!(!r.ended && !r.cut);
        assert_eq!(b.since(1).chunks[0].data, "second\n");
        assert!(b.since(5).chunks.is_empty());
        b.push(chunk(2, &"x".repeat(MAX_BYTES)));
        b.end();
        let r = b.since(2);
        assert!(r.chunks.is_empty() && r.ended && r.cut);
    }
}
