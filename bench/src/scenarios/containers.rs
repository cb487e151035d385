//! Scenario 3: container tasks, one at a time and in bursts of 4, fresh and
//! pre-started, beside `docker run --rm --network none IMAGE true`.

use std::time::{Duration, Instant};

use broker::bulk::BulkClient;
use broker::protocol::SandboxKind;

use std::collections::HashSet;

use super::{burst_ids, one_id, task, Bench};
use crate::alt;
use crate::procs::{wait_prestarted, WorkerOpts};
use crate::report::Figure;
use crate::stats::{rate, Latency};

const IMAGE: &str = "krill/base:1";
const BURST: usize = 4;
/// Longest wait for the pre-started pool to refill between paced tasks.
const REFILL_WAIT: Duration = Duration::from_secs(10);

fn container_task() -> broker::protocol::Task {
    let mut t = task("true");
    t.sandbox = Some(SandboxKind::Container);
    t.image = Some(IMAGE.to_string());
    t
}

/// What one worker configuration measured.
struct Series {
    label: String,
    one: Latency,
    burst: Latency,
    sustained: f64,
}

pub async fn containers(b: &mut Bench) -> anyhow::Result<()> {
    let n = b.opts.container_tasks;
    let tag = b.opts.tag.clone();
    println!("== 3. container tasks ({n} per series){tag}");
    let runtime = b.opts.runtime.clone();
    let (one_lat, _, f1) = alt::docker_runs(IMAGE, runtime.as_deref(), n, 1).await;
    let (burst_lat, burst_took, f2) = alt::docker_runs(IMAGE, runtime.as_deref(), n, BURST).await;
    if f1 + f2 > 0 {
        b.report
            .note(format!("docker run: {} runs failed", f1 + f2));
    }
    let docker_one = Latency::of(&one_lat);
    let docker_burst = Latency::of(&burst_lat);
    let docker_rate = rate(n, burst_took);

    let mut series = Vec::new();
    for &prestart in &b.opts.prestart.clone() {
        series.push(krill_series(b, prestart).await?);
    }
    let alt_one = match &b.opts.runtime {
        Some(r) => format!("`docker run --rm --network none --runtime {r} {IMAGE} true`"),
        None => format!("`docker run --rm --network none {IMAGE} true`"),
    };
    for s in &series {
        b.report.row(
            "3",
            &format!("one at a time, p50 ({}){tag}", s.label),
            Some(Figure::ms(s.one.p50_ms)),
            &alt_one,
            Some(Figure::ms(docker_one.p50_ms)),
        );
        b.report.row(
            "3",
            &format!("one at a time, p99 ({}){tag}", s.label),
            Some(Figure::ms(s.one.p99_ms)),
            &alt_one,
            Some(Figure::ms(docker_one.p99_ms)),
        );
        b.report.row(
            "3",
            &format!("bursts of {BURST}, p50 ({}){tag}", s.label),
            Some(Figure::ms(s.burst.p50_ms)),
            &format!("{alt_one}, {BURST} at once"),
            Some(Figure::ms(docker_burst.p50_ms)),
        );
        b.report.row(
            "3",
            &format!("bursts of {BURST}, p99 ({}){tag}", s.label),
            Some(Figure::ms(s.burst.p99_ms)),
            &format!("{alt_one}, {BURST} at once"),
            Some(Figure::ms(docker_burst.p99_ms)),
        );
        b.report.row(
            "3",
            &format!(
                "sustained containers/s, bursts of {BURST} back to back ({}){tag}",
                s.label
            ),
            Some(Figure::per_sec(s.sustained)),
            &format!("{alt_one}, {BURST} at once"),
            Some(Figure::per_sec(docker_rate)),
        );
    }
    if let Some(warm) = series.iter().rev().find(|s| s.label != "fresh") {
        let one_ok = warm.one.p50_ms <= 0.1 * docker_one.p50_ms;
        let burst_ok = warm.burst.p50_ms <= 0.1 * docker_burst.p50_ms;
        b.report.goal(
            &format!("container p50 ≤ 0.1× `docker run --rm` p50 while the burst fits the pool{tag}"),
            Some(one_ok && burst_ok),
            format!(
                "{}: one at a time {:.1} ms vs docker run {:.0} ms ({}); bursts of {BURST} {:.1} ms vs docker run {BURST} at once {:.0} ms ({})",
                warm.label,
                warm.one.p50_ms,
                docker_one.p50_ms,
                ratio(warm.one.p50_ms, docker_one.p50_ms),
                warm.burst.p50_ms,
                docker_burst.p50_ms,
                ratio(warm.burst.p50_ms, docker_burst.p50_ms),
            ),
        );
    } else {
        b.report.goal(
            "container p50 ≤ 0.1× `docker run --rm` p50 while the burst fits the pool",
            None,
            "no pre-started series in this run",
        );
    }
    let best = series.iter().map(|s| s.sustained).fold(0.0, f64::max);
    b.report.goal(
        &format!("sustained container throughput ≥ the docker CLI's{tag}"),
        Some(best >= docker_rate),
        format!(
            "Krill {} vs docker run {}",
            Figure::per_sec(best),
            Figure::per_sec(docker_rate)
        ),
    );
    Ok(())
}

