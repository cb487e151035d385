//! The worker's side of the zero-trust queue: every delivery is checked here
//! before anything is made for it (no cgroup, container or helper).
//!
//! ## Layout
//! - [`verify`]: signatures, validity, the trusted keys' restrictions, sealed
//!   secrets opened (pure).
//! - [`replay`]: the pool's claims stream: a signed message runs once.
//! - [`audit`]: the `--audit-file` JSON lines.
//! - [`control`]: whether a control message is obeyed.
//! - this module: [`Trust`], built from the flags, with the narrow entry points
//!   the consumer and the control handler call, and the metrics.

pub mod audit;
pub mod control;
pub mod replay;
pub mod verify;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use broker::protocol::{SandboxKind, Status, Task, TaskResult};
use broker::trust::sign::sha256_hex;
use broker::trust::{now_unix, PoolKey, TaskShape, TrustedKeys};
use lapin::BasicProperties;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::config::{Config, Policy};
use crate::outbound::Outbound;
pub use audit::{Audit, AuditEvent, AuditLine};
pub use replay::{ClaimError, Claims};
pub use verify::{Envelope, Rejection, Signer, TrustPolicy};

/// What is wrong with the trust flags (the worker does not start).
#[derive(Debug, thiserror::Error)]
pub enum TrustSetupError {
    #[error("--trusted-keys: {0}")]
    TrustedKeys(#[from] broker::trust::TrustedKeysError),
    #[error("--pool-key: {0}")]
    PoolKey(#[from] broker::trust::KeyError),
    #[error("--trusted-keys {0}: the file lists no key")]
    NoKeys(String),
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// The trust figures (registered with the worker's other metrics).
///
/// | metric | type | labels |
/// |---|---|---|
/// | `krill_trust_rejections_total` | counter | `reason` (the reason code) |
/// | `krill_control_ignored_total` | counter | `reason` |
/// | `krill_claim_seconds` | histogram | |
#[derive(Debug, Clone, Default)]
pub struct TrustMetrics {
    rejections: Family<ReasonLabel, Counter>,
    control_ignored: Family<ReasonLabel, Counter>,
    claim: Option<Histogram>,
}

impl TrustMetrics {
    /// Registers the figures in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = TrustMetrics {
            claim: Some(Histogram::new(exponential_buckets(0.0002, 2.0, 16))),
            ..TrustMetrics::default()
        };
        registry.register(
            "krill_trust_rejections",
            "Deliveries refused before anything ran, by reason code",
            m.rejections.clone(),
        );
        registry.register(
            "krill_control_ignored",
            "Control messages not obeyed (unsigned, untrusted, not allowed), by reason",
            m.control_ignored.clone(),
        );
        if let Some(h) = &m.claim {
            registry.register(
                "krill_claim_seconds",
                "Time to claim a signed task on the claims stream (publish to read-back)",
                h.clone(),
            );
        }
        m
    }

    pub fn rejected(&self, code: &str) {
        self.rejections
            .get_or_create(&ReasonLabel {
                reason: code.to_string(),
            })
            .inc();
    }

    pub fn control_ignored(&self, code: &str) {
        self.control_ignored
            .get_or_create(&ReasonLabel {
                reason: code.to_string(),
            })
            .inc();
    }

    pub fn claimed(&self, took: Duration) {
        if let Some(h) = &self.claim {
            h.observe(took.as_secs_f64());
        }
    }
}

/// The worker's trust context, built once from the flags.
#[derive(Debug)]
pub struct Trust {
    pub policy: TrustPolicy,
    /// Replay protection (signed tasks only: a worker with trusted keys).
    pub claims: Option<Claims>,
    pub audit: Audit,
    worker: String,
    pool: String,
    /// Signatures of drain/resume messages already obeyed (until their
    /// `not_after`), so a captured one published again changes nothing.
    seen_control: Mutex<HashMap<String, u64>>,
}

impl Trust {
    /// Reads the trusted keys, the pool keys and opens the audit file.
    pub fn from_config(cfg: &Config, worker: &str) -> Result<Self, TrustSetupError> {
        let trusted = match &cfg.trusted_keys {
            Some(path) => {
                let keys = TrustedKeys::load(path)?;
                if keys.is_empty() {
                    return Err(TrustSetupError::NoKeys(path.display().to_string()));
                }
                keys
            }
            None => TrustedKeys::default(),
        };
        let pool_keys = cfg
            .pool_keys
            .iter()
            .map(|p| PoolKey::load(p))
            .collect::<Result<Vec<_>, _>>()?;
        let audit = match &cfg.audit_file {
            Some(p) => Audit::open(p)?,
            None => Audit::off(),
        };
        let enabled = !trusted.is_empty();
        Ok(Trust {
            policy: TrustPolicy {
                trusted,
                pool_keys,
                allow_unsigned: cfg.allow_unsigned,
                require_sealed: cfg.require_sealed_secrets,
                max_validity: cfg.max_validity,
            },
            claims: enabled.then(|| Claims::new(worker, &cfg.pool)),
            audit,
            worker: worker.to_string(),
            pool: cfg.pool.clone(),
            seen_control: Mutex::default(),
        })
    }

