//! Concurrency keys against a real RabbitMQ and several worker processes: at
//! most `max_concurrent` tasks of a key run at once across the pool, in submit
//! order, none dropped; a lost holder frees the key; supersede, cancel of a
//! waiting task, bad input; "blocked" said in the event, the status and `krill wait`.
//! (A broker restart with waiting tasks is in `concurrency_restart.rs`: it owns the node.)

use std::time::{Duration, Instant};

use broker::client::Client;
use broker::protocol::{Status, Task, TaskResult};
use broker::topology;
use krill_tests::{bin, client, task, unique_pool, Events, Gates, WorkerBuilder, WorkerProc};

const T: Duration = Duration::from_secs(120);

/// A task of `key` that records when it started and ended (ns, host clock)
/// around `body`.
fn keyed(key: &str, body: &str) -> Task {
    let mut t = task(&format!(
        r#"echo "start=$(date +%s%N)" >> "$KRILL_OUTPUT"; {body}; echo "end=$(date +%s%N)" >> "$KRILL_OUTPUT""#
    ));
    t.concurrency_key = Some(key.to_string());
    t
}

fn span(r: &TaskResult) -> (u128, u128) {
    let n = |name| {
        r.output(name)
            .unwrap_or_else(|| panic!("{name} in {r:?}"))
            .parse::<u128>()
            .expect("ns")
    };
    (n("start"), n("end"))
}

/// `n` workers of `slots` slots whose tasks see `gates`.
async fn workers(pool: &str, n: usize, slots: u32, gates: &Gates) -> Vec<WorkerProc> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(
            WorkerBuilder::new(pool)
                .env("KRILL_CONCURRENCY", &slots.to_string())
                .gates(gates)
                .start()
                .await,
        );
    }
    v
}

async fn wait_all(c: &Client, ids: &[String]) -> Vec<TaskResult> {
    let mut out = Vec::new();
    for id in ids {
        out.push(c.wait(id, Some(T)).await.expect("a result"));
    }
    out
}

/// Deletes a key's line queue at the end of a test.
async fn forget_line(pool: &str, key: &str) {
    krill_tests::delete_queue(&topology::line_queue(pool, key)).await;
}

