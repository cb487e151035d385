//! Whether a control message is obeyed: signed by a trusted key with the
//! control right (or unsigned on an `--allow-unsigned` pool); a cancel signed
//! by a key without it still stops the tasks that key signed itself. Anything
//! else is ignored with a warning, a metric and an audit line — for the
//! messages that concern this worker (a drain or resume addressed to it, a
//! cancel of a task running here), so the cancellation stream a worker replays
//! at every start does not repeat the history of the whole broker.

use broker::protocol::Control;
use broker::trust::{PublicKey, Reason};
use lapin::BasicProperties;

use super::{AuditEvent, Rejection, Trust, TrustMetrics};

/// What to do with a control message.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Obey it (an operator sent it).
    Obey,
    /// A cancel from a key without the control right: only tasks it signed.
    OwnTasks(PublicKey),
    /// Do nothing.
    Ignore(Rejection),
}

/// The action word of a command (audit and logs).
pub fn action(cmd: &Control) -> &'static str {
    match cmd {
        Control::Cancel { .. } => "cancel",
        Control::Drain { .. } => "drain",
        Control::Resume { .. } => "resume",
    }
}

/// Decides on one control message: `(decision, name of the signing key)`.
pub fn decide(
    trust: &Trust,
    routing_key: &str,
    props: &BasicProperties,
    body: &[u8],
    cmd: &Control,
) -> (Decision, Option<String>) {
    let now = broker::trust::now_unix();
    match trust.policy.control(routing_key, props, body, now) {
        Err(r) => (Decision::Ignore(r), None),
        Ok(None) => (Decision::Obey, None),
        Ok(Some((who, sig))) => {
            let d = match cmd {
                Control::Cancel { .. } if who.control => Decision::Obey,
                Control::Cancel { .. } => Decision::OwnTasks(who.key),
                Control::Drain { .. } | Control::Resume { .. } if !who.control => {
                    Decision::Ignore(Rejection {
                        reason: Reason::NotAllowed("control"),
                        detail: format!(
                            "key `{}` may not drain or resume workers (no control right)",
                            who.name
                        ),
                        signer: Some(who.name.clone()),
                    })
                }
                Control::Drain { .. } | Control::Resume { .. } => {
                    if trust.first_control(&sig.signature_b64(), sig.not_after) {
                        Decision::Obey
                    } else {
                        Decision::Ignore(Rejection {
                            reason: Reason::Replayed,
                            detail: "this signed message was obeyed before".into(),
                            signer: Some(who.name.clone()),
                        })
                    }
                }
            };
            (d, Some(who.name))
        }
    }
}

/// Records a decision about a control message that concerns this worker:
/// a warning and a metric when it is ignored, an audit line either way.
pub fn record(
    trust: &Trust,
    metrics: &TrustMetrics,
    routing_key: &str,
    cmd: &Control,
    decision: &Decision,
    key: Option<String>,
) {
    let event = match decision {
        Decision::Ignore(r) => {
            tracing::warn!(action = action(cmd), routing_key, reason = %r.reason,
                detail = %r.detail, "ignoring a control message");
            metrics.control_ignored(&r.reason.code());
            AuditEvent::ControlIgnored
        }
        Decision::Obey | Decision::OwnTasks(_) => AuditEvent::ControlApplied,
    };
    let mut line = trust.task_line(event, None, None, None);
    line.action = Some(action(cmd).to_string());
    line.target = Some(routing_key.to_string());
    line.key = key;
    if let Control::Cancel { task_id } = cmd {
        line.task_id = Some(task_id.clone());
    }
    if let Decision::Ignore(r) = decision {
        line.reason = Some(r.reason.code());
        line.detail = Some(r.detail.clone());
    }
    trust.audit.record(line);
}
