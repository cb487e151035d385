//! Parser for the `$KRILL_OUTPUT` / `$KRILL_SENSITIVE_OUTPUT` files (GitHub Actions' `GITHUB_OUTPUT` format).
//!
//! Each non-empty line is either `name=value` (split at the first `=`) or
//! `name<<DELIM` followed by the value's lines and a line that is exactly
//! `DELIM`; the value is those lines joined by `\n` (so it excludes the newline
//! before `DELIM`). Which form a line has is decided by whichever of `=` and
//! `<<` comes first. A trailing `\r` is dropped from every line (CRLF files
//! work). Names match `[A-Za-z_][A-Za-z0-9_.-]*` and are at most
//! [`MAX_NAME_LEN`] bytes.
//!
//! A malformed line gives an error naming its line number and what is wrong,
//! and parsing goes on with the next line; the other variables are kept. An
//! error never holds a value, nor a name that is not valid (the text before
//! `=` may be a secret written by mistake). When a name is set twice the last
//! value wins, at the position where the name was first set.

use std::collections::HashMap;
use std::fmt;

/// Longest variable name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Error messages kept per file; the rest are only counted
/// ([`Parsed::errors_omitted`]).
pub const MAX_ERRORS: usize = 100;

/// What is wrong with a line of an output file. Never holds a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VarError {
    /// Neither `=` nor `<<` on a non-empty line.
    #[error("line {line}: expected `name=value` or `name<<DELIMITER`")]
    Malformed {
        /// 1-based line number.
        line: usize,
    },
    /// The name is empty, too long or has a character not allowed.
    #[error(
        "line {line}: invalid name (expected [A-Za-z_][A-Za-z0-9_.-]*, at most {} bytes)",
        MAX_NAME_LEN
    )]
    BadName {
        /// 1-based line number.
        line: usize,
    },
    /// `name<<` with nothing after it.
    #[error("line {line}: `{name}<<` has an empty delimiter")]
    EmptyDelimiter {
        /// 1-based line number.
        line: usize,
        /// The (valid) name.
        name: String,
    },
    /// A heredoc whose delimiter line never comes.
    #[error(
        "line {line}: multi-line value is not closed by its delimiter before the end of the file"
    )]
    Unterminated {
        /// 1-based line number of the `name<<DELIM` line.
        line: usize,
    },
    /// The value is not UTF-8.
    #[error("line {line}: value of `{name}` is not valid UTF-8")]
    NotUtf8 {
        /// 1-based line number.
        line: usize,
        /// The (valid) name.
        name: String,
    },
}

/// The variables of one output file, and what could not be parsed.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// `(name, value)` in the order names were first set; the last value wins.
    pub vars: Vec<(String, String)>,
    /// One message per malformed line, at most [`MAX_ERRORS`]; none holds a value.
    pub errors: Vec<String>,
    /// Malformed lines past [`MAX_ERRORS`], counted, not described.
    pub errors_omitted: usize,
    /// What was written as a value but did not become one: the body of a
    /// multi-line value not closed (yet), a value under an invalid name or not
    /// UTF-8, a line of neither form. For the sensitive file these are masked
    /// too: the script meant them as secrets (and a heredoc still being
    /// written is masked from its first line). Never shown.
    pub stray: Vec<Vec<u8>>,
}

impl fmt::Debug for Parsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may be sensitive: names only.
        let names: Vec<&str> = self.vars.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Parsed")
            .field("names", &names)
            .field("errors", &self.errors)
            .field("errors_omitted", &self.errors_omitted)
            .field("stray", &self.stray.len())
            .finish()
    }
}

/// Parses an output file. Never fails: what is malformed goes to `errors`.
pub fn parse(bytes: &[u8]) -> Parsed {
    let mut parser = Parser {
        lines: Lines::new(bytes),
        vars: Vec::new(),
        index: HashMap::new(),
        errors: Vec::new(),
        errors_omitted: 0,
        stray: Vec::new(),
    };
    parser.run();
    Parsed {
        vars: parser.vars,
        errors: parser.errors.iter().map(ToString::to_string).collect(),
        errors_omitted: parser.errors_omitted,
        stray: parser.stray,
    }
}

struct Parser<'a> {
    lines: Lines<'a>,
    vars: Vec<(String, String)>,
    index: HashMap<String, usize>,
    errors: Vec<VarError>,
    errors_omitted: usize,
    stray: Vec<Vec<u8>>,
}

