//! Scenario 6 (issue 13): signing, verifying and sealing on the task path.
//!
//! Two workers of the same shape run side by side: an open pool (unsigned
//! tasks, plain secret) and a signed pool (trusted keys, sealed secrets
//! required, every sensitive output sealed to the submitter, claims on the
//! pool's stream). The same task (`echo hi`, one secret, one sensitive output)
//! goes to each, latency series interleaved one task at a time, throughput
//! series alternated; the difference is the cost of the trust checks. Beside
//! it: the crypto alone (in process) and the bare claims-stream round trip
//! (publish to a stream, read it back), which is what replay protection adds.

use std::time::{Duration, Instant};

use anyhow::Context;
use broker::bulk::BulkClient;
use broker::protocol::{Secret, Task};
use broker::trust::{Credentials, Identity, PoolKey};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, ConnectionProperties};

use super::{burst, one, task, Bench};
use crate::procs::WorkerOpts;
use crate::report::Figure;
use crate::stats::{rate, Latency};

const SCRIPT: &str = r#"echo hi; echo "t=$TOKEN" >> "$KRILL_SENSITIVE_OUTPUT""#;

fn make() -> Task {
    let mut t = task(SCRIPT);
    t.secrets
        .insert("TOKEN".into(), Secret("bench-token-value".into()).into());
    t
}

