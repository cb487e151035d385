//! The trust gate one delivery passes before anything is made for it (no
//! cgroup, container or helper): the checks of [`trust`](crate::trust) in the
//! order a delivery meets them, and what a refusal does.
//!
//! ```text
//! Gate::open(delivery)      signature + validity, before the body is parsed
//!  │                        (a first delivery of a signed task starts its claim here)
//!  ├─ decode (intake)       the body (not a task: Gate::malformed answers and dead-letters it)
//! Gate::admit(task)         the key's restrictions, plain secrets, sealed secrets opened
//!  ├─ decide (consumer)     resend / adopt / answer / run
//! Gate::claim               the claims stream: the first claim of a signed message runs it
//!  └─ run, every result through Outbound::finish_result(Gate::stamp): signer's
//!     name, warnings, sensitive outputs sealed to the task's reply_key
//! refuse(): counted, logged, audited, answered `rejected` where reply_to can be
//!     trusted, dead-lettered with x-krill-reason / x-krill-detail (plain secrets redacted)
//! ```

use std::sync::Arc;

use broker::protocol::{Status, Task, TaskResult};
use broker::topology::{DETAIL_HEADER, SUBMITTER_HEADER};
use broker::trust::{PublicKey, Reason};
use lapin::BasicProperties;
use tokio_util::task::AbortOnDropHandle;

use crate::intake::{dead_letter, id_of, Settle};
use crate::outbound::Stamp;
use crate::trust::{AuditEvent, ClaimError, Envelope, Rejection};
use crate::worker::Shared;

/// Header naming what was removed from a dead letter's body.
pub const REDACTED_HEADER: &str = "x-krill-redacted";

/// One delivery as the gate sees it.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub data: &'a [u8],
    pub props: &'a BasicProperties,
    pub settle: &'a Arc<dyn Settle>,
}

/// A delivery whose signature passed (or an unsigned one this pool runs).
#[derive(Debug)]
pub struct Gate {
    pub env: Envelope,
    /// The claim started on a first delivery, while the task is parsed and admitted.
    early: Option<AbortOnDropHandle<Result<bool, ClaimError>>>,
}

impl Gate {
    /// Checks the signature, before the body is parsed; `None`: refused (and
    /// settled). A first delivery of a signed task is claimed right away, while
    /// it is parsed and admitted: a message refused below stays refused whatever
    /// its claim says, so claiming first changes nothing but the wait.
    pub async fn open(shared: &Arc<Shared>, d: Delivery<'_>, redelivered: bool) -> Option<Gate> {
        let env = match shared.trust.envelope(d.props, d.data) {
            Ok(env) => env,
            Err(rejection) => {
                refuse(shared, d, None, None, rejection).await;
                return None;
            }
        };
        // The broker's flag alone: a count header on a first delivery is the publisher's.
        let first = !redelivered;
        let early = (first && env.claim.is_some() && shared.trust.claims.is_some()).then(|| {
            let (shared, env) = (shared.clone(), env.clone());
            AbortOnDropHandle::new(tokio::spawn(async move {
                let out = &shared.run.outbound;
                shared
                    .trust
                    .claim(&env, out, 1, &shared.run.metrics.trust)
                    .await
            }))
        });
        Some(Gate { env, early })
    }

    /// The key that signed the task (it may cancel it without the control right).
    pub fn signer(&self) -> Option<PublicKey> {
        self.env.signer.as_ref().map(|s| s.key)
    }

    /// The name of the key that signed the task.
    pub fn submitter(&self) -> Option<String> {
        self.env.signer.as_ref().map(|s| s.name.clone())
    }

    /// What every result of this task carries; `reply_key`: where its
    /// sensitive outputs are sealed to (the signed task's own).
    pub fn stamp(&self, reply_key: Option<String>) -> Stamp {
        Stamp {
            submitter: self.submitter(),
            warnings: self.env.warnings.clone(),
            reply_key,
        }
    }

