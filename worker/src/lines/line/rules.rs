//! A line's decisions as plain functions of what it holds: which waiting tasks
//! a supersede ends, why the head waits, when the line is given away, what each
//! waiting task is told and how long it waited. The line (`mod.rs`) does the
//! I/O around them; these are unit-tested apart from the broker.

use std::time::{Duration, Instant};

use broker::protocol::BlockReason;
use chrono::{DateTime, Utc};

use super::{Class, HANDOVER_AFTER};

/// The positions in `waiting` (oldest first: id and class) of the tasks that
/// `newer` supersedes: those before it that never started. A task that may
/// have started somewhere (redelivered: unknown yet, or started before) is
/// never superseded. Ascending; empty when `newer` is not waiting.
pub(super) fn superseded(waiting: &[(&str, Class)], newer: &str) -> Vec<usize> {
    let Some(pos) = waiting.iter().position(|(id, _)| *id == newer) else {
        return Vec::new();
    };
    waiting[..pos]
        .iter()
        .enumerate()
        .filter(|(_, (_, class))| *class == Class::Fresh)
        .map(|(i, _)| i)
        .collect()
}

/// Why the head of the line cannot start, before a slot is looked for (`None`:
/// it may start once it has a slot). A redelivery not yet classified waits as
/// for the key; so does a head whose key is held by `max_concurrent` (default
/// 1) tasks; a draining worker starts nothing.
pub(super) fn head_blocked(
    class: Class,
    max_concurrent: Option<u32>,
    holders: usize,
    draining: bool,
) -> Option<BlockReason> {
    if class == Class::Unknown {
        return Some(BlockReason::Key);
    }
    if holders >= max_concurrent.unwrap_or(1) as usize {
        return Some(BlockReason::Key);
    }
    if draining {
        return Some(BlockReason::Draining);
    }
    None
}

/// The head's wait as the line remembers it: a reason and since when. The same
/// reason as before keeps its start (the hand-over clock runs on); another
/// starts now; no reason, no wait.
pub(super) fn next_head(
    reason: Option<BlockReason>,
    was: Option<(BlockReason, Instant)>,
    now: Instant,
) -> Option<(BlockReason, Instant)> {
    match (reason, was) {
        (None, _) => None,
        (Some(r), Some((w, since))) if r == w => Some((r, since)),
        (Some(r), _) => Some((r, now)),
    }
}

/// Whether the line is given to another worker: never while one of its tasks
/// runs here; always while draining; when its head has waited for a slot here
/// for [`HANDOVER_AFTER`].
pub(super) fn release(
    local_running: usize,
    draining: bool,
    head: Option<(BlockReason, Instant)>,
    now: Instant,
) -> bool {
    if local_running > 0 {
        return false;
    }
    if draining {
        return true;
    }
    matches!(head, Some((BlockReason::NoFreeSlot, since)) if now.duration_since(since) >= HANDOVER_AFTER)
}

/// What each waiting task (by class, oldest first) is told: the head's reason
/// for the first in the line, the key for the rest, and how many tasks are
/// ahead of it. Redeliveries not yet classified are told nothing and not
/// counted (they may be done already).
pub(super) fn told(classes: &[Class], head_reason: BlockReason) -> Vec<Option<(BlockReason, u32)>> {
    let mut ahead = 0u32;
    classes
        .iter()
        .enumerate()
        .map(|(i, class)| {
            if *class == Class::Unknown {
                return None;
            }
            let reason = if i == 0 {
                head_reason
            } else {
                BlockReason::Key
            };
            ahead += 1;
            Some((reason, ahead - 1))
        })
        .collect()
}

