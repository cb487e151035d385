//! Scenarios 4 (output throughput with masking) and 5 (worker memory).

use std::time::{Duration, Instant};

use broker::bulk::BulkClient;
use broker::protocol::{Secret, Status};

use super::{burst, task, Bench};
use crate::alt;
use crate::procs::{rss, WorkerOpts};
use crate::report::Figure;

/// The output task: log-like lines, each carrying one registered secret, `bytes` in all.
fn output_script(bytes: u64) -> String {
    format!(
        "yes \"2026-11-28T21:00:00Z INFO handled GET /api/v1/items user=$SECRET_0 status=200 size=5120\" | head -c {bytes}"
    )
}

fn secrets(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let v = uuid::Uuid::new_v4().simple().to_string();
            (format!("SECRET_{i}"), format!("s3cr3t-{i}-{}", &v[..16]))
        })
        .collect()
}

/// Runs the output task once: (MiB/s, stdout bytes kept, whether it succeeded and was masked).
async fn output_task(
    client: &BulkClient,
    pool: &str,
    bytes: u64,
    secrets: &[(String, String)],
    cap: Option<u64>,
) -> anyhow::Result<(f64, usize, bool)> {
    let mut t = task(&output_script(bytes));
    for (k, v) in secrets {
        t.secrets.insert(k.clone(), Secret(v.clone()).into());
    }
    t.limits.output_bytes = cap;
    let t0 = Instant::now();
    let ticket = client.submit(pool, &t).await?;
    let r = ticket.result(Some(Duration::from_secs(900))).await?;
    let took = t0.elapsed();
    let masked = !r.stdout.contains(&secrets[0].1) && r.stdout.contains("user=***");
    let mib = bytes as f64 / (1024.0 * 1024.0);
    Ok((
        mib / took.as_secs_f64(),
        r.stdout.len(),
        r.status == Status::Succeeded && masked,
    ))
}

