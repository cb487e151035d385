//! A [`Sink`] that keeps what is sent in memory: the worker's logic tested
//! without a broker (like apalis's memory backend).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use broker::protocol::{LogChunk, TaskEvent, TaskResult};
use futures_util::future::BoxFuture;

use super::{Outgoing, PublishError, Published, Sink};

/// Records every message; confirmed ones succeed unless [`MemorySink::refuse`]
/// was called (then they fail as a worker giving up on a lost broker does).
#[derive(Debug)]
pub struct MemorySink {
    sent: Mutex<Vec<Outgoing>>,
    refusing: AtomicBool,
    connected: AtomicBool,
    /// Results bigger than this (serialized) are refused for good, as a
    /// broker's `max_message_size` does.
    max_result: AtomicUsize,
}

impl Default for MemorySink {
    fn default() -> Self {
        MemorySink {
            sent: Mutex::new(Vec::new()),
            refusing: AtomicBool::new(false),
            connected: AtomicBool::new(true),
            max_result: AtomicUsize::new(usize::MAX),
        }
    }
}

impl MemorySink {
    /// From now on confirmed messages fail with [`PublishError::GaveUp`] and
    /// best-effort ones are dropped (nothing is recorded).
    pub fn refuse(&self) {
        self.refusing.store(true, Ordering::Relaxed);
        self.connected.store(false, Ordering::Relaxed);
    }

    /// From now on results over `bytes` serialized bytes are refused for good
    /// ([`PublishError::Refused`]), as by a broker's `max_message_size`.
    pub fn refuse_results_over(&self, bytes: usize) {
        self.max_result.store(bytes, Ordering::Relaxed);
    }

    /// Everything sent so far, in order.
    pub fn sent(&self) -> Vec<Outgoing> {
        self.sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The results sent so far (with their reply queue).
    pub fn results(&self) -> Vec<(TaskResult, String)> {
        self.sent()
            .into_iter()
            .filter_map(|m| match m {
                Outgoing::Result { result, reply_to } => Some((result.decode(), reply_to)),
                _ => None,
            })
            .collect()
    }

    /// The history copies of results sent so far (with their pool).
    pub fn history(&self) -> Vec<(TaskResult, String)> {
        self.sent()
            .into_iter()
            .filter_map(|m| match m {
                Outgoing::History { result, pool } => Some((result.decode_history(), pool)),
                _ => None,
            })
            .collect()
    }

    /// The task events sent so far.
    pub fn events(&self) -> Vec<TaskEvent> {
        self.sent()
            .into_iter()
            .filter_map(|m| match m {
                Outgoing::Event(ev) => Some(ev),
                _ => None,
            })
            .collect()
    }

    /// The log chunks sent so far.
    pub fn logs(&self) -> Vec<LogChunk> {
        self.sent()
            .into_iter()
            .filter_map(|m| match m {
                Outgoing::Log(chunk) => Some(chunk),
                _ => None,
            })
            .collect()
    }

    /// The reasons of the dead letters sent so far.
    pub fn dead_letters(&self) -> Vec<String> {
        self.sent()
            .into_iter()
            .filter_map(|m| match m {
                Outgoing::DeadLetter(d) => Some(d.reason),
                _ => None,
            })
            .collect()
    }
}

impl Sink for MemorySink {
    fn send(&self, msg: Outgoing) -> BoxFuture<'_, Result<Published, PublishError>> {
        Box::pin(async move {
            let confirmed = matches!(
                msg,
                Outgoing::Result { .. }
                    | Outgoing::History { .. }
                    | Outgoing::Answer { .. }
                    | Outgoing::DeadLetter(_)
                    | Outgoing::CancelMarker(_)
                    | Outgoing::Claim { .. }
                    | Outgoing::Line(_)
            );
            if let Outgoing::Result { result, .. } = &msg {
                let len = result.body().len();
                let max = self.max_result.load(Ordering::Relaxed);
                if len > max {
                    return Err(PublishError::Refused(format!(
                        "message size {len} is larger than configured max size {max}"
                    )));
                }
            }
            if self.refusing.load(Ordering::Relaxed) {
                return if confirmed {
                    Err(PublishError::GaveUp)
                } else {
                    Ok(Published::Dropped)
                };
            }
            self.sent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(msg);
            Ok(if confirmed {
                Published::Confirmed
            } else {
                Published::Sent
            })
        })
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}
