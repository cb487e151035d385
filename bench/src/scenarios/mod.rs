//! Scenarios 1-5 of issue 8, 6 of issue 13 (signing and sealing), 7 of issue 16 (the gateway) 8 and 9 of issue 19 (the curve, the tail). Each measures Krill and its alternative in the
//! same run and adds rows and goals to the report.

mod cluster;
mod containers;
mod curve;
mod gateway;
mod gw_phases;
mod output;
mod process;
mod tail;
mod trust;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use broker::bulk::BulkClient;
use broker::protocol::{Status, Task};
use tokio::task::JoinSet;

use crate::celery::Celery;
use crate::procs::Env;
use crate::report::Report;

pub use cluster::cluster;
pub use containers::containers;
pub use curve::curve;
pub use gateway::gateway;
pub use output::{memory, output};
pub use process::{latency, throughput};
pub use tail::tail;
pub use trust::trust;

/// Sizes and switches of a run.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Tasks per throughput series (scenario 1).
    pub tasks: usize,
    /// Tasks per latency series (scenarios 2 and 9).
    pub latency_tasks: usize,
    /// Tasks per point of the curve (scenario 8).
    pub curve_tasks: usize,
    /// Tasks per container series (scenario 3).
    pub container_tasks: usize,
    /// Pre-start sizes to measure in scenario 3 (0 = a fresh container per task).
    pub prestart: Vec<u32>,
    /// Appended to scenario 3's labels (e.g. the Docker runtime in use).
    pub tag: String,
    /// OCI runtime of scenario 3's containers (`None`: the engine's default).
    pub runtime: Option<String>,
    /// MiB written by the output task (scenario 4).
    pub output_mib: u64,
    /// Secrets registered on the output task.
    pub secrets: usize,
    /// Whether Docker is in use this run (scenario 3, container rows of 5).
    pub containers: bool,
    /// Where the results go (scenario 8 writes its table and chart there).
    pub out: PathBuf,
    /// Where `perf` profiles go (`None`: no profiling).
    pub profile_dir: Option<PathBuf>,
}

/// What every scenario needs.
#[derive(Debug)]
pub struct Bench {
    pub env: Env,
    pub celery: Option<Celery>,
    pub opts: Opts,
    pub report: Report,
}

/// A task with a fresh UUID v7 id.
pub fn task(script: &str) -> Task {
    Task::new(uuid::Uuid::now_v7().to_string(), script)
}

/// Submits `n` copies of `make()` as fast as the client can and waits for every
/// result: (first submit → last result, tasks that did not succeed).
pub async fn burst(
    client: &BulkClient,
    pool: &str,
    n: usize,
    make: impl Fn() -> Task,
) -> anyhow::Result<(Duration, Vec<Duration>, usize)> {
    let done = burst_ids(client, pool, n, make).await?;
    Ok((done.took, done.latencies, done.failed))
}

/// What [`burst_ids`] measured.
#[derive(Debug, Default)]
pub struct Done {
    /// First submit → last result.
    pub took: Duration,
    /// Each task's submit → result.
    pub latencies: Vec<Duration>,
    /// Tasks that did not succeed.
    pub failed: usize,
    /// The sandboxes (container ids) that ran them.
    pub sandboxes: Vec<String>,
}

/// [`burst`], also telling which sandboxes ran the tasks.
pub async fn burst_ids(
    client: &BulkClient,
    pool: &str,
    n: usize,
    make: impl Fn() -> Task,
) -> anyhow::Result<Done> {
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..n {
        let submitted = Instant::now();
        let ticket = client.submit(pool, &make()).await?;
        set.spawn(async move {
            let r = ticket.result(Some(Duration::from_secs(900))).await;
            (r, submitted.elapsed())
        });
    }
    let mut failed = 0;
    let mut lat = Vec::with_capacity(n);
    let mut sandboxes = Vec::with_capacity(n);
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((Ok(r), d)) => {
                lat.push(d);
                sandboxes.extend(r.sandbox_id.clone());
                if r.status != Status::Succeeded {
                    failed += 1;
                    if failed <= 3 {
                        eprintln!(
                            "task {} ended {}: {}",
                            r.id,
                            r.status,
                            r.error.as_deref().unwrap_or("")
                        );
                    }
                }
            }
            Ok((Err(e), _)) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("task failed: {e}");
                }
            }
            Err(_) => failed += 1,
        }
    }
    Ok(Done {
        took: t0.elapsed(),
        latencies: lat,
        failed,
        sandboxes,
    })
}

/// One task at a time: its submit → result time, and whether it succeeded.
pub async fn one(client: &BulkClient, pool: &str, t: &Task) -> anyhow::Result<(Duration, bool)> {
    let (d, ok, _) = one_id(client, pool, t).await?;
    Ok((d, ok))
}

/// [`one`], also telling which sandbox ran it.
pub async fn one_id(
    client: &BulkClient,
    pool: &str,
    t: &Task,
) -> anyhow::Result<(Duration, bool, Option<String>)> {
    let t0 = Instant::now();
    let ticket = client.submit(pool, t).await?;
    let r = ticket.result(Some(Duration::from_secs(300))).await?;
    Ok((t0.elapsed(), r.status == Status::Succeeded, r.sandbox_id))
}
