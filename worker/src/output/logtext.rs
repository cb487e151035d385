//! Text from a sandbox made safe for the worker's own log: masked by the
//! caller, then cut to [`MAX_LOG_TEXT`] bytes with control characters, newlines
//! and backslashes escaped, so a task can neither forge log lines nor drive the
//! terminal of whoever reads the log.

use std::fmt::Write as _;

/// Most bytes of sandbox text one log field carries.
pub const MAX_LOG_TEXT: usize = 4096;

/// `text` (already masked) with every control character (C0, DEL, C1),
/// backslash and the Unicode line and paragraph separators escaped
/// (`\n`, `\r`, `\t`, `\\`, `\u{1b}` …), cut to [`MAX_LOG_TEXT`] bytes of input.
pub fn escape_log(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_LOG_TEXT) + 16);
    let mut used = 0;
    for c in text.chars() {
        used += c.len_utf8();
        if used > MAX_LOG_TEXT {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines_and_escapes_cannot_forge_lines() {
        let forged = "ok\n2026-01-01T00:00:00Z  INFO fake line\r\x1b]0;title\x07\\";
        let e = escape_log(forged);
        assert!(!e.chars().any(char::is_control), "{e}");
        assert_eq!(
            e,
            "ok\\n2026-01-01T00:00:00Z  INFO fake line\\r\\u{1b}]0;title\\u{7}\\\\"
        );
        assert_eq!(escape_log("\u{85}\u{2028}"), "\\u{85}\\u{2028}");
    }

    #[test]
    fn long_text_is_cut() {
        let e = escape_log(&"é".repeat(MAX_LOG_TEXT));
        assert!(e.len() <= MAX_LOG_TEXT + 4);
        assert!(e.ends_with('…'));
    }
}
