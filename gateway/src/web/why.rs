//! Why a task waits, in one sentence with a link to what blocks it: the holder
//! of its concurrency key (from the `blocked` event the history stores), or
//! from the live pool view — no worker consumes the pool, every worker of it
//! drains, or all its slots are busy. Built as parts, so it renders to HTML
//! (tasks as links) and to plain text (tests) alike.

use broker::protocol::{BlockReason, Blocked};
use broker::status::Report;
use chrono::{DateTime, Utc};
use maud::{html, Markup};

/// A piece of the sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// A task id, shown as a link to its page.
    Task(String),
}

/// The sentence.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Why(pub Vec<Part>);

impl Why {
    fn text(mut self, s: impl Into<String>) -> Self {
        self.0.push(Part::Text(s.into()));
        self
    }
    fn task(mut self, id: &str) -> Self {
        self.0.push(Part::Task(id.to_string()));
        self
    }

    /// Plain text, task ids as they are.
    pub fn plain(&self) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Part::Text(t) | Part::Task(t) => t.as_str(),
            })
            .collect()
    }

    /// HTML, tasks as links.
    pub fn html(&self) -> Markup {
        html! {
            @for p in &self.0 {
                @match p {
                    Part::Text(t) => (t),
                    Part::Task(id) => a href={"/tasks/" (id)} class="blocker" { (id) },
                }
            }
        }
    }
}

/// `1st`, `2nd`, `3rd`, `4th`, `11th`, `12th`, `13th`, `21st`, …
pub fn ordinal(n: u64) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// `45 s`, `2 min`, `1 h 05 min`.
pub fn how_long(secs: i64) -> String {
    let s = secs.max(0);
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min", s / 60)
    } else {
        format!("{} h {:02} min", s / 3600, (s % 3600) / 60)
    }
}

/// `1 task`, `2 tasks`.
fn tasks(n: i64) -> String {
    if n == 1 {
        "1 task".into()
    } else {
        format!("{n} tasks")
    }
}

/// Why task `id` waits on its concurrency key, from its `blocked` detail.
pub fn blocked(id: &str, b: &Blocked, now: DateTime<Utc>) -> Why {
    let place = format!("{} in line", ordinal(u64::from(b.ahead) + 1));
    let key = &b.key;
    match b.reason {
        BlockReason::Key => {
            let holders: Vec<_> = b.holders.iter().filter(|h| h.task_id != id).collect();
            match holders.as_slice() {
                [] => Why::default().text(format!(
                    "Waiting for its concurrency key {key} to be free; {place}"
                )),
                [h] => Why::default()
                    .text("Waiting for task ")
                    .task(&h.task_id)
                    .text(format!(
                        " (key {key}, running on worker {} for {}); {place}",
                        h.worker,
                        how_long((now - h.started_at).num_seconds())
                    )),
                many => {
                    let mut w = Why::default().text("Waiting for tasks ");
                    for (i, h) in many.iter().enumerate() {
                        if i > 0 {
                            w = w.text(if i + 1 == many.len() { " and " } else { ", " });
                        }
                        w = w.task(&h.task_id);
                    }
                    w.text(format!(" (key {key}, {} running); {place}", many.len()))
                }
            }
        }
        BlockReason::NoFreeSlot => Why::default().text(format!(
            "{place} for key {key}, but worker {}, which holds the key's line, has no free slot",
            b.line_worker
        )),
        BlockReason::Draining => Why::default().text(format!(
            "{place} for key {key}, but worker {}, which holds the key's line, is draining \
             (resume it to let the task start)",
            b.line_worker
        )),
    }
}

