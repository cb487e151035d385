//! Stealing results through reply queues, from the attacker's side, against
//! the real broker and real workers.
//!
//! A task finished; its id is no secret (the submitter printed it, every
//! submitter reads it on `krill.events`). The attacker holds the submitters'
//! account (and, on a signed pool, a trusted key of its own: `mallory`) and
//! publishes copies of that id naming a queue it reads — the same body or one
//! of its own, plain, marked `x-krill-resent`, with a forged `x-delivery-count`
//! (which the classic line queues of keyed tasks pass on as it was sent) —
//! then collects whatever arrives. Nothing of the first run may reach it,
//! and the first task's script must not start a second time.
//!
//! Then the bulk client's replicated reply queue `krill.reply.client.<uuid>`:
//! a second connection with the same account consumes it while the client
//! waits.

use std::time::{Duration, Instant};

use broker::bulk::{BulkClient, Replies};
use broker::protocol::{Status, Task, TaskResult};
use broker::topology;
use broker::trust::sign::sign_task;
use broker::trust::{now_unix, open_result_outputs, Credentials, Identity};
use futures_util::StreamExt;
use krill_tests::trust::{prepared, publish_raw, take_dead, Keys};
use krill_tests::{amqp_url, client, task, unique_pool, Events, WorkerBuilder};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};

const T: Duration = Duration::from_secs(60);

/// The attacker: its own connection, and a queue only it reads.
struct Attacker {
    _conn: Connection,
    ch: Channel,
    queue: String,
    consumer: Consumer,
}

impl Attacker {
    /// Reads a server-named exclusive queue of its own.
    async fn new() -> Attacker {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let q = ch
            .queue_declare(
                ShortString::from(""),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue");
        let queue = q.name().to_string();
        let consumer = consume(&ch, &queue).await;
        Attacker {
            _conn: conn,
            ch,
            queue,
            consumer,
        }
    }

    /// Reads `queue` too (a per-task reply queue it may declare and read).
    async fn also_read(&self, queue: &str) -> Consumer {
        self.ch
            .queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions::durable(),
                topology::reply_queue_arguments(),
            )
            .await
            .expect("declare the victim's reply queue");
        consume(&self.ch, queue).await
    }

