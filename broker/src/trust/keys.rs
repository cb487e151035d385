//! Key material and its files: a submitter's [`Identity`] (Ed25519 signing key +
//! X25519 key for sealed results), a pool's [`PoolKey`] (X25519, opens sealed
//! secrets) and the public halves, with their on-disk formats.
//!
//! Every key on the wire and in a file is standard base64 (RFC 4648, with `=`
//! padding) of the raw 32 bytes. Key files are one JSON object, mode 0600:
//!
//! ```text
//! {"type":"krill-key-v1","name":"alice","ed25519":"<seed>","x25519":"<secret>"}
//! {"type":"krill-pool-key-v1","x25519":"<secret>"}
//! ```
//!
//! The two keys of an identity are made independently (no key is used for two
//! algorithms). Secret halves are wiped from memory when dropped (zeroize) and
//! never printed: `Debug` shows only the public half.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use crypto_box::aead::OsRng;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

/// `type` of a submitter key file.
pub const KEY_FILE_TYPE: &str = "krill-key-v1";
/// `type` of a pool key file.
pub const POOL_KEY_FILE_TYPE: &str = "krill-pool-key-v1";
/// The key type word of a trusted-keys line and of `krill keys show`.
pub const KEY_TYPE: &str = "ed25519";
/// Longest key name.
pub const MAX_NAME_LEN: usize = 64;

/// What is wrong with a key or a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a krill key file ({why})")]
    Format { path: PathBuf, why: String },
    #[error("{path} exists; not overwriting it")]
    Exists { path: PathBuf },
    #[error("{what} is not base64 of 32 bytes")]
    Base64 { what: &'static str },
    #[error("not a valid Ed25519 public key")]
    Ed25519,
    #[error("invalid key name `{0}` (1-64 characters of A-Z a-z 0-9 . _ @ -)")]
    Name(String),
    #[error("no pool public key in `{0}` (expected a file holding the base64 key, or the base64 key itself)")]
    PoolPublic(String),
}

/// Whether `name` is a valid key name: 1-64 characters of `A-Z a-z 0-9 . _ @ -`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// Standard base64 of `bytes`.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Decodes standard base64; `None` when it is not.
pub fn unb64(text: &str) -> Option<Vec<u8>> {
    B64.decode(text.trim().as_bytes()).ok()
}

/// Decodes base64 of exactly 32 bytes.
pub fn unb64_32(text: &str, what: &'static str) -> Result<[u8; 32], KeyError> {
    let v = Zeroizing::new(unb64(text).ok_or(KeyError::Base64 { what })?);
    <[u8; 32]>::try_from(v.as_slice()).map_err(|_| KeyError::Base64 { what })
}

/// An Ed25519 public key: who signed a task or a control message. Its base64
/// is the key id on the wire (`x-krill-key`) and in the trusted-keys file.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub ed25519_dalek::VerifyingKey);

impl PublicKey {
    /// Parses the base64 of the 32-byte key.
    pub fn from_b64(text: &str) -> Result<Self, KeyError> {
        let bytes = unb64_32(text, "the Ed25519 public key")?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| KeyError::Ed25519)
    }

    /// The base64 form (the key id).
    pub fn to_b64(&self) -> String {
        b64(self.0.as_bytes())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", self.to_b64())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_b64())
    }
}

/// An X25519 public key: a pool's (secrets are sealed to it) or a submitter's
/// (`reply_key`: sensitive outputs are sealed to it).
#[derive(Clone, PartialEq, Eq)]
pub struct BoxPublicKey(pub crypto_box::PublicKey);

impl BoxPublicKey {
    /// Parses the base64 of the 32-byte key.
    pub fn from_b64(text: &str) -> Result<Self, KeyError> {
        unb64_32(text, "the X25519 public key")
            .map(|b| BoxPublicKey(crypto_box::PublicKey::from(b)))
    }

    /// The base64 form.
    pub fn to_b64(&self) -> String {
        b64(self.0.as_bytes())
    }

    /// A pool public key given as `--pool-public-key`: a file holding the base64
    /// key (the first line that is not a comment), or the base64 key itself.
    pub fn from_file_or_b64(arg: &str) -> Result<Self, KeyError> {
        let path = Path::new(arg);
        if path.is_file() {
            let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            let line = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .ok_or_else(|| KeyError::PoolPublic(arg.to_string()))?;
            // A line may be `x25519 <key> [comment]` or just the key.
            let key = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["x25519", key, ..] => *key,
                [key, ..] => *key,
                [] => return Err(KeyError::PoolPublic(arg.to_string())),
            };
            return Self::from_b64(key);
        }
        Self::from_b64(arg).map_err(|_| KeyError::PoolPublic(arg.to_string()))
    }
}

