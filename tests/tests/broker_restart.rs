//! Broker faults: a RabbitMQ restart under running tasks and under a waiting
//! `krill submit`, flow control (a memory alarm blocks publishers), and a task
//! that holds its delivery longer than the broker's `consumer_timeout`.
//!
//! Every scenario acts on the whole broker node (restart, alarm, global settings),
//! so they run one after another inside a single test, and a [`rabbitmq::Restore`]
//! guard puts the node back even when an assertion fails. cargo runs test binaries
//! one after another, so no other test of the same `cargo test` sees the broker
//! go away; on a shared machine, point `KRILL_AMQP_URL` and `KRILL_RABBITMQ_NODE`
//! at a private node (`scripts/chaos --own-broker` starts one).
//!
//! How the broker is restarted: `rabbitmqctl stop_app` then `start_app`. That
//! stops the RabbitMQ application inside the running Erlang node: the listeners
//! close (new connections are refused), every connection and channel is closed,
//! every queue process stops; `start_app` recovers durable queues and persistent
//! messages from disk (the pool's quorum queue from its log). That is all a client
//! can see of `service rabbitmq-server restart`, without restarting the Erlang VM
//! (slower, and it needs the init system).

mod rabbitmq;

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::protocol::{Status, TaskResult};
use broker::topology;
use krill_tests::{
    amqp_url, bin, client, task, unique_pool, Events, Gates, WorkerBuilder, WorkerProc,
};

const T: Duration = Duration::from_secs(120);
/// How long the broker stays away in the restart scenarios.
const AWAY: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_faults() {
    let mut restore = rabbitmq::Restore::default();
    rabbitmq::wait_accepting(Duration::from_secs(30)).await;
    running_tasks_survive_a_broker_restart().await;
    krill_submit_survives_a_broker_restart().await;
    flow_control_slows_the_worker_down(&mut restore).await;
    a_task_longer_than_consumer_timeout_runs_once(&mut restore).await;
}

fn alive(w: &mut WorkerProc) -> bool {
    w.child
        .as_mut()
        .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
}

async fn started(events: &mut Events, id: &str) {
    let v = events.wait_task(id, T).await;
    assert_eq!(v["state"], "started", "{v}");
}

/// Runs one more task on the worker and checks the first `started` event on `events`
/// is that task's: a task run again would have started before.
async fn serves_next_task_and_nothing_ran_again(pool: &str, events: &mut Events) {
    let c = client().await;
    let next = task("echo next");
    c.submit(pool, &next).await.expect("submit after the fault");
    let v = events.next(T).await;
    assert_eq!(v["task_id"], next.id.as_str(), "a task started again: {v}");
    let r = c.wait(&next.id, Some(T)).await.expect("result");
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "next\n");
}

fn assert_ran_once(r: &TaskResult, stdout: &str) {
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    assert_eq!(r.stdout, stdout, "{r:?}");
    assert_eq!(r.attempt, 1, "the result is the first run's: {r:?}");
}

/// (a) One task finishes while the broker is away, one after it is back; neither
/// is killed or run again, both results reach the waiting client, and the worker
/// goes on serving.
async fn running_tasks_survive_a_broker_restart() {
    let pool = unique_pool("restart");
    let key = topology::task_event_key(&pool, "started");
    let mut events = Events::bind(&key).await;
    // Files the test makes later show up inside the tasks: their gates.
    let gates = Gates::new();
    let mut w = WorkerBuilder::new(&pool)
        .arg("--concurrency")
        .arg("2")
        .gates(&gates)
        .start()
        .await;
    let c = Arc::new(client().await);
    let early = task(&format!(
        "echo early-start; {}; echo early-done",
        gates.wait("early")
    ));
    let late = task(&format!(
        "echo late-start; {}; echo late-done",
        gates.wait("late")
    ));
    c.submit(&pool, &early).await.expect("submit");
    c.submit(&pool, &late).await.expect("submit");
    started(&mut events, &early.id).await;
    started(&mut events, &late.id).await;
    let waits: Vec<_> = [&early.id, &late.id]
        .into_iter()
        .map(|id| {
            let (c, id) = (c.clone(), id.clone());
            tokio::spawn(async move { c.wait(&id, Some(T)).await })
        })
        .collect();

    let t0 = Instant::now();
    rabbitmq::stop().await;
    gates.open("early"); // finishes while the broker is away
    tokio::time::sleep(AWAY).await;
    rabbitmq::start().await;
    eprintln!("(a) broker away for {:?}", t0.elapsed());
    // The old binding went with the broker's restart; a task run again would
    // start (and say so) on the new one.
    let mut events = Events::bind(&key).await;
    w.wait_consuming().await;
    eprintln!(
        "(a) worker consuming again {:?} after the stop",
        t0.elapsed()
    );
    gates.open("late"); // finishes once the worker is back

    let mut results = Vec::new();
    for h in waits {
        results.push(h.await.expect("join").expect("result after the restart"));
    }
    eprintln!(
        "(a) both results {:?} after the broker was stopped",
        t0.elapsed()
    );
    assert_ran_once(&results[0], "early-start\nearly-done\n");
    assert_ran_once(&results[1], "late-start\nlate-done\n");
    assert!(alive(&mut w), "worker died; log:\n{}", w.log_text());
    assert!(
        w.log_text().contains("reconnecting"),
        "the worker never noticed: {}",
        w.log_text()
    );
    serves_next_task_and_nothing_ran_again(&pool, &mut events).await;
    assert_eq!(
        krill_tests::depth(&topology::pool_queue(&pool)).await,
        Some(0)
    );
}

