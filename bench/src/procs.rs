//! Starting `krill-worker` processes for a scenario, reading their memory, and
//! small waits on the broker and the engine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lapin::options::QueueDeleteOptions;
use lapin::types::ShortString;
use lapin::ConnectionProperties;

/// Where things are and which broker to use.
#[derive(Debug, Clone)]
pub struct Env {
    /// The repository's root.
    pub root: PathBuf,
    /// Directory of the release binaries (`target/release`).
    pub bin_dir: PathBuf,
    /// The static stub (`target/krill-stub`).
    pub stub: PathBuf,
    pub amqp_url: String,
}

/// How to start a worker.
#[derive(Debug, Clone)]
pub struct WorkerOpts {
    pub slots: u32,
    /// `process` or `container`.
    pub sandbox: String,
    /// Pre-started containers per image (`KRILL_PRESTART`); `None`: the worker's default.
    pub prestart: Option<u32>,
    pub env: Vec<(String, String)>,
    /// Join this pool (another worker's) instead of a fresh one.
    pub pool: Option<String>,
}

impl WorkerOpts {
    pub fn process(slots: u32) -> Self {
        WorkerOpts {
            slots,
            sandbox: "process".into(),
            prestart: None,
            env: Vec::new(),
            pool: None,
        }
    }

    pub fn container(slots: u32, prestart: u32) -> Self {
        WorkerOpts {
            slots,
            sandbox: "container".into(),
            prestart: Some(prestart),
            env: vec![("KRILL_IMAGES".into(), "krill/base:1".into())],
            pool: None,
        }
    }
}

/// A running worker; stopped (SIGTERM, then SIGKILL) and its pool queue deleted by [`Worker::stop`].
#[derive(Debug)]
pub struct Worker {
    pub id: String,
    pub pool: String,
    pub log: PathBuf,
    child: Child,
    work_dir: PathBuf,
    amqp_url: String,
}

/// Resident memory of one process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Rss {
    /// `VmRSS` in KiB.
    pub now_kib: u64,
    /// `VmHWM` (peak) in KiB.
    pub peak_kib: u64,
}

impl Rss {
    pub fn now_mib(&self) -> f64 {
        self.now_kib as f64 / 1024.0
    }
    pub fn peak_mib(&self) -> f64 {
        self.peak_kib as f64 / 1024.0
    }
}

/// `VmRSS` and `VmHWM` of `pid`.
pub fn rss(pid: u32) -> Rss {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Rss {
        now_kib: field("VmRSS:"),
        peak_kib: field("VmHWM:"),
    }
}

/// User + system CPU time of `pid` itself (not its children), in ms.
pub fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (which may hold spaces): utime and stime are
    // fields 14 and 15 of the line, 12 and 13 after `) `.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    (ticks(11) + ticks(12)) * 1000 / hz
}

/// `pid` and its descendants (from `/proc/<pid>/task/*/children`).
pub fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                all.extend(
                    kids.split_whitespace()
                        .filter_map(|k| k.parse::<u32>().ok()),
                );
            }
        }
        i += 1;
    }
    all
}

impl Env {
    /// Starts a worker on a fresh pool (or on `opts.pool`) and waits until it consumes.
    pub async fn worker(&self, opts: &WorkerOpts) -> anyhow::Result<Worker> {
        let short = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let id = format!("bench-{short}");
        let pool = opts
            .pool
            .clone()
            .unwrap_or_else(|| format!("bench-{short}"));
        let queue = broker::topology::pool_queue(&pool);
        let before = consumers(&self.amqp_url, &queue).await.unwrap_or(0);
        let work_dir = std::env::temp_dir().join(format!("krill-bench-{id}"));
        let log = std::env::temp_dir().join(format!("krill-bench-{id}.log"));
        let log_file = std::fs::File::create(&log).context("worker log file")?;
        let mut cmd = Command::new(self.bin_dir.join("krill-worker"));
        cmd.env("KRILL_AMQP_URL", &self.amqp_url)
            .env("KRILL_POOL", &pool)
            .env("KRILL_WORKER_ID", &id)
            .env("KRILL_CONCURRENCY", opts.slots.to_string())
            .env("KRILL_SANDBOX", &opts.sandbox)
            .env("KRILL_WORK_DIR", &work_dir)
            .env("KRILL_STUB_PATH", &self.stub)
            .env("KRILL_ALLOW_UNSIGNED", "true")
            .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        if let Some(n) = opts.prestart {
            cmd.env("KRILL_PRESTART", n.to_string());
        }
        let child = cmd.spawn().context("starting krill-worker")?;
        let mut w = Worker {
            id,
            pool,
            log,
            child,
            work_dir,
            amqp_url: self.amqp_url.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = w.child.try_wait() {
                bail!(
                    "krill-worker exited early ({status}); log:\n{}",
                    std::fs::read_to_string(&w.log).unwrap_or_default()
                );
            }
            if consumers(&self.amqp_url, &queue).await.unwrap_or(0) > before {
                return Ok(w);
            }
            if Instant::now() > deadline {
                w.stop().await;
                bail!("krill-worker never started consuming");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Worker {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss(&self) -> Rss {
        rss(self.pid())
    }

    /// SIGTERM, up to 30 s to exit, then SIGKILL; deletes the pool queue.
    pub async fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        delete_queue(&self.amqp_url, &broker::topology::pool_queue(&self.pool)).await;
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}

/// Consumers of `queue`, or `None` when it does not exist.
pub async fn consumers(url: &str, queue: &str) -> Option<u32> {
    let conn = broker::amqp::connect_first(url, ConnectionProperties::default())
        .await
        .ok()?;
    let q = broker::amqp::peek(&conn, queue).await.ok().flatten();
    let _ = conn.close(200, ShortString::from("bye")).await;
    q.map(|q| q.consumer_count())
}

/// Deletes a queue (best effort).
pub async fn delete_queue(url: &str, queue: &str) {
    if let Ok(conn) = broker::amqp::connect_first(url, ConnectionProperties::default()).await {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch
                .queue_delete(ShortString::from(queue), QueueDeleteOptions::default())
                .await;
        }
        let _ = conn.close(200, ShortString::from("bye")).await;
    }
}

/// Full ids of worker `id`'s running pre-started containers (named `krill-prestart-…`).
pub fn running_prestarted(worker_id: &str) -> Vec<String> {
    Command::new("docker")
        .args([
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=krill.worker={worker_id}"),
            "--filter",
            "name=krill-prestart-",
        ])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (up to `max`) until worker `id` has at least `n` pre-started containers
/// running that no task used (those in `used` are on their way out).
pub async fn wait_prestarted(
    worker_id: &str,
    n: usize,
    used: &std::collections::HashSet<String>,
    max: Duration,
) -> bool {
    if n == 0 {
        return true;
    }
    let deadline = Instant::now() + max;
    while Instant::now() < deadline {
        let id = worker_id.to_string();
        let have = tokio::task::spawn_blocking(move || running_prestarted(&id))
            .await
            .unwrap_or_default();
        if have.iter().filter(|c| !used.contains(*c)).count() >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// The 1-minute load average.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// `/proc/loadavg`'s three averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Whether `path` exists and is a file.
pub fn is_file(path: &Path) -> bool {
    path.is_file()
}