impl fmt::Debug for BoxPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "x25519:{}", self.to_b64())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    ed25519: String,
    x25519: String,
}

impl Drop for IdentityFile {
    fn drop(&mut self) {
        self.ed25519.zeroize();
        self.x25519.zeroize();
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolKeyFile {
    #[serde(rename = "type")]
    kind: String,
    x25519: String,
}

impl Drop for PoolKeyFile {
    fn drop(&mut self) {
        self.x25519.zeroize();
    }
}

/// A submitter's keys: Ed25519 to sign tasks and control messages, X25519 to
/// open sensitive outputs sealed to it. Both secret halves zeroize on drop.
#[derive(Clone)]
pub struct Identity {
    pub name: String,
    signing: ed25519_dalek::SigningKey,
    reply: crypto_box::SecretKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A new identity with fresh random keys.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        if !valid_name(name) {
            return Err(KeyError::Name(name.to_string()));
        }
        Ok(Identity {
            name: name.to_string(),
            signing: ed25519_dalek::SigningKey::generate(&mut OsRng),
            reply: crypto_box::SecretKey::generate(&mut OsRng),
        })
    }

    /// The Ed25519 public key (the key id).
    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    /// The X25519 public key sensitive outputs are sealed to (a task's `reply_key`).
    pub fn reply_public(&self) -> BoxPublicKey {
        BoxPublicKey(self.reply.public_key())
    }

    /// The X25519 secret key (opens sealed outputs).
    pub fn reply_secret(&self) -> &crypto_box::SecretKey {
        &self.reply
    }

    /// Signs `message` (one of the domain-separated messages of `trust::sign`).
    pub fn sign(&self, message: &[u8]) -> ed25519_dalek::Signature {
        use ed25519_dalek::Signer;
        self.signing.sign(message)
    }

    /// The line to paste into a trusted-keys file: `ed25519 <key> <name>`.
    pub fn public_line(&self) -> String {
        format!("{KEY_TYPE} {} {}", self.public().to_b64(), self.name)
    }

    /// Parses a key file's text.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, KeyError> {
        let format = |why: String| KeyError::Format {
            path: path.to_path_buf(),
            why,
        };
        let f: IdentityFile = serde_json::from_str(text).map_err(|e| format(e.to_string()))?;
        if f.kind != KEY_FILE_TYPE {
            return Err(format(format!(
                "type is `{}`, expected `{KEY_FILE_TYPE}`",
                f.kind
            )));
        }
        if !valid_name(&f.name) {
            return Err(KeyError::Name(f.name.clone()));
        }
        let seed = Zeroizing::new(unb64_32(&f.ed25519, "the ed25519 seed")?);
        let reply = Zeroizing::new(unb64_32(&f.x25519, "the x25519 secret")?);
        Ok(Identity {
            name: f.name.clone(),
            signing: ed25519_dalek::SigningKey::from_bytes(&seed),
            reply: crypto_box::SecretKey::from(*reply),
        })
    }

    /// The key file's text (holds the secret keys).
    pub fn to_json(&self) -> Zeroizing<String> {
        let f = IdentityFile {
            kind: KEY_FILE_TYPE.to_string(),
            name: self.name.clone(),
            ed25519: b64(&Zeroizing::new(self.signing.to_bytes())[..]),
            x25519: b64(&Zeroizing::new(self.reply.to_bytes())[..]),
        };
        let mut s = serde_json::to_string(&f).unwrap_or_default();
        s.push('\n');
        Zeroizing::new(s)
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = Zeroizing::new(read(path)?);
        Self::from_json(&text, path)
    }

    /// Writes the key file (mode 0600, parent directories made); refuses to
    /// overwrite an existing file.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        write_secret(path, self.to_json().as_bytes())
    }
}

/// A pool's X25519 key pair: workers open sealed secrets with it.
#[derive(Clone)]
pub struct PoolKey {
    secret: crypto_box::SecretKey,
}

impl fmt::Debug for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PoolKey({:?})", self.public())
    }
}

impl PoolKey {
    /// A new random pool key.
    pub fn generate() -> Self {
        PoolKey {
            secret: crypto_box::SecretKey::generate(&mut OsRng),
        }
    }

