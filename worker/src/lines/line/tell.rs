//! What a line says of its waiting tasks: how long each waited, `blocked`
//! events when a wait changes (and again every [`BLOCKED_AGAIN`]), and the view
//! of the line for the worker's heartbeat.

use std::time::Instant;

use broker::protocol::{BlockReason, Blocked, KeyHolder, LineView, WaitedOn};
use chrono::Utc;

use super::{rules, Class, Entry, Line, BLOCKED_AGAIN};

impl Line {
    pub(super) fn waited(&self, entry: &Entry) -> WaitedOn {
        WaitedOn {
            key: self.key.clone(),
            waited_ms: rules::waited_ms(
                entry.task.submitted_at,
                Utc::now(),
                entry.arrived.elapsed(),
            ),
        }
    }

    fn key_holders(&self) -> Vec<KeyHolder> {
        self.holders
            .iter()
            .map(|h| KeyHolder {
                task_id: h.task_id.clone(),
                worker: h.worker.clone(),
                started_at: h.started_at,
                submitter: h.submitter.clone(),
            })
            .collect()
    }

    /// Blocked events for waiting tasks whose wait changed (all of them again
    /// every [`BLOCKED_AGAIN`]), and the view for the heartbeat.
    pub(super) async fn tell(&mut self) {
        let holders = self.key_holders();
        let again = self.told_all.elapsed() >= BLOCKED_AGAIN;
        if again {
            self.told_all = Instant::now();
        }
        let head_reason = self.head.map(|(r, _)| r).unwrap_or(BlockReason::Key);
        let me = self.shared.id.clone();
        let classes: Vec<Class> = self.waiting.iter().map(|e| e.class).collect();
        let told = rules::told(&classes, head_reason);
        let mut out = Vec::new();
        for (e, t) in self.waiting.iter_mut().zip(told) {
            let Some((reason, ahead)) = t else {
                continue;
            };
            let b = Blocked {
                key: self.key.clone(),
                reason,
                ahead,
                holders: holders.clone(),
                line_worker: me.clone(),
            };
            let said = format!(
                "{:?}|{}|{:?}",
                b.reason,
                b.ahead,
                b.holders.iter().map(|h| &h.task_id).collect::<Vec<_>>()
            );
            if again || e.told.as_deref() != Some(said.as_str()) {
                e.told = Some(said);
                out.push((e.task.id.clone(), b, e.stamp.submitter.clone()));
            }
        }
        for (id, b, by) in out {
            self.shared.run.outbound.blocked(&id, b, by).await;
        }
        let view = LineView {
            key: self.key.clone(),
            holders,
            waiting: self.waiting.iter().map(|e| e.task.id.clone()).collect(),
            blocked: self
                .head
                .map(|(r, _)| r)
                .filter(|r| *r != BlockReason::Key && !self.waiting.is_empty()),
        };
        self.shared.lines.set_view(&self.key, Some(view));
    }
}
