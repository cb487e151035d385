//! Scenarios 1 (throughput) and 2 (latency) of process tasks.

use std::collections::HashMap;
use std::time::Duration;

use broker::bulk::BulkClient;
use broker::client::Client;

use super::{burst, one, task, Bench};
use crate::alt::{self, Spawn};
use crate::procs::WorkerOpts;
use crate::report::Figure;
use crate::stats::{rate, Latency};

const COMMANDS: [&str; 2] = ["true", "echo hi"];

/// Scenario 1: `tasks` trivial tasks, one worker with 2 and with 8 slots,
/// beside raw spawn (2 spawners) and Celery (prefork, 2 children).
pub async fn throughput(b: &mut Bench) -> anyhow::Result<()> {
    let n = b.opts.tasks;
    println!("== 1. process tasks, throughput ({n} tasks per series)");
    let mut raw = HashMap::new();
    let mut namespaced = HashMap::new();
    for cmd in COMMANDS {
        let took = alt::spawn_rate(Spawn::Raw, cmd, n, 2).await;
        raw.insert(cmd, rate(n, took));
        let took = alt::spawn_rate(Spawn::Namespaced, cmd, n, 2).await;
        namespaced.insert(cmd, rate(n, took));
    }
    let mut celery = HashMap::new();
    if let Some(c) = b.celery.clone() {
        match c.start().await {
            Ok(w) => {
                for cmd in COMMANDS {
                    match c.throughput(&w, n, cmd).await {
                        Ok(t) => {
                            if t.failed > 0 {
                                b.report.note(format!(
                                    "Celery: {} of {n} `{cmd}` tasks failed",
                                    t.failed
                                ));
                            }
                            celery.insert(cmd, t.rate);
                        }
                        Err(e) => b.report.note(format!("Celery throughput `{cmd}`: {e:#}")),
                    }
                }
                w.stop().await;
            }
            Err(e) => b.report.note(format!("Celery did not start: {e:#}")),
        }
    }
    let mut best: HashMap<&str, f64> = HashMap::new();
    for slots in [2u32, 8] {
        let w = b.env.worker(&WorkerOpts::process(slots)).await?;
        let client = BulkClient::connect(&b.env.amqp_url).await?;
        burst(&client, &w.pool, 20, || task("true")).await?;
        for cmd in COMMANDS {
            let rec = match (&b.opts.profile_dir, slots, cmd) {
                (Some(dir), 8, "true") => crate::profile::start("s1").filter(|_| dir.is_dir()),
                _ => None,
            };
            let (took, _, failed) = burst(&client, &w.pool, n, || task(cmd)).await?;
            if let (Some(rec), Some(dir)) = (rec, &b.opts.profile_dir) {
                rec.finish(w.pid(), &dir.join("profile-s1-process-8-slots.txt"));
            }
            if failed > 0 {
                b.report.note(format!(
                    "Krill: {failed} of {n} `{cmd}` tasks did not succeed ({slots} slots)"
                ));
            }
            let k = rate(n, took);
            let e = best.entry(cmd).or_insert(0.0);
            *e = e.max(k);
            let what = format!("`{cmd}` ×{n}, {slots} slots: tasks/s");
            for (alternative, rates) in [
                ("raw spawn+reap, 2 spawners", &raw),
                (
                    "spawn in fresh namespaces (`unshare -mpiun --fork`), 2 spawners",
                    &namespaced,
                ),
                ("Celery 5, prefork 2, acks_late", &celery),
            ] {
                b.report.row(
                    "1",
                    &what,
                    Some(Figure::per_sec(k)),
                    alternative,
                    rates.get(cmd).copied().map(Figure::per_sec),
                );
            }
        }
        client.close().await;
        w.stop().await;
    }
    for cmd in COMMANDS {
        let k = best.get(cmd).copied().unwrap_or(0.0);
        let r = raw.get(cmd).copied().unwrap_or(0.0);
        b.report.goal(
            &format!("throughput `{cmd}` ≥ 50% of raw spawn"),
            Some(k >= 0.5 * r),
            format!(
                "best Krill {} = {:.0}% of raw {}",
                Figure::per_sec(k),
                100.0 * k / r.max(1e-9),
                Figure::per_sec(r)
            ),
        );
        match celery.get(cmd) {
            Some(&c) => b.report.goal(
                &format!("throughput `{cmd}` ≥ 3× Celery"),
                Some(k >= 3.0 * c),
                format!(
                    "best Krill {} = {:.1}× Celery {}",
                    Figure::per_sec(k),
                    k / c,
                    Figure::per_sec(c)
                ),
            ),
            None => b.report.goal(
                &format!("throughput `{cmd}` ≥ 3× Celery"),
                None,
                "Celery not measured",
            ),
        }
    }
    Ok(())
}

