//! The worker's output path in memory, stage by stage: CPU per MiB of the
//! `::add-mask::` filter, the two maskers, the lossy UTF-8 stage, the capture
//! and the JSON of live chunks and of the result, over bench scenario 4's
//! stdout (log lines each carrying one of 20 secrets), without a sandbox or a
//! broker, so the machine's load does not blur where the time goes.
//!
//! `cargo run --release -p worker --example output_speed [MiB] [cap MiB]`
//! (defaults 200 and 10). It measures and prints; it asserts only that every
//! secret was masked.

use std::time::Instant;

use broker::protocol::{LogChunk, Stream, PROTOCOL_VERSION};
use worker::output::{AddMaskFilter, Capture, Lossy, MaskSet, Pipeline};

/// What the pipe delivers per read (the process sandbox's read size).
const READ: usize = 64 * 1024;

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let cap: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10) << 20;
    let secrets: Vec<String> = (0..20)
        .map(|i| {
            format!(
                "s3cr3t-{i}-{:016x}",
                0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(i + 1)
            )
        })
        .collect();
    let line = format!(
        "2026-11-28T21:00:00Z INFO handled GET /api/v1/items user={} status=200 size=5120\n",
        secrets[0]
    );
    let total = mib << 20;
    let text: Vec<u8> = line.bytes().cycle().take(total).collect();
    let masks = || {
        let m = MaskSet::new();
        for s in &secrets {
            m.add(s).expect("long enough");
        }
        m
    };
    let per_mib = |label: &str, t: Instant| {
        let s = t.elapsed().as_secs_f64();
        println!(
            "{label:<44} {:>8.1} ms  {:>6.2} ms/MiB  {:>7.0} MiB/s",
            s * 1e3,
            s * 1e3 / mib as f64,
            mib as f64 / s
        );
    };
    println!(
        "{mib} MiB of scenario 4's stdout in {READ}-byte reads, cap {} MiB \
         (each row per MiB of the whole stream; the pipeline row masks all of it, \
         as the worker does up to the cap)",
        cap >> 20
    );

    let t = Instant::now();
    let mut n = 0;
    for c in text.chunks(READ) {
        n += bytes::Bytes::copy_from_slice(c).len();
    }
    assert_eq!(n, total);
    per_mib("copy of each read (the sandbox's Bytes)", t);

    let m = masks();
    let mut f = AddMaskFilter::new(m.clone());
    let mut out = Vec::with_capacity(READ);
    let t = Instant::now();
    for c in text.chunks(READ) {
        out.clear();
        f.push(c, &mut out);
    }
    per_mib("::add-mask:: filter", t);

    let mut s = m.stream();
    let t = Instant::now();
    for c in text.chunks(READ) {
        out.clear();
        s.push_into(c, &mut out);
    }
    per_mib("one mask stream", t);

    let mut l = Lossy::new();
    let t = Instant::now();
    for c in text.chunks(READ) {
        out.clear();
        l.push(c, &mut out);
    }
    per_mib("lossy UTF-8", t);

    let mut p = Pipeline::new(masks());
    let mut capture = Capture::new(cap);
    let mut masked = Vec::with_capacity(READ);
    let t = Instant::now();
    for c in text.chunks(READ) {
        masked.clear();
        p.push(Stream::Stdout, c, &mut masked);
        capture.push(&masked);
    }
    masked.clear();
    p.finish(Stream::Stdout, &mut masked);
    capture.push(&masked);
    per_mib("whole pipeline + capture", t);

    // Live chunks: what the capture keeps, in 64 KiB chunks, as the sink sends them.
    let (kept, _) = capture.into_text();
    let t = Instant::now();
    let mut sent = 0;
    for (seq, c) in kept.as_bytes().chunks(64 * 1024).enumerate() {
        let chunk = LogChunk {
            version: PROTOCOL_VERSION,
            task_id: "t".into(),
            seq: seq as u64,
            stream: Stream::Stdout,
            data: String::from_utf8_lossy(c).into_owned(),
            first_at: chrono::Utc::now(),
            last_at: chrono::Utc::now(),
            eof: false,
        };
        sent += serde_json::to_vec(&chunk).expect("json").len();
    }
    per_mib(
        &format!("live chunks of the {} MiB kept", kept.len() >> 20),
        t,
    );
    let t = Instant::now();
    let body = serde_json::to_vec(&kept).expect("json");
    per_mib("the result's stdout as JSON", t);
    assert!(sent > 0 && body.len() > kept.len());
    assert!(
        secrets.iter().all(|s| !kept.contains(s.as_str())) && kept.contains("user=***"),
        "a secret was not masked"
    );
}
