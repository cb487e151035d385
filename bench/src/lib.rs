//! # krill-bench: Krill beside the alternatives, measured in one run
//!
//! `bench/run` builds everything and calls the `krill-bench` binary, which runs
//! the scenarios of issue 8 and prints one table (also written to
//! `bench/results/latest.md` and `latest.json`). Each scenario measures its
//! alternative in the same run, so the ratios hold on a noisy machine.
//! Nothing here asserts a timing: benchmarks report, tests assert.
//!
//! ## Layout
//! - [`cli`]: the flags and the run they drive.
//! - [`procs`]: starting `krill-worker` processes, reading their RSS, waiting on queues.
//! - [`alt`]: the alternatives: raw spawn, a bare RabbitMQ round trip, `docker run`.
//! - [`celery`]: Celery 5 on the same RabbitMQ (a Python worker and client under `bench/celery`).
//! - [`scenarios`]: scenarios 1-8, each filling rows of the [`report`].
//! - [`chart`]: the SVG chart of scenario 8's curve (`plotters`).
//! - [`stats`]: percentiles and rates.
//! - [`report`]: the table, the goals (met or not) and the markdown/JSON output.
//! - [`profile`]: `perf record` around a scenario, when asked.

pub mod alt;
pub mod celery;
pub mod chart;
pub mod cli;
pub mod procs;
pub mod profile;
pub mod report;
pub mod scenarios;
pub mod stats;
