//! The `krill` command line: parse, call the client library, print.
//!
//! Exit codes mirror the task (like `docker run`): the script's own code, 124 timed
//! out, 130 cancelled, 137 OOM-killed, 125 for anything on krill's side.

mod args;
mod gateway;
pub mod keys;
mod print;
mod status;
mod submit;

use std::process::ExitCode;

use clap::Parser;

pub use args::{Cli, Command, DeadCommand, KeysCommand};

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
    let key = cli.key.clone();
    let creds = || keys::credentials(cli.key.as_deref(), cli.pool_public_key.as_deref());
    let connect = |creds: crate::trust::Credentials| {
        let url = url.clone();
        async move { Ok::<_, anyhow::Error>(Client::connect(&url).await?.with_credentials(creds)) }
    };
    if let Some(gw) = cli.gateway_url.as_deref() {
        if let Some(code) = gateway::run(gw, cli.token.as_deref(), &cli.command).await? {
            return Ok(code);
        }
    }
    match cli.command {
        Command::Keys(cmd) => keys::run(cmd, key),
        Command::Submit(args) => submit::submit(connect(creds()?).await?, *args).await,
        Command::Wait(args) => submit::wait(connect(creds()?).await?, args).await,
        Command::Logs(args) => submit::logs(&url, args).await,
        Command::Status(args) => status::status(&url, args).await,
        Command::Cancel { id } => {
            let client = connect(creds()?).await?;
            client.cancel(&id).await?;
            eprintln!("krill: cancel sent for {id}");
            client.close().await;
            Ok(0)
        }
        Command::Drain { worker, all } => {
            let client = connect(creds()?).await?;
            let target = target(worker, all)?;
            client.drain(target.as_deref()).await?;
            eprintln!(
                "krill: drain sent to {}",
                target.as_deref().unwrap_or("all workers")
            );
            client.close().await;
            Ok(0)
        }
        Command::Dead(cmd) => dead(connect(creds()?).await?, cmd).await,
        Command::Resume { worker, all } => {
            let client = connect(creds()?).await?;
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

async fn dead(client: Client, cmd: DeadCommand) -> anyhow::Result<u8> {
    match cmd {
        DeadCommand::List { json } => print_dead(&client.dead_list().await?, json)?,
        DeadCommand::Replay { id, all } => {
            let id = target(id, all)?;
            let (done, skipped) = client.dead_replay(id.as_deref()).await?;
            print_replayed(&done, &skipped, id.as_deref())?;
        }
    }
    client.close().await;
    Ok(0)
}

/// What `krill dead list` prints (over AMQP or through the gateway).
fn print_dead(list: &[crate::dead::DeadLetter], json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    // Writes ignore errors: a closed pipe (`| head`) is not a failure.
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&list)?);
    } else if list.is_empty() {
        let _ = writeln!(out, "krill.dead is empty");
    } else {
        let _ = writeln!(out, "{:<38} {:<16} {:<22} REASON", "TASK", "POOL", "BY");
        for d in list {
            let _ = writeln!(
                out,
                "{:<38} {:<16} {:<22} {}",
                d.id.as_deref().unwrap_or("-"),
                d.pool.as_deref().unwrap_or("-"),
                d.by,
                match &d.detail {
                    Some(detail) => format!("{}: {detail}", d.reason),
                    None => d.reason.clone(),
                }
            );
        }
    }
    Ok(())
}

/// What `krill dead replay` prints; an error when nothing was replayed.
fn print_replayed(done: &[String], skipped: &[String], id: Option<&str>) -> anyhow::Result<()> {
    for d in done {
        println!("replayed {d}");
    }
    for s in skipped {
        eprintln!("krill: not replayed: {s}");
    }
    if done.is_empty() && skipped.is_empty() {
        anyhow::bail!(
            "nothing to replay{}",
            id.map(|i| format!(" with id {i}")).unwrap_or_default()
        );
    }
    Ok(())
}
