//! `krill submit`, `krill wait` and `krill logs`.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{bail, Context};

use super::args::{LogsArgs, SubmitArgs, WaitArgs};
use super::print;
use crate::client::{Client, LogFollower, Peek, ProgressWatch};
use crate::protocol::{Secret, Status, Stream, Task, TaskResult, TaskState};

/// Once the task has ended, how long live chunks still in flight are waited for.
pub const LOG_DRAIN: Duration = Duration::from_secs(2);

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
        task.secrets.insert(k, Secret(v).into());
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
    l.network = if args.network_allow.is_empty() {
        crate::protocol::Network::Switch(args.network)
    } else {
        crate::protocol::Network::Allow(crate::protocol::NetworkAllow {
            allow: args.network_allow.clone(),
        })
    };
    task.retry_on_worker_loss = args.retry_on_worker_loss;
    task.concurrency_key = args.concurrency_key.clone();
    task.max_concurrent = args.max_concurrent;
    task.supersede = args.supersede;
    task.submitted_at = Some(chrono::Utc::now());
    task.validate()?;
    Ok(task)
}

pub async fn submit(client: Client, args: SubmitArgs) -> anyhow::Result<u8> {
    let task = build_task(&args)?;
    let creds = client.credentials();
    if creds.identity.is_none() {
        eprintln!(
            "krill: no signing key (KRILL_KEY, or `krill keys new`): the task goes unsigned; \
             a pool with trusted keys dead-letters it without an answer"
        );
    }
    if creds.pool_public_key.is_none() && !task.secrets.is_empty() {
        eprintln!(
            "krill: no pool public key (--pool-public-key): secrets travel in plain text \
             and a pool that requires sealed secrets rejects them"
        );
    }
    let follower = if args.follow {
        Some(client.follow(&task.id).await?)
    } else {
        None
    };
    let progress = if args.no_wait {
        None
    } else {
        Some(client.watch_progress(&task.id).await?)
    };
    client.submit(&args.pool, &task).await?;
    if args.no_wait {
        println!("{}", task.id);
        client.close().await;
        return Ok(0);
    }
    let result = match follower {
        Some(mut follower) => {
            // Print chunks while waiting: the result, not the last chunk, ends it
            // (a chunk can be lost; the result cannot).
            let wait = with_progress(progress, client.wait(&task.id, args.wait_timeout));
            let mut live = Live::default();
            let result = follow_until(&mut follower, &mut live, wait).await?;
            live.note_gaps(&follower, &task.id);
            result
        }
        None => with_progress(progress, client.wait(&task.id, args.wait_timeout)).await?,
    };
    let code = report(&client, result, args.json, args.show_sensitive, args.follow);
    client.close().await;
    Ok(code)
}

/// Runs `fut` while telling on stderr, in one line each, when the task starts
/// waiting for its concurrency key (and why) and when it starts after a wait.
pub async fn with_progress<T>(
    progress: Option<ProgressWatch>,
    fut: impl std::future::Future<Output = T>,
) -> T {
    let Some(mut progress) = progress else {
        return fut.await;
    };
    tokio::pin!(fut);
    let mut last: Option<String> = None;
    let mut watching = true;
    loop {
        tokio::select! {
            out = &mut fut => return out,
            ev = progress.next(), if watching => match ev {
                Some(ev) if ev.state == TaskState::Blocked => {
                    if let Some(b) = &ev.blocked {
                        // Said again only when what it waits for changes.
                        let what = (b.reason, b.holders.iter().map(|h| h.task_id.clone()).collect::<Vec<_>>(), b.ahead);
                        let now = format!("{what:?}");
                        if last.as_deref() != Some(now.as_str()) {
                            eprintln!("krill: {}", b.describe(chrono::Utc::now()));
                            last = Some(now);
                        }
                    }
                }
                Some(ev) if ev.state == TaskState::Started => {
                    if last.is_some() {
                        eprintln!("krill: started on worker {} after waiting", ev.worker);
                    }
                    watching = false;
                }
                Some(_) => {}
                None => watching = false,
            },
        }
    }
}

/// What a follower printed.
#[derive(Debug, Default)]
struct Live {
    eof: bool,
    ended: bool,
}

impl Live {
    fn note_gaps(&self, follower: &LogFollower, id: &str) {
        if follower.missed() > 0 || !self.eof {
            eprintln!(
                "krill: the live output of {id} is incomplete ({} chunk(s) missed{}); \
                 the result holds the whole (capped) output: krill wait {id} --json",
                follower.missed(),
                if self.eof { "" } else { ", end not seen" }
            );
        }
    }
}

