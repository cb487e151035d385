//! `krill submit`, `krill wait` and `krill logs`.

use std::io::{Read, Write};

use anyhow::{bail, Context};

use super::args::{LogsArgs, SubmitArgs, WaitArgs};
use super::print;
use crate::client::{Client, LogFollower};
use crate::protocol::{Secret, Stream, Task, TaskResult};

/// Builds the task from the flags.
pub fn build_task(args: &SubmitArgs) -> anyhow::Result<Task> {
    let script = match &args.file {
        Some(path) if path.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the script from stdin")?;
            s
        }
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the script from {}", path.display()))?,
        None if args.script.is_empty() => {
            bail!("no script: give it after `--`, or with -f FILE (-f - for stdin)")
        }
        None => args.script.join(" "),
    };
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let mut task = Task::new(id, script);
    if let Some(interp) = &args.interpreter {
        task.interpreter = interp.split_whitespace().map(str::to_string).collect();
    }
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env `{kv}` is not K=V"))?;
        task.env.insert(k.to_string(), v.to_string());
    }
    for kv in &args.secret {
        let (k, v) = match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (
                kv.clone(),
                std::env::var(kv).with_context(|| {
                    format!("--secret {kv}: no such variable in this environment")
                })?,
            ),
        };
        task.secrets.insert(k, Secret(v));
    }
    task.sandbox = args.sandbox;
    task.image = args.image.clone();
    let l = &mut task.limits;
    l.timeout_secs = args.timeout.map(|d| d.as_secs().max(1));
    l.memory_bytes = args.memory;
    l.cpus = args.cpus;
    l.pids = args.pids;
    l.output_bytes = args.output_bytes;
    l.disk_bytes = args.disk;
    l.network = args.network;
    task.retry_on_worker_loss = args.retry_on_worker_loss;
    task.submitted_at = Some(chrono::Utc::now());
    task.validate()?;
    Ok(task)
}

pub async fn submit(url: &str, args: SubmitArgs) -> anyhow::Result<u8> {
    let task = build_task(&args)?;
    let client = Client::connect(url).await?;
    let follower = if args.follow {
        Some(client.follow(&task.id).await?)
    } else {
        None
    };
    client.submit(&args.pool, &task).await?;
    if args.no_wait {
        println!("{}", task.id);
        client.close().await;
        return Ok(0);
    }
    if let Some(follower) = follower {
        stream_logs(follower).await?;
    }
    let result = client.wait(&task.id, args.wait_timeout).await?;
    client.close().await;
    Ok(report(&result, args.json, args.show_sensitive, args.follow))
}

pub async fn wait(url: &str, args: WaitArgs) -> anyhow::Result<u8> {
    let client = Client::connect(url).await?;
    let result = client.wait(&args.id, args.timeout).await?;
    client.close().await;
    Ok(report(&result, args.json, args.show_sensitive, false))
}

pub async fn logs(url: &str, args: LogsArgs) -> anyhow::Result<u8> {
    let client = Client::connect(url).await?;
    let follower = client.follow(&args.id).await?;
    eprintln!(
        "krill: following {} (live output only; earlier output is in the result)",
        args.id
    );
    stream_logs(follower).await?;
    client.close().await;
    Ok(0)
}

/// Prints chunks until the last one.
async fn stream_logs(mut follower: LogFollower) -> anyhow::Result<()> {
    while let Some(chunk) = follower.next().await {
        match chunk.stream {
            Stream::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(chunk.data.as_bytes())?;
                out.flush()?;
            }
            Stream::Stderr => {
                let mut err = std::io::stderr().lock();
                err.write_all(chunk.data.as_bytes())?;
                err.flush()?;
            }
        }
        if chunk.eof {
            break;
        }
    }
    Ok(())
}

/// Prints the result and returns the exit code mirroring it.
fn report(result: &TaskResult, json: bool, show_sensitive: bool, output_already_shown: bool) -> u8 {
    if json {
        let shown = print::for_display(result, show_sensitive);
        match serde_json::to_string_pretty(&shown) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("krill: {e}"),
        }
    } else {
        print::human(result, show_sensitive, output_already_shown);
    }
    result.exit_code_for_cli().clamp(0, 255) as u8
}
