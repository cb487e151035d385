//! The gateway end to end: HTTP submit/wait/get/search/cancel against a real
//! RabbitMQ and a real worker, idempotency keys under parallel repeats, the
//! error paths, history of tasks submitted straight to AMQP while the gateway
//! was down, and no secret or sensitive value in the database.
//!
//! Every test runs on SQLite; `history_on_postgres` runs the history tests'
//! core on PostgreSQL (`KRILL_TEST_PG_URL`, set by scripts/test).

use std::time::Duration;

use krill_tests::gateway::{call, contains, GatewayProc};
use krill_tests::trust::Keys;
use krill_tests::{client, new_id, unique_pool};
use reqwest::Method;
use serde_json::{json, Value};

/// A worker that trusts the gateway's key (and requires sealed secrets), and a
/// gateway that seals to the pool key. Returns (keys, worker, gateway).
async fn setup(tag: &str, db: Option<String>) -> (Keys, krill_tests::WorkerProc, GatewayProc) {
    setup_with(tag, db, None).await
}

/// [`setup`], the worker's process tasks seeing `gates`.
async fn setup_with(
    tag: &str,
    db: Option<String>,
    gates: Option<&krill_tests::Gates>,
) -> (Keys, krill_tests::WorkerProc, GatewayProc) {
    let pool = unique_pool(tag);
    let gw = GatewayProc::new(&pool, db);
    let keys = Keys::new("", &[format!("{} control", gw.key.public_line())]);
    let mut b = keys.worker(&pool);
    if let Some(g) = gates {
        b = b.gates(g);
    }
    let worker = b.start().await;
    let gw = gw.env("KRILL_POOL_PUBLIC_KEY", &keys.pool.public().to_b64());
    (keys, worker, gw)
}

fn tasks_url(gw: &GatewayProc, pool: &str) -> String {
    format!("{}/v1/tasks?pool={pool}", gw.url)
}

async fn wait_done(gw: &GatewayProc, token: &str, id: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        let (st, _, v) = call(
            Method::GET,
            &format!("{}/v1/tasks/{id}/wait?timeout=20", gw.url),
            Some(token),
            &[],
            None,
        )
        .await;
        assert_eq!(st, 200, "{v}");
        // Finished with its result: every task's result reaches the history
        // (the workers copy each one to `krill.results`).
        if v["state"] == "finished" && !v["result"].is_null() {
            return v;
        }
        if v["state"] == "finished" {
            // The finished event came first; its result follows.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("task {id} did not finish; gateway log:\n{}", gw.log_text());
}

/// Waits (up to 30 s) until the gateway says task `id` runs.
async fn wait_started(gw: &GatewayProc, token: &str, id: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, t) = call(
            Method::GET,
            &format!("{}/v1/tasks/{id}", gw.url),
            Some(token),
            &[],
            None,
        )
        .await;
        if t["state"] == "started" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never started: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a round trip leaves to check in the database: the stopped gateway,
/// the secret, the token and the task id.
struct Trip {
    gw: GatewayProc,
    secret: String,
    token: String,
    id: String,
}

impl Trip {
    fn assert_absent_from(&self, bytes: &[u8]) {
        assert!(bytes.len() > 1000, "{} bytes", bytes.len());
        assert!(contains(bytes, &self.id), "the task is in the database");
        assert!(
            !contains(bytes, &self.secret),
            "the secret is in the database"
        );
        assert!(!contains(bytes, &self.token), "a token is in the database");
    }
}

#[tokio::test]
async fn submit_wait_search_and_no_secret_in_sqlite() {
    let trip = round_trip(None).await;
    trip.assert_absent_from(&trip.gw.sqlite_bytes());
}

#[tokio::test]
async fn submit_wait_search_and_no_secret_in_postgres() {
    let (url, schema) = pg_schema();
    let _drop = PgSchema(schema.clone());
    let trip = round_trip(Some(url)).await;
    let dump = std::process::Command::new("pg_dump")
        .args(["--data-only", "-n", &schema, &pg_base()])
        .output()
        .expect("pg_dump");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    trip.assert_absent_from(&dump.stdout);
}

/// The PostgreSQL database of these tests (scripts/test starts it).
fn pg_base() -> String {
    std::env::var("KRILL_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "KRILL_TEST_PG_URL is not set: run `source scripts/lib.sh; krill_ensure_postgres` \
             (scripts/test does) and export it"
        )
    })
}

/// A schema of one test, dropped at its end.
struct PgSchema(String);

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args([
                &pg_base(),
                "-qAtX",
                "-c",
                &format!("DROP SCHEMA {} CASCADE", self.0),
            ])
            .output();
    }
}

