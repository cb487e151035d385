//! The runner's output pump: takes a sandbox's raw events, passes them
//! through the output [`Pipeline`] (`::add-mask::`, masking on bytes and on
//! text, failing closed), captures (capped) and sends live log chunks through
//! the outbound sink; times the first event as the sandbox's start.

use std::sync::Arc;
use std::time::Duration;

use broker::protocol::{LogChunk, SandboxKind, Stream, PROTOCOL_VERSION};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::outbound::Outbound;
use crate::output::{escape_log, Capture, MaskSet, Notes, Pipeline};
use crate::sandbox::Event;

/// Live log chunks are published at least this often while output flows.
pub const LOG_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// … or as soon as this many bytes are pending.
pub const LOG_FLUSH_BYTES: usize = 64 * 1024;

/// Times a sandbox's first event as its start (`krill_sandbox_start_seconds`).
pub(crate) struct FirstOutput {
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    pub(crate) kind: SandboxKind,
    /// When the task was handed to the sandbox.
    pub(crate) handed_at: std::time::Instant,
}

/// What the pump collected.
pub(crate) struct Pumped {
    pub(crate) stdout: Capture,
    pub(crate) stderr: Capture,
    pub(crate) warnings: Notes,
    /// Invalid UTF-8 was replaced.
    pub(crate) lossy: bool,
    /// Masking failed closed and the rest of the output was withheld.
    pub(crate) withheld: bool,
}

/// Takes raw sandbox events: masks them through the [`Pipeline`], captures, publishes live chunks.
///
/// Live chunks carry exactly the bytes the result keeps: once a stream reaches
/// the output cap, nothing more of it is published, and one marker line saying
/// so goes out on the stderr stream (so a follower's stdout stays the script's
/// own). Memory stays flat: the capture is capped, the pending chunk is flushed
/// at [`LOG_FLUSH_BYTES`], the maskers hold back less than the longest value.
pub(crate) struct Pump {
    task_id: String,
    masks: MaskSet,
    pipeline: Pipeline,
    /// The marker saying the output is withheld went out.
    withheld_marked: bool,
    stdout: Capture,
    stderr: Capture,
    outbound: Outbound,
    seq: u64,
    pending: Option<(Stream, Vec<u8>, DateTime<Utc>)>,
    /// Per stream (stdout, stderr): the start of a UTF-8 character cut by the
    /// last live chunk, sent with the next one so no chunk splits a character.
    carry: [Vec<u8>; 2],
    /// End of output: flush everything, hold nothing back.
    finishing: bool,
    /// Taken at the first event.
    pub(crate) first_output: Option<FirstOutput>,
}

