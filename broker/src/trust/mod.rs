//! Zero-trust queue: signed tasks and control messages, secrets sealed to the
//! pool key, sensitive outputs sealed to the submitter (pure: no I/O beyond
//! reading and writing key files).
//!
//! ## Layout
//! - [`keys`]: [`Identity`] (a submitter's Ed25519 + X25519 keys), [`PoolKey`]
//!   (the pool's X25519 key pair), public keys, key files.
//! - [`sign`]: what a signature covers and the `x-krill-*` headers it travels in.
//! - [`seal`]: sealed secrets (to the pool) and sealed outputs (to the submitter).
//! - [`trusted`]: the workers' trusted-keys file and its restrictions.
//! - [`Credentials`]: what a submitting client seals and signs with.
//!
//! The README's "Signed tasks and sealed secrets" section has the worked
//! example any language can follow.

pub mod keys;
pub mod seal;
pub mod sign;
pub mod trusted;

use std::sync::Arc;
use std::time::Duration;

use lapin::types::FieldTable;

pub use keys::{
    b64, default_key_path, unb64, BoxPublicKey, Identity, KeyError, PoolKey, PublicKey,
};
pub use seal::{open_result_outputs, SealError};
pub use sign::{now_unix, SignError, Signed};
pub use trusted::{Restrictions, TaskShape, TrustedKey, TrustedKeys, TrustedKeysError};

use crate::protocol::Task;

/// How long a task the CLI signs stays valid (`not_after` = now + this).
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// The longest validity any pool accepts; the claims stream keeps claims at
/// least this long (plus [`CLOCK_SKEW`]).
pub const MAX_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// How far clocks of submitters and workers may disagree.
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Validity of a signed cancel: as long as the cancellation stream keeps it,
/// so a worker that starts later still honours it.
pub const CANCEL_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Validity of a signed drain or resume.
pub const CONTROL_VALIDITY: Duration = Duration::from_secs(300);
/// Validity of a replay authorization (`krill dead replay`).
pub const REPLAY_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Why a worker refused a task or a control message before running anything;
/// [`Reason::code`] goes into the dead letter's `x-krill-reason` header, the
/// metric's label and the audit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Malformed signature headers, or a signature that does not verify.
    BadSignature,
    /// Signed by a key the worker does not trust.
    UntrustedKey,
    /// Outside what the key (or the pool) allows: `not_allowed:<what>`.
    NotAllowed(&'static str),
    /// Past its `not_after`.
    Expired,
    /// This signed message was already claimed by a worker of the pool.
    Replayed,
    /// A sealed secret no pool key opens, or sealed for another name or signer.
    UnsealableSecret,
}

impl Reason {
    /// The reason code: `bad_signature`, `untrusted_key`, `not_allowed:<what>`,
    /// `expired`, `replayed`, `unsealable_secret`.
    pub fn code(&self) -> String {
        match self {
            Reason::BadSignature => "bad_signature".into(),
            Reason::UntrustedKey => "untrusted_key".into(),
            Reason::NotAllowed(what) => format!("not_allowed:{what}"),
            Reason::Expired => "expired".into(),
            Reason::Replayed => "replayed".into(),
            Reason::UnsealableSecret => "unsealable_secret".into(),
        }
    }

    /// Whether the submitter may be answered: only when the signature (and so
    /// `reply_to`) verified, and not for a replay (the first copy answers).
    pub fn answerable(&self) -> bool {
        !matches!(
            self,
            Reason::BadSignature | Reason::UntrustedKey | Reason::Replayed
        ) && !matches!(self, Reason::NotAllowed("unsigned"))
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.code())
    }
}

/// What went wrong preparing a message for the wire.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error("serializing: {0}")]
    Json(#[from] serde_json::Error),
}

