//! The trusted-keys file (`krill-worker --trusted-keys`), in the spirit of
//! `authorized_keys`: one key per line, `#` comments.
//!
//! ```text
//! # type  public key (base64)                          name   restrictions (all optional)
//! ed25519 q1Ny0Qm6Sx8o0mYvYy8cTn3S0R2u9E0d2V9m6cQzX2Q= alice  pools=default,ci network=no max-timeout=30m
//! ed25519 Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE= ops    control
//! ```
//!
//! | restriction | meaning (absent: only the pool's own policy applies) |
//! |---|---|
//! | `pools=a,b` | pools the key may submit to |
//! | `sandboxes=process,container` | sandbox kinds its tasks may use |
//! | `images=krill/base:1,…` | container images its tasks may use |
//! | `network=no` | its tasks may not ask for network (`yes`, the default, leaves it to the pool) |
//! | `max-timeout=30m` | longest deadline (the task's, or the pool's default when it names none) |
//! | `max-memory=1g` | largest memory limit (likewise) |
//! | `control` | may send control messages (cancel, drain, resume, dead-letter replay) |
//!
//! A key without `control` may still cancel the tasks it signed itself.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::keys::{valid_name, PublicKey, KEY_TYPE};
use crate::protocol::SandboxKind;

/// What is wrong with a trusted-keys file.
#[derive(Debug, thiserror::Error)]
pub enum TrustedKeysError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("line {line}: {why}")]
    Line { line: usize, why: String },
}

/// What a key may do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Restrictions {
    pub pools: Option<Vec<String>>,
    pub sandboxes: Option<Vec<SandboxKind>>,
    pub images: Option<Vec<String>>,
    /// Whether its tasks may ask for network (the pool must allow it too).
    pub network: bool,
    pub max_timeout: Option<Duration>,
    pub max_memory: Option<u64>,
    /// May send control messages.
    pub control: bool,
}

/// One trusted key.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustedKey {
    pub key: PublicKey,
    pub name: String,
    pub rules: Restrictions,
}

/// What a task would do, as far as a key's restrictions care (effective values:
/// the task's, or the pool's defaults for what it leaves out).
#[derive(Debug, Clone)]
pub struct TaskShape<'a> {
    pub pool: &'a str,
    pub sandbox: SandboxKind,
    /// The image, for a container task.
    pub image: Option<&'a str>,
    pub network: bool,
    pub timeout: Duration,
    pub memory_bytes: u64,
}

