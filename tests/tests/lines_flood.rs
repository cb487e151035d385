//! A submitter floods `krill.keys` with announcements of bogus concurrency keys
//! for a pool (announcements are unsigned: every submitter may publish them).
//! Measured from outside: the worker's memory, how many lines it serves, and
//! the submit → result latency of plain tasks before and after; asserted: the
//! worker serves at most `--max-lines` lines and says so once, plain tasks and
//! a key it served before the flood still run, and a key announced past the
//! cap waits (nothing lost) instead of taking a channel.
//!
//! `KRILL_FLOOD_KEYS` (default 300) keys are announced; `KRILL_FLOOD_CAP`
//! (default 100) is the worker's `--max-lines`. For the README's figures it
//! ran on a private node with 2,500 keys, with and without the cap.

use std::time::{Duration, Instant};

use broker::client::{Client, Peek};
use broker::protocol::{KeyAnnounce, Status, Task};
use broker::topology;
use krill_tests::{amqp_url, client, task, unique_pool, WorkerBuilder, WorkerProc};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Connection, ConnectionProperties};

const T: Duration = Duration::from_secs(60);
const SERVING: &str = "serving the line of a concurrency key";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// p50 and max (ms) of `n` plain tasks run one after another.
async fn latency(c: &Client, pool: &str, n: usize) -> (u128, u128) {
    let mut ms = Vec::new();
    for _ in 0..n {
        let t = task("true");
        let at = Instant::now();
        c.submit(pool, &t).await.expect("submit");
        let r = c.wait(&t.id, Some(T)).await.expect("result");
        assert_eq!(r.status, Status::Succeeded, "{r:?}");
        ms.push(at.elapsed().as_millis());
    }
    ms.sort_unstable();
    (ms[ms.len() / 2], ms[ms.len() - 1])
}

fn keyed(key: &str) -> Task {
    let mut t = task("echo keyed");
    t.concurrency_key = Some(key.into());
    t
}

fn served(w: &WorkerProc) -> usize {
    w.log_text().matches(SERVING).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_key_announcements_is_capped_and_plain_tasks_keep_running() {
    let keys = env_or("KRILL_FLOOD_KEYS", 300);
    let cap = env_or("KRILL_FLOOD_CAP", 100);
    let pool = unique_pool("flood");
    let w = WorkerBuilder::new(&pool)
        .arg("--max-lines")
        .arg(&cap.to_string())
        .start()
        .await;
    let c = client().await;
    let before = latency(&c, &pool, 20).await;
    let early = keyed("early");
    c.submit(&pool, &early).await.expect("submit");
    let r = c.wait(&early.id, Some(T)).await.expect("keyed result");
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    let rss_before = w.rss_kib();

    // The flood, as any submitter may send it.
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let flood_at = Instant::now();
    let mut confirms = Vec::new();
    for i in 0..keys {
        let body = serde_json::to_vec(&KeyAnnounce {
            version: broker::protocol::PROTOCOL_VERSION,
            pool: pool.clone(),
            key: format!("flood-{i}"),
        })
        .expect("json");
        confirms.push(
            ch.basic_publish(
                ShortString::from(topology::LINES_EXCHANGE),
                ShortString::from(topology::KEYS_STREAM),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .expect("publish"),
        );
    }
    for cf in confirms {
        cf.await.expect("confirm");
    }
    // Until the worker stops taking on lines (no new one for 3 s).
    let mut last = (served(&w), Instant::now());
    while last.1.elapsed() < Duration::from_secs(3) && flood_at.elapsed() < T * 2 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let n = served(&w);
        if n != last.0 {
            last = (n, Instant::now());
        }
    }
    let lines = served(&w);
    let settled = flood_at.elapsed();
    let rss_after = w.rss_kib();
    let after = latency(&c, &pool, 20).await;
    eprintln!(
        "flood of {keys} keys (cap {cap}): lines served {lines} after {settled:?}; worker RSS \
         {rss_before} -> {rss_after} KiB; plain task p50/max {before:?} -> {after:?} ms"
    );

    // A key served before the flood still runs its tasks.
    let again = keyed("early");
    c.submit(&pool, &again).await.expect("submit");
    let r = c.wait(&again.id, Some(T)).await.expect("keyed result");
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    if keys + 1 > cap {
        assert_eq!(lines, cap, "the worker serves exactly its cap of lines");
        let log = w.log_text();
        assert_eq!(
            log.matches("the cap of concurrency-key lines is reached")
                .count(),
            1,
            "said once: {}",
            &log[log.len().saturating_sub(2000)..]
        );
        // A key announced past the cap waits in its line: nothing lost, no channel taken.
        let late = keyed("late");
        c.submit(&pool, &late).await.expect("submit");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            matches!(c.peek(&late.id).await.expect("peek"), Peek::Pending),
            "a key past the cap is not served"
        );
        assert_eq!(
            krill_tests::depth(&topology::line_queue(&pool, "late")).await,
            Some(1),
            "it waits in its line"
        );
        krill_tests::delete_queue(&topology::line_queue(&pool, "late")).await;
    }
    // The flood's line queues (the worker declared those it served).
    for i in 0..keys {
        let _ = ch
            .queue_delete(
                ShortString::from(topology::line_queue(&pool, &format!("flood-{i}"))),
                QueueDeleteOptions::default(),
            )
            .await;
    }
    let _ = ch
        .queue_delete(
            ShortString::from(topology::line_queue(&pool, "early")),
            QueueDeleteOptions::default(),
        )
        .await;
    drop(w);
}