/// Scenario 6.
pub async fn trust(b: &mut Bench) -> anyhow::Result<()> {
    let n = b.opts.latency_tasks;
    let m = b.opts.tasks;
    println!("== 6. signing + sealing on and off ({n} latency tasks, {m} throughput tasks each)");
    let dir = std::env::temp_dir().join(format!("krill-bench-keys-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let me = Identity::generate("bench")?;
    let pool_key = PoolKey::generate();
    pool_key.save(&dir.join("pool.key"))?;
    std::fs::write(dir.join("trusted-keys"), format!("{}\n", me.public_line()))?;
    let creds = Credentials::new(Some(me.clone()), Some(pool_key.public()));

    // Both workers write their metrics every 200 ms: the claim's share and
    // the run's (claimed → result ready) are read from them.
    let open_metrics = dir.join("open.jsonl");
    let signed_metrics = dir.join("signed.jsonl");
    let metrics_env = |file: &std::path::Path| {
        vec![
            ("KRILL_METRICS_FILE".to_string(), file.display().to_string()),
            (
                "KRILL_METRICS_FILE_INTERVAL".to_string(),
                "200ms".to_string(),
            ),
        ]
    };
    let mut open_opts = WorkerOpts::process(2);
    open_opts.env = metrics_env(&open_metrics);
    let open = b.env.worker(&open_opts).await?;
    let mut signed_opts = WorkerOpts::process(2);
    signed_opts.env = metrics_env(&signed_metrics);
    signed_opts.env.extend(vec![
        ("KRILL_ALLOW_UNSIGNED".into(), "false".into()),
        (
            "KRILL_TRUSTED_KEYS".into(),
            dir.join("trusted-keys").display().to_string(),
        ),
        (
            "KRILL_POOL_KEY".into(),
            dir.join("pool.key").display().to_string(),
        ),
        ("KRILL_REQUIRE_SEALED_SECRETS".into(), "true".into()),
    ]);
    let signed = b.env.worker(&signed_opts).await?;
    let plain_client = BulkClient::connect(&b.env.amqp_url).await?;
    let signed_client = BulkClient::connect(&b.env.amqp_url)
        .await?
        .with_credentials(creds.clone());
    burst(&plain_client, &open.pool, 20, make).await?;
    burst(&signed_client, &signed.pool, 20, make).await?;

    // Latency: one task at a time, alternating pools.
    let before = (settled(&open_metrics).await, settled(&signed_metrics).await);
    let (mut off, mut on) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut failed = 0;
    for _ in 0..n {
        let (d, ok) = one(&plain_client, &open.pool, &make()).await?;
        off.push(d);
        failed += usize::from(!ok);
        let (d, ok) = one(&signed_client, &signed.pool, &make()).await?;
        on.push(d);
        failed += usize::from(!ok);
    }
    let after = (settled(&open_metrics).await, settled(&signed_metrics).await);
    // Series keys as the metrics file writes them: `<name>_sum<labels>`.
    let mean = |a: &serde_json::Value, b: &serde_json::Value, name: &str, labels: &str| {
        let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0);
        let (s, c) = (
            format!("{name}_sum{labels}"),
            format!("{name}_count{labels}"),
        );
        let n = f(b, &c) - f(a, &c);
        (n > 0.0).then(|| 1e3 * (f(b, &s) - f(a, &s)) / n)
    };
    let run = "krill_task_run_seconds";
    let process = "{sandbox=\"process\"}";
    let claim_in_worker = mean(&before.1, &after.1, "krill_claim_seconds", "");
    let run_off = mean(&before.0, &after.0, run, process);
    let run_on = mean(&before.1, &after.1, run, process);
    // Throughput: off, on, off, on; the best of each. The workers' own CPU
    // time per task (not their sandboxes'): what the trust checks cost the
    // worker, whatever the machine's load.
    let (mut best_off, mut best_on) = (0.0f64, 0.0f64);
    let (mut cpu_off, mut cpu_on) = (0.0f64, 0.0f64);
    for _ in 0..2 {
        let c0 = cpu_ms(open.pid());
        let (took, _, f) = burst(&plain_client, &open.pool, m, make).await?;
        cpu_off += cpu_ms(open.pid()) - c0;
        failed += f;
        best_off = best_off.max(rate(m, took));
        let c0 = cpu_ms(signed.pid());
        let (took, _, f) = burst(&signed_client, &signed.pool, m, make).await?;
        cpu_on += cpu_ms(signed.pid()) - c0;
        failed += f;
        best_on = best_on.max(rate(m, took));
    }
    let (cpu_off, cpu_on) = (cpu_off / (2 * m) as f64, cpu_on / (2 * m) as f64);
    plain_client.close().await;
    signed_client.close().await;
    open.stop().await;
    signed.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    if failed > 0 {
        b.report
            .note(format!("trust: {failed} tasks did not succeed"));
    }

    let crypto = crypto_cost(&me, &pool_key, n.max(200));
    let claim = match claim_round_trips(&b.env.amqp_url, n.max(200)).await {
        Ok(s) => Some(Latency::of(&s)),
        Err(e) => {
            b.report.note(format!("claims-stream round trip: {e:#}"));
            None
        }
    };
    // The same on a stream declared and read as a worker's claims stream.
    if let Ok(s) = round_trips(&b.env.amqp_url, n.max(200), true).await {
        b.report.row(
            "6",
            "claims-stream round trip, the worker's stream arguments and timestamp offset: p50",
            Some(Figure::ms(Latency::of(&s).p50_ms)),
            "",
            None,
        );
    }
    let (off, on) = (Latency::of(&off), Latency::of(&on));
    b.report.row(
        "6",
        "p50 submit → result, signed + sealed + claimed",
        Some(Figure::ms(on.p50_ms)),
        "unsigned, plain secret (same run, interleaved)",
        Some(Figure::ms(off.p50_ms)),
    );
    b.report.row(
        "6",
        "p99 submit → result, signed + sealed + claimed",
        Some(Figure::ms(on.p99_ms)),
        "unsigned, plain secret",
        Some(Figure::ms(off.p99_ms)),
    );
    b.report.row(
        "6",
        &format!("`{SCRIPT}` ×{m}, 2 slots, signed: tasks/s"),
        Some(Figure::per_sec(best_on)),
        "unsigned",
        Some(Figure::per_sec(best_off)),
    );
    b.report.row(
        "6",
        "the claim inside the worker (publish → read back), latency series: mean",
        claim_in_worker.map(Figure::ms),
        "",
        None,
    );
    b.report.row(
        "6",
        "claimed → result ready inside the worker, signed: mean",
        run_on.map(Figure::ms),
        "unsigned",
        run_off.map(Figure::ms),
    );
    b.report.row(
        "6",
        "worker CPU per task (its own threads, not the sandbox), signed",
        Some(Figure::ms(cpu_on)),
        "unsigned",
        Some(Figure::ms(cpu_off)),
    );
    b.report.row(
        "6",
        "crypto per task in process (seal + sign, verify + open, seal the output): p50",
        Some(Figure::ms(crypto.p50_ms)),
        "",
        None,
    );
    b.report.row(
        "6",
        "claims-stream round trip (publish to a stream, read it back): p50",
        claim.map(|c| Figure::ms(c.p50_ms)),
        "",
        None,
    );
    let diff = on.p50_ms - off.p50_ms;
    b.report.goal(
        "signing + sealing cost < 0.3 ms at p50",
        Some(diff < 0.3),
        format!(
            "p50 {:.2} ms signed vs {:.2} ms unsigned: +{diff:.2} ms (crypto {:.3} ms, claim round trip {})",
            on.p50_ms,
            off.p50_ms,
            crypto.p50_ms,
            claim.map_or("not measured".into(), |c| format!("{:.2} ms", c.p50_ms))
        ),
    );
    b.report.note(format!(
        "scenario 6: the worker spends {:.3} ms more CPU per signed task ({cpu_on:.3} vs \
         {cpu_off:.3} ms); on a loaded machine CPU time turns into more wall time",
        cpu_on - cpu_off
    ));
    b.report.goal(
        "signed throughput within 5 % of unsigned",
        Some(best_on >= 0.95 * best_off),
        format!(
            "{} signed vs {} unsigned ({:+.1} %)",
            Figure::per_sec(best_on),
            Figure::per_sec(best_off),
            100.0 * (best_on - best_off) / best_off.max(1e-9)
        ),
    );
    Ok(())
}

/// The last line of a worker's metrics file, once a new one has been written
/// after this call (so it includes everything finished before it).
async fn settled(file: &std::path::Path) -> serde_json::Value {
    let last = |f: &std::path::Path| {
        std::fs::read_to_string(f)
            .ok()
            .and_then(|t| t.lines().last().map(str::to_string))
            .unwrap_or_default()
    };
    let first = last(file);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = last(file);
        if now != first && !now.is_empty() {
            return serde_json::from_str(&now).unwrap_or_default();
        }
    }
    serde_json::from_str(&first).unwrap_or_default()
}

