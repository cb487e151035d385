//! Scenario 9 (issue 19): where the latency tail comes from. `echo hi` one at
//! a time (as scenario 2) on a worker logging its per-task phase timings
//! (`krill::phases=debug`); the phases of the tasks above p95 beside those of
//! the tasks around p50, and which background work overlapped them.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use broker::bulk::BulkClient;
use serde_json::Value;

use super::{burst, task, Bench};
use crate::procs::WorkerOpts;
use crate::report::Figure;
use crate::stats::percentile;

const CMD: &str = "echo hi";

/// The phases, in the order a task meets them: (name, what it covers).
const PHASES: [(&str, &str); 11] = [
    (
        "to_worker",
        "submit → the worker's handler starts (client publish, broker, delivery)",
    ),
    (
        "intake",
        "handler: gate, decode, decide, claim, until the runner starts",
    ),
    (
        "take",
        "sandbox: take a waiting helper (waits while it is not ready yet)",
    ),
    (
        "setup",
        "sandbox: claim the task dir, cgroup limits, encode the config",
    ),
    (
        "script",
        "sandbox: config sent → the init's report (the script's fork, exec, run, exit)",
    ),
    ("drain", "sandbox: the output pipes closing"),
    ("collect", "sandbox: cgroup usage, output files"),
    (
        "runner",
        "the rest of the runner (policy, masking, building the result)",
    ),
    (
        "seal",
        "run end → the result's publish starts (seal, remember)",
    ),
    (
        "to_client",
        "the result's publish starts → the client has it",
    ),
    (
        "confirm_ack",
        "after the client has it, holding the slot: result confirm, finished event, ack",
    ),
];

#[derive(Debug, Clone, Default)]
struct Sample {
    total_us: u64,
    phases: HashMap<&'static str, f64>,
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Scenario 9: `latency_tasks` tasks one at a time with phase timings.
pub async fn tail(b: &mut Bench) -> anyhow::Result<()> {
    let n = b.opts.latency_tasks;
    println!("== 9. the tail: {n} `{CMD}` one at a time, phases from the worker's debug log");
    let mut opts = WorkerOpts::process(2);
    opts.env.extend([
        (
            "RUST_LOG".into(),
            "info,lapin=warn,krill::phases=debug".into(),
        ),
        ("KRILL_LOG_FORMAT".into(), "json".into()),
    ]);
    let w = b.env.worker(&opts).await?;
    let client = BulkClient::connect(&b.env.amqp_url).await?;
    let mut client_side: Vec<(String, u64, u64, Duration)> = Vec::with_capacity(n);
    let run = async {
        burst(&client, &w.pool, 10, || task(CMD)).await?;
        for _ in 0..n {
            let t = task(CMD);
            let at = unix_us();
            let t0 = std::time::Instant::now();
            let r = client
                .submit(&w.pool, &t)
                .await?
                .result(Some(Duration::from_secs(60)))
                .await?;
            client_side.push((r.id, at, unix_us(), t0.elapsed()));
        }
        anyhow::Ok(())
    }
    .await;
    client.close().await;
    let log = w.log.clone();
    w.stop().await;
    run?;
    let text = std::fs::read_to_string(&log)?;
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "krill::phases")
        .collect();
    let md = analyse(&client_side, &events, n);
    std::fs::write(b.opts.out.join("tail.md"), &md)?;
    println!("{md}");
    b.report.note(format!(
        "scenario 9: phases of the tail in {}",
        b.opts.out.join("tail.md").display()
    ));
    Ok(())
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .or_else(|| v[k].as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0.0)
}

