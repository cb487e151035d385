//! The task message: what to run, where, with which limits.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks; messages with another version are rejected.
pub const PROTOCOL_VERSION: u32 = 1;

/// The interpreter used when a task names none: the script is passed as a file
/// (`sh -e /path/to/script`), so a failing command stops it, as in CI runners.
pub const DEFAULT_INTERPRETER: [&str; 2] = ["sh", "-e"];

/// Longest task id accepted.
pub const MAX_ID_LEN: usize = 128;

/// Which kind of sandbox runs the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxKind {
    /// A dropped-privilege process on the worker's host, in its own namespaces.
    Process,
    /// A single-use container from an allow-listed image.
    Container,
}

impl SandboxKind {
    /// The name used on the wire, in flags and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxKind::Process => "process",
            SandboxKind::Container => "container",
        }
    }
}

impl fmt::Display for SandboxKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SandboxKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "process" => Ok(SandboxKind::Process),
            "container" => Ok(SandboxKind::Container),
            other => Err(format!(
                "unknown sandbox `{other}` (expected `process` or `container`)"
            )),
        }
    }
}

/// A secret value in plain text: serialized as itself on the wire, but `Debug`
/// and `Display` print `**REDACTED**` so it cannot leak through a log line by
/// accident, and wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    /// The value itself; call only where it is handed to the sandbox or the masker.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// A secret sealed to the pool's X25519 key: base64 of a libsodium sealed box
/// (`crypto_box_seal`: X25519 + XSalsa20-Poly1305) whose plaintext is
/// `krill-secret-v1\n<NAME>\n<signer's x-krill-key, or empty>\n<value>`
/// (see `broker::trust::seal`). Only a worker holding the pool key opens it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    /// Base64 (standard, padded) of the sealed box.
    pub sealed: String,
}

/// A secret on the wire: a plain string, or `{"sealed": "<base64>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SecretValue {
    /// Plain text: visible to anyone who can read the queue (and on the broker's disk).
    Plain(Secret),
    /// Sealed to the pool key: the broker holds only ciphertext.
    Sealed(Sealed),
}

impl SecretValue {
    /// The plain value, when it is one (a worker opens sealed values at intake).
    pub fn plain(&self) -> Option<&str> {
        match self {
            SecretValue::Plain(s) => Some(s.expose()),
            SecretValue::Sealed(_) => None,
        }
    }

    /// Whether the value is sealed.
    pub fn is_sealed(&self) -> bool {
        matches!(self, SecretValue::Sealed(_))
    }
}

impl From<Secret> for SecretValue {
    fn from(s: Secret) -> Self {
        SecretValue::Plain(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("**REDACTED**")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("**REDACTED**")
    }
}

/// Resource limits a task asks for. Every field is optional: what is not set
/// takes the pool's default, and what is set may not exceed the pool's maximum.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock deadline in seconds, from the moment the script starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Memory limit in bytes (swap included where the sandbox can say so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPU limit in cores (0.5 = half a core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Maximum number of processes and threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Bytes of stdout and of stderr kept in the result, each; past it the rest is discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    /// Size of the writable work dir and /tmp, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// Whether the task may use the network (granted only if the pool allows
    /// it): `true` (the pool's whole allowance), `false`, or `{"allow":
    /// ["CIDR[:PORTS]", ...]}` (the public internet plus those non-public
    /// destinations, each within the pool's `--network-allow`).
    #[serde(default)]
    pub network: Network,
}

/// A task's network: off, on with the pool's whole allowance, or on with the
/// non-public destinations it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Network {
    /// `false`: no network; `true`: the pool's whole allowance.
    Switch(bool),
    /// `{"allow": [...]}`: the public internet plus these destinations.
    Allow(NetworkAllow),
}

/// Destinations a task asks for beyond the public internet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkAllow {
    /// `CIDR` or `CIDR:PORTS` (ports like `443` or `8000-8100`, several joined
    /// with `+`, e.g. `10.20.0.0/16:5432+6432`); an address alone is a /32 or /128.
    pub allow: Vec<String>,
}

impl Default for Network {
    fn default() -> Self {
        Network::Switch(false)
    }
}

impl Network {
    /// Whether the task asks for network at all.
    pub fn is_on(&self) -> bool {
        !matches!(self, Network::Switch(false))
    }

