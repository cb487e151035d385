//! A broker restart with tasks waiting on a concurrency key: nothing is lost, the
//! holder that was running keeps the key (it is neither answered `worker_lost`
//! nor run beside the next), and the waiters start after it, in order.
//!
//! It restarts the whole node, so it is a test binary of its own (cargo runs
//! binaries one after another). On a shared machine point `KRILL_AMQP_URL` and
//! `KRILL_RABBITMQ_NODE` at a private node (`source scripts/lib.sh;
//! krill_own_broker PORT`).

mod rabbitmq;

use std::time::Duration;

use broker::protocol::{Status, TaskResult};
use broker::topology;
use krill_tests::{client, task, unique_pool, Events, Gates, WorkerBuilder};

const T: Duration = Duration::from_secs(180);

fn span(r: &TaskResult) -> (u128, u128) {
    let n = |name| {
        r.output(name)
            .unwrap_or_else(|| panic!("{name} in {r:?}"))
            .parse::<u128>()
            .expect("ns")
    };
    (n("start"), n("end"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_with_tasks_waiting_on_a_key_loses_nothing_and_keeps_the_guarantee() {
    let _restore = rabbitmq::Restore::default();
    rabbitmq::wait_accepting(Duration::from_secs(30)).await;
    let pool = unique_pool("keyrestart");
    let gates = Gates::new();
    let mut ws = Vec::new();
    for _ in 0..2 {
        ws.push(
            WorkerBuilder::new(&pool)
                .env("KRILL_CONCURRENCY", "2")
                .gates(&gates)
                .start()
                .await,
        );
    }
    let c = client().await;
    let key = "prod-db";
    let keyed = |body: &str| {
        let mut t = task(&format!(
            r#"echo "start=$(date +%s%N)" >> "$KRILL_OUTPUT"; {body}; echo "end=$(date +%s%N)" >> "$KRILL_OUTPUT""#
        ));
        t.concurrency_key = Some(key.to_string());
        t
    };
    let mut started = Events::bind(&topology::task_event_key(&pool, "started")).await;
    let holder = keyed(&gates.wait("holder"));
    c.submit(&pool, &holder).await.expect("submit");
    started.wait_task(&holder.id, T).await;
    let waiting: Vec<_> = (0..4).map(|_| keyed("sleep 0.2")).collect();
    for t in &waiting {
        c.submit(&pool, t).await.expect("submit");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(started);
    drop(c);

    rabbitmq::stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    rabbitmq::start().await;
    // Every worker is back (its pool consumer) before the holder ends.
    for w in &mut ws {
        w.wait_consuming().await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    gates.open("holder");

    let c = client().await;
    let h = c.wait(&holder.id, Some(T)).await.expect("holder's result");
    assert_eq!(
        h.status,
        Status::Succeeded,
        "the running holder kept its key: {h:?}"
    );
    let mut results = Vec::new();
    for t in &waiting {
        results.push(c.wait(&t.id, Some(T)).await.expect("waiter's result"));
    }
    assert!(
        results.iter().all(|r| r.status == Status::Succeeded),
        "{results:?}"
    );
    let mut spans = vec![span(&h)];
    spans.extend(results.iter().map(span));
    assert!(
        spans.windows(2).all(|p| p[0].1 <= p[1].0),
        "one at a time, in submit order: {spans:?}"
    );
    krill_tests::delete_queue(&topology::line_queue(&pool, key)).await;
}
