//! `::add-mask::VALUE` on stdout: removes those lines and registers their value in the [`MaskSet`].
//!
//! [`AddMaskFilter`] sits before the stdout [`MaskStream`](super::mask::MaskStream):
//! a value is registered as soon as its line ends, so the bytes that follow are
//! masked with it. The filter never shows an `::add-mask::` line (nor its
//! newline), and passes every other byte through unchanged and promptly: it
//! only holds back the first bytes of a line while they could still become the
//! prefix, and the value of an `::add-mask::` line until its newline.
//!
//! Masking fails closed: a value that cannot be masked — its line is longer
//! than [`MAX_ADD_MASK_LINE`] bytes, the task already registered
//! [`MAX_ADD_MASK_VALUES`] values or [`MAX_ADD_MASK_BYTES`] bytes this way, or
//! the task's whole [`MaskSet`] is full — is never shown, and nothing after
//! its line is either: the filter withholds the rest of stdout (and tells the
//! caller, which withholds the rest of stderr too), with a warning. Only a
//! value shorter than [`MIN_MASK_LEN`](super::MIN_MASK_LEN) is let through
//! unmasked (masking `a` would hide nothing), with a warning. Memory stays
//! bounded, and so does the masker's work (see [`MaskSet`]). Warnings give the
//! stdout line number, never the value.

use std::fmt;

use memchr::memmem;

use super::mask::{MaskError, MaskSet};

/// The prefix of a line that registers a value to mask.
pub const ADD_MASK_PREFIX: &[u8] = b"::add-mask::";
/// A newline and the prefix: where the next `::add-mask::` line begins.
const NEWLINE_PREFIX: &[u8] = b"\n::add-mask::";
/// Longest `::add-mask::` line kept (prefix and value, without the newline).
pub const MAX_ADD_MASK_LINE: usize = 64 * 1024;
/// Most values one task registers with `::add-mask::`.
pub const MAX_ADD_MASK_VALUES: usize = 1000;
/// Most bytes (summed over its values) one task registers with `::add-mask::`.
pub const MAX_ADD_MASK_BYTES: usize = 1024 * 1024;

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
    /// The line was too long to hold: the rest of the output is withheld.
    #[error(
        "`::add-mask::` on stdout line {line}: line is longer than {} bytes, so its value cannot be masked; the rest of the output is withheld",
        MAX_ADD_MASK_LINE
    )]
    TooLong {
        /// 1-based stdout line.
        line: u64,
    },
    /// The task reached its `::add-mask::` cap: the rest of the output is withheld.
    #[error(
        "`::add-mask::` on stdout line {line}: the task registered too many values this way (at most {} values, {} bytes), so this one cannot be masked; the rest of the output is withheld",
        MAX_ADD_MASK_VALUES,
        MAX_ADD_MASK_BYTES
    )]
    Capped {
        /// 1-based stdout line.
        line: u64,
    },
    /// The task's mask set is full: the rest of the output is withheld.
    #[error("`::add-mask::` on stdout line {line}: too many values to mask, so this one cannot be masked; the rest of the output is withheld")]
    Full {
        /// 1-based stdout line.
        line: u64,
    },
}

impl AddMaskWarning {
    /// Whether the output after this line is withheld (masking failed closed).
    pub fn withholds(&self) -> bool {
        !matches!(self, AddMaskWarning::TooShort { .. })
    }
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
    /// A value could not be masked: nothing more is shown.
    Withheld,
}