/// Why a queued task of `pool` (no `blocked` event) has not started, from the
/// live view; `ahead` is how many tasks of the pool still queued were submitted
/// before it.
pub fn queued(pool: &str, report: Option<&Report>, ahead: i64) -> Why {
    let Some(r) = report else {
        return Why::default().text(
            "Queued; why it has not started is unknown right now (the workers' heartbeats cannot be read)",
        );
    };
    let p = r.pools.iter().find(|p| p.pool == pool);
    let up =
        |p: &broker::status::PoolStatus| p.workers_live + p.workers_draining + p.workers_degraded;
    match p {
        None => Why::default().text(format!("No worker consumes pool {pool}")),
        Some(p) if up(p) == 0 && p.consumers == 0 => {
            Why::default().text(format!("No worker consumes pool {pool}"))
        }
        Some(p) if p.workers_live == 0 && p.workers_draining == 1 => {
            Why::default().text(format!("The only worker of pool {pool} is draining"))
        }
        Some(p) if p.workers_live == 0 && p.workers_draining > 1 => Why::default().text(format!(
            "All {} workers of pool {pool} are draining",
            p.workers_draining
        )),
        Some(p) if p.workers_live == 0 && p.workers_degraded > 0 => Why::default().text(format!(
            "Every worker of pool {pool} is degraded (cannot publish results) and claims nothing"
        )),
        Some(p) if p.slots_free == 0 => Why::default().text(format!(
            "All {} slots of pool {pool} are busy; {}",
            p.slots_total,
            if ahead == 0 {
                "it is next".to_string()
            } else {
                format!("{} ahead", tasks(ahead))
            }
        )),
        Some(p) => match &p.waiting {
            Some(w) => Why::default().text(format!("Queued: {w}")),
            None => Why::default().text(format!(
                "Queued; pool {pool} has {} free slot{}, so a worker should claim it shortly",
                p.slots_free,
                if p.slots_free == 1 { "" } else { "s" }
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::protocol::KeyHolder;

    fn holder(id: &str, secs_ago: i64, now: DateTime<Utc>) -> KeyHolder {
        KeyHolder {
            task_id: id.into(),
            worker: "w1".into(),
            started_at: now - chrono::Duration::seconds(secs_ago),
            submitter: None,
        }
    }

    #[test]
    fn ordinals_read_right() {
        let got: Vec<_> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111]
            .map(ordinal)
            .into();
        assert_eq!(
            got,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st",
                "111th"
            ]
        );
    }

    #[test]
    fn the_holder_is_named_and_linked_never_the_task_itself() {
        let now = Utc::now();
        let b = Blocked {
            key: "prod-db".into(),
            reason: BlockReason::Key,
            ahead: 0,
            holders: vec![holder("h1", 125, now), holder("me", 1, now)],
            line_worker: "w1".into(),
        };
        let w = blocked("me", &b, now);
        assert_eq!(
            w.plain(),
            "Waiting for task h1 (key prod-db, running on worker w1 for 2 min); 1st in line"
        );
        assert!(!w.0.contains(&Part::Task("me".into())));
        let html = w.html().into_string();
        assert!(
            html.contains(r#"<a href="/tasks/h1" class="blocker">h1</a>"#),
            "{html}"
        );
        let b2 = Blocked {
            ahead: 2,
            holders: vec![holder("a", 5, now), holder("b", 5, now)],
            ..b.clone()
        };
        assert_eq!(
            blocked("me", &b2, now).plain(),
            "Waiting for tasks a and b (key prod-db, 2 running); 3rd in line"
        );
        let alone = Blocked {
            holders: vec![holder("me", 1, now)],
            ..b
        };
        assert_eq!(
            blocked("me", &alone, now).plain(),
            "Waiting for its concurrency key prod-db to be free; 1st in line"
        );
    }

    fn report(p: Option<broker::status::PoolStatus>) -> Report {
        Report {
            generated_at: Utc::now(),
            since_secs: 600,
            workers: Vec::new(),
            pools: p.into_iter().collect(),
            keys: Vec::new(),
        }
    }

    fn pool(
        live: u32,
        draining: u32,
        slots_total: u32,
        slots_free: u32,
    ) -> broker::status::PoolStatus {
        broker::status::PoolStatus {
            pool: "p".into(),
            queue: "krill.pool.p".into(),
            exists: true,
            ready: 3,
            unacked: 0,
            consumers: live,
            workers_live: live,
            workers_draining: draining,
            workers_degraded: 0,
            workers_lost: 0,
            workers_stopped: 0,
            slots_total,
            slots_free,
            running: slots_total - slots_free,
            waiting: None,
        }
    }

    #[test]
    fn a_queued_task_is_told_the_pools_reason() {
        let q = |p, ahead| queued("p", Some(&report(p)), ahead).plain();
        assert_eq!(q(None, 0), "No worker consumes pool p");
        assert_eq!(q(Some(pool(0, 0, 0, 0)), 0), "No worker consumes pool p");
        assert_eq!(
            q(Some(pool(0, 1, 0, 0)), 0),
            "The only worker of pool p is draining"
        );
        assert_eq!(
            q(Some(pool(0, 2, 0, 0)), 0),
            "All 2 workers of pool p are draining"
        );
        assert_eq!(
            q(Some(pool(2, 0, 4, 0)), 2),
            "All 4 slots of pool p are busy; 2 tasks ahead"
        );
        assert_eq!(
            q(Some(pool(2, 0, 4, 0)), 1),
            "All 4 slots of pool p are busy; 1 task ahead"
        );
        assert_eq!(
            q(Some(pool(2, 0, 4, 0)), 0),
            "All 4 slots of pool p are busy; it is next"
        );
        assert!(q(Some(pool(1, 0, 4, 1)), 0).contains("1 free slot,"));
        assert!(queued("p", None, 0).plain().contains("unknown right now"));
    }

    #[test]
    fn html_is_escaped() {
        let w = Why::default().text("<script>").task("\"x");
        let h = w.html().into_string();
        assert!(
            !h.contains("<script>") && h.contains("&lt;script&gt;"),
            "{h}"
        );
    }
}
