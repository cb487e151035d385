//! Chaos: several workers, a few thousand short tasks (half may be retried after a
//! worker loss, half may not), workers SIGKILLed at random and restarted, RabbitMQ
//! restarted once mid-run. At the end it prints what became of every task and
//! fails if one was lost, if a task that does not allow it ran twice, or if
//! anything was left over (processes, work dirs, cgroups, containers).
//!
//! Slow (minutes) and it restarts the broker: `#[ignore]`d, run it with
//! `scripts/chaos` (which builds first). Tunables, all optional:
//!
//! | env | default | |
//! |---|---|---|
//! | `KRILL_CHAOS_TASKS` | 2000 | tasks submitted |
//! | `KRILL_CHAOS_WORKERS` | 3 | worker processes |
//! | `KRILL_CHAOS_CONCURRENCY` | 4 | slots per worker |
//! | `KRILL_CHAOS_KILL_EVERY_MS` | 3000 | mean time between two SIGKILLs (uniform in ½…1½ of it) |
//! | `KRILL_CHAOS_BROKER_RESTART` | 1 | restart RabbitMQ once (0: never) |
//! | `KRILL_CHAOS_CONTAINER_SHARE` | 0 | percentage of tasks run in containers (needs Docker and the images) |
//! | `KRILL_CHAOS_DEADLINE_SECS` | 900 | the run stops chaos and reports after this long, whatever state it is in |
//! | `KRILL_CHAOS_SEED` | time | seed of the random choices (printed, to replay a run) |
//! | `KRILL_CHAOS_CLUSTER` | 0 | 1: on the three-node cluster of `scripts/cluster` (`KRILL_AMQP_URL` its URLs; `scripts/chaos --cluster` sets both): instead of the restart, one node is SIGKILLed at a third of the tasks and started again, then another at two thirds |
//!
//! How it counts, and the limits of it:
//! - results: every message on every task's reply queue (`krill.reply.<id>`),
//!   read with `basic.get` and kept until the end, so duplicates are seen (the real
//!   client keeps the first and deletes the queue). A copy the broker redelivers to
//!   this reader (an ack lost in the restart) is not counted twice.
//! - runs: `task.<pool>.started` events, caught by a durable queue bound before
//!   anything is submitted. A worker publishes events without confirms and drops
//!   them while it has no connection, and a worker SIGKILLed just after starting a
//!   script may never have sent its event: the run count is a lower bound. The
//!   `attempt` of a result counts deliveries, not runs.

mod rabbitmq;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::protocol::{SandboxKind, Status, Task, TaskResult};
use broker::topology;
use krill_tests::{amqp_url, client, cluster, unique_pool, WorkerBuilder, WorkerProc};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone)]
struct Settings {
    tasks: usize,
    workers: usize,
    concurrency: u32,
    kill_every: Duration,
    broker_restart: bool,
    container_share: u64,
    deadline: Duration,
    seed: u64,
    cluster: bool,
}

impl Settings {
    fn from_env() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Settings {
            tasks: env_or("KRILL_CHAOS_TASKS", 2000),
            workers: env_or("KRILL_CHAOS_WORKERS", 3),
            concurrency: env_or("KRILL_CHAOS_CONCURRENCY", 4),
            kill_every: Duration::from_millis(env_or("KRILL_CHAOS_KILL_EVERY_MS", 3000)),
            broker_restart: env_or("KRILL_CHAOS_BROKER_RESTART", 1) != 0,
            cluster: env_or("KRILL_CHAOS_CLUSTER", 0) != 0,
            container_share: env_or("KRILL_CHAOS_CONTAINER_SHARE", 0),
            deadline: Duration::from_secs(env_or("KRILL_CHAOS_DEADLINE_SECS", 900)),
            seed: env_or("KRILL_CHAOS_SEED", now) | 1,
        }
    }
}