/// The table: per phase, the median of the tasks around p50 and above p95.
fn analyse(client_side: &[(String, u64, u64, Duration)], events: &[Value], n: usize) -> String {
    let mut task_ev: HashMap<&str, &Value> = HashMap::new();
    let mut sandbox_ev: HashMap<&str, &Value> = HashMap::new();
    let mut cleanups: Vec<(f64, f64)> = Vec::new();
    let mut launches: Vec<(f64, f64)> = Vec::new();
    for e in events {
        let id = e["task_id"].as_str().unwrap_or("");
        match e["message"].as_str().unwrap_or("") {
            "task phases" => {
                task_ev.insert(id, e);
            }
            "sandbox phases" => {
                sandbox_ev.insert(id, e);
            }
            "sandbox cleanup" => {
                let end = num(e, "end_unix_us");
                cleanups.push((end - num(e, "reap_us") - num(e, "remove_us"), end));
            }
            "helper launched ahead" => {
                let at = num(e, "at_unix_us");
                launches.push((at, at + num(e, "launch_us")));
            }
            _ => {}
        }
    }
    let mut samples = Vec::new();
    for (id, submit, received, took) in client_side {
        let (Some(t), Some(s)) = (task_ev.get(id.as_str()), sandbox_ev.get(id.as_str())) else {
            continue;
        };
        let (submit, received) = (*submit as f64, *received as f64);
        let start = num(t, "start_unix_us");
        let published = num(t, "published_unix_us");
        let sb: f64 = ["take_us", "setup_us", "report_us", "drain_us", "collect_us"]
            .iter()
            .map(|k| num(s, k))
            .sum();
        let mut p = HashMap::new();
        p.insert("to_worker", start - submit);
        p.insert("intake", num(t, "intake_us"));
        p.insert("take", num(s, "take_us"));
        p.insert("setup", num(s, "setup_us"));
        p.insert("script", num(s, "report_us"));
        p.insert("drain", num(s, "drain_us"));
        p.insert("collect", num(s, "collect_us"));
        p.insert("runner", num(t, "run_us") - sb);
        p.insert(
            "seal",
            published - start - num(t, "intake_us") - num(t, "run_us"),
        );
        p.insert("to_client", received - published);
        p.insert(
            "confirm_ack",
            num(t, "publish_us") + num(t, "event_us") + num(t, "ack_us") - (received - published),
        );
        samples.push(Sample {
            total_us: took.as_micros() as u64,
            phases: p,
        });
    }
    samples.sort_by_key(|s| s.total_us);
    let k = samples.len();
    let mut s = String::new();
    let totals: Vec<f64> = samples.iter().map(|x| x.total_us as f64 / 1e3).collect();
    let (p50, p95, p99) = (
        percentile(&totals, 50.0),
        percentile(&totals, 95.0),
        percentile(&totals, 99.0),
    );
    let _ = writeln!(
        s,
        "`{CMD}` one at a time, {n} tasks ({k} with phase events), one worker with 2 slots; \
         submit → result p50 {}, p95 {}, p99 {}. Each phase's median (ms) over the tasks \
         between p40 and p60 and over the tasks above p95; wall clocks of the bench and \
         the worker (same host) join the client's and the worker's phases.\n",
        Figure::ms(p50),
        Figure::ms(p95),
        Figure::ms(p99)
    );
    if k < 20 {
        let _ = writeln!(s, "too few tasks with phase events to split ({k})");
        return s;
    }
    let mid = &samples[k * 40 / 100..k * 60 / 100];
    let tail = &samples[k * 95 / 100..];
    let med = |set: &[Sample], ph: &str| {
        let mut v: Vec<f64> = set.iter().map(|x| x.phases[ph] / 1e3).collect();
        v.sort_by(f64::total_cmp);
        percentile(&v, 50.0)
    };
    let mean = |set: &[Sample], ph: &str| {
        set.iter().map(|x| x.phases[ph] / 1e3).sum::<f64>() / set.len().max(1) as f64
    };
    let total_mean = |set: &[Sample]| {
        set.iter().map(|x| x.total_us as f64 / 1e3).sum::<f64>() / set.len().max(1) as f64
    };
    let excess = total_mean(tail) - total_mean(mid);
    s.push_str("| phase | p40–p60 tasks, median | above p95, median | above p95 − p40–p60, means | share of the tail's excess | what it covers |\n");
    s.push_str("|---|---:|---:|---:|---:|---|\n");
    for (ph, what) in PHASES {
        let d = mean(tail, ph) - mean(mid, ph);
        let share = if ph == "confirm_ack" {
            "(off the path)".to_string()
        } else {
            format!("{:.0}%", 100.0 * d / excess.max(1e-9))
        };
        let _ = writeln!(
            s,
            "| {ph} | {:.2} | {:.2} | {:+.2} | {share} | {what} |",
            med(mid, ph),
            med(tail, ph),
            d
        );
    }
    let _ = writeln!(
        s,
        "| **submit → result** | {:.2} | {:.2} | {:+.2} | 100% | |\n",
        {
            let v: Vec<f64> = mid.iter().map(|x| x.total_us as f64 / 1e3).collect();
            percentile(&v, 50.0)
        },
        {
            let v: Vec<f64> = tail.iter().map(|x| x.total_us as f64 / 1e3).collect();
            percentile(&v, 50.0)
        },
        excess
    );
    let waited = |set: &[Sample]| {
        let hit = set.iter().filter(|x| x.phases["take"] > 1000.0).count();
        100.0 * hit as f64 / set.len().max(1) as f64
    };
    let dist = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (percentile(v, 50.0) / 1e3, percentile(v, 99.0) / 1e3)
    };
    let (launch50, launch99) = dist(&mut launches.iter().map(|&(a, b)| b - a).collect());
    let (clean50, clean99) = dist(&mut cleanups.iter().map(|&(a, b)| b - a).collect());
    let _ = writeln!(
        s,
        "The task waited more than 1 ms to take its helper in {:.0}% of the p40–p60 tasks and \
         {:.0}% of those above p95. Background work, per task: launching a helper ahead (the \
         synchronous part, on a runtime thread) p50 {launch50:.2} ms, p99 {launch99:.2} ms; a \
         finished task's clean-up (reap, cgroup and dir removal) p50 {clean50:.2} ms, p99 \
         {clean99:.2} ms.",
        waited(mid),
        waited(tail),
    );
    s
}
