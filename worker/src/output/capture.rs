//! Capped capture of one output stream (already masked) for the task's result.
//!
//! [`Capture`] keeps at most `cap` bytes; what comes after is counted and
//! dropped, and the capture is marked truncated. When the cap falls inside a
//! UTF-8 character, the capture stops before that character, so a cut alone
//! never makes the text lossy.

use std::fmt;

/// The first `cap` bytes of a stream.
pub struct Capture {
    buf: Vec<u8>,
    cap: usize,
    truncated: bool,
    seen: u64,
}

impl fmt::Debug for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capture")
            .field("len", &self.buf.len())
            .field("cap", &self.cap)
            .field("truncated", &self.truncated)
            .field("seen", &self.seen)
            .finish()
    }
}

impl Capture {
    /// An empty capture keeping at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            buf: Vec::with_capacity(cap.min(64 * 1024)),
            cap,
            truncated: false,
            seen: 0,
        }
    }

    /// Appends `bytes`, up to the cap.
    pub fn push(&mut self, bytes: &[u8]) {
        self.seen = self.seen.saturating_add(bytes.len() as u64);
        if self.truncated {
            return;
        }
        let room = self.cap - self.buf.len();
        if bytes.len() <= room {
            self.buf.extend_from_slice(bytes);
            return;
        }
        self.buf.extend_from_slice(&bytes[..room]);
        self.truncated = true;
        self.drop_partial_char();
    }

    /// Whether bytes were dropped.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Most bytes kept.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Bytes kept.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was kept.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes pushed, kept or not.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The text, with invalid UTF-8 replaced by U+FFFD; the flag says whether
    /// anything was replaced. NUL bytes are kept (JSON carries them as `\u0000`).
    pub fn into_text(self) -> (String, bool) {
        match String::from_utf8(self.buf) {
            Ok(text) => (text, false),
            Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
        }
    }

    /// After a cut: drops the start of a character whose end was cut off.
    fn drop_partial_char(&mut self) {
        let len = self.buf.len();
        // The last byte that is not a continuation byte, among the last three
        // (a complete 4-byte character has three continuation bytes).
        let Some(start) = (len.saturating_sub(3)..len)
            .rev()
            .find(|&i| self.buf[i] & 0xC0 != 0x80)
        else {
            return;
        };
        if let Err(e) = std::str::from_utf8(&self.buf[start..]) {
            // Valid so far but incomplete: the cut is inside this character.
            if e.valid_up_to() == 0 && e.error_len().is_none() {
                self.buf.truncate(start);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_under_the_cap() {
        let mut c = Capture::new(10);
        c.push(b"hello ");
        c.push(b"you!");
        assert!(!c.truncated());
        assert_eq!(c.into_text(), ("hello you!".to_owned(), false));
    }

    #[test]
    fn truncates_at_the_cap_and_stays_bounded() {
        let mut c = Capture::new(5);
        c.push(b"abc");
        c.push(b"defgh");
        for _ in 0..1000 {
            c.push(&[b'x'; 1000]);
        }
        assert!(c.truncated());
        assert_eq!(c.len(), 5);
        assert_eq!(c.seen(), 1_000_008);
        assert_eq!(c.into_text(), ("abcde".to_owned(), false));
    }

    #[test]
    fn zero_cap() {
        let mut c = Capture::new(0);
        c.push(b"");
        assert!(!c.truncated());
        c.push(b"a");
        assert!(c.truncated());
        assert_eq!(c.into_text(), (String::new(), false));
    }

    #[test]
    fn cut_inside_a_character_is_not_lossy() {
        // "é" is 2 bytes, "€" 3, "𝄞" 4.
        for (text, cap, kept) in [
            ("aé", 2, "a"),
            ("a€", 2, "a"),
            ("a€", 3, "a"),
            ("a€", 4, "a€"),
            ("a𝄞", 4, "a"),
            ("a𝄞b", 5, "a𝄞"),
        ] {
            let mut c = Capture::new(cap);
            c.push(text.as_bytes());
            c.push(b"more");
            assert!(c.truncated());
            assert_eq!(c.into_text(), (kept.to_owned(), false), "{text} cap {cap}");
        }
        // Split across pushes, then cut.
        let mut c = Capture::new(3);
        c.push(&"a€".as_bytes()[..2]);
        c.push(&"a€".as_bytes()[2..]);
        assert_eq!(c.into_text(), ("a".to_owned(), false));
    }

    #[test]
    fn invalid_utf8_is_lossy_and_nul_is_kept() {
        let mut c = Capture::new(100);
        c.push(b"a\xffb\x00c");
        assert_eq!(c.into_text(), ("a\u{fffd}b\u{0}c".to_owned(), true));
        // Invalid bytes at the cut are not hidden either.
        let mut c = Capture::new(2);
        c.push(b"a\xff\xff");
        assert_eq!(c.into_text(), ("a\u{fffd}".to_owned(), true));
    }

    #[test]
    fn stream_ending_mid_character_is_lossy() {
        let mut c = Capture::new(100);
        c.push(&"a€".as_bytes()[..2]);
        assert!(!c.truncated());
        assert_eq!(c.into_text(), ("a\u{fffd}".to_owned(), true));
    }
}
