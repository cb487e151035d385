//! # Krill broker: the queue contract and everything that talks to RabbitMQ
//!
//! ## Layout
//! - [`protocol`]: the wire messages (plain serde data, no I/O).
//! - [`topology`]: every exchange, queue and argument name, and `declare()`.
//! - [`amqp`]: AMQP plumbing every side shares (confirmed publish, URL redaction, tap, peek, `x-death`).
//! - [`units`]: sizes and durations as people write them, for every binary's flags.
//! - [`client`]: the submitting side: submit, wait for results, follow logs, cancel, drain, resume.
//! - [`bulk`]: submit many tasks at once, results on one reply queue per client.
//! - [`dead`]: the dead-letter queue: list with reasons, replay.
//! - [`status`]: what the pool is doing (heartbeat stream + queue depths), for `krill status`.
//! - [`trust`]: signatures, sealed secrets and outputs, key files, trusted keys (pure).
//! - [`schema`]: the JSON Schema of every wire message (`broker/schema/`).
//! - [`cli`]: the `krill` command line (args, submit/wait/logs, status, print).
//! - `bin/krill.rs`: the CLI binary, thin over [`cli`].

#![forbid(unsafe_code)]

pub mod amqp;
pub mod bulk;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod dead;
pub mod protocol;
pub mod schema;
pub mod status;
pub mod topology;
pub mod trust;
pub mod units;
