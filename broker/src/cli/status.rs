//! `krill status`: workers, their running tasks and each pool's depth, as a table,
//! as JSON (`--json`), or refreshed in place (`--watch`); with `--management`
//! also the broker cluster's health (`crate::cluster`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};

use serde::Serialize;

use super::args::StatusArgs;
use crate::cluster::{self, ClusterHealth};
use crate::status::{HeartbeatReader, Report, WorkerState};

/// What `--json` prints: the report, and the cluster's health when asked.
#[derive(Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    report: &'a Report,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterView>,
}

/// The cluster's health, or why it could not be read.
#[derive(Serialize)]
#[serde(untagged)]
enum ClusterView {
    Health(ClusterHealth),
    Unknown { error: String },
}

async fn cluster_view(url: &str, args: &StatusArgs) -> Option<ClusterView> {
    let mgmt = args.management.as_deref()?;
    let (user, pass) = cluster::amqp_credentials(url);
    Some(match cluster::gather(mgmt, (&user, &pass)).await {
        Ok(h) => ClusterView::Health(h),
        Err(e) => ClusterView::Unknown {
            error: e.to_string(),
        },
    })
}

/// Runs `krill status`; exit code 0.
pub async fn status(url: &str, args: StatusArgs) -> anyhow::Result<u8> {
    let mut reader = HeartbeatReader::open(url, args.since).await?;
    reader.catch_up().await?;
    let pools = args.pool.clone();
    match args.watch {
        None => {
            let report = reader.report(&pools).await?;
            let cluster = cluster_view(url, &args).await;
            print_once(&report, cluster, &args)?;
            reader.close().await;
            Ok(0)
        }
        Some(every) => {
            let every = every.max(Duration::from_millis(200));
            loop {
                let report = reader.report(&pools).await?;
                let cluster = cluster_view(url, &args).await;
                let mut out = String::new();
                if args.json {
                    let shown = Shown {
                        report: &report,
                        cluster,
                    };
                    out.push_str(&serde_json::to_string(&shown)?);
                    out.push('\n');
                } else {
                    // Home, draw, clear what is left of the previous frame.
                    let mut text = table(&report, args.all);
                    if let Some(c) = &cluster {
                        text.push_str(&cluster_table(c));
                    }
                    out.push_str("\x1b[H");
                    out.push_str(&text.replace('\n', "\x1b[K\n"));
                    out.push_str("\x1b[J");
                }
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(out.as_bytes())?;
                stdout.flush()?;
                drop(stdout);
                tokio::select! {
                    r = reader.read_for(every) => r?,
                    _ = tokio::signal::ctrl_c() => {
                        reader.close().await;
                        return Ok(0);
                    }
                }
            }
        }
    }
}

fn print_once(
    report: &Report,
    cluster: Option<ClusterView>,
    args: &StatusArgs,
) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &Shown { report, cluster })?;
        writeln!(stdout)?;
    } else {
        stdout.write_all(table(report, args.all).as_bytes())?;
        if let Some(c) = &cluster {
            stdout.write_all(cluster_table(c).as_bytes())?;
        }
    }
    Ok(())
}

/// The cluster section of the human view.
fn cluster_table(view: &ClusterView) -> String {
    let mut out = String::from("\n");
    let h = match view {
        ClusterView::Unknown { error } => {
            let _ = writeln!(out, "Cluster: unknown ({error})");
            return out;
        }
        ClusterView::Health(h) => h,
    };
    let (up, all) = h.nodes_up();
    let down: Vec<&str> = h
        .nodes
        .iter()
        .filter(|n| !n.running)
        .map(|n| n.name.as_str())
        .collect();
    let _ = write!(
        out,
        "Cluster (management API at {}): {up}/{all} nodes running",
        h.source
    );
    if !down.is_empty() {
        let _ = write!(out, "; DOWN: {}", down.join(", "));
    }
    let _ = writeln!(out);
    let mut rows = vec![[
        "QUEUE".to_string(),
        "TYPE".into(),
        "LEADER".into(),
        "MEMBERS ONLINE".into(),
        "STATE".into(),
    ]];
    for q in &h.queues {
        let state = if !q.has_quorum() {
            "NO QUORUM (takes no writes)".to_string()
        } else if q.members.len() < q.target {
            format!("SHORT ({} members, target {})", q.members.len(), q.target)
        } else if q.online.len() < q.members.len() {
            let off: Vec<&str> = q
                .members
                .iter()
                .filter(|m| !q.online.contains(m))
                .map(String::as_str)
                .collect();
            format!("SHORT (offline: {})", off.join(", "))
        } else {
            "ok".into()
        };
        rows.push([
            q.name.clone(),
            q.kind.clone(),
            q.leader.clone().unwrap_or_else(|| "-".into()),
            format!("{}/{}", q.online.len(), q.members.len()),
            state,
        ]);
    }
    let widths = widths(&rows);
    for row in &rows {
        let _ = writeln!(out, "  {}", line(row, &widths));
    }
    let _ = writeln!(
        out,
        "  reply queues: {} ({} short of members)",
        h.reply_queues, h.reply_queues_short
    );
    out
}

