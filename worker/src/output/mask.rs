//! Streaming secret masker: replaces every registered secret by `***`, even when a secret is split across reads.
//!
//! A [`MaskSet`] is the task's shared, growable set of values to hide (secret
//! inputs, sensitive outputs, `::add-mask::` values). Each output stream owns a
//! [`MaskStream`] that masks bytes as they arrive, holding back only the
//! shortest tail that could still be the beginning of a secret.
//!
//! # What is masked
//!
//! Every position of the text covered by *any* occurrence of a registered value
//! is masked, and each maximal run of masked positions becomes one `***`. So
//! nested and overlapping secrets (`abcdef` and `defghi` in `abcdefghi`) hide the
//! whole span. The matches come from one Aho-Corasick pass with standard
//! semantics and overlapping iteration, which reports every occurrence (a
//! superset of what a leftmost-longest pass finds); their spans are merged.
//!
//! Because the result depends only on which positions are covered, masking a
//! text in chunks gives exactly the same bytes as masking it at once, as long as
//! the set does not change in between (a property test checks this).
//!
//! # Cost
//!
//! Values arrive one by one while output flows (`::add-mask::`, sensitive
//! outputs), so rebuilding one automaton over every value at each new one would
//! cost the worker the square of what the task registers. Instead the values
//! live in *levels* (a Bentley–Saxe structure): level `i` holds at most
//! [`LEVEL_BASE`]` << i` bytes in its own automaton. New values are not
//! compiled when they are registered but when the set is next used, all at once;
//! they go to the lowest empty level that fits them, taking along every full
//! level below it. Each registered byte is compiled at most once per level, so
//! the total compile work is bounded by `bytes × levels` (levels ≤ 12 for the
//! whole 8 MiB), and a text is scanned once per occupied level. Which tail may
//! still begin a value is decided with a bounded number of byte comparisons per
//! push ([`HOLD_BUDGET`]); past that budget the rest is held back, which is
//! always safe.
//!
//! # Limits
//!
//! - Values shorter than [`MIN_MASK_LEN`] bytes are refused: masking `a` would
//!   destroy every log and hide nothing.
//! - A set holds at most [`MAX_MASK_VALUES`] values and [`MAX_MASK_BYTES`]
//!   bytes; past that [`MaskSet::add`] fails with [`MaskError::Full`] and the
//!   caller fails closed (the rest of the output is withheld).
//! - A secret that itself contains `***` could be rebuilt next to a mask
//!   (`x***` from `x` followed by another secret); no such secret is expected.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

/// Shortest value that is masked, in bytes.
pub const MIN_MASK_LEN: usize = 4;
/// What replaces each masked run.
pub const MASK: &[u8] = b"***";
/// Most values (whole values and their lines) one set holds.
pub const MAX_MASK_VALUES: usize = 10_000;
/// Most bytes (summed over all values) one set holds.
pub const MAX_MASK_BYTES: usize = 8 * 1024 * 1024;
/// Bytes of values the lowest level holds; level `i` holds `LEVEL_BASE << i`.
pub const LEVEL_BASE: usize = 4096;
/// Byte comparisons one push may spend deciding what to hold back, beyond the
/// length of the tail it looks at.
pub const HOLD_BUDGET: usize = 64 * 1024;
/// Up to this many pattern bytes a DFA is allowed (fast, but its memory grows
/// with states x alphabet); above it a contiguous NFA is used.
const DFA_MAX_BYTES: usize = 2048;

/// Why a value was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    /// The value is too short to be masked; it is not registered.
    #[error("value is shorter than {} bytes and is not masked", MIN_MASK_LEN)]
    TooShort,
    /// The set is full; the value is not registered.
    #[error(
        "too many values to mask (at most {} values, {} bytes); value is not masked",
        MAX_MASK_VALUES,
        MAX_MASK_BYTES
    )]
    Full,
}

