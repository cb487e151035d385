//! Callers and their rights: bearer tokens (stored as SHA-256 hashes) and what
//! each may do (submit to which pools, see whose tasks, cancel, drain, replay).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The prefix of every token, so a leaked one is easy to find in a log or a repo.
pub const TOKEN_PREFIX: &str = "krill_";

/// What a caller may do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rights {
    /// Pools the caller may submit to (`*`: every pool).
    #[serde(default)]
    pub submit: Vec<String>,
    /// Whether the caller sees every task (else only its own).
    #[serde(default)]
    pub see_all: bool,
    /// May cancel tasks it sees.
    #[serde(default)]
    pub cancel: bool,
    /// May drain and resume workers.
    #[serde(default)]
    pub drain: bool,
    /// May list and replay dead letters.
    #[serde(default)]
    pub replay: bool,
}

/// A `--rights` list that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("unknown right `{0}` (expected submit:POOL[+POOL…] or submit:*, see:own, see:all, cancel, drain, replay, admin)")]
pub struct RightsError(pub String);

impl Rights {
    /// Parses `submit:default+gpu,see:all,cancel` (comma- or space-separated).
    pub fn parse(text: &str) -> Result<Rights, RightsError> {
        let mut r = Rights::default();
        for item in text.split([',', ' ']).filter(|s| !s.is_empty()) {
            match item {
                "see:all" => r.see_all = true,
                "see:own" => {}
                "cancel" => r.cancel = true,
                "drain" => r.drain = true,
                "replay" => r.replay = true,
                "admin" => {
                    r.submit = vec!["*".into()];
                    r.see_all = true;
                    r.cancel = true;
                    r.drain = true;
                    r.replay = true;
                }
                other => match other.strip_prefix("submit:") {
                    Some(pools) if !pools.is_empty() => {
                        r.submit.extend(pools.split('+').map(str::to_string))
                    }
                    _ => return Err(RightsError(other.to_string())),
                },
            }
        }
        Ok(r)
    }

    /// The rights in the syntax [`Rights::parse`] reads.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.submit.is_empty() {
            parts.push(format!("submit:{}", self.submit.join("+")));
        }
        parts.push(if self.see_all { "see:all" } else { "see:own" }.to_string());
        for (on, name) in [
            (self.cancel, "cancel"),
            (self.drain, "drain"),
            (self.replay, "replay"),
        ] {
            if on {
                parts.push(name.to_string());
            }
        }
        parts.join(",")
    }

    /// Whether the caller may submit to `pool`.
    pub fn may_submit(&self, pool: &str) -> bool {
        self.submit.iter().any(|p| p == "*" || p == pool)
    }
}

/// A caller known by its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub rights: Rights,
}

impl Caller {
    /// Whether the caller may see a task that `owner` (a token name, or none for
    /// a task submitted straight to AMQP) submitted.
    pub fn may_see(&self, owner: Option<&str>) -> bool {
        self.rights.see_all || owner == Some(self.name.as_str())
    }
}

/// A new random token (256 bits from the OS, hex).
pub fn new_token() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{TOKEN_PREFIX}{a}{b}")
}

/// What is stored for a token: its SHA-256, hex. Tokens are long and random,
/// so a plain hash suffices (no salt or slow hash needed against guessing).
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_parse() {
        let r = Rights::parse("submit:default+gpu,see:all cancel").expect("parse");
        assert!(r.may_submit("gpu") && r.may_submit("default") && !r.may_submit("x"));
        assert!(r.see_all && r.cancel && !r.drain && !r.replay);
        assert!(Rights::parse("admin").expect("admin").may_submit("any"));
        assert!(Rights::parse("root").is_err());
        assert!(Rights::parse("submit:").is_err());
    }

    #[test]
    fn tokens_hash_and_differ() {
        let t = new_token();
        assert!(t.starts_with(TOKEN_PREFIX) && t.len() > 60);
        assert_ne!(t, new_token());
        assert_eq!(hash_token(&t).len(), 64);
        assert_ne!(hash_token(&t), t);
    }
}
