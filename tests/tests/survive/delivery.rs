//! Issue #20's delivery cases: whatever a task printed, its result reaches
//! the client and the worker goes on — a result over the broker's limit is cut
//! to the budget, one the broker refuses becomes a small one, a worker that
//! cannot publish results degrades (stops claiming, says so, fails `/readyz`)
//! and recovers, and SIGTERM always ends it.

use std::time::{Duration, Instant};

use broker::protocol::{Status, Task};
use krill_tests::{client, run_task, task, unique_pool, WorkerBuilder};

use super::{answers_a_trivial_task, measured, prepare, worker, Sb};

/// A port nothing listens on right now, for `--metrics-addr`.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on the worker's HTTP port: (status code, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

/// Issue #20, case 1: the issue's own task — NUL on both streams (each byte six
/// in JSON), a full output file — under a broker limit the raw output would
/// pass many times: the result arrives cut to the budget, says what was cut,
/// and the worker goes on; SIGTERM then ends it.
async fn the_issues_result_is_delivered_cut_to_fit(sb: Sb) {
    let mut w = worker(
        sb,
        "survive-huge",
        &[
            "--broker-max-message-bytes",
            "16m",
            "--output-bytes",
            "6m",
            "--max-output-bytes",
            "6m",
        ],
    )
    .await;
    let script = r#"head -c 6291456 /dev/zero; head -c 6291456 /dev/zero >&2; yes x | head -c 1048000 >> "$KRILL_OUTPUT""#;
    let t = prepare(task(script), sb);
    let (r, cpu, rss) = measured(&w, &t, &format!("{sb:?} huge result")).await;
    let size = serde_json::to_vec(&r).unwrap().len();
    eprintln!("{sb:?}: result of {size} bytes (budget {})", 15 << 20);
    assert_eq!(r.status, Status::Succeeded, "{:?}", r.error);
    assert!(size <= 15 << 20, "{size}");
    assert!(r.truncated);
    let warning = r.warnings.last().unwrap();
    assert!(warning.contains("cut to fit"), "{warning}");
    assert!(r.output_errors.len() <= 101);
    assert!(
        !r.stdout.is_empty() && !r.stderr.is_empty(),
        "both streams keep a share"
    );
    assert!(
        cpu < 60_000 && rss < 400 * 1024,
        "cpu {cpu} ms, rss {rss} KiB"
    );
    answers_a_trivial_task(&w, sb).await;
    w.signal(libc::SIGTERM);
    let code = w.wait_exit(Duration::from_secs(120)).await;
    assert_eq!(code, Some(0), "the worker did not stop on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issues_result_is_delivered_cut_to_fit_process() {
    the_issues_result_is_delivered_cut_to_fit(Sb::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issues_result_is_delivered_cut_to_fit_container() {
    the_issues_result_is_delivered_cut_to_fit(Sb::Container).await;
}

/// A pool whose largest output caps cannot fit a result under the broker's
/// limit is refused at start, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_caps_that_cannot_fit_are_refused_at_start() {
    let out = std::process::Command::new(krill_tests::bin("krill-worker"))
        .env("KRILL_POOL", unique_pool("survive-caps"))
        // An open pool, so that the caps are what it is refused for.
        .env("KRILL_ALLOW_UNSIGNED", "true")
        .args([
            "--max-output-bytes",
            "64m",
            "--broker-max-message-bytes",
            "128m",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("--max-output-bytes") && stderr.contains("max_message_size"),
        "{stderr}"
    );
}

/// The broker refuses a result for good (its `max_message_size` is 1 MiB; the
/// worker was told 64 MiB): a small result saying so arrives instead, the
/// closed channel is opened again, and the next task is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_result_becomes_a_small_one_and_the_worker_goes_on() {
    let broker = krill_tests::PrivateBroker::start(&["max_message_size = 1048576"]);
    let pool = unique_pool("survive-refused");
    let w = WorkerBuilder::new(&pool)
        .env("KRILL_AMQP_URL", &broker.url())
        .arg("--sandbox")
        .arg("process")
        .arg("--broker-max-message-bytes")
        .arg("64m")
        .arg("--max-output-bytes")
        .arg("8m")
        .arg("--output-bytes")
        .arg("8m")
        .start()
        .await;
    let c = broker::client::Client::connect(&broker.url())
        .await
        .unwrap();
    let t = task("yes x | head -c 4194304; exit 3");
    let r = run_task(&c, &w.pool, &t).await;
    assert_eq!(r.status, Status::SandboxError, "{r:?}");
    let e = r.error.as_deref().unwrap();
    assert!(
        e.contains("ended failed (exit code 3)") && e.contains("refused"),
        "{e}"
    );
    assert!(r.stdout.is_empty() && r.truncated);
    // The channel the refusal closed is replaced: the next result goes out.
    let next = run_task(&c, &w.pool, &task("echo trivial")).await;
    assert_eq!(next.status, Status::Succeeded, "{next:?}");
    assert_eq!(next.stdout, "trivial\n");
    let log = w.log_text();
    assert!(log.contains("refused the result for good"), "{log}");
    assert!(log.contains("opened another"), "{log}");
}

/// Declares the reply queue of `t` so that it takes nothing (`x-max-length`
/// 0, reject-publish: every publish to it is nacked) and publishes `t` to
/// `pool` by hand (a client's submit would declare the reply queue itself).
async fn submit_with_a_full_reply_queue(pool: &str, t: &Task) {
    use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
    let conn = lapin::Connection::connect(
        &krill_tests::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-max-length"), AMQPValue::LongLongInt(0));
    args.insert(
        ShortString::from("x-overflow"),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    ch.queue_declare(
        ShortString::from(broker::topology::reply_queue(&t.id)),
        QueueDeclareOptions::default(),
        args,
    )
    .await
    .unwrap();
    ch.basic_publish(
        ShortString::from(broker::topology::TASKS_EXCHANGE),
        ShortString::from(pool),
        BasicPublishOptions::default(),
        &serde_json::to_vec(t).unwrap(),
        broker::client::task_properties(t),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let _ = conn.close(200, ShortString::from("bye")).await;
}

/// A worker that cannot publish results (its reply queue nacks every
/// publish) for longer than `--degraded-after` stops claiming, says
/// `degraded` in its heartbeat and fails `/readyz`; once results go out again
/// (the queue is gone: the result is unroutable, which is settled) it claims
/// again and the task that waited runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_publish_results_degrades_and_recovers() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let w = worker(
        Sb::Process,
        "survive-degraded",
        &["--degraded-after", "2s", "--metrics-addr", &addr],
    )
    .await;
    let mut beats = krill_tests::Events::bind(&broker::topology::heartbeat_key(&w.id)).await;
    let stuck = prepare(task("echo stuck"), Sb::Process);
    submit_with_a_full_reply_queue(&w.pool, &stuck).await;
    // Degraded: the heartbeat says why.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let hb = beats.next(left).await;
        if hb["degraded"] == "cannot publish results" {
            break;
        }
    }
    let (code, body) = http_get(port, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("degraded: cannot publish results"), "{body}");
    // No more claims: a task submitted now stays ready on the pool queue over
    // the next heartbeats, each still saying degraded. (The consumer count
    // says nothing here: a quorum queue keeps a cancelled consumer while it
    // holds an unacked delivery, the stuck task's.)
    let queue = broker::topology::pool_queue(&w.pool);
    let c = client().await;
    let waiting = prepare(task("echo waited"), Sb::Process);
    c.submit(&w.pool, &waiting).await.unwrap();
    for _ in 0..3 {
        let hb = beats.next(Duration::from_secs(30)).await;
        assert_eq!(hb["degraded"], "cannot publish results", "{hb}");
        assert_eq!(
            krill_tests::depth(&queue).await,
            Some(1),
            "a task was claimed"
        );
    }
    // Results go out again: the full queue is gone.
    krill_tests::delete_queue(&broker::topology::reply_queue(&stuck.id)).await;
    let r = c
        .wait(&waiting.id, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(r.status, Status::Succeeded);
    assert_eq!(r.stdout, "waited\n");
    let (code, body) = http_get(port, "/readyz");
    assert_eq!(code, 200, "{body}");
    assert!(w.log_text().contains("degraded: no more claims"));
}

/// SIGTERM ends a worker whose results cannot go out: within the grace, the
/// time results may still take, and the watchdog's bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_worker_whose_results_cannot_go_out() {
    let mut w = worker(Sb::Process, "survive-sigterm", &["--shutdown-grace", "1s"]).await;
    let stuck = prepare(task("echo stuck"), Sb::Process);
    submit_with_a_full_reply_queue(&w.pool, &stuck).await;
    let until = Instant::now() + Duration::from_secs(60);
    while !w.log_text().contains("publish failed; will retry") {
        assert!(Instant::now() < until, "the result never failed to go out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.signal(libc::SIGTERM);
    let started = Instant::now();
    let code = w.wait_exit(Duration::from_secs(120)).await;
    eprintln!("exited {code:?} {:?} after SIGTERM", started.elapsed());
    assert!(code.is_some(), "still running 120 s after SIGTERM");
    krill_tests::delete_queue(&broker::topology::reply_queue(&stuck.id)).await;
}

/// A host dir with the file a task waits for; removed on drop.
struct Gate(std::path::PathBuf);

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `GET /readyz` until `done(code, body)` says so (or a panic after `within`).
async fn readyz_until(port: u16, within: Duration, done: impl Fn(u16, &str) -> bool) -> String {
    let until = Instant::now() + within;
    loop {
        let (code, body) = tokio::task::spawn_blocking(move || http_get(port, "/readyz"))
            .await
            .unwrap();
        if done(code, &body) {
            return body;
        }
        assert!(Instant::now() < until, "/readyz still says {code}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The broker blocks every publisher (a memory alarm: `vm_memory_high_watermark`
/// 0) while a task runs: its result waits for a confirm that does not come, and
/// after `--degraded-after` the worker is degraded (`/readyz` 503, saying so)
/// although no publish *failed*. Once the alarm is cleared the result arrives,
/// `/readyz` is 200 again and the next task is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_blocks_publishers_degrades_the_worker_until_it_lets_go() {
    let broker = krill_tests::PrivateBroker::start(&[]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // The task ends only once the alarm is on: it waits for a file in a host
    // dir bound into its view (`--process-bind`, read-only; a file made there
    // later shows through).
    let gate = Gate(std::path::PathBuf::from(format!(
        "/var/tmp/krill-test-gate-{}",
        uuid::Uuid::new_v4().simple()
    )));
    std::fs::create_dir_all(&gate.0).unwrap();
    let w = WorkerBuilder::new(&unique_pool("survive-blocked"))
        .env("KRILL_AMQP_URL", &broker.url())
        .arg("--process-bind")
        .arg(&format!("{}:/gate", gate.0.display()))
        .arg("--sandbox")
        .arg("process")
        .arg("--degraded-after")
        .arg("2s")
        .arg("--metrics-addr")
        .arg(&addr)
        .start()
        .await;
    readyz_until(port, Duration::from_secs(60), |code, _| code == 200).await;
    let c = broker::client::Client::connect(&broker.url())
        .await
        .unwrap();
    let t = task("while [ ! -e /gate/open ]; do sleep 0.1; done; echo after-the-alarm");
    c.submit(&w.pool, &t).await.unwrap();
    // Publishing stops for everyone; consuming goes on (the worker has the task).
    let alarm = broker.ctl(&["set_vm_memory_high_watermark", "0"]);
    assert!(alarm.status.success(), "{alarm:?}");
    std::fs::write(gate.0.join("open"), b"").unwrap();
    let body = readyz_until(port, Duration::from_secs(90), |code, _| code == 503).await;
    assert!(body.contains("degraded: cannot publish results"), "{body}");
    let log = w.log_text();
    assert!(
        !log.contains("publish failed"),
        "no publish failed: it waits; {log}"
    );
    let cleared = broker.ctl(&["set_vm_memory_high_watermark", "0.4"]);
    assert!(cleared.status.success(), "{cleared:?}");
    let r = c.wait(&t.id, Some(Duration::from_secs(90))).await.unwrap();
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "after-the-alarm\n");
    readyz_until(port, Duration::from_secs(60), |code, _| code == 200).await;
    let next = run_task(&c, &w.pool, &task("echo trivial")).await;
    assert_eq!(next.status, Status::Succeeded, "{next:?}");
}
