//! The audit file (`--audit-file`): one JSON line per decision — a task
//! accepted or rejected, a task finished, a control message obeyed or refused.
//!
//! A line names the task, the pool, the key (by its name in the trusted-keys
//! file), the script's SHA-256 and the reason; never a secret, an environment
//! value or an output. Lines are written by a thread of their own, so a slow
//! disk never blocks the runtime; a write that fails is logged and dropped (the
//! decision itself is taken regardless).
//!
//! ```json
//! {"at":"2026-11-02T10:00:00.123Z","event":"task_rejected","worker":"w1","pool":"default",
//!  "task_id":"0192…","key":"alice","script_sha256":"9f86…","reason":"not_allowed:network",
//!  "detail":"key `alice` may not ask for network"}
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::Serialize;

/// What an audit line records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    TaskAccepted,
    TaskRejected,
    TaskFinished,
    ControlApplied,
    ControlIgnored,
}

/// One line. Optional fields are left out when empty.
#[derive(Debug, Clone, Serialize)]
pub struct AuditLine {
    pub at: chrono::DateTime<chrono::Utc>,
    pub event: AuditEvent,
    pub worker: String,
    pub pool: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The signer's name; absent for unsigned messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The signer's public key when it is not trusted (so it has no name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Control messages: `cancel`, `drain`, `resume`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Control messages: the routing key (`drain.all`, `cancel.<id>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The control key that authorized a dead-letter replay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed_by: Option<String>,
}

impl AuditLine {
    pub fn new(event: AuditEvent, worker: &str, pool: &str) -> Self {
        AuditLine {
            at: chrono::Utc::now(),
            event,
            worker: worker.to_string(),
            pool: pool.to_string(),
            task_id: None,
            key: None,
            key_id: None,
            script_sha256: None,
            reason: None,
            detail: None,
            status: None,
            attempt: None,
            action: None,
            target: None,
            replayed_by: None,
        }
    }
}

/// What went wrong opening the audit file.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The audit log; `Audit::off()` writes nothing. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: Option<mpsc::Sender<AuditLine>>,
}

impl Audit {
    /// No audit file.
    pub fn off() -> Self {
        Audit { tx: None }
    }

    /// Appends to `path` (made 0600 if new) from a thread of its own.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| AuditError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let (tx, rx) = mpsc::channel::<AuditLine>();
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("krill-audit".into())
            .spawn(move || {
                for line in rx {
                    let mut text = serde_json::to_string(&line).unwrap_or_default();
                    text.push('\n');
                    if let Err(e) = file.write_all(text.as_bytes()) {
                        tracing::warn!(path = %shown, error = %e, "audit line not written");
                    }
                }
            })
            .map_err(|source| AuditError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Audit { tx: Some(tx) })
    }

    /// Records one line (never blocks).
    pub fn record(&self, line: AuditLine) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(line);
        }
    }

    /// Whether lines are written anywhere.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_and_leave_out_what_is_empty() {
        let path = std::env::temp_dir().join(format!("krill-audit-{}", uuid::Uuid::new_v4()));
        let audit = Audit::open(&path).expect("open");
        let mut l = AuditLine::new(AuditEvent::TaskRejected, "w1", "p");
        l.task_id = Some("t1".into());
        l.reason = Some("expired".into());
        audit.record(l);
        drop(audit);
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.ends_with('\n') {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let v: serde_json::Value = serde_json::from_str(text.trim()).expect("json line");
        assert_eq!(v["event"], "task_rejected");
        assert_eq!(v["reason"], "expired");
        assert!(v.get("key").is_none());
        let _ = std::fs::remove_file(path);
    }
}
