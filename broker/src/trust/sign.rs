//! The signature wire format: what is signed, and the AMQP headers it travels in.
//!
//! The message body stays the exact bytes of the task (or control) JSON; the
//! signature goes in three headers (long strings):
//!
//! | header | value |
//! |---|---|
//! | `x-krill-key` | base64 of the signer's 32-byte Ed25519 public key |
//! | `x-krill-signature` | base64 of the 64-byte Ed25519 signature |
//! | `x-krill-not-after` | unix seconds (decimal, no sign or leading zeros); invalid after it |
//!
//! The signature is over a domain-separated text, one field per line, each line
//! ending in `\n` (a `reply_to` holding `\n` is never valid):
//!
//! ```text
//! krill-task-v1                     krill-control-v1                krill-replay-v1
//! <x-krill-key>                     <x-krill-key>                   <x-krill-replay-key>
//! <pool = routing key>              <routing key>                   <pool>
//! <reply_to>                        <x-krill-not-after>             <x-krill-signature of the task>
//! <x-krill-not-after>               <hex sha256 of the body>        <x-krill-replay-not-after>
//! <hex sha256 of the body>
//! ```
//!
//! A *replay authorization* (`krill dead replay` by a key with the control
//! right) keeps the task's own three headers and adds `x-krill-replay-key`,
//! `x-krill-replay-signature` and `x-krill-replay-not-after` over the third
//! text: the task keeps its signer (and so its sealed secrets and restrictions)
//! while the replayer takes the place of its expiry and replay checks.
//!
//! The hash of the signed text ([`claim_id`]) names the message for replay
//! protection: the same signed message published twice has the same id.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use sha2::{Digest, Sha256};

use super::keys::{b64, unb64, Identity, PublicKey};

/// Header: the signer's public key (base64).
pub const KEY_HEADER: &str = "x-krill-key";
/// Header: the signature (base64).
pub const SIGNATURE_HEADER: &str = "x-krill-signature";
/// Header: unix seconds after which the message is invalid.
pub const NOT_AFTER_HEADER: &str = "x-krill-not-after";
/// Header: the replayer's public key (dead-letter replay).
pub const REPLAY_KEY_HEADER: &str = "x-krill-replay-key";
/// Header: the replay authorization's signature.
pub const REPLAY_SIGNATURE_HEADER: &str = "x-krill-replay-signature";
/// Header: unix seconds after which the replay authorization is invalid.
pub const REPLAY_NOT_AFTER_HEADER: &str = "x-krill-replay-not-after";

/// First line of a signed task.
pub const TASK_DOMAIN: &str = "krill-task-v1";
/// First line of a signed control message.
pub const CONTROL_DOMAIN: &str = "krill-control-v1";
/// First line of a replay authorization.
pub const REPLAY_DOMAIN: &str = "krill-replay-v1";

/// Why signature headers cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("header `{0}` is missing (the signature headers come as a set)")]
    Missing(&'static str),
    #[error("header `{0}` is malformed")]
    Malformed(&'static str),
    #[error("the signature does not verify")]
    Invalid,
    #[error("reply_to must not contain a newline")]
    ReplyTo,
}

/// Hex of the SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The text a task's signature covers.
pub fn task_message(
    key: &PublicKey,
    pool: &str,
    reply_to: &str,
    not_after: u64,
    body: &[u8],
) -> Result<Vec<u8>, SignError> {
    if reply_to.contains('\n') {
        return Err(SignError::ReplyTo);
    }
    Ok(format!(
        "{TASK_DOMAIN}\n{}\n{pool}\n{reply_to}\n{not_after}\n{}\n",
        key.to_b64(),
        sha256_hex(body)
    )
    .into_bytes())
}

/// The text a control message's signature covers.
pub fn control_message(key: &PublicKey, routing_key: &str, not_after: u64, body: &[u8]) -> Vec<u8> {
    format!(
        "{CONTROL_DOMAIN}\n{}\n{routing_key}\n{not_after}\n{}\n",
        key.to_b64(),
        sha256_hex(body)
    )
    .into_bytes()
}

/// The text a replay authorization's signature covers.
pub fn replay_message(
    replayer: &PublicKey,
    pool: &str,
    task_signature: &str,
    not_after: u64,
) -> Vec<u8> {
    format!(
        "{REPLAY_DOMAIN}\n{}\n{pool}\n{task_signature}\n{not_after}\n",
        replayer.to_b64()
    )
    .into_bytes()
}

/// The replay-protection id of a signed text: hex SHA-256.
pub fn claim_id(message: &[u8]) -> String {
    sha256_hex(message)
}

/// A signature as it travels: signer, signature and validity bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub key: PublicKey,
    pub signature: ed25519_dalek::Signature,
    pub not_after: u64,
}