/// User + system CPU time of `pid`'s threads so far, ms (`/proc/<pid>/stat`
/// fields 14 and 15, in USER_HZ = 100 ticks per second).
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: count fields after its closing `)`.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // After `)`: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 * 10.0
}

/// The trust work of one task without the broker: the client seals and signs,
/// the worker verifies and opens, then seals the sensitive output.
fn crypto_cost(me: &Identity, pool: &PoolKey, n: usize) -> Latency {
    use broker::trust::seal::{open_task_secrets, seal_result_outputs};
    use broker::trust::sign::task_message;
    let creds = Credentials::new(Some(me.clone()), Some(pool.public()));
    let keys = [pool.clone()];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = make();
        let t0 = Instant::now();
        let Ok((body, headers)) = creds.prepare_task("p", "krill.reply.x", &t) else {
            continue;
        };
        let Ok(Some(sig)) = broker::trust::Signed::take(Some(&headers)) else {
            continue;
        };
        let ok = task_message(&sig.key, "p", "krill.reply.x", sig.not_after, &body)
            .is_ok_and(|m| sig.verify(&m).is_ok());
        let mut back: Task = match serde_json::from_slice(&body) {
            Ok(t) => t,
            Err(_) => continue,
        };
        let opened = open_task_secrets(&mut back, &keys, Some(&sig.key)).is_ok();
        let mut r =
            broker::protocol::TaskResult::new(back.id.clone(), broker::protocol::Status::Succeeded);
        r.outputs.push(broker::protocol::OutputVar {
            name: "t".into(),
            value: "bench-token-value".into(),
            sensitive: true,
            sealed: None,
        });
        let sealed = seal_result_outputs(&mut r, &me.reply_public()).is_ok();
        if ok && opened && sealed {
            samples.push(t0.elapsed());
        }
    }
    Latency::of(&samples)
}

/// Publish one message to a stream and wait to read it back, `n` times: what a
/// worker does to claim a signed task.
async fn claim_round_trips(url: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    round_trips(url, n, false).await
}

/// [`claim_round_trips`] on a stream declared and read exactly as a worker's
/// claims stream (`topology::claims_stream_arguments`, read from a timestamp)
/// when `as_worker`, else a default stream read from `next`.
async fn round_trips(url: &str, n: usize, as_worker: bool) -> anyhow::Result<Vec<Duration>> {
    let stream = format!("krill.bench.claims.{}", uuid::Uuid::new_v4().simple());
    let conn = broker::amqp::connect_first(url, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    let ch = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("stream")),
    );
    if as_worker {
        args = broker::topology::claims_stream_arguments();
    }
    ch.queue_declare(
        ShortString::from(stream.as_str()),
        QueueDeclareOptions::durable(),
        args,
    )
    .await?;
    let read = conn.create_channel().await?;
    read.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut offset = FieldTable::default();
    offset.insert(
        ShortString::from("x-stream-offset"),
        if as_worker {
            AMQPValue::Timestamp(broker::trust::now_unix().saturating_sub(3600))
        } else {
            AMQPValue::LongString(LongString::from("next"))
        },
    );
    let mut consumer = read
        .basic_consume(
            ShortString::from(stream.as_str()),
            ShortString::from("bench-claims"),
            BasicConsumeOptions::default(),
            offset,
        )
        .await?;
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let body = format!("claim-{i}");
        let t0 = Instant::now();
        let _confirm = publish
            .basic_publish(
                ShortString::from(""),
                ShortString::from(stream.as_str()),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await?;
        loop {
            let d = consumer.next().await.context("stream consumer ended")??;
            d.acker.ack(BasicAckOptions::default()).await?;
            if d.data == body.as_bytes() {
                break;
            }
        }
        samples.push(t0.elapsed());
    }
    let _ = ch
        .queue_delete(
            ShortString::from(stream.as_str()),
            QueueDeleteOptions::default(),
        )
        .await;
    let _ = conn.close(200, ShortString::from("bye")).await;
    Ok(samples)
}