/// Scenario 4: one task writing `output_mib` MiB with `secrets` secrets registered,
/// masking and live logs on; the worker's peak RSS after a small and a large task.
pub async fn output(b: &mut Bench) -> anyhow::Result<()> {
    let mib = b.opts.output_mib;
    let bytes = mib << 20;
    println!(
        "== 4. output: {mib} MiB through the worker, {} secrets",
        b.opts.secrets
    );
    let secrets = secrets(b.opts.secrets.max(1));
    let (raw_bytes, raw_took) = alt::pipe_throughput(&output_script(bytes), secrets.clone()).await;
    let raw = raw_bytes as f64 / (1024.0 * 1024.0) / raw_took.as_secs_f64().max(1e-9);

    let w = b.env.worker(&WorkerOpts::process(1)).await?;
    let client = BulkClient::connect(&b.env.amqp_url).await?;
    let idle = w.rss();
    // Both sizes above the default 10 MiB cap: what is kept is the same, only the
    // amount streamed through differs.
    let small = (bytes / 10).max(20 << 20).min(bytes);
    // Twice: the worker keeps recent results (to answer redeliveries), so the
    // peak after one big task and then another is what a second task of the
    // *same* size reaches too; the large task then runs third.
    let (_, _, ok_small) = output_task(&client, &w.pool, small, &secrets, None).await?;
    let (_, _, ok_small2) = output_task(&client, &w.pool, small, &secrets, None).await?;
    let ok_small = ok_small && ok_small2;
    let after_small = w.rss();
    let rec = b
        .opts
        .profile_dir
        .as_ref()
        .and_then(|_| crate::profile::start("s4"));
    let cpu0 = crate::procs::cpu_ms(w.pid());
    let (k_default, kept_default, ok1) =
        output_task(&client, &w.pool, bytes, &secrets, None).await?;
    let cpu_default = crate::procs::cpu_ms(w.pid()).saturating_sub(cpu0);
    if let (Some(rec), Some(dir)) = (rec, &b.opts.profile_dir) {
        rec.finish(w.pid(), &dir.join("profile-s4-output.txt"));
    }
    let after_large = w.rss();
    let cpu0 = crate::procs::cpu_ms(w.pid());
    let (k_max, kept_max, ok2) =
        output_task(&client, &w.pool, bytes, &secrets, Some(48 << 20)).await?; // the largest cap a default pool allows
    let cpu_max = crate::procs::cpu_ms(w.pid()).saturating_sub(cpu0);
    let after_max = w.rss();
    let hostile = hostile_output(&client, &w).await;
    client.close().await;
    w.stop().await;
    for (label, case) in [
        (
            "::add-mask:: flood (500 values of 8000 hex characters, a few ms apart, each printed; masking fails closed past the 1 MiB cap)",
            hostile.as_ref().ok().map(|h| h.0),
        ),
        (
            "1 MiB of malformed lines in each output file (100 errors kept, the rest counted)",
            hostile.as_ref().ok().map(|h| h.1),
        ),
    ] {
        let Some(c) = case else { continue };
        b.report.row(
            "4",
            &format!(
                "{label}: worker CPU per task, ms ({:.1} MiB read, {:.0} ms per MiB)",
                c.read_mib,
                c.worker_ms as f64 / c.read_mib.max(1e-9)
            ),
            Some(Figure::ms(c.worker_ms as f64)),
            "the task's own CPU time",
            c.task_ms.map(|t| Figure::ms(t as f64)),
        );
    }
    if let Err(e) = &hostile {
        b.report
            .note(format!("Krill: the hostile output cases failed: {e}"));
    }
    if !(ok_small && ok1 && ok2) {
        b.report
            .note("Krill: an output task failed or a secret was not masked");
    }
    let pipe = "the same command into a pipe (no queue, no masking)";
    b.report.row(
        "4",
        &format!(
            "{mib} MiB stdout, 20 secrets, default cap ({:.0} MiB kept, published live): MiB/s",
            kept_default as f64 / 1048576.0
        ),
        Some(Figure::mib_s(k_default)),
        pipe,
        Some(Figure::mib_s(raw)),
    );
    b.report.row(
        "4",
        &format!(
            "{mib} MiB stdout, 20 secrets, cap 48 MiB, the largest ({:.0} MiB kept, published live): MiB/s",
            kept_max as f64 / 1048576.0
        ),
        Some(Figure::mib_s(k_max)),
        pipe,
        Some(Figure::mib_s(raw)),
    );
    // The worker's own CPU (its process, every thread; not the task's):
    // steadier than the rates on a machine others load.
    for (cap, cpu) in [("default cap", cpu_default), ("cap 48 MiB", cpu_max)] {
        b.report.row(
            "4",
            &format!(
                "{mib} MiB stdout, 20 secrets, {cap}: worker CPU per task, ms ({:.2} ms per MiB)",
                cpu as f64 / mib as f64
            ),
            Some(Figure::ms(cpu as f64)),
            "—",
            None,
        );
    }
    b.report.row(
        "4",
        &format!(
            "worker peak RSS (VmHWM) after two {} MiB tasks and the {mib} MiB one",
            small >> 20
        ),
        Some(Figure::mib(after_large.peak_mib())),
        &format!("same worker after two {} MiB tasks", small >> 20),
        Some(Figure::mib(after_small.peak_mib())),
    );
    b.report.row(
        "4",
        &format!("worker peak RSS after {mib} MiB with a 48 MiB cap"),
        Some(Figure::mib(after_max.peak_mib())),
        "same worker idle, before any output",
        Some(Figure::mib(idle.now_mib())),
    );
    b.report.goal(
        "output ≥ 200 MiB/s with masking on",
        Some(k_default >= 200.0),
        format!(
            "{} (default cap), {} (48 MiB cap); the bare pipe gives {}",
            Figure::mib_s(k_default),
            Figure::mib_s(k_max),
            Figure::mib_s(raw)
        ),
    );
    let growth = after_large.peak_mib() - after_small.peak_mib();
    b.report.goal(
        "worker RSS flat (no growth with output size)",
        Some(growth <= 2.0 + 0.1 * after_small.peak_mib()),
        format!(
            "peak {:.1} MiB after two {} MiB tasks, {:.1} MiB after the {mib} MiB one (all with the default 10 MiB cap), {:.1} MiB with a 48 MiB cap (the capture holds what the result carries)",
            after_small.peak_mib(),
            small >> 20,
            after_large.peak_mib(),
            after_max.peak_mib()
        ),
    );
    Ok(())
}