impl Signed {
    /// Signs `message` built by `build(key, not_after)` with `identity`.
    pub fn make(identity: &Identity, not_after: u64, message: &[u8]) -> Signed {
        Signed {
            key: identity.public(),
            signature: identity.sign(message),
            not_after,
        }
    }

    /// Whether the signature verifies over `message` (strict: no malleable encodings).
    pub fn verify(&self, message: &[u8]) -> Result<(), SignError> {
        self.key
            .0
            .verify_strict(message, &self.signature)
            .map_err(|_| SignError::Invalid)
    }

    /// The signature in base64 (the `x-krill-signature` value).
    pub fn signature_b64(&self) -> String {
        b64(&self.signature.to_bytes())
    }

    /// Writes the three task/control headers into `headers`.
    pub fn put(&self, headers: &mut FieldTable) {
        self.put_as(headers, [KEY_HEADER, SIGNATURE_HEADER, NOT_AFTER_HEADER]);
    }

    /// Writes the three replay headers into `headers`.
    pub fn put_replay(&self, headers: &mut FieldTable) {
        self.put_as(
            headers,
            [
                REPLAY_KEY_HEADER,
                REPLAY_SIGNATURE_HEADER,
                REPLAY_NOT_AFTER_HEADER,
            ],
        );
    }

    fn put_as(&self, headers: &mut FieldTable, names: [&str; 3]) {
        let long = |s: String| AMQPValue::LongString(LongString::from(s));
        headers.insert(ShortString::from(names[0]), long(self.key.to_b64()));
        headers.insert(ShortString::from(names[1]), long(self.signature_b64()));
        headers.insert(
            ShortString::from(names[2]),
            long(self.not_after.to_string()),
        );
    }

    /// The task/control signature in `headers`: `Ok(None)` when none of its
    /// headers is there (an unsigned message), an error when only some are or
    /// one is malformed.
    pub fn take(headers: Option<&FieldTable>) -> Result<Option<Signed>, SignError> {
        Self::take_as(headers, [KEY_HEADER, SIGNATURE_HEADER, NOT_AFTER_HEADER])
    }

    /// The replay authorization in `headers`, like [`Signed::take`].
    pub fn take_replay(headers: Option<&FieldTable>) -> Result<Option<Signed>, SignError> {
        Self::take_as(
            headers,
            [
                REPLAY_KEY_HEADER,
                REPLAY_SIGNATURE_HEADER,
                REPLAY_NOT_AFTER_HEADER,
            ],
        )
    }

    fn take_as(
        headers: Option<&FieldTable>,
        names: [&'static str; 3],
    ) -> Result<Option<Signed>, SignError> {
        let Some(h) = headers else { return Ok(None) };
        let [k, s, n] = names.map(|name| h.inner().get(name));
        if k.is_none() && s.is_none() && n.is_none() {
            return Ok(None);
        }
        let text = |v: Option<&AMQPValue>, name: &'static str| -> Result<String, SignError> {
            match v {
                None => Err(SignError::Missing(name)),
                Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes())
                    .map(str::to_string)
                    .map_err(|_| SignError::Malformed(name)),
                Some(AMQPValue::ShortString(s)) => Ok(s.as_str().to_string()),
                Some(_) => Err(SignError::Malformed(name)),
            }
        };
        let key =
            PublicKey::from_b64(&text(k, names[0])?).map_err(|_| SignError::Malformed(names[0]))?;
        let sig = unb64(&text(s, names[1])?)
            .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
            .map(|b| ed25519_dalek::Signature::from_bytes(&b))
            .ok_or(SignError::Malformed(names[1]))?;
        let not_after = match n {
            Some(AMQPValue::LongLongInt(v)) => u64::try_from(*v).ok(),
            Some(AMQPValue::LongInt(v)) => u64::try_from(*v).ok(),
            Some(AMQPValue::LongUInt(v)) => Some(u64::from(*v)),
            Some(AMQPValue::Timestamp(v)) => Some(*v),
            other => {
                let t = text(other, names[2])?;
                t.parse::<u64>().ok().filter(|v| v.to_string() == t)
            }
        }
        .ok_or(SignError::Malformed(names[2]))?;
        Ok(Some(Signed {
            key,
            signature: sig,
            not_after,
        }))
    }
}

