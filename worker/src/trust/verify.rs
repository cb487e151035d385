//! The decisions taken on a delivery before anything runs (pure: no I/O, the
//! clock is a parameter): whose signature it carries, whether it is valid now,
//! whether the key may ask for what the task asks, and its sealed secrets opened.
//!
//! Order, for a task: signature headers → key trusted → signature verifies
//! (over pool, `reply_to`, `not_after` and the body's hash) → not expired and
//! not valid for longer than the pool accepts → (the task is parsed) → the
//! key's restrictions → plain secrets on a pool that requires sealing → sealed
//! secrets opened. The replay check (the claims stream) comes last, in
//! `trust::replay`, so only a task that will run is claimed.

use std::time::Duration;

use broker::protocol::{SecretValue, Task};
use broker::trust::seal::open_task_secrets;
use broker::trust::sign::{claim_id, control_message, replay_message, task_message};
use broker::trust::{
    PoolKey, PublicKey, Reason, Restrictions, Signed, TaskShape, TrustedKeys, CLOCK_SKEW,
};
use lapin::BasicProperties;

/// The warning every result of an unsigned task carries on an `--allow-unsigned` pool.
pub const UNSIGNED_WARNING: &str = "unsigned task: this pool runs with --allow-unsigned, \
     so anyone who may publish to krill.tasks runs code on it";

/// Longest validity a control message may claim (a cancel lives as long as the
/// cancellation stream keeps it).
pub const MAX_CONTROL_VALIDITY: Duration = broker::trust::CANCEL_VALIDITY;

/// What a worker trusts and requires.
#[derive(Debug, Default)]
pub struct TrustPolicy {
    pub trusted: TrustedKeys,
    /// Pool keys that open sealed secrets (several during a rotation).
    pub pool_keys: Vec<PoolKey>,
    /// Run unsigned tasks (and obey unsigned control messages), with a warning.
    pub allow_unsigned: bool,
    /// Reject tasks with plain-text secrets.
    pub require_sealed: bool,
    /// Longest `not_after - now` a task may ask for.
    pub max_validity: Duration,
}

/// A trusted key that signed something.
#[derive(Debug, Clone, PartialEq)]
pub struct Signer {
    pub name: String,
    pub key: PublicKey,
    /// May send control messages.
    pub control: bool,
    pub rules: Restrictions,
}

/// What the signature check found out about a task delivery.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// The trusted key that signed it; `None`: unsigned (allowed on this pool).
    pub signer: Option<Signer>,
    /// Replay-protection id and the time until which it must be remembered.
    pub claim: Option<(String, u64)>,
    /// The name of the control key that authorized a dead-letter replay.
    pub replayed_by: Option<String>,
    /// Warnings for the result (an unsigned task on an open pool).
    pub warnings: Vec<String>,
}

/// Why a delivery is refused: the reason code, and a text that names what is
/// wrong (a variable, a key, a limit) but never a secret's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
    /// The name of the trusted key whose signature verified, when it did.
    pub signer: Option<String>,
}

impl Rejection {
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
            signer: None,
        }
    }

    fn by(mut self, signer: &Signer) -> Self {
        self.signer = Some(signer.name.clone());
        self
    }

    /// `<code>: <detail>`, as a result's `error` reads.
    pub fn message(&self) -> String {
        format!("{}: {}", self.reason.code(), self.detail)
    }
}

fn signer(t: &broker::trust::TrustedKey) -> Signer {
    Signer {
        name: t.name.clone(),
        key: t.key,
        control: t.rules.control,
        rules: t.rules.clone(),
    }
}

impl TrustPolicy {
    /// Whether this worker checks signatures at all (a trusted-keys file was given).
    pub fn enabled(&self) -> bool {
        !self.trusted.is_empty()
    }

    /// The key `sig` names, trusted; or what to do with a key that is not.
    fn lookup(&self, key: &PublicKey) -> Option<Signer> {
        self.trusted.get(key).map(signer)
    }

