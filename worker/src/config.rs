//! The worker's configuration (every flag is also a `KRILL_*` env var) and the pool
//! policy derived from it: defaults and maxima for every limit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use broker::amqp::DEFAULT_AMQP_URL;
use broker::protocol::{Limits, SandboxKind, TaskError};
use broker::topology::DEFAULT_POOL;
use broker::units::{parse_duration, parse_size};
use clap::{Parser, ValueEnum};

use crate::sandbox::Effective;

/// Default number of tasks run at once.
pub const DEFAULT_CONCURRENCY: u32 = 4;
/// Concurrency-key lines a worker serves at most by default (`--max-lines`):
/// well under RabbitMQ's 2,047 channels per connection, each line taking one.
pub const DEFAULT_MAX_LINES: usize = 1000;
/// Default deadline of a task that names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest deadline a task may ask for. RabbitMQ's `consumer_timeout`
/// (deploy/rabbitmq/rabbitmq.conf) must stay above it.
pub const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// Default memory limit of a task: 512 MiB.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// Default largest memory limit a task may ask for: 4 GiB.
pub const DEFAULT_MAX_MEMORY: u64 = 4 << 30;
/// Default CPU limit of a task, in cores.
pub const DEFAULT_CPUS: f64 = 1.0;
/// Default process limit of a task.
pub const DEFAULT_PIDS: u64 = 256;
/// Default largest process limit a task may ask for.
pub const DEFAULT_MAX_PIDS: u64 = 4096;
/// Default cap on captured stdout and on stderr, each: 10 MiB.
pub const DEFAULT_OUTPUT_BYTES: u64 = 10 << 20;
/// Default largest output cap a task may ask for: 48 MiB (stdout and stderr at
/// that cap, and both output files, fit a result under RabbitMQ's default
/// `max_message_size` with room to spare).
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 48 << 20;
/// RabbitMQ's default `max_message_size` (3.8 to 3.13; 4.x defaults to 16 MiB).
pub const DEFAULT_BROKER_MAX_MESSAGE: u64 = 128 << 20;
/// What a result holds besides stdout, stderr and the output files, at most
/// (ids, timings, the bounded `warnings` and `output_errors`, the error): the
/// start-up check counts it.
pub const RESULT_OVERHEAD: u64 = 256 << 10;
/// How long results may fail to go out before the worker is degraded.
pub const DEFAULT_DEGRADED_AFTER: Duration = crate::health::DEFAULT_DEGRADED_AFTER;
/// Default size of a task's writable work dir and /tmp: 256 MiB.
pub const DEFAULT_DISK: u64 = 256 << 20;
/// Default largest work dir a task may ask for: 4 GiB.
pub const DEFAULT_MAX_DISK: u64 = 4 << 30;
/// Cap on each output-variable file: 1 MiB.
pub const OUTPUT_FILE_BYTES: u64 = 1 << 20;
/// Default images a container task may use (the first is the default).
pub const DEFAULT_IMAGES: &str = "krill/base:1,krill/python:1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `krill-worker`: claims tasks from a pool queue and runs each in a single-use sandbox.
#[derive(Debug, Clone, Parser)]
#[command(name = "krill-worker", version)]
pub struct Config {
    /// RabbitMQ URL.
    #[arg(long, env = "KRILL_AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true)]
    pub amqp_url: String,
    /// Pool (queue) to serve.
    #[arg(long, env = "KRILL_POOL", default_value = DEFAULT_POOL)]
    pub pool: String,
    /// Tasks run at once (slots).
    #[arg(long, env = "KRILL_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY)]
    pub concurrency: u32,
    /// The largest `max_concurrent` a keyed task may ask for in this pool.
    #[arg(long, env = "KRILL_MAX_CONCURRENT_LIMIT", default_value_t = 16)]
    pub max_concurrent_limit: u32,
    /// Concurrency-key lines this worker serves at most (each is a channel and
    /// a consumer; key announcements are unsigned, so any submitter can make
    /// up keys). Keys announced past it are not served here: their tasks wait
    /// in their lines, and the worker says so once.
    #[arg(long, env = "KRILL_MAX_LINES", default_value_t = DEFAULT_MAX_LINES)]
    pub max_lines: usize,
    /// Sandbox kinds this worker runs, comma-separated; the first is the default
    /// for tasks that name none.
    #[arg(
        long,
        env = "KRILL_SANDBOX",
        value_delimiter = ',',
        default_value = "process"
    )]
    pub sandbox: Vec<SandboxKind>,
    /// Deadline of tasks that name none.
    #[arg(long, env = "KRILL_DEFAULT_TIMEOUT", value_parser = parse_duration, default_value = "1h")]
    pub default_timeout: Duration,
    /// Longest deadline accepted; tasks asking more are rejected.
    #[arg(long, env = "KRILL_MAX_TIMEOUT", value_parser = parse_duration, default_value = "6h")]
    pub max_timeout: Duration,
    /// Host uids tasks run as, one per sandbox (each gets the gid of the same
    /// number): `auto` (the first free ones from 200000), or a range like
    /// `200000-200063` holding at least the slots plus the sandboxes started
    /// ahead. Workers on one host need disjoint ranges (checked at start).
    #[arg(long, env = "KRILL_SANDBOX_UIDS", default_value = "auto")]
    pub sandbox_uids: crate::sandbox::uids::UidSpec,
    /// Where the process sandbox makes each task's private work dir.
    #[arg(long, env = "KRILL_WORK_DIR", default_value = "/var/lib/krill/work")]
    pub work_dir: PathBuf,
    /// The process sandbox's helper binary, started (as root) for every task
    /// (default: `krill-sandbox-init` next to this binary, else this binary).
    #[arg(long, env = "KRILL_SANDBOX_HELPER")]
    pub sandbox_helper: Option<PathBuf>,
    /// Extra read-only binds into the process sandbox's view, `SRC` or
    /// `SRC:DST` (repeat the flag; in KRILL_PROCESS_BINDS, comma-separated).
    /// Paths are absolute and contain neither `,` nor `:`.
    #[arg(long = "process-bind", env = "KRILL_PROCESS_BINDS", value_delimiter = ',', value_parser = parse_bind)]
    pub process_binds: Vec<(PathBuf, PathBuf)>,
    /// A root filesystem (e.g. a task image exported with `scripts/images
    /// --export-rootfs`) whose top-level directories the process sandbox's
    /// tasks see instead of the host's /usr, /bin, /sbin and /lib*.
    #[arg(long, env = "KRILL_PROCESS_ROOTFS")]
    pub process_rootfs: Option<PathBuf>,
    /// Images container tasks may use, comma-separated; the first is the default.
    #[arg(long = "image", env = "KRILL_IMAGES", value_delimiter = ',', default_value = DEFAULT_IMAGES)]
    pub images: Vec<String>,
    /// Pull a missing allow-listed image instead of failing the task.
    #[arg(long, env = "KRILL_ALLOW_PULL")]
    pub allow_pull: bool,
    /// Let tasks that ask for network have it.
    #[arg(long, env = "KRILL_ALLOW_NETWORK")]
    pub allow_network: bool,
    /// Non-public destinations tasks may ask for (`CIDR[:PORTS]`, comma-separated;
    /// the public internet needs no entry): the bound of a task's
    /// `limits.network.allow`, and what `"network": true` gets.
    #[arg(long, env = "KRILL_NETWORK_ALLOW", value_delimiter = ',', value_parser = parse_allowance)]
    pub network_allow: Vec<crate::sandbox::net::Allowance>,
    /// Subnet of the worker bridge tasks with network get their addresses on
    /// (the same on every worker of a host).
    #[arg(long, env = "KRILL_NETWORK_SUBNET", default_value = crate::sandbox::net::DEFAULT_SUBNET)]
    pub network_subnet: ipnet::Ipv4Net,
    /// Name of the worker bridge (the Docker network's bridge device).
    #[arg(long, env = "KRILL_NETWORK_BRIDGE", default_value = crate::sandbox::net::DEFAULT_BRIDGE)]
    pub network_bridge: String,
    /// Docker network Krill manages for tasks with network (made if missing).
    #[arg(long, env = "KRILL_DOCKER_NETWORK", default_value = crate::sandbox::net::DEFAULT_DOCKER_NETWORK)]
    pub docker_network: String,
    /// Path of the static krill-stub binary mounted into containers (default: next to this binary).
    #[arg(long, env = "KRILL_STUB_PATH")]
    pub stub_path: Option<PathBuf>,
    /// OCI runtime the engine runs task containers with, as registered with
    /// dockerd (e.g. `crun`, or `runsc` for gVisor; default: the engine's).
    #[arg(long, env = "KRILL_CONTAINER_RUNTIME")]
    pub container_runtime: Option<String>,
    /// Default memory limit per task (bytes, or like 512m).
    #[arg(long, env = "KRILL_DEFAULT_MEMORY", value_parser = parse_size, default_value_t = DEFAULT_MEMORY)]
    pub default_memory: u64,
    /// Largest memory limit a task may ask for.
    #[arg(long, env = "KRILL_MAX_MEMORY", value_parser = parse_size, default_value_t = DEFAULT_MAX_MEMORY)]
    pub max_memory: u64,
    /// Default CPU limit per task, in cores.
    #[arg(long, env = "KRILL_DEFAULT_CPUS", default_value_t = DEFAULT_CPUS)]
    pub default_cpus: f64,
    /// Default process limit per task.
    #[arg(long, env = "KRILL_DEFAULT_PIDS", default_value_t = DEFAULT_PIDS)]
    pub default_pids: u64,
    /// Largest process limit a task may ask for.
    #[arg(long, env = "KRILL_MAX_PIDS", default_value_t = DEFAULT_MAX_PIDS)]
    pub max_pids: u64,
    /// Default cap on captured stdout and stderr, each.
    #[arg(long, env = "KRILL_OUTPUT_BYTES", value_parser = parse_size, default_value_t = DEFAULT_OUTPUT_BYTES)]
    pub output_bytes: u64,
    /// Largest output cap a task may ask for.
    #[arg(long, env = "KRILL_MAX_OUTPUT_BYTES", value_parser = parse_size, default_value_t = DEFAULT_MAX_OUTPUT_BYTES)]
    pub max_output_bytes: u64,
    /// Default size of a task's writable work dir and /tmp.
    #[arg(long, env = "KRILL_DISK", value_parser = parse_size, default_value_t = DEFAULT_DISK)]
    pub disk: u64,
    /// Largest work dir a task may ask for.
    #[arg(long, env = "KRILL_MAX_DISK", value_parser = parse_size, default_value_t = DEFAULT_MAX_DISK)]
    pub max_disk: u64,
    /// The broker's `max_message_size` (set the two together): every result
    /// is cut to fit well below it, and a pool whose output caps could not fit
    /// is refused at start.
    #[arg(long, env = "KRILL_BROKER_MAX_MESSAGE_BYTES", value_parser = parse_size, default_value_t = DEFAULT_BROKER_MAX_MESSAGE)]
    pub broker_max_message_bytes: u64,
    /// How long results may fail to be published before the worker stops
    /// claiming, says `degraded` in its heartbeat and fails /readyz.
    #[arg(long, env = "KRILL_DEGRADED_AFTER", value_parser = parse_duration, default_value = "60s")]
    pub degraded_after: Duration,
    /// This worker's id (default: host name and a random suffix).
    #[arg(long, env = "KRILL_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Seconds between heartbeats.
    #[arg(long, env = "KRILL_HEARTBEAT_INTERVAL", value_parser = parse_duration, default_value = "5s")]
    pub heartbeat_interval: Duration,
    /// On SIGTERM or drain-and-exit: how long running tasks may take to finish before
    /// they are cancelled.
    #[arg(long, env = "KRILL_SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "30s")]
    pub shutdown_grace: Duration,
    /// Address for /metrics, /healthz and /readyz (off when not set).
    #[arg(long, env = "KRILL_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Also append the metrics as one JSON line per --metrics-file-interval to this
    /// file (for Telegraf, Vector and similar shippers).
    #[arg(long, env = "KRILL_METRICS_FILE")]
    pub metrics_file: Option<PathBuf>,
    /// How often a line is appended to --metrics-file.
    #[arg(long, env = "KRILL_METRICS_FILE_INTERVAL", value_parser = parse_duration, default_value = "15s")]
    pub metrics_file_interval: Duration,
    /// Log format of the worker's own logs.
    #[arg(long, env = "KRILL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Run the process sandbox even where cgroups cannot be used (limits not enforced;
    /// results say `limits: degraded`).
    #[arg(long, env = "KRILL_ALLOW_DEGRADED_LIMITS")]
    pub allow_degraded_limits: bool,
    /// Containers kept started and waiting for a task, per allowed image, with the
    /// pool's default limits (container sandbox only; 0 disables).
    #[arg(long, env = "KRILL_PRESTART", default_value_t = crate::sandbox::container::prestart::DEFAULT_PRESTART)]
    pub prestart: u32,
    /// Keys whose signed tasks (and control messages) this worker obeys, one per
    /// line with their restrictions (see the README). Unsigned tasks are then
    /// rejected unless --allow-unsigned.
    #[arg(long, env = "KRILL_TRUSTED_KEYS")]
    pub trusted_keys: Option<PathBuf>,
    /// Also run unsigned tasks and obey unsigned control messages (a development
    /// pool: anyone who may publish to krill.tasks runs code here; every result
    /// says so). Needed to start without --trusted-keys.
    #[arg(long, env = "KRILL_ALLOW_UNSIGNED")]
    pub allow_unsigned: bool,
    /// The pool's X25519 key file(s) that open sealed secrets, comma-separated or
    /// repeated (several during a key rotation).
    #[arg(long = "pool-key", env = "KRILL_POOL_KEY", value_delimiter = ',')]
    pub pool_keys: Vec<PathBuf>,
    /// Reject tasks whose secrets are not sealed to the pool key.
    #[arg(long, env = "KRILL_REQUIRE_SEALED_SECRETS")]
    pub require_sealed_secrets: bool,
    /// Longest validity (`not_after` - now) a signed task may have (at most 24h).
    #[arg(long, env = "KRILL_MAX_VALIDITY", value_parser = parse_duration, default_value = "24h")]
    pub max_validity: Duration,
    /// Append one JSON line per trust decision (task accepted, rejected, finished;
    /// control obeyed or refused) to this file. Never a secret or an output value.
    #[arg(long, env = "KRILL_AUDIT_FILE")]
    pub audit_file: Option<PathBuf>,
}

