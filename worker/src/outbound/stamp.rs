//! What a result takes from its task's signature on its way out of the worker
//! ([`Outbound::finish_result`](super::Outbound::finish_result)): the name of
//! the key that signed it, the trust checks' warnings, and every sensitive
//! output value sealed to the task's `reply_key` — so the result on the wire,
//! in the reply queue, in the recent-results cache and in events holds only
//! ciphertext.

use broker::protocol::TaskResult;
use broker::trust::seal::seal_result_outputs;
use broker::trust::BoxPublicKey;

/// The warning a result with sensitive outputs but no reply key carries.
pub const NOT_SEALED_WARNING: &str =
    "sensitive outputs are not sealed: the task has no reply_key (sign it with a key, \
     or set reply_key, for them to travel encrypted)";

/// What the trust checks add to a task's result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stamp {
    /// The name of the trusted key that signed the task (`TaskResult.submitter`).
    pub submitter: Option<String>,
    /// Warnings every result of the task carries (an unsigned task on an open pool).
    pub warnings: Vec<String>,
    /// The task's X25519 public key (base64) its sensitive outputs are sealed to.
    pub reply_key: Option<String>,
}

impl Stamp {
    /// Stamps `result`: submitter, warnings (once each), sensitive outputs sealed.
    pub fn apply(&self, result: &mut TaskResult) {
        if self.submitter.is_some() {
            result.submitter.clone_from(&self.submitter);
        }
        for w in &self.warnings {
            if !result.warnings.contains(w) {
                result.warnings.push(w.clone());
            }
        }
        seal_outputs(result, self.reply_key.as_deref());
    }
}

/// Seals every sensitive output of `result` to `reply_key`. Without a reply key
/// the values stay as they are (masked everywhere else, as before) and a warning
/// says so; a value that cannot be sealed is dropped, never sent in clear.
pub fn seal_outputs(result: &mut TaskResult, reply_key: Option<&str>) {
    if !result
        .outputs
        .iter()
        .any(|o| o.sensitive && o.sealed.is_none())
    {
        return;
    }
    let Some(key) = reply_key.and_then(|k| BoxPublicKey::from_b64(k).ok()) else {
        if !result.warnings.iter().any(|w| w == NOT_SEALED_WARNING) {
            result.warnings.push(NOT_SEALED_WARNING.into());
        }
        return;
    };
    if seal_result_outputs(result, &key).is_err() {
        for o in result
            .outputs
            .iter_mut()
            .filter(|o| o.sensitive && o.sealed.is_none())
        {
            o.value.clear();
        }
        result
            .output_errors
            .push("sensitive outputs could not be sealed and were dropped".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::protocol::{OutputVar, Status};
    use broker::trust::seal::open_result_outputs;
    use broker::trust::Identity;

    fn with_token() -> TaskResult {
        let mut r = TaskResult::new("t", Status::Succeeded);
        r.outputs.push(OutputVar {
            name: "plain".into(),
            value: "visible".into(),
            sensitive: false,
            sealed: None,
        });
        r.outputs.push(OutputVar {
            name: "token".into(),
            value: "tok-secret-1".into(),
            sensitive: true,
            sealed: None,
        });
        r
    }

    #[test]
    fn sensitive_outputs_leave_sealed_to_the_reply_key_and_open_with_its_secret() {
        let id = Identity::generate("alice").expect("key");
        let stamp = Stamp {
            submitter: Some("alice".into()),
            warnings: vec!["w1".into()],
            reply_key: Some(id.reply_public().to_b64()),
        };
        let mut r = with_token();
        stamp.apply(&mut r);
        stamp.apply(&mut r);
        assert_eq!(r.submitter.as_deref(), Some("alice"));
        assert_eq!(r.warnings, vec!["w1".to_string()], "once each");
        assert_eq!(r.outputs[0].value, "visible");
        assert!(r.outputs[1].value.is_empty() && r.outputs[1].sealed.is_some());
        let json = serde_json::to_string(&r).expect("json");
        assert!(!json.contains("tok-secret-1"), "{json}");
        assert!(open_result_outputs(&mut r, &id).is_empty());
        assert_eq!(r.outputs[1].value, "tok-secret-1");
    }

    #[test]
    fn without_a_reply_key_they_stay_masked_with_a_warning() {
        let mut r = with_token();
        seal_outputs(&mut r, None);
        seal_outputs(&mut r, Some("not base64 of a key"));
        assert_eq!(r.outputs[1].value, "tok-secret-1");
        assert_eq!(r.warnings, vec![NOT_SEALED_WARNING.to_string()]);
    }
}