    fn unsigned(&self, why: &str) -> Result<Envelope, Rejection> {
        if self.allow_unsigned {
            let mut warnings = vec![UNSIGNED_WARNING.to_string()];
            if !why.is_empty() {
                warnings.push(why.to_string());
            }
            Ok(Envelope {
                warnings,
                ..Envelope::default()
            })
        } else {
            Err(Rejection::new(
                Reason::NotAllowed("unsigned"),
                "this pool runs only tasks signed by a trusted key",
            ))
        }
    }

    fn validity(&self, not_after: u64, now: u64, max: Duration) -> Result<(), Rejection> {
        if now > not_after {
            return Err(Rejection::new(
                Reason::Expired,
                format!("valid until {not_after} (unix seconds), now is {now}"),
            ));
        }
        let limit = now + max.as_secs() + CLOCK_SKEW.as_secs();
        if not_after > limit {
            return Err(Rejection::new(
                Reason::NotAllowed("not_after"),
                format!(
                    "valid for {}s; this pool accepts at most {}s",
                    not_after - now,
                    max.as_secs()
                ),
            ));
        }
        Ok(())
    }

    /// Checks a task delivery's signature for `pool` at time `now` (unix seconds).
    pub fn envelope(
        &self,
        pool: &str,
        props: &BasicProperties,
        body: &[u8],
        now: u64,
    ) -> Result<Envelope, Rejection> {
        let headers = props.headers().as_ref();
        let sig = Signed::take(headers)
            .map_err(|e| Rejection::new(Reason::BadSignature, e.to_string()))?;
        let Some(sig) = sig else {
            return self.unsigned("");
        };
        let Some(who) = self.lookup(&sig.key) else {
            if self.allow_unsigned {
                return self.unsigned(&format!(
                    "signed by key {} which this pool does not trust; run as unsigned",
                    sig.key
                ));
            }
            return Err(Rejection::new(
                Reason::UntrustedKey,
                format!("key {} is not in this pool's trusted keys", sig.key),
            ));
        };
        let reply_to = props.reply_to().as_ref().map(|r| r.as_str()).unwrap_or("");
        let msg = task_message(&sig.key, pool, reply_to, sig.not_after, body)
            .map_err(|e| Rejection::new(Reason::BadSignature, e.to_string()))?;
        sig.verify(&msg).map_err(|_| {
            Rejection::new(
                Reason::BadSignature,
                format!(
                    "the signature of key `{}` does not verify for pool `{pool}` and this \
                     reply_to, not_after and body",
                    who.name
                ),
            )
        })?;
        let by = |r: Rejection| r.by(&who);
        let replay = Signed::take_replay(headers)
            .map_err(|e| by(Rejection::new(Reason::BadSignature, e.to_string())))?;
        let (claim, replayed_by) = match replay {
            None => {
                self.validity(sig.not_after, now, self.max_validity)
                    .map_err(by)?;
                ((claim_id(&msg), sig.not_after), None)
            }
            Some(r) => {
                let replayer = self.lookup(&r.key).ok_or_else(|| {
                    by(Rejection::new(
                        Reason::UntrustedKey,
                        format!(
                            "the replay is authorized by key {}, which is not trusted",
                            r.key
                        ),
                    ))
                })?;
                let rmsg = replay_message(&r.key, pool, &sig.signature_b64(), r.not_after);
                r.verify(&rmsg).map_err(|_| {
                    by(Rejection::new(
                        Reason::BadSignature,
                        format!(
                            "the replay authorization of key `{}` does not verify",
                            replayer.name
                        ),
                    ))
                })?;
                if !replayer.control {
                    return Err(by(Rejection::new(
                        Reason::NotAllowed("control"),
                        format!(
                            "key `{}` may not replay tasks (no control right)",
                            replayer.name
                        ),
                    )));
                }
                self.validity(r.not_after, now, self.max_validity)
                    .map_err(by)?;
                ((claim_id(&rmsg), r.not_after), Some(replayer.name))
            }
        };
        Ok(Envelope {
            signer: Some(who),
            claim: Some(claim),
            replayed_by,
            warnings: Vec::new(),
        })
    }

