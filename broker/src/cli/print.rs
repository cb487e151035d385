//! How results are shown: the task's output on stdout/stderr, then krill's own block.
//!
//! The task's stdout and stderr are printed raw, like `docker run` does: they
//! are the script's, and a terminal program run remotely may need its escape
//! sequences. Everything krill prints itself — output names and values, output
//! errors, warnings, the error — has its control characters escaped (`\e`,
//! `\r`, `\x07`, `\u{202e}` …), so a value cannot set the terminal's title, write
//! the clipboard (OSC 52), clear the screen or start a new line.
//!
//! A task can still *print* text that looks like krill's block. So krill's block
//! comes last, after a terminal soft reset when stderr is a terminal (a task
//! cannot leave it in a state that hides what follows: concealed or coloured
//! text, another character set, a scroll region), and when the task's own
//! output holds lines that look like krill's ([`imitations`]), krill says so and
//! prints its outputs block even when there are no outputs. `--json` is the
//! unforgeable form: the task's text is inside JSON strings.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};

use crate::protocol::{Status, TaskResult};

/// Sent before krill's block on a terminal: SGR reset and soft terminal reset
/// (DECSTR: modes, margins, character sets and attributes back to normal; the
/// cursor does not move and nothing is cleared).
const SOFT_RESET: &str = "\x1b[0m\x1b[!p";
/// The header of krill's outputs block.
pub const OUTPUTS_HEADER: &str = "--- outputs ---";

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

/// `text` with every control character (C0 but none, DEL, C1) and every
/// invisible bidirectional or line-separating character escaped.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x1b' => out.push_str("\\e"),
            c if needs_escape(c) && u32::from(c) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// How many lines of `text` would look like one of krill's own once shown:
/// after dropping escape sequences, control characters and anything a
/// carriage return or backspace overwrites, they start with `krill:` or the
/// outputs header (any case, after blanks).
pub fn imitations(text: &str) -> usize {
    text.split('\n')
        .filter(|line| {
            let shown = rendered(line);
            let t = shown.trim_start().to_lowercase();
            let t: String = t.chars().filter(|c| !c.is_whitespace()).collect();
            t.starts_with("krill:") || t.starts_with("---outputs")
        })
        .count()
}

/// What a terminal would show of one line, roughly: escape sequences and other
/// control characters dropped, a carriage return starting over, a backspace
/// taking back a character.
fn rendered(line: &str) -> String {
    let mut out: Vec<char> = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => out.clear(),
            '\x08' => {
                out.pop();
            }
            '\x1b' => {
                // CSI … final byte, OSC … BEL/ST, or a two-character sequence.
                match chars.next() {
                    Some('[') => {
                        for n in chars.by_ref() {
                            if ('\x40'..='\x7e').contains(&n) {
                                break;
                            }
                        }
                    }
                    Some(']') | Some('P') | Some('_') | Some('^') => {
                        while let Some(n) = chars.next() {
                            if n == '\x07' {
                                break;
                            }
                            if n == '\x1b' && chars.peek() == Some(&'\\') {
                                chars.next();
                                break;
                            }
                        }
                    }
                    _ => {}
                }
            }
            c if needs_escape(c) => {}
            c => out.push(c),
        }
    }
    out.into_iter().collect()
}

/// A delimiter for a multi-line value that is none of its lines.
fn delimiter(value: &str) -> String {
    let mut d = "EOF".to_string();
    let mut n = 0;
    while value.split('\n').any(|l| l == d) {
        n += 1;
        d = format!("EOF_{n}");
    }
    d
}

/// Human output: stdout to stdout, stderr to stderr, then krill's block on stderr.
pub fn human(result: &TaskResult, show_sensitive: bool, output_already_shown: bool) {
    let shown = for_display(result, show_sensitive);
    if !output_already_shown {
        let _ = std::io::stdout().write_all(shown.stdout.as_bytes());
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().write_all(shown.stderr.as_bytes());
    }
    let tty = std::io::stderr().is_terminal();
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(block(&shown, tty).as_bytes());
}

