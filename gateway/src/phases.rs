//! Per-task phase timings of the HTTP path (issue 16): `debug` events on the
//! target [`TARGET`] (the worker's too), silent unless `RUST_LOG` asks for
//! them (`krill::phases=debug`); `krill-bench`'s scenario 7 reads them beside
//! the worker's to say where HTTP submit → result spends its time.

use std::time::{SystemTime, UNIX_EPOCH};

/// The tracing target of every phase event (the worker's is the same).
pub const TARGET: &str = "krill::phases";

/// Wall-clock microseconds since the Unix epoch (comparable with the
/// worker's and the client's clocks on the same host).
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Whether phase events are wanted (skip the clock reads when not).
pub fn on() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::DEBUG)
}
