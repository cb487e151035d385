//! Signed tasks and control messages, sealed secrets and outputs, replay
//! protection, trusted keys and the audit file — against a real RabbitMQ,
//! real workers and (for the image restriction) the real Docker engine.
//!
//! Every refusal is checked from the outside: its reason in `krill.dead`, the
//! answer (or none) on its reply queue, no `started` event and (container
//! tasks) no container ever made for it, and the worker serving the next task.

use std::time::Duration;

use broker::protocol::{SandboxKind, Secret, SecretValue, Status, Task};
use broker::trust::sign::{sign_task, KEY_HEADER};
use broker::trust::{now_unix, open_result_outputs, Identity, PoolKey};
use krill_tests::trust::{
    container_ever_made, dead_letter, prepared, publish_raw, replay_dead, take_dead,
    take_dead_some, Keys,
};
use krill_tests::{client, new_id, task, unique_pool, Events};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

const T: Duration = Duration::from_secs(60);

fn with_secret(mut t: Task, name: &str, value: &str) -> Task {
    t.secrets
        .insert(name.into(), Secret(value.to_string()).into());
    t
}

/// One refusal case: a hand-made delivery and what must come of it.
struct Case {
    what: &'static str,
    id: String,
    body: Vec<u8>,
    props: lapin::BasicProperties,
    reason: &'static str,
    answered: bool,
    container: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_task_gets_its_reason_runs_nothing_and_the_worker_keeps_serving() {
    let pool = unique_pool("refuse");
    let carol = Identity::generate("carol").expect("key");
    let keys = Keys::new(
        "network=no images=krill/base:1",
        &[format!("{} pools=somewhere-else", carol.public_line())],
    );
    let _w = keys
        .worker(&pool)
        .env("KRILL_SANDBOX", "process,container")
        .start()
        .await;
    let c = client().await;
    let alice = keys.creds(&keys.alice);
    let since = chrono::Utc::now().timestamp() - 1;
    let mut events = Events::bind(&format!("task.{pool}.*")).await;

    let mut cases = Vec::new();
    let mut case = |what, t: &Task, body, props, reason, answered, container| {
        cases.push(Case {
            what,
            id: t.id.clone(),
            body,
            props,
            reason,
            answered,
            container,
        })
    };
    // Unsigned.
    let t = task("echo unsigned");
    let (b, p) = prepared(&broker::trust::Credentials::default(), &pool, &t);
    case("unsigned", &t, b, p, "not_allowed:unsigned", false, false);
    // One byte of the script changed after signing.
    let t = task("echo tampered");
    let (mut b, p) = prepared(&alice, &pool, &t);
    let at = String::from_utf8_lossy(&b)
        .find("tampered")
        .expect("script in body");
    b[at] = b'T';
    case("tampered script", &t, b, p, "bad_signature", false, false);
    // reply_to changed after signing.
    let t = task("echo reply");
    let (b, p) = prepared(&alice, &pool, &t);
    let other = new_id();
    broker::topology::declare_reply_queue(&c.channel(), &other)
        .await
        .expect("queue");
    let p = p.with_reply_to(ShortString::from(broker::topology::reply_queue(&other)));
    case("tampered reply_to", &t, b, p, "bad_signature", false, false);
    // Signed for another pool, published to this one (routing key changed).
    let t = task("echo routed");
    let (b, p) = prepared(&alice, "another-pool", &t);
    case(
        "tampered routing key",
        &t,
        b,
        p,
        "bad_signature",
        false,
        false,
    );
    // Expired.
    let t = task("echo late");
    let (b, _) = prepared(&broker::trust::Credentials::default(), &pool, &t);
    let mut h = FieldTable::default();
    sign_task(
        &keys.alice,
        &pool,
        &broker::topology::reply_queue(&t.id),
        now_unix() - 10,
        &b,
    )
    .expect("sign")
    .put(&mut h);
    let p = broker::client::task_properties(&t).with_headers(h);
    case("expired", &t, b, p, "expired", true, false);
    // A key nobody trusts.
    let t = task("echo stranger");
    let eve = Identity::generate("eve").expect("key");
    let (b, p) = prepared(&keys.creds(&eve), &pool, &t);
    case("unknown key", &t, b, p, "untrusted_key", false, false);
    // Keys restricted from this pool, from network, from an image.
    let t = task("echo carol");
    let (b, p) = prepared(&keys.creds(&carol), &pool, &t);
    case(
        "pool restriction",
        &t,
        b,
        p,
        "not_allowed:pool",
        true,
        false,
    );
    let mut t = task("echo net");
    t.limits.network = true.into();
    let (b, p) = prepared(&alice, &pool, &t);
    case(
        "network restriction",
        &t,
        b,
        p,
        "not_allowed:network",
        true,
        false,
    );
    let mut t = task("echo image");
    t.sandbox = Some(SandboxKind::Container);
    t.image = Some("krill/python:1".into());
    let (b, p) = prepared(&alice, &pool, &t);
    case(
        "image restriction",
        &t,
        b,
        p,
        "not_allowed:image",
        true,
        true,
    );
    // A plain secret on a pool that requires sealed ones (signed, not sealed).
    let plain_value = format!("plain-{}", uuid::Uuid::new_v4().simple());
    let t = with_secret(task("echo $TOKEN"), "TOKEN", &plain_value);
    let unsealed = broker::trust::Credentials::new(Some(keys.alice.clone()), None);
    let (b, p) = prepared(&unsealed, &pool, &t);
    case(
        "plain secret",
        &t,
        b,
        p,
        "not_allowed:plain_secret",
        true,
        false,
    );
    // A secret sealed to another pool's key.
    let stranger_pool = PoolKey::generate();
    let t = with_secret(task("echo $TOKEN"), "TOKEN", "sealed-elsewhere-1");
    let wrong =
        broker::trust::Credentials::new(Some(keys.alice.clone()), Some(stranger_pool.public()));
    let (b, p) = prepared(&wrong, &pool, &t);
    case(
        "secret sealed to another key",
        &t,
        b,
        p,
        "unsealable_secret",
        true,
        false,
    );
    // The same refusal from inside a container task: sealed elsewhere.
    let mut t = with_secret(task("echo $TOKEN"), "TOKEN", "sealed-elsewhere-2");
    t.sandbox = Some(SandboxKind::Container);
    let (b, p) = prepared(&wrong, &pool, &t);
    case(
        "container task, unsealable",
        &t,
        b,
        p,
        "unsealable_secret",
        true,
        true,
    );

    for k in &cases {
        publish_raw(&c, &pool, &k.id, &k.body, k.props.clone()).await;
    }
    for k in &cases {
        let d = dead_letter(&c, &k.id).await;
        assert_eq!(d.reason, k.reason, "{}: {d:?}", k.what);
        assert_eq!(d.pool.as_deref(), Some(pool.as_str()), "{}", k.what);
        assert!(d.detail.is_some(), "{}: no detail", k.what);
        // The answer goes out before the dead letter: by now it is there or never.
        match c.peek(&k.id).await.expect("peek") {
            broker::client::Peek::Done(r) => {
                assert!(
                    k.answered,
                    "{}: answered on an unverified reply_to: {r:?}",
                    k.what
                );
                assert_eq!(r.status, Status::Rejected);
                let e = r.error.as_deref().unwrap_or("");
                assert!(e.starts_with(k.reason), "{}: {e}", k.what);
            }
            other => assert!(!k.answered, "{}: no answer ({other:?})", k.what),
        }
    }
    // The worker keeps serving: a signed task with a sealed secret and a
    // sensitive output, on each sandbox. Every event seen until their
    // `finished` ones is kept: one for a refused task would be among them
    // (the worker publishes its events in order).
    let secret = format!("sk-live-{}", uuid::Uuid::new_v4().simple());
    let client = client().await.with_credentials(alice.clone());
    let mut seen = Vec::new();
    for kind in [SandboxKind::Process, SandboxKind::Container] {
        let mut t = with_secret(
            task(
                r#"echo "key is $API_KEY"; echo "TOKEN=$API_KEY-out" >> "$KRILL_SENSITIVE_OUTPUT""#,
            ),
            "API_KEY",
            &secret,
        );
        t.sandbox = Some(kind);
        client.submit(&pool, &t).await.expect("submit");
        let mut r = client.wait(&t.id, Some(T)).await.expect("result");
        assert_eq!(r.status, Status::Succeeded, "{kind}: {r:?}");
        assert_eq!(r.stdout, "key is ***\n", "{kind}");
        assert_eq!(r.submitter.as_deref(), Some("alice"));
        let token = r
            .outputs
            .iter()
            .find(|o| o.name == "TOKEN")
            .expect("output");
        assert!(
            token.value.is_empty() && token.sealed.is_some(),
            "{token:?}"
        );
        assert!(open_result_outputs(&mut r, &keys.alice).is_empty());
        assert_eq!(r.output("TOKEN"), Some(format!("{secret}-out").as_str()));
        loop {
            let ev = events.next(T).await;
            seen.push(ev.clone());
            if ev["task_id"] == t.id.as_str() {
                assert_eq!(ev["submitter"], "alice", "{ev}");
                if ev["state"] == "finished" {
                    break;
                }
            }
        }
    }
    // Nothing of the refused ones ran: no event, no container.
    for k in &cases {
        assert!(
            !seen.iter().any(|e| e["task_id"] == k.id.as_str()),
            "{}: an event was published for it",
            k.what
        );
        if k.container {
            assert!(
                !container_ever_made(&k.id, since),
                "{}: a container was made",
                k.what
            );
        }
    }
    // The plain secret is not kept in its dead copy; nothing is left behind.
    for k in &cases {
        for (body, headers) in take_dead_some(&c, &k.id).await {
            let text = String::from_utf8_lossy(&body);
            assert!(
                !text.contains(&plain_value),
                "{}: dead copy keeps the secret",
                k.what
            );
            if k.reason == "not_allowed:plain_secret" {
                assert!(headers.contains_key("x-krill-redacted"));
            }
        }
    }
    // Each refusal has its audit line, with the key's name where trusted.
    for k in &cases {
        let l = keys
            .wait_audit(|l| l["event"] == "task_rejected" && l["task_id"] == k.id.as_str())
            .await;
        assert_eq!(l["reason"], k.reason, "{}", k.what);
        if k.reason == "not_allowed:network" {
            assert_eq!(l["key"], "alice");
            assert!(l["script_sha256"].as_str().is_some_and(|s| s.len() == 64));
        }
    }
    let audit = std::fs::read_to_string(&keys.audit).expect("audit");
    assert!(!audit.contains(&secret) && !audit.contains(&plain_value));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_signed_task_runs_once_across_two_workers_and_a_restart() {
    let pool = unique_pool("replay");
    let keys = Keys::new("", &[]);
    let b1 = keys.worker(&pool).arg("--concurrency").arg("2");
    let mut w1 = b1.clone().start().await;
    let _w2 = keys
        .worker(&pool)
        .arg("--concurrency")
        .arg("2")
        .start()
        .await;
    let c = client().await;
    let mut events = Events::bind(&format!("task.{pool}.started")).await;
    // One signed message, captured and published six times at once: both
    // workers get copies at the same moment.
    let t = task("sleep 0.3; echo ran");
    let (body, props) = prepared(&keys.creds(&keys.alice), &pool, &t);
    let publishes = (0..6).map(|_| publish_raw(&c, &pool, &t.id, &body, props.clone()));
    futures_util::future::join_all(publishes).await;
    let r = c.wait(&t.id, Some(T)).await.expect("result");
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "ran\n");
    // Five copies refused as replayed, one started.
    let deadline = std::time::Instant::now() + T;
    let mut replayed = Vec::new();
    while replayed.len() < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} copies refused",
            replayed.len()
        );
        replayed.extend(take_dead(&c, &t.id).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(replayed.len(), 5);
    for (_, h) in &replayed {
        assert!(
            matches!(h.inner().get("x-krill-reason"), Some(AMQPValue::LongString(s)) if s.as_bytes() == b"replayed"),
            "{h:?}"
        );
    }
    let ev = events.wait_task(&t.id, T).await;
    assert_eq!(ev["state"], "started");
    // After a restart of the worker that may get it, the copy is still refused.
    w1.restart(&b1).await;
    publish_raw(&c, &pool, &t.id, &body, props.clone()).await;
    let d = dead_letter(&c, &t.id).await;
    assert_eq!(d.reason, "replayed");
    let _ = take_dead(&c, &t.id).await;
    // And only one task ever started: the next event is a new task's.
    let t2 = task("echo next");
    let client = client().await.with_credentials(keys.creds(&keys.alice));
    client.submit(&pool, &t2).await.expect("submit");
    assert_eq!(
        client.wait(&t2.id, Some(T)).await.expect("r").status,
        Status::Succeeded
    );
    let ev = events.next(T).await;
    assert_eq!(ev["task_id"], t2.id.as_str(), "a replay started: {ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_or_unauthorised_control_changes_nothing() {
    let pool = unique_pool("ctl");
    let keys = Keys::new("", &[]);
    let w = keys.worker(&pool).start().await;
    let queue = broker::topology::pool_queue(&pool);
    let unsigned = client().await;
    let alice = client().await.with_credentials(keys.creds(&keys.alice));
    let ops = client().await.with_credentials(keys.creds(&keys.ops));

    // Unsigned drain, then alice's (no control right): both ignored and audited.
    unsigned.drain(Some(&w.id)).await.expect("drain");
    keys.wait_audit(|l| l["event"] == "control_ignored" && l["reason"] == "not_allowed:unsigned")
        .await;
    alice.drain(Some(&w.id)).await.expect("drain");
    let l = keys
        .wait_audit(|l| l["event"] == "control_ignored" && l["key"] == "alice")
        .await;
    assert_eq!(l["reason"], "not_allowed:control");
    assert_eq!(
        krill_tests::consumers(&queue).await,
        Some(1),
        "drained by an unauthorised drain"
    );
    let t = task("echo still-serving");
    alice.submit(&pool, &t).await.expect("submit");
    assert_eq!(
        alice.wait(&t.id, Some(T)).await.expect("r").status,
        Status::Succeeded
    );

    // An unsigned cancel of a running task changes nothing; ops' cancel stops it.
    let t = task("sleep 30");
    let mut started = Events::bind(&format!("task.{pool}.started")).await;
    alice.submit(&pool, &t).await.expect("submit");
    let _ = started.wait_task(&t.id, T).await;
    unsigned.cancel(&t.id).await.expect("cancel");
    keys.wait_audit(|l| {
        l["event"] == "control_ignored" && l["action"] == "cancel" && l["task_id"] == t.id.as_str()
    })
    .await;
    // A key without the control right cancels its own task.
    alice.cancel(&t.id).await.expect("cancel");
    let r = alice.wait(&t.id, Some(T)).await.expect("r");
    assert_eq!(r.status, Status::Cancelled, "{r:?}");

    // A cancel by alice of a task ops signed is ignored; ops' own works.
    let t = task("sleep 1; echo done");
    ops.submit(&pool, &t).await.expect("submit");
    let _ = started.wait_task(&t.id, T).await;
    alice.cancel(&t.id).await.expect("cancel");
    let r = ops.wait(&t.id, Some(T)).await.expect("r");
    assert_eq!(
        r.status,
        Status::Succeeded,
        "alice cancelled ops' task: {r:?}"
    );

    // A signed drain from ops drains; a captured copy published again after a
    // resume changes nothing.
    let key = broker::topology::control_key("drain", &w.id);
    let body = serde_json::to_vec(&broker::protocol::Control::Drain {
        worker: Some(w.id.clone()),
    })
    .expect("json");
    let headers =
        keys.creds(&keys.ops)
            .control_headers(&key, &body, broker::trust::CONTROL_VALIDITY);
    let publish_drain = || async {
        broker::amqp::publish_confirmed(
            &ops.channel(),
            broker::topology::CONTROL_EXCHANGE,
            &key,
            &body,
            lapin::BasicProperties::default().with_headers(headers.clone()),
            false,
        )
        .await
        .expect("drain");
    };
    publish_drain().await;
    for _ in 0..100 {
        if krill_tests::consumers(&queue).await == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(krill_tests::consumers(&queue).await, Some(0));
    ops.resume(Some(&w.id)).await.expect("resume");
    w_consuming(&queue).await;
    publish_drain().await;
    keys.wait_audit(|l| l["event"] == "control_ignored" && l["reason"] == "replayed")
        .await;
    assert_eq!(
        krill_tests::consumers(&queue).await,
        Some(1),
        "a replayed drain drained"
    );
    let applied = keys
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "control_applied" && l["key"] == "ops")
        .count();
    assert!(applied >= 2, "drain and resume audited");
}

async fn w_consuming(queue: &str) {
    for _ in 0..100 {
        if krill_tests::consumers(queue).await == Some(1) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not consuming again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pool_keys_are_accepted_at_once_for_a_rotation() {
    let pool = unique_pool("rotate");
    let keys = Keys::new("", &[]);
    let new_key = PoolKey::generate();
    let new_path = keys.dir.join("pool-2.key");
    new_key.save(&new_path).expect("save");
    let _w = keys
        .worker(&pool)
        .env(
            "KRILL_POOL_KEY",
            &format!("{},{}", keys.pool_key.display(), new_path.display()),
        )
        .start()
        .await;
    for (n, pk) in [(1, keys.pool.public()), (2, new_key.public())] {
        let creds = broker::trust::Credentials::new(Some(keys.alice.clone()), Some(pk));
        let c = client().await.with_credentials(creds);
        let t = with_secret(
            task("test -n \"$K\" && echo \"key $N ok\""),
            "K",
            "rotation-1",
        );
        let mut t = t;
        t.env.insert("N".into(), n.to_string());
        c.submit(&pool, &t).await.expect("submit");
        let r = c.wait(&t.id, Some(T)).await.expect("result");
        assert_eq!(r.status, Status::Succeeded, "key {n}: {r:?}");
        assert_eq!(r.stdout, format!("key {n} ok\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_task_replayed_by_a_control_key_runs_and_by_others_does_not() {
    let pool = unique_pool("deadreplay");
    let keys = Keys::new("", &[]);
    let _w = keys.worker(&pool).start().await;
    let c = client().await;
    let t = task("echo second-chance");
    let (b, _) = prepared(&broker::trust::Credentials::default(), &pool, &t);
    let mut h = FieldTable::default();
    sign_task(
        &keys.alice,
        &pool,
        &broker::topology::reply_queue(&t.id),
        now_unix() - 5,
        &b,
    )
    .expect("sign")
    .put(&mut h);
    publish_raw(
        &c,
        &pool,
        &t.id,
        &b,
        broker::client::task_properties(&t).with_headers(h),
    )
    .await;
    let r = c.wait(&t.id, Some(T)).await.expect("answered");
    assert!(
        r.error.as_deref().is_some_and(|e| e.starts_with("expired")),
        "{r:?}"
    );
    let d = dead_letter(&c, &t.id).await;
    assert!(d.signed && d.submitter.as_deref() == Some("alice"), "{d:?}");
    // Alice (no control right) replays it: refused, and back in krill.dead.
    // (`wait` deleted the reply queue: declare it again for each answer.)
    let alice = client().await.with_credentials(keys.creds(&keys.alice));
    broker::topology::declare_reply_queue(&c.channel(), &t.id)
        .await
        .expect("queue");
    replay_dead(&alice, &t.id).await;
    let r = alice.wait(&t.id, Some(T)).await.expect("answered");
    assert!(
        r.error
            .as_deref()
            .is_some_and(|e| e.starts_with("not_allowed:control")),
        "{r:?}"
    );
    let d = dead_letter(&c, &t.id).await;
    assert_eq!(d.reason, "not_allowed:control");
    // Ops replays it: it runs, still as alice's task.
    let ops = client().await.with_credentials(keys.creds(&keys.ops));
    broker::topology::declare_reply_queue(&c.channel(), &t.id)
        .await
        .expect("queue");
    replay_dead(&ops, &t.id).await;
    let r = ops.wait(&t.id, Some(T)).await.expect("result");
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "second-chance\n");
    assert_eq!(r.submitter.as_deref(), Some("alice"));
    let l = keys
        .wait_audit(|l| l["event"] == "task_accepted" && l["task_id"] == t.id.as_str())
        .await;
    assert_eq!(l["replayed_by"], "ops");
    let _ = take_dead(&c, &t.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_keys_or_allow_unsigned_refuses_to_start() {
    let out = std::process::Command::new(krill_tests::bin("krill-worker"))
        .env("KRILL_AMQP_URL", krill_tests::amqp_url())
        .env_remove("KRILL_ALLOW_UNSIGNED")
        .env_remove("KRILL_TRUSTED_KEYS")
        .output()
        .expect("krill-worker");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--trusted-keys") && err.contains("--allow-unsigned"),
        "{err}"
    );
    // A signature header alone (no set) is a bad signature, not unsigned.
    let mut h = FieldTable::default();
    h.insert(
        ShortString::from(KEY_HEADER),
        AMQPValue::LongString(LongString::from("AAAA")),
    );
    assert!(broker::trust::Signed::take(Some(&h)).is_err());
    let _ = SecretValue::Plain(Secret("x".into()));
}

/// `text` base64-encoded at each of the three alignments it can have inside a
/// longer encoded value, each trimmed to the characters that do not depend on
/// its neighbours.
fn base64_forms(text: &str) -> Vec<String> {
    (0..3)
        .map(|pad| {
            let mut bytes = vec![b'\0'; pad];
            bytes.extend_from_slice(text.as_bytes());
            let enc = broker::trust::b64(&bytes);
            enc[4..enc.len() - 4].to_string()
        })
        .collect()
}

/// Files under `dir` holding `needle` (grep -rlF).
fn grep_dir(dir: &str, needle: &str) -> Vec<String> {
    let out = std::process::Command::new("grep")
        .args(["-rlF", "--", needle, dir])
        .output()
        .expect("grep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_sensitive_value_is_anywhere_on_the_broker_or_in_logs() {
    let data_dir =
        std::env::var("KRILL_RABBITMQ_DATA_DIR").unwrap_or_else(|_| "/var/lib/rabbitmq".into());
    let pool = unique_pool("sweep");
    let keys = Keys::new("", &[]);
    let b = keys.worker(&pool);
    let mut w = b.clone().start().await;
    let hex = || uuid::Uuid::new_v4().simple().to_string();
    // The secret, and the sensitive output the script derives from it (its
    // upper case: in no message anyone sends).
    let secret = format!("sk-live-{}", hex());
    let sensitive = secret.to_uppercase();
    // Canaries: plain values that must be found where the secrets are not, so
    // the sweep is shown to see the reply queue's and the pool queue's data.
    let canary_result = format!("canary-{}", hex());
    let canary_queued = format!("canary-{}", hex());
    let alice = client().await.with_credentials(keys.creds(&keys.alice));
    let script = r#"echo "using $API_KEY"
printf 'TOKEN=%s\n' "$(printf %s "$API_KEY" | tr a-z A-Z)" >> "$KRILL_SENSITIVE_OUTPUT"
printf 'plain=%s\n' "$(printf %s "$CANARY" | tr a-z A-Z)" >> "$KRILL_OUTPUT""#;
    let make = |canary: &str| {
        let mut t = with_secret(task(script), "API_KEY", &secret);
        t.env.insert("CANARY".into(), canary.to_string());
        t
    };
    // Run and taken; run and left in its reply queue.
    let a = make("a");
    alice.submit(&pool, &a).await.expect("submit");
    let mut r = alice.wait(&a.id, Some(T)).await.expect("result");
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "using ***\n");
    assert!(open_result_outputs(&mut r, &keys.alice).is_empty());
    assert_eq!(
        r.output("TOKEN"),
        Some(sensitive.as_str()),
        "the sweep looks for the right value"
    );
    let left = make(&canary_result);
    alice.submit(&pool, &left).await.expect("submit");
    loop {
        if let broker::client::Peek::Done(r) = alice.peek(&left.id).await.expect("peek") {
            assert_eq!(r.status, Status::Succeeded);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Dead-lettered (expired), and queued while no worker runs.
    let expired = make("x");
    let (body, _) = prepared(&keys.creds(&keys.alice), &pool, &expired);
    let mut h = FieldTable::default();
    sign_task(
        &keys.alice,
        &pool,
        &broker::topology::reply_queue(&expired.id),
        now_unix() - 5,
        &body,
    )
    .expect("sign")
    .put(&mut h);
    let c = client().await;
    publish_raw(
        &c,
        &pool,
        &expired.id,
        &body,
        broker::client::task_properties(&expired).with_headers(h),
    )
    .await;
    let _ = dead_letter(&c, &expired.id).await;
    w.kill();
    let queued = make(&canary_queued);
    alice.submit(&pool, &queued).await.expect("submit");

    // The broker's disk: the canaries show the sweep sees both queues' data.
    let shown_result = canary_result.to_uppercase();
    let deadline = std::time::Instant::now() + T;
    while grep_dir(&data_dir, &shown_result).is_empty()
        || grep_dir(&data_dir, &canary_queued).is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the canaries never reached {data_dir}: the sweep would prove nothing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut needles = vec![secret.clone(), sensitive.clone()];
    needles.extend(base64_forms(&secret));
    needles.extend(base64_forms(&sensitive));
    for n in &needles {
        let found = grep_dir(&data_dir, n);
        assert!(found.is_empty(), "`{n}` is on the broker's disk: {found:?}");
    }
    // Every message of the pool's queue, the left reply queue and krill.dead.
    use lapin::options::{BasicGetOptions, BasicNackOptions};
    for queue in [
        broker::topology::pool_queue(&pool),
        broker::topology::reply_queue(&left.id),
        broker::topology::DEAD_QUEUE.to_string(),
    ] {
        // Again while the queue looks empty: another test of this binary may
        // hold krill.dead's messages unacked at that moment (take_dead, dead list).
        let mut n = 0;
        for _ in 0..100 {
            let mut held = Vec::new();
            while let Some(m) = c
                .channel()
                .basic_get(
                    ShortString::from(queue.as_str()),
                    BasicGetOptions { no_ack: false },
                )
                .await
                .expect("get")
            {
                n += 1;
                let text = String::from_utf8_lossy(&m.delivery.data).to_string();
                let headers = format!("{:?}", m.delivery.properties.headers());
                for needle in &needles {
                    assert!(
                        !text.contains(needle.as_str()),
                        "{queue}: a message holds `{needle}`"
                    );
                    assert!(
                        !headers.contains(needle.as_str()),
                        "{queue}: headers hold `{needle}`"
                    );
                }
                held.push(m.delivery.acker);
            }
            for a in held {
                a.nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
                .expect("nack");
            }
            if n > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(n > 0, "{queue} is empty: nothing was checked");
    }
    // `krill dead list --json` (again if another client held krill.dead's
    // messages at that moment), the worker's log, the audit file.
    let mut listed = String::new();
    for _ in 0..100 {
        let out = std::process::Command::new(krill_tests::bin("krill"))
            .env("KRILL_AMQP_URL", krill_tests::amqp_url())
            .args(["dead", "list", "--json"])
            .output()
            .expect("krill dead list");
        assert!(out.status.success());
        listed = String::from_utf8_lossy(&out.stdout).to_string();
        if listed.contains(&expired.id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed.contains(&expired.id), "the dead letter is listed");
    let log = w.log_text();
    let audit = std::fs::read_to_string(&keys.audit).expect("audit");
    assert!(audit.contains(&a.id), "the audit file has the run");
    for needle in &needles {
        assert!(
            !listed.contains(needle.as_str()),
            "dead list shows `{needle}`"
        );
        assert!(
            !log.contains(needle.as_str()),
            "worker log shows `{needle}`"
        );
        assert!(
            !audit.contains(needle.as_str()),
            "audit file shows `{needle}`"
        );
    }
    // Clean up what is left: the dead letter, the queued task (with the pool).
    let _ = take_dead(&c, &expired.id).await;
    w.restart(&b).await;
    // The sweep's basic.get and requeue counted as a delivery: the task now
    // follows the redelivery rule (not run again: worker_lost).
    let r = alice
        .wait(&queued.id, Some(T))
        .await
        .expect("the queued task is answered");
    assert_eq!(r.status, Status::WorkerLost, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_keys_sign_seal_and_open_from_the_cli() {
    // scripts/up's key set-up (scripts/lib.sh krill_ensure_keys), in a scratch HOME.
    let dir = std::env::temp_dir().join(format!("krill-up-{}", uuid::Uuid::new_v4().simple()));
    let home = dir.join("home");
    let etc = dir.join("etc");
    std::fs::create_dir_all(&home).expect("home");
    let lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lib.sh");
    let krill = krill_tests::bin("krill");
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(r#"set -e; source "$1"; krill_ensure_keys "$2" "$3"; krill_ensure_keys "$2" "$3""#)
        .args([
            "-",
            &lib.display().to_string(),
            &krill.display().to_string(),
            &etc.display().to_string(),
        ])
        .env("HOME", &home)
        .env_remove("KRILL_KEY")
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trusted = std::fs::read_to_string(etc.join("trusted-keys")).expect("trusted keys");
    assert_eq!(
        trusted
            .lines()
            .filter(|l| l.starts_with("ed25519 "))
            .count(),
        1,
        "{trusted}"
    );
    assert!(trusted.contains(" control"));

    let pool = unique_pool("quick");
    let _w = krill_tests::WorkerBuilder::new(&pool)
        .env("KRILL_ALLOW_UNSIGNED", "false")
        .env(
            "KRILL_TRUSTED_KEYS",
            &etc.join("trusted-keys").display().to_string(),
        )
        .env(
            "KRILL_POOL_KEY",
            &etc.join("pool.key").display().to_string(),
        )
        .env("KRILL_REQUIRE_SEALED_SECRETS", "true")
        .start()
        .await;
    let cli = |args: &[&str]| {
        std::process::Command::new(&krill)
            .env("KRILL_AMQP_URL", krill_tests::amqp_url())
            .env("KRILL_POOL", &pool)
            .env("HOME", &home)
            .env_remove("KRILL_KEY")
            .env_remove("KRILL_POOL_PUBLIC_KEY")
            .args(args)
            .output()
            .expect("krill")
    };
    let script = r#"echo "key is $API_KEY"; echo "token=$API_KEY-t" >> "$KRILL_SENSITIVE_OUTPUT""#;
    let out = cli(&[
        "submit",
        "--secret",
        "API_KEY=sk-live-quick-1",
        "--show-sensitive",
        "--",
        script,
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(stdout, "key is ***\n");
    assert!(
        stderr.contains("token=sk-live-quick-1-t"),
        "opened with --show-sensitive: {stderr}"
    );
    let out = cli(&[
        "submit",
        "--json",
        "--secret",
        "API_KEY=sk-live-quick-1",
        "--",
        script,
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["outputs"][0]["value"], "***");
    assert!(v["outputs"][0]["sealed"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert!(v["submitter"]
        .as_str()
        .is_some_and(|s| s.starts_with("user@") || s.contains('@')));
    // Sealed to another pool's key: refused as unsealable_secret, exit 125.
    let other = dir.join("other.key");
    assert!(
        cli(&["keys", "new-pool", "--out", &other.display().to_string()])
            .status
            .success()
    );
    let other_pub = format!("{}.pub", other.display());
    let out = cli(&[
        "--pool-public-key",
        &other_pub,
        "submit",
        "--secret",
        "API_KEY=x-123456",
        "--",
        "true",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("unsealable_secret"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}