    /// An open pool: no keys, unsigned tasks allowed (unit tests, tools).
    pub fn open(worker: &str, pool: &str) -> Self {
        Trust {
            policy: TrustPolicy {
                allow_unsigned: true,
                max_validity: broker::trust::MAX_VALIDITY,
                ..TrustPolicy::default()
            },
            claims: None,
            audit: Audit::off(),
            worker: worker.to_string(),
            pool: pool.to_string(),
            seen_control: Mutex::default(),
        }
    }

    /// Step 1, before the body is parsed: the signature and its validity.
    pub fn envelope(&self, props: &BasicProperties, body: &[u8]) -> Result<Envelope, Rejection> {
        self.policy.envelope(&self.pool, props, body, now_unix())
    }

    /// Step 2, on the parsed task: the key's restrictions (with the pool's
    /// defaults for what the task leaves out), plain secrets, sealed secrets opened.
    /// `default_image`: the image a container task naming none gets.
    pub fn admit(
        &self,
        env: &Envelope,
        task: &mut Task,
        policy: &Policy,
        default_image: Option<&str>,
    ) -> Result<(), Rejection> {
        let sandbox = task.sandbox.unwrap_or(policy.kinds[0]);
        let image = match sandbox {
            SandboxKind::Container => task.image.clone().or(default_image.map(str::to_string)),
            SandboxKind::Process => None,
        };
        let shape = TaskShape {
            pool: &self.pool,
            sandbox,
            image: image.as_deref(),
            network: task.limits.network.is_on(),
            timeout: task
                .limits
                .timeout_secs
                .map_or(policy.defaults.timeout, Duration::from_secs),
            memory_bytes: task
                .limits
                .memory_bytes
                .unwrap_or(policy.defaults.memory_bytes),
        };
        self.policy.admit(env, task, &shape)
    }

    /// Step 3, right before the run: the claim. `Ok(true)`: run it; `Ok(false)`:
    /// another claim of this message came first (a replay). Unsigned tasks and
    /// workers without trusted keys claim nothing.
    pub async fn claim(
        &self,
        env: &Envelope,
        outbound: &Outbound,
        attempt: u32,
        metrics: &TrustMetrics,
    ) -> Result<bool, ClaimError> {
        let (Some(claims), Some((id, not_after))) = (&self.claims, &env.claim) else {
            return Ok(true);
        };
        // A run again after a worker loss is a claim of its own.
        let id = if attempt > 1 {
            format!("{id}:{attempt}")
        } else {
            id.clone()
        };
        let began = std::time::Instant::now();
        let won = claims.claim(outbound, &id, *not_after).await;
        metrics.claimed(began.elapsed());
        won
    }

    /// Records a drain/resume signature; false when it was seen before (a replay).
    pub fn first_control(&self, signature: &str, not_after: u64) -> bool {
        let now = now_unix();
        let mut seen = self.seen_control.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, na| *na + broker::trust::CLOCK_SKEW.as_secs() >= now);
        seen.insert(signature.to_string(), not_after).is_none()
    }

    /// A line about a task (key and script hash filled in).
    pub fn task_line(
        &self,
        event: AuditEvent,
        id: Option<&str>,
        env: Option<&Envelope>,
        task: Option<&Task>,
    ) -> AuditLine {
        let mut l = AuditLine::new(event, &self.worker, &self.pool);
        l.task_id = id.map(str::to_string);
        if let Some(env) = env {
            l.key = env.signer.as_ref().map(|s| s.name.clone());
            l.replayed_by = env.replayed_by.clone();
        }
        l.script_sha256 = task.map(|t| sha256_hex(t.script.as_bytes()));
        l
    }

    /// Audits a rejection (the key id when the key is not trusted).
    pub fn audit_rejection(
        &self,
        id: Option<&str>,
        props: &BasicProperties,
        body: &[u8],
        env: Option<&Envelope>,
        task: Option<&Task>,
        rejection: &Rejection,
    ) {
        let mut l = self.task_line(AuditEvent::TaskRejected, id, env, task);
        if l.key.is_none() {
            l.key = rejection.signer.clone();
        }
        if l.key.is_none() {
            l.key_id = broker::trust::Signed::take(props.headers().as_ref())
                .ok()
                .flatten()
                .map(|s| s.key.to_b64());
        }
        if l.script_sha256.is_none() {
            l.script_sha256 = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| {
                    v.get("script")
                        .and_then(|s| s.as_str())
                        .map(|s| sha256_hex(s.as_bytes()))
                });
        }
        l.reason = Some(rejection.reason.code());
        l.detail = Some(rejection.detail.clone());
        self.audit.record(l);
    }

    /// Audits a finished task.
    pub fn audit_finished(&self, env: Option<&Envelope>, result: &TaskResult) {
        if !self.audit.enabled() {
            return;
        }
        let mut l = self.task_line(AuditEvent::TaskFinished, Some(&result.id), env, None);
        l.status = Some(result.status.as_str().to_string());
        l.attempt = Some(result.attempt);
        if result.status == Status::Rejected {
            l.detail = result.error.clone();
        }
        self.audit.record(l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_signature_is_obeyed_once() {
        let t = Trust::open("w", "p");
        assert!(t.first_control("sig", now_unix() + 60));
        assert!(!t.first_control("sig", now_unix() + 60));
    }
}