/// A fresh schema in the test database, and the URL that uses it.
fn pg_schema() -> (String, String) {
    let base = pg_base();
    let schema = format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let out = std::process::Command::new("psql")
        .args([
            &base,
            "-qAtX",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &format!("CREATE SCHEMA {schema}"),
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "cannot create a schema in {base}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        format!("{base}?options=-c%20search_path%3D{schema}"),
        schema,
    )
}

async fn round_trip(db: Option<String>) -> Trip {
    let (_keys, worker, mut gw) = setup("gw-rt", db).await;
    let pool = worker.pool.clone();
    let alice = gw.token("alice", &format!("submit:{pool}"));
    let ops = gw.token("ops", "see:all");
    gw.start().await;
    let secret = format!("sk-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let body = json!({
        "script": "echo \"hello $K\"; echo \"tok=${K}-derived\" >> \"$KRILL_SENSITIVE_OUTPUT\"; echo plain=1 >> \"$KRILL_OUTPUT\"",
        "sandbox": "process",
        "secrets": {"K": secret},
    });
    let (st, _, v) = call(
        Method::POST,
        &tasks_url(&gw, &pool),
        Some(&alice),
        &[],
        Some(body.to_string().into_bytes()),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    assert_eq!(v["links"]["wait"], format!("/v1/tasks/{id}/wait"));

    let done = wait_done(&gw, &alice, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["exit_code"], 0, "a success says its exit code: {done}");
    assert_eq!(done["worker"], worker.id);
    assert_eq!(done["submitter"], "gateway");
    assert_eq!(done["result"]["stdout"], "hello ***\n", "{done}");
    assert!(done["timings"]["started_at"].is_string(), "{done}");
    let outputs = done["result"]["outputs"].as_array().expect("outputs");
    let tok = outputs.iter().find(|o| o["name"] == "tok").expect("tok");
    // The submitting caller sees its sensitive output, opened with the gateway's key.
    assert_eq!(tok["value"], format!("{secret}-derived"), "{done}");
    assert_eq!(done["task"]["secrets"]["K"], "***");
    // Another caller (who may see every task) gets `***`. The result may be
    // recorded before the finished event: wait for that event too.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let other = loop {
        let (st, _, other) = call(
            Method::GET,
            &format!("{}/v1/tasks/{id}", gw.url),
            Some(&ops),
            &[],
            None,
        )
        .await;
        assert_eq!(st, 200);
        let finished = other["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["state"] == "finished"));
        if finished || std::time::Instant::now() > deadline {
            break other;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let tok = other["result"]["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["name"] == "tok").cloned())
        .expect("tok");
    assert_eq!(tok["value"], "***", "{other}");
    let states: Vec<&str> = other["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["state"].as_str())
        .collect();
    assert!(
        states.contains(&"started") && states.contains(&"finished"),
        "{states:?}"
    );

    // Search: by pool and status, and by text of the script; alice sees only hers.
    let (st, _, page) = call(
        Method::GET,
        &format!("{}/v1/tasks?pool={pool}&status=succeeded&q=derived", gw.url),
        Some(&alice),
        &[],
        None,
    )
    .await;
    assert_eq!(st, 200, "{page}");
    assert_eq!(page["tasks"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page["tasks"][0]["id"], id);
    let (_, _, none) = call(
        Method::GET,
        &format!("{}/v1/tasks?pool={pool}&status=failed", gw.url),
        Some(&alice),
        &[],
        None,
    )
    .await;
    assert_eq!(none["tasks"].as_array().map(Vec::len), Some(0), "{none}");

    gw.kill();
    Trip {
        gw,
        secret,
        token: alice,
        id,
    }
}

#[tokio::test]
async fn parallel_repeats_with_one_idempotency_key_run_once() {
    let (_keys, worker, mut gw) = setup("gw-idem", None).await;
    let pool = worker.pool.clone();
    let alice = gw.token("alice", &format!("submit:{pool}"));
    gw.start().await;
    let marker = new_id();
    let body = json!({"script": format!("echo {marker}"), "sandbox": "process"}).to_string();
    let mut handles = Vec::new();
    for _ in 0..10 {
        let (url, token, body) = (tasks_url(&gw, &pool), alice.clone(), body.clone());
        handles.push(tokio::spawn(async move {
            call(
                Method::POST,
                &url,
                Some(&token),
                &[("Idempotency-Key", "deploy-42")],
                Some(body.into_bytes()),
            )
            .await
        }));
    }
    let mut ids = Vec::new();
    let mut accepted = 0;
    for h in handles {
        let (st, _, v) = h.await.expect("join");
        assert!(st == 202 || st == 200, "{st} {v}");
        accepted += usize::from(st == 202);
        ids.push(v["id"].as_str().expect("id").to_string());
    }
    assert_eq!(accepted, 1, "exactly one request submitted");
    ids.dedup();
    assert_eq!(ids.len(), 1, "every repeat answers the first id: {ids:?}");
    let done = wait_done(&gw, &alice, &ids[0]).await;
    assert_eq!(done["status"], "succeeded");
    let (_, _, page) = call(
        Method::GET,
        &format!("{}/v1/tasks?q={marker}", gw.url),
        Some(&alice),
        &[],
        None,
    )
    .await;
    assert_eq!(page["tasks"].as_array().map(Vec::len), Some(1), "{page}");
    // The same key for another request: 409.
    let (st, _, v) = call(
        Method::POST,
        &tasks_url(&gw, &pool),
        Some(&alice),
        &[("Idempotency-Key", "deploy-42")],
        Some(br#"{"script":"echo other"}"#.to_vec()),
    )
    .await;
    assert_eq!(st, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("another request"),
        "{v}"
    );
}

#[tokio::test]
async fn every_error_path_answers_json() {
    let pool = unique_pool("gw-err");
    let mut gw = GatewayProc::new(&pool, None).env("KRILL_GATEWAY_MAX_BODY", "4096");
    let alice = gw.token("alice", &format!("submit:{pool}"));
    gw.start().await;
    let url = tasks_url(&gw, &pool);
    let ok = br#"{"script":"echo hi"}"#.to_vec();
    let (st, h, v) = call(Method::POST, &url, None, &[], Some(ok.clone())).await;
    assert_eq!(st, 401, "{v}");
    assert!(h.contains_key("www-authenticate"));
    let (st, _, _) = call(
        Method::POST,
        &url,
        Some("krill_nope"),
        &[],
        Some(ok.clone()),
    )
    .await;
    assert_eq!(st, 401);
    let (st, _, v) = call(
        Method::POST,
        &format!("{}/v1/tasks?pool=elsewhere", gw.url),
        Some(&alice),
        &[],
        Some(ok.clone()),
    )
    .await;
    assert_eq!(st, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("elsewhere"),
        "{v}"
    );
    let (st, _, v) = call(
        Method::POST,
        &url,
        Some(&alice),
        &[],
        Some(br#"{"script":"x","colour":"red"}"#.to_vec()),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("colour"), "{v}");
    let big = json!({"script": "x".repeat(10_000)})
        .to_string()
        .into_bytes();
    let (st, _, v) = call(Method::POST, &url, Some(&alice), &[], Some(big)).await;
    assert_eq!(st, 413, "{v}");
    let (st, _, v) = call(
        Method::GET,
        &format!("{}/v1/tasks/{}", gw.url, new_id()),
        Some(&alice),
        &[],
        None,
    )
    .await;
    assert_eq!(st, 404, "{v}");
    // No worker has declared this pool: the broker returns the task, nothing is accepted.
    let (st, _, v) = call(Method::POST, &url, Some(&alice), &[], Some(ok.clone())).await;
    assert_eq!(st, 404, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("no queue"),
        "{v}"
    );
    let (_, _, page) = call(
        Method::GET,
        &format!("{}/v1/tasks", gw.url),
        Some(&alice),
        &[],
        None,
    )
    .await;
    assert_eq!(
        page["tasks"].as_array().map(Vec::len),
        Some(0),
        "nothing recorded: {page}"
    );
    gw.kill();

    // A broker that cannot be reached: 503 with Retry-After, never a 202.
    let mut down =
        GatewayProc::new(&pool, None).env("KRILL_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f");
    let t = down.token("alice", &format!("submit:{pool}"));
    down.start().await;
    let (st, h, v) = call(
        Method::POST,
        &tasks_url(&down, &pool),
        Some(&t),
        &[],
        Some(ok),
    )
    .await;
    assert_eq!(st, 503, "{v}");
    assert_eq!(
        h.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let (_, _, page) = call(
        Method::GET,
        &format!("{}/v1/tasks", down.url),
        Some(&t),
        &[],
        None,
    )
    .await;
    assert_eq!(page["tasks"].as_array().map(Vec::len), Some(0), "{page}");
}

#[tokio::test]
async fn cancel_over_http() {
    let (_keys, worker, mut gw) = setup("gw-cancel", None).await;
    let pool = worker.pool.clone();
    let alice = gw.token("alice", &format!("submit:{pool}"));
    gw.start().await;
    let body = json!({"script": "sleep 60", "sandbox": "process"}).to_string();
    let (st, _, v) = call(
        Method::POST,
        &tasks_url(&gw, &pool),
        Some(&alice),
        &[],
        Some(body.into_bytes()),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    // Wait until it runs, then cancel.
    wait_started(&gw, &alice, &id).await;
    let (st, _, v) = call(
        Method::DELETE,
        &format!("{}/v1/tasks/{id}", gw.url),
        Some(&alice),
        &[],
        None,
    )
    .await;
    assert_eq!(st, 202, "{v}");
    let done = wait_done(&gw, &alice, &id).await;
    assert_eq!(done["status"], "cancelled", "{done}");
}

/// Another caller of the same pool, from the attacker's side: it cannot see,
/// find, cancel or take over (by reusing its Idempotency-Key) a task that is
/// not its own; a caller who may see every task may still not cancel it
/// without the right. The owner can.
#[tokio::test]
async fn another_caller_can_neither_see_find_cancel_nor_take_over_a_task() {
    let (_keys, worker, mut gw) = setup("gw-peer", None).await;
    let pool = worker.pool.clone();
    let alice = gw.token("alice", &format!("submit:{pool}"));
    let mallory = gw.token("mallory", &format!("submit:{pool}"));
    let ops = gw.token("ops", "see:all");
    gw.start().await;
    let marker = new_id();
    let body =
        json!({"script": format!("echo {marker}; sleep 60"), "sandbox": "process"}).to_string();
    let post = |token: String, body: String| {
        let url = tasks_url(&gw, &pool);
        async move {
            call(
                Method::POST,
                &url,
                Some(&token),
                &[("Idempotency-Key", "deploy-7")],
                Some(body.into_bytes()),
            )
            .await
        }
    };
    let (st, _, v) = post(alice.clone(), body.clone()).await;
    assert_eq!(st, 202, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let task_url = format!("{}/v1/tasks/{id}", gw.url);
    for path in ["", "/wait?timeout=1", "/logs"] {
        let (st, _, v) = call(
            Method::GET,
            &format!("{task_url}{path}"),
            Some(&mallory),
            &[],
            None,
        )
        .await;
        assert_eq!(st, 404, "mallory reads {path}: {v}");
    }
    let (st, _, v) = call(Method::DELETE, &task_url, Some(&mallory), &[], None).await;
    assert_eq!(st, 404, "mallory cancels: {v}");
    let (st, _, v) = call(Method::DELETE, &task_url, Some(&ops), &[], None).await;
    assert_eq!(st, 403, "ops (see:all, no cancel) cancels: {v}");
    // The same Idempotency-Key and body from mallory: a task of her own.
    let (st, _, v) = post(mallory.clone(), body.clone()).await;
    assert_eq!(st, 202, "{v}");
    let theirs = v["id"].as_str().expect("id").to_string();
    assert_ne!(theirs, id, "an idempotency key is the caller's own");
    let (st, _, page) = call(
        Method::GET,
        &format!("{}/v1/tasks?q={marker}", gw.url),
        Some(&mallory),
        &[],
        None,
    )
    .await;
    assert_eq!(st, 200, "{page}");
    let found: Vec<&str> = page["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert!(
        !found.contains(&id.as_str()),
        "mallory's search shows alice's task: {page}"
    );
    // Both still run; their owners cancel them.
    for (token, id) in [(&alice, &id), (&mallory, &theirs)] {
        let (st, _, v) = call(
            Method::DELETE,
            &format!("{}/v1/tasks/{id}", gw.url),
            Some(token),
            &[],
            None,
        )
        .await;
        assert_eq!(st, 202, "{v}");
        let done = wait_done(&gw, token, id).await;
        assert_eq!(done["status"], "cancelled", "{done}");
    }
}

/// A task submitted straight to AMQP while the gateway is down is recorded
/// from the events its durable queue kept; the history survives the restart.
async fn history_survives_a_restart(db: Option<String>) {
    let (keys, worker, mut gw) = setup("gw-hist", db).await;
    let pool = worker.pool.clone();
    let ops = gw.token("ops", "see:all");
    gw.start().await;
    // One task over HTTP before the restart.
    let alice = gw.token("alice", &format!("submit:{pool}"));
    let (st, _, v) = call(
        Method::POST,
        &tasks_url(&gw, &pool),
        Some(&alice),
        &[],
        Some(br#"{"script":"echo before","sandbox":"process"}"#.to_vec()),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    let first = v["id"].as_str().expect("id").to_string();
    wait_done(&gw, &alice, &first).await;
    gw.kill();

    let c = client().await.with_credentials(keys.creds(&keys.alice));
    let mut task = krill_tests::task("echo straight");
    task.sandbox = Some(broker::protocol::SandboxKind::Process);
    c.submit(&pool, &task).await.expect("submit over AMQP");
    let r = c
        .wait(&task.id, Some(Duration::from_secs(60)))
        .await
        .expect("result");
    assert_eq!(r.status, broker::protocol::Status::Succeeded);

    gw.start().await;
    // The missed events are in the gateway's queue: the task shows up.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (st, _, _) = call(
            Method::GET,
            &format!("{}/v1/tasks/{}", gw.url, task.id),
            Some(&ops),
            &[],
            None,
        )
        .await;
        if st == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never recorded; log:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = wait_done(&gw, &ops, &task.id).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["submitter"], "alice");
    assert!(v["caller"].is_null());
    // Its result too, published while the gateway was down.
    assert_eq!(v["result"]["stdout"], "straight\n", "{v}");
    assert!(v["result"]["usage"]["cpu_time_ms"].is_u64(), "{v}");
    let (st, _, old) = call(
        Method::GET,
        &format!("{}/v1/tasks/{first}", gw.url),
        Some(&ops),
        &[],
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(old["result"]["stdout"], "before\n", "{old}");
}

#[tokio::test]
async fn history_on_sqlite_survives_a_restart() {
    history_survives_a_restart(None).await;
}

#[tokio::test]
async fn history_on_postgres_survives_a_restart() {
    let (url, schema) = pg_schema();
    let _drop = PgSchema(schema);
    history_survives_a_restart(Some(url)).await;
}

/// A task submitted over HTTP names the gateway's one durable reply queue as
/// `reply_to`: no queue `krill.reply.<id>` is declared for it, and its result
/// is recorded from that queue, also one that came while the gateway was down.
/// The gateway watches another pool here, so neither the task's events nor
/// the result's `krill.results` copy reach it: the reply queue is the only way
/// the result can come, and the long poll answers from it.
#[tokio::test]
async fn results_come_on_the_gateways_reply_queue_also_across_a_restart() {
    let gates = krill_tests::Gates::new();
    let (_keys, worker, gw) = setup_with("gw-replies", None, Some(&gates)).await;
    let pool = worker.pool.clone();
    let mut gw = gw.env("KRILL_GATEWAY_WATCH", &unique_pool("gw-elsewhere"));
    let alice = gw.token("alice", &format!("submit:{pool}"));
    gw.start().await;
    let conn = lapin::Connection::connect(
        &krill_tests::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("broker");
    // Declared before the gateway serves: a result sent to it before the
    // recorder connects is not returned unroutable (and lost).
    let replies = format!("{}.replies", gw.queue);
    assert!(
        broker::amqp::peek(&conn, &replies)
            .await
            .expect("peek")
            .is_some(),
        "{replies} does not exist once the gateway serves"
    );
    let post = |script: String| {
        let (url, token) = (tasks_url(&gw, &pool), alice.clone());
        async move {
            let body = json!({"script": script, "sandbox": "process"}).to_string();
            let (st, _, v) = call(
                Method::POST,
                &url,
                Some(&token),
                &[],
                Some(body.into_bytes()),
            )
            .await;
            assert_eq!(st, 202, "{v}");
            v["id"].as_str().expect("id").to_string()
        }
    };
    // Finished while the gateway waits: the long poll answers with the result.
    let id = post("echo replied".into()).await;
    let (st, _, v) = call(
        Method::GET,
        &format!("{}/v1/tasks/{id}/wait?timeout=60", gw.url),
        Some(&alice),
        &[],
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "finished", "{v}");
    assert_eq!(v["result"]["stdout"], "replied\n", "{v}");
    assert!(
        v["events"].as_array().is_some_and(Vec::is_empty),
        "no event of this pool reaches the gateway: {v}"
    );
    let own = broker::topology::reply_queue(&id);
    assert!(
        broker::amqp::peek(&conn, &own)
            .await
            .expect("peek")
            .is_none(),
        "{own} was declared"
    );

    // Finished while the gateway is down: recorded when it is back.
    let id = post(format!("{}; echo later", gates.wait("go"))).await;
    gw.kill();
    std::fs::write(gates.path("go"), b"").expect("open the gate");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let q = broker::amqp::peek(&conn, &replies).await.expect("peek");
        if q.expect("the replies queue").message_count() > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no reply came");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.start().await;
    let v = wait_done(&gw, &alice, &id).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["result"]["stdout"], "later\n", "{v}");
    let _ = conn.close(200, "bye".into()).await;
}

/// A task submitted with the CLI straight over AMQP (not through the
/// gateway) is in the history with its result: status, exit, masked output,
/// outputs (the sensitive one only as ciphertext), and the secret nowhere in
/// the database.
/// Attacker's side: the id of a finished task is no secret. A trusted key
/// that may not use the network (alice) publishes a copy of that id asking for
/// it; the worker refuses it `not_allowed:network` and answers, with a copy of
/// the refusal to `krill.results`. That refusal must not overwrite the task's
/// history: the first result stays, the refusal is only in the timeline. (The
/// worker is restarted first, so it does not remember the id: a worker that
/// does answers `rejected` on the copy's queue only, with no history copy.)
#[tokio::test]
async fn a_refused_copy_of_a_finished_id_leaves_its_history_alone() {
    let pool = unique_pool("gw-copy");
    let gw = GatewayProc::new(&pool, None);
    let keys = Keys::new("network=no", &[format!("{} control", gw.key.public_line())]);
    let b = keys.worker(&pool);
    let mut worker = b.clone().start().await;
    let mut gw = gw.env("KRILL_POOL_PUBLIC_KEY", &keys.pool.public().to_b64());
    let alice = gw.token("alice", &format!("submit:{pool}"));
    gw.start().await;
    let body = json!({"script": "echo first", "sandbox": "process"});
    let (st, _, v) = call(
        Method::POST,
        &tasks_url(&gw, &pool),
        Some(&alice),
        &[],
        Some(body.to_string().into_bytes()),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let done = wait_done(&gw, &alice, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    worker.restart(&b).await;

    let mut copy = krill_tests::task("echo forged");
    copy.id = id.clone();
    copy.limits.network = true.into();
    let c = client().await.with_credentials(keys.creds(&keys.alice));
    c.submit(&pool, &copy).await.expect("the copy is published");
    let refusal = c
        .wait(&id, Some(Duration::from_secs(60)))
        .await
        .expect("the copy's refusal");
    assert_eq!(
        refusal.status,
        broker::protocol::Status::Rejected,
        "{refusal:?}"
    );
    // The refusal reaches the gateway's history queue too; wait for its mark.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let t = loop {
        let (_, _, t) = call(
            Method::GET,
            &format!("{}/v1/tasks/{id}", gw.url),
            Some(&alice),
            &[],
            None,
        )
        .await;
        let ignored = t["events"]
            .as_array()
            .is_some_and(|es| es.iter().any(|e| e["state"] == "result_ignored"));
        if ignored || t["status"] != "succeeded" {
            break t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the refusal never reached the history: {t}\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        t["status"], "succeeded",
        "the refusal overwrote the row: {t}"
    );
    assert_eq!(t["result"]["stdout"], "first\n", "{t}");
    assert_eq!(t["worker"], worker.id, "{t}");
}

#[tokio::test]
async fn a_task_submitted_over_amqp_has_its_result_in_history() {
    let (keys, worker, mut gw) = setup("gw-amqp", None).await;
    let pool = worker.pool.clone();
    let ops = gw.token("ops", "see:all");
    gw.start().await;
    let key = keys.dir.join("alice-cli.key");
    keys.alice.save(&key).expect("alice's key file");
    let secret = format!("sk-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let out = std::process::Command::new(krill_tests::bin("krill"))
        .env("KRILL_AMQP_URL", krill_tests::amqp_url())
        .env("KRILL_KEY", &key)
        .env("KRILL_POOL_PUBLIC_KEY", keys.pool.public().to_b64())
        .env_remove("KRILL_GATEWAY_URL")
        .env("K", &secret)
        .args([
            "submit",
            "--pool",
            &pool,
            "--sandbox",
            "process",
            "--secret",
            "K",
            "--",
            "echo \"hello $K\"; echo \"tok=${K}-derived\" >> \"$KRILL_SENSITIVE_OUTPUT\"; \
             echo plain=1 >> \"$KRILL_OUTPUT\"; exit 4",
        ])
        .output()
        .expect("krill");
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("hello ***"), "{stdout}");
    // The pool is this test's own: its one task in the history is this one.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let id = loop {
        let (st, _, page) = call(Method::GET, &tasks_url(&gw, &pool), Some(&ops), &[], None).await;
        assert_eq!(st, 200, "{page}");
        if let Some(id) = page["tasks"][0]["id"].as_str() {
            break id.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never recorded; log:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let v = wait_done(&gw, &ops, &id).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["exit_code"], 4, "{v}");
    assert_eq!(v["pool"], pool.as_str(), "{v}");
    assert_eq!(v["submitter"], "alice", "{v}");
    assert!(v["caller"].is_null(), "{v}");
    assert_eq!(v["result"]["stdout"], "hello ***\n", "{v}");
    assert!(v["timings"]["started_at"].is_string(), "{v}");
    // No `queued` event: the history takes the task's own `submitted_at` from the result.
    let submitted = v["timings"]["submitted_at"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"));
    assert!(
        submitted <= v["timings"]["started_at"].as_str().expect("started"),
        "{v}"
    );
    // `worker=` (the web view's filter): its tasks, and none of another worker's.
    for (w, n) in [(worker.id.as_str(), 1), ("no-such-worker", 0)] {
        let (st, _, page) = call(
            Method::GET,
            &format!("{}&worker={w}", tasks_url(&gw, &pool)),
            Some(&ops),
            &[],
            None,
        )
        .await;
        assert_eq!(st, 200, "{page}");
        assert_eq!(
            page["tasks"].as_array().map(Vec::len),
            Some(n),
            "worker={w}: {page}"
        );
    }
    let outputs = v["result"]["outputs"].as_array().expect("outputs");
    let plain = outputs
        .iter()
        .find(|o| o["name"] == "plain")
        .expect("plain");
    assert_eq!(plain["value"], "1");
    let tok = outputs.iter().find(|o| o["name"] == "tok").expect("tok");
    assert_eq!(tok["value"], "***", "not the gateway's to open: {v}");
    assert!(!v.to_string().contains(&secret), "{v}");
    gw.kill();
    let db = gw.sqlite_bytes();
    assert!(contains(&db, &id), "the task is in the database");
    assert!(contains(&db, "hello ***"), "its output is in the database");
    assert!(!contains(&db, &secret), "the secret is in the database");
}

#[tokio::test]
async fn the_cli_through_the_gateway_keeps_its_exit_codes() {
    let (_keys, worker, mut gw) = setup("gw-cli", None).await;
    let pool = worker.pool.clone();
    let alice = gw.token("alice", &format!("submit:{pool}"));
    gw.start().await;
    let krill = |args: &[&str]| {
        std::process::Command::new(krill_tests::bin("krill"))
            .env("KRILL_GATEWAY_URL", &gw.url)
            .env("KRILL_TOKEN", &alice)
            // Nothing goes to RabbitMQ: a broker URL that answers nothing.
            .env("KRILL_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .env_remove("KRILL_KEY")
            .args(args)
            .output()
            .expect("krill")
    };
    let out = krill(&[
        "submit",
        "--pool",
        &pool,
        "--sandbox",
        "process",
        "--",
        "echo via-gw; exit 3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("via-gw"));
    let out = krill(&[
        "submit",
        "--no-wait",
        "--pool",
        &pool,
        "--sandbox",
        "process",
        "--",
        "echo later",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    let out = krill(&["wait", &id, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["stdout"], "later\n");
    // A pool the token may not submit to: krill's own error code, the gateway's reason.
    let out = krill(&["submit", "--pool", "elsewhere", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not submit"));

    // logs: the finished task's output, its exit code; an unknown task 125.
    let out = krill(&["logs", &id]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "later\n");
    let out = krill(&["logs", &new_id()]);
    assert_eq!(out.status.code(), Some(125));
    // status, drain, resume, dead: rights alice lacks are refused with 125 …
    let out = krill(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("see:all"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = krill(&["drain", &worker.id]);
    assert_eq!(out.status.code(), Some(125));
    // … and an operator's token does them all.
    let admin = gw.token("admin", "admin");
    let op = |args: &[&str]| {
        let out = std::process::Command::new(krill_tests::bin("krill"))
            .env("KRILL_GATEWAY_URL", &gw.url)
            .env("KRILL_TOKEN", &admin)
            .env("KRILL_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .env_remove("KRILL_KEY")
            .args(args)
            .output()
            .expect("krill");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            err,
        )
    };
    let (code, table, err) = op(&["status", "--pool", &pool]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        table.contains(&worker.id) && table.contains(&pool),
        "{table}"
    );
    let state_of = |status: &str| -> Value {
        let v: Value = serde_json::from_str(status).expect("status json");
        v["workers"]
            .as_array()
            .and_then(|w| w.iter().find(|w| w["id"] == worker.id.as_str()).cloned())
            .unwrap_or(Value::Null)
    };
    let (code, json, err) = op(&["status", "--json", "--since", "5m"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(state_of(&json)["state"], "live", "{json}");
    let (code, _, err) = op(&["drain", &worker.id]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("drain sent to"), "{err}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, json, _) = op(&["status", "--json"]);
        if state_of(&json)["state"] == "draining" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never draining: {json}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (code, _, err) = op(&["resume", "--all"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("resume sent to all workers"), "{err}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, json, _) = op(&["status", "--json"]);
        if state_of(&json)["state"] == "live" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never live again: {json}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (code, json, err) = op(&["dead", "list", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        serde_json::from_str::<Value>(&json)
            .expect("json")
            .is_array(),
        "{json}"
    );
    let (code, _, err) = op(&["dead", "replay", &new_id()]);
    assert_eq!(code, Some(125), "nothing to replay: {err}");
    let (code, _, err) = op(&["dead", "replay"]);
    assert_eq!(code, Some(125), "name one or --all: {err}");
}

#[tokio::test]
async fn logs_stream_live_then_stored() {
    let gates = krill_tests::Gates::new();
    let (_keys, worker, mut gw) = setup_with("gw-logs", None, Some(&gates)).await;
    let pool = worker.pool.clone();
    let alice = gw.token("alice", &format!("submit:{pool}"));
    gw.start().await;
    let script = format!(
        "echo first; while [ ! -e {} ]; do sleep 0.05; done; echo second",
        gates.path("go").display()
    );
    // The test's own follower, bound before the task is published (its id is
    // chosen here), tells when `first` was published: before the SSE request.
    let id = new_id();
    let mut seen = client().await.follow(&id).await.expect("follow");
    let body = json!({"id": id, "script": script, "sandbox": "process"}).to_string();
    let (st, _, v) = call(
        Method::POST,
        &tasks_url(&gw, &pool),
        Some(&alice),
        &[],
        Some(body.into_bytes()),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["id"], id.as_str());
    let first = tokio::time::timeout(Duration::from_secs(60), seen.next())
        .await
        .expect("the first chunk in time")
        .expect("a chunk");
    assert_eq!(first.data, "first\n");
    wait_started(&gw, &alice, &id).await;
    // Live: connected while it runs, after `first` was printed, the SSE stream
    // still carries every chunk from the first one (the gateway followed the
    // task from its submission), then what comes, then `end`.
    let logs_url = format!("{}/v1/tasks/{id}/logs", gw.url);
    let live = {
        let (url, token) = (logs_url.clone(), alice.clone());
        tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("logs");
            assert_eq!(resp.headers()["content-type"], "text/event-stream");
            resp.text().await.expect("stream")
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    gates.open("go");
    let text = tokio::time::timeout(Duration::from_secs(60), live)
        .await
        .expect("ends")
        .expect("join");
    assert!(text.contains("event: stdout\ndata: first"), "{text}");
    assert!(text.contains("event: stdout\ndata: second"), "{text}");
    assert!(
        text.find("data: first") < text.find("data: second"),
        "{text}"
    );
    assert!(text.contains("event: end"), "{text}");
    // Stored: after the end, the whole output.
    wait_done(&gw, &alice, &id).await;
    let text = reqwest::Client::new()
        .get(&logs_url)
        .bearer_auth(&alice)
        .send()
        .await
        .expect("logs")
        .text()
        .await
        .expect("text");
    assert!(text.contains("data: first\ndata: second"), "{text}");
    assert!(text.ends_with("event: end\n\n"), "{text:?}");
}

/// Two tasks followed at once through the gateway's one log consumer: each
/// SSE follower gets exactly its own task's chunks, in order, masked, and
/// nothing of the other's.
#[tokio::test]
async fn two_followers_get_their_own_tasks_chunks_masked_and_nothing_else() {
    let gates = krill_tests::Gates::new();
    let (_keys, worker, mut gw) = setup_with("gw-fan", None, Some(&gates)).await;
    let pool = worker.pool.clone();
    let alice = gw.token("alice", &format!("submit:{pool}"));
    gw.start().await;
    let mut runs = Vec::new();
    for name in ["a", "b"] {
        let secret = format!(
            "sk-{name}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let script = format!(
            "echo \"{name}-first $K\"; while [ ! -e {} ]; do sleep 0.05; done; echo {name}-second; echo \"{name}-err $K\" >&2",
            gates.path(name).display()
        );
        let body = json!({"script": script, "sandbox": "process", "secrets": {"K": secret}});
        let (st, _, v) = call(
            Method::POST,
            &tasks_url(&gw, &pool),
            Some(&alice),
            &[],
            Some(body.to_string().into_bytes()),
        )
        .await;
        assert_eq!(st, 202, "{v}");
        let id = v["id"].as_str().expect("id").to_string();
        runs.push((name, id, secret));
    }
    for (_, id, _) in &runs {
        wait_started(&gw, &alice, id).await;
    }
    let mut streams = Vec::new();
    for (_, id, _) in &runs {
        let (url, token) = (format!("{}/v1/tasks/{id}/logs", gw.url), alice.clone());
        streams.push(tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("logs");
            assert_eq!(resp.headers()["content-type"], "text/event-stream");
            resp.text().await.expect("stream")
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    gates.open("a");
    gates.open("b");
    let mut texts = Vec::new();
    for s in streams {
        let text = tokio::time::timeout(Duration::from_secs(60), s)
            .await
            .expect("ends")
            .expect("join");
        texts.push(text);
    }
    for (i, (name, _, secret)) in runs.iter().enumerate() {
        let (text, other) = (&texts[i], runs[1 - i].0);
        assert!(
            text.contains(&format!("event: stdout\ndata: {name}-first ***")),
            "{text}"
        );
        assert!(text.contains(&format!("data: {name}-second")), "{text}");
        assert!(
            text.contains(&format!("event: stderr\ndata: {name}-err ***")),
            "{text}"
        );
        assert!(
            text.find(&format!("{name}-first")) < text.find(&format!("{name}-second")),
            "{text}"
        );
        assert!(text.contains("event: end"), "{text}");
        assert!(
            !text.contains(&format!("{other}-")),
            "the other task's chunks: {text}"
        );
        for (_, _, s) in &runs {
            assert!(!text.contains(s.as_str()), "a secret in clear: {text}");
        }
        assert!(!text.contains(secret.as_str()));
    }
}

/// Tokens: `list` shows names, rights, created, expires and never a hash or a
/// token; `remove` makes the token's next request 401; an expired token gets
/// 401 saying it expired.
#[tokio::test]
async fn tokens_are_listed_removed_and_expire() {
    let pool = unique_pool("gw-tok");
    let mut gw = GatewayProc::new(&pool, None);
    let alice = gw.token("alice", &format!("submit:{pool},see:all"));
    gw.start().await;
    let out = gw.tokens(&["add", "brief", "--rights", "see:all", "--expires", "5s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let brief = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    let search = format!("{}/v1/tasks?pool={pool}", gw.url);
    let (st, _, _) = call(Method::GET, &search, Some(&alice), &[], None).await;
    assert_eq!(st, 200);
    // A web session opened with it (the web view's sign-in) works while the
    // token does ...
    let signin = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
        .post(format!("{}/signin", gw.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={brief}"))
        .send()
        .await
        .expect("sign in");
    assert!(signin.status().is_redirection(), "{}", signin.status());
    let cookie = signin
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_string();
    let (st, _, v) = call(Method::GET, &search, None, &[("cookie", &cookie)], None).await;
    assert_eq!(st, 200, "{v}");

    let out = gw.tokens(&["list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).expect("utf8");
    assert!(table.starts_with("NAME"), "{table}");
    let alice_line = table
        .lines()
        .find(|l| l.starts_with("alice "))
        .expect("alice");
    assert!(
        alice_line.contains(&format!("submit:{pool},see:all")),
        "{table}"
    );
    assert!(alice_line.contains("never"), "{table}");
    let brief_line = table
        .lines()
        .find(|l| l.starts_with("brief "))
        .expect("brief");
    assert!(!brief_line.contains("never"), "an expiry: {table}");
    let out = gw.tokens(&["list", "--json"]);
    let json = String::from_utf8(out.stdout).expect("utf8");
    let v: Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{json}");
    assert!(
        v[1]["expires_at"].is_i64() && v[0]["expires_at"].is_null(),
        "{json}"
    );
    for secret in [&alice, &brief] {
        assert!(!table.contains(secret.as_str()) && !json.contains(secret.as_str()));
    }
    assert!(!json.contains("hash") && !table.contains("hash"), "{json}");

    // Expired: 401, and the message says so (waits for the clock, no sleep).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (st, headers, v) = loop {
        let got = call(Method::GET, &search, Some(&brief), &[], None).await;
        if got.0 != 200 || std::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(st, 401, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("token `brief` expired at")),
        "{v}"
    );
    assert!(headers.contains_key("www-authenticate"));
    assert!(String::from_utf8_lossy(&gw.tokens(&["list"]).stdout).contains("(expired)"));
    // ... and ends with it.
    let (st, _, v) = call(Method::GET, &search, None, &[("cookie", &cookie)], None).await;
    assert_eq!(st, 401, "the session outlived its token: {v}");

    // Removed: the very next request is 401 (no cache), with the unknown-token message.
    let out = gw.tokens(&["remove", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (st, _, v) = call(Method::GET, &search, Some(&alice), &[], None).await;
    assert_eq!(st, 401, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown bearer token")),
        "{v}"
    );
    let out = gw.tokens(&["remove", "alice"]);
    assert!(!out.status.success(), "removing it twice fails");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token named `alice`"));
}

/// The web sign-in from the attacker's side: an address that keeps guessing
/// tokens gets 429 with `Retry-After` after 10 failures, and then even the
/// right token is refused from it (not looked up, so guessing learns nothing);
/// the bearer API is not held by it. Costs one gateway start (no worker).
#[tokio::test]
async fn failed_sign_ins_are_throttled_per_address() {
    let pool = unique_pool("gw-throttle");
    let mut gw = GatewayProc::new(&pool, None);
    let ops = gw.token("ops", "see:all");
    gw.start().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client");
    let sign_in = |token: String| {
        let req = http
            .post(format!("{}/signin", gw.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"));
        async move {
            let r = req.send().await.expect("sign in");
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            (status, retry, r.text().await.expect("body"))
        }
    };
    for i in 0..10 {
        let (st, retry, body) = sign_in(format!("krill_guess{i}")).await;
        assert_eq!(st, 401, "guess {i}: {body}");
        assert!(retry.is_none());
    }
    let (st, retry, body) = sign_in("krill_guess10".into()).await;
    assert_eq!(st, 429, "the 11th guess: {body}");
    assert!(retry.is_some_and(|s| (1..=6).contains(&s)), "{retry:?}");
    assert!(body.contains("too many failed sign-ins"), "{body}");
    let (st, _, body) = sign_in(ops.clone()).await;
    assert_eq!(st, 429, "the right token from a held address: {body}");
    assert!(!body.contains(&ops), "{body}");
    let (st, _, v) = call(
        Method::GET,
        &format!("{}/v1/tasks?pool={pool}", gw.url),
        Some(&ops),
        &[],
        None,
    )
    .await;
    assert_eq!(st, 200, "the bearer API is not held: {v}");
}

/// `krill dead replay --all` through the gateway with a real dead letter: an
/// unsigned task refused by a worker that requires signatures is in
/// `krill.dead`; with the worker gone, `--all` replays it to the pool queue and
/// `dead list` is empty. On a private broker node (KRILL_TEST_BROKER_PORT), so
/// `--all` cannot replay other tests' dead letters. About 10 s (the node's start).
#[tokio::test]
async fn dead_replay_all_through_the_gateway_replays_a_real_dead_letter() {
    let broker = krill_tests::PrivateBroker::start(&[]);
    let pool = unique_pool("gw-dead");
    let mut gw = GatewayProc::new(&pool, None).env("KRILL_AMQP_URL", &broker.url());
    let keys = Keys::new("", &[format!("{} control", gw.key.public_line())]);
    let mut worker = keys
        .worker(&pool)
        .env("KRILL_AMQP_URL", &broker.url())
        .start()
        .await;
    let admin = gw.token("admin", "admin");
    gw.start().await;
    let c = broker::client::Client::connect(&broker.url())
        .await
        .expect("private broker");
    let t = krill_tests::task("echo never signed");
    let body = serde_json::to_vec(&t).expect("json");
    krill_tests::trust::publish_raw(&c, &pool, &t.id, &body, broker::client::task_properties(&t))
        .await;
    let op = |args: &[&str]| {
        let out = std::process::Command::new(krill_tests::bin("krill"))
            .env("KRILL_GATEWAY_URL", &gw.url)
            .env("KRILL_TOKEN", &admin)
            .env("KRILL_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .env_remove("KRILL_KEY")
            .args(args)
            .output()
            .expect("krill");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let listed = |json: &str| -> Vec<String> {
        serde_json::from_str::<Value>(json)
            .expect("json")
            .as_array()
            .expect("a list")
            .iter()
            .filter_map(|d| d["id"].as_str().map(str::to_string))
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, json, err) = op(&["dead", "list", "--json"]);
        assert_eq!(code, Some(0), "{err}");
        if listed(&json) == [t.id.clone()] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never dead-lettered: {json}\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // No consumer, so the replayed copy stays in the pool queue to be counted.
    worker.keep_pool();
    worker.kill();
    let (code, out, err) = op(&["dead", "replay", "--all"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), format!("replayed {}", t.id), "{err}");
    let (code, json, err) = op(&["dead", "list", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(listed(&json).is_empty(), "still dead: {json}");
    assert_eq!(
        pool_depth(&c.channel(), &pool).await,
        1,
        "the replayed task is back on its pool"
    );
}

/// How many messages wait on `pool`'s queue (a passive declare).
async fn pool_depth(ch: &lapin::Channel, pool: &str) -> u32 {
    ch.queue_declare(
        broker::topology::pool_queue(pool).as_str().into(),
        lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        Default::default(),
    )
    .await
    .expect("the pool queue")
    .message_count()
}

/// A broker that goes away and comes back: submits answer 503 with
/// `Retry-After` while it is away, 202 again after, and every 202 is a task on
/// the queue (a private node, KRILL_TEST_BROKER_PORT).
#[tokio::test]
async fn a_broker_restart_gives_503_never_a_lost_202() {
    let broker = krill_tests::PrivateBroker::start(&[]);
    let pool = unique_pool("gw-blip");
    let conn = lapin::Connection::connect(&broker.url(), lapin::ConnectionProperties::default())
        .await
        .expect("private broker");
    let ch = conn.create_channel().await.expect("channel");
    broker::topology::declare(&ch, &pool)
        .await
        .expect("declare");
    let _ = conn.close(200, "bye".into()).await;
    let mut gw = GatewayProc::new(&pool, None).env("KRILL_AMQP_URL", &broker.url());
    let alice = gw.token("alice", &format!("submit:{pool}"));
    gw.start().await;
    let post = |n: usize| {
        let (url, token) = (tasks_url(&gw, &pool), alice.clone());
        async move {
            let body = json!({"script": format!("echo {n}")})
                .to_string()
                .into_bytes();
            call(Method::POST, &url, Some(&token), &[], Some(body)).await
        }
    };
    let mut accepted = 0;
    let (st, _, v) = post(0).await;
    assert_eq!(st, 202, "{v}");
    accepted += 1;
    let out = broker.ctl(&["stop_app"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (st, h, v) = post(1).await;
    assert_eq!(st, 503, "{v}");
    assert_eq!(
        h.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let out = broker.ctl(&["start_app"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Back: the gateway connects again on the next request.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (st, _, v) = post(2).await;
        if st == 202 {
            accepted += 1;
            break;
        }
        assert_eq!(st, 503, "{v}");
        assert!(
            std::time::Instant::now() < deadline,
            "never accepted again: {v}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let conn = lapin::Connection::connect(&broker.url(), lapin::ConnectionProperties::default())
        .await
        .expect("private broker");
    let ch = conn.create_channel().await.expect("channel");
    assert_eq!(
        pool_depth(&ch, &pool).await,
        accepted,
        "every 202 is a task on the queue"
    );
}
