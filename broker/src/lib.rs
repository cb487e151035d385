//! # Krill broker: the queue contract and everything that talks to RabbitMQ
//!
//! ## Layout
//! - [`protocol`]: the wire messages (plain serde data, no I/O).
//! - [`topology`]: every exchange, queue and argument name, and `declare()`.
//! - [`client`]: submit, wait for results, follow logs, cancel, drain, status.
//! - [`bulk`]: submit many tasks at once, results on one reply queue per client.
//! - [`status`]: what the pool is doing (heartbeat stream + queue depths), for `krill status`.
//! - `bin/krill.rs`: the CLI, thin over [`client`].

pub mod bulk;
pub mod cli;
pub mod client;
pub mod dead;
pub mod protocol;
pub mod schema;
pub mod status;
pub mod topology;
