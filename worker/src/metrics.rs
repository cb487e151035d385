//! The worker's figures: Prometheus metrics for `/metrics`, and the same figures as
//! JSON lines for `--metrics-file` (Telegraf, Vector, Fluent Bit and the like).
//!
//! Labels stay low-cardinality: a task's `status` and `sandbox` kind, never a task
//! id. The worker id and pool are on `krill_worker_info` only; Prometheus adds the
//! scrape target's own labels.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `krill_tasks_finished_total` | counter | `status`, `sandbox` |
//! | `krill_task_run_seconds` | histogram | `sandbox` |
//! | `krill_task_queue_wait_seconds` | histogram | |
//! | `krill_sandbox_start_seconds` | histogram | `sandbox` |
//! | `krill_sandboxes_prestarted` | gauge | `sandbox` |
//! | `krill_tasks_running` | gauge | |
//! | `krill_slots_total`, `krill_slots_free` | gauge | |
//! | `krill_draining` | gauge (0/1) | |
//! | `krill_broker_connected` | gauge (0/1) | |
//! | `krill_broker_reconnects_total` | counter | |
//! | `krill_leftovers_swept_total` | counter | |
//! | `krill_worker_info` | info | `worker`, `pool`, `version` |
//! | `krill_trust_rejections_total`, `krill_control_ignored_total`, `krill_claim_seconds` | see `trust::TrustMetrics` | `reason` |

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use broker::protocol::{SandboxKind, Status};
use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::snapshot::Snapshot;

/// Content type of the `/metrics` body (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Finished {
    status: &'static str,
    sandbox: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    sandbox: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

type Histograms = Family<Kind, Histogram, fn() -> Histogram>;

fn durations() -> Histogram {
    // 50 ms … ~2 h.
    Histogram::new(exponential_buckets(0.05, 2.5, 14))
}

fn starts() -> Histogram {
    // 5 ms … ~80 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// Every figure the worker keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    finished: Family<Finished, Counter>,
    run: Histograms,
    queue_wait: Histogram,
    sandbox_start: Histograms,
    prestarted: Family<Kind, Gauge>,
    blocked: Family<Reason, Gauge>,
    running: Gauge,
    slots_total: Gauge,
    slots_free: Gauge,
    draining: Gauge,
    connected: Gauge,
    reconnects: Counter,
    swept: Counter,
    lines_refused: Counter,
    was_connected: AtomicBool,
    /// Rejections, ignored control messages, claim times.
    pub trust: crate::trust::TrustMetrics,
}

/// The label value of a sandbox kind, or `none` (rejected before a sandbox was chosen).
pub fn sandbox_label(kind: Option<SandboxKind>) -> &'static str {
    kind.map_or("none", SandboxKind::as_str)
}

