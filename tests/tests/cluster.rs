//! A three-node RabbitMQ cluster (scripts/cluster, ports 5681-5683 or
//! `KRILL_CLUSTER_PORT`): a worker and a CLI given all three URLs keep working
//! while the node they are connected to is SIGKILLed.
//!
//! The cluster is private to this test binary (its own node names, ports,
//! data and Erlang cookie); the test starts it when it is not running
//! (`scripts/cluster up`, ~45 s) and leaves it running for the next binary;
//! scripts/test tears it down. Nodes are killed and started with
//! `scripts/cluster kill|start N`, so every scenario runs inside one test, one
//! after another.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use broker::client::Client;
use broker::protocol::Status;
use broker::topology;
use krill_tests::{bin, task, unique_pool, Events, WorkerBuilder};

const T: Duration = Duration::from_secs(120);

fn cluster_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster")
}

fn cluster(args: &[&str]) -> String {
    let out = Command::new(cluster_script())
        .args(args)
        .output()
        .expect("running scripts/cluster");
    assert!(
        out.status.success(),
        "scripts/cluster {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The cluster's URLs, starting it when a node is not running.
fn cluster_urls() -> String {
    let status = cluster(&["status"]);
    if status.lines().take(3).any(|l| l.ends_with(": down")) {
        cluster(&["up"]);
    }
    cluster(&["urls"]).trim().to_string()
}

/// Which node (1..3) a worker log says it reached last.
fn node_of(log: &str, urls: &str) -> usize {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("broker node reached"))
        .unwrap_or_else(|| panic!("the worker never said which node it reached; log:\n{log}"));
    broker::amqp::urls(urls)
        .iter()
        .position(|u| line.contains(u))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("no URL of the list in `{line}`"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover() {
    let urls = cluster_urls();
    worker_and_cli_survive_their_node(&urls).await;
    quorum_loss_fails_submits_and_keeps_running_tasks(&urls).await;
}

/// Two of three nodes SIGKILLed: the last one pauses (pause_minority), so a
/// submit fails with an error instead of hanging; the task running meanwhile
/// finishes once, and its result reaches the submitter when the nodes are back.
async fn quorum_loss_fails_submits_and_keeps_running_tasks(urls: &str) {
    let pool = unique_pool("quorum");
    let mut w = WorkerBuilder::new(&pool)
        .env("KRILL_AMQP_URL", urls)
        .start()
        .await;
    w.keep_pool();
    let c = Client::connect(urls).await.expect("client on the cluster");
    let mut events = Events::at(urls, &topology::task_event_key(&pool, "started")).await;
    let t = task("sleep 4; echo after quorum");
    c.submit(&pool, &t).await.expect("submit");
    let v = events.wait_task(&t.id, T).await;
    assert_eq!(v["state"], "started", "{v}");

    cluster(&["kill", "1"]);
    cluster(&["kill", "2"]);
    let late = task("echo never");
    let tried = tokio::time::timeout(T, async {
        let c = Client::connect(urls).await?;
        c.submit(&pool, &late).await
    })
    .await
    .expect("a submit without quorum neither hung nor was silently dropped");
    match tried {
        Ok(()) => panic!("a submit with 2 of 3 nodes down was confirmed"),
        Err(e) => eprintln!("submit with 2 of 3 nodes down: {e}"),
    }

    cluster(&["start", "1"]);
    cluster(&["start", "2"]);
    let r = c
        .wait(&t.id, Some(T))
        .await
        .expect("the result once quorum is back");
    assert_eq!(
        r.status,
        Status::Succeeded,
        "{r:?}\nworker log:\n{}",
        w.log_text()
    );
    assert_eq!(r.stdout, "after quorum\n", "{r:?}");
    assert_eq!(r.attempt, 1, "run once: {r:?}");
}

/// A task runs on a worker connected to node N; node N is SIGKILLed mid-task.
/// The worker reconnects to another node and its result reaches the waiting
/// client (which reconnects too), run once; a `krill submit --wait` given the
/// three URLs afterwards works while node N is still down.
async fn worker_and_cli_survive_their_node(urls: &str) {
    let pool = unique_pool("cluster");
    let mut w = WorkerBuilder::new(&pool)
        .env("KRILL_AMQP_URL", urls)
        .start()
        .await;
    w.keep_pool();
    let node = node_of(&w.log_text(), urls);
    let c = Client::connect(urls).await.expect("client on the cluster");
    // The events tap lives on a node that stays up.
    let others: Vec<&str> = broker::amqp::urls(urls)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i + 1 != node)
        .map(|(_, u)| u)
        .collect();
    let mut events = Events::at(
        &others.join(","),
        &topology::task_event_key(&pool, "started"),
    )
    .await;
    let t = task("sleep 3; echo survived");
    c.submit(&pool, &t).await.expect("submit");
    let v = events.wait_task(&t.id, T).await;
    assert_eq!(v["state"], "started", "{v}");

    cluster(&["kill", &node.to_string()]);
    let r = c
        .wait(&t.id, Some(T))
        .await
        .expect("the result after the node died");
    assert_eq!(
        r.status,
        Status::Succeeded,
        "{r:?}\nworker log:\n{}",
        w.log_text()
    );
    assert_eq!(r.stdout, "survived\n", "{r:?}");
    assert_eq!(r.attempt, 1, "run once: {r:?}");
    let now = node_of(&w.log_text(), urls);
    assert_ne!(now, node, "the worker is on another node");
    // `krill status` says which node the worker is on now (from its heartbeat).
    let want = broker::amqp::urls(urls)[now - 1].to_string();
    let deadline = std::time::Instant::now() + T;
    loop {
        let out = Command::new(bin("krill"))
            .env("KRILL_AMQP_URL", urls)
            .args(["status", "--json", "--since", "1m"])
            .output()
            .expect("running krill status");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let on = v["workers"]
            .as_array()
            .and_then(|ws| ws.iter().find(|x| x["id"] == w.id.as_str()))
            .map(|x| x["broker"].clone());
        if on.as_ref().and_then(|b| b.as_str()) == Some(want.as_str()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "krill status never showed {} on {want}: {on:?}\n{}",
            w.id,
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The CLI, given the list, while node N is still down.
    let out = Command::new(bin("krill"))
        .env("KRILL_AMQP_URL", urls)
        .env("KRILL_POOL", &pool)
        .args(["submit", "--", "echo from the cli"])
        .output()
        .expect("running krill");
    assert!(
        out.status.success(),
        "krill submit --wait with node {node} down: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("from the cli"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    cluster(&["start", &node.to_string()]);
}