/// What the pool allows: defaults for what a task does not set, maxima for what it does.
/// (Which images a container task may use is the container sandbox's own
/// allow-list: `ContainerConfig::images`.)
#[derive(Debug, Clone)]
pub struct Policy {
    pub kinds: Vec<SandboxKind>,
    pub defaults: Effective,
    pub max: Effective,
    pub allow_network: bool,
    /// Default cap on captured stdout and on stderr, each.
    pub output_bytes: u64,
    /// Largest output cap a task may ask for.
    pub max_output_bytes: u64,
}

impl Config {
    /// Checks the configuration as a whole; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if !broker::topology::valid_pool(&self.pool) {
            return Err(format!(
                "invalid pool name `{}` (1-64 characters of a-z 0-9 - _)",
                self.pool
            ));
        }
        if self.concurrency == 0 || self.concurrency > 1024 {
            return Err("--concurrency must be 1..=1024".into());
        }
        if self.sandbox.is_empty() {
            return Err("--sandbox names no sandbox kind".into());
        }
        if self.default_timeout > self.max_timeout {
            return Err("--default-timeout is above --max-timeout".into());
        }
        if self.network_subnet.prefix_len() > 23 {
            return Err(format!(
                "--network-subnet {}: give a /23 or larger (its first /24 is the engine's own)",
                self.network_subnet
            ));
        }
        if self.sandbox.contains(&SandboxKind::Container) && self.images.is_empty() {
            return Err("the container sandbox needs at least one --image".into());
        }
        if self.trusted_keys.is_none() && !self.allow_unsigned {
            return Err(
                "give --trusted-keys FILE (this worker then runs only tasks signed by \
                        those keys) or --allow-unsigned (an open pool: anyone who may publish \
                        to krill.tasks runs code on it)"
                    .into(),
            );
        }
        if self.require_sealed_secrets && self.pool_keys.is_empty() {
            return Err(
                "--require-sealed-secrets needs --pool-key (the key that opens them)".into(),
            );
        }
        if self.max_validity > broker::trust::MAX_VALIDITY || self.max_validity.is_zero() {
            return Err(format!(
                "--max-validity must be above 0 and at most {}s",
                broker::trust::MAX_VALIDITY.as_secs()
            ));
        }
        let budget = self.result_budget();
        let need = self
            .max_output_bytes
            .saturating_mul(2)
            .saturating_add(2 * OUTPUT_FILE_BYTES)
            .saturating_add(RESULT_OVERHEAD);
        if need > budget {
            let most = budget.saturating_sub(2 * OUTPUT_FILE_BYTES + RESULT_OVERHEAD) / 2;
            return Err(format!(
                "--max-output-bytes {}: a result with stdout and stderr at that cap and both \
                 output files full takes {need} bytes, more than the {budget} a result may use \
                 under the broker's max_message_size of {} (--broker-max-message-bytes); lower \
                 --max-output-bytes to at most {most}, or raise the broker's max_message_size \
                 and --broker-max-message-bytes with it",
                self.max_output_bytes, self.broker_max_message_bytes
            ));
        }
        Ok(())
    }

    /// The most serialized bytes one result may take: the broker's
    /// `max_message_size` less room for the message's properties and slack
    /// (1/16 of it, at least 64 KiB).
    pub fn result_budget(&self) -> u64 {
        let max = self.broker_max_message_bytes;
        max.saturating_sub((max / 16).max(64 << 10))
    }

    /// The pool policy this configuration sets.
    pub fn policy(&self) -> Policy {
        let max_cpus = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);
        Policy {
            kinds: self.sandbox.clone(),
            defaults: Effective {
                timeout: self.default_timeout,
                memory_bytes: self.default_memory.min(self.max_memory),
                cpus: self.default_cpus.min(max_cpus),
                pids: self.default_pids.min(self.max_pids),
                disk_bytes: self.disk.min(self.max_disk),
                output_file_bytes: OUTPUT_FILE_BYTES,
                network: false,
                network_allow: Vec::new(),
            },
            max: Effective {
                timeout: self.max_timeout,
                memory_bytes: self.max_memory,
                cpus: max_cpus,
                pids: self.max_pids,
                disk_bytes: self.max_disk,
                output_file_bytes: OUTPUT_FILE_BYTES,
                network: self.allow_network,
                network_allow: self.network_allow.clone(),
            },
            allow_network: self.allow_network,
            output_bytes: self.output_bytes.min(self.max_output_bytes),
            max_output_bytes: self.max_output_bytes,
        }
    }
}