impl Pump {
    pub(crate) fn new(task_id: String, masks: MaskSet, cap: u64, outbound: Outbound) -> Self {
        Pump {
            task_id,
            pipeline: Pipeline::new(masks.clone()),
            withheld_marked: false,
            masks,
            stdout: Capture::new(usize::try_from(cap).unwrap_or(usize::MAX)),
            stderr: Capture::new(usize::try_from(cap).unwrap_or(usize::MAX)),
            outbound,
            seq: 0,
            pending: None,
            carry: [Vec::new(), Vec::new()],
            finishing: false,
            first_output: None,
        }
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Event>) -> Pumped {
        let mut tick = tokio::time::interval(LOG_FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = rx.recv() => {
                    if let (Some(_), Some(first)) = (&ev, self.first_output.take()) {
                        first.metrics.sandbox_started(first.kind, first.handed_at.elapsed());
                    }
                    match ev {
                        Some(Event::Output(stream, bytes)) => self.output(stream, &bytes).await,
                        Some(Event::Sensitive(content)) => self.sensitive(&content).await,
                        Some(Event::Diagnostic(text)) => {
                            let text = self.masks.mask_str(&String::from_utf8_lossy(
                                &self.masks.mask_bytes(&text),
                            ));
                            tracing::warn!(text = %escape_log(&text), "the sandbox's helper wrote to its stderr");
                        }
                        None => break,
                    }
                }
                _ = tick.tick() => self.flush(false).await,
            }
        }
        // End of output: flush what each stage held back.
        for stream in [Stream::Stdout, Stream::Stderr] {
            let mut rest = Vec::new();
            self.pipeline.finish(stream, &mut rest);
            self.emit(stream, &rest).await;
        }
        self.mark_withheld().await;
        self.finishing = true;
        for stream in [Stream::Stdout, Stream::Stderr] {
            let carry = std::mem::take(&mut self.carry[slot(stream)]);
            if !carry.is_empty() {
                self.live(stream, &carry).await;
            }
        }
        self.flush(true).await;
        Pumped {
            stdout: self.stdout,
            stderr: self.stderr,
            lossy: self.pipeline.lossy(),
            withheld: self.pipeline.withheld().is_some(),
            warnings: self.pipeline.take_warnings(),
        }
    }

    async fn sensitive(&mut self, content: &Bytes) {
        // Output printed before the value was written but not published yet
        // is masked too (what was already published cannot be).
        if self.pipeline.sensitive(content) {
            if let Some((_, data, _)) = &mut self.pending {
                *data = self.masks.mask_bytes(data);
            }
        }
        self.mark_withheld().await;
    }

    async fn output(&mut self, stream: Stream, bytes: &[u8]) {
        let mut masked = Vec::with_capacity(bytes.len());
        self.pipeline.push(stream, bytes, &mut masked);
        self.emit(stream, &masked).await;
        self.mark_withheld().await;
    }

    /// Once masking failed closed: one marker line on the live stderr stream.
    async fn mark_withheld(&mut self) {
        if self.withheld_marked {
            return;
        }
        let Some(why) = self.pipeline.withheld() else {
            return;
        };
        self.withheld_marked = true;
        let marker = format!("\nkrill: {why}\n");
        self.live(Stream::Stderr, marker.as_bytes()).await;
    }

    /// Captures masked bytes and publishes what the capture kept.
    async fn emit(&mut self, stream: Stream, masked: &[u8]) {
        if masked.is_empty() {
            return;
        }
        let capture = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        if capture.truncated() {
            // Past the cap: dropped here and in the live stream alike.
            capture.push(masked);
            return;
        }
        let before = capture.len();
        capture.push(masked);
        let kept = capture.len().saturating_sub(before).min(masked.len());
        let cut = capture.truncated();
        if cut {
            // Nothing more of this stream is kept or shown: not masked either.
            self.pipeline.discard(stream);
        }
        // Live logs are bounded like the result: the bytes it keeps, then a marker.
        self.live(stream, &masked[..kept]).await;
        if cut {
            let marker = format!(
                "\nkrill: {} reached the output limit of {} bytes; the rest of it is discarded \
                 (not shown live, not kept in the result)\n",
                stream_name(stream),
                self.stdout.cap()
            );
            self.live(Stream::Stderr, marker.as_bytes()).await;
        }
    }

    /// Adds bytes to the pending live chunk, flushing it when the stream
    /// changes or it is full.
    async fn live(&mut self, stream: Stream, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if matches!(&self.pending, Some((s, _, _)) if *s != stream) {
            self.flush(false).await;
        }
        let carry = &mut self.carry[slot(stream)];
        let pending = self
            .pending
            .get_or_insert_with(|| (stream, std::mem::take(carry), Utc::now()));
        pending.1.extend_from_slice(bytes);
        if pending.1.len() >= LOG_FLUSH_BYTES {
            self.flush(false).await;
        }
    }

    async fn flush(&mut self, eof: bool) {
        let (stream, mut data, first_at) = match self.pending.take() {
            Some(p) => p,
            None if eof => (Stream::Stdout, Vec::new(), Utc::now()),
            None => return,
        };
        if !eof && !self.finishing {
            // Keep a character cut at the end for the next chunk of this stream.
            let cut = data.len() - incomplete_tail(&data);
            self.carry[slot(stream)] = data.split_off(cut);
            if data.is_empty() {
                return;
            }
        }
        let chunk = LogChunk {
            version: PROTOCOL_VERSION,
            task_id: self.task_id.clone(),
            seq: self.seq,
            stream,
            // Valid UTF-8 (the pipeline's output, no character cut): moved, not copied.
            data: String::from_utf8(data)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            first_at,
            last_at: Utc::now(),
            eof,
        };
        self.seq += 1;
        self.outbound.log(chunk).await;
    }
}