/// Prints chunks until `end` completes, then those still in flight (until the
/// last chunk, or [`LOG_DRAIN`]).
async fn follow_until<T, F>(
    follower: &mut LogFollower,
    live: &mut Live,
    end: F,
) -> anyhow::Result<T>
where
    F: std::future::Future<Output = Result<T, crate::client::ClientError>>,
{
    tokio::pin!(end);
    let value = loop {
        tokio::select! {
            r = &mut end => break r?,
            chunk = follower.next(), if !live.eof && !live.ended => match chunk {
                Some(chunk) => print_chunk(&chunk, live)?,
                None => live.ended = true,
            },
        }
    };
    let drain = tokio::time::sleep(LOG_DRAIN);
    tokio::pin!(drain);
    while !live.eof && !live.ended {
        tokio::select! {
            _ = &mut drain => break,
            chunk = follower.next() => match chunk {
                Some(chunk) => print_chunk(&chunk, live)?,
                None => live.ended = true,
            },
        }
    }
    Ok(value)
}

pub async fn wait(client: Client, args: WaitArgs) -> anyhow::Result<u8> {
    let progress = client.watch_progress(&args.id).await?;
    let result = with_progress(Some(progress), client.wait(&args.id, args.timeout)).await?;
    let code = report(&client, result, args.json, args.show_sensitive, false);
    client.close().await;
    Ok(code)
}

/// `krill logs ID --follow`: the task's live output from now on, then its
/// outputs and exit code when its result can be seen (without taking it).
pub async fn logs(url: &str, args: LogsArgs) -> anyhow::Result<u8> {
    let id = args.id.as_str();
    let client = Client::connect(url).await?;
    // Bind first, then look: nothing that happens in between is missed.
    let mut follower = client.follow(id).await?;
    let mut finished = client.watch_finished(id).await?;
    match client.peek(id).await? {
        Peek::Missing => bail!(
            "no task {id} waiting for its result: unknown, or finished and its result \
             already taken (live output is not stored)"
        ),
        Peek::Done(result) => {
            eprintln!("krill: task {id} has already finished; its output from the result:");
            client.close().await;
            return Ok(print_result(&result, false, false, false));
        }
        Peek::Pending => {}
    }
    eprintln!("krill: following {id} (live output only; earlier output is in the result)");
    let mut live = Live::default();
    let event = follow_until(&mut follower, &mut live, async {
        Ok(finished.next().await)
    })
    .await?;
    // The result, if nobody has taken it yet; else what the event says.
    let mut result = None;
    for _ in 0..20 {
        match client.peek(id).await? {
            Peek::Done(r) => {
                result = Some(*r);
                break;
            }
            Peek::Missing => break,
            Peek::Pending => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    client.close().await;
    if let Some(result) = result {
        live.note_gaps(&follower, id);
        return Ok(print_result(&result, false, false, true));
    }
    match event {
        Some(ev) => {
            let status = ev.status.unwrap_or(Status::Failed);
            eprintln!(
                "krill: task {id} {status}{}{} (its result went to another waiter)",
                if ev.error.is_some() { ": " } else { "" },
                print::escape(ev.error.as_deref().unwrap_or(""))
            );
            let mut r = TaskResult::new(id.to_string(), status);
            r.exit_code = None;
            Ok(r.exit_code_for_cli().clamp(0, 255) as u8)
        }
        None => bail!("lost the connection before task {id} ended"),
    }
}

/// Prints one live chunk to stdout or stderr.
fn print_chunk(chunk: &crate::protocol::LogChunk, live: &mut Live) -> anyhow::Result<()> {
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
    live.eof |= chunk.eof;
    Ok(())
}

/// Opens sealed outputs with the client's key when they are to be shown, then
/// prints the result and returns the exit code mirroring it.
fn report(
    client: &Client,
    mut result: TaskResult,
    json: bool,
    show_sensitive: bool,
    output_already_shown: bool,
) -> u8 {
    if show_sensitive && result.outputs.iter().any(|o| o.sealed.is_some()) {
        match client.credentials().identity.as_deref() {
            Some(id) => {
                for name in crate::trust::open_result_outputs(&mut result, id) {
                    eprintln!(
                        "krill: sensitive output `{name}` is sealed to another key than {}; shown as ***",
                        id.name
                    );
                }
            }
            None => eprintln!(
                "krill: sensitive outputs are sealed and no key (KRILL_KEY) opens them; shown as ***"
            ),
        }
    }
    print_result(&result, json, show_sensitive, output_already_shown)
}

/// Prints the result and returns the exit code mirroring it.
pub(crate) fn print_result(
    result: &TaskResult,
    json: bool,
    show_sensitive: bool,
    output_already_shown: bool,
) -> u8 {
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
