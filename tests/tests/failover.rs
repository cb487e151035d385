//! Submitters that fail over (issue 18): on the three-node cluster of
//! `scripts/cluster`, the node a submitter is connected to is SIGKILLed while
//! it submits a stream of tasks — a `Client` (one confirmed publish after the
//! other) and a `BulkClient` (pipelined, replicated reply queue), each with
//! unsigned and with signed tasks. Every submission is confirmed (the client
//! reconnects to another node and publishes again what was not confirmed),
//! gets exactly one result, `succeeded` with its own output, and ran exactly
//! once: runs are counted from the workers' logs (`task finished`, one line
//! per run of a script; no worker dies here, so the logs are complete).
//!
//! The workers are connected to another node than the submitter's (their URL
//! list starts at the next one), so what is tested is the submitter's
//! failover. The cluster is started when it is not running and left up for
//! the next binary; scripts/test stops it. Runs in lane 2 of scripts/test
//! (with the other tests that stop broker nodes).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::bulk::{BulkClient, Replies};
use broker::client::Client;
use broker::protocol::{Status, TaskResult};
use broker::trust::Credentials;
use krill_tests::trust::Keys;
use krill_tests::{cluster, cluster_urls, task, unique_pool, WorkerBuilder};

const T: Duration = Duration::from_secs(150);
/// A stream submits for this long at most, whatever happens to its submits.
const STREAM_AT_MOST: Duration = Duration::from_secs(90);
/// One submit (its failover included) at most.
const SUBMIT_AT_MOST: Duration = Duration::from_secs(60);
/// How long the stream goes on after the kill.
const AFTER_KILL: Duration = Duration::from_secs(6);

/// Who submits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Submitter {
    Client,
    Bulk,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitters_fail_over_when_their_node_is_killed() {
    // The clients' own log (reconnects, copies published again) on stderr.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("broker=debug,warn"))
        .with_writer(std::io::stderr)
        .try_init();
    let urls = cluster_urls();
    let mut report = Vec::new();
    for (who, signed) in [
        (Submitter::Client, false),
        (Submitter::Client, true),
        (Submitter::Bulk, false),
        (Submitter::Bulk, true),
    ] {
        report.push(stream_through_a_kill(&urls, who, signed).await);
    }
    report.push(control_through_a_kill(&urls).await);
    for line in report {
        eprintln!("failover: {line}");
    }
}

/// `urls` rotated to start at node `n` (1..3).
fn starting_at(urls: &str, n: usize) -> String {
    let mut v = broker::amqp::urls(urls);
    v.rotate_left(n - 1);
    v.join(",")
}