fn slot(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

fn stream_name(stream: Stream) -> &'static str {
    match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    }
}

/// How many bytes at the end of `data` are the valid start of a UTF-8
/// character whose end is missing (0 to 3).
fn incomplete_tail(data: &[u8]) -> usize {
    let from = data.len().saturating_sub(3);
    match (from..data.len()).rev().find(|&i| data[i] & 0xC0 != 0x80) {
        Some(start) => match std::str::from_utf8(&data[start..]) {
            Err(e) if e.valid_up_to() == 0 && e.error_len().is_none() => data.len() - start,
            _ => 0,
        },
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::MemorySink;
    use crate::output::{not_masked, MaskError};

    #[tokio::test]
    async fn the_pump_sends_masked_chunks_through_the_sink_and_ends_with_eof() {
        let sink = Arc::new(MemorySink::default());
        let outbound = Outbound::new(sink.clone(), "w1", "p");
        let masks = MaskSet::new();
        masks.add("s3cr3t-value").expect("mask");
        let (tx, rx) = mpsc::channel(8);
        let pump = Pump::new("t1".into(), masks, 1 << 20, outbound);
        let run = tokio::spawn(pump.run(rx));
        for (stream, bytes) in [
            (Stream::Stdout, &b"hello s3cr3t-"[..]),
            (
                Stream::Stdout,
                &b"value\n::add-mask::other-one\nother-one\n"[..],
            ),
            (Stream::Stderr, &b"oops\n"[..]),
        ] {
            tx.send(Event::Output(stream, Bytes::from_static(bytes)))
                .await
                .expect("send");
        }
        drop(tx);
        let pumped = run.await.expect("pump");
        let (out, _) = pumped.stdout.into_text();
        assert_eq!(out, "hello ***\n***\n");
        let chunks = sink.logs();
        let last = chunks.last().expect("chunks");
        assert!(last.eof, "{chunks:?}");
        assert!(chunks.iter().all(|c| c.task_id == "t1"));
        let seqs: Vec<u64> = chunks.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, (0..chunks.len() as u64).collect::<Vec<_>>());
        let live: String = chunks
            .iter()
            .filter(|c| c.stream == Stream::Stdout)
            .map(|c| c.data.as_str())
            .collect();
        assert_eq!(live, out, "live chunks carry what the result keeps");
        let err: String = chunks
            .iter()
            .filter(|c| c.stream == Stream::Stderr)
            .map(|c| c.data.as_str())
            .collect();
        assert_eq!(err, "oops\n");
    }

    #[test]
    fn incomplete_tail_finds_a_cut_character() {
        let euro = "€".as_bytes();
        assert_eq!(incomplete_tail(b""), 0);
        assert_eq!(incomplete_tail(b"abc"), 0);
        assert_eq!(incomplete_tail("a€".as_bytes()), 0);
        assert_eq!(incomplete_tail(&[b'a', euro[0]]), 1);
        assert_eq!(incomplete_tail(&[b'a', euro[0], euro[1]]), 2);
        assert_eq!(incomplete_tail(&"𝄞".as_bytes()[..3]), 3);
        // Invalid bytes are not held back (they are lossy anyway).
        assert_eq!(incomplete_tail(b"a\xff"), 0);
        assert_eq!(incomplete_tail(b"\x80\x80\x80"), 0);
    }

    #[test]
    fn warnings_name_the_variable_and_the_reason() {
        let short = not_masked("secret", "PIN", MaskError::TooShort);
        assert!(short.contains("`PIN`") && short.contains("shorter than 4 bytes"));
        let full = not_masked("sensitive output", "TOKEN", MaskError::Full);
        assert!(full.contains("`TOKEN`") && full.contains("too many values"));
        assert!(!full.contains("shorter"));
    }
}