    /// The public half (what submitters seal to).
    pub fn public(&self) -> BoxPublicKey {
        BoxPublicKey(self.secret.public_key())
    }

    /// The secret half.
    pub fn secret(&self) -> &crypto_box::SecretKey {
        &self.secret
    }

    /// Parses a pool key file's text.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, KeyError> {
        let format = |why: String| KeyError::Format {
            path: path.to_path_buf(),
            why,
        };
        let f: PoolKeyFile = serde_json::from_str(text).map_err(|e| format(e.to_string()))?;
        if f.kind != POOL_KEY_FILE_TYPE {
            return Err(format(format!(
                "type is `{}`, expected `{POOL_KEY_FILE_TYPE}`",
                f.kind
            )));
        }
        let bytes = Zeroizing::new(unb64_32(&f.x25519, "the x25519 secret")?);
        Ok(PoolKey {
            secret: crypto_box::SecretKey::from(*bytes),
        })
    }

    /// The key file's text (holds the secret key).
    pub fn to_json(&self) -> Zeroizing<String> {
        let f = PoolKeyFile {
            kind: POOL_KEY_FILE_TYPE.to_string(),
            x25519: b64(&Zeroizing::new(self.secret.to_bytes())[..]),
        };
        let mut s = serde_json::to_string(&f).unwrap_or_default();
        s.push('\n');
        Zeroizing::new(s)
    }

    /// Reads a pool key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = Zeroizing::new(read(path)?);
        Self::from_json(&text, path)
    }

    /// Writes the key file (0600) and, beside it, `<path>.pub` with the public
    /// key (0644) for submitters (`--pool-public-key`).
    pub fn save(&self, path: &Path) -> Result<PathBuf, KeyError> {
        write_secret(path, self.to_json().as_bytes())?;
        let mut public = path.as_os_str().to_owned();
        public.push(".pub");
        let public = PathBuf::from(public);
        std::fs::write(&public, format!("{}\n", self.public().to_b64())).map_err(|source| {
            KeyError::Io {
                path: public.clone(),
                source,
            }
        })?;
        Ok(public)
    }
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates `path` with mode 0600 (never following or replacing an existing file).
fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                io(e)
            }
        })?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Where `krill` keeps the user's key: `$XDG_CONFIG_HOME/krill/key`, else
/// `~/.config/krill/key`.
pub fn default_key_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("krill").join("key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_through_its_file() {
        let dir = std::env::temp_dir().join(format!("krill-keys-{}", uuid::Uuid::new_v4()));
        let path = dir.join("sub/key");
        let id = Identity::generate("alice@host").expect("key");
        id.save(&path).expect("save");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(id.save(&path), Err(KeyError::Exists { .. })));
        let back = Identity::load(&path).expect("load");
        assert_eq!(back.public(), id.public());
        assert_eq!(back.reply_public(), id.reply_public());
        assert_eq!(back.name, "alice@host");
        let dbg = format!("{back:?}");
        let text = std::fs::read_to_string(&path).expect("text");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let seed = v["ed25519"].as_str().expect("seed");
        assert!(!dbg.contains(seed), "Debug shows the secret: {dbg}");
        assert!(id.public_line().starts_with("ed25519 "));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn pool_key_writes_its_public_half_beside_it() {
        let dir = std::env::temp_dir().join(format!("krill-pool-{}", uuid::Uuid::new_v4()));
        let path = dir.join("pool.key");
        let k = PoolKey::generate();
        let public = k.save(&path).expect("save");
        let back = PoolKey::load(&path).expect("load");
        assert_eq!(back.public(), k.public());
        let p = BoxPublicKey::from_file_or_b64(public.to_str().expect("utf8")).expect("file");
        assert_eq!(p, k.public());
        let p = BoxPublicKey::from_file_or_b64(&k.public().to_b64()).expect("b64");
        assert_eq!(p, k.public());
        assert!(BoxPublicKey::from_file_or_b64("nope").is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bad_files_say_why() {
        let p = Path::new("k");
        assert!(Identity::from_json("{}", p).is_err());
        let e = Identity::from_json(
            r#"{"type":"krill-pool-key-v1","name":"a","ed25519":"","x25519":""}"#,
            p,
        )
        .expect_err("wrong type");
        assert!(e.to_string().contains("expected `krill-key-v1`"), "{e}");
        assert!(Identity::generate("has space").is_err());
        assert!(PublicKey::from_b64("AAAA").is_err());
    }
}
