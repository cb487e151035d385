//! A running task's cancellation: its token and the reason it was cancelled
//! for, travelling together as one value.

use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

/// Cancels one task; cheap to clone. The first reason given is the one the
/// result reads.
#[derive(Debug, Clone)]
pub struct Cancel {
    token: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl Cancel {
    /// A cancellation cancelled with `parent` too (with no reason of its own).
    pub fn child_of(parent: &CancellationToken) -> Self {
        Cancel {
            token: parent.child_token(),
            reason: Arc::default(),
        }
    }

    /// Cancels with `reason`, unless it was cancelled for another reason before.
    pub fn cancel(&self, reason: &str) {
        {
            let mut r = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
            if r.is_none() {
                *r = Some(reason.to_string());
            }
        }
        self.token.cancel();
    }

    /// The token the sandbox watches.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Why it was cancelled, when a reason was given.
    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_wins_and_the_parent_cancels_too() {
        let root = CancellationToken::new();
        let c = Cancel::child_of(&root);
        c.cancel("first");
        c.cancel("second");
        assert!(c.token().is_cancelled());
        assert_eq!(c.reason().as_deref(), Some("first"));
        let d = Cancel::child_of(&root);
        root.cancel();
        assert!(d.token().is_cancelled());
        assert_eq!(d.reason(), None);
    }
}