    /// Publishes `body` to `exchange`/`key` with `props` (confirmed).
    async fn publish(&self, exchange: &str, key: &str, body: &[u8], props: BasicProperties) {
        self.ch
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(key),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
}

async fn consume(ch: &Channel, queue: &str) -> Consumer {
    ch.basic_consume(
        ShortString::from(queue),
        ShortString::from(""),
        BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("consume")
}

/// Every message `consumer` gets until `n` came, then for `quiet` more.
async fn collect(consumer: &mut Consumer, n: usize, quiet: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + T;
    while got.len() < n && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(Some(Ok(d))) = tokio::time::timeout(left, consumer.next()).await {
            got.push(d.data);
        }
    }
    while let Ok(Some(Ok(d))) = tokio::time::timeout(quiet, consumer.next()).await {
        got.push(d.data);
    }
    got
}

/// `props` with `header` = `value` added.
fn with_header(props: &BasicProperties, header: &str, value: AMQPValue) -> BasicProperties {
    let mut h = props.headers().clone().unwrap_or_default();
    h.insert(ShortString::from(header), value);
    props.clone().with_headers(h)
}

fn resent(props: &BasicProperties) -> BasicProperties {
    with_header(props, topology::RESENT_HEADER, AMQPValue::Boolean(true))
}

/// A forged redelivery: RabbitMQ's own count header, set by the publisher.
fn forged_count(props: &BasicProperties) -> BasicProperties {
    with_header(
        props,
        topology::DELIVERY_COUNT_HEADER,
        AMQPValue::LongLongInt(1),
    )
}

/// The victim's task: its stdout, a plain and a sensitive output all carry
/// `SEED` in upper case (the seed itself is lower-case hex, so the upper-case
/// form is in no message anyone publishes, only in what the script printed).
fn victim_task(seed: &str) -> Task {
    let mut t = task(
        r#"up=$(printf %s "$SEED" | tr a-f A-F)
echo "stdout-$up"
printf 'PLAIN=p-%s\n' "$up" >> "$KRILL_OUTPUT"
printf 'TOKEN=s-%s\n' "$up" >> "$KRILL_SENSITIVE_OUTPUT""#,
    );
    t.env.insert("SEED".into(), seed.to_string());
    t
}

fn seed() -> String {
    // Digits only would stay the same in upper case: make sure of a letter.
    format!("a{}", uuid::Uuid::new_v4().simple())
}

/// What must not reach the attacker: the run's printed values and, for a
/// sealed output, its ciphertext.
fn needles(seed: &str, r: &TaskResult) -> Vec<String> {
    let mut n = vec![seed.to_uppercase()];
    n.extend(r.outputs.iter().filter_map(|o| o.sealed.clone()));
    n
}

/// Asserts each message the attacker got is a `rejected` answer holding
/// nothing of the victim's run; returns the answers.
fn nothing_leaked(what: &str, got: &[Vec<u8>], needles: &[String]) -> Vec<TaskResult> {
    let mut answers = Vec::new();
    for body in got {
        let text = String::from_utf8_lossy(body);
        for n in needles {
            assert!(
                !text.contains(n.as_str()),
                "{what}: the attacker got the first run's output ({n}): {text}"
            );
        }
        let r: TaskResult = serde_json::from_slice(body).expect("a result");
        assert_eq!(r.status, Status::Rejected, "{what}: {text}");
        assert!(
            r.stdout.is_empty() && r.stderr.is_empty() && r.outputs.is_empty(),
            "{what}: {text}"
        );
        assert!(
            r.error.as_deref().unwrap_or("").contains("already ran"),
            "{what}: {text}"
        );
        answers.push(r);
    }
    answers
}

/// How many `started` events `events` holds for `id`, reading for `quiet`.
async fn starts(events: &mut Events, id: &str, quiet: Duration) -> usize {
    let mut n = 0;
    loop {
        let Ok(v) = tokio::time::timeout(quiet, events.next(T)).await else {
            return n;
        };
        if v["task_id"] == id {
            n += 1;
        }
    }
}

/// Makes sure the worker holds the line of `key` (a task of `c`'s with that
/// key ran), so a copy published to that line is consumed.
async fn open_line(c: &broker::client::Client, pool: &str, key: &str) {
    let mut t = task("true");
    t.concurrency_key = Some(key.into());
    c.submit(pool, &t).await.expect("keyed submit");
    let r = c.wait(&t.id, Some(T)).await.expect("keyed result");
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_copies_of_a_finished_task_naming_another_reply_queue_get_nothing_of_its_run() {
    let pool = unique_pool("theft");
    let mut events = Events::bind(&topology::task_event_key(&pool, "started")).await;
    let _w = WorkerBuilder::new(&pool)
        .arg("--concurrency")
        .arg("2")
        .start()
        .await;
    let victim = client().await;
    let s = seed();
    let t = victim_task(&s);
    victim.submit(&pool, &t).await.expect("submit");
    let r = victim.wait(&t.id, Some(T)).await.expect("result");
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    let up = s.to_uppercase();
    assert_eq!(
        r.stdout,
        format!("stdout-{up}\n"),
        "the test looks for the right value"
    );
    assert_eq!(r.output("TOKEN"), Some(format!("s-{up}").as_str()));
    let needles = needles(&s, &r);

    // The attacker learnt the id (and, for some copies, the body).
    let mut a = Attacker::new().await;
    let body = serde_json::to_vec(&t).expect("json");
    let mine = |mut t: Task| {
        t.script = "echo attacker-run".into();
        t.env.clear();
        t
    };
    let props =
        broker::client::task_properties(&t).with_reply_to(ShortString::from(a.queue.as_str()));
    let own = serde_json::to_vec(&mine(t.clone())).expect("json");
    let copies: Vec<(&str, &[u8], BasicProperties)> = vec![
        ("the same body", &body, props.clone()),
        ("the same body, marked resent", &body, resent(&props)),
        (
            "the same body, a forged delivery count",
            &body,
            forged_count(&props),
        ),
        ("a body of its own", &own, props.clone()),
        ("a body of its own, marked resent", &own, resent(&props)),
    ];
    for (_, b, p) in &copies {
        a.publish(topology::TASKS_EXCHANGE, &pool, b, p.clone())
            .await;
    }
    // A keyed copy on a line (a classic queue: the forged count stays).
    let attacker = client().await;
    open_line(&attacker, &pool, "k").await;
    let mut keyed = mine(t.clone());
    keyed.concurrency_key = Some("k".into());
    let kbody = serde_json::to_vec(&keyed).expect("json");
    let line = topology::line_queue(&pool, "k");
    a.publish(
        topology::LINES_EXCHANGE,
        &line,
        &kbody,
        forged_count(&props),
    )
    .await;

    let got = collect(&mut a.consumer, copies.len() + 1, Duration::from_secs(3)).await;
    let answers = nothing_leaked("unsigned copies", &got, &needles);
    assert_eq!(answers.len(), copies.len() + 1, "every copy answered once");
    assert!(answers.iter().all(|r| r.id == t.id));
    assert_eq!(
        starts(&mut events, &t.id, Duration::from_secs(2)).await,
        1,
        "the task started once, and no copy of its id started"
    );
    krill_tests::delete_queue(&line).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_copies_of_a_finished_task_naming_another_reply_queue_get_nothing_of_its_run() {
    let pool = unique_pool("theft-signed");
    let mallory = Identity::generate("mallory").expect("key");
    let keys = Keys::new("", &[mallory.public_line()]);
    let mut events = Events::bind(&topology::task_event_key(&pool, "started")).await;
    let _w = keys
        .worker(&pool)
        .arg("--concurrency")
        .arg("2")
        .start()
        .await;
    let alice = client().await.with_credentials(keys.creds(&keys.alice));
    let s = seed();
    let t = victim_task(&s);
    // Alice's message as published (captured by the attacker too).
    let (body, props) = prepared(&keys.creds(&keys.alice), &pool, &t);
    publish_raw(&alice, &pool, &t.id, &body, props.clone()).await;
    let r = alice.wait(&t.id, Some(T)).await.expect("result");
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    let up = s.to_uppercase();
    assert_eq!(r.stdout, format!("stdout-{up}\n"));
    let needles = needles(&s, &r);
    let mut opened = r.clone();
    assert!(open_result_outputs(&mut opened, &keys.alice).is_empty());
    assert_eq!(opened.output("TOKEN"), Some(format!("s-{up}").as_str()));
    assert!(needles.len() > 1, "the sealed output is looked for too");

    let mut a = Attacker::new().await;
    // With the submitters' account only: alice's captured message, aimed at
    // the attacker's queue (the signature covers reply_to) or verbatim to
    // alice's own reply queue, which the account may declare and read.
    let mut theirs = a.also_read(&topology::reply_queue(&t.id)).await;
    let aimed = props
        .clone()
        .with_reply_to(ShortString::from(a.queue.as_str()));
    for p in [aimed, props.clone(), resent(&props), forged_count(&props)] {
        a.publish(topology::TASKS_EXCHANGE, &pool, &body, p).await;
    }
    // With a trusted key of its own: alice's exact body signed by mallory for
    // the attacker's queue, plain and marked; and a keyed task of mallory's
    // with alice's id, on a line, with a forged delivery count.
    let mut h = FieldTable::default();
    sign_task(&mallory, &pool, &a.queue, now_unix() + 3600, &body)
        .expect("sign")
        .put(&mut h);
    let resigned = broker::client::task_properties(&t)
        .with_reply_to(ShortString::from(a.queue.as_str()))
        .with_headers(h);
    for p in [resigned.clone(), resent(&resigned)] {
        a.publish(topology::TASKS_EXCHANGE, &pool, &body, p).await;
    }
    let mcreds = Credentials::new(Some(mallory.clone()), Some(keys.pool.public()));
    let as_mallory = client().await.with_credentials(mcreds.clone());
    open_line(&as_mallory, &pool, "k").await;
    let mut keyed = Task::new(t.id.clone(), "echo mallory-run");
    keyed.concurrency_key = Some("k".into());
    let (kbody, kh) = mcreds
        .prepare_task(&pool, &a.queue, &keyed)
        .expect("prepare");
    let kprops = broker::client::task_properties(&keyed)
        .with_reply_to(ShortString::from(a.queue.as_str()))
        .with_headers(kh);
    let line = topology::line_queue(&pool, "k");
    a.publish(
        topology::LINES_EXCHANGE,
        &line,
        &kbody,
        forged_count(&kprops),
    )
    .await;

    // Alice's message: refused by its signature or as replayed, dead-lettered
    // and not answered. Mallory's: answered `rejected`, without output.
    let got = collect(&mut a.consumer, 3, Duration::from_secs(3)).await;
    let answers = nothing_leaked("mallory's copies", &got, &needles);
    assert_eq!(answers.len(), 3, "each of mallory's copies answered once");
    let got = collect(&mut theirs, 0, Duration::from_secs(1)).await;
    assert!(
        got.is_empty(),
        "alice's reply queue got something: {:?}",
        got.iter()
            .map(|b| String::from_utf8_lossy(b))
            .collect::<Vec<_>>()
    );
    let deadline = Instant::now() + T;
    let mut dead = Vec::new();
    while dead.len() < 4 && Instant::now() < deadline {
        dead.extend(take_dead(&alice, &t.id).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|(_, h)| match h.inner().get("x-krill-reason") {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => format!("{other:?}"),
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        ["bad_signature", "replayed", "replayed", "replayed"],
        "alice's copies"
    );
    assert_eq!(
        starts(&mut events, &t.id, Duration::from_secs(2)).await,
        1,
        "the task started once, and no copy of its id started"
    );
    krill_tests::delete_queue(&line).await;
}

/// The results a BulkClient with a replicated reply queue waits for, read by
/// a second connection of the same account that learnt the queue's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_consumer_of_a_bulk_clients_replicated_reply_queue_gets_none_of_its_results() {
    let pool = unique_pool("theft-bulk");
    let _w = WorkerBuilder::new(&pool)
        .arg("--concurrency")
        .arg("4")
        .start()
        .await;
    let bulk = BulkClient::connect_with(&amqp_url(), 64, Replies::Replicated)
        .await
        .expect("bulk client");
    let queue = bulk.reply_queue().to_string();
    assert!(queue.starts_with(broker::bulk::CLIENT_REPLY_PREFIX));
    // The attacker consumes it, and also tries a basic.get.
    let a = Attacker::new().await;
    let stolen =
        a.ch.basic_consume(
            ShortString::from(queue.as_str()),
            ShortString::from("thief"),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    let s = seed();
    let up = s.to_uppercase();
    let mut tickets = Vec::new();
    for _ in 0..8 {
        tickets.push(bulk.submit(&pool, &victim_task(&s)).await.expect("submit"));
    }
    for t in tickets {
        let r = t
            .result(Some(Duration::from_secs(20)))
            .await
            .expect("every result reaches its client");
        assert_eq!(r.status, Status::Succeeded, "{r:?}");
        assert_eq!(r.stdout, format!("stdout-{up}\n"));
    }
    // The consume itself is allowed (the account may read krill.reply.*):
    // the attempt is real, and gets nothing.
    let mut stolen = stolen.expect("a second consumer may register");
    let got = collect(&mut stolen, 0, Duration::from_secs(2)).await;
    assert!(
        got.is_empty(),
        "a second consumer took {} of the client's results",
        got.len()
    );
    let ch = a._conn.create_channel().await.expect("channel");
    let get = ch
        .basic_get(ShortString::from(queue.as_str()), Default::default())
        .await;
    match get {
        Err(e) => assert!(e.to_string().contains("RESOURCE_LOCKED"), "{e}"),
        Ok(m) => panic!("a basic.get on the client's queue was allowed: {m:?}"),
    }
    bulk.close().await;
}
