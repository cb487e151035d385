//! # Krill worker: claims tasks from a pool queue and runs each in a single-use sandbox
//!
//! ## Layout
//! - [`config`]: flags and env vars, pool policy.
//! - [`daemon`]: the task tree, the root cancellation token, the shutdown order.
//! - [`consumer`]: claims tasks (prefetch = free slots), acks after the result is confirmed.
//! - [`runner`]: one task: validate, sandbox, stream and mask output, outputs, result.
//! - [`sandbox`]: the sandbox trait, `container` (bollard) and `process` (nix).
//! - [`outbound`]: every message the worker sends, built and published in one place (a sink trait).
//! - [`output`]: output-variable parser, streaming secret masker, capped capture (pure).
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`metrics`]: the Prometheus figures, and the same as JSON lines (`--metrics-file`).

pub mod config;
pub mod consumer;
pub mod daemon;
pub mod http;
pub mod intake;
pub mod metrics;
pub mod outbound;
pub mod output;
pub mod runner;
pub mod sandbox;
pub mod sandboxes;
pub mod side;
pub mod state;
pub mod telemetry;
pub mod worker;