/// Removes `::add-mask::` lines from stdout and registers their values.
pub struct AddMaskFilter {
    set: MaskSet,
    /// Finds a newline followed by [`ADD_MASK_PREFIX`] (SIMD, whole chunks).
    next_prefix: memmem::Finder<'static>,
    state: State,
    buf: Vec<u8>,
    /// Length of the current `::add-mask::` line so far.
    line_len: usize,
    /// 1-based number of the current line.
    line: u64,
    /// Values and bytes registered so far (against the per-task cap).
    values: usize,
    bytes: usize,
    /// Bytes dropped after masking failed closed.
    withheld: u64,
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
            next_prefix: memmem::Finder::new(NEWLINE_PREFIX),
            state: State::LineStart,
            buf: Vec::new(),
            line_len: 0,
            line: 1,
            values: 0,
            bytes: 0,
            withheld: 0,
        }
    }

    /// Whether masking failed closed: every byte from then on is dropped.
    pub fn is_withholding(&self) -> bool {
        self.state == State::Withheld
    }

    /// Bytes dropped since masking failed closed.
    pub fn withheld_bytes(&self) -> u64 {
        self.withheld
    }

    /// Filters one raw stdout chunk, appending what may be shown to `out`, and
    /// returns warnings about values that are not masked.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Vec<AddMaskWarning> {
        let mut warnings = Vec::new();
        let mut rest = chunk;
        while let Some(&byte) = rest.first() {
            match self.state {
                State::Withheld => {
                    self.withheld += rest.len() as u64;
                    rest = &[];
                }
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
                State::Pass => {
                    // Everything up to the next line that begins with the
                    // prefix — or else up to the last newline — streams
                    // through in one copy; only a line start may be held.
                    let end = self
                        .next_prefix
                        .find(rest)
                        .or_else(|| memchr::memrchr(b'\n', rest));
                    match end {
                        Some(i) => {
                            let (lines, after) = rest.split_at(i + 1);
                            out.extend_from_slice(lines);
                            // `next_line` counts the last of them.
                            self.line += memchr::memchr_iter(b'\n', lines).count() as u64 - 1;
                            rest = after;
                            self.next_line();
                        }
                        None => {
                            out.extend_from_slice(rest);
                            rest = &[];
                        }
                    }
                }
                State::Capture => {
                    let (part, end) = match newline(rest) {
                        Some(i) => (&rest[..i], Some(i)),
                        None => (rest, None),
                    };
                    if self.line_len + part.len() > MAX_ADD_MASK_LINE {
                        // Fails closed once the line is over (or at the end).
                        self.buf.clear();
                        self.state = State::Discard;
                        continue;
                    }
                    self.buf.extend_from_slice(part);
                    self.line_len += part.len();
                    match end {
                        Some(i) => {
                            rest = &rest[i + 1..];
                            match self.register() {
                                Some(w) if w.withholds() => {
                                    warnings.push(w);
                                    self.withhold();
                                }
                                w => {
                                    warnings.extend(w);
                                    self.next_line();
                                }
                            }
                        }
                        None => rest = &[],
                    }
                }
                State::Discard => match newline(rest) {
                    Some(i) => {
                        warnings.push(AddMaskWarning::TooLong { line: self.line });
                        rest = &rest[i + 1..];
                        self.withhold();
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
            State::Withheld => {}
        }
        self.buf.clear();
        self.state = State::LineStart;
        self.line_len = 0;
        self.line = 1;
        warnings
    }

    fn withhold(&mut self) {
        self.buf.clear();
        self.state = State::Withheld;
    }

    fn register(&mut self) -> Option<AddMaskWarning> {
        let value = self.buf.strip_suffix(b"\r").unwrap_or(&self.buf);
        let line = self.line;
        let warning = if value.len() < super::MIN_MASK_LEN {
            Some(AddMaskWarning::TooShort { line })
        } else if self.values >= MAX_ADD_MASK_VALUES
            || self.bytes + value.len() > MAX_ADD_MASK_BYTES
        {
            Some(AddMaskWarning::Capped { line })
        } else {
            match self.set.add_bytes(value) {
                Ok(()) => {
                    self.values += 1;
                    self.bytes += value.len();
                    None
                }
                Err(MaskError::TooShort) => Some(AddMaskWarning::TooShort { line }),
                Err(MaskError::Full) => Some(AddMaskWarning::Full { line }),
            }
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
    memchr::memchr(b'\n', bytes)
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
    fn a_newline_or_the_prefix_split_at_a_chunk_boundary() {
        assert_eq!(&NEWLINE_PREFIX[1..], ADD_MASK_PREFIX);
        let text: &[u8] = b"a\nbb\n::add-mask::secret-1\nc secret-1\n";
        // Every cut: after a newline, inside the prefix, right after it.
        for cut in 0..=text.len() {
            let set = MaskSet::new();
            let (out, warnings) = run(&set, &[&text[..cut], &text[cut..]]);
            assert_eq!(out, b"a\nbb\nc secret-1\n", "cut at {cut}");
            assert!(warnings.is_empty());
            assert_eq!(set.values(), vec![b"secret-1".to_vec()], "cut at {cut}");
        }
    }

    #[test]
    fn line_numbers_count_every_line_of_a_chunk() {
        let set = MaskSet::new();
        let mut text = b"first\n".repeat(999);
        text.extend(b"::add-mask::ab\nlast\n::add-mask::xy");
        for chunks in [vec![&text[..]], text.chunks(7).collect::<Vec<_>>()] {
            let (out, warnings) = run(&set, &chunks);
            assert!(out.ends_with(b"first\nlast\n"));
            assert_eq!(
                warnings,
                vec![
                    AddMaskWarning::TooShort { line: 1000 },
                    AddMaskWarning::TooShort { line: 1002 }
                ]
            );
        }
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
        // Fails closed: nothing after the line is shown.
        assert_eq!(out, b"");
        assert_eq!(warnings, vec![AddMaskWarning::TooLong { line: 1 }]);
        assert!(warnings[0].withholds());
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
    fn past_the_per_task_cap_the_rest_of_stdout_is_withheld() {
        let set = MaskSet::new();
        let mut f = AddMaskFilter::new(set.clone());
        let mut out = Vec::new();
        let mut text = Vec::new();
        for i in 0..MAX_ADD_MASK_VALUES {
            text.extend(format!("::add-mask::value-{i:06}\nline {i}\n").bytes());
        }
        text.extend(b"::add-mask::one-too-many\nafter the cap one-too-many\n");
        let warnings = f.push(&text, &mut out);
        assert_eq!(
            warnings,
            vec![AddMaskWarning::Capped {
                line: 2 * MAX_ADD_MASK_VALUES as u64 + 1
            }]
        );
        assert!(f.is_withholding());
        let shown = String::from_utf8(out).expect("utf-8");
        assert!(shown.ends_with(&format!("line {}\n", MAX_ADD_MASK_VALUES - 1)));
        assert!(!shown.contains("one-too-many"));
        assert_eq!(set.len(), MAX_ADD_MASK_VALUES);
        let mut more = Vec::new();
        assert!(f.push(b"still withheld\n", &mut more).is_empty());
        assert!(more.is_empty());
        assert!(f.withheld_bytes() > 0);
        // Bytes count as well as values.
        let set = MaskSet::new();
        let mut f = AddMaskFilter::new(set);
        let value = "v".repeat(60_000);
        let mut out = Vec::new();
        let mut warnings = Vec::new();
        for i in 0..20 {
            warnings.extend(f.push(
                format!("::add-mask::{i:02}{value}\nok\n").as_bytes(),
                &mut out,
            ));
        }
        assert_eq!(warnings.len(), 1);
        assert!(matches!(warnings[0], AddMaskWarning::Capped { .. }));
        assert!(warnings[0].to_string().contains("withheld"));
    }

    #[test]
    fn a_full_mask_set_withholds_too() {
        let set = MaskSet::new();
        set.add(&"x".repeat(crate::output::MAX_MASK_BYTES))
            .expect("fits");
        let (out, warnings) = run(&set, &[b"a\n::add-mask::secret-1\nsecret-1\n"]);
        assert_eq!(out, b"a\n");
        assert_eq!(warnings, vec![AddMaskWarning::Full { line: 2 }]);
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