impl Metrics {
    /// Registers every metric; `worker` and `pool` go on `krill_worker_info`.
    pub fn new(worker: &str, pool: &str) -> Self {
        let mut registry = Registry::default();
        let finished = Family::<Finished, Counter>::default();
        registry.register(
            "krill_tasks_finished",
            "Tasks finished, by result status and sandbox kind",
            finished.clone(),
        );
        let run = Histograms::new_with_constructor(durations);
        registry.register(
            "krill_task_run_seconds",
            "Time from claiming a task to its result being ready",
            run.clone(),
        );
        let queue_wait = durations();
        registry.register(
            "krill_task_queue_wait_seconds",
            "Time a task waited between submission and being claimed",
            queue_wait.clone(),
        );
        let sandbox_start = Histograms::new_with_constructor(starts);
        registry.register(
            "krill_sandbox_start_seconds",
            "Time from handing a task to its sandbox until the script's first output \
             (an upper bound of the sandbox start; tasks that print nothing are not counted)",
            sandbox_start.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let blocked = Family::<Reason, Gauge>::default();
        registry.register(
            "krill_tasks_blocked",
            "Keyed tasks waiting in the lines this worker holds, by why: key (held by \
             as many tasks as it allows), no_free_slot (its turn came, no slot here), draining",
            blocked.clone(),
        );
        let prestarted = Family::<Kind, Gauge>::default();
        registry.register(
            "krill_sandboxes_prestarted",
            "Sandboxes prestarted and waiting for a task (process: helpers in their \
             cgroup and namespaces; container: containers with their stub waiting)",
            prestarted.clone(),
        );
        let running = gauge(&mut registry, "krill_tasks_running", "Tasks running now");
        let slots_total = gauge(
            &mut registry,
            "krill_slots_total",
            "Tasks this worker runs at once (--concurrency)",
        );
        let slots_free = gauge(&mut registry, "krill_slots_free", "Slots free now");
        let draining = gauge(
            &mut registry,
            "krill_draining",
            "1 while the worker does not claim tasks (drained or shutting down)",
        );
        let connected = gauge(
            &mut registry,
            "krill_broker_connected",
            "1 while the worker is connected to RabbitMQ",
        );
        let reconnects = Counter::default();
        registry.register(
            "krill_broker_reconnects",
            "Connections to RabbitMQ made after the first one",
            reconnects.clone(),
        );
        let swept = Counter::default();
        registry.register(
            "krill_leftovers_swept",
            "Containers, cgroups and work dirs left by crashed workers and removed",
            swept.clone(),
        );
        let lines_refused = Counter::default();
        registry.register(
            "krill_lines_refused",
            "Announcements of concurrency keys not served: the cap of lines (--max-lines) was reached",
            lines_refused.clone(),
        );
        registry.register(
            "krill_worker",
            "This worker",
            Info::new(vec![
                ("worker", worker.to_string()),
                ("pool", pool.to_string()),
                ("version", env!("CARGO_PKG_VERSION").to_string()),
            ]),
        );
        let trust = crate::trust::TrustMetrics::register(&mut registry);
        Metrics {
            registry,
            finished,
            run,
            queue_wait,
            sandbox_start,
            prestarted,
            blocked,
            running,
            slots_total,
            slots_free,
            draining,
            connected,
            reconnects,
            swept,
            lines_refused,
            was_connected: AtomicBool::new(false),
            trust,
        }
    }

    /// A task ended with `status` (every delivery that gets a result counts once).
    pub fn finished(&self, status: Status, sandbox: Option<SandboxKind>) {
        self.finished
            .get_or_create(&Finished {
                status: status.as_str(),
                sandbox: sandbox_label(sandbox),
            })
            .inc();
    }

    /// A task ran (claimed → result ready) for `took`.
    pub fn ran(&self, sandbox: Option<SandboxKind>, took: Duration) {
        self.run
            .get_or_create(&Kind {
                sandbox: sandbox_label(sandbox),
            })
            .observe(took.as_secs_f64());
    }

    /// A task waited `waited` in the queue before it was claimed.
    pub fn queued(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    /// A sandbox of `kind` took `took` to start.
    pub fn sandbox_started(&self, kind: SandboxKind, took: Duration) {
        self.sandbox_start
            .get_or_create(&Kind {
                sandbox: kind.as_str(),
            })
            .observe(took.as_secs_f64());
    }

    /// The worker (re)connected to the broker.
    pub fn connected(&self) {
        if self.was_connected.swap(true, Ordering::Relaxed) {
            self.reconnects.inc();
        }
    }

    /// `n` leftovers of earlier workers were removed.
    pub fn swept(&self, n: usize) {
        self.swept.inc_by(n as u64);
    }

    /// An announced key was not served: the cap of lines is reached.
    pub fn line_refused(&self) {
        self.lines_refused.inc();
    }

    /// Sets the gauges from the worker's state as `now` describes it.
    pub fn refresh(&self, now: &Snapshot) {
        self.running.set(now.running.len() as i64);
        for (kind, n) in &now.prestarted {
            self.prestarted
                .get_or_create(&Kind {
                    sandbox: kind.as_str(),
                })
                .set(*n as i64);
        }
        for reason in broker::protocol::BlockReason::ALL {
            let n: usize = now
                .lines
                .iter()
                .filter(|v| !v.waiting.is_empty())
                .map(|v| {
                    let head = v.blocked.unwrap_or(broker::protocol::BlockReason::Key);
                    usize::from(head == reason)
                        + if reason == broker::protocol::BlockReason::Key {
                            v.waiting.len() - 1
                        } else {
                            0
                        }
                })
                .sum();
            self.blocked
                .get_or_create(&Reason {
                    reason: reason.as_str(),
                })
                .set(n as i64);
        }
        self.slots_total.set(i64::from(now.slots_total));
        self.slots_free.set(i64::from(now.slots_free));
        self.draining.set(i64::from(now.draining));
        self.connected.set(i64::from(now.connected));
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }

    /// The figures as one JSON object: `{"time", "worker", "pool", "<series>": value, …}`,
    /// a series named as in Prometheus (`krill_tasks_finished_total{sandbox="process",status="succeeded"}`).
    /// Histogram buckets are left out (their `_sum` and `_count` are in).
    pub fn json_line(&self, worker: &str, pool: &str) -> String {
        let mut obj = serde_json::Map::new();
        obj.insert(
            "time".into(),
            serde_json::Value::String(chrono::Utc::now().to_rfc3339()),
        );
        obj.insert("worker".into(), worker.into());
        obj.insert("pool".into(), pool.into());
        for (series, value) in samples(&self.encode()) {
            if series.contains("_bucket{") || series.starts_with("krill_worker_info") {
                continue;
            }
            if let Some(n) = serde_json::Number::from_f64(value) {
                obj.insert(series, serde_json::Value::Number(n));
            }
        }
        serde_json::Value::Object(obj).to_string()
    }
}

/// How long a task waited in the queue: from its `submitted_at`, or else the
/// message's AMQP timestamp (whole seconds), to now.
pub fn queue_wait(
    submitted_at: Option<DateTime<Utc>>,
    amqp_timestamp: Option<u64>,
) -> Option<Duration> {
    let at = submitted_at.or_else(|| {
        amqp_timestamp
            .and_then(|s| i64::try_from(s).ok())
            .and_then(|s| DateTime::from_timestamp(s, 0))
    })?;
    (Utc::now() - at).to_std().ok()
}

/// The samples of an OpenMetrics/Prometheus text body: `(series, value)`.
pub fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Appends a JSON line of the figures to `path` every `every` until `stop`
/// (and once more then); `now` gives the worker's state for the gauges.
pub async fn file_loop(
    metrics: &Metrics,
    now: impl Fn() -> Snapshot,
    path: std::path::PathBuf,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        let now = now();
        metrics.refresh(&now);
        let line = metrics.json_line(&now.worker, &now.pool);
        let path2 = path.clone();
        let res = tokio::task::spawn_blocking(move || append(&path2, &line)).await;
        if let Ok(Err(e)) = res {
            tracing::warn!(path = %path.display(), error = %e, "writing the metrics file");
        }
        if stopping {
            return;
        }
    }
}

fn append(path: &Path, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{line}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_encode_and_flatten() {
        let m = Metrics::new("w1", "p");
        m.finished(Status::Succeeded, Some(SandboxKind::Process));
        m.finished(Status::Rejected, None);
        m.ran(Some(SandboxKind::Process), Duration::from_millis(300));
        m.queued(Duration::from_secs(2));
        m.connected();
        m.connected();
        let text = m.encode();
        assert!(
            text.contains(r#"krill_tasks_finished_total{status="succeeded",sandbox="process"} 1"#),
            "{text}"
        );
        assert!(text.contains("krill_broker_reconnects_total 1"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&m.json_line("w1", "p")).expect("json");
        assert_eq!(
            v[r#"krill_tasks_finished_total{status="rejected",sandbox="none"}"#],
            1.0
        );
        assert_eq!(v["krill_task_queue_wait_seconds_count"], 1.0);
        assert_eq!(v["worker"], "w1");
    }
}
