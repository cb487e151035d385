//! Sealed values: secrets sealed to the pool key, sensitive outputs sealed to
//! the submitter's `reply_key`. Both are libsodium sealed boxes
//! (`crypto_box_seal`: an ephemeral X25519 key + XSalsa20-Poly1305), in
//! standard base64, so PyNaCl's `SealedBox`, Go's `nacl/box.SealAnonymous`
//! and libsodium bindings in any language make and open them.
//!
//! A secret's plaintext binds it to its variable name and to the key that
//! signs the task, so a sealed value lifted from one task into another (under
//! another name, or signed by another trusted key) does not open:
//!
//! ```text
//! krill-secret-v1\n<NAME>\n<x-krill-key of the signer, or empty if unsigned>\n<value bytes>
//! ```
//!
//! A sealed output's plaintext is the value's UTF-8 bytes, nothing else.

use crypto_box::aead::OsRng;
use zeroize::Zeroizing;

use super::keys::{b64, unb64, BoxPublicKey, Identity, PoolKey, PublicKey};
use crate::protocol::{Sealed, Secret, SecretValue, Task, TaskResult};

/// First line of a sealed secret's plaintext.
pub const SECRET_DOMAIN: &str = "krill-secret-v1";

/// Why a sealed value cannot be made or opened. Never holds the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("sealed value of `{0}` is not base64")]
    Encoding(String),
    #[error("secret `{0}` was sealed to another pool key (no key of this pool opens it)")]
    NoKey(String),
    #[error("secret `{0}` was sealed for another variable or another signing key")]
    Bound(String),
    #[error("sealed value of `{0}` is not UTF-8")]
    Utf8(String),
    #[error("sealing failed")]
    Seal,
}

fn secret_plaintext(name: &str, signer: Option<&PublicKey>, value: &[u8]) -> Zeroizing<Vec<u8>> {
    let signer = signer.map(|k| k.to_b64()).unwrap_or_default();
    let mut p = Zeroizing::new(Vec::with_capacity(
        SECRET_DOMAIN.len() + name.len() + signer.len() + value.len() + 3,
    ));
    p.extend_from_slice(SECRET_DOMAIN.as_bytes());
    p.push(b'\n');
    p.extend_from_slice(name.as_bytes());
    p.push(b'\n');
    p.extend_from_slice(signer.as_bytes());
    p.push(b'\n');
    p.extend_from_slice(value);
    p
}

/// Seals secret `name` = `value` to the pool key, for a task signed by `signer`.
pub fn seal_secret(
    pool: &BoxPublicKey,
    name: &str,
    signer: Option<&PublicKey>,
    value: &str,
) -> Result<Sealed, SealError> {
    let plain = secret_plaintext(name, signer, value.as_bytes());
    let boxed = pool
        .0
        .seal(&mut OsRng, &plain)
        .map_err(|_| SealError::Seal)?;
    Ok(Sealed {
        sealed: b64(&boxed),
    })
}

/// Opens secret `name` with the first of `keys` that opens it, and checks that
/// it was sealed for this name and this signer.
pub fn open_secret(
    keys: &[PoolKey],
    name: &str,
    signer: Option<&PublicKey>,
    sealed: &Sealed,
) -> Result<Secret, SealError> {
    let boxed = unb64(&sealed.sealed).ok_or_else(|| SealError::Encoding(name.to_string()))?;
    let plain = keys
        .iter()
        .find_map(|k| k.secret().unseal(&boxed).ok())
        .map(Zeroizing::new)
        .ok_or_else(|| SealError::NoKey(name.to_string()))?;
    let expected = secret_plaintext(name, signer, b"");
    let value = plain
        .strip_prefix(expected.as_slice())
        .ok_or_else(|| SealError::Bound(name.to_string()))?;
    let value = std::str::from_utf8(value).map_err(|_| SealError::Utf8(name.to_string()))?;
    Ok(Secret(value.to_string()))
}

/// Seals every plain secret of `task` to the pool key (for a task `signer` signs).
pub fn seal_task_secrets(
    task: &mut Task,
    pool: &BoxPublicKey,
    signer: Option<&PublicKey>,
) -> Result<(), SealError> {
    for (name, v) in task.secrets.iter_mut() {
        if let SecretValue::Plain(s) = v {
            *v = SecretValue::Sealed(seal_secret(pool, name, signer, s.expose())?);
        }
    }
    Ok(())
}

/// Opens every sealed secret of `task` in place (plain ones stay as they are).
pub fn open_task_secrets(
    task: &mut Task,
    keys: &[PoolKey],
    signer: Option<&PublicKey>,
) -> Result<(), SealError> {
    for (name, v) in task.secrets.iter_mut() {
        if let SecretValue::Sealed(s) = v {
            *v = SecretValue::Plain(open_secret(keys, name, signer, s)?);
        }
    }
    Ok(())
}

