//! `krill-bench`: runs the scenarios of issue 8 and prints one table; `bench/run`
//! builds everything first and is the command to use.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    krill_bench::cli::run(krill_bench::cli::Args::parse()).await
}
