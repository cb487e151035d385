//! No false `worker_lost` (issue #18): a worker that loses its broker
//! connection (here a broker restart) while it runs a task that must not run
//! twice keeps running it; the task's redelivery reaches another worker, which
//! waits for the holder — alive by its heartbeats — instead of answering
//! `worker_lost`, and the holder's result is the one the submitter gets (the
//! redelivery is acked without a second). A SIGKILLed holder's task is still
//! answered `worker_lost`, within the bound (3 heartbeat intervals + 10 s).
//!
//! It restarts the whole node, so it is a test binary of its own. On a shared
//! machine point `KRILL_AMQP_URL` and `KRILL_RABBITMQ_NODE` at a private node
//! (`source scripts/lib.sh; krill_own_broker PORT`).

mod rabbitmq;

use std::time::{Duration, Instant};

use broker::protocol::Status;
use broker::topology;
use krill_tests::{client, task, unique_pool, Events, WorkerBuilder, WorkerProc};

const T: Duration = Duration::from_secs(120);

/// Polls `w`'s log until it contains `what`.
async fn log_says(w: &WorkerProc, what: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !w.log_text().contains(what) {
        assert!(
            Instant::now() < deadline,
            "{} never logged `{what}`; log:\n{}",
            w.id,
            w.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_by_a_broker_restart_gives_the_result_and_a_killed_one_worker_lost() {
    let _restore = rabbitmq::Restore::default();
    rabbitmq::wait_accepting(Duration::from_secs(30)).await;
    let pool = unique_pool("holder");
    let mut a = WorkerBuilder::new(&pool).start().await;
    a.keep_pool();
    let c = client().await;
    let mut started = Events::bind(&topology::task_event_key(&pool, "started")).await;
    let t = task("sleep 40; echo the real result");
    c.submit(&pool, &t).await.expect("submit");
    let v = started.wait_task(&t.id, T).await;
    assert_eq!(v["worker"], a.id.as_str(), "{v}");
    let mut b = WorkerBuilder::new(&pool).start().await;
    b.keep_pool();
    // A claims nothing more: the redelivery can only reach B.
    c.drain(Some(&a.id)).await.expect("drain A");
    log_says(&a, "draining: no more claims", T).await;
    // B hears A's heartbeats (every second) listing the task.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop((started, c));

    rabbitmq::stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    rabbitmq::start().await;
    let c = client().await;
    let mut finished = Events::bind(&topology::task_event_key(&pool, "finished")).await;
    log_says(&b, "still runs on a live worker", T).await;
    let r = c.wait(&t.id, Some(T)).await.expect("the result");
    assert_eq!(
        r.status,
        Status::Succeeded,
        "not worker_lost: {r:?}\nA:\n{}\nB:\n{}",
        a.log_text(),
        b.log_text()
    );
    assert_eq!(r.stdout, "the real result\n", "{r:?}");
    assert_eq!(
        r.worker.as_deref(),
        Some(a.id.as_str()),
        "A's result: {r:?}"
    );
    assert_eq!(r.attempt, 1, "{r:?}");
    log_says(&b, "was finished by the worker that held it", T).await;
    // Exactly one finished event (A's): B sent no result of its own.
    let v = finished.wait_task(&t.id, T).await;
    assert_eq!(v["worker"], a.id.as_str(), "{v}");
    let again = tokio::time::timeout(Duration::from_secs(3), finished.next(T)).await;
    assert!(again.is_err(), "a second finished event: {again:?}");

    // A real loss: A (resumed) is SIGKILLed while it runs a task; the worker
    // its redelivery reaches answers worker_lost once A is silent past the bound.
    drop(b);
    c.resume(Some(&a.id)).await.expect("resume A");
    log_says(&a, "resume requested", T).await;
    a.wait_consuming().await;
    let mut started = Events::bind(&topology::task_event_key(&pool, "started")).await;
    let t = task("sleep 60; echo never");
    c.submit(&pool, &t).await.expect("submit");
    let v = started.wait_task(&t.id, T).await;
    assert_eq!(v["worker"], a.id.as_str(), "{v}");
    let b = WorkerBuilder::new(&pool).start().await;
    // Past B's own reconnect grace, with A's heartbeats heard listing the task.
    tokio::time::sleep(Duration::from_secs(11)).await;
    a.kill();
    let killed = Instant::now();
    let r = c.wait(&t.id, Some(T)).await.expect("the result");
    let took = killed.elapsed();
    eprintln!("SIGKILLed holder answered worker_lost after {took:?}");
    assert_eq!(r.status, Status::WorkerLost, "{r:?}\nB:\n{}", b.log_text());
    assert_eq!(r.worker.as_deref(), Some(b.id.as_str()), "{r:?}");
    assert!(
        r.error.as_deref().unwrap_or("").contains(a.id.as_str()),
        "names the lost worker: {r:?}"
    );
    assert!(r.stdout.is_empty(), "not run again: {r:?}");
    // 3 intervals of 1 s + 10 s of grace, and the scheduling's slack.
    assert!(took < Duration::from_secs(20), "worker_lost after {took:?}");
    assert!(took > Duration::from_secs(10), "before the bound: {took:?}");
}
