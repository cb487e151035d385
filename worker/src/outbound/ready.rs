//! A final result ready to leave: encoded to JSON once, into one buffer of
//! exactly its size, and from then on kept only as those bytes.
//!
//! A task's output is the biggest thing a worker holds: with a 48 MiB cap the
//! capture becomes the result's `stdout`, and the reply's JSON is as big again.
//! [`Ready::encode`] writes the JSON (and, for a result over the history
//! budget, the cut history copy's) while the capture is alive, then drops the
//! capture: what stays is the JSON, shared by the reply publish, its retries
//! and the recent-results cache (redeliveries are answered with the same
//! bytes). The kept [`TaskResult`] (reached through `Deref`) has every field
//! but the output text: `stdout` and `stderr` are empty there, they are in
//! the body only. [`Ready::decode`] gives the whole result back (tests).

use std::ops::Deref;
use std::sync::Arc;

use broker::protocol::TaskResult;

use super::budget;

/// A final result and its encoded bodies (see the module doc).
#[derive(Debug)]
pub struct Ready {
    /// The result without its output text (moved into `body`).
    head: TaskResult,
    /// The reply's body: the whole result as JSON.
    body: Arc<Vec<u8>>,
    /// The history copy's body when it differs from `body` (the result was
    /// over the history budget: a cut copy).
    history: Option<Arc<Vec<u8>>>,
}

/// The result's JSON, in one buffer of the size [`budget::serialized_len`]
/// counts (so it never grows while written). A result that cannot be encoded
/// (not expected of a `TaskResult`) becomes the small one saying so.
fn to_json(r: &mut TaskResult) -> Vec<u8> {
    let mut out = Vec::with_capacity(budget::serialized_len(r));
    match serde_json::to_writer(&mut out, &*r) {
        Ok(()) => out,
        Err(e) => {
            tracing::error!(task_id = %r.id, error = %e, "cannot encode the result; sending a small one");
            let small = budget::small(r, &format!("the result could not be encoded ({e})"));
            serde_json::to_vec(&small).unwrap_or_default()
        }
    }
}

impl Ready {
    /// Encodes `result` (already stamped and fitted to its budget) and its
    /// history copy, cut to `history_budget` serialized bytes when bigger;
    /// then drops the output text.
    pub fn encode(mut result: TaskResult, history_budget: usize) -> Ready {
        // The history copy first: it is cut from the streams (at most the
        // budget of each is copied), which go once the body is written.
        let history = match budget::fit_copy(&result, history_budget) {
            Ok(None) => None,
            Ok(Some(mut copy)) => Some(Arc::new(to_json(&mut copy))),
            Err(_) => {
                let mut small = budget::small(&result, "its history copy was too large");
                Some(Arc::new(to_json(&mut small)))
            }
        };
        let body = Arc::new(to_json(&mut result));
        result.stdout = String::new();
        result.stderr = String::new();
        Ready {
            head: result,
            body,
            history,
        }
    }

    /// The reply's body (the whole result).
    pub fn body(&self) -> &Arc<Vec<u8>> {
        &self.body
    }

    /// The history copy's body (the body itself when the result fits the
    /// history budget).
    pub fn history_body(&self) -> &Arc<Vec<u8>> {
        self.history.as_ref().unwrap_or(&self.body)
    }

    /// Bytes of the bodies (the cache adds the kept fields to its bound).
    pub fn held_bytes(&self) -> usize {
        self.body.len() + self.history.as_ref().map_or(0, |h| h.len())
    }

    /// The whole result, decoded from the body.
    pub fn decode(&self) -> TaskResult {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| self.head.clone())
    }

    /// The history copy, decoded.
    pub fn decode_history(&self) -> TaskResult {
        serde_json::from_slice(self.history_body()).unwrap_or_else(|_| self.head.clone())
    }
}

impl Deref for Ready {
    type Target = TaskResult;

    /// The result without its output text (`stdout` and `stderr` are empty).
    fn deref(&self) -> &TaskResult {
        &self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::protocol::Status;

    fn big(stdout: usize) -> TaskResult {
        let mut r = TaskResult::new("t1", Status::Succeeded);
        // Lines with characters JSON escapes, so the size counted must be exact.
        r.stdout = "a \"quoted\" line\twith a tab\n".repeat(stdout / 28 + 1);
        r.stderr = "err\u{1}\n".repeat(100);
        r.warnings.push("w".into());
        r
    }

    /// The result's bytes are built once: one buffer, sized exactly before
    /// it is written (never grown, so never copied while growing), and the
    /// capture is gone once it is encoded: only the JSON holds the output.
    #[test]
    fn a_result_is_encoded_once_into_a_buffer_of_its_size() {
        let r = big(3 << 20);
        let whole = r.clone();
        let expected = serde_json::to_vec(&whole).expect("json");
        let ready = Ready::encode(r, 1 << 20);
        assert_eq!(**ready.body(), expected);
        assert_eq!(
            ready.body().capacity(),
            ready.body().len(),
            "pre-sized exactly: the buffer never grew"
        );
        assert!(ready.stdout.is_empty() && ready.stderr.is_empty());
        assert_eq!(ready.id, "t1");
        assert_eq!(ready.status, Status::Succeeded);
        assert_eq!(ready.warnings, whole.warnings);
        assert_eq!(ready.decode(), whole);
        // The history copy is cut to its budget, encoded on its own.
        let history = ready.decode_history();
        assert!(history.truncated && !history.stdout.is_empty());
        assert!(ready.history_body().len() <= 1 << 20);
        assert_eq!(
            ready.held_bytes(),
            expected.len() + ready.history_body().len()
        );
    }

    #[test]
    fn a_small_result_is_its_own_history_copy() {
        let r = big(1 << 10);
        let ready = Ready::encode(r.clone(), 1 << 20);
        assert!(Arc::ptr_eq(ready.body(), ready.history_body()));
        assert_eq!(ready.decode_history(), r);
        assert_eq!(ready.held_bytes(), ready.body().len());
    }
}
