//! The command line of `krill-bench` and the run it drives.

use std::path::PathBuf;

use crate::procs::{is_file, loadavg, Env};
use crate::report::Report;
use crate::scenarios::{self, Bench, Opts};
use anyhow::Context;

/// `krill-bench`'s flags.
#[derive(Debug, clap::Parser)]
#[command(name = "krill-bench")]
pub struct Args {
    /// Scenarios to run (1-10), comma-separated (10 needs --cluster-url).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,5,6,7,8,9")]
    pub only: Vec<u8>,
    /// Tasks per throughput series (scenario 1).
    #[arg(long, default_value_t = 10_000)]
    pub tasks: usize,
    /// Tasks per latency series (scenarios 2 and 9).
    #[arg(long, default_value_t = 1_000)]
    pub latency_tasks: usize,
    /// Tasks per point of the curve (scenario 8): a burst of this many, then
    /// half as many in a closed loop, and as many spawns of the floor.
    #[arg(long, default_value_t = 1_000)]
    pub curve_tasks: usize,
    /// Tasks per container series (scenario 3).
    #[arg(long, default_value_t = 200)]
    pub container_tasks: usize,
    /// Pre-started pool sizes to measure in scenario 3 (0 = fresh containers).
    #[arg(long, value_delimiter = ',', default_value = "0,4")]
    pub prestart: Vec<u32>,
    /// Label for scenario 3's rows (default: `runtime NAME` with --runtime).
    #[arg(long, default_value = "")]
    pub tag: String,
    /// OCI runtime for scenario 3, as registered with dockerd (e.g. `crun`):
    /// the workers get `--container-runtime`, `docker run` gets `--runtime`.
    #[arg(long)]
    pub runtime: Option<String>,
    /// MiB written by the output task (scenario 4).
    #[arg(long, default_value_t = 200)]
    pub output_mib: u64,
    /// Secrets registered on the output task.
    #[arg(long, default_value_t = 20)]
    pub secrets: usize,
    /// Sample the machine with `perf` during scenarios 1 and 3.
    #[arg(long)]
    pub profile: bool,
    /// The virtualenv's python with Celery (skip Celery when missing).
    #[arg(long, default_value = "bench/.venv/bin/python")]
    pub python: PathBuf,
    /// Kombu URL of the same broker, for Celery.
    #[arg(
        long,
        env = "BENCH_CELERY_BROKER",
        default_value = "pyamqp://guest:guest@127.0.0.1:5672//"
    )]
    pub celery_broker: String,
    #[arg(long, env = "KRILL_AMQP_URL", default_value = broker::amqp::DEFAULT_AMQP_URL, hide_env_values = true)]
    pub amqp_url: String,
    /// The URL list of a three-node cluster (`scripts/cluster urls`; `bench/run
    /// --cluster` starts it and passes it): scenario 10 runs scenarios 1 and 2
    /// on it beside the single node (`--amqp-url`), in the same run.
    #[arg(long, env = "KRILL_BENCH_CLUSTER_URL", hide_env_values = true)]
    pub cluster_url: Option<String>,
    /// Rounds of scenario 10 (each measures every target once, alternating).
    #[arg(long, default_value_t = 2)]
    pub cluster_rounds: usize,
    /// Where the markdown and JSON results go.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// The command line to print as "reproduce".
    #[arg(long, default_value = "bench/run")]
    pub command: String,
}

/// Runs the chosen scenarios and writes the results.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let root = std::env::current_dir()?;
    let env = Env {
        // KRILL_BENCH_BIN_DIR: other binaries (a debug build, another tree's) — say so with the figures.
        bin_dir: std::env::var_os("KRILL_BENCH_BIN_DIR")
            .map_or_else(|| root.join("target/release"), std::path::PathBuf::from),
        stub: root.join("target/krill-stub"),
        root: root.clone(),
        amqp_url: args.amqp_url.clone(),
    };
    let celery = is_file(&args.python).then(|| crate::celery::Celery {
        python: root.join(&args.python),
        dir: root.join("bench/celery"),
        broker: args.celery_broker.clone(),
        amqp_url: args.amqp_url.clone(),
    });
    std::fs::create_dir_all(&args.out)?;
    let profile_dir = args.profile.then(|| root.join(&args.out));
    let mut report = Report {
        started_at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        command: args.command.clone(),
        machine: machine(),
        load_before: loadavg(),
        git: git_rev(),
        ..Report::default()
    };
    if celery.is_none() {
        report.note(format!(
            "Celery skipped: {} not found (bench/run makes it)",
            args.python.display()
        ));
    }
    let mut b = Bench {
        env,
        celery,
        opts: Opts {
            tasks: args.tasks,
            latency_tasks: args.latency_tasks,
            curve_tasks: args.curve_tasks,
            container_tasks: args.container_tasks,
            prestart: args.prestart.clone(),
            tag: match (args.tag.is_empty(), &args.runtime) {
                (false, _) => format!(", {}", args.tag),
                (true, Some(r)) => format!(", runtime {r}"),
                (true, None) => String::new(),
            },
            runtime: args.runtime.clone(),
            output_mib: args.output_mib,
            secrets: args.secrets,
            containers: args.only.contains(&3),
            out: args.out.clone(),
            profile_dir,
        },
        report,
    };
    for s in &args.only {
        let r = match s {
            1 => scenarios::throughput(&mut b).await,
            2 => scenarios::latency(&mut b).await,
            3 => scenarios::containers(&mut b).await,
            4 => scenarios::output(&mut b).await,
            5 => scenarios::memory(&mut b).await,
            6 => scenarios::trust(&mut b).await,
            7 => scenarios::gateway(&mut b).await,
            8 => scenarios::curve(&mut b).await,
            9 => scenarios::tail(&mut b).await,
            10 => match &args.cluster_url {
                Some(url) => scenarios::cluster(&mut b, url, args.cluster_rounds).await,
                None => Err(anyhow::anyhow!(
                    "scenario 10 needs --cluster-url (bench/run --cluster passes it)"
                )),
            },
            other => Err(anyhow::anyhow!("no scenario {other}")),
        };
        if let Err(e) = r {
            b.report.note(format!("scenario {s} failed: {e:#}"));
        }
    }
    b.report.load_after = loadavg();
    let md = b.report.markdown();
    println!("\n{md}");
    std::fs::write(args.out.join("latest.md"), &md).context("writing latest.md")?;
    std::fs::write(
        args.out.join("latest.json"),
        serde_json::to_vec_pretty(&b.report)?,
    )?;
    println!("written: {}", args.out.join("latest.md").display());
    Ok(())
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    format!("{cpus} CPUs ({model})")
}

fn git_rev() -> String {
    std::process::Command::new("git")
        .args(["log", "-1", "--format=commit %h"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
