//! `::add-mask::VALUE` on stdout: removes those lines and registers their value in the [`MaskSet`].
//!
//! [`AddMaskFilter`] sits before the stdout [`MaskStream`](super::mask::MaskStream):
//! a value is registered as soon as its line ends, so the bytes that follow are
//! masked with it. The filter never shows an `::add-mask::` line (nor its
//! newline), and passes every other byte through unchanged and promptly: it
//! only holds back the first bytes of a line while they could still become the
//! prefix, and the value of an `::add-mask::` line until its newline.
//!
//! An `::add-mask::` line longer than [`MAX_ADD_MASK_LINE`] bytes is dropped
//! (never shown, not registered) with a warning, so memory stays bounded.
//! Warnings give the stdout line number, never the value.

use std::fmt;

use super::mask::{MaskError, MaskSet};

/// The prefix of a line that registers a value to mask.
pub const ADD_MASK_PREFIX: &[u8] = b"::add-mask::";
/// Longest `::add-mask::` line kept (prefix and value, without the newline).
pub const MAX_ADD_MASK_LINE: usize = 64 * 1024;

/// An `::add-mask::` line whose value is not masked. Never holds the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddMaskWarning {
    /// The value is shorter than [`MIN_MASK_LEN`](super::mask::MIN_MASK_LEN) bytes.
    #[error(
        "`::add-mask::` on stdout line {line}: value is shorter than {} bytes and is not masked",
        super::mask::MIN_MASK_LEN
    )]
    TooShort {
        /// 1-based stdout line.
        line: u64,
    },
    /// The line was too long to hold; it was dropped.
    #[error(
        "`::add-mask::` on stdout line {line}: line is longer than {} bytes; it was dropped and its value is not masked",
        MAX_ADD_MASK_LINE
    )]
    TooLong {
        /// 1-based stdout line.
        line: u64,
    },
    /// The mask set is full.
    #[error("`::add-mask::` on stdout line {line}: too many values to mask; value is not masked")]
    Full {
        /// 1-based stdout line.
        line: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line; `buf` holds the bytes matching the prefix so far.
    LineStart,
    /// In a line that is not an `::add-mask::` line: stream it.
    Pass,
    /// In an `::add-mask::` line; `buf` holds the value so far.
    Capture,
    /// In an `::add-mask::` line that grew too long: drop it.
    Discard,
}

/// Removes `::add-mask::` lines from stdout and registers their values.
pub struct AddMaskFilter {
    set: MaskSet,
    state: State,
    buf: Vec<u8>,
    /// Length of the current `::add-mask::` line so far.
    line_len: usize,
    /// 1-based number of the current line.
    line: u64,
}

impl fmt::Debug for AddMaskFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never `buf`: it may hold a value being registered.
        f.debug_struct("AddMaskFilter")
            .field("state", &self.state)
            .field("line", &self.line)
            .finish()
    }
}

impl AddMaskFilter {
    /// A filter registering values into `set`.
    pub fn new(set: MaskSet) -> Self {
        Self {
            set,
            state: State::LineStart,
            buf: Vec::new(),
            line_len: 0,
            line: 1,
        }
    }