/// Signs a task body for `pool` and `reply_to`, valid until `not_after`.
pub fn sign_task(
    identity: &Identity,
    pool: &str,
    reply_to: &str,
    not_after: u64,
    body: &[u8],
) -> Result<Signed, SignError> {
    let msg = task_message(&identity.public(), pool, reply_to, not_after, body)?;
    Ok(Signed::make(identity, not_after, &msg))
}

/// Signs a control body for `routing_key`, valid until `not_after`.
pub fn sign_control(identity: &Identity, routing_key: &str, not_after: u64, body: &[u8]) -> Signed {
    let msg = control_message(&identity.public(), routing_key, not_after, body);
    Signed::make(identity, not_after, &msg)
}

/// Signs a replay authorization of the task signed with `task_signature` (base64).
pub fn sign_replay(
    identity: &Identity,
    pool: &str,
    task_signature: &str,
    not_after: u64,
) -> Signed {
    let msg = replay_message(&identity.public(), pool, task_signature, not_after);
    Signed::make(identity, not_after, &msg)
}

/// Unix seconds now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_task_verifies_and_any_change_breaks_it() {
        let id = Identity::generate("alice").expect("key");
        let body = br#"{"version":1,"id":"t1","script":"true"}"#;
        let s = sign_task(&id, "default", "krill.reply.t1", 1_900_000_000, body).expect("sign");
        let msg = |pool: &str, reply: &str, na: u64, body: &[u8]| {
            task_message(&s.key, pool, reply, na, body).expect("msg")
        };
        s.verify(&msg("default", "krill.reply.t1", 1_900_000_000, body))
            .expect("verifies");
        for bad in [
            msg("other", "krill.reply.t1", 1_900_000_000, body),
            msg("default", "krill.reply.t2", 1_900_000_000, body),
            msg("default", "krill.reply.t1", 1_900_000_001, body),
            msg(
                "default",
                "krill.reply.t1",
                1_900_000_000,
                br#"{"version":1,"id":"t1","script":"tru3"}"#,
            ),
        ] {
            assert_eq!(s.verify(&bad), Err(SignError::Invalid));
        }
        // Domains keep a task signature from passing as a control signature.
        let c = control_message(&s.key, "default", 1_900_000_000, body);
        assert_eq!(s.verify(&c), Err(SignError::Invalid));
        assert_eq!(
            task_message(&s.key, "p", "a\nb", 1, body),
            Err(SignError::ReplyTo)
        );
    }

    #[test]
    fn headers_round_trip_and_partial_sets_are_errors() {
        let id = Identity::generate("alice").expect("key");
        let s = sign_control(&id, "drain.all", 42, b"{}");
        let mut h = FieldTable::default();
        s.put(&mut h);
        assert_eq!(Signed::take(Some(&h)), Ok(Some(s.clone())));
        assert_eq!(Signed::take_replay(Some(&h)), Ok(None));
        assert_eq!(Signed::take(None), Ok(None));
        let mut partial = FieldTable::default();
        for (k, v) in h.inner() {
            if k.as_str() != SIGNATURE_HEADER {
                partial.insert(k.clone(), v.clone());
            }
        }
        assert_eq!(
            Signed::take(Some(&partial)),
            Err(SignError::Missing(SIGNATURE_HEADER))
        );
        let mut leading = h.clone();
        leading.insert(
            ShortString::from(NOT_AFTER_HEADER),
            AMQPValue::LongString(LongString::from("042")),
        );
        assert_eq!(
            Signed::take(Some(&leading)),
            Err(SignError::Malformed(NOT_AFTER_HEADER))
        );
        let mut int = h.clone();
        int.insert(
            ShortString::from(NOT_AFTER_HEADER),
            AMQPValue::LongLongInt(42),
        );
        assert_eq!(Signed::take(Some(&int)), Ok(Some(s)));
    }

    #[test]
    fn the_message_text_is_what_the_readme_says() {
        let id = Identity::generate("alice").expect("key");
        let m = task_message(&id.public(), "default", "q", 7, b"").expect("msg");
        let text = String::from_utf8(m).expect("text");
        assert_eq!(
            text,
            format!(
                "krill-task-v1\n{}\ndefault\nq\n7\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n",
                id.public().to_b64()
            )
        );
    }
}