/// Most tasks running at one time, from their (start, end) spans.
fn most_at_once(spans: &[(u128, u128)]) -> usize {
    let mut edges: Vec<(u128, i32)> = spans
        .iter()
        .flat_map(|(s, e)| [(*s, 1), (*e, -1)])
        .collect();
    // An end before a start at the same instant: touching is not overlapping.
    edges.sort_by_key(|(t, d)| (*t, *d));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_tasks_of_one_key_never_overlap_all_succeed_and_start_in_submit_order() {
    let pool = unique_pool("key60");
    let gates = Gates::new();
    let _w = workers(&pool, 3, 4, &gates).await;
    let c = client().await;
    let key = "prod-db";
    let mut ids = Vec::new();
    for _ in 0..60 {
        let t = keyed(key, "sleep 0.05");
        c.submit(&pool, &t).await.expect("submit");
        ids.push(t.id);
    }
    let results = wait_all(&c, &ids).await;
    for r in &results {
        assert_eq!(r.status, Status::Succeeded, "{r:?}");
        let w = r.waited_on.as_ref().expect("waited_on");
        assert_eq!(w.key, key);
    }
    let spans: Vec<(u128, u128)> = results.iter().map(span).collect();
    assert_eq!(most_at_once(&spans), 1, "two tasks of one key overlapped");
    for (i, pair) in spans.windows(2).enumerate() {
        assert!(
            pair[0].1 <= pair[1].0,
            "task {} (submitted {}th) started before task {} ended: {spans:?}",
            i + 1,
            i + 2,
            i + 1
        );
    }
    forget_line(&pool, key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_two_runs_two_at_once_and_never_three() {
    let pool = unique_pool("key2");
    let gates = Gates::new();
    let _w = workers(&pool, 2, 4, &gates).await;
    let c = client().await;
    let key = "prod-web";
    let mut ids = Vec::new();
    for _ in 0..8 {
        let mut t = keyed(key, "sleep 0.6");
        t.max_concurrent = Some(2);
        c.submit(&pool, &t).await.expect("submit");
        ids.push(t.id);
    }
    let results = wait_all(&c, &ids).await;
    assert!(
        results.iter().all(|r| r.status == Status::Succeeded),
        "{results:?}"
    );
    let spans: Vec<(u128, u128)> = results.iter().map(span).collect();
    assert_eq!(most_at_once(&spans), 2, "{spans:?}");
    forget_line(&pool, key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_task_is_said_blocked_by_its_holder_and_can_be_cancelled_at_once() {
    let pool = unique_pool("keycancel");
    let gates = Gates::new();
    let _w = workers(&pool, 2, 2, &gates).await;
    let c = client().await;
    let key = "env/staging:db";
    let mut blocked = Events::bind(&topology::task_event_key(&pool, "blocked")).await;
    let mut started = Events::bind(&topology::task_event_key(&pool, "started")).await;
    let holder = keyed(key, &gates.wait("holder"));
    c.submit(&pool, &holder).await.expect("submit");
    let ev = started.wait_task(&holder.id, T).await;
    let holder_worker = ev["worker"].as_str().expect("worker").to_string();
    let waiting: Vec<Task> = (0..3).map(|_| keyed(key, "true")).collect();
    for t in &waiting {
        c.submit(&pool, t).await.expect("submit");
    }
    // The third waiter is told who holds the key and how many are ahead.
    let b = loop {
        let v = blocked.wait_task(&waiting[2].id, T).await;
        if v["blocked"]["ahead"] == 2 {
            break v;
        }
    };
    assert_eq!(b["blocked"]["key"], key, "{b}");
    assert_eq!(b["blocked"]["reason"], "key", "{b}");
    assert_eq!(
        b["blocked"]["holders"][0]["task_id"],
        holder.id.as_str(),
        "{b}"
    );
    assert_eq!(
        b["blocked"]["holders"][0]["worker"],
        holder_worker.as_str(),
        "{b}"
    );

    // `krill status --json` shows the holder and the line, in order (from the
    // next heartbeat of the line's worker on).
    let order: Vec<&str> = waiting.iter().map(|t| t.id.as_str()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let k = loop {
        let report = broker::status::gather(
            &krill_tests::amqp_url(),
            Duration::from_secs(60),
            std::slice::from_ref(&pool),
        )
        .await
        .expect("status");
        let k = report
            .keys
            .into_iter()
            .find(|k| k.key == key && k.pool == pool && k.waiting == order);
        match k {
            Some(k) => break k,
            None if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            None => panic!("the key and its line never showed in the status"),
        }
    };
    assert_eq!(k.holders[0].task_id, holder.id);
    assert_eq!(k.line_worker, holder_worker);

    // `krill wait` says it on stderr, in one line.
    let out = tokio::process::Command::new(bin("krill"))
        .env("KRILL_AMQP_URL", krill_tests::amqp_url())
        .args(["wait", &waiting[1].id, "--timeout", "8s"])
        .output()
        .await
        .expect("krill wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let short = broker::protocol::short_id(&holder.id);
    assert!(
        stderr.contains(&format!(
            "waiting for {key}: task {short} (worker {holder_worker}, running"
        )) && stderr.contains("; 1 ahead of this task"),
        "{stderr}"
    );

    // Cancel the middle one: answered at once, while the holder still runs.
    c.cancel(&waiting[1].id).await.expect("cancel");
    let r = c
        .wait(&waiting[1].id, Some(Duration::from_secs(20)))
        .await
        .expect("cancelled at once");
    assert_eq!(r.status, Status::Cancelled, "{r:?}");
    assert!(r.error.as_deref().unwrap_or("").contains(key), "{r:?}");
    gates.open("holder");
    let h = c.wait(&holder.id, Some(T)).await.expect("holder");
    assert_eq!(h.status, Status::Succeeded);
    let a = c.wait(&waiting[0].id, Some(T)).await.expect("first");
    let z = c.wait(&waiting[2].id, Some(T)).await.expect("third");
    assert_eq!((a.status, z.status), (Status::Succeeded, Status::Succeeded));
    assert!(
        span(&h).1 <= span(&a).0 && span(&a).1 <= span(&z).0,
        "order kept"
    );
    forget_line(&pool, key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supersede_ends_the_older_queued_tasks_and_only_the_newest_runs() {
    let pool = unique_pool("keysup");
    let gates = Gates::new();
    let _w = workers(&pool, 2, 2, &gates).await;
    let c = client().await;
    let key = "prod-web";
    let mut started = Events::bind(&topology::task_event_key(&pool, "started")).await;
    let running = keyed(key, &gates.wait("holder"));
    c.submit(&pool, &running).await.expect("submit");
    started.wait_task(&running.id, T).await;
    let mut deploys = Vec::new();
    for _ in 0..5 {
        let mut t = keyed(key, "true");
        t.supersede = true;
        c.submit(&pool, &t).await.expect("submit");
        deploys.push(t);
    }
    // The four older ones end at once, while the running one still runs.
    for (i, t) in deploys[..4].iter().enumerate() {
        let r = c
            .wait(&t.id, Some(Duration::from_secs(30)))
            .await
            .expect("superseded");
        assert_eq!(r.status, Status::Superseded, "{r:?}");
        let by = r.error.clone().unwrap_or_default();
        assert!(
            deploys[i + 1..].iter().any(|n| by.contains(&n.id)),
            "names a newer task: {by}"
        );
    }
    gates.open("holder");
    let r = c.wait(&running.id, Some(T)).await.expect("running one");
    assert_eq!(
        r.status,
        Status::Succeeded,
        "a running task is never touched"
    );
    let newest = c.wait(&deploys[4].id, Some(T)).await.expect("newest");
    assert_eq!(newest.status, Status::Succeeded, "{newest:?}");
    forget_line(&pool, key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_key_blocks_neither_other_keys_nor_unkeyed_tasks() {
    let pool = unique_pool("keyfree");
    let gates = Gates::new();
    // One slot each: the worker running the long task has none left, so
    // unkeyed tasks must go to the other (its pool prefetch drops to 0), and a
    // line it holds whose next task waits for a slot is handed over.
    let _w = workers(&pool, 2, 1, &gates).await;
    let c = client().await;
    let mut started = Events::bind(&topology::task_event_key(&pool, "started")).await;
    let long = keyed("a", &gates.wait("holder"));
    c.submit(&pool, &long).await.expect("submit");
    started.wait_task(&long.id, T).await;
    let behind = keyed("a", "true");
    c.submit(&pool, &behind).await.expect("submit");
    let mut others = Vec::new();
    for i in 0..6 {
        let t = if i % 2 == 0 {
            keyed(&format!("b{i}"), "true")
        } else {
            task("true")
        };
        c.submit(&pool, &t).await.expect("submit");
        others.push(t);
    }
    for t in &others {
        let r = c
            .wait(&t.id, Some(Duration::from_secs(60)))
            .await
            .expect("not blocked by key a");
        assert_eq!(r.status, Status::Succeeded, "{r:?}");
    }
    gates.open("holder");
    let r = c.wait(&behind.id, Some(T)).await.expect("behind");
    assert_eq!(r.status, Status::Succeeded);
    for k in ["a", "b0", "b2", "b4"] {
        forget_line(&pool, k).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_holder_frees_the_key_for_the_next_waiter_and_loses_nothing() {
    let pool = unique_pool("keykill");
    let gates = Gates::new();
    let mut ws = workers(&pool, 2, 2, &gates).await;
    let c = client().await;
    let key = "prod-db";
    let mut started = Events::bind(&topology::task_event_key(&pool, "started")).await;
    let holder = keyed(key, "sleep 300");
    c.submit(&pool, &holder).await.expect("submit");
    let ev = started.wait_task(&holder.id, T).await;
    let who = ev["worker"].as_str().expect("worker").to_string();
    let next: Vec<Task> = (0..3).map(|_| keyed(key, "sleep 0.1")).collect();
    for t in &next {
        c.submit(&pool, t).await.expect("submit");
    }
    // Let the holder's worker take the waiters into its line before it dies.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let victim = ws
        .iter_mut()
        .find(|w| w.id == who)
        .expect("holder's worker");
    let killed = Instant::now();
    victim.kill();
    let r = c.wait(&holder.id, Some(T)).await.expect("holder answered");
    assert_eq!(r.status, Status::WorkerLost, "{r:?}");
    let ev = started.wait_task(&next[0].id, T).await;
    assert_ne!(ev["worker"], who.as_str());
    // Bound: 3 heartbeat intervals (1 s in tests) of silence, plus slack for a loaded machine.
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "the next waiter started {:?} after the kill",
        killed.elapsed()
    );
    let results = wait_all(&c, &next.iter().map(|t| t.id.clone()).collect::<Vec<_>>()).await;
    assert!(
        results.iter().all(|r| r.status == Status::Succeeded),
        "{results:?}"
    );
    let spans: Vec<_> = results.iter().map(span).collect();
    assert!(
        spans.windows(2).all(|p| p[0].1 <= p[1].0),
        "in order: {spans:?}"
    );
    forget_line(&pool, key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_and_limits_are_rejected_with_the_reason() {
    let pool = unique_pool("keybad");
    let gates = Gates::new();
    let _w = workers(&pool, 1, 2, &gates).await;
    let c = client().await;
    // The client refuses what the schema does not allow.
    for (key, max) in [
        ("", None),
        ("has space", None),
        ("ok", Some(0)),
        ("ok", Some(65)),
    ] {
        let mut t = task("true");
        t.concurrency_key = Some(key.to_string());
        t.max_concurrent = max;
        let e = c.submit(&pool, &t).await.expect_err("refused");
        assert!(
            e.to_string().contains("concurrency_key") || e.to_string().contains("max_concurrent"),
            "{e}"
        );
    }
    let too_long = "k".repeat(129);
    let mut t = task("true");
    t.concurrency_key = Some(too_long);
    assert!(c.submit(&pool, &t).await.is_err());
    // Above the pool's maximum (16 by default): the worker rejects it, naming it.
    let mut t = keyed("ok", "true");
    t.max_concurrent = Some(20);
    c.submit(&pool, &t).await.expect("submit");
    let r = c.wait(&t.id, Some(T)).await.expect("result");
    assert_eq!(r.status, Status::Rejected);
    assert!(
        r.error
            .as_deref()
            .unwrap_or("")
            .contains("above this pool's maximum of 16"),
        "{r:?}"
    );
    // A raw client that sends a keyed task to the pool queue is told where it goes.
    let mut t = task("true");
    t.concurrency_key = Some("ok".into());
    topology::declare_reply_queue(&c.channel(), &t.id)
        .await
        .expect("reply queue");
    broker::amqp::publish_confirmed(
        &c.channel(),
        topology::TASKS_EXCHANGE,
        &pool,
        &serde_json::to_vec(&t).expect("json"),
        broker::client::task_properties(&t),
        true,
    )
    .await
    .expect("publish");
    let r = c.wait(&t.id, Some(T)).await.expect("result");
    assert_eq!(r.status, Status::Rejected);
    assert!(
        r.error
            .as_deref()
            .unwrap_or("")
            .contains(&topology::line_queue(&pool, "ok")),
        "{r:?}"
    );
    forget_line(&pool, "ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_signed_pool_holders_name_their_submitter_and_a_forged_task_cannot_supersede() {
    let pool = unique_pool("keysigned");
    let gates = Gates::new();
    let keys = krill_tests::trust::Keys::new("", &[]);
    let mut ws = Vec::new();
    for _ in 0..2 {
        ws.push(
            keys.worker(&pool)
                .env("KRILL_CONCURRENCY", "2")
                .gates(&gates)
                .start()
                .await,
        );
    }
    let alice = client().await.with_credentials(keys.creds(&keys.alice));
    let anyone = client().await;
    let key = "prod-db";
    let mut started = Events::bind(&topology::task_event_key(&pool, "started")).await;
    let mut blocked = Events::bind(&topology::task_event_key(&pool, "blocked")).await;
    let holder = keyed(key, &gates.wait("holder"));
    alice.submit(&pool, &holder).await.expect("submit");
    started.wait_task(&holder.id, T).await;
    let waiter = keyed(key, "true");
    alice.submit(&pool, &waiter).await.expect("submit");
    let b = blocked.wait_task(&waiter.id, T).await;
    assert_eq!(b["blocked"]["holders"][0]["submitter"], "alice", "{b}");
    assert_eq!(b["submitter"], "alice", "{b}");
    // Unsigned, with supersede: refused at the line, the waiter untouched.
    let mut forged = keyed(key, "true");
    forged.supersede = true;
    anyone.submit(&pool, &forged).await.expect("published");
    let dead = krill_tests::trust::dead_letter(&anyone, &forged.id).await;
    assert!(!dead.reason.is_empty(), "{dead:?}");
    krill_tests::trust::take_dead(&anyone, &forged.id).await;
    gates.open("holder");
    let h = alice.wait(&holder.id, Some(T)).await.expect("holder");
    let w = alice.wait(&waiter.id, Some(T)).await.expect("waiter");
    assert_eq!(
        (h.status, w.status),
        (Status::Succeeded, Status::Succeeded),
        "{w:?}"
    );
    assert_eq!(w.submitter.as_deref(), Some("alice"));
    forget_line(&pool, key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_finishes_its_holder_then_hands_the_line_over() {
    let pool = unique_pool("keydrain");
    let gates = Gates::new();
    let _w = workers(&pool, 2, 2, &gates).await;
    let c = client().await;
    let key = "prod-db";
    let mut started = Events::bind(&topology::task_event_key(&pool, "started")).await;
    let holder = keyed(key, &gates.wait("holder"));
    c.submit(&pool, &holder).await.expect("submit");
    let ev = started.wait_task(&holder.id, T).await;
    let x = ev["worker"].as_str().expect("worker").to_string();
    let next: Vec<Task> = (0..2).map(|_| keyed(key, "true")).collect();
    for t in &next {
        c.submit(&pool, t).await.expect("submit");
    }
    c.drain(Some(&x)).await.expect("drain");
    tokio::time::sleep(Duration::from_millis(500)).await;
    gates.open("holder");
    let h = c.wait(&holder.id, Some(T)).await.expect("holder");
    assert_eq!(
        h.status,
        Status::Succeeded,
        "the draining worker's holder finished"
    );
    let results = wait_all(&c, &next.iter().map(|t| t.id.clone()).collect::<Vec<_>>()).await;
    for r in &results {
        assert_eq!(r.status, Status::Succeeded, "{r:?}");
        assert_ne!(
            r.worker.as_deref(),
            Some(x.as_str()),
            "ran on the draining worker"
        );
    }
    let spans: Vec<_> = std::iter::once(&h).chain(&results).map(span).collect();
    assert!(
        spans.windows(2).all(|p| p[0].1 <= p[1].0),
        "in order: {spans:?}"
    );
    c.resume(Some(&x)).await.expect("resume");
    forget_line(&pool, key).await;
}