impl Parser<'_> {
    fn error(&mut self, e: VarError) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(e);
        } else {
            self.errors_omitted += 1;
        }
    }

    fn run(&mut self) {
        while let Some((line, text)) = self.lines.next() {
            if text.is_empty() {
                continue;
            }
            let eq = text.iter().position(|&b| b == b'=');
            let heredoc = text.windows(2).position(|w| w == b"<<");
            match (eq, heredoc) {
                (Some(e), h) if h.is_none_or(|h| e < h) => {
                    self.single(line, &text[..e], &text[e + 1..]);
                }
                (_, Some(h)) => self.heredoc(line, &text[..h], &text[h + 2..]),
                _ => {
                    self.stray.push(text.to_vec());
                    self.error(VarError::Malformed { line });
                }
            }
        }
    }

    fn single(&mut self, line: usize, name: &[u8], value: &[u8]) {
        let Some(name) = valid_name(name) else {
            self.stray.push(value.to_vec());
            self.error(VarError::BadName { line });
            return;
        };
        self.set(line, name, value);
    }

    fn heredoc(&mut self, line: usize, name: &[u8], delim: &[u8]) {
        let name = valid_name(name);
        if delim.is_empty() {
            self.error(match name {
                Some(name) => VarError::EmptyDelimiter {
                    line,
                    name: name.to_owned(),
                },
                None => VarError::BadName { line },
            });
            return;
        }
        // Consume the body even when the name is bad, so that its lines are
        // not read as variables.
        let mut value: Vec<u8> = Vec::new();
        let mut first = true;
        let mut closed = false;
        for (_, text) in self.lines.by_ref() {
            if text == delim {
                closed = true;
                break;
            }
            if !first {
                value.push(b'\n');
            }
            first = false;
            value.extend_from_slice(text);
        }
        match (closed, name) {
            (false, _) => {
                self.stray.push(value);
                self.error(VarError::Unterminated { line });
            }
            (true, None) => {
                self.stray.push(value);
                self.error(VarError::BadName { line });
            }
            (true, Some(name)) => self.set(line, name, &value),
        }
    }

    fn set(&mut self, line: usize, name: &str, value: &[u8]) {
        let Ok(value) = std::str::from_utf8(value) else {
            self.stray.push(value.to_vec());
            self.error(VarError::NotUtf8 {
                line,
                name: name.to_owned(),
            });
            return;
        };
        match self.index.get(name) {
            Some(&i) => self.vars[i].1 = value.to_owned(),
            None => {
                self.index.insert(name.to_owned(), self.vars.len());
                self.vars.push((name.to_owned(), value.to_owned()));
            }
        }
    }
}

/// `name` as a `&str` when it is a valid variable name.
fn valid_name(name: &[u8]) -> Option<&str> {
    let (&first, rest) = name.split_first()?;
    let ok = name.len() <= MAX_NAME_LEN
        && (first.is_ascii_alphabetic() || first == b'_')
        && rest
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        return None;
    }
    std::str::from_utf8(name).ok()
}

/// Lines with their 1-based number, without `\n` and a trailing `\r`. A final
/// newline does not start an extra empty line.
struct Lines<'a> {
    rest: &'a [u8],
    number: usize,
}