/// xorshift64*: enough randomness for choosing victims, and replayable.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The tasks: every other one may be retried after a worker loss; a quarter sleep.
fn make_tasks(s: &Settings, rng: &mut Rng) -> Vec<Task> {
    (0..s.tasks)
        .map(|i| {
            let script = match i % 4 {
                0 => "true".to_string(),
                1 => format!("echo chaos-{i}"),
                2 => "sleep 0.2; echo slept".to_string(),
                _ => format!("echo out-{i}; echo err-{i} >&2"),
            };
            let mut t = Task::new(krill_tests::new_id(), script);
            t.retry_on_worker_loss = i % 2 == 0;
            if rng.below(100) < s.container_share {
                t.sandbox = Some(SandboxKind::Container);
                t.image = Some("krill/base:1".into());
            }
            t
        })
        .collect()
}

async fn connect() -> Option<(Connection, Channel)> {
    let conn = broker::amqp::connect_any(&amqp_url(), 0, ConnectionProperties::default())
        .await
        .ok()?
        .conn;
    let ch = conn.create_channel().await.ok()?;
    Some((conn, ch))
}

/// Every result seen on the reply queues, per task id (raw bodies, in order).
#[derive(Debug, Default)]
struct Results {
    seen: HashMap<String, Vec<Vec<u8>>>,
}

impl Results {
    /// Reads every message now on the reply queues of `ids`. Err: the connection
    /// broke (the broker restarting); call again with a fresh one.
    async fn read(&mut self, ch: &Channel, ids: &[String]) -> Result<(), lapin::Error> {
        for id in ids {
            let q = topology::reply_queue(id);
            while let Some(m) = ch
                .basic_get(
                    ShortString::from(q.as_str()),
                    BasicGetOptions { no_ack: false },
                )
                .await?
            {
                let d = m.delivery;
                let copies = self.seen.entry(id.clone()).or_default();
                // A redelivery of what this reader already took (its ack went down
                // with the broker) is not a second result.
                if !(d.redelivered && copies.contains(&d.data)) {
                    copies.push(d.data.clone());
                }
                d.acker.ack(BasicAckOptions::default()).await?;
            }
        }
        Ok(())
    }

    fn answered(&self, id: &str) -> bool {
        self.seen.get(id).is_some_and(|v| !v.is_empty())
    }