    /// Checks a parsed task against its signer's restrictions and the pool's
    /// rule on plain secrets, and opens its sealed secrets in place.
    pub fn admit(
        &self,
        env: &Envelope,
        task: &mut Task,
        shape: &TaskShape<'_>,
    ) -> Result<(), Rejection> {
        let by = |r: Rejection| match &env.signer {
            Some(s) => r.by(s),
            None => r,
        };
        if let Some(s) = &env.signer {
            s.rules.check(shape).map_err(|(what, why)| {
                Rejection::new(Reason::NotAllowed(what), format!("key `{}` {why}", s.name)).by(s)
            })?;
        }
        if self.require_sealed {
            if let Some(name) = task
                .secrets
                .iter()
                .find(|(_, v)| !v.is_sealed())
                .map(|(k, _)| k)
            {
                return Err(by(Rejection::new(
                    Reason::NotAllowed("plain_secret"),
                    format!(
                        "secret `{name}` is in plain text; this pool requires secrets sealed \
                         to its key (krill submit --pool-public-key)"
                    ),
                )));
            }
        }
        if task.secrets.values().any(SecretValue::is_sealed) {
            if self.pool_keys.is_empty() {
                let name = task
                    .secrets
                    .iter()
                    .find(|(_, v)| v.is_sealed())
                    .map(|(k, _)| k.clone())
                    .unwrap_or_default();
                return Err(by(Rejection::new(
                    Reason::UnsealableSecret,
                    format!("secret `{name}` is sealed but this worker has no --pool-key"),
                )));
            }
            let key = env.signer.as_ref().map(|s| s.key);
            open_task_secrets(task, &self.pool_keys, key.as_ref())
                .map_err(|e| by(Rejection::new(Reason::UnsealableSecret, e.to_string())))?;
        }
        Ok(())
    }