/// (b) `krill submit`, waiting for its result, rides out the same restart.
async fn krill_submit_survives_a_broker_restart() {
    let pool = unique_pool("restart-cli");
    let mut events = Events::bind(&topology::task_event_key(&pool, "started")).await;
    let gates = Gates::new();
    let mut w = WorkerBuilder::new(&pool).gates(&gates).start().await;
    let script = format!(
        "echo cli-start; {}; echo cli-done; exit 3",
        gates.wait("go")
    );
    let cli = tokio::process::Command::new(bin("krill"))
        .env("KRILL_AMQP_URL", amqp_url())
        .env("KRILL_POOL", &pool)
        .args(["submit", "--", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("krill submit");
    events.next(T).await;
    let t0 = Instant::now();
    rabbitmq::stop().await;
    gates.open("go");
    tokio::time::sleep(AWAY).await;
    rabbitmq::start().await;
    let out = tokio::time::timeout(T, cli.wait_with_output())
        .await
        .expect("krill submit ended")
        .expect("krill submit output");
    eprintln!(
        "(b) krill submit ended {:?} after the broker was stopped",
        t0.elapsed()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(stdout, "cli-start\ncli-done\n", "stderr: {stderr}");
    assert!(alive(&mut w), "worker died; log:\n{}", w.log_text());
}

/// (c) A memory alarm blocks every publishing connection: the worker's result
/// waits (the task is not lost, the worker does not crash or spin), and arrives
/// once the alarm clears.
async fn flow_control_slows_the_worker_down(restore: &mut rabbitmq::Restore) {
    let pool = unique_pool("flow");
    let mut events = Events::bind(&topology::task_event_key(&pool, "started")).await;
    let gates = Gates::new();
    let mut w = WorkerBuilder::new(&pool).gates(&gates).start().await;
    let c = client().await;
    let t = task(&format!("{}; echo flow-done", gates.wait("go")));
    c.submit(&pool, &t).await.expect("submit");
    started(&mut events, &t.id).await;
    tokio::task::block_in_place(|| restore.memory_alarm());
    let alarm = Instant::now();
    gates.open("go");
    // The task ends during the alarm; its result cannot be published until it clears.
    let blocked = c.wait(&t.id, Some(Duration::from_secs(10))).await;
    assert!(
        blocked.is_err(),
        "a result was published during the alarm: {blocked:?}"
    );
    assert!(alive(&mut w), "worker died; log:\n{}", w.log_text());
    tokio::task::block_in_place(|| restore.clear_memory_alarm());
    let r = c
        .wait(&t.id, Some(T))
        .await
        .expect("result after the alarm");
    eprintln!(
        "(c) result {:?} after the alarm was raised (held 10 s)",
        alarm.elapsed()
    );
    assert_ran_once(&r, "flow-done\n");
    assert!(alive(&mut w), "worker died; log:\n{}", w.log_text());
    serves_next_task_and_nothing_ran_again(&pool, &mut events).await;
}

/// (d) A task running longer than the broker's `consumer_timeout`: the broker
/// closes the worker's consuming channel and requeues the delivery; the worker
/// reconnects, gets the delivery again and adopts it (the task runs on, once),
/// and the result is published and acked on the new delivery.
async fn a_task_longer_than_consumer_timeout_runs_once(restore: &mut rabbitmq::Restore) {
    // The broker checks the timeout on each channel's tick (every 60 s by default):
    // a 1 s tick, read when a channel opens, so set before the worker connects.
    tokio::task::block_in_place(|| {
        restore.set_env("channel_tick_interval", "1000");
        restore.set_env("consumer_timeout", "5000");
    });
    let pool = unique_pool("ctimeout");
    let mut events = Events::bind(&topology::task_event_key(&pool, "started")).await;
    let mut w = WorkerBuilder::new(&pool).start().await;
    let c = client().await;
    let t = task("echo long-start; sleep 14; echo long-done");
    c.submit(&pool, &t).await.expect("submit");
    started(&mut events, &t.id).await;
    let t0 = Instant::now();
    let r = c.wait(&t.id, Some(T)).await.expect("result");
    eprintln!("(d) result {:?} after the task started", t0.elapsed());
    let log = w.log_text();
    let closed = log.matches("reconnecting").count();
    let adopted = log.matches("adopted the new delivery").count();
    eprintln!(
        "(d) the broker closed the worker's channel {closed} times; adopted {adopted} redeliveries"
    );
    assert_ran_once(&r, "long-start\nlong-done\n");
    assert!(
        closed >= 1,
        "the broker never timed the consumer out; log:\n{log}"
    );
    assert!(adopted >= 1, "the redelivery was not adopted; log:\n{log}");
    assert!(alive(&mut w), "worker died; log:\n{log}");
    tokio::task::block_in_place(|| restore.restore_settings());
    serves_next_task_and_nothing_ran_again(&pool, &mut events).await;
}
