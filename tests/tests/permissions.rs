//! The broker permissions of `deploy/rabbitmq/definitions.json`, from the
//! attacker's side: a client holding the submitters' credentials tries to forge
//! what workers alone may send (a result copy into the gateway's history on
//! `krill.results`, a heartbeat or a task event on `krill.events`, a result
//! through the default exchange), to read every result copy and to take a
//! key's queued tasks, on a private node loaded with the file's users and
//! permissions. A publish it may make (a task) is the control that the client
//! works at all; and a pool deployed with those users serves signed, sealed,
//! keyed and cancelled tasks end to end.

use broker::topology;
use krill_tests::PrivateBroker;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

const PASSWORD: &str = "krill-permissions-test";

fn ctl_ok(b: &PrivateBroker, args: &[&str]) {
    let out = b.ctl(args);
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn channel(url: &str) -> Channel {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    // Keep the connection open as long as the channel is used.
    std::mem::forget(conn);
    ch
}

/// Publishes with a confirm; Ok when the broker confirmed, Err with its reason.
async fn publish(ch: &Channel, exchange: &str, key: &str) -> Result<(), String> {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            br#"{"forged":true}"#,
            BasicProperties::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    match confirm.await {
        Ok(c) if c.is_ack() => {
            // A refusal closes the channel asynchronously; make sure it did not.
            ch.basic_qos(1, Default::default())
                .await
                .map_err(|e| e.to_string())
        }
        Ok(c) => Err(format!("not confirmed: {c:?}")),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitter_can_neither_forge_worker_messages_nor_read_result_copies() {
    let b = PrivateBroker::start(&[]);
    load_definitions(&b);
    // The topology, as workers declare it (the guest user may do anything).
    let admin = channel(&b.url()).await;
    topology::declare_common(&admin).await.expect("topology");
    topology::declare(&admin, "perm")
        .await
        .expect("pool topology");

    let url = format!("amqp://krill-submitter:{PASSWORD}@127.0.0.1:{}/%2f", b.port);
    // The control: a submitter may publish a task.
    let ch = channel(&url).await;
    publish(&ch, topology::TASKS_EXCHANGE, "perm")
        .await
        .expect("a submitter may publish a task");

    // Forgeries: each refused by the broker (a fresh channel for each, as a
    // refusal closes the one it happened on).
    for (exchange, key, what) in [
        (
            "",
            topology::reply_queue("perm-control"),
            "a result into a reply queue (through the default exchange)",
        ),
        (
            topology::RESULTS_EXCHANGE,
            "perm".to_string(),
            "a result copy into the history",
        ),
        (
            topology::EVENTS_EXCHANGE,
            topology::heartbeat_key("w-forged"),
            "a heartbeat (the peers view)",
        ),
        (
            topology::EVENTS_EXCHANGE,
            topology::task_event_key("perm", "finished"),
            "a task event",
        ),
    ] {
        let ch = channel(&url).await;
        let got = publish(&ch, exchange, &key).await;
        let err = got.expect_err(&format!("a submitter forged {what}"));
        assert!(err.contains("ACCESS_REFUSED"), "{what}: {err}");
    }

    // Reading every result copy: a queue of its own bound to krill.results.
    let ch = channel(&url).await;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("a server-named queue of its own");
    let bind = ch
        .queue_bind(
            q.name().clone(),
            topology::RESULTS_EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await;
    let err = bind.expect_err("a submitter bound a queue to krill.results");
    assert!(err.to_string().contains("ACCESS_REFUSED"), "{err}");

    // The gateway's one replies queue (the results of every task submitted
    // over HTTP): a submitter may not read it, while it may read a per-task
    // reply queue (the control).
    let replies = "krill.gateway.history.replies";
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    for q in [replies.to_string(), topology::reply_queue("perm-control")] {
        admin
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions::durable(),
                args.clone(),
            )
            .await
            .expect("declared as the gateway / the client does");
    }
    let consume = |q: String| {
        let url = url.clone();
        async move {
            channel(&url)
                .await
                .basic_consume(
                    q.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
        }
    };
    consume(topology::reply_queue("perm-control"))
        .await
        .expect("a submitter may read a per-task reply queue");
    // A key's line queue, which a submitter declares and binds to submit a
    // keyed task: it may not consume it (taking other people's deploys).
    topology::declare_lines(&admin).await.expect("lines");
    topology::declare_line(&admin, "perm", "prod-db")
        .await
        .expect("a line");
    let err = consume(topology::line_queue("perm", "prod-db"))
        .await
        .expect_err("a submitter consumed a line queue");
    assert!(err.to_string().contains("ACCESS_REFUSED"), "{err}");
    let err = consume(replies.to_string())
        .await
        .expect_err("a submitter read the gateway's replies queue");
    assert!(err.to_string().contains("ACCESS_REFUSED"), "{err}");
}

/// Loads the file's users and permissions into `b`.
fn load_definitions(b: &PrivateBroker) {
    let defs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/rabbitmq/definitions.json"
        ))
        .expect("definitions.json"),
    )
    .expect("json");
    for p in defs["permissions"].as_array().expect("permissions") {
        let user = p["user"].as_str().expect("user");
        ctl_ok(b, &["add_user", user, PASSWORD]);
        let perm = |k: &str| p[k].as_str().expect("regex").to_string();
        ctl_ok(
            b,
            &[
                "set_permissions",
                "-p",
                "/",
                user,
                &perm("configure"),
                &perm("write"),
                &perm("read"),
            ],
        );
    }
}

/// The same file from the other side: a pool deployed as it says — the worker
/// as `krill-worker` on a fresh node (so it declares every queue, exchange and
/// stream itself), submitters as `krill-submitter` — serves what a deployment
/// team does every day: a signed task with a sealed secret and a sealed
/// sensitive output, a task with a concurrency key, a cancel signed by an
/// operator's key, and `krill status` read from the submitter's account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_deployed_with_the_files_permissions_serves_every_kind_of_task() {
    use broker::protocol::{Secret, Status};
    use krill_tests::trust::Keys;
    use std::time::Duration;
    const T: Duration = Duration::from_secs(60);

    let b = PrivateBroker::start(&[]);
    load_definitions(&b);
    let as_user = |user: &str| format!("amqp://{user}:{PASSWORD}@127.0.0.1:{}/%2f", b.port);
    let keys = Keys::new("", &[]);
    let pool = krill_tests::unique_pool("perm-e2e");
    let _w = keys
        .worker(&pool)
        .env("KRILL_AMQP_URL", &as_user("krill-worker"))
        .start()
        .await;
    let submitter = broker::client::Client::connect(&as_user("krill-submitter"))
        .await
        .expect("the submitter connects")
        .with_credentials(keys.creds(&keys.alice));

    // Signed, with a sealed secret and a sensitive output.
    let secret = format!("sk-live-{}", uuid::Uuid::new_v4().simple());
    let mut t = krill_tests::task(
        r#"echo "key is $API_KEY"; echo "TOKEN=$API_KEY-out" >> "$KRILL_SENSITIVE_OUTPUT""#,
    );
    t.secrets
        .insert("API_KEY".into(), Secret(secret.clone()).into());
    submitter.submit(&pool, &t).await.expect("a signed submit");
    let mut r = submitter.wait(&t.id, Some(T)).await.expect("its result");
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "key is ***\n");
    assert!(broker::trust::open_result_outputs(&mut r, &keys.alice).is_empty());
    assert_eq!(r.output("TOKEN"), Some(format!("{secret}-out").as_str()));

    // With a concurrency key (its line queue and the keys stream).
    for _ in 0..2 {
        let mut t = krill_tests::task("echo keyed");
        t.concurrency_key = Some("perm-db".into());
        submitter.submit(&pool, &t).await.expect("a keyed submit");
        let r = submitter.wait(&t.id, Some(T)).await.expect("its result");
        assert_eq!(r.status, Status::Succeeded, "{r:?}");
        assert_eq!(r.stdout, "keyed\n");
    }

    // A cancel signed by the operator's key, sent from a submitter's account.
    let t = krill_tests::task("echo started; sleep 60");
    let mut progress = submitter
        .watch_progress(&t.id)
        .await
        .expect("watching a task's progress");
    submitter.submit(&pool, &t).await.expect("submit");
    let started = tokio::time::timeout(T, progress.next())
        .await
        .expect("the task started in time")
        .expect("its started event");
    assert_eq!(started.task_id, t.id);
    let ops = broker::client::Client::connect(&as_user("krill-submitter"))
        .await
        .expect("connect")
        .with_credentials(keys.creds(&keys.ops));
    ops.cancel(&t.id).await.expect("a signed cancel");
    let r = submitter.wait(&t.id, Some(T)).await.expect("its result");
    assert_eq!(r.status, Status::Cancelled, "{r:?}");

    // `krill status` from the submitter's account sees the worker.
    let report = broker::status::gather(
        &as_user("krill-submitter"),
        Duration::from_secs(60),
        std::slice::from_ref(&pool),
    )
    .await
    .expect("status as the submitter");
    assert!(
        report.workers.iter().any(|w| w.pool == pool),
        "{:?}",
        report.workers
    );
}