/// How long a task waited, in ms: since it was submitted when it says so (and
/// that is not in the future), never less than it was held here.
pub(super) fn waited_ms(
    submitted_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    held: Duration,
) -> u64 {
    let since_submit = submitted_at.and_then(|s| (now - s).to_std().ok());
    since_submit.unwrap_or(held).max(held).as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use Class::{Again, Fresh, Unknown};

    #[test]
    fn a_supersede_ends_only_the_older_tasks_that_never_started() {
        let w = [
            ("a", Fresh),
            ("b", Again),
            ("c", Unknown),
            ("d", Fresh),
            ("new", Fresh),
            ("e", Fresh),
        ];
        assert_eq!(superseded(&w, "new"), vec![0, 3]);
        assert_eq!(
            superseded(&w, "a"),
            Vec::<usize>::new(),
            "nothing before the first"
        );
        assert_eq!(
            superseded(&w, "gone"),
            Vec::<usize>::new(),
            "not waiting: nothing"
        );
        assert_eq!(
            superseded(&w, "e"),
            vec![0, 3, 4],
            "a later supersede ends the earlier one too"
        );
    }

    #[test]
    fn the_head_waits_for_the_key_before_anything_else() {
        assert_eq!(head_blocked(Fresh, None, 0, false), None);
        assert_eq!(head_blocked(Fresh, None, 1, false), Some(BlockReason::Key));
        assert_eq!(head_blocked(Fresh, Some(2), 1, false), None);
        assert_eq!(
            head_blocked(Fresh, Some(2), 2, false),
            Some(BlockReason::Key)
        );
        assert_eq!(
            head_blocked(Again, None, 0, false),
            None,
            "a known redelivery starts"
        );
        assert_eq!(
            head_blocked(Unknown, Some(9), 0, false),
            Some(BlockReason::Key)
        );
        assert_eq!(
            head_blocked(Fresh, None, 0, true),
            Some(BlockReason::Draining)
        );
        assert_eq!(
            head_blocked(Fresh, None, 1, true),
            Some(BlockReason::Key),
            "a held key is the reason, not the drain"
        );
    }

    #[test]
    fn the_same_reason_keeps_its_start_and_another_starts_anew() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let was = Some((BlockReason::NoFreeSlot, t0));
        assert_eq!(next_head(Some(BlockReason::NoFreeSlot), was, t1), was);
        assert_eq!(
            next_head(Some(BlockReason::Key), was, t1),
            Some((BlockReason::Key, t1))
        );
        assert_eq!(next_head(None, was, t1), None);
        assert_eq!(
            next_head(Some(BlockReason::Draining), None, t1),
            Some((BlockReason::Draining, t1))
        );
    }

    #[test]
    fn a_line_is_given_away_only_with_nothing_of_it_running_here() {
        let t0 = Instant::now();
        let late = t0 + HANDOVER_AFTER;
        let early = t0 + HANDOVER_AFTER - Duration::from_millis(1);
        let slot = Some((BlockReason::NoFreeSlot, t0));
        assert!(
            !release(1, true, slot, late),
            "running here: kept, even draining"
        );
        assert!(release(0, true, None, t0), "draining: given away");
        assert!(!release(0, false, slot, early));
        assert!(release(0, false, slot, late));
        assert!(
            !release(0, false, Some((BlockReason::Key, t0)), late),
            "the key is held: no other worker would do better"
        );
        assert!(!release(0, false, None, late));
    }

    #[test]
    fn each_waiting_task_is_told_its_reason_and_how_many_are_ahead() {
        assert_eq!(
            told(&[Fresh, Again, Unknown, Fresh], BlockReason::NoFreeSlot),
            vec![
                Some((BlockReason::NoFreeSlot, 0)),
                Some((BlockReason::Key, 1)),
                None,
                Some((BlockReason::Key, 2)),
            ]
        );
        assert_eq!(
            told(&[Unknown, Fresh], BlockReason::Draining),
            vec![None, Some((BlockReason::Key, 0))],
            "the head's reason belongs to the head only"
        );
        assert!(told(&[], BlockReason::Key).is_empty());
    }

    #[test]
    fn the_wait_counts_from_the_submit_and_never_less_than_held() {
        let now = Utc::now();
        let held = Duration::from_secs(2);
        let ten_ago = now - chrono::Duration::seconds(10);
        assert_eq!(waited_ms(Some(ten_ago), now, held), 10_000);
        assert_eq!(waited_ms(None, now, held), 2_000);
        let skewed = now + chrono::Duration::seconds(30);
        assert_eq!(
            waited_ms(Some(skewed), now, held),
            2_000,
            "a submit clock ahead of ours"
        );
        let one_ago = now - chrono::Duration::seconds(1);
        assert_eq!(waited_ms(Some(one_ago), now, held), 2_000);
    }
}