/// Seals an output value to the submitter's `reply_key`; base64.
pub fn seal_output(reply: &BoxPublicKey, value: &str) -> Result<String, SealError> {
    reply
        .0
        .seal(&mut OsRng, value.as_bytes())
        .map(|b| b64(&b))
        .map_err(|_| SealError::Seal)
}

/// Seals every sensitive output of `result` to `reply`: the value moves into
/// `sealed` and `value` becomes empty.
pub fn seal_result_outputs(result: &mut TaskResult, reply: &BoxPublicKey) -> Result<(), SealError> {
    for o in result
        .outputs
        .iter_mut()
        .filter(|o| o.sensitive && o.sealed.is_none())
    {
        let value = Zeroizing::new(std::mem::take(&mut o.value));
        o.sealed = Some(seal_output(reply, &value)?);
    }
    Ok(())
}

/// Opens a sealed output value with the submitter's key.
pub fn open_output(identity: &Identity, name: &str, sealed: &str) -> Result<String, SealError> {
    let boxed = unb64(sealed).ok_or_else(|| SealError::Encoding(name.to_string()))?;
    let plain = identity
        .reply_secret()
        .unseal(&boxed)
        .map_err(|_| SealError::NoKey(name.to_string()))?;
    String::from_utf8(plain).map_err(|_| SealError::Utf8(name.to_string()))
}

/// Opens every sealed output of `result` in place (value filled, `sealed`
/// cleared); returns the names of those `identity` could not open.
pub fn open_result_outputs(result: &mut TaskResult, identity: &Identity) -> Vec<String> {
    let mut failed = Vec::new();
    for o in result.outputs.iter_mut() {
        let Some(sealed) = &o.sealed else { continue };
        match open_output(identity, &o.name, sealed) {
            Ok(v) => {
                o.value = v;
                o.sealed = None;
            }
            Err(_) => failed.push(o.name.clone()),
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{OutputVar, Status};

    #[test]
    fn a_sealed_secret_opens_only_for_its_name_signer_and_pool() {
        let pool = PoolKey::generate();
        let other = PoolKey::generate();
        let alice = Identity::generate("alice").expect("key");
        let bob = Identity::generate("bob").expect("key");
        let s = seal_secret(
            &pool.public(),
            "API_KEY",
            Some(&alice.public()),
            "sk-live-1",
        )
        .expect("seal");
        assert!(!s.sealed.contains("sk-live"));
        let keys = [other, pool];
        let open = open_secret(&keys, "API_KEY", Some(&alice.public()), &s).expect("opens");
        assert_eq!(open.expose(), "sk-live-1");
        assert_eq!(
            open_secret(&keys[..1], "API_KEY", Some(&alice.public()), &s),
            Err(SealError::NoKey("API_KEY".into()))
        );
        assert_eq!(
            open_secret(&keys, "OTHER", Some(&alice.public()), &s),
            Err(SealError::Bound("OTHER".into()))
        );
        assert_eq!(
            open_secret(&keys, "API_KEY", Some(&bob.public()), &s),
            Err(SealError::Bound("API_KEY".into()))
        );
        assert_eq!(
            open_secret(&keys, "API_KEY", None, &s),
            Err(SealError::Bound("API_KEY".into()))
        );
        let junk = Sealed {
            sealed: "not base64!".into(),
        };
        assert_eq!(
            open_secret(&keys, "API_KEY", None, &junk),
            Err(SealError::Encoding("API_KEY".into()))
        );
    }

    #[test]
    fn sensitive_outputs_are_sealed_and_opened_in_place() {
        let alice = Identity::generate("alice").expect("key");
        let mut r = TaskResult::new("t", Status::Succeeded);
        r.outputs = vec![
            OutputVar {
                name: "plain".into(),
                value: "visible".into(),
                sensitive: false,
                sealed: None,
            },
            OutputVar {
                name: "token".into(),
                value: "tok-123456".into(),
                sensitive: true,
                sealed: None,
            },
        ];
        seal_result_outputs(&mut r, &alice.reply_public()).expect("seal");
        let json = serde_json::to_string(&r).expect("json");
        assert!(!json.contains("tok-123456"), "{json}");
        assert!(json.contains("visible"));
        let mut wrong = r.clone();
        let bob = Identity::generate("bob").expect("key");
        assert_eq!(
            open_result_outputs(&mut wrong, &bob),
            vec!["token".to_string()]
        );
        assert!(open_result_outputs(&mut r, &alice).is_empty());
        assert_eq!(r.output("token"), Some("tok-123456"));
    }
}
