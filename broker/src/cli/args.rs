//! The CLI's flags and subcommands (every flag that configures also reads an env var).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::amqp::DEFAULT_AMQP_URL;
use crate::protocol::SandboxKind;
use crate::topology::DEFAULT_POOL;
use crate::units::{parse_duration, parse_size};

#[derive(Debug, Parser)]
#[command(
    name = "krill",
    version,
    about = "Submit scripts to a Krill worker pool and get their results"
)]
pub struct Cli {
    /// RabbitMQ URL.
    #[arg(long, env = "KRILL_AMQP_URL", default_value = DEFAULT_AMQP_URL, global = true, hide_env_values = true)]
    pub amqp_url: String,
    /// Key file that signs tasks and control messages and opens sealed outputs
    /// (default: ~/.config/krill/key, when it exists; `krill keys new` makes one).
    #[arg(long, env = "KRILL_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// The pool's public key, a file or the base64 key itself: secrets are sealed
    /// to it (default: ~/.config/krill/pool.pub, when it exists).
    #[arg(long, env = "KRILL_POOL_PUBLIC_KEY", global = true)]
    pub pool_public_key: Option<String>,
    /// Talk to a krill-gateway instead of RabbitMQ (submit, wait, cancel).
    #[arg(long, env = "KRILL_GATEWAY_URL", global = true)]
    pub gateway_url: Option<String>,
    /// The gateway's bearer token (`krill-gateway tokens add`).
    #[arg(long, env = "KRILL_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a script and (by default) wait for its result.
    Submit(Box<SubmitArgs>),
    /// Wait for the result of a submitted task.
    Wait(WaitArgs),
    /// Show a running task's live output.
    Logs(LogsArgs),
    /// Cancel a task, running or queued.
    Cancel { id: String },
    /// Stop a worker (or all) from claiming tasks; running tasks finish.
    Drain {
        worker: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Inspect and replay dead-lettered tasks (`krill.dead`).
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Let a drained worker (or all) claim tasks again.
    Resume {
        worker: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Show workers (live, draining, lost), their running tasks and each pool's depth.
    Status(StatusArgs),
    /// Make and show keys: your signing key, a pool's key pair.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a signing key (Ed25519, plus X25519 for sealed outputs) and print
    /// the line to paste into a worker's trusted-keys file.
    New {
        /// Where to write it (default: --key / KRILL_KEY, else ~/.config/krill/key).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The key's name in trusted-keys files, results and audit lines
        /// (default: user@host).
        #[arg(long)]
        name: Option<String>,
    },
    /// Print the public line of your key again.
    Show,
    /// Make a pool's key pair (X25519): FILE for the workers (--pool-key),
    /// FILE.pub for submitters (--pool-public-key).
    NewPool {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON (one document; one line per refresh with --watch).
    #[arg(long)]
    pub json: bool,
    /// Refresh in place every INTERVAL (default 2s) until Ctrl-C.
    #[arg(long, short = 'w', value_name = "INTERVAL", num_args = 0..=1,
          default_missing_value = "2s", value_parser = parse_duration)]
    pub watch: Option<Duration>,
    /// Also show this pool (repeatable), even when no worker serves it.
    #[arg(long, env = "KRILL_POOL", value_delimiter = ',')]
    pub pool: Vec<String>,
    /// How far back to look for heartbeats (workers silent longer are forgotten).
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    pub since: Duration,
    /// Also list workers that stopped cleanly.
    #[arg(long)]
    pub all: bool,
    /// RabbitMQ's management API (comma-separated, one per node; the first
    /// that answers is read): also show the cluster's health — nodes running,
    /// and each replicated Krill queue's leader and members online.
    /// Credentials in the URL, or else the AMQP URL's.
    #[arg(long, env = "KRILL_MANAGEMENT_URL", value_name = "URL[,URL…]")]
    pub management: Option<String>,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The script (everything after `--`).
    #[arg(last = true)]
    pub script: Vec<String>,
    /// Read the script from FILE (`-` for stdin).
    #[arg(short = 'f', long = "file", conflicts_with = "script")]
    pub file: Option<PathBuf>,
    /// Pool to submit to.
    #[arg(long, env = "KRILL_POOL", default_value = DEFAULT_POOL)]
    pub pool: String,
    /// Task id (default: a new UUID v7).
    #[arg(long)]
    pub id: Option<String>,
    /// Environment variable for the script (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Secret for the script, masked in all output: `K=V`, or `K` to take the value
    /// from this shell's environment (keeps it out of the process list).
    #[arg(long = "secret", value_name = "K[=V]")]
    pub secret: Vec<String>,
    /// Wall-clock deadline, like `90s` or `10m`.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Sandbox kind (default: the pool's).
    #[arg(long)]
    pub sandbox: Option<SandboxKind>,
    /// Container image (container sandbox).
    #[arg(long)]
    pub image: Option<String>,
    /// Memory limit, like `256m` or `1g`.
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// CPU limit in cores, like `0.5`.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Process/thread limit.
    #[arg(long)]
    pub pids: Option<u64>,
    /// Cap on captured stdout and stderr, each, like `10m`.
    #[arg(long, value_parser = parse_size)]
    pub output_bytes: Option<u64>,
    /// Size of the writable work dir and /tmp, like `64m`.
    #[arg(long, value_parser = parse_size)]
    pub disk: Option<u64>,
    /// Ask for network access (granted only if the pool allows it).
    #[arg(long)]
    pub network: bool,
    /// Ask for network with these non-public destinations too, `CIDR[:PORTS]`
    /// (comma-separated or repeated; implies --network), each within the pool's --network-allow.
    #[arg(long, value_delimiter = ',')]
    pub network_allow: Vec<String>,
    /// Interpreter and its arguments, space-separated (default `sh -e`).
    #[arg(long)]
    pub interpreter: Option<String>,
    /// Let the task run again if its worker is lost mid-run.
    #[arg(long)]
    pub retry_on_worker_loss: bool,
    /// Concurrency key: across the pool at most --max-concurrent tasks with this
    /// key run at once, in submit order (1-128 of A-Z a-z 0-9 _ . : / -).
    #[arg(long, env = "KRILL_CONCURRENCY_KEY")]
    pub concurrency_key: Option<String>,
    /// How many tasks with the key may run at once (default 1).
    #[arg(long, env = "KRILL_MAX_CONCURRENT", requires = "concurrency_key")]
    pub max_concurrent: Option<u32>,
    /// End the key's older tasks that have not started (`superseded`).
    #[arg(long, env = "KRILL_SUPERSEDE", requires = "concurrency_key")]
    pub supersede: bool,
    /// Print only the task id and return at once.
    #[arg(long, conflicts_with_all = ["json", "follow"])]
    pub no_wait: bool,
    /// Stream the output live while the task runs.
    #[arg(long)]
    pub follow: bool,
    /// Print the whole result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Show sensitive output values instead of `***`.
    #[arg(long)]
    pub show_sensitive: bool,
    /// Give up waiting after this long (the task keeps its place).
    #[arg(long, value_parser = parse_duration)]
    pub wait_timeout: Option<Duration>,
}

#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// List dead letters with the reason each was dead-lettered.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Put a dead task (or all) back on its pool's queue.
    Replay {
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    pub id: String,
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub show_sensitive: bool,
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub id: String,
    /// Keep following until the task ends (the only mode: logs are live, not stored).
    #[arg(long, short = 'f')]
    pub follow: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::parse_from([
            "krill",
            "submit",
            "--timeout",
            "90s",
            "--env",
            "A=1",
            "--",
            "echo hi",
        ]);
        let Command::Submit(args) = cli.command else {
            panic!("not submit")
        };
        assert_eq!(args.timeout, Some(Duration::from_secs(90)));
        assert_eq!(args.script, vec!["echo hi"]);
    }
}
