//! # Krill worker: claims tasks from a pool queue and runs each in a single-use sandbox
//!
//! ## Layout
//!
//! A task's way through the worker, from the delivery to the ack, walks forward:
//!
//! ```text
//! connection ─▶ consumer ─▶ gate/intake ─▶ runner ─▶ sandboxes ─▶ sandbox::{process,container}
//!   (control)      │     (trust)           │  ◀── events ──┘
//!                  │                       └─▶ output (mask, capture, outputs) ─▶ outbound (log chunks)
//!                  └─▶ outbound (result sealed + stamped, finished event) ─▶ ack
//! ```
//!
//! Binary side (wiring):
//! - [`daemon`]: the task tree, the root cancellation token, the shutdown order.
//! - [`connection`]: the broker connection, made again with backoff; per connection, control and claims.
//! - [`config`]: flags and env vars, the pool policy.
//! - [`telemetry`]: the tracing subscriber (`--log-format`).
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`.
//!
//! One delivery's way:
//! - [`consumer`]: claims tasks (prefetch = free slots), decides what each delivery needs, acks after the result is confirmed.
//! - [`gate`]: the trust checks in the order a delivery meets them (signature, admit, claim),
//!   and what a refusal does (rejected result, dead letter with its reason, audit line).
//! - [`intake`]: what a delivery is and how it is settled; decoding it into a task (pure).
//! - [`trust`]: signatures, trusted keys, sealed secrets, replay protection (the claims
//!   stream), the audit file: every check made before a task may run (pure where it can be).
//! - [`lines`]: concurrency keys: each key's line (a single-active-consumer queue), held, started in order, said why it waits.
//! - [`control`]: the control queue, the cancellation stream, dead-letter notifications.
//! - [`runner`]: one task: check it against the policy, sandbox, stream and mask output, outputs, result.
//! - [`pump`]: the runner's output pump: mask, capture, live log chunks through outbound.
//! - [`sandboxes`]: the enabled sandboxes behind one handle.
//! - [`sandbox`]: the sandbox trait, `container` (bollard) and `process` (nix).
//! - [`output`]: output-variable parser, streaming secret masker, capped capture (pure).
//! - [`outbound`]: every message the worker sends, built and published in one place (a sink
//!   trait); results leave sealed and stamped (`outbound::stamp`).
//!
//! Shared state:
//! - [`worker`]: the state the loops and tasks share ([`worker::Shared`]).
//! - [`state`]: running tasks, recent cancellations, recent results.
//! - [`cancel`]: a task's cancellation token and its reason, as one value.
//! - [`snapshot`]: the worker as heartbeats and metrics report it (plain data).
//! - [`health`]: whether results still go out (degraded when they cannot).
//! - [`metrics`]: the Prometheus figures, and the same as JSON lines (`--metrics-file`).
//! - [`error`]: an error printed with its causes.
//! - [`phases`]: per-task phase timings as debug events (where the latency tail comes from).
//! - [`held`]: a redelivered task that ran elsewhere waits until its holder is known gone or done.
//! - [`peers`]: who in the pool is alive and runs which task, from the heartbeats (for redeliveries and key holders).
//! - [`liveness`]: the host-wide lock every worker holds; what a dead worker left is swept.

pub mod cancel;
pub mod config;
pub mod connection;
pub mod consumer;
pub mod control;
pub mod daemon;
pub mod error;
pub mod gate;
pub mod health;
pub mod held;
pub mod http;
pub mod intake;
pub mod keyed;
pub mod lines;
pub mod liveness;
pub mod metrics;
pub mod outbound;
pub mod output;
pub mod peers;
pub mod phases;
pub mod pump;
pub mod runner;
pub mod sandbox;
pub mod sandboxes;
pub mod snapshot;
pub mod state;
pub mod telemetry;
pub mod trust;
pub mod worker;
