//! What the worker knows of the concurrency-key lines, shared below the claim
//! loops: the views of the lines it holds and the line log (which workers are
//! alive is [`crate::peers`]). `lines` serves the lines with it; the worker's
//! shared state holds it.

pub mod log;

use std::collections::BTreeMap;
use std::sync::Mutex;

use broker::protocol::LineView;
use tokio::sync::watch;

/// Why the lines of a connection stopped.
#[derive(Debug, thiserror::Error)]
pub enum LinesError {
    #[error("broker")]
    Amqp(#[from] lapin::Error),
    #[error("writing the line log")]
    Log(#[source] crate::outbound::PublishError),
    #[error("the line log did not catch up in time")]
    CatchUp,
    #[error("the {0} consumer ended")]
    Ended(&'static str),
}

/// What the worker knows and shows of the lines it holds.
#[derive(Debug)]
pub struct Lines {
    views: Mutex<BTreeMap<String, LineView>>,
    wake: watch::Sender<u64>,
    /// Slots keyed tasks take here now: the claim loop takes that many fewer
    /// deliveries from the pool queue, so an unkeyed task is never held here
    /// waiting for a slot a keyed task has while another worker is idle.
    running_here: watch::Sender<u32>,
    pub log: log::LineLog,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for Lines {
    fn default() -> Self {
        Self::new()
    }
}

impl Lines {
    pub fn new() -> Self {
        Lines {
            views: Mutex::default(),
            wake: watch::channel(0).0,
            running_here: watch::channel(0).0,
            log: log::LineLog::default(),
        }
    }

    /// Tells every line to look again (a cancel arrived, say).
    pub fn wake(&self) {
        self.wake.send_modify(|n| *n += 1);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// How many keyed tasks run here (see `running_here`).
    pub fn running_here(&self) -> watch::Receiver<u32> {
        self.running_here.subscribe()
    }

    pub(crate) fn started_here(&self) {
        self.running_here.send_modify(|n| *n += 1);
    }

    pub(crate) fn ended_here(&self) {
        self.running_here.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// The lines this worker holds, for its heartbeat.
    pub fn views(&self) -> Vec<LineView> {
        lock(&self.views)
            .values()
            .filter(|v| !v.holders.is_empty() || !v.waiting.is_empty())
            .cloned()
            .collect()
    }

    pub(crate) fn set_view(&self, key: &str, view: Option<LineView>) {
        let mut views = lock(&self.views);
        match view {
            Some(v) => views.insert(key.to_string(), v),
            None => views.remove(key),
        };
    }
}
