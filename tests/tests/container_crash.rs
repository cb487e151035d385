//! A worker of the container sandbox SIGKILLed mid-task (a crash): its task's
//! container stops by itself (the engine closes the container's stdin with the
//! worker's attach connection, and krill-stub stops the script: SIGTERM, SIGKILL
//! 2 s later), and the next start of a worker sweeps it.
//!
//! The default sweep takes only containers stopped for at least `SWEEP_GRACE`
//! (30 s), so that it never races a live worker's own clean-up; the test waits
//! that long between the stop and the restart.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::{Duration, Instant};

use broker::protocol::{SandboxKind, Status};
use krill_tests::{client, task, unique_pool, Events, WorkerBuilder};
use worker::sandbox::container::SWEEP_GRACE;

const IMAGE: &str = "krill/base:1";
/// Bound for the task to start, and for the sweep to remove the container.
const DEADLINE: Duration = Duration::from_secs(60);
/// Bound for the container to stop once its worker died: the stub's 2 s grace,
/// plus the engine noticing the closed attach connection, under load.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// `docker ps -a` ids and states of the containers labelled with `task_id`.
fn containers(task_id: &str) -> Vec<(String, String)> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=krill.task={task_id}"),
            "--format",
            "{{.ID}} {{.State}}",
        ])
        .output()
        .expect("docker ps (is the engine running? scripts/test starts it)");
    assert!(
        out.status.success(),
        "docker ps failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, state)| (id.to_string(), state.to_string()))
        .collect()
}

async fn wait_until(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + bound;
    while !cond() {
        assert!(Instant::now() < until, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_workers_task_container_stops_and_the_next_start_sweeps_it() {
    let pool = unique_pool("container-crash");
    let b = WorkerBuilder::new(&pool)
        .arg("--sandbox")
        .arg("container")
        .arg("--image")
        .arg(IMAGE);
    let mut w = b.clone().start().await;
    let c = client().await;
    let mut t = task("trap '' TERM INT HUP; echo started; sleep 1000; sleep 1000");
    t.sandbox = Some(SandboxKind::Container);
    t.image = Some(IMAGE.into());
    c.submit(&pool, &t).await.unwrap();
    wait_until("the task's container runs", DEADLINE, || {
        containers(&t.id).iter().any(|(_, s)| s == "running")
    })
    .await;

    w.kill();
    // Nobody reads the task's output any more: the stub stops the script, even
    // with TERM trapped, and the container exits.
    wait_until(
        "the crashed worker's task container stops",
        STOP_DEADLINE,
        || {
            let found = containers(&t.id);
            !found.is_empty() && found.iter().all(|(_, s)| s != "running")
        },
    )
    .await;
    tokio::time::sleep(SWEEP_GRACE + Duration::from_secs(1)).await;

    w.restart(&b).await;
    wait_until("the sweep removes the container", DEADLINE, || {
        containers(&t.id).is_empty()
    })
    .await;
    // The redelivered task is not run again: it is reported lost.
    let r = c.wait(&t.id, Some(DEADLINE)).await.unwrap();
    assert_eq!(r.status, Status::WorkerLost, "{r:?}");
    assert!(
        containers(&t.id).is_empty(),
        "a container of the task came back"
    );
}

/// `docker ps -a` ids of every container worker `worker` made.
fn containers_of_worker(worker: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=krill.worker={worker}"),
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A container worker with its pre-started containers (2) and a running task,
/// killed with SIGKILL, and left dead.
async fn a_dead_worker_with_containers(name: &str) -> (String, Vec<String>) {
    let pool = unique_pool(name);
    let mut started = Events::bind(&broker::topology::task_event_key(&pool, "started")).await;
    let mut w = WorkerBuilder::new(&pool)
        .arg("--sandbox")
        .arg("container")
        .arg("--image")
        .arg(IMAGE)
        .arg("--prestart")
        .arg("2")
        .start()
        .await;
    let c = client().await;
    let mut t = task("trap '' TERM INT HUP; echo started; sleep 1000; sleep 1000");
    t.sandbox = Some(SandboxKind::Container);
    t.image = Some(IMAGE.into());
    c.submit(&pool, &t).await.unwrap();
    // In a pre-started container or a fresh one (labelled with the task).
    started.wait_task(&t.id, DEADLINE).await;
    wait_until("two containers pre-started besides", DEADLINE, || {
        containers_of_worker(&w.id).len() >= 3
    })
    .await;
    let found = containers_of_worker(&w.id);
    w.kill();
    (w.id.clone(), found)
}

/// Nothing of a SIGKILLed worker's (pre-started containers, a running task's)
/// is left within a minute of a successor starting (another id, another pool:
/// no task ever reaches it): it finds them by their worker's free lock, not by
/// their age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_removes_a_dead_workers_containers_without_any_task() {
    let (dead, found) = a_dead_worker_with_containers("successor").await;
    let successor = WorkerBuilder::new(&unique_pool("successor-next"))
        .arg("--sandbox")
        .arg("container")
        .arg("--image")
        .arg(IMAGE);
    let started = Instant::now();
    let _s = successor.start().await;
    wait_until(
        "the dead worker's containers are removed",
        Duration::from_secs(60),
        || containers_of_worker(&dead).is_empty(),
    )
    .await;
    eprintln!(
        "{} containers of the dead worker removed {:?} after its successor started",
        found.len(),
        started.elapsed()
    );
}

/// The same without a successor: a worker already running on the host (of
/// another pool) removes them on its periodic sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_worker_removes_a_dead_workers_containers_within_a_minute() {
    let _bystander = WorkerBuilder::new(&unique_pool("bystander"))
        .arg("--sandbox")
        .arg("container")
        .arg("--image")
        .arg(IMAGE)
        .start()
        .await;
    let (dead, found) = a_dead_worker_with_containers("reaped").await;
    let died = Instant::now();
    wait_until(
        "the dead worker's containers are removed",
        Duration::from_secs(60),
        || containers_of_worker(&dead).is_empty(),
    )
    .await;
    eprintln!(
        "{} containers of the dead worker removed {:?} after it died",
        found.len(),
        died.elapsed()
    );
}