    /// A body that is not a task (`intake::decode` said why): counted, audited,
    /// answered `rejected` where `id` and `reply_to` are known, dead-lettered
    /// with `reason`.
    pub async fn malformed(
        &self,
        shared: &Shared,
        d: Delivery<'_>,
        reason: &str,
        id: Option<String>,
        reply_to: Option<String>,
    ) {
        tracing::warn!(%reason, task_id = ?id, "malformed task message");
        shared.run.metrics.finished(Status::Rejected, None);
        let trust = &shared.trust;
        let mut line = trust.task_line(
            AuditEvent::TaskRejected,
            id.as_deref(),
            Some(&self.env),
            None,
        );
        line.reason = Some("invalid".into());
        line.detail = Some(reason.to_string());
        trust.audit.record(line);
        let out = &shared.run.outbound;
        if let (Some(id), Some(reply_to)) = (id, reply_to) {
            let mut result = TaskResult::rejected(id, reason);
            result.worker = Some(shared.id.clone());
            let result = out.finish_result(result, &self.stamp(None));
            out.result(&result, &reply_to).await;
        }
        dead_letter(out, d.data, d.props, reason, Vec::new(), d.settle.as_ref()).await;
    }

    /// The key's restrictions (with the pool's defaults for what the task
    /// leaves out), plain secrets, sealed secrets opened in place; false:
    /// refused (and settled).
    pub async fn admit(&self, shared: &Shared, d: Delivery<'_>, task: &mut Task) -> bool {
        let image = shared.cfg.images.first().map(String::as_str);
        match shared
            .trust
            .admit(&self.env, task, &shared.run.policy, image)
        {
            Ok(()) => true,
            Err(rejection) => {
                refuse(shared, d, Some(task), Some(&self.env), rejection).await;
                false
            }
        }
    }

    /// Claims the task right before it runs (signed tasks on a pool with
    /// trusted keys; anything else passes). False: another claim came first
    /// (refused as `replayed`), or the claim could not be made (the delivery
    /// goes back to the queue). True: run it (audited as accepted).
    pub async fn claim(
        &mut self,
        shared: &Shared,
        d: Delivery<'_>,
        task: &Task,
        attempt: u32,
    ) -> bool {
        let claimed = match self.early.take() {
            Some(handle) => handle.await.unwrap_or(Err(ClaimError::GaveUp)),
            None => {
                let out = &shared.run.outbound;
                shared
                    .trust
                    .claim(&self.env, out, attempt, &shared.run.metrics.trust)
                    .await
            }
        };
        match claimed {
            Ok(true) => {
                let line = shared.trust.task_line(
                    AuditEvent::TaskAccepted,
                    Some(&task.id),
                    Some(&self.env),
                    Some(task),
                );
                shared.trust.audit.record(line);
                true
            }
            Ok(false) => {
                let rejection = Rejection {
                    reason: Reason::Replayed,
                    detail: "this signed message was already claimed by a worker of the pool"
                        .into(),
                    signer: self.submitter(),
                };
                refuse(shared, d, Some(task), Some(&self.env), rejection).await;
                false
            }
            Err(e) => {
                tracing::error!(task_id = %task.id, error = %e,
                    "cannot claim a signed task; giving it back to the queue");
                if let Err(e) = d.settle.requeue().await {
                    tracing::warn!(task_id = %task.id, error = %e, "requeue failed; the broker will redeliver");
                }
                false
            }
        }
    }

    /// Audits a result of this task.
    pub fn finished(&self, shared: &Shared, result: &TaskResult) {
        shared.trust.audit_finished(Some(&self.env), result);
    }
}