    /// What it asks for: `None` for the pool's whole allowance (`true`) or no
    /// network, the list otherwise.
    pub fn asked(&self) -> Option<&[String]> {
        match self {
            Network::Allow(a) => Some(&a.allow),
            Network::Switch(_) => None,
        }
    }
}

impl From<bool> for Network {
    fn from(on: bool) -> Self {
        Network::Switch(on)
    }
}

/// A task: the script and everything needed to run it.
///
/// Only `version`, `id` and `script` are required. The result is sent to the
/// queue named in the AMQP `reply_to` property of the message that carried it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// Protocol version; must be 1.
    pub version: u32,
    /// Unique id chosen by the submitter (a UUID v7 from the CLI): 1-128 characters of
    /// `A-Z a-z 0-9 . _ : -`. Also the message's `message_id` and `correlation_id`.
    pub id: String,
    /// The script's text, handed to the interpreter as a file.
    pub script: String,
    /// Program and arguments the script file is appended to; default `["sh", "-e"]`.
    #[serde(default = "default_interpreter")]
    pub interpreter: Vec<String>,
    /// Sandbox kind; default: the pool's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxKind>,
    /// Container image (container sandbox only); default: the pool's first allowed image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Environment variables for the script.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Secret environment variables: given to the script, masked in every output.
    /// Each is a plain string or `{"sealed": "<base64>"}` (sealed to the pool key).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretValue>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Whether the task may run again when the worker running it is lost.
    /// When false (the default) such a task ends as `worker_lost` instead.
    #[serde(default)]
    pub retry_on_worker_loss: bool,
    /// When the submitter queued it (for the queue-wait figure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<DateTime<Utc>>,
    /// The submitter's X25519 public key (base64): the worker seals every
    /// sensitive output value to it, so only the submitter can read them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_key: Option<String>,
    /// Concurrency key: across the pool, at most `max_concurrent` tasks with the
    /// same key run at once, and they start in the order they were submitted.
    /// 1-128 characters of `A-Z a-z 0-9 _ . : / -`. A keyed task is published to
    /// its key's line queue `krill.line.<pool>.<key>`, not to the pool queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9_.:/-]+$"))]
    pub concurrency_key: Option<String>,
    /// How many tasks with this key may run at once (default 1, at most the pool's
    /// maximum). A task starts only while fewer than its own value run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub max_concurrent: Option<u32>,
    /// When set, this task ends every older task of its key that has not started
    /// with the status `superseded` (running ones are never touched).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub supersede: bool,
}

fn default_interpreter() -> Vec<String> {
    DEFAULT_INTERPRETER.iter().map(|s| s.to_string()).collect()
}

/// What is wrong with a task that parsed but cannot be accepted as it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    #[error("unsupported protocol version {0} (this worker speaks {PROTOCOL_VERSION})")]
    Version(u32),
    #[error("task id must be 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 . _ : -")]
    Id,
    #[error("script is empty")]
    EmptyScript,
    #[error("interpreter is empty")]
    EmptyInterpreter,
    #[error("interpreter arguments must not contain NUL bytes")]
    InterpreterNul,
    #[error("invalid environment variable name `{0}`")]
    EnvName(String),
    #[error("environment variable `{0}` is reserved by krill")]
    ReservedEnv(String),
    #[error("value of `{0}` contains a NUL byte")]
    NulValue(String),
    #[error("`{0}` is given both as env and as a secret")]
    DuplicateName(String),
    #[error("limit `{0}` must be greater than zero")]
    ZeroLimit(&'static str),
    #[error("image is only meaningful for the container sandbox")]
    ImageWithoutContainer,
    #[error("reply_key is not base64 of a 32-byte X25519 public key")]
    ReplyKey,
    #[error("sealed value of `{0}` is not base64")]
    SealedEncoding(String),
    #[error(
        "concurrency_key must be 1-{} characters of A-Z a-z 0-9 _ . : / -",
        super::lines::MAX_KEY_LEN
    )]
    Key,
    #[error("max_concurrent must be 1-{}", super::lines::MAX_CONCURRENT_LIMIT)]
    MaxConcurrent,
    #[error("{0} needs a concurrency_key")]
    NeedsKey(&'static str),
}

