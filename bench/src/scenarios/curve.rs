//! Scenario 8 (issue 19): the curve — throughput and p50 of `true` over slots
//! (one worker) and over workers (2 slots each), each point beside the
//! fresh-namespace spawn floor at the same parallelism, as a table and a chart.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use broker::bulk::BulkClient;
use broker::protocol::Status;

use super::{burst, task, Bench};
use crate::alt::{self, Spawn};
use crate::chart::{self, Series};
use crate::procs::{Worker, WorkerOpts};
use crate::report::Figure;
use crate::stats::{rate, Latency};

/// Slots of the one-worker series.
pub const SLOTS: [u32; 5] = [1, 2, 4, 8, 16];
/// Workers of the multi-worker series.
pub const WORKERS: [u32; 3] = [1, 2, 3];
/// Slots of each worker in the multi-worker series: the 2 cores' worth, so that
/// 1 worker is the usual 2-slot point and each added worker adds the same work.
pub const SLOTS_PER_WORKER: u32 = 2;
/// The command of every task: what the sandbox costs with nothing to run.
const CMD: &str = "true";

/// One point of the curve.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Point {
    pub workers: u32,
    pub slots: u32,
    /// Tasks/s of a burst (all submitted at once, first submit → last result).
    pub rate: f64,
    /// Submit → result with `workers × slots` tasks in flight (closed loop).
    pub latency: Latency,
    /// `unshare` spawns/s with `workers × slots` spawners.
    pub floor_rate: f64,
    /// One spawn's duration with that many spawners at once.
    pub floor: Latency,
    /// Tasks of the point that did not succeed.
    pub failed: usize,
}

impl Point {
    pub fn parallelism(&self) -> u32 {
        self.workers * self.slots
    }
}

/// Scenario 8: every point of [`SLOTS`] and [`WORKERS`]; writes `curve.md` and
/// `curve.svg` beside the report and adds a row per point.
pub async fn curve(b: &mut Bench) -> anyhow::Result<()> {
    let n = b.opts.curve_tasks;
    let m = (n / 2).max(1);
    println!(
        "== 8. the curve: `{CMD}`, burst of {n} per point, p50 from {m} tasks in a closed loop"
    );
    let mut by_slots = Vec::new();
    for slots in SLOTS {
        by_slots.push(point(b, 1, slots, n, m).await?);
    }
    let mut by_workers = Vec::new();
    for workers in WORKERS {
        by_workers.push(point(b, workers, SLOTS_PER_WORKER, n, m).await?);
    }
    for p in by_slots.iter().chain(&by_workers) {
        let shape = format!("{} worker(s) × {} slots", p.workers, p.slots);
        let c = p.parallelism();
        b.report.row(
            "8",
            &format!("`{CMD}` ×{n}, {shape}: tasks/s"),
            Some(Figure::per_sec(p.rate)),
            &format!("spawn in fresh namespaces, {c} spawners"),
            Some(Figure::per_sec(p.floor_rate)),
        );
        b.report.row(
            "8",
            &format!("p50 submit → result, {shape}, {c} in flight"),
            Some(Figure::ms(p.latency.p50_ms)),
            &format!("one spawn in fresh namespaces, {c} at once"),
            Some(Figure::ms(p.floor.p50_ms)),
        );
        if p.failed > 0 {
            b.report.note(format!(
                "Krill: {} tasks of the point {shape} did not succeed",
                p.failed
            ));
        }
    }
    let md = table(&by_slots, &by_workers, n, m);
    std::fs::write(b.opts.out.join("curve.md"), &md)?;
    let svg = b.opts.out.join("curve.svg");
    chart::curve(&svg, &series(&by_slots, &by_workers))?;
    std::fs::write(
        b.opts.out.join("curve.json"),
        serde_json::to_vec_pretty(&serde_json::json!({
            "slots": by_slots, "workers": by_workers, "burst": n, "closed_loop": m,
        }))?,
    )?;
    b.report.note(format!(
        "scenario 8: table {}, chart {}",
        b.opts.out.join("curve.md").display(),
        svg.display()
    ));
    Ok(())
}