/// A delivery refused by the trust checks: counted, logged, audited, answered
/// `rejected` where its `reply_to` can be trusted, and dead-lettered with the
/// reason code in `x-krill-reason` and the text in `x-krill-detail`. Nothing ran
/// for it. The dead copy of a task refused for plain-text secrets keeps none.
pub async fn refuse(
    shared: &Shared,
    d: Delivery<'_>,
    task: Option<&Task>,
    env: Option<&Envelope>,
    rejection: Rejection,
) {
    let code = rejection.reason.code();
    let id = task
        .map(|t| t.id.clone())
        .or_else(|| id_of(d.props, d.data));
    let submitter = env
        .and_then(|e| e.signer.as_ref())
        .map(|s| s.name.clone())
        .or_else(|| rejection.signer.clone());
    tracing::warn!(task_id = ?id, reason = %code, detail = %rejection.detail, key = ?submitter,
        "task refused before anything ran");
    shared.run.metrics.trust.rejected(&code);
    shared.run.metrics.finished(Status::Rejected, None);
    shared
        .trust
        .audit_rejection(id.as_deref(), d.props, d.data, env, task, &rejection);
    let reply_to = d
        .props
        .reply_to()
        .as_ref()
        .map(|r| r.as_str().to_string())
        .filter(|r| !r.is_empty());
    if let (true, Some(id), Some(reply_to)) = (rejection.reason.answerable(), &id, &reply_to) {
        let mut result = TaskResult::rejected(id.clone(), rejection.message());
        result.worker = Some(shared.id.clone());
        let stamp = Stamp {
            submitter: submitter.clone(),
            ..Stamp::default()
        };
        let result = shared.run.outbound.finish_result(result, &stamp);
        shared.run.outbound.result(&result, reply_to).await;
    }
    let redacted = (rejection.reason == Reason::NotAllowed("plain_secret"))
        .then(|| redact_plain_secrets(d.data))
        .flatten();
    let mut extra = vec![(DETAIL_HEADER.to_string(), rejection.detail.clone())];
    if let Some(s) = submitter {
        extra.push((SUBMITTER_HEADER.to_string(), s));
    }
    if redacted.is_some() {
        extra.push((REDACTED_HEADER.to_string(), "plain-text secrets".into()));
    }
    let body = redacted.as_deref().unwrap_or(d.data);
    let out = &shared.run.outbound;
    dead_letter(out, body, d.props, &code, extra, d.settle.as_ref()).await;
}

