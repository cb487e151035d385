//! Control commands, published on `krill.control`: cancel a task, drain or resume workers.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A command to the workers. Every worker receives every command and acts on
/// those that concern it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    /// Stop the task if it runs; answer it `cancelled` if it is delivered later.
    Cancel { task_id: String },
    /// Stop claiming tasks (`worker` = None: every worker).
    Drain {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<String>,
    },
    /// Claim tasks again after a drain.
    Resume {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<String>,
    },
}

impl Control {
    /// Whether a command addressed to `worker` (None = all) concerns `me`.
    pub fn addresses(target: &Option<String>, me: &str) -> bool {
        target.as_deref().is_none_or(|w| w == me)
    }
}