impl<'a> Lines<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            rest: bytes,
            number: 0,
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = (usize, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let (line, rest) = match self.rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
            None => (self.rest, &[][..]),
        };
        self.rest = rest;
        self.number += 1;
        Some((self.number, line.strip_suffix(b"\r").unwrap_or(line)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vars(parsed: &Parsed) -> Vec<(&str, &str)> {
        parsed
            .vars
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn simple_and_heredoc() {
        let p = parse(b"a=1\n\nb<<EOF\nline 1\n\nline 3\nEOF\nc=x=y<<z\nd<<E=F\nv\nE=F\n");
        assert_eq!(p.errors, Vec::<String>::new());
        assert_eq!(
            vars(&p),
            [
                ("a", "1"),
                ("b", "line 1\n\nline 3"),
                ("c", "x=y<<z"),
                ("d", "v")
            ]
        );
    }

    #[test]
    fn empty_values() {
        let p = parse(b"a=\nb<<EOF\nEOF\nc<<EOF\n\nEOF\nd<<EOF\n\n\nEOF");
        assert_eq!(p.errors, Vec::<String>::new());
        assert_eq!(vars(&p), [("a", ""), ("b", ""), ("c", ""), ("d", "\n")]);
    }

    #[test]
    fn crlf_is_tolerated() {
        let p = parse(b"a=1\r\nb<<EOF\r\nx\r\ny\r\nEOF\r\n\r\n");
        assert_eq!(p.errors, Vec::<String>::new());
        assert_eq!(vars(&p), [("a", "1"), ("b", "x\ny")]);
    }

    #[test]
    fn names() {
        let ok = ["_", "a", "A.b-c_9", &"n".repeat(MAX_NAME_LEN)];
        for name in ok {
            assert_eq!(valid_name(name.as_bytes()), Some(name), "{name}");
        }
        let bad = [
            "",
            "9a",
            "-a",
            ".a",
            "a b",
            "a$",
            "é",
            &"n".repeat(MAX_NAME_LEN + 1),
        ];
        for name in bad {
            assert_eq!(valid_name(name.as_bytes()), None, "{name}");
        }
    }

    #[test]
    fn duplicates_keep_first_position_and_last_value() {
        let p = parse(b"a=1\nb=2\na=3\n");
        assert_eq!(vars(&p), [("a", "3"), ("b", "2")]);
    }

    #[test]
    fn errors_name_the_line_never_the_value_and_keep_other_vars() {
        let secret = "p@ss TOPSECRET";
        let text = format!(
            "ok1=1\n{secret}\nbad name={secret}\n={secret}\nn<<\nutf=\u{0}{secret}\nok2=2\n"
        );
        let mut bytes = text.into_bytes();
        bytes.extend(b"latin=\xe9t\xe9\n");
        bytes.extend(format!("{secret}<<EOF\n{secret}\nsneaky=1\nEOF\n").as_bytes());
        bytes.extend(format!("open<<EOF\n{secret}\nlast=1\n").as_bytes());
        let p = parse(&bytes);
        assert_eq!(
            vars(&p),
            [
                ("ok1", "1"),
                ("utf", &*format!("\u{0}{secret}")),
                ("ok2", "2")
            ]
        );
        assert_eq!(
            p.errors,
            [
                "line 2: expected `name=value` or `name<<DELIMITER`",
                "line 3: invalid name (expected [A-Za-z_][A-Za-z0-9_.-]*, at most 128 bytes)",
                "line 4: invalid name (expected [A-Za-z_][A-Za-z0-9_.-]*, at most 128 bytes)",
                "line 5: `n<<` has an empty delimiter",
                "line 8: value of `latin` is not valid UTF-8",
                "line 9: invalid name (expected [A-Za-z_][A-Za-z0-9_.-]*, at most 128 bytes)",
                "line 13: multi-line value is not closed by its delimiter before the end of the file",
            ]
        );
        for e in &p.errors {
            assert!(!e.contains("TOPSECRET"), "{e}");
        }
        assert!(!format!("{p:?}").contains("TOPSECRET"));
    }

    #[test]
    fn errors_are_bounded_and_counted() {
        let text = "bad line\n".repeat(MAX_ERRORS + 1000) + "ok=1\n";
        let p = parse(text.as_bytes());
        assert_eq!(p.errors.len(), MAX_ERRORS);
        assert_eq!(p.errors_omitted, 1000);
        assert_eq!(vars(&p), [("ok", "1")]);
    }

    #[test]
    fn what_did_not_become_a_value_is_kept_as_stray_for_masking() {
        let p = parse(b"9x=badname-value\nnot a var\nT<<EOF\nfirst line\nsecond");
        assert_eq!(
            p.stray,
            vec![
                b"badname-value".to_vec(),
                b"not a var".to_vec(),
                b"first line\nsecond".to_vec()
            ]
        );
        assert!(p.vars.is_empty());
        assert!(!format!("{p:?}").contains("first line"));
    }

    #[test]
    fn empty_file() {
        assert_eq!(parse(b""), Parsed::default());
        assert_eq!(parse(b"\n\r\n\n"), Parsed::default());
    }

    fn var() -> impl Strategy<Value = (String, String, Option<String>)> {
        let name = || {
            proptest::string::string_regex("[A-Za-z_][A-Za-z0-9_.-]{0,20}").expect("valid regex")
        };
        let single = proptest::string::string_regex("[^\r\n]*").expect("valid regex");
        let multi = proptest::string::string_regex("([^\r\n]*\n?){0,4}").expect("valid regex");
        let delim = proptest::string::string_regex("[A-Z_]{1,8}").expect("valid regex");
        prop_oneof![
            (name(), single).prop_map(|(n, v)| (n, v, None)),
            (name(), multi, delim).prop_map(|(n, v, d)| (n, v, Some(d))),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(vars in proptest::collection::vec(var(), 0..8), crlf in any::<bool>()) {
            let mut seen = std::collections::HashSet::new();
            let vars: Vec<_> = vars.into_iter().filter(|(n, _, _)| seen.insert(n.clone())).collect();
            let nl = if crlf { "\r\n" } else { "\n" };
            let mut text = String::new();
            for (name, value, delim) in &vars {
                match delim {
                    None => text.push_str(&format!("{name}={value}{nl}")),
                    Some(d) => {
                        prop_assume!(value.split('\n').all(|l| l != d));
                        let value = value.replace('\n', nl);
                        text.push_str(&format!("{name}<<{d}{nl}{value}{nl}{d}{nl}"));
                    }
                }
            }
            let parsed = parse(text.as_bytes());
            prop_assert_eq!(parsed.errors, Vec::<String>::new());
            let expected: Vec<(String, String)> =
                vars.into_iter().map(|(n, v, _)| (n, v)).collect();
            prop_assert_eq!(parsed.vars, expected);
        }
    }
}
