//! Streaming lossy UTF-8: invalid bytes become U+FFFD exactly as
//! [`String::from_utf8_lossy`] would do on the whole stream, whatever the chunks.
//!
//! A character cut by the end of a chunk is held back (at most 3 bytes) until
//! the next chunk completes it or shows it invalid; [`Lossy::finish`] turns a
//! held incomplete character into U+FFFD.

/// The replacement character, UTF-8 encoded.
const REPLACEMENT: &[u8] = "\u{fffd}".as_bytes();

/// One stream's converter.
#[derive(Debug, Default)]
pub struct Lossy {
    /// The start of a character whose end has not arrived yet.
    held: Vec<u8>,
    /// Something was replaced.
    lossy: bool,
}

impl Lossy {
    /// A converter that has replaced nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the valid UTF-8 form of `chunk` to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.held.is_empty() {
            self.convert(chunk, out);
        } else {
            let mut joined = std::mem::take(&mut self.held);
            joined.extend_from_slice(chunk);
            self.convert(&joined, out);
        }
    }

    /// [`Lossy::push`] into `buf` itself: valid UTF-8 with nothing held from
    /// the last chunk (the common case) is left where it is, not copied.
    /// Returns whether `buf` was left as it was.
    pub fn push_in_place(&mut self, buf: &mut Vec<u8>) -> bool {
        if self.held.is_empty() && std::str::from_utf8(buf).is_ok() {
            return true;
        }
        let mut out = Vec::with_capacity(buf.len() + REPLACEMENT.len());
        self.push(buf, &mut out);
        *buf = out;
        false
    }

    /// Ends the stream: a held incomplete character becomes U+FFFD.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.held.is_empty() {
            self.held.clear();
            self.lossy = true;
            out.extend_from_slice(REPLACEMENT);
        }
    }

    /// Whether any byte was replaced.
    pub fn lossy(&self) -> bool {
        self.lossy
    }

    fn convert(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) {
        loop {
            match std::str::from_utf8(bytes) {
                Ok(_) => {
                    out.extend_from_slice(bytes);
                    return;
                }
                Err(e) => {
                    let (valid, rest) = bytes.split_at(e.valid_up_to());
                    out.extend_from_slice(valid);
                    match e.error_len() {
                        Some(n) => {
                            self.lossy = true;
                            out.extend_from_slice(REPLACEMENT);
                            bytes = &rest[n..];
                        }
                        None => {
                            // Incomplete at the end: wait for the next chunk.
                            self.held.extend_from_slice(rest);
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(chunks: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut l = Lossy::new();
        let mut out = Vec::new();
        for c in chunks {
            l.push(c, &mut out);
        }
        l.finish(&mut out);
        (out, l.lossy())
    }

    #[test]
    fn valid_text_passes_unchanged() {
        assert_eq!(
            all(&[b"h\xc3", b"\xa9llo"]),
            ("héllo".as_bytes().to_vec(), false)
        );
    }

    #[test]
    fn invalid_and_cut_characters_become_replacements() {
        assert_eq!(
            all(&[b"a\xffb", b"\xe2\x82"]),
            ("a\u{fffd}b\u{fffd}".as_bytes().to_vec(), true)
        );
    }

    proptest! {
        #[test]
        fn chunked_equals_whole(
            bytes in proptest::collection::vec(prop_oneof![
                any::<u8>(),
                Just(0xe2u8), Just(0x82u8), Just(0xacu8), Just(0xf0u8), Just(0x9fu8),
            ], 0..64),
            cuts in proptest::collection::vec(0usize..64, 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                chunks.push(&bytes[prev..c]);
                prev = c;
            }
            let whole = String::from_utf8_lossy(&bytes);
            let (out, lossy) = all(&chunks);
            prop_assert_eq!(&out, &whole.as_bytes().to_vec());
            // In place, the same.
            let mut l = Lossy::new();
            let mut in_place = Vec::new();
            for c in &chunks {
                let mut buf = c.to_vec();
                let kept = l.push_in_place(&mut buf);
                prop_assert!(!kept || buf == *c);
                in_place.extend(buf);
            }
            l.finish(&mut in_place);
            prop_assert_eq!(&in_place, &out);
            prop_assert_eq!(lossy, matches!(whole, std::borrow::Cow::Owned(_)));
        }
    }
}
