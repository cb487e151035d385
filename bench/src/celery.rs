//! Celery 5 on the same RabbitMQ: a prefork worker with 2 children running the
//! command through `subprocess`, and a Python client (`bench/celery/`), from the
//! virtualenv `bench/run` makes (`bench/.venv`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::procs::{consumers, delete_queue, rss, tree};

/// Where Celery lives and which broker it uses.
#[derive(Debug, Clone)]
pub struct Celery {
    pub python: PathBuf,
    pub dir: PathBuf,
    /// Kombu URL of the same broker Krill uses.
    pub broker: String,
    pub amqp_url: String,
}

/// A running Celery worker (the main process and its prefork children).
#[derive(Debug)]
pub struct CeleryWorker {
    child: Child,
    queue: String,
    amqp_url: String,
}

/// What `client.py throughput` prints.
#[derive(Debug, Clone, Deserialize)]
pub struct Throughput {
    pub rate: f64,
    pub failed: u64,
}

/// What `client.py latency` prints.
#[derive(Debug, Clone, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub failed: u64,
}

impl Celery {
    fn command(&self, queue: &str) -> Command {
        let mut c = Command::new(&self.python);
        c.current_dir(&self.dir)
            .env("BENCH_CELERY_BROKER", &self.broker)
            .env("BENCH_CELERY_QUEUE", queue)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        c
    }

    /// Starts `celery worker -P prefork -c 2` on a fresh queue and waits until it consumes.
    pub async fn start(&self) -> anyhow::Result<CeleryWorker> {
        let queue = format!(
            "krill-bench-celery-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let log = std::env::temp_dir().join(format!("{queue}.log"));
        let log_file = std::fs::File::create(&log)?;
        let child = self
            .command(&queue)
            .args([
                "-m",
                "celery",
                "-A",
                "tasks",
                "worker",
                "-P",
                "prefork",
                "-c",
                "2",
                "-Q",
                &queue,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "warning",
            ])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting the Celery worker")?;
        let mut w = CeleryWorker {
            child,
            queue,
            amqp_url: self.amqp_url.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = w.child.try_wait() {
                bail!(
                    "the Celery worker exited ({status}); log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if consumers(&self.amqp_url, &w.queue).await.unwrap_or(0) > 0
                && tree(w.child.id()).len() >= 3
            {
                return Ok(w);
            }
            if Instant::now() > deadline {
                w.stop().await;
                bail!("the Celery worker never started consuming");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn client<T: for<'de> Deserialize<'de>>(
        &self,
        w: &CeleryWorker,
        mode: &str,
        n: usize,
        cmd: &str,
    ) -> anyhow::Result<T> {
        let mut c = self.command(&w.queue);
        c.args(["client.py", mode, &n.to_string(), cmd]);
        let out = tokio::task::spawn_blocking(move || c.output())
            .await?
            .context("running the Celery client")?;
        if !out.status.success() {
            bail!(
                "the Celery client failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let line = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(line.trim().lines().last().unwrap_or_default())
            .with_context(|| format!("parsing the Celery client's output: {line}"))
    }

    pub async fn throughput(
        &self,
        w: &CeleryWorker,
        n: usize,
        cmd: &str,
    ) -> anyhow::Result<Throughput> {
        self.client(w, "throughput", n, cmd).await
    }

    pub async fn latency(&self, w: &CeleryWorker, n: usize, cmd: &str) -> anyhow::Result<Latency> {
        self.client(w, "latency", n, cmd).await
    }
}

impl CeleryWorker {
    /// Resident memory of the worker and its children, in MiB.
    pub fn rss_mib(&self) -> f64 {
        tree(self.child.id())
            .into_iter()
            .map(|p| rss(p).now_kib)
            .sum::<u64>() as f64
            / 1024.0
    }

    /// Warm shutdown (SIGTERM), then SIGKILL; deletes the queue.
    pub async fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        delete_queue(&self.amqp_url, &self.queue).await;
    }
}