    /// Checks a control message's signature: `Ok(None)` for an unsigned one on
    /// an `--allow-unsigned` pool (obeyed as before), `Ok(Some(signer))` for a
    /// valid signature of a trusted key (whether it may do what it asks is the
    /// caller's decision), an error otherwise.
    pub fn control(
        &self,
        routing_key: &str,
        props: &BasicProperties,
        body: &[u8],
        now: u64,
    ) -> Result<Option<(Signer, Signed)>, Rejection> {
        let sig = Signed::take(props.headers().as_ref())
            .map_err(|e| Rejection::new(Reason::BadSignature, e.to_string()))?;
        let Some(sig) = sig else {
            return self.unsigned("").map(|_| None);
        };
        let Some(who) = self.lookup(&sig.key) else {
            if self.allow_unsigned {
                return Ok(None);
            }
            return Err(Rejection::new(
                Reason::UntrustedKey,
                format!("key {} is not in this pool's trusted keys", sig.key),
            ));
        };
        let msg = control_message(&sig.key, routing_key, sig.not_after, body);
        sig.verify(&msg).map_err(|_| {
            Rejection::new(
                Reason::BadSignature,
                format!("the signature of key `{}` does not verify", who.name),
            )
        })?;
        self.validity(sig.not_after, now, MAX_CONTROL_VALIDITY)?;
        Ok(Some((who, sig)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::protocol::{SandboxKind, Secret};
    use broker::trust::{Credentials, Identity};
    use lapin::types::{FieldTable, ShortString};

    const NOW: u64 = 1_900_000_000;

    struct Fixture {
        alice: Identity,
        ops: Identity,
        pool: PoolKey,
        policy: TrustPolicy,
    }

    fn fixture() -> Fixture {
        let alice = Identity::generate("alice").expect("key");
        let ops = Identity::generate("ops").expect("key");
        let pool = PoolKey::generate();
        let text = format!(
            "{} pools=p network=no\n{} control\n",
            alice.public_line(),
            ops.public_line()
        );
        let policy = TrustPolicy {
            trusted: TrustedKeys::parse(&text).expect("keys"),
            pool_keys: vec![
                PoolKey::from_json(&pool.to_json(), std::path::Path::new("k")).expect("k"),
            ],
            allow_unsigned: false,
            require_sealed: true,
            max_validity: Duration::from_secs(24 * 3600),
        };
        Fixture {
            alice,
            ops,
            pool,
            policy,
        }
    }

    fn props(reply_to: &str, headers: FieldTable) -> BasicProperties {
        BasicProperties::default()
            .with_reply_to(ShortString::from(reply_to))
            .with_headers(headers)
    }

    fn shape(pool: &str) -> TaskShape<'_> {
        TaskShape {
            pool,
            sandbox: SandboxKind::Process,
            image: None,
            network: false,
            timeout: Duration::from_secs(60),
            memory_bytes: 1 << 20,
        }
    }

    /// A signed delivery of `task` (validity `secs` from NOW).
    fn signed(f: &Fixture, id: &Identity, task: &Task, secs: u64) -> (BasicProperties, Vec<u8>) {
        let creds = Credentials::new(
            Some(Identity::from_json(&id.to_json(), std::path::Path::new("k")).expect("k")),
            Some(f.pool.public()),
        );
        let (body, _) = creds
            .prepare_task("p", "krill.reply.t", task)
            .expect("prep");
        let mut h = FieldTable::default();
        broker::trust::sign::sign_task(id, "p", "krill.reply.t", NOW + secs, &body)
            .expect("sign")
            .put(&mut h);
        (props("krill.reply.t", h), body)
    }

    fn reason(r: Result<Envelope, Rejection>) -> Reason {
        r.expect_err("rejected").reason
    }

    #[test]
    fn a_good_task_passes_and_its_secrets_open() {
        let f = fixture();
        let mut t = Task::new("t", "deploy");
        t.secrets
            .insert("API_KEY".into(), Secret("sk-live-xyz".into()).into());
        let (p, body) = signed(&f, &f.alice, &t, 60);
        let env = f.policy.envelope("p", &p, &body, NOW).expect("accepted");
        assert_eq!(env.signer.as_ref().map(|s| s.name.as_str()), Some("alice"));
        assert!(env.claim.is_some());
        let mut task: Task = serde_json::from_slice(&body).expect("task");
        f.policy
            .admit(&env, &mut task, &shape("p"))
            .expect("admitted");
        assert_eq!(task.secrets["API_KEY"].plain(), Some("sk-live-xyz"));
    }

    #[test]
    fn every_rejection_has_its_reason() {
        let f = fixture();
        let t = Task::new("t", "deploy");
        let (p, body) = signed(&f, &f.alice, &t, 60);
        // Tampered body, pool, reply_to.
        let mut tampered = body.clone();
        let i = tampered.iter().position(|b| *b == b'd').expect("d");
        tampered[i] = b'D';
        assert_eq!(
            reason(f.policy.envelope("p", &p, &tampered, NOW)),
            Reason::BadSignature
        );
        assert_eq!(
            reason(f.policy.envelope("q", &p, &body, NOW)),
            Reason::BadSignature
        );
        let other_reply = p.clone().with_reply_to(ShortString::from("krill.reply.x"));
        assert_eq!(
            reason(f.policy.envelope("p", &other_reply, &body, NOW)),
            Reason::BadSignature
        );
        // Expired, too long.
        assert_eq!(
            reason(f.policy.envelope("p", &p, &body, NOW + 61)),
            Reason::Expired
        );
        let (long, lbody) = signed(&f, &f.alice, &t, 3 * 24 * 3600);
        assert_eq!(
            reason(f.policy.envelope("p", &long, &lbody, NOW)),
            Reason::NotAllowed("not_after")
        );
        // Unsigned, unknown key.
        let unsigned = props("krill.reply.t", FieldTable::default());
        assert_eq!(
            reason(f.policy.envelope("p", &unsigned, &body, NOW)),
            Reason::NotAllowed("unsigned")
        );
        let stranger = Identity::generate("eve").expect("key");
        let (sp, sbody) = signed(&f, &stranger, &t, 60);
        assert_eq!(
            reason(f.policy.envelope("p", &sp, &sbody, NOW)),
            Reason::UntrustedKey
        );
        // Restrictions: pool, network.
        let env = f.policy.envelope("p", &p, &body, NOW).expect("ok");
        let mut task: Task = serde_json::from_slice(&body).expect("task");
        let mut s = shape("p");
        s.network = true;
        assert_eq!(
            f.policy.admit(&env, &mut task, &s).map_err(|e| e.reason),
            Err(Reason::NotAllowed("network"))
        );
        assert_eq!(
            f.policy
                .admit(&env, &mut task, &shape("other"))
                .map_err(|e| e.reason),
            Err(Reason::NotAllowed("pool"))
        );
        // Plain secret on a pool that requires sealing: named, value not shown.
        task.secrets
            .insert("TOKEN".into(), Secret("plain-value-1".into()).into());
        let e = f
            .policy
            .admit(&env, &mut task, &shape("p"))
            .expect_err("plain");
        assert_eq!(e.reason, Reason::NotAllowed("plain_secret"));
        assert!(
            e.detail.contains("`TOKEN`") && !e.detail.contains("plain-value"),
            "{e:?}"
        );
        // A secret sealed to another pool key.
        let other = PoolKey::generate();
        let mut t2 = Task::new("t", "deploy");
        t2.secrets.insert(
            "TOKEN".into(),
            SecretValue::Sealed(
                broker::trust::seal::seal_secret(
                    &other.public(),
                    "TOKEN",
                    Some(&f.alice.public()),
                    "v-123",
                )
                .expect("seal"),
            ),
        );
        let (p2, body2) = signed(&f, &f.alice, &t2, 60);
        let env2 = f.policy.envelope("p", &p2, &body2, NOW).expect("ok");
        let mut task2: Task = serde_json::from_slice(&body2).expect("task");
        assert_eq!(
            f.policy
                .admit(&env2, &mut task2, &shape("p"))
                .map_err(|e| e.reason),
            Err(Reason::UnsealableSecret)
        );
    }

    #[test]
    fn replays_need_a_control_key_and_get_their_own_claim() {
        let f = fixture();
        let t = Task::new("t", "deploy");
        let (p, body) = signed(&f, &f.alice, &t, 60);
        let original = f.policy.envelope("p", &p, &body, NOW).expect("ok").claim;
        let sig = Signed::take(p.headers().as_ref())
            .expect("ok")
            .expect("sig");
        let authorize = |by: &Identity| {
            let mut h = p.headers().clone().unwrap_or_default();
            broker::trust::sign::sign_replay(by, "p", &sig.signature_b64(), NOW + 3600)
                .put_replay(&mut h);
            p.clone().with_headers(h)
        };
        // Expired task, replay by ops: accepted, with another claim id.
        let env = f
            .policy
            .envelope("p", &authorize(&f.ops), &body, NOW + 600)
            .expect("replay accepted");
        assert_eq!(env.replayed_by.as_deref(), Some("ops"));
        assert_ne!(env.claim, original);
        assert_eq!(
            reason(f.policy.envelope("p", &authorize(&f.alice), &body, NOW)),
            Reason::NotAllowed("control")
        );
    }

    #[test]
    fn open_pools_run_unsigned_tasks_with_a_warning() {
        let mut f = fixture();
        f.policy.allow_unsigned = true;
        let unsigned = props("krill.reply.t", FieldTable::default());
        let env = f
            .policy
            .envelope("p", &unsigned, b"{}", NOW)
            .expect("allowed");
        assert!(env.signer.is_none());
        assert_eq!(env.warnings, vec![UNSIGNED_WARNING.to_string()]);
    }

    #[test]
    fn control_messages_verify_over_their_routing_key() {
        let f = fixture();
        let body = br#"{"action":"drain"}"#;
        let mut h = FieldTable::default();
        broker::trust::sign::sign_control(&f.ops, "drain.all", NOW + 60, body).put(&mut h);
        let p = BasicProperties::default().with_headers(h);
        let (who, _) = f
            .policy
            .control("drain.all", &p, body, NOW)
            .expect("ok")
            .expect("signed");
        assert!(who.control);
        assert_eq!(
            f.policy.control("drain.w1", &p, body, NOW).map(|_| ()),
            Err(Rejection::new(
                Reason::BadSignature,
                "the signature of key `ops` does not verify"
            ))
        );
        assert_eq!(
            f.policy
                .control("drain.all", &BasicProperties::default(), body, NOW)
                .map_err(|e| e.reason),
            Err(Reason::NotAllowed("unsigned"))
        );
    }
}