    fn all(&self, id: &str) -> Vec<TaskResult> {
        self.seen
            .get(id)
            .map(|v| {
                v.iter()
                    .filter_map(|b| serde_json::from_slice(b).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn first(&self, id: &str) -> Option<TaskResult> {
        serde_json::from_slice(self.seen.get(id)?.first()?).ok()
    }
}

/// Polls the reply queues of unanswered tasks until all are answered or `until`.
/// Each round reads the queues of tasks with a `finished` event; every tenth
/// round reads all unanswered ones (events can be lost).
async fn collect(
    results: &mut Results,
    ids: &[String],
    until: Instant,
    progress: &AtomicUsize,
    log: &EventLog,
) {
    let mut link: Option<(Connection, Channel)> = None;
    for round in 0u64.. {
        let finished = lock(&log.finished).clone();
        let pending: Vec<String> = ids
            .iter()
            .filter(|id| !results.answered(id))
            .filter(|id| round % 10 == 0 || finished.contains(*id))
            .cloned()
            .collect();
        let unanswered = ids.iter().filter(|id| !results.answered(id)).count();
        progress.store(ids.len() - unanswered, Ordering::Relaxed);
        if unanswered == 0 || Instant::now() > until {
            return;
        }
        if link.is_none() {
            link = connect().await;
        }
        if let Some((_, ch)) = &link {
            if results.read(ch, &pending).await.is_err() {
                link = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Messages (ready + unacked) in a queue, from `rabbitmqctl list_queues` (or
/// the cluster's management API: its nodes have an Erlang cookie of their own).
async fn queue_messages(queue: &str) -> Option<u64> {
    if cluster_mode() {
        let mgmt = tokio::task::block_in_place(|| cluster(&["management-urls"]));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .ok()?;
        for url in mgmt.trim().split(',') {
            let answer = http
                .get(format!("{url}/api/queues/%2F/{queue}?columns=messages"))
                .basic_auth("guest", Some("guest"))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status);
            let Ok(answer) = answer else { continue };
            let v: serde_json::Value = answer.json().await.unwrap_or_default();
            if let Some(n) = v["messages"].as_u64() {
                return Some(n);
            }
        }
        return None;
    }
    let out =
        tokio::task::block_in_place(|| rabbitmq::ctl(&["-q", "list_queues", "name", "messages"]));
    out.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(queue)).then(|| f.next()?.parse().ok())?
    })
}

fn cluster_mode() -> bool {
    env_or("KRILL_CHAOS_CLUSTER", 0) != 0
}

/// The worker processes and how to start each again.
struct Fleet {
    procs: Vec<(WorkerBuilder, WorkerProc)>,
    kills: usize,
    /// When each worker id was SIGKILLed.
    killed: Vec<(String, chrono::DateTime<chrono::Utc>)>,
}

/// Kills a random worker with SIGKILL and starts it again, every `kill_every` on
/// average, until `stop`. Holds `quiet` while a worker is down, so the broker
/// restart can wait for a whole fleet.
async fn chaos_loop(
    fleet: Arc<Mutex<Fleet>>,
    quiet: Arc<Mutex<()>>,
    stop: Arc<AtomicBool>,
    every: Duration,
    mut rng: Rng,
) {
    let ms = every.as_millis() as u64;
    while !stop.load(Ordering::Relaxed) {
        let wait = Duration::from_millis(ms / 2 + rng.below(ms.max(1)));
        tokio::time::sleep(wait).await;
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let _quiet = quiet.lock().await;
        let mut fleet = fleet.lock().await;
        let n = fleet.procs.len() as u64;
        let i = rng.below(n) as usize;
        let (b, w) = &mut fleet.procs[i];
        let id = w.id.clone();
        w.kill();
        let at = chrono::Utc::now();
        // Down for a moment, like a crashed process before its supervisor restarts it.
        tokio::time::sleep(Duration::from_millis(200 + rng.below(800))).await;
        w.restart(b).await;
        fleet.kills += 1;
        fleet.killed.push((id, at));
    }
}

/// What was left behind by the chaos workers.
#[derive(Debug, Default)]
struct Leftovers {
    processes: Vec<String>,
    work_dirs: Vec<PathBuf>,
    cgroups: Vec<PathBuf>,
    containers: Option<usize>,
}

impl Leftovers {
    fn total(&self) -> usize {
        self.processes.len()
            + self.work_dirs.len()
            + self.cgroups.len()
            + self.containers.unwrap_or(0)
    }
}

/// Processes whose environment names a chaos worker or task, or whose cgroup is a
/// chaos task's (scripts run as the sandbox user in their own pid namespace; from
/// the host they are ordinary pids).
fn leftover_processes(workers: &[String], tasks: &HashSet<String>) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    let me = std::process::id().to_string();
    for e in dir.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let ours = environ.split(|b| *b == 0).any(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.strip_prefix("KRILL_WORKER_ID=")
                .is_some_and(|w| workers.iter().any(|x| x == w))
                || kv
                    .strip_prefix("KRILL_TASK_ID=")
                    .is_some_and(|t| tasks.contains(t))
        });
        let cgroup = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
        let in_ours = workers
            .iter()
            .any(|w| cgroup.contains(&format!("/krill/{w}/")));
        if ours || in_ours {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            found.push(format!("{pid} {}", cmd.trim()));
        }
    }
    found
}

/// Task cgroups (`<hierarchy>/…/krill/<worker>/<task>`) of the chaos workers.
fn leftover_cgroups(workers: &[String]) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, workers: &[String], out: &mut Vec<PathBuf>) {
        if depth == 0 {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if dir.file_name().is_some_and(|d| d == "krill") && workers.contains(&name) {
                if let Ok(tasks) = std::fs::read_dir(&p) {
                    out.extend(
                        tasks
                            .flatten()
                            .filter(|t| t.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|t| t.path()),
                    );
                }
                continue;
            }
            walk(&p, depth - 1, workers, out);
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), 6, workers, &mut out);
    out
}

/// Task work dirs left under the chaos workers' `KRILL_WORK_DIR`s.
fn leftover_work_dirs(fleet: &Fleet) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (_, w) in &fleet.procs {
        let mine = w.work_dir.join(&w.id);
        if let Ok(rd) = std::fs::read_dir(&mine) {
            out.extend(rd.flatten().map(|e| e.path()));
        }
    }
    out
}

