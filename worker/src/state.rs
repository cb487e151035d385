//! What the worker knows about tasks: the running ones, recent cancellations and
//! recent results (to answer a redelivery without running a task twice).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker::protocol::{RunningTask, SandboxKind};
use broker::trust::PublicKey;
use chrono::{DateTime, Utc};

use crate::cancel::Cancel;
use crate::intake::Settle;
use crate::outbound::Ready;

/// How long a cancellation of a task not (yet) seen is remembered.
pub const CANCEL_MEMORY: Duration = Duration::from_secs(24 * 3600);
/// How many cancellations are remembered at most.
pub const CANCEL_MEMORY_MAX: usize = 100_000;
/// How many recent results are kept to answer redeliveries.
pub const RECENT_RESULTS: usize = 10_000;
/// How long a promise never to start a task (given to a peer) is kept: far
/// longer than a delivery takes from its arrival to its start here.
pub const DISOWN_MEMORY: Duration = Duration::from_secs(3600);
/// How many such promises are kept at most.
pub const DISOWN_MEMORY_MAX: usize = 100_000;

/// Tasks about to start here (decided, not yet running) and tasks this worker
/// promised never to start (asked by a peer holding their redelivery). One
/// lock, taken before `running`: a task is either reserved (then it starts, or
/// is released) or disowned, never both.
#[derive(Debug, Default)]
struct Promises {
    starting: HashMap<String, usize>,
    disowned: HashMap<String, Instant>,
    order: VecDeque<String>,
}

/// Recent results by task id (with their reply queue), oldest first in `order`,
/// bounded in count and in bytes (a result can hold megabytes of output).
#[derive(Debug, Default)]
struct Recent {
    map: HashMap<String, (Arc<Ready>, String)>,
    order: VecDeque<String>,
    bytes: usize,
}

/// Bytes of recent results kept at most (every byte each one holds).
pub const RECENT_BYTES: usize = 64 << 20;

/// What a kept result costs: every string it holds, each list entry's own
/// overhead, and the fixed part (ids, timings, usage), so that no field (a
/// long `output_errors` or `warnings` list, a large `error`) escapes the bound.
fn result_bytes(r: &Ready) -> usize {
    const ENTRY: usize = std::mem::size_of::<String>();
    let list = |v: &[String]| v.iter().map(|s| s.len() + ENTRY).sum::<usize>();
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    std::mem::size_of::<Ready>()
        // The encoded bodies hold the output text (`stdout` and `stderr` are empty).
        + r.held_bytes()
        + r.id.len()
        + r.outputs
            .iter()
            .map(|o| {
                o.name.len()
                    + o.value.len()
                    + o.sealed.as_ref().map_or(0, String::len)
                    + std::mem::size_of_val(o)
            })
            .sum::<usize>()
        + list(&r.output_errors)
        + list(&r.warnings)
        + opt(&r.error)
        + opt(&r.worker)
        + opt(&r.sandbox_id)
        + opt(&r.submitter)
        // The map key, the order entry and the reply queue name.
        + 3 * r.id.len()
        + 128
}

/// A task this worker is running.
#[derive(Debug)]
pub struct Running {
    pub started_at: DateTime<Utc>,
    pub sandbox: SandboxKind,
    /// The name of the key that signed it (None: unsigned).
    pub submitter: Option<String>,
    /// The key that signed it: it may cancel it without the control right.
    pub signer: Option<PublicKey>,
    pub cancel: Cancel,
    /// The delivery to settle when it ends (replaced if the broker redelivers it to us).
    pub settle: Arc<Mutex<Arc<dyn Settle>>>,
}

/// Cancelled ids: when, and by whom (None: an operator; Some(key): a key
/// without the control right, which may cancel only tasks it signed), oldest
/// first in the queue.
type Cancelled = (
    HashMap<String, (Instant, Option<PublicKey>)>,
    VecDeque<String>,
);

/// Shared task state of one worker.
#[derive(Debug, Default)]
pub struct TaskState {
    running: Mutex<HashMap<String, Running>>,
    /// Tasks that ended here whose result is not confirmed yet. They stay in
    /// the heartbeat's list: a peer holding their redelivery takes a task
    /// missing from its holder's list for done (its result delivered), so a
    /// task must not leave the list before its result has.
    delivering: Mutex<HashMap<String, RunningTask>>,
    cancelled: Mutex<Cancelled>,
    recent: Mutex<Recent>,
    promises: Mutex<Promises>,
}

