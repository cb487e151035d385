//! The `krill` command line: parse, call the client library, print.
//!
//! Exit codes mirror the task (like `docker run`): the script's own code, 124 timed
//! out, 130 cancelled, 137 OOM-killed, 125 for anything on krill's side.

mod args;
mod print;
mod submit;

use std::process::ExitCode;

use clap::Parser;

pub use args::{parse_size, Cli, Command};

use crate::client::Client;

/// Exit code for errors on krill's side (broker unreachable, invalid input, …).
pub const EXIT_KRILL_ERROR: u8 = 125;

/// Runs the CLI and returns the process exit code.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("krill: {e:#}");
            ExitCode::from(EXIT_KRILL_ERROR)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let url = cli.amqp_url.clone();
    match cli.command {
        Command::Submit(args) => submit::submit(&url, *args).await,
        Command::Wait(args) => submit::wait(&url, args).await,
        Command::Logs(args) => submit::logs(&url, args).await,
        Command::Cancel { id } => {
            let client = Client::connect(&url).await?;
            client.cancel(&id).await?;
            eprintln!("krill: cancel sent for {id}");
            client.close().await;
            Ok(0)
        }
        Command::Drain { worker, all } => {
            let client = Client::connect(&url).await?;
            let target = target(worker, all)?;
            client.drain(target.as_deref()).await?;
            eprintln!(
                "krill: drain sent to {}",
                target.as_deref().unwrap_or("all workers")
            );
            client.close().await;
            Ok(0)
        }
        Command::Resume { worker, all } => {
            let client = Client::connect(&url).await?;
            let target = target(worker, all)?;
            client.resume(target.as_deref()).await?;
            eprintln!(
                "krill: resume sent to {}",
                target.as_deref().unwrap_or("all workers")
            );
            client.close().await;
            Ok(0)
        }
    }
}

fn target(worker: Option<String>, all: bool) -> anyhow::Result<Option<String>> {
    match (worker, all) {
        (Some(w), false) => Ok(Some(w)),
        (None, true) => Ok(None),
        _ => anyhow::bail!("name one worker, or pass --all"),
    }
}
