//! Scenario 10 (issue 18): scenarios 1 and 2 on the three-node cluster of
//! `scripts/cluster` beside the single node, in the same run, alternating
//! (single, cluster, single, cluster, … `rounds` times) so both see the same
//! load. On the cluster the bulk client's reply queue is measured both ways:
//! exclusive (on the client's node, lost with it) and replicated (a quorum
//! queue, what a client given the cluster's URL list uses, and fails over
//! with); the CLI's path (a quorum reply queue per task) on both.

use std::time::{Duration, Instant};

use broker::bulk::{BulkClient, Replies, DEFAULT_WINDOW};
use broker::client::Client;

use super::{burst, one, task, Bench};
use crate::procs::WorkerOpts;
use crate::report::Figure;
use crate::stats::{rate, Latency};

/// One broker set-up measured: which URL list, which bulk reply queue.
struct Target<'a> {
    name: &'static str,
    url: &'a str,
    replies: Replies,
}

/// What one round measured on one target.
#[derive(Default, Clone)]
struct Measured {
    rate: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    cli_p50: Vec<f64>,
}

/// Scenario 10: `true` ×`tasks` on 2 slots (throughput) and `echo hi` one at
/// a time ×`latency_tasks` (p50, p99), per target, `rounds` rounds.
pub async fn cluster(b: &mut Bench, cluster_url: &str, rounds: usize) -> anyhow::Result<()> {
    let n = b.opts.tasks;
    let m = b.opts.latency_tasks;
    println!("== 10. scenarios 1 and 2 on a three-node cluster beside one node ({rounds} rounds, {n} + {m} tasks each)");
    let single = b.env.amqp_url.clone();
    let targets = [
        Target {
            name: "single node",
            url: &single,
            replies: Replies::Exclusive,
        },
        Target {
            name: "3-node cluster, exclusive bulk reply queue",
            url: cluster_url,
            replies: Replies::Exclusive,
        },
        Target {
            name: "3-node cluster, replicated bulk reply queue (the default with a URL list)",
            url: cluster_url,
            replies: Replies::Replicated,
        },
    ];
    let mut got = vec![Measured::default(); targets.len()];
    for round in 0..rounds {
        for (i, t) in targets.iter().enumerate() {
            let m1 = measure(b, t, n, m).await?;
            println!(
                "   round {round} {}: {:.0} tasks/s, p50 {:.2} ms, p99 {:.2} ms, CLI p50 {:.2} ms",
                t.name, m1.rate[0], m1.p50[0], m1.p99[0], m1.cli_p50[0]
            );
            let g = &mut got[i];
            g.rate.extend(m1.rate);
            g.p50.extend(m1.p50);
            g.p99.extend(m1.p99);
            g.cli_p50.extend(m1.cli_p50);
        }
    }
    let range = |v: &[f64], unit: &str| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{lo:.1}–{hi:.1} {unit}")
    };
    let mid = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let base = got[0].clone();
    for (t, g) in targets.iter().zip(&got).skip(1) {
        b.report.row(
            "10",
            &format!(
                "`true` ×{n}, 2 slots, {}: tasks/s (mean of {rounds})",
                t.name
            ),
            Some(Figure::per_sec(mid(&g.rate))),
            "single node, same run",
            Some(Figure::per_sec(mid(&base.rate))),
        );
        b.report.row(
            "10",
            &format!("p50 `echo hi` submit → result, {}", t.name),
            Some(Figure::ms(mid(&g.p50))),
            "single node, same run",
            Some(Figure::ms(mid(&base.p50))),
        );
        b.report.row(
            "10",
            &format!("p99 `echo hi` submit → result, {}", t.name),
            Some(Figure::ms(mid(&g.p99))),
            "single node, same run",
            Some(Figure::ms(mid(&base.p99))),
        );
    }
    b.report.row(
        "10",
        "p50, CLI path (quorum reply queue per task), 3-node cluster",
        Some(Figure::ms(mid(&got[1].cli_p50))),
        "single node, same run",
        Some(Figure::ms(mid(&base.cli_p50))),
    );
    for (t, g) in targets.iter().zip(&got) {
        b.report.note(format!(
            "scenario 10, {}: throughput {}, p50 {}, p99 {}, CLI p50 {} (ranges over {rounds} rounds)",
            t.name,
            range(&g.rate, "tasks/s"),
            range(&g.p50, "ms"),
            range(&g.p99, "ms"),
            range(&g.cli_p50, "ms"),
        ));
    }
    Ok(())
}

/// One round on one target: a worker of 2 slots given its URL list.
async fn measure(b: &mut Bench, t: &Target<'_>, n: usize, m: usize) -> anyhow::Result<Measured> {
    let mut env = b.env.clone();
    env.amqp_url = t.url.to_string();
    let w = env.worker(&WorkerOpts::process(2)).await?;
    let client = BulkClient::connect_with(t.url, DEFAULT_WINDOW, t.replies).await?;
    burst(&client, &w.pool, 20, || task("true")).await?;
    let (took, _, failed) = burst(&client, &w.pool, n, || task("true")).await?;
    if failed > 0 {
        b.report.note(format!(
            "scenario 10, {}: {failed} of {n} tasks did not succeed",
            t.name
        ));
    }
    let mut samples = Vec::with_capacity(m);
    for _ in 0..m {
        samples.push(one(&client, &w.pool, &task("echo hi")).await?.0);
    }
    client.close().await;
    let lat = Latency::of(&samples);
    let c = Client::connect(t.url).await?;
    let mut cli = Vec::new();
    for _ in 0..(m / 4).max(10) {
        let tk = task("echo hi");
        let t0 = Instant::now();
        c.submit(&w.pool, &tk).await?;
        c.wait(&tk.id, Some(Duration::from_secs(60))).await?;
        cli.push(t0.elapsed());
    }
    c.close().await;
    w.stop().await;
    Ok(Measured {
        rate: vec![rate(n, took)],
        p50: vec![lat.p50_ms],
        p99: vec![lat.p99_ms],
        cli_p50: vec![Latency::of(&cli).p50_ms],
    })
}
