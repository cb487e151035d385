//! `krill-worker`: claims tasks from a pool queue and runs each in a single-use sandbox.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    // The process sandbox re-executes this binary as its in-namespace helper.
    if let Some(code) = worker::sandbox::process::init::run_if_requested() {
        std::process::exit(code);
    }
    let cfg = worker::config::Config::parse();
    worker::telemetry::init(cfg.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("krill-worker")
        .build()?;
    runtime.block_on(worker::daemon::run(cfg))
}
