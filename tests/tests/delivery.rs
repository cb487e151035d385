//! Nothing lost: worker loss, delivery limit, cancel (running, queued, across
//! worker restarts), SIGTERM drain, remote drain/resume, the dead-letter queue.

use std::time::Duration;

use broker::protocol::{Status, Task};
use broker::topology;
use krill_tests::{client, task, unique_pool, Events, WorkerBuilder};

const T: Duration = Duration::from_secs(60);

async fn started(events: &mut Events, id: &str) {
    let v = events.wait_task(id, T).await;
    assert_eq!(v["state"], "started", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_worker_dies_is_not_run_again_unless_it_allows_it() {
    let pool = unique_pool("loss");
    let mut events = Events::bind(&topology::task_event_key(&pool, "started")).await;
    let b = WorkerBuilder::new(&pool);
    let mut w = b.clone().start().await;
    let c = client().await;

    let once = task("echo ran >&2; sleep 30");
    let mut twice = task("echo ran; sleep 3");
    twice.retry_on_worker_loss = true;
    c.submit(&pool, &once).await.expect("submit");
    c.submit(&pool, &twice).await.expect("submit");
    started(&mut events, &once.id).await;
    started(&mut events, &twice.id).await;
    w.kill();
    w.restart(&b).await;

    let r = c.wait(&once.id, Some(T)).await.expect("result");
    assert_eq!(r.status, Status::WorkerLost, "{r:?}");
    assert_eq!(r.attempt, 2);
    assert!(
        r.stderr.is_empty(),
        "a worker_lost task must not run again: {r:?}"
    );
    assert!(r
        .error
        .as_deref()
        .unwrap_or("")
        .contains("retry_on_worker_loss"));

    let r = c.wait(&twice.id, Some(T)).await.expect("result");
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    assert_eq!(r.attempt, 2, "{r:?}");
    assert_eq!(r.stdout, "ran\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_keeps_losing_its_worker_is_dead_lettered_and_answered() {
    let pool = unique_pool("limit");
    let mut events = Events::bind(&topology::task_event_key(&pool, "started")).await;
    let b = WorkerBuilder::new(&pool);
    let mut w = b.clone().start().await;
    let c = client().await;
    let mut t = task("sleep 60");
    t.retry_on_worker_loss = true;
    c.submit(&pool, &t).await.expect("submit");
    let mut kills = 0;
    let result = loop {
        tokio::select! {
            v = events.next(T) => {
                if v["task_id"] == t.id.as_str() {
                    w.kill();
                    kills += 1;
                    assert!(kills <= topology::DELIVERY_LIMIT + 2, "never dead-lettered");
                    w.restart(&b).await;
                }
            }
            r = c.wait(&t.id, Some(T)) => break r.expect("result"),
        }
    };
    assert_eq!(result.status, Status::WorkerLost, "{result:?}");
    let err = result.error.unwrap_or_default();
    assert!(
        err.contains("delivery_limit") || err.contains("delivery limit"),
        "{err}"
    );
    let dead = c.dead_list().await.expect("dead list");
    let d = dead
        .iter()
        .find(|d| d.id.as_deref() == Some(t.id.as_str()))
        .expect("in krill.dead");
    assert!(d.reason.contains("delivery limit"), "{d:?}");
    assert_eq!(d.pool.as_deref(), Some(pool.as_str()));
    // Clean up: it would otherwise stay in krill.dead forever.
    let _ = drain_dead(&c, &t.id).await;
}

async fn drain_dead(c: &broker::client::Client, id: &str) -> Option<()> {
    use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
    use lapin::types::ShortString;
    let mut held = Vec::new();
    while let Some(m) = c
        .channel()
        .basic_get(
            ShortString::from(topology::DEAD_QUEUE),
            BasicGetOptions { no_ack: false },
        )
        .await
        .ok()?
    {
        if m.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str())
            == Some(id)
        {
            m.delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .ok()?;
        } else {
            held.push(m.delivery.acker);
        }
    }
    for a in held {
        a.nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .ok()?;
    }
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_task_and_keeps_its_output() {
    let pool = unique_pool("cancel");
    let mut events = Events::bind(&topology::task_event_key(&pool, "started")).await;
    let _w = WorkerBuilder::new(&pool).start().await;
    let c = client().await;
    let t = task("trap '' TERM; echo before; sleep 60; echo after");
    c.submit(&pool, &t).await.expect("submit");
    started(&mut events, &t.id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = std::time::Instant::now();
    c.cancel(&t.id).await.expect("cancel");
    let r = c.wait(&t.id, Some(T)).await.expect("result");
    assert_eq!(r.status, Status::Cancelled, "{r:?}");
    assert_eq!(r.exit_code_for_cli(), 130);
    assert_eq!(r.stdout, "before\n");
    assert!(
        r.error.as_deref().unwrap_or("").contains("krill cancel"),
        "{r:?}"
    );
    // TERM is trapped: the grace then KILL. Generous bound, not a benchmark.
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "{:?}",
        asked.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_task_cancelled_while_no_worker_runs_is_never_started() {
    let pool = unique_pool("qcancel");
    let b = WorkerBuilder::new(&pool);
    let mut w = b.clone().start().await;
    w.kill(); // the pool queue exists; nobody serves it now
    let c = client().await;
    let t = task("echo should-never-run");
    c.submit(&pool, &t).await.expect("submit");
    c.cancel(&t.id).await.expect("cancel");
    // A worker that was not running when the cancel was sent learns it from the
    // cancellation stream before it runs the task.
    w.restart(&b).await;
    let r = c.wait(&t.id, Some(T)).await.expect("result");
    assert_eq!(r.status, Status::Cancelled, "{r:?}");
    assert!(r.stdout.is_empty());
    assert_eq!(r.error.as_deref(), Some("cancelled before it started"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_finishes_what_fits_the_grace_and_cancels_the_rest() {
    let pool = unique_pool("term");
    let mut events = Events::bind(&topology::task_event_key(&pool, "started")).await;
    let mut w = WorkerBuilder::new(&pool)
        .arg("--concurrency")
        .arg("2")
        .arg("--shutdown-grace")
        .arg("3s")
        .start()
        .await;
    let c = client().await;
    let short = task("sleep 1; echo short-done");
    let long = task("echo long-start; sleep 60");
    let queued = task("echo queued");
    c.submit(&pool, &short).await.expect("submit");
    c.submit(&pool, &long).await.expect("submit");
    started(&mut events, &short.id).await;
    started(&mut events, &long.id).await;
    c.submit(&pool, &queued).await.expect("submit");
    w.signal(15);
    let r = c.wait(&short.id, Some(T)).await.expect("result");
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    let r = c.wait(&long.id, Some(T)).await.expect("result");
    assert_eq!(r.status, Status::Cancelled, "{r:?}");
    assert!(
        r.error.as_deref().unwrap_or("").contains("worker shutdown"),
        "{r:?}"
    );
    assert_eq!(r.stdout, "long-start\n");
    assert_eq!(
        w.wait_exit(T).await,
        Some(0),
        "worker exit code; log:\n{}",
        w.log_text()
    );
    // The task submitted during the drain was never claimed: still in the queue.
    assert_eq!(
        krill_tests::depth(&topology::pool_queue(&pool)).await,
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_drain_stops_claiming_and_resume_restarts() {
    let pool = unique_pool("drain");
    let w = WorkerBuilder::new(&pool).start().await;
    let c = client().await;
    c.drain(Some(&w.id)).await.expect("drain");
    let queue = topology::pool_queue(&pool);
    for _ in 0..100 {
        if krill_tests::consumers(&queue).await == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        krill_tests::consumers(&queue).await,
        Some(0),
        "still consuming after drain"
    );
    let t = task("echo after-resume");
    c.submit(&pool, &t).await.expect("submit");
    assert!(
        c.wait(&t.id, Some(Duration::from_secs(2))).await.is_err(),
        "ran while drained"
    );
    c.resume(None).await.expect("resume");
    let r = c.wait(&t.id, Some(T)).await.expect("result");
    assert_eq!(r.status, Status::Succeeded);
    assert_eq!(r.stdout, "after-resume\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_with_reasons_and_can_be_replayed() {
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
    let pool = unique_pool("dead");
    let _w = WorkerBuilder::new(&pool).start().await;
    let c = client().await;
    // A malformed message the worker dead-letters with its reason.
    let bad_id = krill_tests::new_id();
    broker::topology::declare_reply_queue(&c.channel(), &bad_id)
        .await
        .expect("reply queue");
    let props = broker::client::task_properties(&Task::new(bad_id.clone(), "x"));
    c.channel()
        .basic_publish(
            ShortString::from(topology::TASKS_EXCHANGE),
            ShortString::from(pool.as_str()),
            Default::default(),
            br#"{"version":1,"script":"no id"}"#,
            props,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let r = c.wait(&bad_id, Some(T)).await.expect("rejected result");
    assert_eq!(r.status, Status::Rejected);
    let dead = c.dead_list().await.expect("list");
    let d = dead
        .iter()
        .find(|d| d.id.as_deref() == Some(bad_id.as_str()))
        .expect("listed");
    assert!(d.reason.contains("missing field `id`"), "{d:?}");
    assert_eq!(d.pool.as_deref(), Some(pool.as_str()));
    let _ = drain_dead(&c, &bad_id).await;

    // A good task sitting in krill.dead is replayed to its pool and runs.
    let t = task("echo replayed");
    broker::topology::declare_reply_queue(&c.channel(), &t.id)
        .await
        .expect("reply queue");
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("x-krill-pool"),
        AMQPValue::LongString(LongString::from(pool.as_str())),
    );
    headers.insert(
        ShortString::from(topology::REASON_HEADER),
        AMQPValue::LongString(LongString::from("test")),
    );
    let props = broker::client::task_properties(&t).with_headers(headers);
    broker::amqp::publish_confirmed(
        &c.channel(),
        topology::DEAD_EXCHANGE,
        "",
        &serde_json::to_vec(&t).expect("json"),
        props,
        false,
    )
    .await
    .expect("dead publish");
    let (done, _) = c.dead_replay(Some(&t.id)).await.expect("replay");
    assert_eq!(done, vec![t.id.clone()]);
    let r = c.wait(&t.id, Some(T)).await.expect("result");
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "replayed\n");
}

/// Polls `w`'s log until it contains `what`.
async fn log_says(w: &krill_tests::WorkerProc, what: &str) {
    let deadline = std::time::Instant::now() + T;
    while !w.log_text().contains(what) {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never logged `{what}`; log:\n{}",
            w.id,
            w.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 18: a delivery lost in flight (its consumer's connection died before
/// anything started it) is run, not answered `worker_lost`: the worker that
/// gets it again asks its peers, and once every worker that may have had it
/// (here A, alive and drained) promised never to start it, it runs it — once.
/// The lost consumer is a bare AMQP consumer that takes the delivery and
/// closes its connection; a Krill worker losing its connection in the same
/// instant is the rolling restart's case (`cluster.rs`). About 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_lost_in_flight_is_run_once_not_answered_worker_lost() {
    use futures_util::StreamExt;
    use lapin::options::{BasicConsumeOptions, BasicQosOptions};
    use lapin::types::FieldTable;
    let pool = unique_pool("inflight");
    let a = WorkerBuilder::new(&pool).start().await;
    let c = client().await;
    c.drain(Some(&a.id)).await.expect("drain A");
    log_says(&a, "draining: no more claims").await;
    let mut started_ev = Events::bind(&topology::task_event_key(&pool, "started")).await;

    // The delivery goes to a consumer that never starts it and goes away.
    let conn = broker::amqp::connect_first(
        &krill_tests::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut lost = ch
        .basic_consume(
            topology::pool_queue(&pool).as_str().into(),
            "lost-in-flight".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let t = task("echo ran once");
    c.submit(&pool, &t).await.expect("submit");
    let d = tokio::time::timeout(T, lost.next())
        .await
        .expect("delivered")
        .expect("a delivery")
        .expect("ok");
    assert_eq!(
        serde_json::from_slice::<Task>(&d.data).expect("task").id,
        t.id
    );
    conn.close(200, "gone".into()).await.expect("close");

    let b = WorkerBuilder::new(&pool).start().await;
    let r = c.wait(&t.id, Some(T)).await.expect("result");
    assert_eq!(
        r.status,
        Status::Succeeded,
        "not worker_lost: {r:?}\nA:\n{}\nB:\n{}",
        a.log_text(),
        b.log_text()
    );
    assert_eq!(r.stdout, "ran once\n", "{r:?}");
    assert_eq!(r.worker.as_deref(), Some(b.id.as_str()), "{r:?}");
    assert_eq!(r.attempt, 2, "the second delivery ran it: {r:?}");
    log_says(&b, "never started anywhere").await;
    // Started once (by B): A never did.
    let v = started_ev.wait_task(&t.id, T).await;
    assert_eq!(v["worker"], b.id.as_str(), "{v}");
    let again = tokio::time::timeout(Duration::from_secs(2), started_ev.next(T)).await;
    assert!(again.is_err(), "a second start: {again:?}");
}

/// The task id is the idempotency handle: the same task submitted again (a
/// caller retrying a submit that failed after its publish left) while it runs
/// and after it finished is not run again; the copies are answered from the
/// one run. About 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_task_id_submitted_again_runs_once() {
    let pool = unique_pool("again");
    let mut started_ev = Events::bind(&topology::task_event_key(&pool, "started")).await;
    let w = WorkerBuilder::new(&pool)
        .env("KRILL_CONCURRENCY", "2")
        .start()
        .await;
    let c = client().await;
    let t = task("sleep 3; echo ran");
    c.submit(&pool, &t).await.expect("submit");
    let v = started_ev.wait_task(&t.id, T).await;
    assert_eq!(v["worker"], w.id.as_str(), "{v}");
    // Once its heartbeat lists it (every second), a copy is held, not run.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.submit(&pool, &t)
        .await
        .expect("submit again while it runs");
    let r = c.wait(&t.id, Some(T)).await.expect("result");
    assert_eq!(r.status, Status::Succeeded, "{r:?}\n{}", w.log_text());
    assert_eq!(r.stdout, "ran\n");
    // And once it finished: answered from its result.
    c.submit(&pool, &t).await.expect("submit again after");
    let r2 = c.wait(&t.id, Some(T)).await.expect("result again");
    assert_eq!(r2.status, Status::Succeeded, "{r2:?}");
    assert_eq!(r2.timings.started_at, r.timings.started_at, "the same run");
    let again = tokio::time::timeout(Duration::from_secs(2), started_ev.next(T)).await;
    assert!(again.is_err(), "started twice: {again:?}\n{}", w.log_text());
    assert_eq!(
        krill_tests::depth(&topology::pool_queue(&pool)).await,
        Some(0)
    );
}

/// A result whose reply queue is gone (deleted, or expired) comes back
/// unroutable; the worker looks whether the queue is really gone before it
/// believes it (a stopping cluster node can return a result for a queue that
/// is still there: `cluster.rs`'s rolling restart), then lets it go: the task
/// is acked, not run again, and the worker takes the next one. About 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_for_a_deleted_reply_queue_is_let_go_after_a_look() {
    let pool = unique_pool("gone");
    let mut events = Events::bind(&topology::task_event_key(&pool, "*")).await;
    let w = WorkerBuilder::new(&pool).start().await;
    let c = client().await;

    let orphan = task("sleep 1; echo late");
    c.submit(&pool, &orphan).await.expect("submit");
    started(&mut events, &orphan.id).await;
    krill_tests::delete_queue(&topology::reply_queue(&orphan.id)).await;
    log_says(&w, "reply queue is gone").await;
    assert!(
        !w.log_text().contains("its reply queue exists"),
        "a deleted queue was taken for one still there:\n{}",
        w.log_text()
    );

    let next = task("echo next");
    c.submit(&pool, &next).await.expect("submit");
    let r = c.wait(&next.id, Some(T)).await.expect("result");
    assert_eq!(r.stdout, "next\n", "{r:?}");
    let runs = w
        .log_text()
        .lines()
        .filter(|l| l.contains(orphan.id.as_str()) && l.contains("task finished"))
        .count();
    assert_eq!(runs, 1, "the orphan ran once:\n{}", w.log_text());
    assert_eq!(
        krill_tests::depth(&topology::pool_queue(&pool)).await,
        Some(0)
    );
}
