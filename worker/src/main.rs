//! `krill-worker`: claims tasks from a pool queue and runs each in a single-use sandbox.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cfg = worker::config::Config::parse();
    worker::telemetry::init(cfg.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("krill-worker")
        .build()?;
    runtime.block_on(worker::daemon::run(cfg))
}