    /// Filters one raw stdout chunk, appending what may be shown to `out`, and
    /// returns warnings about values that are not masked.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Vec<AddMaskWarning> {
        let mut warnings = Vec::new();
        let mut rest = chunk;
        while let Some(&byte) = rest.first() {
            match self.state {
                State::LineStart => {
                    if byte == ADD_MASK_PREFIX[self.buf.len()] {
                        self.buf.push(byte);
                        rest = &rest[1..];
                        if self.buf.len() == ADD_MASK_PREFIX.len() {
                            self.buf.clear();
                            self.line_len = ADD_MASK_PREFIX.len();
                            self.state = State::Capture;
                        }
                    } else {
                        // Not the prefix: show what was held, the byte goes on in `Pass`.
                        out.extend_from_slice(&self.buf);
                        self.buf.clear();
                        self.state = State::Pass;
                    }
                }
                State::Pass => match newline(rest) {
                    Some(i) => {
                        out.extend_from_slice(&rest[..=i]);
                        rest = &rest[i + 1..];
                        self.next_line();
                    }
                    None => {
                        out.extend_from_slice(rest);
                        rest = &[];
                    }
                },
                State::Capture => {
                    let (part, end) = match newline(rest) {
                        Some(i) => (&rest[..i], Some(i)),
                        None => (rest, None),
                    };
                    if self.line_len + part.len() > MAX_ADD_MASK_LINE {
                        self.buf.clear();
                        self.state = State::Discard;
                        continue;
                    }
                    self.buf.extend_from_slice(part);
                    self.line_len += part.len();
                    match end {
                        Some(i) => {
                            warnings.extend(self.register());
                            rest = &rest[i + 1..];
                            self.next_line();
                        }
                        None => rest = &[],
                    }
                }
                State::Discard => match newline(rest) {
                    Some(i) => {
                        warnings.push(AddMaskWarning::TooLong { line: self.line });
                        rest = &rest[i + 1..];
                        self.next_line();
                    }
                    None => rest = &[],
                },
            }
        }
        warnings
    }

    /// Ends the stream: shows a held partial prefix, registers an
    /// `::add-mask::` line that had no final newline. The filter can be reused.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Vec<AddMaskWarning> {
        let mut warnings = Vec::new();
        match self.state {
            State::LineStart => out.extend_from_slice(&self.buf),
            State::Pass => {}
            State::Capture => warnings.extend(self.register()),
            State::Discard => warnings.push(AddMaskWarning::TooLong { line: self.line }),
        }
        self.buf.clear();
        self.state = State::LineStart;
        self.line_len = 0;
        self.line = 1;
        warnings
    }

    fn register(&mut self) -> Option<AddMaskWarning> {
        let value = self.buf.strip_suffix(b"\r").unwrap_or(&self.buf);
        let line = self.line;
        let warning = match self.set.add_bytes(value) {
            Ok(()) => None,
            Err(MaskError::TooShort) => Some(AddMaskWarning::TooShort { line }),
            Err(MaskError::Full) => Some(AddMaskWarning::Full { line }),
        };
        self.buf.clear();
        warning
    }

    fn next_line(&mut self) {
        self.state = State::LineStart;
        self.buf.clear();
        self.line_len = 0;
        self.line += 1;
    }
}