/// What one hostile output task cost the worker.
#[derive(Debug, Clone, Copy)]
struct Cost {
    worker_ms: u64,
    task_ms: Option<u64>,
    /// What the task wrote that the worker read: its stdout and output files.
    read_mib: f64,
}

/// The `::add-mask::` flood and the many-errors task of issue #20, on the same
/// worker: what each cost the worker's own CPU, beside the task's.
async fn hostile_output(
    client: &BulkClient,
    w: &crate::procs::Worker,
) -> anyhow::Result<(Cost, Cost)> {
    let add_mask = r#"i=0
while [ $i -lt 500 ]; do
  hex=$(head -c 4000 /dev/urandom | od -An -tx1 | tr -d ' \n')
  printf '::add-mask::%s\nv=%s\n' "$hex" "$hex"
  sleep 0.005
  i=$((i+1))
done"#;
    let errors = r#"yes x | head -c 1048000 >> "$KRILL_OUTPUT"
yes x | head -c 1048000 >> "$KRILL_SENSITIVE_OUTPUT""#;
    let mut costs = Vec::new();
    for (script, read) in [(add_mask, 500.0 * 16_016.0), (errors, 2.0 * 1_048_000.0)] {
        let mut t = task(script);
        t.limits.timeout_secs = Some(600);
        let before = crate::procs::cpu_ms(w.pid());
        let ticket = client.submit(&w.pool, &t).await?;
        let r = ticket.result(Some(Duration::from_secs(900))).await?;
        if r.status != Status::Succeeded {
            anyhow::bail!("a hostile output task ended {}: {:?}", r.status, r.error);
        }
        costs.push(Cost {
            worker_ms: crate::procs::cpu_ms(w.pid()).saturating_sub(before),
            task_ms: r.usage.cpu_time_ms,
            read_mib: read / 1048576.0,
        });
    }
    Ok((costs[0], costs[1]))
}

/// Scenario 5: the worker's RSS idle and with 8 tasks running; Celery's idle
/// worker and children beside it.
pub async fn memory(b: &mut Bench) -> anyhow::Result<()> {
    println!("== 5. worker memory");
    let w = b.env.worker(&WorkerOpts::process(8)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = w.rss();
    let client = BulkClient::connect(&b.env.amqp_url).await?;
    let pool = w.pool.clone();
    let running = {
        let client = &client;
        let pool = &pool;
        let work = burst(client, pool, 8, || task("sleep 4"));
        let probe = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            rss(w.pid())
        };
        let (done, probe) = tokio::join!(work, probe);
        done?;
        probe
    };
    client.close().await;
    w.stop().await;

    let mut container_idle = None;
    if b.opts.containers {
        if let Ok(cw) = b.env.worker(&WorkerOpts::container(4, 2)).await {
            tokio::time::sleep(Duration::from_secs(3)).await;
            container_idle = Some(cw.rss());
            cw.stop().await;
        }
    }

    let mut celery = None;
    if let Some(c) = b.celery.clone() {
        if let Ok(cw) = c.start().await {
            tokio::time::sleep(Duration::from_secs(2)).await;
            celery = Some(cw.rss_mib());
            cw.stop().await;
        }
    }
    let celery_name = "Celery 5 worker + 2 prefork children, idle";
    b.report.row(
        "5",
        "worker RSS idle (process sandbox)",
        Some(Figure::mib(idle.now_mib())),
        celery_name,
        celery.map(Figure::mib),
    );
    b.report.row(
        "5",
        "worker RSS with 8 tasks running",
        Some(Figure::mib(running.now_mib())),
        celery_name,
        celery.map(Figure::mib),
    );
    if let Some(c) = container_idle {
        b.report.row(
            "5",
            "worker RSS idle (container sandbox, 2 pre-started)",
            Some(Figure::mib(c.now_mib())),
            celery_name,
            celery.map(Figure::mib),
        );
    }
    b.report.goal(
        "worker idle RSS ≤ 20 MiB",
        Some(idle.now_mib() <= 20.0),
        format!(
            "{:.1} MiB idle, {:.1} MiB with 8 tasks running (the tasks' own processes are not the worker's)",
            idle.now_mib(),
            running.now_mib()
        ),
    );
    Ok(())
}