/// A shared, growable set of values to mask. Cloning is cheap and clones share
/// the same set. Its `Debug` never shows the values.
#[derive(Clone, Default)]
pub struct MaskSet {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Mirrors `State::generation`, read without the lock by streams.
    generation: AtomicU64,
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    values: BTreeSet<Vec<u8>>,
    bytes: usize,
    generation: u64,
    /// Registered since the last compile (not in any level yet).
    pending: Vec<Vec<u8>>,
    /// `levels[i]` holds at most `LEVEL_BASE << i` bytes.
    levels: Vec<Option<Arc<Level>>>,
    /// The matcher for some generation; rebuilt lazily when stale.
    compiled: Arc<Compiled>,
    /// Bytes compiled so far, over all levels and rebuilds (for tests and figures).
    compiled_bytes: u64,
}

impl fmt::Debug for MaskSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaskSet")
            .field("values", &self.len())
            .field("generation", &self.generation())
            .finish()
    }
}

impl MaskSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `value`, and each of its lines (without a trailing `\r`) that
    /// is at least [`MIN_MASK_LEN`] bytes long. The error never holds the value,
    /// so the caller can turn it into a warning naming the variable.
    pub fn add(&self, value: &str) -> Result<(), MaskError> {
        self.add_bytes(value.as_bytes())
    }

    /// [`MaskSet::add`] for a value that need not be UTF-8. Such a value is
    /// also registered in its lossy form (invalid bytes as U+FFFD), the form
    /// it takes in text that leaves the sandbox.
    pub fn add_bytes(&self, value: &[u8]) -> Result<(), MaskError> {
        if value.len() < MIN_MASK_LEN {
            return Err(MaskError::TooShort);
        }
        let lossy = match String::from_utf8_lossy(value) {
            std::borrow::Cow::Owned(text) => Some(text.into_bytes()),
            std::borrow::Cow::Borrowed(_) => None,
        };
        let mut new: Vec<&[u8]> = Vec::new();
        for whole in std::iter::once(value).chain(lossy.as_deref()) {
            new.push(whole);
            for line in whole.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.len() >= MIN_MASK_LEN && line != whole {
                    new.push(line);
                }
            }
        }
        let mut state = self.write();
        new.sort_unstable();
        new.dedup();
        new.retain(|v| !state.values.contains(*v));
        if new.is_empty() {
            return Ok(());
        }
        let added_bytes: usize = new.iter().map(|v| v.len()).sum();
        if state.values.len() + new.len() > MAX_MASK_VALUES
            || state.bytes + added_bytes > MAX_MASK_BYTES
        {
            return Err(MaskError::Full);
        }
        for v in new {
            state.values.insert(v.to_vec());
            state.pending.push(v.to_vec());
        }
        state.bytes += added_bytes;
        state.generation += 1;
        self.inner
            .generation
            .store(state.generation, Ordering::Release);
        Ok(())
    }

    /// How many values (whole values and lines) are registered.
    pub fn len(&self) -> usize {
        self.read().values.len()
    }

    /// Whether no value is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of all registered values.
    pub fn bytes(&self) -> usize {
        self.read().bytes
    }

    /// Bumped each time the set grows.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Pattern bytes compiled into automata so far, every rebuild counted: the
    /// masker's set-up work, which stays within `bytes × levels`.
    pub fn compiled_bytes(&self) -> u64 {
        self.read().compiled_bytes
    }

    /// Masks a whole text at once (error messages, log lines).
    pub fn mask_str(&self, text: &str) -> String {
        match String::from_utf8(self.mask_bytes(text.as_bytes())) {
            Ok(s) => s,
            // Only when a registered value is not UTF-8 and cuts a character.
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// Masks a whole byte string at once.
    pub fn mask_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        let compiled = self.compiled();
        let mut spans = Vec::new();
        compiled.spans(bytes, 0, &mut spans);
        let mut out = Vec::with_capacity(bytes.len());
        emit(bytes, bytes.len(), &spans, false, &mut out);
        out
    }

    /// A new stream masker over this set.
    pub fn stream(&self) -> MaskStream {
        MaskStream::new(self.clone())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The matcher for the current generation, built at most once per
    /// generation: the values registered since the last build go into the levels.
    fn compiled(&self) -> Arc<Compiled> {
        {
            let state = self.read();
            if state.compiled.generation == state.generation {
                return Arc::clone(&state.compiled);
            }
        }
        let mut state = self.write();
        if state.compiled.generation != state.generation {
            let batch = std::mem::take(&mut state.pending);
            let built = insert(&mut state.levels, batch);
            state.compiled_bytes += built as u64;
            state.compiled = Arc::new(Compiled::new(&state.levels, state.generation));
        }
        Arc::clone(&state.compiled)
    }

    #[cfg(test)]
    pub(crate) fn values(&self) -> Vec<Vec<u8>> {
        self.read().values.iter().cloned().collect()
    }

    #[cfg(test)]
    fn occupied_levels(&self) -> usize {
        let _ = self.compiled();
        self.read().levels.iter().flatten().count()
    }
}

/// Puts `batch` in the lowest empty level that can hold it, merging every
/// occupied level met on the way up into it. Returns the bytes compiled.
fn insert(levels: &mut Vec<Option<Arc<Level>>>, mut batch: Vec<Vec<u8>>) -> usize {
    if batch.is_empty() {
        return 0;
    }
    let mut bytes: usize = batch.iter().map(Vec::len).sum();
    let mut i = 0;
    loop {
        if i == levels.len() {
            levels.push(None);
        }
        let cap = LEVEL_BASE.checked_shl(i as u32).unwrap_or(usize::MAX);
        match levels[i].take() {
            None if bytes <= cap => {
                levels[i] = Some(Arc::new(Level::build(batch)));
                return bytes;
            }
            None => {}
            Some(level) => {
                bytes += level.bytes;
                batch.extend(level.sorted.iter().cloned());
            }
        }
        i += 1;
    }
}

/// One level's values and their automaton.
struct Level {
    /// `None`: the automaton could not be built (the set fails closed).
    ac: Option<AhoCorasick>,
    /// The values, sorted, to find the tail that may begin a value.
    sorted: Vec<Vec<u8>>,
    bytes: usize,
}

impl Level {
    fn build(mut values: Vec<Vec<u8>>) -> Self {
        values.sort_unstable();
        values.dedup();
        let bytes = values.iter().map(Vec::len).sum();
        let kind = (bytes > DFA_MAX_BYTES).then_some(AhoCorasickKind::ContiguousNFA);
        let build = |kind| {
            AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .kind(kind)
                .build(&values)
        };
        let ac = build(kind)
            .or_else(|_| build(Some(AhoCorasickKind::NoncontiguousNFA)))
            .ok();
        Level {
            ac,
            sorted: values,
            bytes,
        }
    }

    /// Whether `x` is a proper prefix of some value of this level; adds the
    /// bytes compared to `spent`.
    fn is_proper_prefix(&self, x: &[u8], spent: &mut usize) -> bool {
        // Values starting with `x` are contiguous in sorted order, from the
        // first value >= x; if that one equals `x`, the next is longer.
        let i = self.sorted.partition_point(|v| {
            *spent += common_prefix(v, x) + 1;
            v.as_slice() < x
        });
        self.sorted[i..].iter().take(2).any(|v| {
            *spent += x.len();
            v.len() > x.len() && v.starts_with(x)
        })
    }
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// An immutable matcher for one generation of a [`MaskSet`]: its levels.
#[derive(Default)]
struct Compiled {
    generation: u64,
    levels: Vec<Arc<Level>>,
    /// Some level's automaton could not be built: mask everything (fail closed).
    failed: bool,
    /// Whether some value starts with this byte.
    first: Vec<bool>,
    max_len: usize,
    /// No value contains `*`: what a stream over this matcher emitted holds
    /// no occurrence of a value (none can span a `***`), see
    /// [`MaskStream::push_emitted_into`].
    star_free: bool,
}

impl Compiled {
    fn new(levels: &[Option<Arc<Level>>], generation: u64) -> Self {
        let levels: Vec<Arc<Level>> = levels.iter().flatten().cloned().collect();
        let mut first = vec![false; 256];
        let mut max_len = 0;
        let mut star_free = true;
        for v in levels.iter().flat_map(|l| &l.sorted) {
            if let Some(&b) = v.first() {
                first[usize::from(b)] = true;
            }
            max_len = max_len.max(v.len());
            star_free &= memchr::memchr(b'*', v).is_none();
        }
        Self {
            star_free,
            generation,
            failed: levels.iter().any(|l| l.ac.is_none()),
            levels,
            first,
            max_len,
        }
    }

    fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// Writes into `out` the maximal masked spans of `hay`, sorted, disjoint and
    /// not touching. `carry` leading bytes are masked by an occurrence that began
    /// before `hay`.
    fn spans(&self, hay: &[u8], carry: usize, out: &mut Vec<(usize, usize)>) {
        out.clear();
        if self.failed {
            if !hay.is_empty() {
                out.push((0, hay.len()));
            }
            return;
        }
        if carry > 0 {
            out.push((0, carry.min(hay.len())));
        }
        for level in &self.levels {
            let Some(ac) = &level.ac else { continue };
            out.extend(ac.find_overlapping_iter(hay).map(|m| (m.start(), m.end())));
        }
        // By start (one automaton reports overlapping matches by their end).
        out.sort_unstable();
        // Merge overlapping and touching spans in place.
        let mut w = 0;
        for r in 0..out.len() {
            let (s, e) = out[r];
            if w > 0 && s <= out[w - 1].1 {
                out[w - 1].1 = out[w - 1].1.max(e);
            } else {
                out[w] = (s, e);
                w += 1;
            }
        }
        out.truncate(w);
    }

    /// The earliest position from which the rest of `buf` is a proper prefix of
    /// some value (so may still become a match), or `buf.len()`. Everything
    /// before it is final. Past [`HOLD_BUDGET`] comparisons the rest is held.
    fn hold(&self, buf: &[u8]) -> usize {
        if self.failed || self.max_len <= 1 {
            return buf.len();
        }
        let lo = buf.len().saturating_sub(self.max_len - 1);
        let budget = HOLD_BUDGET + (buf.len() - lo);
        let mut spent = 0;
        for s in lo..buf.len() {
            if !self.first[usize::from(buf[s])] {
                continue;
            }
            if spent > budget
                || self
                    .levels
                    .iter()
                    .any(|l| l.is_proper_prefix(&buf[s..], &mut spent))
            {
                return s;
            }
        }
        buf.len()
    }
}

/// Emits the masked form of `hay[..cut]`. `in_run` says the byte emitted just
/// before `hay` was masked, so a span starting at 0 continues that `***`.
/// Returns whether byte `cut - 1` is masked, and how many bytes from `cut` on
/// are masked by spans that began before `cut`.
fn emit(
    hay: &[u8],
    cut: usize,
    spans: &[(usize, usize)],
    in_run: bool,
    out: &mut Vec<u8>,
) -> (bool, usize) {
    let mut pos = 0;
    for &(start, end) in spans {
        if start >= cut {
            break;
        }
        out.extend_from_slice(&hay[pos..start]);
        if start > 0 || !in_run {
            out.extend_from_slice(MASK);
        }
        if end >= cut {
            return (true, end - cut);
        }
        pos = end;
    }
    out.extend_from_slice(&hay[pos..cut]);
    (false, 0)
}

/// Masks one output stream (stdout or stderr) as it is read.
///
/// Feed raw chunks to [`MaskStream::push`]; what it returns is safe to show.
/// Only a tail that could still be the beginning of a secret is held back
/// (fewer bytes than the longest value); [`MaskStream::finish`] flushes it. When
/// the set grows mid-stream, the held-back tail and everything after it are
/// masked with the new set.
pub struct MaskStream {
    set: MaskSet,
    compiled: Arc<Compiled>,
    /// Bytes not emitted yet.
    pending: Vec<u8>,
    /// Leading bytes of `pending` masked by an occurrence already partly emitted.
    carry: usize,
    /// The last emitted byte was masked (its `***` is out).
    in_run: bool,
    spans: Vec<(usize, usize)>,
}

impl fmt::Debug for MaskStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the pending bytes: they may be the start of a secret.
        f.debug_struct("MaskStream")
            .field("held_back", &self.pending.len())
            .field("generation", &self.compiled.generation)
            .finish()
    }
}

