//! Per-task phase timings, to find where the latency tail comes from (issue 19):
//! `debug` events on the target [`TARGET`], silent unless `RUST_LOG` asks for
//! them (`krill::phases=debug`); `krill-bench`'s scenario 9 reads them.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The tracing target of every phase event.
pub const TARGET: &str = "krill::phases";

/// Microseconds since `since`.
pub fn us(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Wall-clock microseconds since the Unix epoch (comparable with the
/// submitter's clock on the same host).
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Whether phase events are wanted (skip the clock reads when not).
pub fn on() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::DEBUG)
}