/// Whether `name` is a valid environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most 256 bytes.
pub fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    name.len() <= 256 && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether `id` is a valid task id.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

impl Task {
    /// A task with every optional field at its default.
    pub fn new(id: impl Into<String>, script: impl Into<String>) -> Self {
        Task {
            version: PROTOCOL_VERSION,
            id: id.into(),
            script: script.into(),
            interpreter: default_interpreter(),
            sandbox: None,
            image: None,
            env: BTreeMap::new(),
            secrets: BTreeMap::new(),
            limits: Limits::default(),
            retry_on_worker_loss: false,
            submitted_at: None,
            reply_key: None,
            concurrency_key: None,
            max_concurrent: None,
            supersede: false,
        }
    }

    /// Checks what the types cannot: version, id, names, empty script, zero limits.
    /// Pool policy (maxima, images) is checked by the worker.
    pub fn validate(&self) -> Result<(), TaskError> {
        if self.version != PROTOCOL_VERSION {
            return Err(TaskError::Version(self.version));
        }
        if !valid_id(&self.id) {
            return Err(TaskError::Id);
        }
        if self.script.trim().is_empty() {
            return Err(TaskError::EmptyScript);
        }
        if self.interpreter.is_empty() || self.interpreter[0].is_empty() {
            return Err(TaskError::EmptyInterpreter);
        }
        if self.interpreter.iter().any(|a| a.contains('\0')) {
            return Err(TaskError::InterpreterNul);
        }
        for (name, value) in self.env.iter().map(|(k, v)| (k, v.as_str())).chain(
            self.secrets
                .iter()
                .map(|(k, v)| (k, v.plain().unwrap_or(""))),
        ) {
            if !valid_env_name(name) {
                return Err(TaskError::EnvName(name.clone()));
            }
            if name.starts_with("KRILL_") {
                return Err(TaskError::ReservedEnv(name.clone()));
            }
            if value.contains('\0') {
                return Err(TaskError::NulValue(name.clone()));
            }
        }
        if let Some(name) = self.env.keys().find(|k| self.secrets.contains_key(*k)) {
            return Err(TaskError::DuplicateName(name.clone()));
        }
        let l = &self.limits;
        for (name, v) in [
            ("timeout_secs", l.timeout_secs),
            ("memory_bytes", l.memory_bytes),
            ("pids", l.pids),
            ("output_bytes", l.output_bytes),
            ("disk_bytes", l.disk_bytes),
        ] {
            if v == Some(0) {
                return Err(TaskError::ZeroLimit(name));
            }
        }
        if matches!(l.cpus, Some(c) if !(c > 0.0 && c.is_finite())) {
            return Err(TaskError::ZeroLimit("cpus"));
        }
        if self.image.is_some() && self.sandbox == Some(SandboxKind::Process) {
            return Err(TaskError::ImageWithoutContainer);
        }
        if let Some(k) = &self.reply_key {
            // An X25519 public key is any 32 bytes (trust::BoxPublicKey).
            if b64_len(k) != Some(32) {
                return Err(TaskError::ReplyKey);
            }
        }
        for (name, v) in &self.secrets {
            if let SecretValue::Sealed(s) = v {
                if b64_len(&s.sealed).is_none_or(|n| n == 0) {
                    return Err(TaskError::SealedEncoding(name.clone()));
                }
            }
        }
        match &self.concurrency_key {
            Some(k) if !super::lines::valid_key(k) => return Err(TaskError::Key),
            Some(_) => {}
            None if self.max_concurrent.is_some() => {
                return Err(TaskError::NeedsKey("max_concurrent"))
            }
            None if self.supersede => return Err(TaskError::NeedsKey("supersede")),
            None => {}
        }
        if matches!(self.max_concurrent, Some(m) if m == 0 || m > super::lines::MAX_CONCURRENT_LIMIT)
        {
            return Err(TaskError::MaxConcurrent);
        }
        Ok(())
    }
}