/// What a submitting client seals and signs with. The default seals nothing
/// and signs nothing (today's unsigned messages).
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Signs tasks and control messages; its X25519 half becomes each task's
    /// `reply_key` (when the task sets none).
    pub identity: Option<Arc<Identity>>,
    /// Plain secrets are sealed to it before they leave the client.
    pub pool_public_key: Option<BoxPublicKey>,
    /// `not_after` = now + this.
    pub validity: Duration,
}

impl Default for Credentials {
    fn default() -> Self {
        Credentials {
            identity: None,
            pool_public_key: None,
            validity: DEFAULT_VALIDITY,
        }
    }
}

impl Credentials {
    /// Signing and sealing with these keys.
    pub fn new(identity: Option<Identity>, pool_public_key: Option<BoxPublicKey>) -> Self {
        Credentials {
            identity: identity.map(Arc::new),
            pool_public_key,
            validity: DEFAULT_VALIDITY,
        }
    }

    /// The body and the signature headers to publish `task` with to `pool`,
    /// answered on `reply_to`: plain secrets sealed (with a pool key), the
    /// `reply_key` set and the whole signed (with an identity).
    pub fn prepare_task(
        &self,
        pool: &str,
        reply_to: &str,
        task: &Task,
    ) -> Result<(Vec<u8>, FieldTable), TrustError> {
        let signer = self.identity.as_ref().map(|i| i.public());
        let needs_seal =
            self.pool_public_key.is_some() && task.secrets.values().any(|v| !v.is_sealed());
        let needs_reply_key = self.identity.is_some() && task.reply_key.is_none();
        let body = if needs_seal || needs_reply_key {
            let mut t = task.clone();
            if let Some(pk) = &self.pool_public_key {
                seal::seal_task_secrets(&mut t, pk, signer.as_ref())?;
            }
            if let (Some(id), true) = (&self.identity, needs_reply_key) {
                t.reply_key = Some(id.reply_public().to_b64());
            }
            serde_json::to_vec(&t)?
        } else {
            serde_json::to_vec(task)?
        };
        let mut headers = FieldTable::default();
        if let Some(id) = &self.identity {
            let not_after = now_unix() + self.validity.as_secs();
            sign::sign_task(id, pool, reply_to, not_after, &body)?.put(&mut headers);
        }
        Ok((body, headers))
    }