/// The human view: workers (with their running tasks), then pools.
pub fn table(report: &Report, all: bool) -> String {
    let now = report.generated_at;
    let mut out = String::new();
    let shown: Vec<_> = report
        .workers
        .iter()
        .filter(|w| all || w.state != WorkerState::Stopped)
        .collect();
    let hidden = report.workers.len() - shown.len();
    let mut rows = vec![[
        "WORKER".to_string(),
        "POOL".into(),
        "STATE".into(),
        "SLOTS FREE".into(),
        "RUNNING".into(),
        "LAST SEEN".into(),
        "UPTIME".into(),
        "HOST".into(),
        "BROKER NODE".into(),
        "VERSION".into(),
    ]];
    for w in &shown {
        rows.push([
            w.id.clone(),
            w.pool.clone(),
            match &w.degraded {
                Some(why) => format!("DEGRADED ({why})"),
                None => w.state.as_str().to_uppercase(),
            },
            if w.state.is_up() {
                format!("{}/{}", w.slots_free, w.slots_total)
            } else {
                "-".into()
            },
            if w.state.is_up() {
                w.running.len().to_string()
            } else {
                "-".into()
            },
            format!("{} ago", human(w.silent_secs)),
            human(w.uptime_secs),
            w.host.clone(),
            w.broker.as_deref().map_or_else(
                || "-".into(),
                |u| u.trim_start_matches("amqp://").to_string(),
            ),
            w.krill_version.clone(),
        ]);
    }
    let _ = writeln!(
        out,
        "Workers (heartbeats of the last {}):",
        human(report.since_secs)
    );
    if shown.is_empty() {
        let _ = writeln!(out, "  none seen");
    } else {
        let widths = widths(&rows);
        for (i, row) in rows.iter().enumerate() {
            let _ = writeln!(out, "  {}", line(row, &widths));
            if i == 0 {
                continue;
            }
            let w = shown[i - 1];
            for t in &w.running {
                let _ = writeln!(
                    out,
                    "    └ {}  {}  running {}  by {}",
                    t.id,
                    t.sandbox.as_str(),
                    since(t.started_at, now),
                    t.submitter.as_deref().unwrap_or("(unsigned)")
                );
            }
            if w.state == WorkerState::Lost && !w.last_running.is_empty() {
                let _ = writeln!(
                    out,
                    "    └ was running {} task(s) when lost; they end as worker_lost unless they allow a retry",
                    w.last_running.len()
                );
            }
        }
    }
    if hidden > 0 {
        let _ = writeln!(
            out,
            "  ({hidden} stopped worker(s) hidden; --all shows them)"
        );
    }
    let _ = writeln!(out);
    let mut rows = vec![[
        "POOL".to_string(),
        "READY".into(),
        "UNACKED~".into(),
        "CONSUMERS".into(),
        "WORKERS".into(),
        "SLOTS FREE".into(),
        "RUNNING".into(),
    ]];
    // Pools known only from old heartbeats whose queue is gone are noise.
    let pools: Vec<_> = report
        .pools
        .iter()
        .filter(|p| {
            all || p.exists
                || p.workers_live + p.workers_draining + p.workers_degraded > 0
                || p.waiting.is_some()
        })
        .collect();
    for p in &pools {
        let mut workers = format!("{} live", p.workers_live);
        if p.workers_draining > 0 {
            let _ = write!(workers, ", {} draining", p.workers_draining);
        }
        if p.workers_degraded > 0 {
            let _ = write!(workers, ", {} degraded", p.workers_degraded);
        }
        if p.workers_lost > 0 {
            let _ = write!(workers, ", {} lost", p.workers_lost);
        }
        rows.push([
            p.pool.clone(),
            if p.exists {
                p.ready.to_string()
            } else {
                "-".into()
            },
            p.unacked.to_string(),
            p.consumers.to_string(),
            workers,
            format!("{}/{}", p.slots_free, p.slots_total),
            p.running.to_string(),
        ]);
    }
    if !report.keys.is_empty() {
        let _ = writeln!(out, "Concurrency keys:");
        for k in &report.keys {
            let _ = writeln!(
                out,
                "  {} (pool {}, line held by worker {}): {} running, {} waiting",
                k.key,
                k.pool,
                k.line_worker,
                k.holders.len(),
                k.waiting.len()
            );
            for h in &k.holders {
                let by = h
                    .submitter
                    .as_deref()
                    .map(|s| format!(", submitted by {s}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "    holds: task {} (worker {}, running {}{by})",
                    h.task_id,
                    h.worker,
                    since(h.started_at, now)
                );
            }
            for (i, id) in k.waiting.iter().enumerate() {
                let why = match (i, k.blocked) {
                    (0, Some(r)) => format!(" (next; waits: {})", r.as_str()),
                    (0, None) => " (next)".to_string(),
                    _ => String::new(),
                };
                let _ = writeln!(out, "    {}. waits: task {id}{why}", i + 1);
            }
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "Pools:");
    if pools.is_empty() {
        let _ = writeln!(out, "  none (name one with --pool)");
    } else {
        let widths = widths(&rows);
        for (i, row) in rows.iter().enumerate() {
            let _ = writeln!(out, "  {}", line(row, &widths));
            if i > 0 {
                if let Some(why) = &pools[i - 1].waiting {
                    let _ = writeln!(out, "    ⚠ {why}");
                }
            }
        }
    }
    out
}

fn widths<const N: usize>(rows: &[[String; N]]) -> [usize; N] {
    let mut w = [0; N];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            w[i] = w[i].max(cell.chars().count());
        }
    }
    w
}