fn ratio(krill: f64, docker: f64) -> String {
    format!("{:.3}×", krill / docker.max(1e-9))
}

async fn krill_series(b: &mut Bench, prestart: u32) -> anyhow::Result<Series> {
    let n = b.opts.container_tasks;
    let label = if prestart == 0 {
        "fresh".to_string()
    } else {
        format!("pre-started, pool of {prestart}")
    };
    let mut opts = WorkerOpts::container(BURST as u32, prestart);
    if let Some(r) = &b.opts.runtime {
        opts.env.push(("KRILL_CONTAINER_RUNTIME".into(), r.clone()));
    }
    let w = b.env.worker(&opts).await?;
    let client = BulkClient::connect(&b.env.amqp_url).await?;
    let pool_size = prestart as usize;
    // Containers tasks ran in: still running for a moment after their result,
    // and not part of the pool any more.
    let mut used: HashSet<String> = HashSet::new();
    let refill = |id: String, used: HashSet<String>| async move {
        if !wait_prestarted(&id, pool_size, &used, REFILL_WAIT).await {
            eprintln!("the pre-started pool did not refill within {REFILL_WAIT:?}");
        }
    };
    refill(w.id.clone(), used.clone()).await;
    used.extend(
        burst_ids(&client, &w.pool, 2, container_task)
            .await?
            .sandboxes,
    );

    // One at a time; with a pool, each task waits for it to be full again first
    // ("while the burst fits the pool").
    let profile = b.opts.profile_dir.clone();
    let rec = profile
        .as_ref()
        .and_then(|_| crate::profile::start(&format!("s3-{prestart}")));
    let mut one_lat = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        refill(w.id.clone(), used.clone()).await;
        let (d, ok, id) = one_id(&client, &w.pool, &container_task()).await?;
        used.extend(id);
        one_lat.push(d);
        failed += usize::from(!ok);
    }
    if let (Some(rec), Some(dir)) = (rec, &profile) {
        let name = if prestart == 0 { "fresh" } else { "prestarted" };
        rec.finish(
            w.pid(),
            &dir.join(format!("profile-s3-container-{name}.txt")),
        );
    }
    // Bursts that fit the pool, each once the pool is full again.
    let mut burst_lat = Vec::with_capacity(n);
    let bursts_started = Instant::now();
    for _ in 0..n.div_ceil(BURST) {
        refill(w.id.clone(), used.clone()).await;
        let done = burst_ids(&client, &w.pool, BURST, container_task).await?;
        used.extend(done.sandboxes);
        burst_lat.extend(done.latencies);
        failed += done.failed;
    }
    let bursts_took = bursts_started.elapsed();
    // Sustained: bursts back to back, the pool refilling as it can (without a
    // pool, the bursts above were back to back already).
    let sustained = if prestart == 0 {
        rate(n.div_ceil(BURST) * BURST, bursts_took)
    } else {
        refill(w.id.clone(), used.clone()).await;
        let t0 = Instant::now();
        for _ in 0..n.div_ceil(BURST) {
            failed += burst_ids(&client, &w.pool, BURST, container_task)
                .await?
                .failed;
        }
        rate(n.div_ceil(BURST) * BURST, t0.elapsed())
    };
    if failed > 0 {
        b.report.note(format!(
            "Krill containers ({label}): {failed} tasks did not succeed; worker log {}",
            w.log.display()
        ));
    }
    client.close().await;
    w.stop().await;
    Ok(Series {
        label,
        one: Latency::of(&one_lat),
        burst: Latency::of(&burst_lat),
        sustained,
    })
}