    /// The signature headers of a control message (none without an identity).
    pub fn control_headers(
        &self,
        routing_key: &str,
        body: &[u8],
        validity: Duration,
    ) -> FieldTable {
        let mut headers = FieldTable::default();
        if let Some(id) = &self.identity {
            let not_after = now_unix() + validity.as_secs();
            sign::sign_control(id, routing_key, not_after, body).put(&mut headers);
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Secret, SecretValue};

    #[test]
    fn prepared_tasks_carry_only_ciphertext_and_verify() {
        let id = Identity::generate("alice").expect("key");
        let pool = PoolKey::generate();
        let creds = Credentials::new(Some(id), Some(pool.public()));
        let mut t = Task::new("t1", "deploy.sh");
        t.secrets
            .insert("API_KEY".into(), Secret("sk-live-abcdef".into()).into());
        let (body, headers) = creds
            .prepare_task("default", "krill.reply.t1", &t)
            .expect("prep");
        let text = String::from_utf8(body.clone()).expect("utf8");
        assert!(!text.contains("sk-live"), "{text}");
        let signed = Signed::take(Some(&headers)).expect("ok").expect("signed");
        let msg = sign::task_message(
            &signed.key,
            "default",
            "krill.reply.t1",
            signed.not_after,
            &body,
        )
        .expect("msg");
        signed.verify(&msg).expect("verifies");
        let mut back: Task = serde_json::from_slice(&body).expect("task");
        assert!(back.reply_key.is_some());
        seal::open_task_secrets(&mut back, &[pool], Some(&signed.key)).expect("opens");
        assert_eq!(
            back.secrets["API_KEY"],
            SecretValue::Plain(Secret("sk-live-abcdef".into()))
        );
    }

    /// The worked example of the README ("Signed tasks and sealed secrets"),
    /// made with PyNaCl: the signature verifies and the secret opens.
    #[test]
    fn the_readme_worked_example_verifies_and_opens() {
        let path = std::path::Path::new("example");
        let seed = b64(&[1u8; 32]);
        let id = Identity::from_json(
            &format!(
                r#"{{"type":"krill-key-v1","name":"alice","ed25519":"{seed}","x25519":"{}"}}"#,
                b64(&[3u8; 32])
            ),
            path,
        )
        .expect("identity");
        assert_eq!(
            id.public().to_b64(),
            "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w="
        );
        assert_eq!(
            id.reply_public().to_b64(),
            "Xf7dO2vUf2+ijuFdlp1bsOpTd01Ii9r53xxuASSz7yI="
        );
        let pool = PoolKey::from_json(
            &format!(
                r#"{{"type":"krill-pool-key-v1","x25519":"{}"}}"#,
                b64(&[2u8; 32])
            ),
            path,
        )
        .expect("pool key");
        assert_eq!(
            pool.public().to_b64(),
            "zo060cy2M+x7cMF4FKXHbs0CloUFDTRHRboFhw5YfVk="
        );
        let body = br#"{"version":1,"id":"0192f4c8-7d1e-7c3a-9a51-5f0e1b2c3d4e","script":"deploy.sh","secrets":{"API_KEY":{"sealed":"v8j6/eSmGNTdOGs7NAqSdl0ajuC6oy7nIpRi8p3Hmj3lPWB3vDkx6PsEG7VB07Tmp7LdKQQJe0rUI7G/Axe5CM7h/hI6nhbzQ0efWwQWMPHaeAsZEOcHeWJ/0FLwUYsAIDz6agX6gX7FDX7zXeX18tkURpOu2Dkn3AGE6Cnv+SI="}},"reply_key":"Xf7dO2vUf2+ijuFdlp1bsOpTd01Ii9r53xxuASSz7yI="}"#;
        let reply_to = "krill.reply.0192f4c8-7d1e-7c3a-9a51-5f0e1b2c3d4e";
        let msg = sign::task_message(&id.public(), "default", reply_to, 1_767_225_600, body)
            .expect("text");
        assert!(String::from_utf8_lossy(&msg)
            .ends_with("\n6bc8856a9b3c5f08dcc2a02ca0b219dec6e400144d2d51bc2cbffa8a23237ef0\n"));
        let mut h = FieldTable::default();
        let long = |s: &str| lapin::types::AMQPValue::LongString(lapin::types::LongString::from(s));
        h.insert(sign::KEY_HEADER.into(), long(&id.public().to_b64()));
        h.insert(
            sign::SIGNATURE_HEADER.into(),
            long("Ru3Wn5UqY2T0cYIpeQ69NPBSwd839PK1YIjmmsigAJ54yVuEkLg0HBZ39EjQ79lNn8qCGKD4U1N2ge2PISQyCQ=="),
        );
        h.insert(sign::NOT_AFTER_HEADER.into(), long("1767225600"));
        let signed = Signed::take(Some(&h)).expect("ok").expect("signed");
        signed
            .verify(&msg)
            .expect("the README's signature verifies");
        assert_eq!(
            signed,
            sign::sign_task(&id, "default", reply_to, 1_767_225_600, body).expect("sign")
        );
        let mut task: Task = serde_json::from_slice(body).expect("task");
        seal::open_task_secrets(&mut task, &[pool], Some(&id.public())).expect("opens");
        assert_eq!(task.secrets["API_KEY"].plain(), Some("sk-live-123"));
    }

    #[test]
    fn reasons_have_their_codes() {
        assert_eq!(Reason::NotAllowed("network").code(), "not_allowed:network");
        assert!(!Reason::BadSignature.answerable());
        assert!(!Reason::Replayed.answerable());
        assert!(Reason::Expired.answerable());
    }
}
