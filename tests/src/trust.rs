//! Helpers for the signing tests: keys written to a temp dir, a worker that
//! trusts them, raw publishing of hand-made (or tampered) messages, dead letters.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use broker::client::Client;
use broker::dead::DeadLetter;
use broker::protocol::Task;
use broker::topology;
use broker::trust::{Credentials, Identity, PoolKey};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::BasicProperties;

use crate::WorkerBuilder;

/// Keys of one test: a submitter `alice`, an operator `ops` (control right),
/// the pool's key pair, and the files a worker reads.
#[derive(Debug)]
pub struct Keys {
    pub dir: PathBuf,
    pub alice: Identity,
    pub ops: Identity,
    pub pool: PoolKey,
    pub trusted: PathBuf,
    pub pool_key: PathBuf,
    pub audit: PathBuf,
}

impl Keys {
    /// Makes the keys; `alice` gets `alice_rules`, `extra` lines are appended
    /// to the trusted-keys file as they are.
    pub fn new(alice_rules: &str, extra: &[String]) -> Keys {
        let dir =
            std::env::temp_dir().join(format!("krill-keys-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("key dir");
        let alice = Identity::generate("alice").expect("key");
        let ops = Identity::generate("ops").expect("key");
        let pool = PoolKey::generate();
        let pool_key = dir.join("pool.key");
        pool.save(&pool_key).expect("pool key");
        let trusted = dir.join("trusted-keys");
        let mut text = format!(
            "# test keys\n{} {alice_rules}\n{} control\n",
            alice.public_line(),
            ops.public_line()
        );
        for l in extra {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(&trusted, text).expect("trusted keys");
        Keys {
            audit: dir.join("audit.jsonl"),
            dir,
            alice,
            ops,
            pool,
            trusted,
            pool_key,
        }
    }

    /// A worker that trusts these keys, requires sealed secrets and audits.
    pub fn worker(&self, pool: &str) -> WorkerBuilder {
        WorkerBuilder::new(pool)
            .env("KRILL_ALLOW_UNSIGNED", "false")
            .env("KRILL_TRUSTED_KEYS", &self.trusted.display().to_string())
            .env("KRILL_POOL_KEY", &self.pool_key.display().to_string())
            .env("KRILL_REQUIRE_SEALED_SECRETS", "true")
            .env("KRILL_AUDIT_FILE", &self.audit.display().to_string())
    }

    /// Credentials of `id` sealing to this pool's key.
    pub fn creds(&self, id: &Identity) -> Credentials {
        Credentials::new(Some(id.clone()), Some(self.pool.public()))
    }

    /// The audit file's lines so far.
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (up to 30 s) for an audit line that `pred` accepts.
    pub async fn wait_audit(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(l) = self.audit_lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no such audit line; have:\n{:#?}",
                self.audit_lines()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The body and properties `creds` would publish `task` with to `pool`
/// (reply queue: the task's own).
pub fn prepared(creds: &Credentials, pool: &str, task: &Task) -> (Vec<u8>, BasicProperties) {
    let reply_to = topology::reply_queue(&task.id);
    let (body, headers) = creds.prepare_task(pool, &reply_to, task).expect("prepare");
    (
        body,
        broker::client::task_properties(task).with_headers(headers),
    )
}

/// Publishes exactly `body` with `props` to `pool` (confirmed), declaring the
/// task's reply queue first.
pub async fn publish_raw(c: &Client, pool: &str, id: &str, body: &[u8], props: BasicProperties) {
    topology::declare_reply_queue(&c.channel(), id)
        .await
        .expect("reply queue");
    c.channel()
        .basic_publish(
            ShortString::from(topology::TASKS_EXCHANGE),
            ShortString::from(pool),
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

/// Waits (up to 60 s) until task `id` is in `krill.dead`; returns how it is listed.
pub async fn dead_letter(c: &Client, id: &str) -> DeadLetter {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(d) = c
            .dead_list()
            .await
            .expect("dead list")
            .into_iter()
            .find(|d| d.id.as_deref() == Some(id))
        {
            return d;
        }
        assert!(Instant::now() < deadline, "{id} never reached krill.dead");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Takes task `id`'s dead letters out of `krill.dead` (others are put back);
/// returns their bodies and headers.
pub async fn take_dead(c: &Client, id: &str) -> Vec<(Vec<u8>, FieldTable)> {
    let mut held = Vec::new();
    let mut taken = Vec::new();
    while let Some(m) = c
        .channel()
        .basic_get(
            ShortString::from(topology::DEAD_QUEUE),
            BasicGetOptions { no_ack: false },
        )
        .await
        .expect("basic.get")
    {
        let d = m.delivery;
        if d.properties.message_id().as_ref().map(|s| s.as_str()) == Some(id) {
            taken.push((
                d.data.clone(),
                d.properties.headers().clone().unwrap_or_default(),
            ));
            d.acker.ack(BasicAckOptions::default()).await.expect("ack");
        } else {
            held.push(d.acker);
        }
    }
    for a in held {
        a.nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await
        .expect("nack");
    }
    taken
}

/// [`take_dead`] until it takes at least one (up to 60 s): another client
/// listing `krill.dead` holds its messages for a moment, invisible to us.
pub async fn take_dead_some(c: &Client, id: &str) -> Vec<(Vec<u8>, FieldTable)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let taken = take_dead(c, id).await;
        if !taken.is_empty() {
            return taken;
        }
        assert!(Instant::now() < deadline, "{id} is not in krill.dead");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `client.dead_replay(Some(id))` until it replays `id` (up to 60 s; see
/// [`take_dead_some`] for why a first try may not see it).
pub async fn replay_dead(client: &Client, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (done, skipped) = client.dead_replay(Some(id)).await.expect("dead replay");
        if done.iter().any(|d| d == id) {
            return;
        }
        assert!(skipped.is_empty(), "not replayed: {skipped:?}");
        assert!(Instant::now() < deadline, "{id} was never replayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether Docker ever created a container for task `id` since `since` (unix seconds).
pub fn container_ever_made(id: &str, since: i64) -> bool {
    let out = std::process::Command::new("docker")
        .args([
            "events",
            "--since",
            &since.to_string(),
            "--until",
            &chrono::Utc::now().timestamp().to_string(),
            "--filter",
            &format!("label=krill.task={id}"),
            "--format",
            "{{.Action}}",
        ])
        .output()
        .expect("docker events (is Docker running? scripts/test starts it)");
    assert!(out.status.success(), "docker events failed: {out:?}");
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}