fn newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(set: &MaskSet, chunks: &[&[u8]]) -> (Vec<u8>, Vec<AddMaskWarning>) {
        let mut f = AddMaskFilter::new(set.clone());
        let mut out = Vec::new();
        let mut warnings = Vec::new();
        for c in chunks {
            warnings.extend(f.push(c, &mut out));
        }
        warnings.extend(f.finish(&mut out));
        (out, warnings)
    }

    #[test]
    fn removes_add_mask_lines_and_registers_values() {
        let set = MaskSet::new();
        let (out, warnings) = run(&set, &[b"before\n::add-mask::hunter22\r\nafter hunter22\n"]);
        assert_eq!(out, b"before\nafter hunter22\n");
        assert!(warnings.is_empty());
        assert_eq!(set.values(), vec![b"hunter22".to_vec()]);
        assert_eq!(set.mask_str("after hunter22"), "after ***");
    }

    #[test]
    fn value_split_across_chunks() {
        let set = MaskSet::new();
        let (out, _) = run(&set, &[b"a\n::add", b"-mask::sec", b"ret-1", b"\nb\n"]);
        assert_eq!(out, b"a\nb\n");
        assert_eq!(set.values(), vec![b"secret-1".to_vec()]);
    }

    #[test]
    fn prefix_only_at_line_start() {
        let set = MaskSet::new();
        let (out, _) = run(&set, &[b"x ::add-mask::abcdef\n ::add-mask::ghijkl\n"]);
        assert_eq!(out, b"x ::add-mask::abcdef\n ::add-mask::ghijkl\n");
        assert!(set.is_empty());
    }

    #[test]
    fn partial_prefix_is_shown() {
        let set = MaskSet::new();
        let mut f = AddMaskFilter::new(set.clone());
        let mut out = Vec::new();
        f.push(b"::add-ma", &mut out);
        assert_eq!(out, b"");
        f.push(b"sk", &mut out);
        assert_eq!(out, b"");
        f.push(b"!\n::ad", &mut out);
        assert_eq!(out, b"::add-mask!\n");
        f.finish(&mut out);
        assert_eq!(out, b"::add-mask!\n::ad");
    }

    #[test]
    fn long_normal_line_is_streamed() {
        let set = MaskSet::new();
        let mut f = AddMaskFilter::new(set);
        let mut out = Vec::new();
        f.push(b"hello", &mut out);
        assert_eq!(out, b"hello");
        f.push(&[b'x'; 100_000], &mut out);
        assert_eq!(out.len(), 100_005);
    }

    #[test]
    fn too_short_value_warns_without_the_value() {
        let set = MaskSet::new();
        let (out, warnings) = run(&set, &[b"l1\n::add-mask::xyz\nl3\n::add-mask::\n"]);
        assert_eq!(out, b"l1\nl3\n");
        assert_eq!(
            warnings,
            vec![
                AddMaskWarning::TooShort { line: 2 },
                AddMaskWarning::TooShort { line: 4 }
            ]
        );
        assert!(!warnings[0].to_string().contains("xyz"));
        assert!(set.is_empty());
    }

    #[test]
    fn too_long_line_is_dropped_with_a_warning() {
        let set = MaskSet::new();
        let mut line = b"::add-mask::".to_vec();
        line.extend(std::iter::repeat_n(b's', MAX_ADD_MASK_LINE));
        line.extend(b"\nnext\n");
        let (out, warnings) = run(&set, &[&line[..1000], &line[1000..]]);
        assert_eq!(out, b"next\n");
        assert_eq!(warnings, vec![AddMaskWarning::TooLong { line: 1 }]);
        assert!(set.is_empty());
        // Exactly at the limit is kept.
        let set = MaskSet::new();
        let mut line = b"::add-mask::".to_vec();
        line.extend(std::iter::repeat_n(
            b's',
            MAX_ADD_MASK_LINE - ADD_MASK_PREFIX.len(),
        ));
        let (out, warnings) = run(&set, &[&line]);
        assert_eq!((out, warnings), (vec![], vec![]));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn last_line_without_newline_is_registered() {
        let set = MaskSet::new();
        let (out, _) = run(&set, &[b"a\n::add-mask::tail-secret"]);
        assert_eq!(out, b"a\n");
        assert_eq!(set.values(), vec![b"tail-secret".to_vec()]);
    }

    #[test]
    fn values_apply_to_following_bytes_through_the_mask_stream() {
        let set = MaskSet::new();
        let mut f = AddMaskFilter::new(set.clone());
        let mut m = set.stream();
        let mut shown = Vec::new();
        for chunk in [&b"::add-mask::tok"[..], b"en-42\nvalue: tok", b"en-42\n"] {
            let mut filtered = Vec::new();
            f.push(chunk, &mut filtered);
            m.push_into(&filtered, &mut shown);
        }
        m.finish_into(&mut shown);
        assert_eq!(shown, b"value: ***\n");
    }

    fn line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::string::string_regex("::add-mask::[a-z\r]{0,8}\n")
                .expect("valid regex")
                .prop_map(String::into_bytes),
            proptest::string::string_regex("[:adkms-]{0,14}\r?\n?")
                .expect("valid regex")
                .prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..20),
        ]
    }

    proptest! {
        #[test]
        fn chunking_does_not_change_the_result(
            lines in proptest::collection::vec(line(), 0..12),
            cuts in proptest::collection::vec(0usize..300, 0..12),
        ) {
            let text: Vec<u8> = lines.concat();
            let whole_set = MaskSet::new();
            let whole = run(&whole_set, &[&text]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for c in cuts.into_iter().chain([text.len()]) {
                chunks.push(&text[prev..c]);
                prev = c;
            }
            let chunked_set = MaskSet::new();
            let chunked = run(&chunked_set, &chunks);
            prop_assert_eq!(&chunked, &whole);
            prop_assert_eq!(chunked_set.values(), whole_set.values());
            // Reference: every line not starting with the prefix, unchanged.
            let expected: Vec<u8> = text
                .split_inclusive(|&b| b == b'\n')
                .filter(|l| !l.starts_with(ADD_MASK_PREFIX))
                .flatten()
                .copied()
                .collect();
            prop_assert_eq!(&whole.0, &expected);
        }
    }
}