/// Replaces every plain secret's value with `**REDACTED**` in a task body
/// (the dead-letter copy of a task refused for its plain secrets must not keep
/// them); `None` when the body is not a task object with secrets.
pub fn redact_plain_secrets(body: &[u8]) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let secrets = v.get_mut("secrets")?.as_object_mut()?;
    for value in secrets.values_mut() {
        if value.is_string() {
            *value = serde_json::Value::String("**REDACTED**".into());
        }
    }
    serde_json::to_vec(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::{Incoming, MemorySettle};
    use crate::outbound::{MemorySink, Outgoing};
    use crate::trust::verify::UNSIGNED_WARNING;
    use crate::trust::Trust;
    use broker::protocol::{Secret, TaskState as State};
    use broker::trust::{Credentials, Identity, PoolKey, TrustedKeys};
    use lapin::types::{AMQPValue, FieldTable, ShortString};

    const SECRET: &str = "sk-live-gate-test-4f1d9c";

    struct Pool {
        alice: Identity,
        key: PoolKey,
        sink: Arc<MemorySink>,
        shared: Arc<Shared>,
    }

    /// A pool trusting alice (pool p-test, no network) and ops (control),
    /// requiring sealed secrets. No claims stream (unit tests).
    fn pool() -> Pool {
        let alice = Identity::generate("alice").expect("key");
        let ops = Identity::generate("ops").expect("key");
        let key = PoolKey::generate();
        let mut trust = Trust::open("w-test", "p-test");
        let lines = format!(
            "{} pools=p-test network=no\n{} control\n",
            alice.public_line(),
            ops.public_line()
        );
        trust.policy.trusted = TrustedKeys::parse(&lines).expect("trusted keys");
        trust.policy.allow_unsigned = false;
        trust.policy.require_sealed = true;
        trust.policy.pool_keys = vec![key.clone()];
        let sink = Arc::new(MemorySink::default());
        let shared = crate::worker::for_tests_with(sink.clone(), trust);
        Pool {
            alice,
            key,
            sink,
            shared,
        }
    }

    fn task(id: &str, extra: &str) -> Task {
        serde_json::from_str(&format!(
            r#"{{"version":1,"id":"{id}","script":"true"{extra}}}"#
        ))
        .expect("task")
    }

    fn with_secret(mut t: Task) -> Task {
        t.secrets
            .insert("API_KEY".into(), Secret(SECRET.into()).into());
        t
    }

    /// A delivery of `body` with `headers`, answered on `krill.reply.<id>`.
    fn incoming(id: &str, body: Vec<u8>, headers: FieldTable) -> (Incoming, Arc<MemorySettle>) {
        let settle = Arc::new(MemorySettle::default());
        let props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(id))
            .with_reply_to(ShortString::from(format!("krill.reply.{id}")))
            .with_headers(headers);
        let d = Incoming {
            data: body,
            props,
            redelivered: false,
            settle: settle.clone(),
            line: None,
        };
        (d, settle)
    }

    /// `t` signed by `who` (sealing its secrets to `seal_to`, if any).
    fn signed(who: &Identity, seal_to: Option<&PoolKey>, t: &Task) -> (Vec<u8>, FieldTable) {
        let creds = Credentials::new(Some(who.clone()), seal_to.map(PoolKey::public));
        creds
            .prepare_task("p-test", &format!("krill.reply.{}", t.id), t)
            .expect("prepared")
    }

    async fn handled(shared: &Arc<Shared>, d: Incoming) {
        let slot = shared.slots.clone().acquire_owned().await.expect("slot");
        crate::consumer::handle(shared.clone(), d, slot).await;
    }

    /// The one dead letter sent: its reason, its extra headers and its body.
    fn dead(sink: &MemorySink) -> (String, Vec<(String, String)>, String) {
        let all: Vec<_> = sink
            .sent()
            .into_iter()
            .filter_map(|m| match m {
                Outgoing::DeadLetter(d) => Some(d),
                _ => None,
            })
            .collect();
        let [d] = all.as_slice() else {
            panic!("one dead letter: {all:?}");
        };
        let body = String::from_utf8_lossy(&d.data).into_owned();
        (d.reason.clone(), d.extra.clone(), body)
    }

    fn header<'a>(extra: &'a [(String, String)], name: &str) -> Option<&'a str> {
        extra
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn nothing_ran(sink: &MemorySink) {
        assert!(
            !sink.events().iter().any(|e| e.state == State::Started),
            "nothing started: {:?}",
            sink.events()
        );
    }

    #[tokio::test]
    async fn an_unsigned_task_on_a_trusted_pool_is_dead_lettered_unanswered_and_nothing_runs() {
        let p = pool();
        let body = serde_json::to_vec(&task("t1", "")).expect("json");
        let (d, settle) = incoming("t1", body, FieldTable::default());
        handled(&p.shared, d).await;
        let (reason, extra, _) = dead(&p.sink);
        assert_eq!(reason, "not_allowed:unsigned");
        assert!(header(&extra, DETAIL_HEADER).is_some_and(|t| t.contains("signed")));
        assert!(p.sink.results().is_empty(), "its reply_to is not trusted");
        nothing_ran(&p.sink);
        assert_eq!(settle.counts(), (1, 0));
    }

    #[tokio::test]
    async fn a_changed_byte_is_a_bad_signature() {
        let p = pool();
        let t = task("t1", "");
        let (mut body, headers) = signed(&p.alice, None, &t);
        let at = body.len() - 3;
        body[at] = b' ';
        let (d, settle) = incoming("t1", body, headers);
        handled(&p.shared, d).await;
        assert_eq!(dead(&p.sink).0, "bad_signature");
        assert!(p.sink.results().is_empty());
        nothing_ran(&p.sink);
        assert_eq!(settle.counts(), (1, 0));
    }

    #[tokio::test]
    async fn a_plain_secret_is_refused_by_name_and_its_dead_copy_keeps_no_value() {
        let p = pool();
        let t = with_secret(task("t1", ""));
        let (body, headers) = signed(&p.alice, None, &t);
        assert!(String::from_utf8_lossy(&body).contains(SECRET));
        let (d, _) = incoming("t1", body, headers);
        handled(&p.shared, d).await;
        let (reason, extra, body) = dead(&p.sink);
        assert_eq!(reason, "not_allowed:plain_secret");
        assert!(!body.contains(SECRET), "{body}");
        assert!(header(&extra, REDACTED_HEADER).is_some());
        assert_eq!(header(&extra, SUBMITTER_HEADER), Some("alice"));
        let results = p.sink.results();
        let [(r, reply_to)] = results.as_slice() else {
            panic!("one answer: {results:?}");
        };
        assert_eq!(reply_to, "krill.reply.t1");
        assert_eq!(r.status, Status::Rejected);
        assert_eq!(r.submitter.as_deref(), Some("alice"));
        let error = r.error.as_deref().unwrap_or("");
        assert!(
            error.starts_with("not_allowed:plain_secret") && error.contains("API_KEY"),
            "{error}"
        );
        assert!(!error.contains(SECRET));
        nothing_ran(&p.sink);
    }

    #[tokio::test]
    async fn a_restriction_of_the_key_is_answered_with_what_it_may_not_do() {
        let p = pool();
        let t = task("t1", r#","limits":{"network":true}"#);
        let (body, headers) = signed(&p.alice, Some(&p.key), &t);
        let (d, _) = incoming("t1", body, headers);
        handled(&p.shared, d).await;
        assert_eq!(dead(&p.sink).0, "not_allowed:network");
        let results = p.sink.results();
        assert_eq!(results.len(), 1);
        assert!(results[0]
            .0
            .error
            .as_deref()
            .unwrap_or("")
            .starts_with("not_allowed:network: key `alice`"));
        nothing_ran(&p.sink);
    }

    #[tokio::test]
    async fn a_secret_sealed_to_another_pool_key_is_unsealable() {
        let p = pool();
        let other = PoolKey::generate();
        let t = with_secret(task("t1", ""));
        let (body, headers) = signed(&p.alice, Some(&other), &t);
        let (d, _) = incoming("t1", body, headers);
        handled(&p.shared, d).await;
        let (reason, _, body) = dead(&p.sink);
        assert_eq!(reason, "unsealable_secret");
        assert!(!body.contains(SECRET));
        nothing_ran(&p.sink);
    }

    #[tokio::test]
    async fn a_signed_sealed_task_passes_and_every_message_names_its_signer() {
        let p = pool();
        let t = with_secret(task("t1", ""));
        let (body, headers) = signed(&p.alice, Some(&p.key), &t);
        assert!(!String::from_utf8_lossy(&body).contains(SECRET));
        let (d, settle) = incoming("t1", body, headers);
        handled(&p.shared, d).await;
        assert!(p.sink.dead_letters().is_empty(), "{:?}", p.sink.sent());
        let results = p.sink.results();
        let [(r, _)] = results.as_slice() else {
            panic!("one result: {results:?}");
        };
        // No sandbox is enabled in unit tests: it got as far as the runner.
        assert_eq!(r.status, Status::SandboxError, "{r:?}");
        assert_eq!(r.submitter.as_deref(), Some("alice"));
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let events = p.sink.events();
        assert_eq!(events.len(), 2);
        assert!(events
            .iter()
            .all(|e| e.submitter.as_deref() == Some("alice")));
        assert_eq!(settle.counts(), (1, 0));
    }

    #[tokio::test]
    async fn a_cancel_by_another_key_does_not_stop_a_task_before_it_starts() {
        let p = pool();
        let mallory = Identity::generate("mallory").expect("key");
        p.shared.tasks.cancel_by(
            "t1",
            "cancelled by request (krill cancel)",
            Some(mallory.public()),
        );
        let (body, headers) = signed(&p.alice, Some(&p.key), &task("t1", ""));
        let (d, _) = incoming("t1", body, headers);
        handled(&p.shared, d).await;
        assert_eq!(p.sink.results()[0].0.status, Status::SandboxError);
        // Alice's own cancel does.
        p.shared.tasks.cancel_by(
            "t2",
            "cancelled by request (krill cancel)",
            Some(p.alice.public()),
        );
        let (body, headers) = signed(&p.alice, Some(&p.key), &task("t2", ""));
        let (d, _) = incoming("t2", body, headers);
        handled(&p.shared, d).await;
        assert_eq!(p.sink.results()[1].0.status, Status::Cancelled);
    }

    #[tokio::test]
    async fn an_open_pool_runs_unsigned_tasks_and_says_so_in_every_result() {
        let sink = Arc::new(MemorySink::default());
        let shared = crate::worker::for_tests(sink.clone());
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("x-unrelated"),
            AMQPValue::LongString("x".into()),
        );
        let body = serde_json::to_vec(&task("t1", "")).expect("json");
        let (d, _) = incoming("t1", body, headers);
        handled(&shared, d).await;
        let results = sink.results();
        assert_eq!(results.len(), 1);
        assert!(results[0].0.warnings.iter().any(|w| w == UNSIGNED_WARNING));
        assert_eq!(results[0].0.submitter, None);
    }

    #[test]
    fn plain_secrets_are_redacted_from_dead_copies() {
        let body = br#"{"version":1,"id":"t","script":"x","secrets":{"A":"plain-1","B":{"sealed":"QQ=="}}}"#;
        let out = String::from_utf8(redact_plain_secrets(body).expect("redacted")).expect("utf8");
        assert!(!out.contains("plain-1") && out.contains("QQ=="), "{out}");
    }
}
