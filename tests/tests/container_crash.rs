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
use krill_tests::{client, task, unique_pool, WorkerBuilder};
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
