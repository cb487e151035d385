//! Krill's seccomp allow-list, one source for both sandboxes: [`policy`] says
//! what a task may call; [`bpf`] compiles it for the process sandbox and
//! [`docker`] writes it as the container sandbox's Docker profile (so neither
//! depends on the engine's version or default profile).
//!
//! ```text
//! policy::rules(network) ──┬── bpf::Filters::build ──▶ process sandbox (installed last before exec)
//!                          └── docker::security_opt ─▶ HostConfig.SecurityOpt "seccomp=<json>"
//! ```
//!
//! Unknown syscalls (a new kernel's) fail with `ENOSYS`; the refused list
//! (`ptrace`, io_uring, `bpf`, the mount API, keyrings, …) with `EPERM`;
//! socket families other than `AF_UNIX`/`AF_INET`/`AF_INET6` (and
//! `AF_NETLINK`/`NETLINK_ROUTE` with network) with `EAFNOSUPPORT`; `clone` with
//! namespace flags with `EPERM`, `clone3` with `ENOSYS` (libc falls back to
//! `clone`, whose flags a filter can read).

pub mod bpf;
pub mod docker;
pub mod numbers;
pub mod policy;

pub use bpf::{Filters, SeccompError};