/// Starts `workers` workers of `slots` slots on one pool and measures them and
/// the floor at their parallelism.
async fn point(b: &Bench, workers: u32, slots: u32, n: usize, m: usize) -> anyhow::Result<Point> {
    let c = (workers * slots) as usize;
    let (floor_took, floor_each) = alt::spawn_floor(Spawn::Namespaced, CMD, n, c).await;
    let mut ws: Vec<Worker> = Vec::new();
    let mut pool = None;
    for _ in 0..workers {
        let mut o = WorkerOpts::process(slots);
        o.pool.clone_from(&pool);
        match b.env.worker(&o).await {
            Ok(w) => {
                pool.get_or_insert_with(|| w.pool.clone());
                ws.push(w);
            }
            Err(e) => {
                for w in ws {
                    w.stop().await;
                }
                return Err(e);
            }
        }
    }
    let pool = pool.unwrap_or_default();
    let measured = async {
        let client = BulkClient::connect(&b.env.amqp_url).await?;
        burst(&client, &pool, 20 * c, || task(CMD)).await?;
        let (took, _, burst_failed) = burst(&client, &pool, n, || task(CMD)).await?;
        let (lat, loop_failed) = closed_loop(&client, &pool, m, c).await?;
        client.close().await;
        anyhow::Ok((took, lat, burst_failed + loop_failed))
    }
    .await;
    for w in ws {
        w.stop().await;
    }
    let (took, lat, failed) = measured?;
    let p = Point {
        workers,
        slots,
        rate: rate(n, took),
        latency: Latency::of(&lat),
        floor_rate: rate(n, floor_took),
        floor: Latency::of(&floor_each),
        failed,
    };
    println!(
        "  {workers} × {slots}: {:.0}/s (floor {:.0}/s), p50 {:.2} ms (floor {:.2} ms)",
        p.rate, p.floor_rate, p.latency.p50_ms, p.floor.p50_ms
    );
    Ok(p)
}

/// `m` tasks, `c` in flight at any time: each one's submit → result, and how
/// many did not succeed.
async fn closed_loop(
    client: &BulkClient,
    pool: &str,
    m: usize,
    c: usize,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let started = AtomicUsize::new(0);
    let lanes = (0..c).map(|_| async {
        let mut lat = Vec::new();
        let mut failed = 0;
        while started.fetch_add(1, Ordering::Relaxed) < m {
            let t0 = Instant::now();
            let r = client
                .submit(pool, &task(CMD))
                .await?
                .result(Some(Duration::from_secs(300)))
                .await?;
            lat.push(t0.elapsed());
            failed += usize::from(r.status != Status::Succeeded);
        }
        anyhow::Ok((lat, failed))
    });
    let mut all = Vec::with_capacity(m);
    let mut failed = 0;
    for lane in futures_util::future::join_all(lanes).await {
        let (lat, f) = lane?;
        all.extend(lat);
        failed += f;
    }
    Ok((all, failed))
}

fn series(by_slots: &[Point], by_workers: &[Point]) -> Vec<Series> {
    let xy = |ps: &[Point], f: fn(&Point) -> f64| -> Vec<(f64, f64)> {
        ps.iter()
            .map(|p| (f64::from(p.parallelism()), f(p)))
            .collect()
    };
    let mut floor: Vec<&Point> = by_slots.iter().chain(by_workers).collect();
    floor.sort_by_key(|p| p.parallelism());
    floor.dedup_by_key(|p| p.parallelism());
    let floor: Vec<Point> = floor.into_iter().copied().collect();
    vec![
        Series::rate("1 worker, N slots", xy(by_slots, |p| p.rate)),
        Series::rate(
            &format!("N/{SLOTS_PER_WORKER} workers × {SLOTS_PER_WORKER} slots"),
            xy(by_workers, |p| p.rate),
        ),
        Series::rate(
            "floor: unshare spawn, N spawners",
            xy(&floor, |p| p.floor_rate),
        ),
        Series::p50("1 worker, N slots", xy(by_slots, |p| p.latency.p50_ms)),
        Series::p50(
            &format!("N/{SLOTS_PER_WORKER} workers × {SLOTS_PER_WORKER} slots"),
            xy(by_workers, |p| p.latency.p50_ms),
        ),
        Series::p50(
            "floor: unshare spawn, N at once",
            xy(&floor, |p| p.floor.p50_ms),
        ),
    ]
}

/// The curve as markdown.
pub fn table(by_slots: &[Point], by_workers: &[Point], n: usize, m: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "`{CMD}` process tasks. Throughput: a burst of {n} (all submitted at once, first submit → last result). \
         p50/p99: {m} tasks with N = workers × slots in flight (closed loop). Floor: `unshare --mount --pid --ipc --uts --net --fork sh -c {CMD}` \
         by N threads, {n} spawns, measured just before the point.\n"
    );
    s.push_str("| workers × slots | N | Krill tasks/s | floor spawns/s | ratio | Krill p50 | floor p50 | Krill p99 | floor p99 |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for p in by_slots.iter().chain(by_workers) {
        let _ = writeln!(
            s,
            "| {} × {} | {} | {} | {} | {:.2}× | {} | {} | {} | {} |",
            p.workers,
            p.slots,
            p.parallelism(),
            Figure::per_sec(p.rate),
            Figure::per_sec(p.floor_rate),
            p.rate / p.floor_rate.max(1e-9),
            Figure::ms(p.latency.p50_ms),
            Figure::ms(p.floor.p50_ms),
            Figure::ms(p.latency.p99_ms),
            Figure::ms(p.floor.p99_ms),
        );
    }
    s
}