/// How many bytes standard base64 `text` decodes to; `None` when it is not
/// base64. (The keys themselves are `trust`'s, which builds on this module.)
fn b64_len(text: &str) -> Option<usize> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim().as_bytes())
        .ok()
        .map(|b| b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_is_a_switch_or_an_allow_list() {
        let parse = |n: &str| {
            serde_json::from_str::<Limits>(&format!(r#"{{"network": {n}}}"#)).map(|l| l.network)
        };
        assert_eq!(parse("true").expect("bool"), Network::Switch(true));
        assert!(!parse("false").expect("bool").is_on());
        let a = parse(r#"{"allow": ["10.20.0.0/16:5432", "203.0.113.7:443"]}"#).expect("list");
        assert!(a.is_on());
        assert_eq!(a.asked().map(<[String]>::len), Some(2));
        assert!(parse(r#"{"allow": [], "x": 1}"#).is_err());
        assert!(parse(r#""yes""#).is_err());
    }

    #[test]
    fn smallest_task_parses_with_defaults() {
        let t: Task = serde_json::from_str(
            r#"{"version": 1, "id": "0192f4c8-7d1e-7c3a-9a51-5f0e1b2c3d4e", "script": "echo hello"}"#,
        )
        .expect("parses");
        assert_eq!(t.interpreter, vec!["sh", "-e"]);
        assert!(!t.retry_on_worker_loss);
        assert!(!t.limits.network.is_on());
        t.validate().expect("valid");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<Task>(
            r#"{"version": 1, "id": "a", "script": "x", "colour": 1}"#,
        )
        .expect_err("unknown field");
        assert!(err.to_string().contains("colour"), "{err}");
        let err = serde_json::from_str::<Task>(
            r#"{"version": 1, "id": "a", "script": "x", "limits": {"ram": 1}}"#,
        )
        .expect_err("unknown limit");
        assert!(err.to_string().contains("ram"), "{err}");
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let mut t = Task::new("a", "true");
        t.secrets
            .insert("TOKEN".into(), Secret("hunter2-very-secret".into()).into());
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("**REDACTED**"));
    }

    #[test]
    fn secrets_are_plain_strings_or_sealed_objects() {
        let t: Task = serde_json::from_str(
            r#"{"version":1,"id":"a","script":"x","secrets":{"A":"plain-value","B":{"sealed":"AAAA"}}}"#,
        )
        .expect("parses");
        assert_eq!(t.secrets["A"].plain(), Some("plain-value"));
        assert!(t.secrets["B"].is_sealed());
        t.validate().expect("valid");
        let back = serde_json::to_string(&t).expect("json");
        assert!(back.contains(r#""B":{"sealed":"AAAA"}"#), "{back}");
        let err = serde_json::from_str::<Task>(
            r#"{"version":1,"id":"a","script":"x","secrets":{"B":{"sealed":"AAAA","x":1}}}"#,
        );
        assert!(err.is_err());
        let mut t = t;
        t.secrets.insert(
            "C".into(),
            SecretValue::Sealed(Sealed {
                sealed: "!!".into(),
            }),
        );
        assert_eq!(t.validate(), Err(TaskError::SealedEncoding("C".into())));
        t.secrets.remove("C");
        t.reply_key = Some("short".into());
        assert_eq!(t.validate(), Err(TaskError::ReplyKey));
    }

    #[test]
    fn validation_names_the_problem() {
        let mut t = Task::new("ok-id", "  ");
        assert_eq!(t.validate(), Err(TaskError::EmptyScript));
        t.script = "true".into();
        t.id = "has space".into();
        assert_eq!(t.validate(), Err(TaskError::Id));
        t.id = "x".into();
        t.env.insert("1BAD".into(), "v".into());
        assert_eq!(t.validate(), Err(TaskError::EnvName("1BAD".into())));
        t.env.clear();
        t.env.insert("KRILL_OUTPUT".into(), "/etc/passwd".into());
        assert_eq!(
            t.validate(),
            Err(TaskError::ReservedEnv("KRILL_OUTPUT".into()))
        );
        t.env.clear();
        t.limits.timeout_secs = Some(0);
        assert_eq!(t.validate(), Err(TaskError::ZeroLimit("timeout_secs")));
        t.limits.timeout_secs = None;
        t.limits.cpus = Some(f64::NAN);
        assert_eq!(t.validate(), Err(TaskError::ZeroLimit("cpus")));
        t.limits.cpus = None;
        t.version = 2;
        assert_eq!(t.validate(), Err(TaskError::Version(2)));
    }
}