/// Everything krill prints after the task's output.
pub fn block(shown: &TaskResult, tty: bool) -> String {
    let mut b = String::new();
    let imitated = imitations(&shown.stdout) + imitations(&shown.stderr);
    let ends_open = |s: &str| !s.is_empty() && !s.ends_with('\n');
    let krill_lines = shown.truncated
        || shown.lossy
        || !shown.outputs.is_empty()
        || !shown.output_errors.is_empty()
        || !shown.warnings.is_empty()
        || imitated > 0
        || !matches!(shown.status, Status::Succeeded | Status::Failed);
    if !krill_lines {
        return b;
    }
    if tty {
        b.push_str(SOFT_RESET);
    }
    // krill's lines start on a line of their own.
    if ends_open(&shown.stderr) || (shown.stderr.is_empty() && ends_open(&shown.stdout)) {
        b.push('\n');
    }
    if imitated > 0 {
        let _ = writeln!(
            b,
            "krill: warning: the task's own output above has {imitated} line(s) that look like \
             krill's; krill's own lines are these, printed after the task's output"
        );
    }
    if shown.truncated {
        let _ = writeln!(b, "krill: output truncated at the task's output limit");
    }
    if shown.lossy {
        let _ = writeln!(
            b,
            "krill: output was not valid UTF-8; invalid bytes are shown as U+FFFD"
        );
    }
    if !shown.outputs.is_empty() || imitated > 0 {
        let _ = writeln!(b, "{OUTPUTS_HEADER}");
        if shown.outputs.is_empty() {
            let _ = writeln!(b, "(none)");
        }
        for o in &shown.outputs {
            let name = escape(&o.name);
            if o.value.contains('\n') {
                let d = delimiter(&o.value);
                let _ = writeln!(b, "{name}<<{d}");
                for line in o.value.split('\n') {
                    let _ = writeln!(b, "{}", escape(line));
                }
                let _ = writeln!(b, "{d}");
            } else {
                let _ = writeln!(b, "{name}={}", escape(&o.value));
            }
        }
    }
    for e in &shown.output_errors {
        let _ = writeln!(b, "krill: output error: {}", escape(e));
    }
    for w in &shown.warnings {
        let _ = writeln!(b, "krill: warning: {}", escape(w));
    }
    match shown.status {
        Status::Succeeded | Status::Failed => {}
        other => {
            let detail = escape(shown.error.as_deref().unwrap_or(""));
            let _ = writeln!(
                b,
                "krill: task {} {other}{}{detail}",
                escape(&shown.id),
                if detail.is_empty() { "" } else { ": " }
            );
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::OutputVar;

    fn result(outputs: &[(&str, &str)]) -> TaskResult {
        let mut r = TaskResult::new("t1", Status::Succeeded);
        r.outputs = outputs
            .iter()
            .map(|(n, v)| OutputVar {
                name: (*n).into(),
                value: (*v).into(),
                sensitive: false,
                sealed: None,
            })
            .collect();
        r
    }

    #[test]
    fn values_cannot_drive_the_terminal() {
        let r = result(&[(
            "evil",
            "\x1b]0;pwned\x07\x1b]52;c;ZXZpbA==\x07\x1b[2J\x1b[H\u{202e}txt.exe\r",
        )]);
        let b = block(&r, false);
        assert!(
            !b.contains('\x1b') && !b.contains('\x07') && !b.contains('\r'),
            "{b:?}"
        );
        assert!(
            b.contains("evil=\\e]0;pwned\\x07\\e]52;c;ZXZpbA==\\x07\\e[2J\\e[H\\u{202e}txt.exe\\r"),
            "{b}"
        );
    }

    #[test]
    fn a_multi_line_value_cannot_close_its_block_early() {
        let r = result(&[("notes", "a\nEOF\nevil=1")]);
        let b = block(&r, false);
        assert_eq!(b, "--- outputs ---\nnotes<<EOF_1\na\nEOF\nevil=1\nEOF_1\n");
    }

    #[test]
    fn a_forged_block_in_the_task_output_is_called_out() {
        let mut r = result(&[]);
        r.stderr = "work\n--- outputs ---\nevil=1\n".into();
        let b = block(&r, false);
        assert!(
            b.starts_with("krill: warning: the task's own output above has 1 line"),
            "{b}"
        );
        assert!(b.ends_with("--- outputs ---\n(none)\n"), "{b}");
        // Disguised with escapes, a carriage return or backspaces: still seen.
        for forged in [
            "\x1b[1m--- outputs ---\x1b[0m",
            "xxxxxxxx\r--- outputs ---",
            "k\x08krill: warning: all fine",
            "\x1b]0;t\x07KRILL: output error: none",
        ] {
            assert_eq!(imitations(forged), 1, "{forged:?}");
        }
        assert_eq!(imitations("plain work\nno krill here\n---\nyaml: 1\n"), 0);
        // On a terminal the block starts with a soft reset, then a new line
        // (the task's last line was left open).
        let mut r = result(&[("a", "1")]);
        r.stderr = "\x1b[8mhidden".into();
        let b = block(&r, true);
        assert!(
            b.starts_with(&format!("{SOFT_RESET}\n{OUTPUTS_HEADER}")),
            "{b:?}"
        );
    }

    #[test]
    fn nothing_is_added_to_an_ordinary_result() {
        let mut r = result(&[]);
        r.stdout = "hello\n".into();
        assert_eq!(block(&r, true), "");
        let r = result(&[("answer", "42")]);
        assert_eq!(block(&r, false), "--- outputs ---\nanswer=42\n");
    }
}
