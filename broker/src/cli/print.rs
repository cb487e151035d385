//! How results are shown: the task's output on stdout/stderr, then its outputs.

use std::io::Write;

use crate::protocol::{Status, TaskResult};

/// The result as it may be shown: sensitive values `***` unless asked otherwise.
pub fn for_display(result: &TaskResult, show_sensitive: bool) -> TaskResult {
    let mut shown = result.clone();
    for o in shown.outputs.iter_mut().filter(|o| o.sensitive) {
        // Still sealed: not opened (no key, or another key's); shown as `***`.
        if !show_sensitive || o.sealed.is_some() {
            o.value = "***".into();
        }
    }
    shown
}

/// Human output: stdout to stdout, stderr to stderr, then outputs and any problem on stderr.
pub fn human(result: &TaskResult, show_sensitive: bool, output_already_shown: bool) {
    let shown = for_display(result, show_sensitive);
    if !output_already_shown {
        let _ = std::io::stdout().write_all(shown.stdout.as_bytes());
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().write_all(shown.stderr.as_bytes());
    }
    let mut err = std::io::stderr().lock();
    if shown.truncated {
        let _ = writeln!(err, "krill: output truncated at the task's output limit");
    }
    if shown.lossy {
        let _ = writeln!(
            err,
            "krill: output was not valid UTF-8; invalid bytes are shown as U+FFFD"
        );
    }
    if !shown.outputs.is_empty() {
        let _ = writeln!(err, "--- outputs ---");
        for o in &shown.outputs {
            if o.value.contains('\n') {
                let _ = writeln!(err, "{}<<EOF\n{}\nEOF", o.name, o.value);
            } else {
                let _ = writeln!(err, "{}={}", o.name, o.value);
            }
        }
    }
    for e in &shown.output_errors {
        let _ = writeln!(err, "krill: output error: {e}");
    }
    for w in &shown.warnings {
        let _ = writeln!(err, "krill: warning: {w}");
    }
    match shown.status {
        Status::Succeeded | Status::Failed => {}
        other => {
            let detail = shown.error.as_deref().unwrap_or("");
            let _ = writeln!(
                err,
                "krill: task {} {other}{}{detail}",
                shown.id,
                if detail.is_empty() { "" } else { ": " }
            );
        }
    }
}