/// Containers labelled `krill.managed=true` by a chaos worker (None: no Docker).
fn leftover_containers(workers: &[String]) -> Option<usize> {
    let mut n = 0;
    for w in workers {
        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                "label=krill.managed=true",
                "--filter",
                &format!("label=krill.worker={w}"),
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        n += String::from_utf8_lossy(&out.stdout).lines().count();
    }
    Some(n)
}

/// The run's task events, read live from a durable queue bound before anything
/// is submitted (events are transient: a broker restart drops those still queued,
/// so they are taken off as they come).
#[derive(Debug, Default)]
struct EventLog {
    events: std::sync::Mutex<Vec<serde_json::Value>>,
    finished: std::sync::Mutex<HashSet<String>>,
}

impl EventLog {
    /// Declares and binds the queue (idempotent).
    async fn declare(ch: &Channel, queue: &str, pool: &str) -> Result<(), lapin::Error> {
        topology::declare_common(ch).await?;
        // Quorum: on a cluster a classic queue lives on one node, and events
        // published while that node is down would be dropped, hiding runs.
        let mut args = FieldTable::default();
        args.insert(
            ShortString::from("x-queue-type"),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
        ch.queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions::durable(),
            args,
        )
        .await?;
        ch.queue_bind(
            ShortString::from(queue),
            ShortString::from(topology::EVENTS_EXCHANGE),
            ShortString::from(format!("task.{pool}.*")),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(())
    }

    /// Reads until `stop` is set and the queue has been quiet for a second,
    /// reconnecting whenever the connection breaks.
    async fn run(self: Arc<Self>, queue: String, pool: String, stop: Arc<AtomicBool>) {
        use futures_util::StreamExt;
        loop {
            let Some((_conn, ch)) = connect().await else {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            };
            if Self::declare(&ch, &queue, &pool).await.is_err() {
                continue;
            }
            let Ok(mut consumer) = ch
                .basic_consume(
                    ShortString::from(queue.as_str()),
                    ShortString::from(""),
                    lapin::options::BasicConsumeOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
            else {
                continue;
            };
            loop {
                match tokio::time::timeout(Duration::from_secs(1), consumer.next()).await {
                    Ok(Some(Ok(d))) => self.record(&d.data),
                    Ok(_) => break, // the connection broke: reconnect
                    Err(_) if stop.load(Ordering::Relaxed) => return,
                    Err(_) => {}
                }
            }
        }
    }

    fn record(&self, data: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
            return;
        };
        if v["state"] == "finished" {
            if let Some(id) = v["task_id"].as_str() {
                lock(&self.finished).insert(id.to_string());
            }
        }
        lock(&self.events).push(v);
    }

    fn finished(&self) -> usize {
        lock(&self.finished).len()
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes what the run put on the broker: reply queues, the events queue, the
/// pool queue, and the run's dead letters.
async fn clean_broker(pool: &str, events_queue: &str, ids: &[String]) {
    let Some((conn, ch)) = connect().await else {
        return;
    };
    for q in ids
        .iter()
        .map(|id| topology::reply_queue(id))
        .chain([events_queue.to_string(), topology::pool_queue(pool)])
    {
        let _ = ch
            .queue_delete(ShortString::from(q.as_str()), QueueDeleteOptions::default())
            .await;
    }
    // Dead letters of this pool (delivery limit reached): take them out of
    // krill.dead, put the others back.
    let ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut others = Vec::new();
    while let Ok(Some(m)) = ch
        .basic_get(
            ShortString::from(topology::DEAD_QUEUE),
            BasicGetOptions { no_ack: false },
        )
        .await
    {
        let d = m.delivery;
        let ours = d
            .properties
            .message_id()
            .as_ref()
            .is_some_and(|id| ids.contains(id.as_str()));
        if ours {
            let _ = d.acker.ack(BasicAckOptions::default()).await;
        } else {
            others.push(d.acker);
        }
    }
    for a in others {
        let _ = a
            .nack(lapin::options::BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await;
    }
    let _ = conn.close(200, ShortString::from("bye")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow (minutes) and restarts the broker: run it with scripts/chaos"]
async fn chaos() {
    let s = Settings::from_env();
    let mut rng = Rng(s.seed);
    let _restore = (!s.cluster).then(rabbitmq::Restore::default);
    if !s.cluster {
        rabbitmq::wait_accepting(Duration::from_secs(30)).await;
    }
    let t0 = Instant::now();
    let hard_stop = t0 + s.deadline;
    let pool = unique_pool("chaos");
    eprintln!("chaos: {s:?} pool={pool}");

    // Bound before anything is submitted, durable so it outlives the broker restart.
    let events_queue = format!("krill.test.chaos-events.{pool}");
    {
        let (conn, ch) = connect().await.expect("RabbitMQ reachable");
        EventLog::declare(&ch, &events_queue, &pool)
            .await
            .expect("events queue");
        let _ = conn.close(200, ShortString::from("bye")).await;
    }
    let log = Arc::new(EventLog::default());
    let log_stop = Arc::new(AtomicBool::new(false));
    let log_reader = tokio::spawn(log.clone().run(
        events_queue.clone(),
        pool.clone(),
        log_stop.clone(),
    ));

    let sandboxes = if s.container_share > 0 {
        "process,container"
    } else {
        "process"
    };
    let mut procs = Vec::new();
    for i in 0..s.workers {
        let b = WorkerBuilder::new(&pool)
            .id(&format!("chaos-{}-{i}", &pool[8..]))
            .arg("--concurrency")
            .arg(&s.concurrency.to_string())
            .arg("--sandbox")
            .arg(sandboxes)
            .arg("--shutdown-grace")
            .arg("10s")
            .env("RUST_LOG", "warn,worker=info");
        let mut w = b.clone().start().await;
        w.keep_pool(); // deleted once, at the end
        procs.push((b, w));
    }
    let worker_ids: Vec<String> = procs.iter().map(|(_, w)| w.id.clone()).collect();
    let fleet = Arc::new(Mutex::new(Fleet {
        procs,
        kills: 0,
        killed: Vec::new(),
    }));
    let quiet = Arc::new(Mutex::new(()));
    let stop = Arc::new(AtomicBool::new(false));
    let chaos = tokio::spawn(chaos_loop(
        fleet.clone(),
        quiet.clone(),
        stop.clone(),
        s.kill_every,
        Rng(rng.next() | 1),
    ));

    let tasks = make_tasks(&s, &mut rng);
    let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
    let retryable: HashSet<String> = tasks
        .iter()
        .filter(|t| t.retry_on_worker_loss)
        .map(|t| t.id.clone())
        .collect();
    let c = client().await;
    for t in &tasks {
        c.submit(&pool, t).await.expect("submit");
    }
    c.close().await;
    eprintln!(
        "chaos: {} tasks submitted in {:?}",
        tasks.len(),
        t0.elapsed()
    );

    // Results are collected in the background; the broker restart happens once a
    // third of the tasks have finished (every task is confirmed on the broker by
    // then, so no submit straddles the restart).
    let progress = Arc::new(AtomicUsize::new(0));
    let collector = {
        let (ids, progress, log) = (ids.clone(), progress.clone(), log.clone());
        tokio::spawn(async move {
            let mut results = Results::default();
            collect(&mut results, &ids, hard_stop, &progress, &log).await;
            results
        })
    };
    let mut broker_restarted = None;
    let mut node_kills = Vec::new();
    if s.cluster {
        // One node SIGKILLed at a third of the tasks and started again, then
        // another at two thirds: a crash, not a stop, with the fleet whole.
        let first = 1 + rng.below(3) as usize;
        let second = 1 + (first + rng.below(2) as usize) % 3;
        for (node, share) in [(first, 1), (second, 2)] {
            while log.finished() < ids.len() * share / 3 && Instant::now() < hard_stop {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let _quiet = quiet.lock().await;
            let at = t0.elapsed();
            let done = log.finished();
            eprintln!("chaos: SIGKILL node {node} at {at:?} ({done} tasks finished)");
            let n = node.to_string();
            tokio::task::spawn_blocking(move || cluster(&["kill", &n]))
                .await
                .expect("kill");
            tokio::time::sleep(Duration::from_secs(5)).await;
            let n = node.to_string();
            tokio::task::spawn_blocking(move || cluster(&["start", &n]))
                .await
                .expect("start");
            let back = t0.elapsed();
            eprintln!(
                "chaos: node {node} SIGKILLed at {at:?} ({done} tasks finished), back at {back:?}"
            );
            node_kills.push((node, at, back, done));
        }
    } else if s.broker_restart {
        while log.finished() < ids.len() / 3 && Instant::now() < hard_stop {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _quiet = quiet.lock().await;
        let at = t0.elapsed();
        let done = log.finished();
        rabbitmq::stop().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        rabbitmq::start().await;
        let back = t0.elapsed();
        eprintln!("chaos: RabbitMQ restarted at {at:?} ({done} tasks finished), back at {back:?}");
        broker_restarted = Some((at, back, done));
    }
    let mut last = 0;
    while !collector.is_finished() {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = progress.load(Ordering::Relaxed);
        if now != last {
            eprintln!("chaos: {now}/{} answered at {:?}", ids.len(), t0.elapsed());
            last = now;
        }
    }
    let mut results = collector.await.expect("collector");
    let all_answered_at = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = chaos.await;

    // Let the pool queue settle (redeliveries answered, acks in), then stop every
    // worker the ordinary way so nothing more is published.
    let queue = topology::pool_queue(&pool);
    let settle = Instant::now() + Duration::from_secs(60);
    let mut left_in_queue = None;
    while Instant::now() < settle {
        left_in_queue = queue_messages(&queue).await;
        if left_in_queue == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut fleet = fleet.lock().await;
    for (_, w) in &fleet.procs {
        w.signal(15);
    }
    let mut exits = Vec::new();
    for (_, w) in &mut fleet.procs {
        exits.push(w.wait_exit(Duration::from_secs(60)).await);
    }
    // Late copies: read every reply queue once more.
    if let Some((conn, ch)) = connect().await {
        let _ = results.read(&ch, &ids).await;
        let _ = conn.close(200, ShortString::from("bye")).await;
    }
    log_stop.store(true, Ordering::Relaxed);
    let _ = log_reader.await;
    let events = std::mem::take(&mut *lock(&log.events));

    let task_ids: HashSet<String> = ids.iter().cloned().collect();
    let leftovers = Leftovers {
        processes: leftover_processes(&worker_ids, &task_ids),
        work_dirs: leftover_work_dirs(&fleet),
        cgroups: leftover_cgroups(&worker_ids),
        containers: leftover_containers(&worker_ids),
    };

    // Count.
    let mut starts: HashMap<&str, usize> = HashMap::new();
    for e in &events {
        if e["state"] == "started" {
            if let Some(id) = e["task_id"].as_str() {
                *starts.entry(id).or_default() += 1;
            }
        }
    }
    let mut by_status: HashMap<&'static str, usize> = HashMap::new();
    let (mut answered, mut lost, mut dups) = (0, Vec::new(), 0);
    let (mut twice_retryable, mut twice_not) = (0, Vec::new());
    let (mut attempt_gt1, mut worker_lost_but_ran, mut lost_then_ran) = (0, 0, 0);
    let (mut worker_lost_unattributed, mut false_worker_lost) = (0, Vec::new());
    for id in &ids {
        match results.first(id) {
            Some(r) => {
                answered += 1;
                *by_status.entry(r.status.as_str()).or_default() += 1;
                if r.attempt > 1 {
                    attempt_gt1 += 1;
                }
                if r.status == Status::WorkerLost && starts.get(id.as_str()).copied() == Some(1) {
                    worker_lost_but_ran += 1;
                }
                if r.status == Status::WorkerLost {
                    // Whose was it? A started event from a worker SIGKILLed
                    // after it: a true worker_lost. None seen (the event is
                    // best effort, and a worker killed just after the start
                    // may never send it): unattributed. Else: false.
                    let started_by: Vec<(&str, &str)> = events
                        .iter()
                        .filter(|e| e["state"] == "started" && e["task_id"] == id.as_str())
                        .filter_map(|e| Some((e["worker"].as_str()?, e["at"].as_str()?)))
                        .collect();
                    let killed_after = |(w, at): &(&str, &str)| {
                        let at = chrono::DateTime::parse_from_rfc3339(at)
                            .map(|t| t.with_timezone(&chrono::Utc))
                            .ok();
                        fleet.killed.iter().any(|(k, when)| {
                            k == w && at.is_none_or(|a| *when >= a - chrono::Duration::seconds(1))
                        })
                    };
                    if started_by.is_empty() {
                        worker_lost_unattributed += 1;
                    } else if !started_by.iter().any(killed_after) {
                        false_worker_lost.push(id.clone());
                    }
                }
            }
            None => lost.push(id.clone()),
        }
        if results.seen.get(id).map_or(0, Vec::len) > 1 {
            dups += 1;
            if results
                .first(id)
                .is_some_and(|r| r.status == Status::WorkerLost)
                && results
                    .all(id)
                    .iter()
                    .any(|r| r.status != Status::WorkerLost)
            {
                lost_then_ran += 1;
            }
        }
        if starts.get(id.as_str()).copied().unwrap_or(0) > 1 {
            if retryable.contains(id) {
                twice_retryable += 1;
            } else {
                twice_not.push(id.clone());
            }
        }
    }
    let never_started = ids
        .iter()
        .filter(|id| !starts.contains_key(id.as_str()))
        .count();
    let mut statuses: Vec<_> = by_status.into_iter().collect();
    statuses.sort();

    println!("\n=== chaos report (seed {}) ===", s.seed);
    println!(
        "workers: {} × concurrency {} ({sandboxes}); SIGKILLs: {}; RabbitMQ restarts: {}; cluster node kills: {}",
        s.workers,
        s.concurrency,
        fleet.kills,
        usize::from(broker_restarted.is_some()),
        node_kills.len()
    );
    if let Some((at, back, done)) = broker_restarted {
        println!("RabbitMQ stopped at {at:.1?} ({done} tasks finished), back at {back:.1?}");
    }
    for (node, at, back, done) in &node_kills {
        println!(
            "cluster node {node} SIGKILLed at {at:.1?} ({done} tasks finished), back at {back:.1?}"
        );
    }
    println!(
        "submitted: {} ({} retryable, {} not)",
        ids.len(),
        retryable.len(),
        ids.len() - retryable.len()
    );
    println!("answered (≥1 terminal result): {answered}, all in by {all_answered_at:.1?}");
    println!(
        "exactly one terminal result: {}; more than one (duplicates, the client keeps the first): {dups}",
        answered - dups
    );
    println!("first results by status: {statuses:?}");
    println!(
        "answered worker_lost first, then a real result from the worker that still ran it: {lost_then_ran}"
    );
    println!(
        "ran twice (≥2 started events): {} retryable (allowed), {} not retryable (must be 0)",
        twice_retryable,
        twice_not.len()
    );
    println!(
        "results with attempt > 1 (redelivered): {attempt_gt1}; answered worker_lost after one start: {worker_lost_but_ran}; no started event seen: {never_started}"
    );
    let finished_events = events.iter().filter(|e| e["state"] == "finished").count();
    println!(
        "events read: {} ({} started, {finished_events} finished)",
        events.len(),
        starts.values().sum::<usize>()
    );
    println!(
        "worker_lost: {} false (started by a worker never SIGKILLed after it; must be 0), {worker_lost_unattributed} with no started event seen",
        false_worker_lost.len()
    );
    println!("lost (no result): {} (must be 0)", lost.len());
    println!(
        "left over: {} processes, {} work dirs, {} task cgroups, {} containers (must be 0)",
        leftovers.processes.len(),
        leftovers.work_dirs.len(),
        leftovers.cgroups.len(),
        leftovers
            .containers
            .map_or("n/a (no docker)".to_string(), |n| n.to_string())
    );
    println!(
        "pool queue after settling: {left_in_queue:?} messages; worker exit codes after SIGTERM: {exits:?}"
    );
    println!("total time: {:.1?}", t0.elapsed());
    println!("===\n");

    drop(fleet);
    clean_broker(&pool, &events_queue, &ids).await;
    assert!(lost.is_empty(), "lost tasks: {lost:?}");
    assert!(
        twice_not.is_empty(),
        "tasks without retry_on_worker_loss ran twice: {twice_not:?}"
    );
    assert_eq!(leftovers.total(), 0, "left over: {leftovers:?}");
    assert!(
        false_worker_lost.is_empty(),
        "worker_lost for tasks whose worker was never killed: {false_worker_lost:?}"
    );
}