fn line<const N: usize>(row: &[String; N], widths: &[usize; N]) -> String {
    let mut s = String::new();
    for (i, cell) in row.iter().enumerate() {
        if i + 1 == N {
            s.push_str(cell);
        } else {
            let _ = write!(s, "{cell:<w$}  ", w = widths[i]);
        }
    }
    s.trim_end().to_string()
}

fn since(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    human((now - t).num_seconds().max(0) as u64)
}

/// `42s`, `3m05s`, `2h10m`, `3d4h`.
pub fn human(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Heartbeat, PROTOCOL_VERSION};
    use crate::status::{pool_status, worker_status};

    #[test]
    fn durations() {
        assert_eq!(human(5), "5s");
        assert_eq!(human(185), "3m05s");
        assert_eq!(human(7800), "2h10m");
    }

    #[test]
    fn table_shows_workers_pools_and_why() {
        let now = Utc::now();
        let hb = Heartbeat {
            version: PROTOCOL_VERSION,
            worker: "w1".into(),
            host: "h".into(),
            pool: "p".into(),
            krill_version: "0.1.0".into(),
            slots_total: 2,
            slots_free: 2,
            draining: true,
            degraded: None,
            asking: Vec::new(),
            disowned: Vec::new(),
            process: None,
            running: vec![crate::protocol::RunningTask {
                id: "t-42".into(),
                started_at: now,
                sandbox: crate::protocol::SandboxKind::Process,
                submitter: Some("alice".into()),
            }],
            broker: Some("amqp://rabbit-2:5672/%2f".into()),
            uptime_secs: 10,
            interval_secs: 5,
            stopping: false,
            sent_at: now,
            lines: vec![crate::protocol::LineView {
                key: "prod-db".into(),
                holders: vec![crate::protocol::KeyHolder {
                    task_id: "t-holder".into(),
                    worker: "w1".into(),
                    started_at: now,
                    submitter: None,
                }],
                waiting: vec!["t-next".into(), "t-last".into()],
                blocked: None,
            }],
        };
        let workers = vec![worker_status(&hb, now)];
        let report = Report {
            generated_at: now,
            since_secs: 600,
            pools: vec![pool_status("p", Some((1, 0)), &workers)],
            keys: crate::status::key_status(&workers),
            workers,
        };
        let t = table(&report, false);
        assert!(t.contains("holds: task t-holder (worker w1"), "{t}");
        assert!(t.contains("1. waits: task t-next (next)"), "{t}");
        assert!(t.contains("2. waits: task t-last"), "{t}");
        assert!(t.contains("DRAINING"), "{t}");
        assert!(t.contains("rabbit-2:5672/%2f"), "the broker node: {t}");
        assert!(t.contains("is draining"), "{t}");
        assert!(t.contains("t-42  process  running 0s  by alice"), "{t}");
    }
}
