//! The names every part of the process sandbox agrees on: a task's output
//! files in its `krill/` dir, where the task sees that dir and its home, and
//! its open-file limit.

/// Open-file limit of a task.
pub const NOFILE: u64 = 1024;
/// `$KRILL_OUTPUT`, in the task's `krill/` dir.
pub const OUTPUT_FILE: &str = "output";
/// `$KRILL_SENSITIVE_OUTPUT`, in the task's `krill/` dir.
pub const SENSITIVE_FILE: &str = "sensitive_output";
/// Where the task sees its own dir (script and output files).
pub const TASK_MOUNT: &str = "/krill";
/// The task's `$HOME` and working directory.
pub const HOME: &str = "/work";