fn listed(id: &str, r: &Running) -> RunningTask {
    RunningTask {
        id: id.to_string(),
        started_at: r.started_at,
        sandbox: r.sandbox,
        submitter: r.submitter.clone(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn release(p: &mut Promises, id: &str) {
    if let Some(n) = p.starting.get_mut(id) {
        *n -= 1;
        if *n == 0 {
            p.starting.remove(id);
        }
    }
}

impl TaskState {
    /// It runs from now on (a reservation of it, if any, is used up).
    pub fn start(&self, id: &str, running: Running) {
        let mut p = lock(&self.promises);
        lock(&self.running).insert(id.to_string(), running);
        release(&mut p, id);
    }

    /// Reserves task `id` to start here; false when this worker promised a
    /// peer never to start it ([`TaskState::disown`]). Ended by `start` or
    /// [`TaskState::release`].
    pub fn reserve(&self, id: &str) -> bool {
        let mut p = lock(&self.promises);
        if p.disowned.contains_key(id) {
            return false;
        }
        *p.starting.entry(id.to_string()).or_insert(0) += 1;
        true
    }

    /// A reservation that will not start (the task went back to the queue).
    pub fn release(&self, id: &str) {
        release(&mut lock(&self.promises), id);
    }

    /// A peer holds a redelivery of `id` no heartbeat lists and asks whether
    /// it ever started here: true (and a promise never to start it, kept
    /// [`DISOWN_MEMORY`]) when it neither started nor is about to; false when it
    /// runs, is listed, is reserved or finished here.
    pub fn disown(&self, id: &str) -> bool {
        let mut p = lock(&self.promises);
        if p.disowned.contains_key(id) {
            return true;
        }
        if p.starting.contains_key(id)
            || lock(&self.running).contains_key(id)
            || lock(&self.delivering).contains_key(id)
            || lock(&self.recent).map.contains_key(id)
        {
            return false;
        }
        p.disowned.insert(id.to_string(), Instant::now());
        p.order.push_back(id.to_string());
        while p.order.len() > DISOWN_MEMORY_MAX
            || p.order
                .front()
                .and_then(|f| p.disowned.get(f))
                .is_some_and(|t| t.elapsed() > DISOWN_MEMORY)
        {
            if let Some(old) = p.order.pop_front() {
                p.disowned.remove(&old);
            }
        }
        true
    }

    /// The task ended: it no longer runs, but is listed (see `delivering`)
    /// until [`TaskState::delivered`].
    pub fn finish(&self, id: &str) -> Option<Running> {
        let r = lock(&self.running).remove(id)?;
        lock(&self.delivering).insert(id.to_string(), listed(id, &r));
        Some(r)
    }

    /// Its result is confirmed (or its reply queue is gone): off the list.
    /// Not called when the worker gave the result up (shutting down with the
    /// broker away): the task then stays listed to the end, and its goodbye
    /// tells peers its holder is gone.
    pub fn delivered(&self, id: &str) {
        lock(&self.delivering).remove(id);
    }

    /// If `id` runs here, swap in the new delivery's settle and return true.
    pub fn adopt(&self, id: &str, settle: &Arc<dyn Settle>) -> bool {
        match lock(&self.running).get(id) {
            Some(r) => {
                *lock(&r.settle) = Arc::clone(settle);
                true
            }
            None => false,
        }
    }

    /// What the heartbeat lists: the running tasks, and those whose result
    /// is still on its way.
    pub fn running(&self) -> Vec<RunningTask> {
        let mut v: Vec<RunningTask> = lock(&self.running)
            .iter()
            .map(|(id, r)| listed(id, r))
            .collect();
        let running: std::collections::HashSet<String> = v.iter().map(|t| t.id.clone()).collect();
        v.extend(
            lock(&self.delivering)
                .values()
                .filter(|t| !running.contains(&t.id))
                .cloned(),
        );
        v.sort_by_key(|t| t.started_at);
        v
    }

    /// Whether task `id` runs here now.
    pub fn is_running(&self, id: &str) -> bool {
        lock(&self.running).contains_key(id)
    }

    pub fn running_count(&self) -> usize {
        lock(&self.running).len()
    }

    /// Cancels every running task with `reason`.
    pub fn cancel_all(&self, reason: &str) {
        for r in lock(&self.running).values() {
            r.cancel.cancel(reason);
        }
    }

    /// Records a cancellation; stops the task if it runs here. Returns whether it ran here.
    pub fn cancel(&self, id: &str, reason: &str) -> bool {
        self.cancel_by(id, reason, None)
    }

    /// Records a cancellation by `by` (None: an operator; Some(key): only a task
    /// that key signed is cancelled); stops the task if it runs here and `by` may.
    pub fn cancel_by(&self, id: &str, reason: &str, by: Option<PublicKey>) -> bool {
        {
            let mut c = lock(&self.cancelled);
            let (set, order) = &mut *c;
            match set.get_mut(id) {
                // An operator's cancel is not narrowed by a later one of a key.
                Some(entry) => {
                    if entry.1.is_some() {
                        *entry = (Instant::now(), by);
                    }
                }
                None => {
                    set.insert(id.to_string(), (Instant::now(), by));
                    order.push_back(id.to_string());
                }
            }
            while order.len() > CANCEL_MEMORY_MAX
                || order
                    .front()
                    .and_then(|f| set.get(f))
                    .is_some_and(|(t, _)| t.elapsed() > CANCEL_MEMORY)
            {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
        match lock(&self.running).get(id) {
            Some(r) if by.is_none() || by == r.signer => {
                r.cancel.cancel(reason);
                true
            }
            _ => false,
        }
    }

    /// Whether task `id`, signed by `signer`, was cancelled by someone who may.
    pub fn is_cancelled(&self, id: &str, signer: Option<&PublicKey>) -> bool {
        lock(&self.cancelled).0.get(id).is_some_and(|(t, by)| {
            t.elapsed() <= CANCEL_MEMORY && (by.is_none() || by.as_ref() == signer)
        })
    }

    /// Remembers a result (and where it goes) for redeliveries. A result already
    /// remembered is not kept twice.
    pub fn remember(&self, result: &Arc<Ready>, reply_to: &str) {
        let mut r = lock(&self.recent);
        if r.map.contains_key(&result.id) {
            return;
        }
        r.bytes += result_bytes(result);
        r.map.insert(
            result.id.clone(),
            (Arc::clone(result), reply_to.to_string()),
        );
        r.order.push_back(result.id.clone());
        while r.order.len() > RECENT_RESULTS || (r.bytes > RECENT_BYTES && r.order.len() > 1) {
            let Some(old) = r.order.pop_front() else {
                break;
            };
            if let Some((gone, _)) = r.map.remove(&old) {
                r.bytes = r.bytes.saturating_sub(result_bytes(&gone));
            }
        }
    }

    /// Drops the oldest recent results until `bytes` more fit the bound:
    /// called before a big result is encoded, so that what [`Self::remember`]
    /// would drop for it is not held while it is built and published.
    pub fn make_room(&self, bytes: usize) {
        let mut r = lock(&self.recent);
        while r.bytes.saturating_add(bytes) > RECENT_BYTES {
            let Some(old) = r.order.pop_front() else {
                break;
            };
            if let Some((gone, _)) = r.map.remove(&old) {
                r.bytes = r.bytes.saturating_sub(result_bytes(&gone));
            }
        }
    }

    pub fn recent(&self, id: &str) -> Option<Arc<Ready>> {
        lock(&self.recent).map.get(id).map(|(r, _)| Arc::clone(r))
    }

    /// The recent result of `id` with the reply queue it was sent to.
    pub fn recent_with_reply(&self, id: &str) -> Option<(Arc<Ready>, String)> {
        lock(&self.recent)
            .map
            .get(id)
            .map(|(r, to)| (Arc::clone(r), to.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::protocol::TaskResult;

    /// A result as the worker keeps it once it is finished.
    fn ready(r: TaskResult) -> Arc<Ready> {
        Arc::new(Ready::encode(r, crate::outbound::HISTORY_BUDGET))
    }
    use broker::protocol::Status;

    fn running(settle: Arc<dyn Settle>) -> Running {
        Running {
            started_at: Utc::now(),
            sandbox: SandboxKind::Process,
            submitter: None,
            signer: None,
            cancel: Cancel::child_of(&tokio_util::sync::CancellationToken::new()),
            settle: Arc::new(Mutex::new(settle)),
        }
    }

    #[test]
    fn a_finished_task_stays_listed_until_its_result_is_delivered() {
        let state = TaskState::default();
        state.start(
            "t1",
            running(Arc::new(crate::intake::MemorySettle::default())),
        );
        state.start(
            "t2",
            running(Arc::new(crate::intake::MemorySettle::default())),
        );
        assert!(state.finish("t1").is_some());
        // No longer running (not cancellable, not adopted, no slot) ...
        assert!(!state.is_running("t1"));
        assert_eq!(state.running_count(), 1);
        // ... but still in the heartbeat's list: its result is on its way.
        let ids = |s: &TaskState| {
            let mut v: Vec<String> = s.running().into_iter().map(|t| t.id).collect();
            v.sort();
            v
        };
        assert_eq!(ids(&state), ["t1", "t2"]);
        state.delivered("t1");
        assert_eq!(ids(&state), ["t2"]);
        assert!(state.finish("t1").is_none(), "ends once");
        assert_eq!(ids(&state), ["t2"]);
    }

    #[test]
    fn a_task_is_either_reserved_to_start_or_disowned_never_both() {
        let state = TaskState::default();
        assert!(state.reserve("t1"));
        assert!(!state.disown("t1"), "about to start here");
        state.release("t1");
        assert!(state.disown("t1"), "given back: it never started here");
        assert!(!state.reserve("t1"), "promised never to start it");
        assert!(state.disown("t1"), "the promise stands");
        // Running, or finished here: not disowned.
        assert!(state.reserve("t2"));
        state.start(
            "t2",
            running(Arc::new(crate::intake::MemorySettle::default())),
        );
        assert!(!state.disown("t2"));
        state.finish("t2");
        state.delivered("t2");
        state.remember(&ready(TaskResult::new("t2", Status::Succeeded)), "q");
        assert!(!state.disown("t2"));
    }

    #[test]
    fn recent_results_are_bounded_in_bytes() {
        let state = TaskState::default();
        let big = "x".repeat(RECENT_BYTES / 4);
        for i in 0..10 {
            let mut r = TaskResult::new(format!("t{i}"), Status::Succeeded);
            r.stdout = big.clone();
            state.remember(&ready(r), "q");
        }
        assert!(state.recent("t9").is_some(), "the newest is kept");
        assert!(
            state.recent("t0").is_none(),
            "the oldest went to stay under the bound"
        );
        assert!(lock(&state.recent).bytes <= RECENT_BYTES + big.len());
    }

    #[test]
    fn room_is_made_before_a_big_result_is_built() {
        let state = TaskState::default();
        let big = "x".repeat(RECENT_BYTES / 4);
        for i in 0..3 {
            let mut r = TaskResult::new(format!("t{i}"), Status::Succeeded);
            r.stdout = big.clone();
            state.remember(&ready(r), "q");
        }
        state.make_room(RECENT_BYTES / 2);
        assert!(state.recent("t0").is_none() && state.recent("t1").is_none());
        assert!(
            state.recent("t2").is_some(),
            "only what the bound needs goes"
        );
        assert!(lock(&state.recent).bytes + RECENT_BYTES / 2 <= RECENT_BYTES);
    }

    #[test]
    fn every_field_counts_towards_the_bound() {
        let state = TaskState::default();
        for i in 0..10 {
            let mut r = TaskResult::new(format!("t{i}"), Status::Succeeded);
            // No stdout at all: only lists and the error.
            r.output_errors = vec!["e".repeat(1 << 20); 8];
            r.warnings = vec!["w".repeat(1 << 20); 4];
            r.error = Some("x".repeat(4 << 20));
            state.remember(&ready(r), "q");
        }
        let bytes = lock(&state.recent).bytes;
        // One entry over: its lists and error are kept and in its body (34 MiB).
        assert!(bytes <= RECENT_BYTES + (35 << 20), "{bytes}");
        assert!(state.recent("t0").is_none(), "the oldest went");
        assert!(result_bytes(&ready(TaskResult::new("t", Status::Succeeded))) > 128);
    }
}
