//! Operating the pool against a real RabbitMQ and real workers: heartbeats,
//! `krill status` (live, running, lost, draining, why a task waits), remote
//! drain/resume, and the worker's /metrics, /healthz, /readyz and metrics file.

use std::future::Future;
use std::time::{Duration, Instant};

use broker::protocol::{Heartbeat, Status};
use broker::topology;
use krill_tests::{amqp_url, bin, client, task, unique_pool, Events, WorkerBuilder};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `krill status --json --pool POOL`, parsed.
async fn status(pool: &str) -> Value {
    let out = tokio::process::Command::new(bin("krill"))
        .env("KRILL_AMQP_URL", amqp_url())
        .args(["status", "--json", "--since", "2m", "--pool", pool])
        .output()
        .await
        .expect("running krill status");
    assert_eq!(
        out.status.code(),
        Some(0),
        "krill status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "krill status --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn worker<'a>(report: &'a Value, id: &str) -> Option<&'a Value> {
    report["workers"].as_array()?.iter().find(|w| w["id"] == id)
}

fn pool<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["pool"] == name))
        .unwrap_or_else(|| panic!("pool {name} missing from {report:#}"))
}

/// Polls `check` until it returns Some, or panics after `timeout` with `what`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Polls `krill status` until the worker's entry satisfies `pred`.
async fn until_worker(
    pool_name: &str,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    eventually(what, Duration::from_secs(30), || async {
        let report = status(pool_name).await;
        match worker(&report, id) {
            Some(w) if pred(w) => Ok(report),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_arrive_on_the_events_exchange() {
    let pool_name = unique_pool("hb");
    let w = WorkerBuilder::new(&pool_name)
        .arg("--concurrency")
        .arg("3")
        .start()
        .await;
    let mut beats = Events::bind(&topology::heartbeat_key(&w.id)).await;
    // A heartbeat within 10 s (interval 1 s).
    let body = beats.next_body(Duration::from_secs(10)).await;
    let hb: Heartbeat = serde_json::from_slice(&body).expect("a heartbeat");
    assert_eq!(hb.worker, w.id);
    assert_eq!(hb.pool, pool_name);
    assert_eq!((hb.slots_total, hb.slots_free), (3, 3));
    assert!(!hb.draining && !hb.stopping);
    assert_eq!(hb.interval_secs, 1);
    assert!(hb.running.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_running_task_only_while_it_runs() {
    let pool_name = unique_pool("st-run");
    let w = WorkerBuilder::new(&pool_name)
        .arg("--concurrency")
        .arg("2")
        .start()
        .await;
    let report = until_worker(&pool_name, &w.id, "the worker to show as live", |w| {
        w["state"] == "live"
    })
    .await;
    assert_eq!(pool(&report, &pool_name)["workers_live"], 1);

    let c = client().await;
    let t = task("sleep 4");
    c.submit(&pool_name, &t).await.expect("submit");
    let report = until_worker(&pool_name, &w.id, "the task to show as running", |w| {
        w["running"]
            .as_array()
            .is_some_and(|r| r.iter().any(|t2| t2["id"] == t.id.as_str()))
    })
    .await;
    let me = worker(&report, &w.id).expect("worker");
    assert_eq!(me["slots_free"], 1, "{me:#}");
    assert_eq!(me["running"][0]["sandbox"], "process");
    let p = pool(&report, &pool_name);
    assert_eq!(p["running"], 1, "{p:#}");
    assert_eq!(p["unacked"], 1, "{p:#}");
    // A passive declare of a quorum queue counts ready messages only.
    assert_eq!(p["ready"], 0, "{p:#}");

    let r = c
        .wait(&t.id, Some(Duration::from_secs(60)))
        .await
        .expect("result");
    assert_eq!(r.status, Status::Succeeded);
    let report = until_worker(
        &pool_name,
        &w.id,
        "the finished task to leave `running`",
        |w| w["running"].as_array().is_some_and(|r| r.is_empty()),
    )
    .await;
    let me = worker(&report, &w.id).expect("worker");
    assert_eq!(me["slots_free"], 2);
    assert_eq!(me["state"], "live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_shows_as_lost() {
    let pool_name = unique_pool("st-lost");
    let mut w = WorkerBuilder::new(&pool_name).start().await;
    until_worker(&pool_name, &w.id, "the worker to show as live", |w| {
        w["state"] == "live"
    })
    .await;
    w.kill(); // SIGKILL: no goodbye heartbeat
    let report = until_worker(
        &pool_name,
        &w.id,
        "the killed worker to show as lost",
        |w| w["state"] == "lost",
    )
    .await;
    let me = worker(&report, &w.id).expect("worker");
    assert!(me["silent_secs"].as_u64().unwrap_or(0) >= 3, "{me:#}");
    let p = pool(&report, &pool_name);
    assert_eq!(p["workers_live"], 0);
    assert_eq!(p["workers_lost"], 1);

    // And the table says so too.
    let out = tokio::process::Command::new(bin("krill"))
        .env("KRILL_AMQP_URL", amqp_url())
        .args(["status", "--since", "2m", "--pool", &pool_name])
        .output()
        .await
        .expect("krill status");
    let table = String::from_utf8_lossy(&out.stdout);
    let line = table
        .lines()
        .find(|l| l.contains(&w.id))
        .unwrap_or_else(|| panic!("{} missing from:\n{table}", w.id));
    assert!(line.contains("LOST"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_worker_leaves_the_task_queued_with_the_reason_until_resumed() {
    let pool_name = unique_pool("st-drain");
    let w = WorkerBuilder::new(&pool_name).start().await;
    let krill = |args: &[&str]| {
        std::process::Command::new(bin("krill"))
            .env("KRILL_AMQP_URL", amqp_url())
            .args(args)
            .output()
            .expect("krill")
    };
    let out = krill(&["drain", &w.id]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    until_worker(&pool_name, &w.id, "the worker to show as draining", |w| {
        w["state"] == "draining"
    })
    .await;
    // The worker cancelled its consumer: nothing claims the task.
    eventually(
        "the pool queue to lose its consumer",
        Duration::from_secs(10),
        || async {
            match krill_tests::consumers(&topology::pool_queue(&pool_name)).await {
                Some(0) => Ok(()),
                n => Err(format!("{n:?}")),
            }
        },
    )
    .await;

    let c = client().await;
    let t = task("echo resumed");
    c.submit(&pool_name, &t).await.expect("submit");
    let report = eventually(
        "the task to wait, explained",
        Duration::from_secs(15),
        || async {
            let report = status(&pool_name).await;
            let p = pool(&report, &pool_name);
            if p["ready"].as_u64().unwrap_or(0) >= 1 && p["waiting"].is_string() {
                Ok(report)
            } else {
                Err(format!("{p:#}"))
            }
        },
    )
    .await;
    let p = pool(&report, &pool_name);
    let why = p["waiting"].as_str().unwrap_or_default();
    assert!(why.contains("draining"), "{why}");
    assert_eq!(p["workers_draining"], 1);
    let me = worker(&report, &w.id).expect("worker");
    assert!(me["running"].as_array().is_some_and(|r| r.is_empty()));
    // Still not taken a moment later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        krill_tests::depth(&topology::pool_queue(&pool_name)).await,
        Some(1),
        "a draining worker claimed a task"
    );

    let out = krill(&["resume", &w.id]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let r = c
        .wait(&t.id, Some(Duration::from_secs(30)))
        .await
        .expect("the task runs after resume");
    assert_eq!(r.status, Status::Succeeded);
    assert_eq!(r.stdout, "resumed\n");
    let report = until_worker(&pool_name, &w.id, "the worker to show as live again", |w| {
        w["state"] == "live"
    })
    .await;
    let p = pool(&report, &pool_name);
    assert_eq!(p["ready"], 0);
    assert!(p["waiting"].is_null(), "{p:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_without_workers_is_explained() {
    let pool_name = unique_pool("st-none");
    // A worker declares the queue, then goes away cleanly.
    let mut w = WorkerBuilder::new(&pool_name).start().await;
    w.signal(15);
    assert_eq!(w.wait_exit(Duration::from_secs(30)).await, Some(0));
    w.keep_pool();
    let c = client().await;
    c.submit(&pool_name, &task("true")).await.expect("submit");
    let report = until_worker(&pool_name, &w.id, "the worker to show as stopped", |w| {
        w["state"] == "stopped"
    })
    .await;
    let p = pool(&report, &pool_name);
    assert_eq!(p["ready"], 1, "{p:#}");
    let why = p["waiting"].as_str().unwrap_or_default();
    assert!(why.contains("no live worker"), "{why}");
    krill_tests::delete_queue(&topology::pool_queue(&pool_name)).await;
}

/// GET `path` from `addr` over plain HTTP/1.1; returns (status code, body).
async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The value of one series in a metrics body (0 when absent).
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_tasks_run() {
    let pool_name = unique_pool("metrics");
    let addr = format!("127.0.0.1:{}", free_port());
    let file = std::env::temp_dir().join(format!("krill-metrics-{pool_name}.jsonl"));
    let _w = WorkerBuilder::new(&pool_name)
        .arg("--concurrency")
        .arg("2")
        .env("KRILL_METRICS_ADDR", &addr)
        .env("KRILL_METRICS_FILE", &file.display().to_string())
        .env("KRILL_METRICS_FILE_INTERVAL", "200ms")
        .start()
        .await;
    assert_eq!(http_get(&addr, "/healthz").await.0, 200);
    let (code, body) = http_get(&addr, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("broker: connected"), "{body}");

    let ok = r#"krill_tasks_finished_total{status="succeeded",sandbox="process"}"#;
    let failed = r#"krill_tasks_finished_total{status="failed",sandbox="process"}"#;
    let (_, before) = http_get(&addr, "/metrics").await;
    assert_eq!(sample(&before, ok), 0.0);
    assert_eq!(sample(&before, "krill_slots_total"), 2.0);
    assert_eq!(sample(&before, "krill_slots_free"), 2.0);
    assert_eq!(sample(&before, "krill_broker_connected"), 1.0);
    assert_eq!(sample(&before, "krill_draining"), 0.0);
    assert!(!before.contains("task_id"), "a task id in the labels");

    let c = client().await;
    let slow = task("echo start; sleep 3");
    c.submit(&pool_name, &slow).await.expect("submit");
    let during = eventually(
        "krill_tasks_running to reach 1",
        Duration::from_secs(15),
        || async {
            let (_, body) = http_get(&addr, "/metrics").await;
            if sample(&body, "krill_tasks_running") == 1.0 {
                Ok(body)
            } else {
                Err(body)
            }
        },
    )
    .await;
    assert_eq!(sample(&during, "krill_slots_free"), 1.0, "{during}");
    let r = c
        .wait(&slow.id, Some(Duration::from_secs(60)))
        .await
        .expect("result");
    assert_eq!(r.status, Status::Succeeded);
    let r = krill_tests::run_task(&c, &pool_name, &task("exit 2")).await;
    assert_eq!(r.status, Status::Failed);

    // A task counts as running (and holds its slot) until its result is
    // confirmed and its delivery acked, a moment after the result reaches
    // the submitter.
    let after = eventually(
        "krill_tasks_running back to 0 and both slots free",
        Duration::from_secs(15),
        || async {
            let (_, body) = http_get(&addr, "/metrics").await;
            if sample(&body, "krill_tasks_running") == 0.0
                && sample(&body, "krill_slots_free") == 2.0
            {
                Ok(body)
            } else {
                Err(body)
            }
        },
    )
    .await;
    assert_eq!(sample(&after, ok), 1.0, "{after}");
    assert_eq!(sample(&after, failed), 1.0, "{after}");
    assert_eq!(sample(&after, "krill_tasks_running"), 0.0);
    assert_eq!(sample(&after, "krill_slots_free"), 2.0);
    assert_eq!(
        sample(&after, r#"krill_task_run_seconds_count{sandbox="process"}"#),
        2.0
    );
    assert!(sample(&after, r#"krill_task_run_seconds_sum{sandbox="process"}"#) >= 3.0);
    assert_eq!(sample(&after, "krill_task_queue_wait_seconds_count"), 2.0);
    assert!(
        sample(
            &after,
            r#"krill_sandbox_start_seconds_count{sandbox="process"}"#
        ) >= 1.0
    );

    // The same figures as JSON lines.
    let line = eventually(
        "a metrics-file line with both tasks",
        Duration::from_secs(10),
        || async {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let last = text.lines().last().unwrap_or("").to_string();
            let v: Value = serde_json::from_str(&last).map_err(|e| format!("{e}: {last}"))?;
            if v[ok] == 1.0 && v[failed] == 1.0 {
                Ok(v)
            } else {
                Err(last)
            }
        },
    )
    .await;
    assert_eq!(line["pool"], pool_name.as_str());
    assert_eq!(line["krill_slots_total"], 2.0);
    let _ = std::fs::remove_file(&file);
}