/// One scenario: two workers on node 2 first, the submitter on node 1; node 1
/// SIGKILLed ~2 s into the stream, which goes on for [`AFTER_KILL`] more; then
/// every submission's result and run count are checked, and node 1 started again.
async fn stream_through_a_kill(urls: &str, who: Submitter, signed: bool) -> String {
    let pool = unique_pool(if signed { "fo-signed" } else { "fo" });
    let keys = Keys::new("", &[]);
    let worker_urls = starting_at(urls, 2);
    let builder = |pool: &str| {
        let b = if signed {
            keys.worker(pool)
        } else {
            WorkerBuilder::new(pool)
        };
        b.env("KRILL_AMQP_URL", &worker_urls)
            .env("KRILL_HEARTBEAT_INTERVAL", "1s")
    };
    let mut w1 = builder(&pool).start().await;
    w1.keep_pool();
    let mut w2 = builder(&pool).start().await;
    w2.keep_pool();
    let creds = if signed {
        keys.creds(&keys.alice)
    } else {
        Credentials::default()
    };
    let client_urls = starting_at(urls, 1);
    let label = format!("{who:?} {}", if signed { "signed" } else { "unsigned" });

    let stop = Arc::new(Flags::default());
    let started = Instant::now();
    let stream = {
        let (pool, stop, client_urls, creds) = (
            pool.clone(),
            stop.clone(),
            client_urls.clone(),
            creds.clone(),
        );
        tokio::spawn(async move {
            match who {
                Submitter::Client => client_stream(&client_urls, &pool, creds, stop).await,
                Submitter::Bulk => bulk_stream(&client_urls, &pool, creds, stop).await,
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = started.elapsed();
    cluster(&["kill", "1"]);
    stop.killed.store(true, Ordering::SeqCst);
    let restart = StartOnDrop("1");
    tokio::time::sleep(AFTER_KILL).await;
    stop.stop.store(true, Ordering::SeqCst);
    let out = stream.await.expect("the submit stream");
    let logs = || format!("worker 1:\n{}\nworker 2:\n{}", w1.log_text(), w2.log_text());

    assert!(
        out.failed.is_empty(),
        "{label}: submits failed though two nodes were up: {:?}",
        out.failed
    );
    assert_eq!(
        out.node_before, 0,
        "{label}: the submitter started on node 1"
    );
    assert_ne!(
        out.node_after, 0,
        "{label}: the submitter moved off the killed node"
    );
    let after_kill = out
        .submitted
        .iter()
        .filter(|(_, at, _)| *at > killed_at)
        .count();
    assert!(
        after_kill > 0,
        "{label}: nothing was submitted after the kill"
    );
    // Every submission's result, and one run each: the workers' logs, read
    // once their last results are out (and a copy held by a worker has had
    // time to be settled). All that is wrong is said at once, each with why.
    let runs = |id: &str| {
        [w1.log_text(), w2.log_text()]
            .iter()
            .flat_map(|l| l.lines().map(str::to_string).collect::<Vec<_>>())
            .filter(|l| l.contains(id) && l.contains("task finished"))
            .count()
    };
    let mut wrong = Vec::new();
    for (id, at, result) in &out.submitted {
        let when = format!(
            "submitted at {:.1} s, {} the kill",
            at.as_secs_f64(),
            if *at > killed_at { "after" } else { "before" }
        );
        let problem = match result {
            Err(e) => Some(format!("no result: {e}")),
            Ok(r) if r.status != Status::Succeeded => Some(format!("{r:?}")),
            Ok(r) if r.stdout != format!("{id}\n") => Some(format!("not its own output: {r:?}")),
            Ok(_) => match runs(id) {
                1 => None,
                n => Some(format!("ran {n} times")),
            },
        };
        if let Some(p) = problem {
            wrong.push(format!(
                "{id} ({when}): {p}\n  the workers about it:\n{}\n  its reply queue: {}",
                said_about(&[&w1.log_text(), &w2.log_text()], id),
                queue_state(
                    &out.reply_queue
                        .clone()
                        .unwrap_or_else(|| broker::topology::reply_queue(id))
                )
                .await
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{label}: {} of {} submissions went wrong:\n{}\n{}",
        wrong.len(),
        out.submitted.len(),
        wrong.join("\n"),
        logs()
    );
    let copies: usize = [w1.log_text(), w2.log_text()]
        .iter()
        .map(|l| {
            l.lines()
                .filter(|l| l.contains("published again after a lost connection"))
                .count()
        })
        .sum();
    let replayed = keys
        .audit_lines()
        .iter()
        .filter(|l| l["reason"] == "replayed")
        .count();
    drop(restart);
    format!(
        "{label}: {} submitted ({after_kill} after the kill at {:.1} s), all confirmed, one result \
         and one run each; submitter on node {} then {}; {copies} marked copies held by a worker, \
         {replayed} signed copies refused `replayed`; every result {:.1} s after the last submit; {:.1} s",
        out.submitted.len(),
        killed_at.as_secs_f64(),
        out.node_before + 1,
        out.node_after + 1,
        out.results_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    )
}

/// The lines of the workers' logs that name task `id`, indented.
fn said_about(logs: &[&str], id: &str) -> String {
    let lines: Vec<String> = logs
        .iter()
        .enumerate()
        .flat_map(|(n, l)| {
            l.lines()
                .filter(|l| l.contains(id))
                .map(move |l| format!("    worker {}: {l}", n + 1))
        })
        .collect();
    match lines.is_empty() {
        true => "    (nothing: no worker ever had it)".into(),
        false => lines.join("\n"),
    }
}

/// What the cluster's management API says of `queue` (messages ready and
/// unacked, consumers, leader, members online), from the first node that answers.
async fn queue_state(queue: &str) -> String {
    let mgmt = tokio::task::block_in_place(|| cluster(&["management-urls"]));
    let Ok(http) = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    else {
        return "no HTTP client".into();
    };
    for url in mgmt.trim().split(',') {
        let answer = http
            .get(format!(
                "{url}/api/queues/%2F/{queue}?columns=messages_ready,messages_unacknowledged,consumers,leader,online"
            ))
            .basic_auth("guest", Some("guest"))
            .send()
            .await;
        match answer {
            Ok(a) if a.status().is_success() => {
                return a.text().await.unwrap_or_default();
            }
            Ok(a) if a.status() == reqwest::StatusCode::NOT_FOUND => return "no such queue".into(),
            _ => continue,
        }
    }
    "no node's management API answered".into()
}

/// Set by the test: the node was killed; the stream may end. A stream ends
/// only once [`AFTER_KILL_AT_LEAST`] submissions began after the kill (a
/// failover can take longer than [`AFTER_KILL`]: deleting a leaderless reply
/// queue takes 10 s).
#[derive(Default)]
struct Flags {
    killed: AtomicBool,
    stop: AtomicBool,
}

/// Submissions begun after the kill before a stream may end.
const AFTER_KILL_AT_LEAST: usize = 5;

impl Flags {
    /// Whether a stream that began `after` submissions since the kill ends now.
    fn done(&self, after: usize) -> bool {
        self.stop.load(Ordering::SeqCst) && after >= AFTER_KILL_AT_LEAST
    }

    fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}

/// What a stream gave: each confirmed submission (id, when it was submitted
/// since the start, its result), the submits that failed, and the node the
/// submitter was on at the start and at the end (positions in its list).
struct Stream {
    submitted: Vec<(String, Duration, Result<TaskResult, String>)>,
    failed: Vec<(String, String)>,
    node_before: usize,
    node_after: usize,
    /// The reply queue all results come back on (a bulk client's), if one.
    reply_queue: Option<String>,
    /// From the last submit until the last result was in (or its wait gave up).
    results_in: Duration,
}

/// `echo ID` tasks one after another through one `Client` until `stop`; each
/// confirmed one is waited for (in the background) on the same client.
async fn client_stream(urls: &str, pool: &str, creds: Credentials, stop: Arc<Flags>) -> Stream {
    let c = Arc::new(
        Client::connect(urls)
            .await
            .expect("client on the cluster")
            .with_credentials(creds),
    );
    let node_before = c.node();
    let t0 = Instant::now();
    let (mut waits, mut failed) = (Vec::new(), Vec::new());
    let mut after = 0;
    while !stop.done(after) && t0.elapsed() < STREAM_AT_MOST {
        after += usize::from(stop.killed());
        let mut t = task("");
        t.script = format!("echo {}", t.id);
        let at = t0.elapsed();
        match tokio::time::timeout(SUBMIT_AT_MOST, c.submit(pool, &t)).await {
            Ok(Ok(())) => {
                let c = c.clone();
                waits.push((
                    t.id.clone(),
                    at,
                    tokio::spawn(async move { c.wait(&t.id, Some(T)).await }),
                ));
            }
            Ok(Err(e)) => failed.push((t.id.clone(), e.to_string())),
            Err(_) => failed.push((t.id.clone(), "hung 60 s".into())),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last_submit = Instant::now();
    let mut submitted = Vec::new();
    for (id, at, h) in waits {
        let r = h.await.expect("a waiter").map_err(|e| e.to_string());
        submitted.push((id, at, r));
    }
    Stream {
        submitted,
        failed,
        node_before,
        node_after: c.node(),
        reply_queue: None,
        results_in: last_submit.elapsed(),
    }
}

/// `echo ID` tasks through one `BulkClient` (replicated reply queue: its URL
/// list names three nodes), pipelined in bursts of 10 until `stop`.
async fn bulk_stream(urls: &str, pool: &str, creds: Credentials, stop: Arc<Flags>) -> Stream {
    let c = BulkClient::connect(urls)
        .await
        .expect("bulk client on the cluster")
        .with_credentials(creds);
    assert_eq!(c.replies(), Replies::Replicated);
    let node_before = c.node();
    let t0 = Instant::now();
    let (mut tickets, mut failed) = (Vec::new(), Vec::new());
    let mut after = 0;
    while !stop.done(after) && t0.elapsed() < STREAM_AT_MOST {
        after += usize::from(stop.killed());
        for _ in 0..10 {
            if t0.elapsed() >= STREAM_AT_MOST {
                break;
            }
            let mut t = task("");
            t.script = format!("echo {}", t.id);
            let at = t0.elapsed();
            match tokio::time::timeout(SUBMIT_AT_MOST, c.submit(pool, &t)).await {
                Ok(Ok(ticket)) => tickets.push((t.id.clone(), at, ticket)),
                Ok(Err(e)) => failed.push((t.id.clone(), e.to_string())),
                Err(_) => failed.push((t.id.clone(), "hung 60 s".into())),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One bound for all the results, not one per ticket (hundreds of tickets
    // each waiting T would look like a hang).
    let last_submit = Instant::now();
    let deadline = tokio::time::Instant::now() + T;
    let mut submitted = Vec::new();
    for (id, at, ticket) in tickets {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let r = ticket
            .result(Some(left.max(Duration::from_millis(1))))
            .await
            .map_err(|e| e.to_string());
        submitted.push((id, at, r));
    }
    let results_in = last_submit.elapsed();
    let node_after = c.node();
    let reply_queue = Some(c.reply_queue().to_string());
    c.close().await;
    Stream {
        submitted,
        failed,
        node_before,
        node_after,
        reply_queue,
        results_in,
    }
}

/// Starts node N again when dropped, also when the test fails midway (the
/// next scenario, or the next test binary, needs all three nodes).
struct StartOnDrop(&'static str);

impl Drop for StartOnDrop {
    fn drop(&mut self) {
        let script =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster");
        let _ = std::process::Command::new(script)
            .args(["start", self.0])
            .status();
    }
}

/// A control message from a client whose node was killed under it: the
/// client fails over and the cancel reaches the worker (on another node),
/// whose running task ends `cancelled`.
async fn control_through_a_kill(urls: &str) -> String {
    let pool = unique_pool("fo-control");
    let mut w = WorkerBuilder::new(&pool)
        .env("KRILL_AMQP_URL", &starting_at(urls, 2))
        .start()
        .await;
    w.keep_pool();
    let c = Client::connect(&starting_at(urls, 1))
        .await
        .expect("client on the cluster");
    assert_eq!(c.node(), 0, "the client is on node 1");
    let mut events = krill_tests::Events::at(
        &starting_at(urls, 2),
        &broker::topology::task_event_key(&pool, "started"),
    )
    .await;
    let t = task("sleep 60; echo not cancelled");
    c.submit(&pool, &t).await.expect("submit");
    events.wait_task(&t.id, T).await;
    cluster(&["kill", "1"]);
    let restart = StartOnDrop("1");
    let t0 = Instant::now();
    c.cancel(&t.id)
        .await
        .expect("the cancel fails over to another node");
    let sent = t0.elapsed();
    let r = c.wait(&t.id, Some(T)).await.expect("the result");
    assert_eq!(r.status, Status::Cancelled, "{r:?}\n{}", w.log_text());
    assert_ne!(c.node(), 0, "the client moved off the killed node");
    drop(restart);
    format!(
        "control: a cancel sent through a killed node went out in {:.2} s on node {}; the task ended cancelled",
        sent.as_secs_f64(),
        c.node() + 1
    )
}