impl Restrictions {
    /// `Err((what, why))` when the task is outside what the key may do; `what`
    /// is the suffix of the `not_allowed:<what>` reason.
    pub fn check(&self, t: &TaskShape<'_>) -> Result<(), (&'static str, String)> {
        if let Some(pools) = &self.pools {
            if !pools.iter().any(|p| p == t.pool) {
                return Err(("pool", format!("may not submit to pool `{}`", t.pool)));
            }
        }
        if let Some(kinds) = &self.sandboxes {
            if !kinds.contains(&t.sandbox) {
                return Err(("sandbox", format!("may not use the {} sandbox", t.sandbox)));
            }
        }
        if let (Some(images), Some(image)) = (&self.images, t.image) {
            if !images.iter().any(|i| i == image) {
                return Err(("image", format!("may not use image `{image}`")));
            }
        }
        if t.network && !self.network {
            return Err(("network", "may not ask for network".into()));
        }
        if let Some(max) = self.max_timeout {
            if t.timeout > max {
                return Err((
                    "timeout",
                    format!(
                        "may not run tasks longer than {}s (this one: {}s)",
                        max.as_secs(),
                        t.timeout.as_secs()
                    ),
                ));
            }
        }
        if let Some(max) = self.max_memory {
            if t.memory_bytes > max {
                return Err((
                    "memory",
                    format!(
                        "may not use more than {max} bytes of memory (this one: {})",
                        t.memory_bytes
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The keys a worker trusts, by public key.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    by_key: HashMap<[u8; 32], TrustedKey>,
}

impl TrustedKeys {
    /// Parses the file's text; the error names the line.
    pub fn parse(text: &str) -> Result<Self, TrustedKeysError> {
        let mut keys = TrustedKeys::default();
        let mut names = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |why: String| TrustedKeysError::Line { line, why };
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let mut words = l.split_whitespace();
            let (Some(kind), Some(key), Some(name)) = (words.next(), words.next(), words.next())
            else {
                return Err(err(format!(
                    "expected `{KEY_TYPE} <public key> <name> [restrictions]`"
                )));
            };
            if kind != KEY_TYPE {
                return Err(err(format!(
                    "unknown key type `{kind}` (expected `{KEY_TYPE}`)"
                )));
            }
            let key = PublicKey::from_b64(key).map_err(|e| err(e.to_string()))?;
            if !valid_name(name) {
                return Err(err(format!(
                    "invalid name `{name}` (1-64 characters of A-Z a-z 0-9 . _ @ -)"
                )));
            }
            let mut rules = Restrictions {
                network: true,
                ..Restrictions::default()
            };
            for opt in words {
                parse_option(&mut rules, opt).map_err(err)?;
            }
            if let Some(prev) = names.insert(name.to_string(), line) {
                return Err(err(format!("name `{name}` is already used on line {prev}")));
            }
            let entry = TrustedKey {
                key,
                name: name.to_string(),
                rules,
            };
            if keys.by_key.insert(key.0.to_bytes(), entry).is_some() {
                return Err(err("this key is listed twice".into()));
            }
        }
        Ok(keys)
    }

    /// Reads and parses a trusted-keys file.
    pub fn load(path: &Path) -> Result<Self, TrustedKeysError> {
        let text = std::fs::read_to_string(path).map_err(|source| TrustedKeysError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            TrustedKeysError::Line { line, why } => TrustedKeysError::Line {
                line,
                why: format!("{}: {why}", path.display()),
            },
            e => e,
        })
    }

    /// The entry for `key`, if trusted.
    pub fn get(&self, key: &PublicKey) -> Option<&TrustedKey> {
        self.by_key.get(&key.0.to_bytes())
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_option(r: &mut Restrictions, opt: &str) -> Result<(), String> {
    let (k, v) = match opt.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (opt, None),
    };
    fn need<'a>(k: &str, v: Option<&'a str>) -> Result<&'a str, String> {
        v.filter(|v| !v.is_empty())
            .ok_or(format!("`{k}` needs a value"))
    }
    match k {
        "pools" => r.pools = Some(list(need(k, v)?)),
        "sandboxes" => {
            r.sandboxes = Some(
                list(need(k, v)?)
                    .iter()
                    .map(|s| s.parse::<SandboxKind>())
                    .collect::<Result<_, _>>()?,
            )
        }
        "images" => r.images = Some(list(need(k, v)?)),
        "network" => {
            r.network = match need(k, v)? {
                "yes" => true,
                "no" => false,
                other => return Err(format!("network={other}: expected yes or no")),
            }
        }
        "max-timeout" => {
            r.max_timeout = Some(
                humantime::parse_duration(need(k, v)?).map_err(|e| format!("max-timeout: {e}"))?,
            )
        }
        "max-memory" => {
            r.max_memory = Some(
                crate::units::parse_size(need(k, v)?).map_err(|e| format!("max-memory: {e}"))?,
            )
        }
        "control" if v.is_none() => r.control = true,
        other => {
            return Err(format!(
                "unknown restriction `{other}` (known: pools= sandboxes= images= network= \
                 max-timeout= max-memory= control)"
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::Identity;

    fn shape<'a>() -> TaskShape<'a> {
        TaskShape {
            pool: "default",
            sandbox: SandboxKind::Process,
            image: None,
            network: false,
            timeout: Duration::from_secs(60),
            memory_bytes: 1 << 20,
        }
    }

    #[test]
    fn parses_keys_with_restrictions_and_names_bad_lines() {
        let a = Identity::generate("alice").expect("key");
        let b = Identity::generate("ops").expect("key");
        let text = format!(
            "# comment\n\n{} pools=default,ci sandboxes=container images=krill/base:1 network=no max-timeout=30m max-memory=1g\n{} control\n",
            a.public_line(),
            b.public_line()
        );
        let keys = TrustedKeys::parse(&text).expect("parses");
        assert_eq!(keys.len(), 2);
        let alice = keys.get(&a.public()).expect("alice");
        assert_eq!(alice.name, "alice");
        assert!(!alice.rules.control && !alice.rules.network);
        assert_eq!(alice.rules.max_timeout, Some(Duration::from_secs(1800)));
        assert_eq!(alice.rules.max_memory, Some(1 << 30));
        let ops = keys.get(&b.public()).expect("ops");
        assert!(ops.rules.control && ops.rules.network);
        assert_eq!(ops.rules.check(&shape()), Ok(()));

        let mut t = shape();
        assert_eq!(alice.rules.check(&t).map_err(|e| e.0), Err("sandbox"));
        t.sandbox = SandboxKind::Container;
        t.image = Some("krill/python:1");
        assert_eq!(alice.rules.check(&t).map_err(|e| e.0), Err("image"));
        t.image = Some("krill/base:1");
        assert_eq!(alice.rules.check(&t), Ok(()));
        t.pool = "prod";
        assert_eq!(alice.rules.check(&t).map_err(|e| e.0), Err("pool"));
        t.pool = "ci";
        t.network = true;
        assert_eq!(alice.rules.check(&t).map_err(|e| e.0), Err("network"));
        t.network = false;
        t.timeout = Duration::from_secs(3600);
        assert_eq!(alice.rules.check(&t).map_err(|e| e.0), Err("timeout"));
        t.timeout = Duration::from_secs(60);
        t.memory_bytes = 2 << 30;
        assert_eq!(alice.rules.check(&t).map_err(|e| e.0), Err("memory"));

        for (bad, why) in [
            ("rsa AAAA x", "unknown key type"),
            ("ed25519 AAAA x", "base64"),
            (
                &format!("{} colour=red", a.public_line()),
                "unknown restriction",
            ),
            (
                &format!("{} network=maybe", a.public_line()),
                "expected yes or no",
            ),
            (
                &format!("{}\n{}", a.public_line(), a.public_line()),
                "already used",
            ),
            ("ed25519", "expected `ed25519"),
        ] {
            let e = TrustedKeys::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(why) && e.contains("line "), "{bad}: {e}");
        }
    }
}