/// Scenario 2: one task at a time, `latency_tasks` times, submit → result; beside
/// raw spawn, a bare RabbitMQ round trip and Celery.
pub async fn latency(b: &mut Bench) -> anyhow::Result<()> {
    let n = b.opts.latency_tasks;
    let cmd = "echo hi";
    println!("== 2. process tasks, latency ({n} tasks, one at a time, `{cmd}`)");
    let raw = Latency::of(&alt::spawn_latency(Spawn::Raw, cmd, n).await);
    let namespaced = Latency::of(&alt::spawn_latency(Spawn::Namespaced, cmd, n).await);
    let rr = match alt::rabbit_round_trips(&b.env.amqp_url, n).await {
        Ok(s) => Some(Latency::of(&s)),
        Err(e) => {
            b.report.note(format!("bare RabbitMQ round trip: {e:#}"));
            None
        }
    };
    let mut celery = None;
    if let Some(c) = b.celery.clone() {
        match c.start().await {
            Ok(w) => {
                match c.latency(&w, n, cmd).await {
                    Ok(l) => celery = Some(l),
                    Err(e) => b.report.note(format!("Celery latency: {e:#}")),
                }
                w.stop().await;
            }
            Err(e) => b.report.note(format!("Celery did not start: {e:#}")),
        }
    }

    let w = b.env.worker(&WorkerOpts::process(2)).await?;
    let client = BulkClient::connect(&b.env.amqp_url).await?;
    burst(&client, &w.pool, 10, || task(cmd)).await?;
    let mut samples = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        let (d, ok) = one(&client, &w.pool, &task(cmd)).await?;
        samples.push(d);
        failed += usize::from(!ok);
    }
    client.close().await;
    // The CLI's path: a durable reply queue per task, declared before the publish.
    let durable = {
        let c = Client::connect(&b.env.amqp_url).await?;
        let mut s = Vec::new();
        for _ in 0..n.min(200) {
            let t = task(cmd);
            let t0 = std::time::Instant::now();
            c.submit(&w.pool, &t).await?;
            c.wait(&t.id, Some(Duration::from_secs(60))).await?;
            s.push(t0.elapsed());
        }
        c.close().await;
        Latency::of(&s)
    };
    w.stop().await;
    if failed > 0 {
        b.report.note(format!(
            "Krill: {failed} of {n} latency tasks did not succeed"
        ));
    }
    let networked = network_on_latency(b, cmd, n.min(200)).await?;
    let k = Latency::of(&samples);
    let p50 = Some(Figure::ms(k.p50_ms));
    let p99 = Some(Figure::ms(k.p99_ms));
    b.report.row(
        "2",
        "p50 submit → result",
        p50,
        "raw spawn (one at a time)",
        Some(Figure::ms(raw.p50_ms)),
    );
    b.report.row(
        "2",
        "p50 submit → result",
        p50,
        "spawn in fresh namespaces (`unshare -mpiun --fork`)",
        Some(Figure::ms(namespaced.p50_ms)),
    );
    b.report.row(
        "2",
        "p50 submit → result",
        p50,
        "bare RabbitMQ request/reply",
        rr.map(|r| Figure::ms(r.p50_ms)),
    );
    b.report.row(
        "2",
        "p50 submit → result",
        p50,
        "Celery 5",
        celery.as_ref().map(|c| Figure::ms(c.p50_ms)),
    );
    b.report.row(
        "2",
        "p99 submit → result",
        p99,
        "raw spawn (one at a time)",
        Some(Figure::ms(raw.p99_ms)),
    );
    b.report.row(
        "2",
        "p99 submit → result",
        p99,
        "bare RabbitMQ request/reply",
        rr.map(|r| Figure::ms(r.p99_ms)),
    );
    b.report.row(
        "2",
        "p99 submit → result",
        p99,
        "Celery 5",
        celery.as_ref().map(|c| Figure::ms(c.p99_ms)),
    );
    b.report.row(
        "2",
        "p50 submit → result, network on (own netns on the worker network)",
        networked.map(|l| Figure::ms(l.p50_ms)),
        "network off",
        p50,
    );
    b.report.row(
        "2",
        "p50, CLI path (durable reply queue per task)",
        Some(Figure::ms(durable.p50_ms)),
        "bulk path (one reply queue per client)",
        p50,
    );
    match rr {
        Some(rr) => {
            let budget = raw.p50_ms + rr.p50_ms + 1.0;
            b.report.goal(
                "latency p50 ≤ raw spawn p50 + RabbitMQ round trip p50 + 1 ms",
                Some(k.p50_ms <= budget),
                format!(
                    "Krill {:.2} ms vs budget {:.2} ms ({:.2} + {:.2} + 1)",
                    k.p50_ms, budget, raw.p50_ms, rr.p50_ms
                ),
            );
        }
        None => b.report.goal(
            "latency p50 ≤ raw spawn p50 + RabbitMQ round trip p50 + 1 ms",
            None,
            "round trip not measured",
        ),
    }
    Ok(())
}

/// Tasks with network, one at a time, on a worker with `--allow-network`: the
/// helper started for the task, its address, grant and veth on the path.
async fn network_on_latency(b: &mut Bench, cmd: &str, n: usize) -> anyhow::Result<Option<Latency>> {
    let mut opts = WorkerOpts::process(2);
    opts.env.push(("KRILL_ALLOW_NETWORK".into(), "true".into()));
    let w = match b.env.worker(&opts).await {
        Ok(w) => w,
        Err(e) => {
            b.report
                .note(format!("network-on latency: worker did not start: {e:#}"));
            return Ok(None);
        }
    };
    let client = BulkClient::connect(&b.env.amqp_url).await?;
    let networked = || {
        let mut t = task(cmd);
        t.limits.network = true.into();
        t
    };
    burst(&client, &w.pool, 4, networked).await?;
    let mut samples = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        let (d, ok) = one(&client, &w.pool, &networked()).await?;
        samples.push(d);
        failed += usize::from(!ok);
    }
    client.close().await;
    w.stop().await;
    if failed > 0 {
        b.report.note(format!(
            "Krill: {failed} of {n} network-on latency tasks did not succeed"
        ));
    }
    Ok(Some(Latency::of(&samples)))
}