/// Why a task cannot run on this pool: it is answered `rejected` with this text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Invalid(#[from] TaskError),
    #[error("this pool does not run the {kind} sandbox (it runs: {runs})")]
    KindNotRun { kind: SandboxKind, runs: String },
    #[error("timeout of {asked}s is above this pool's maximum of {max}s")]
    TimeoutAboveMax { asked: u64, max: u64 },
    #[error("{name} {asked} is above this pool's maximum of {max}")]
    AboveMax {
        name: &'static str,
        asked: u64,
        max: u64,
    },
    #[error("cpus {asked} is above this pool's maximum of {max}")]
    CpusAboveMax { asked: f64, max: f64 },
    #[error("network access was asked for but this pool does not allow it")]
    NetworkNotAllowed,
    #[error(transparent)]
    NetworkBeyond(#[from] crate::sandbox::net::GrantError),
    #[error("secret `{0}` is sealed and this worker did not open it (no --pool-key opens it)")]
    SealedSecret(String),
}

impl Policy {
    /// The sandbox kind a task runs in (its own, else the pool's default), or
    /// why this pool does not run it.
    pub fn kind(&self, asked: Option<SandboxKind>) -> Result<SandboxKind, PolicyError> {
        let kind = asked.unwrap_or(self.kinds[0]);
        if self.kinds.contains(&kind) {
            return Ok(kind);
        }
        Err(PolicyError::KindNotRun {
            kind,
            runs: self
                .kinds
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The cap on captured stdout and on stderr for a task, or why it is refused.
    pub fn output_cap(&self, limits: &Limits) -> Result<u64, PolicyError> {
        bounded(
            "output_bytes",
            limits.output_bytes,
            self.output_bytes,
            self.max_output_bytes,
        )
    }

    /// The limits a task runs under, or why it cannot run on this pool.
    pub fn effective(&self, limits: &Limits) -> Result<Effective, PolicyError> {
        let d = &self.defaults;
        let m = &self.max;
        let timeout = match limits.timeout_secs {
            Some(s) if Duration::from_secs(s) > m.timeout => {
                return Err(PolicyError::TimeoutAboveMax {
                    asked: s,
                    max: m.timeout.as_secs(),
                })
            }
            Some(s) => Duration::from_secs(s),
            None => d.timeout,
        };
        let memory_bytes = bounded(
            "memory_bytes",
            limits.memory_bytes,
            d.memory_bytes,
            m.memory_bytes,
        )?;
        let pids = bounded("pids", limits.pids, d.pids, m.pids)?;
        let disk_bytes = bounded("disk_bytes", limits.disk_bytes, d.disk_bytes, m.disk_bytes)?;
        let cpus = match limits.cpus {
            Some(c) if c > m.cpus => {
                return Err(PolicyError::CpusAboveMax {
                    asked: c,
                    max: m.cpus,
                })
            }
            Some(c) => c,
            None => d.cpus,
        };
        let network = limits.network.is_on();
        if network && !self.allow_network {
            return Err(PolicyError::NetworkNotAllowed);
        }
        let network_allow = if network {
            crate::sandbox::net::grant(limits.network.asked(), &m.network_allow)?
        } else {
            Vec::new()
        };
        Ok(Effective {
            timeout,
            memory_bytes,
            cpus,
            pids,
            disk_bytes,
            output_file_bytes: d.output_file_bytes,
            network,
            network_allow,
        })
    }
}

fn parse_allowance(s: &str) -> Result<crate::sandbox::net::Allowance, String> {
    let a: crate::sandbox::net::Allowance = s.parse()?;
    if !a.net.addr().is_ipv4() {
        return Err(format!("`{s}`: the worker network is IPv4 only"));
    }
    Ok(a)
}

fn parse_bind(s: &str) -> Result<(PathBuf, PathBuf), String> {
    crate::sandbox::process::fs::parse_bind(s)
}

fn bounded(
    name: &'static str,
    asked: Option<u64>,
    default: u64,
    max: u64,
) -> Result<u64, PolicyError> {
    match asked {
        Some(v) if v > max => Err(PolicyError::AboveMax {
            name,
            asked: v,
            max,
        }),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Config {
        let mut all = vec!["krill-worker"];
        all.extend_from_slice(args);
        Config::parse_from(all)
    }

    #[test]
    fn defaults_and_maxima() {
        let p = config(&["--max-timeout", "1h"]).policy();
        let e = p.effective(&Limits::default()).expect("defaults fit");
        assert_eq!(e.timeout, DEFAULT_TIMEOUT.min(Duration::from_secs(3600)));
        let too_long = Limits {
            timeout_secs: Some(7200),
            ..Limits::default()
        };
        let err = p.effective(&too_long).expect_err("over the maximum");
        assert!(err.to_string().contains("maximum of 3600s"), "{err}");
        let net = Limits {
            network: true.into(),
            ..Limits::default()
        };
        assert!(p.effective(&net).is_err());
        let p = config(&[
            "--allow-network",
            "--network-allow",
            "10.20.0.0/16:5432,198.51.100.0/24",
        ])
        .policy();
        let whole = p.effective(&net).expect("allowed");
        assert!(whole.network);
        assert_eq!(whole.network_allow.len(), 2);
        let ask = |a: &[&str]| Limits {
            network: broker::protocol::Network::Allow(broker::protocol::NetworkAllow {
                allow: a.iter().map(|s| s.to_string()).collect(),
            }),
            ..Limits::default()
        };
        let some = p.effective(&ask(&["198.51.100.7:80"])).expect("within");
        assert_eq!(some.network_allow[0].to_string(), "198.51.100.7/32:80");
        let err = p.effective(&ask(&["10.20.0.0/16:22"])).expect_err("beyond");
        assert!(err.to_string().contains("--network-allow"), "{err}");
    }

    #[test]
    fn network_allow_is_ipv4_only() {
        let e = Config::try_parse_from(["krill-worker", "--network-allow", "[fd00::/8]:53"])
            .expect_err("v6");
        assert!(e.to_string().contains("IPv4 only"), "{e}");
        assert!(Config::try_parse_from(["krill-worker", "--network-allow", "10.0.0.0/8"]).is_ok());
    }

    #[test]
    fn config_checks() {
        assert!(config(&["--pool", "Bad Pool"]).validate().is_err());
        assert!(config(&["--concurrency", "0"]).validate().is_err());
        let e = config(&[])
            .validate()
            .expect_err("neither keys nor --allow-unsigned");
        assert!(
            e.contains("--trusted-keys") && e.contains("--allow-unsigned"),
            "{e}"
        );
        assert!(config(&["--allow-unsigned"]).validate().is_ok());
        assert!(config(&["--trusted-keys", "/k"]).validate().is_ok());
        assert!(config(&["--allow-unsigned", "--require-sealed-secrets"])
            .validate()
            .is_err());
        assert!(config(&["--allow-unsigned", "--max-validity", "3d"])
            .validate()
            .is_err());
        assert_eq!(
            config(&["--pool-key", "/a,/b", "--pool-key", "/c"])
                .pool_keys
                .len(),
            3
        );
        assert_eq!(
            config(&["--sandbox", "container,process"]).sandbox,
            vec![SandboxKind::Container, SandboxKind::Process]
        );
    }

    #[test]
    fn output_caps_that_cannot_fit_a_result_are_refused_at_start() {
        // An open pool, so that the caps alone decide.
        let open = |args: &[&str]| {
            let mut all = vec!["--allow-unsigned"];
            all.extend_from_slice(args);
            config(&all)
        };
        // The defaults fit RabbitMQ's default 128 MiB.
        let c = open(&[]);
        assert_eq!(c.result_budget(), 120 << 20);
        assert!(c.validate().is_ok(), "{:?}", c.validate());
        // 64 MiB each of stdout and stderr alone is 128 MiB.
        let err = open(&["--max-output-bytes", "64m"])
            .validate()
            .expect_err("cannot fit");
        assert!(err.contains("--max-output-bytes 67108864"), "{err}");
        assert!(err.contains("at most"), "{err}");
        // A RabbitMQ 4 broker (16 MiB) needs smaller caps.
        let err = open(&["--broker-max-message-bytes", "16m"])
            .validate()
            .expect_err("cannot fit");
        assert!(err.contains("max_message_size"), "{err}");
        let c = open(&[
            "--broker-max-message-bytes",
            "16m",
            "--max-output-bytes",
            "6m",
        ]);
        assert!(c.validate().is_ok(), "{:?}", c.validate());
    }
}