impl MaskStream {
    /// A stream masker over `set`.
    pub fn new(set: MaskSet) -> Self {
        let compiled = set.compiled();
        Self {
            set,
            compiled,
            pending: Vec::new(),
            carry: 0,
            in_run: false,
            spans: Vec::new(),
        }
    }

    /// Masks `chunk` and returns the bytes that are now safe to emit.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len() + self.pending.len());
        self.push_into(chunk, &mut out);
        out
    }

    /// Like [`MaskStream::push`], appending to `out`.
    pub fn push_into(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        self.refresh();
        if self.pending.is_empty() && self.compiled.is_empty() {
            out.extend_from_slice(chunk);
            return;
        }
        if self.pending.is_empty() {
            // Scanned where it lies: only the held-back tail is copied.
            let cut = self.compiled.hold(chunk);
            self.emit_from(chunk, cut, out);
            self.pending.extend_from_slice(&chunk[cut..]);
            return;
        }
        self.pending.extend_from_slice(chunk);
        let cut = self.compiled.hold(&self.pending);
        let pending = std::mem::take(&mut self.pending);
        self.emit_from(&pending, cut, out);
        self.pending = pending;
        self.pending.drain(..cut);
    }

    /// [`MaskStream::push_into`] for a `chunk` that a stream over the same set
    /// at `generation` has just emitted, unchanged (the text stage after the
    /// byte stage, when the UTF-8 conversion changed nothing). It holds no
    /// occurrence of any value: each was masked, and none can span a `***`
    /// unless a value contains `*`. So with nothing pending here it is not
    /// scanned again — only the tail that may begin a value is looked at and
    /// held back, exactly as [`MaskStream::push_into`] would. Otherwise (the
    /// set grew since, a value contains `*`, a tail is pending) it is
    /// [`MaskStream::push_into`].
    pub fn push_emitted_into(&mut self, chunk: &[u8], generation: u64, out: &mut Vec<u8>) {
        self.refresh();
        let c = &self.compiled;
        if !self.pending.is_empty() || c.generation != generation || !c.star_free || c.failed {
            self.push_into(chunk, out);
            return;
        }
        let cut = c.hold(chunk);
        if cut > 0 {
            out.extend_from_slice(&chunk[..cut]);
            self.in_run = false;
        }
        self.pending.extend_from_slice(&chunk[cut..]);
    }

    /// The generation of the set this stream masked its last push with.
    pub fn generation(&self) -> u64 {
        self.compiled.generation
    }

    /// Flushes the held-back tail, masked. The stream can be reused afterwards.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pending.len());
        self.finish_into(&mut out);
        out
    }

    /// Like [`MaskStream::finish`], appending to `out`.
    pub fn finish_into(&mut self, out: &mut Vec<u8>) {
        self.refresh();
        let pending = std::mem::take(&mut self.pending);
        self.emit_from(&pending, pending.len(), out);
        self.pending = pending;
        self.pending.clear();
        self.carry = 0;
        self.in_run = false;
    }

    /// How many bytes are held back (always fewer than the longest value).
    pub fn held_back(&self) -> usize {
        self.pending.len()
    }

    fn refresh(&mut self) {
        if self.set.generation() != self.compiled.generation {
            self.compiled = self.set.compiled();
        }
    }

    /// Emits the masked form of `hay[..cut]` (`hay` is what is pending: the
    /// held-back tail and what came after it); the caller keeps `hay[cut..]`.
    fn emit_from(&mut self, hay: &[u8], cut: usize, out: &mut Vec<u8>) {
        if cut == 0 {
            return;
        }
        self.compiled.spans(hay, self.carry, &mut self.spans);
        let (in_run, carry) = emit(hay, cut, &self.spans, self.in_run, out);
        self.in_run = in_run;
        self.carry = carry;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(values: &[&str]) -> MaskSet {
        let set = MaskSet::new();
        for v in values {
            set.add(v).expect("value is long enough");
        }
        set
    }

    fn stream_all(set: &MaskSet, chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = set.stream();
        let mut out = Vec::new();
        for c in chunks {
            s.push_into(c, &mut out);
        }
        s.finish_into(&mut out);
        out
    }

    /// Reference: mark every covered position naively, collapse runs.
    fn naive(values: &[Vec<u8>], text: &[u8]) -> Vec<u8> {
        let mut covered = vec![false; text.len()];
        for v in values {
            for i in 0..text.len() {
                if text[i..].starts_with(v) {
                    covered[i..i + v.len()].iter_mut().for_each(|c| *c = true);
                }
            }
        }
        let mut out = Vec::new();
        for (i, &b) in text.iter().enumerate() {
            if !covered[i] {
                out.push(b);
            } else if i == 0 || !covered[i - 1] {
                out.extend_from_slice(MASK);
            }
        }
        out
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn too_short_is_refused_and_not_registered() {
        let s = MaskSet::new();
        assert_eq!(s.add("abc"), Err(MaskError::TooShort));
        assert_eq!(s.add(""), Err(MaskError::TooShort));
        assert!(s.is_empty());
        assert_eq!(s.mask_str("abc"), "abc");
        assert!(!MaskError::TooShort.to_string().contains("abc"));
    }

    #[test]
    fn mask_str_replaces_secrets() {
        let s = set(&["hunter2", "s3cr3t"]);
        assert_eq!(s.mask_str("pw=hunter2 and s3cr3t!"), "pw=*** and ***!");
        assert_eq!(s.mask_str("nothing here"), "nothing here");
        assert_eq!(MaskSet::new().mask_str("hunter2"), "hunter2");
    }

    #[test]
    fn overlapping_secrets_mask_the_whole_span() {
        let s = set(&["abcdef", "defghi"]);
        assert_eq!(s.mask_str("abcdefghi"), "***");
        assert_eq!(s.mask_str("xabcdefghiy"), "x***y");
        let s = set(&["password", "sword"]);
        assert_eq!(s.mask_str("my password!"), "my ***!");
        let s = set(&["bcde", "abcdefg"]);
        assert_eq!(s.mask_str("_abcdefg_bcde_"), "_***_***_");
    }

    #[test]
    fn adjacent_secrets_become_one_mask() {
        let s = set(&["abcd"]);
        assert_eq!(s.mask_str("abcdabcd"), "***");
        assert_eq!(s.mask_str("aaaaaaa"), "aaaaaaa");
    }

    #[test]
    fn multi_line_value_registers_each_line() {
        let s = set(&["line-one\r\nline-two\nab"]);
        let values = s.values();
        assert!(values.contains(&b"line-one".to_vec()));
        assert!(values.contains(&b"line-two".to_vec()));
        assert!(!values.contains(&b"ab".to_vec()));
        let out = stream_all(&s, &[b"x line-one y\n", b"line-two\n", b"ab\n"]);
        assert_eq!(out, b"x *** y\n***\nab\n");
    }

    #[test]
    fn secret_split_across_two_pushes() {
        let s = set(&["secret"]);
        let mut st = s.stream();
        assert_eq!(st.push(b"hello sec"), b"hello ");
        assert_eq!(st.held_back(), 3);
        assert_eq!(st.push(b"ret world"), b"*** world");
        assert_eq!(st.finish(), b"");
    }

    #[test]
    fn secret_at_the_end_is_flushed_by_finish() {
        let s = set(&["secret"]);
        let mut st = s.stream();
        let mut out = st.push(b"xx secret");
        // The complete secret could still be the start of nothing longer, so
        // it is emitted masked at once.
        out.extend(st.finish());
        assert_eq!(out, b"xx ***");
        let s = set(&["secret", "secretive"]);
        let mut st = s.stream();
        assert_eq!(st.push(b"xx secret"), b"xx ");
        assert_eq!(st.finish(), b"***");
    }

    #[test]
    fn partial_secret_at_end_is_emitted_by_finish_unmasked() {
        let s = set(&["secret"]);
        let mut st = s.stream();
        assert_eq!(st.push(b"a secr"), b"a ");
        assert_eq!(st.finish(), b"secr");
    }

    #[test]
    fn output_is_prompt() {
        let s = set(&["secret"]);
        let mut st = s.stream();
        assert_eq!(st.push(b"hello world\n"), b"hello world\n");
        assert_eq!(st.held_back(), 0);
        // Only the last `s` could begin the secret.
        assert_eq!(st.push(b"ssss"), b"sss");
        assert_eq!(st.push(b"x"), b"sx");
    }

    #[test]
    fn long_masked_run_keeps_memory_bounded() {
        let s = set(&["aaaa"]);
        let mut st = s.stream();
        let mut out = Vec::new();
        for _ in 0..1000 {
            st.push_into(&[b'a'; 1000], &mut out);
            assert!(st.held_back() < 4);
        }
        st.push_into(b"b", &mut out);
        out.extend(st.finish());
        assert_eq!(out, b"***b");
    }

    #[test]
    fn growing_set_masks_the_tail_and_what_follows() {
        let s = MaskSet::new();
        let mut st = s.stream();
        assert_eq!(st.push(b"start "), b"start ");
        s.add("token-123").expect("long enough");
        assert_eq!(st.push(b"tok"), b"");
        assert_eq!(st.push(b"en-123 end"), b"*** end");
        // A stream created before the value's registration, holding part of it.
        let s = set(&["abcdefgh"]);
        let mut st = s.stream();
        assert_eq!(st.push(b"abcd"), b"");
        s.add("abcdXYZ").expect("long enough");
        assert_eq!(st.push(b"XYZ!"), b"***!");
    }

    #[test]
    fn clones_share_the_set() {
        let a = MaskSet::new();
        let b = a.clone();
        let g = a.generation();
        b.add("shared-secret").expect("long enough");
        assert!(a.generation() > g);
        assert_eq!(a.mask_str("shared-secret"), "***");
        // Re-adding changes nothing.
        let g = a.generation();
        a.add("shared-secret").expect("long enough");
        assert_eq!(a.generation(), g);
    }

    #[test]
    fn debug_never_shows_values() {
        let s = set(&["hunter22"]);
        let mut st = s.stream();
        st.push(b"hunter2");
        assert!(!format!("{s:?}{st:?}").contains("hunter"));
    }

    #[test]
    fn full_set_refuses_more() {
        let s = MaskSet::new();
        let big = "x".repeat(MAX_MASK_BYTES);
        assert_eq!(s.add(&big), Ok(()));
        assert_eq!(s.add("one-more"), Err(MaskError::Full));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn values_arriving_one_by_one_are_compiled_in_levels_not_each_time() {
        // 200 values of 4000 bytes, each used before the next arrives (the
        // `::add-mask::` pattern): rebuilding everything each time would compile
        // 200 * 100 * 4000 = 80 MB; the levels compile each byte once per level.
        let s = MaskSet::new();
        let mut st = s.stream();
        let mut values = Vec::new();
        for i in 0..200u32 {
            let v = format!("{i:04}{}", "ab".repeat(1998));
            s.add(&v).expect("room");
            let out = st.push(format!("x {v} y\n").as_bytes());
            assert!(!contains(&out, v.as_bytes()));
            values.push(v);
        }
        let total = s.bytes() as u64;
        assert_eq!(total, 200 * 4000);
        eprintln!("compiled {} bytes for {total}", s.compiled_bytes());
        assert!(
            s.compiled_bytes() <= total * 10,
            "compiled {} bytes for {total}",
            s.compiled_bytes()
        );
        assert!(s.occupied_levels() <= 12);
        // Every value is still masked, whatever level it sits in.
        let text = values.join(" ");
        let masked = s.mask_str(&text);
        assert_eq!(masked, vec!["***"; 200].join(" "));
    }

    #[test]
    fn a_tail_that_is_expensive_to_decide_is_held_not_scanned_for_ever() {
        // A 60,000-byte value of one letter and then another: every tail of a
        // run of that letter is a candidate; deciding each one fully would
        // cost the square of the value's length per push.
        let value = format!("{}b", "a".repeat(60_000));
        let s = set(&[&value]);
        let mut st = s.stream();
        let line = format!("{}c", "a".repeat(59_999));
        let mut out = Vec::new();
        for _ in 0..20 {
            st.push_into(line.as_bytes(), &mut out);
            assert!(st.held_back() < value.len());
        }
        st.push_into(value.as_bytes(), &mut out);
        st.finish_into(&mut out);
        assert!(!contains(&out, value.as_bytes()));
        assert_eq!(out.len(), 20 * line.len() + MASK.len());
    }

    #[test]
    fn a_value_that_is_not_utf8_is_masked_in_its_lossy_form_too() {
        let s = MaskSet::new();
        s.add_bytes(b"ab\xffcd").expect("long enough");
        assert_eq!(s.mask_bytes(b"x ab\xffcd y"), b"x *** y");
        assert_eq!(s.mask_str("x ab\u{fffd}cd y"), "x *** y");
    }

    #[test]
    fn non_utf8_bytes_pass_through() {
        let s = set(&["secret"]);
        let out = stream_all(&s, &[b"\xff\xfe sec", b"ret \x00\xc3"]);
        assert_eq!(out, b"\xff\xfe *** \x00\xc3");
    }

    fn secret() -> impl Strategy<Value = String> {
        // A small alphabet makes overlaps and near misses common.
        proptest::string::string_regex("[abc\n]{4,9}").expect("valid regex")
    }

    proptest! {
        #[test]
        fn chunked_equals_whole_and_no_secret_survives(
            secrets in proptest::collection::vec(secret(), 1..5),
            pieces in proptest::collection::vec(
                prop_oneof![
                    proptest::string::string_regex("[abcd\n\r]{0,12}").expect("valid regex"),
                    (0usize..5).prop_map(|i| format!("#{i}")),
                ],
                0..20,
            ),
            cuts in proptest::collection::vec(0usize..200, 0..10),
            split_levels in any::<bool>(),
        ) {
            let s = MaskSet::new();
            for (i, v) in secrets.iter().enumerate() {
                s.add(v).expect("long enough");
                if split_levels && i % 2 == 0 {
                    // Compile now: the values end up in several levels.
                    let _ = s.mask_str("");
                }
            }
            // Text built from random bytes and whole secrets.
            let mut text = Vec::new();
            for p in &pieces {
                match p.strip_prefix('#').and_then(|i| i.parse::<usize>().ok()) {
                    Some(i) => text.extend_from_slice(secrets[i % secrets.len()].as_bytes()),
                    None => text.extend_from_slice(p.as_bytes()),
                }
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for c in cuts.into_iter().chain([text.len()]) {
                chunks.push(&text[prev..c]);
                prev = c;
            }
            let whole = s.mask_bytes(&text);
            let streamed = stream_all(&s, &chunks);
            prop_assert_eq!(&streamed, &whole);
            let values = s.values();
            prop_assert_eq!(&whole, &naive(&values, &text));
            for v in &values {
                prop_assert!(!contains(&whole, v));
            }
            // The tail held back is bounded by the longest value.
            let max = values.iter().map(Vec::len).max().unwrap_or(0);
            let mut st = s.stream();
            for c in &chunks {
                st.push(c);
                prop_assert!(st.held_back() < max.max(1));
            }
        }
    }
}
