//! `krill` through a krill-gateway (`KRILL_GATEWAY_URL` + `KRILL_TOKEN`):
//! submit, wait, logs, cancel, status, drain/resume and dead list/replay
//! over HTTP, with the same output and exit codes (`keys` stays local).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use super::args::{Command, DeadCommand, LogsArgs, StatusArgs, SubmitArgs, WaitArgs};
use super::submit::{build_task, print_result};
use crate::protocol::{Status, TaskResult};

/// Longest single long poll asked of the gateway.
const POLL: Duration = Duration::from_secs(60);

/// Runs `cmd` through the gateway; `None` for a command the gateway does not
/// serve yet (it then goes to RabbitMQ as before).
pub async fn run(url: &str, token: Option<&str>, cmd: &Command) -> anyhow::Result<Option<u8>> {
    let Some(token) = token else {
        bail!("KRILL_GATEWAY_URL is set but KRILL_TOKEN is not: ask the operator for a token (krill-gateway tokens add)");
    };
    let gw = Gateway {
        base: url.trim_end_matches('/').to_string(),
        token: token.to_string(),
        http: reqwest::Client::new(),
    };
    match cmd {
        Command::Submit(args) => gw.submit(args).await.map(Some),
        Command::Wait(args) => gw.wait_cmd(args).await.map(Some),
        Command::Cancel { id } => {
            gw.call(reqwest::Method::DELETE, &format!("/v1/tasks/{id}"), None)
                .await?;
            eprintln!("krill: cancel sent for {id}");
            Ok(Some(0))
        }
        Command::Logs(args) => gw.logs(args).await.map(Some),
        Command::Status(args) => gw.status(args).await.map(Some),
        Command::Drain { worker, all } => gw.control("drain", worker, *all).await.map(Some),
        Command::Resume { worker, all } => gw.control("resume", worker, *all).await.map(Some),
        Command::Dead(cmd) => gw.dead(cmd).await.map(Some),
        Command::Keys(_) => Ok(None),
    }
}

struct Gateway {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Gateway {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the gateway at {}", self.base))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "gateway: {} ({status})",
                v["error"].as_str().unwrap_or("no message")
            );
        }
        Ok(v)
    }

    /// `krill logs ID`: the task's SSE stream (from its first chunk for a task
    /// the gateway submitted, the stored output once finished), then its end
    /// as over AMQP.
    async fn logs(&self, args: &LogsArgs) -> anyhow::Result<u8> {
        use std::io::Write;
        let id = args.id.as_str();
        // 404 here (unknown, or not the caller's): the gateway's message.
        self.call(reqwest::Method::GET, &format!("/v1/tasks/{id}"), None)
            .await?;
        let mut resp = self
            .http
            .get(format!("{}/v1/tasks/{id}/logs", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the gateway at {}", self.base))?;
        if !resp.status().is_success() {
            bail!("gateway: the logs of {id} ({})", resp.status());
        }
        // Bytes, not text, until a block is whole: a chunk may end inside a character.
        let mut pending: Vec<u8> = Vec::new();
        'stream: while let Some(bytes) = resp.chunk().await.context("reading the log stream")? {
            pending.extend_from_slice(&bytes);
            while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = pending.drain(..end + 2).collect();
                let (event, data) = sse_event(&String::from_utf8_lossy(&block));
                match event.as_str() {
                    "stdout" => {
                        let _ = std::io::stdout().lock().write_all(data.as_bytes());
                    }
                    "stderr" => {
                        let _ = std::io::stderr().lock().write_all(data.as_bytes());
                    }
                    "cut" => eprintln!("krill: {data}"),
                    "end" => break 'stream,
                    _ => {}
                }
            }
        }
        let _ = std::io::stdout().flush();
        let result = self.wait(id, Some(Duration::from_secs(30))).await?;
        Ok(print_result(&result, false, false, true))
    }

    /// `krill status`: the gateway's `/v1/workers` and `/v1/pools` (the same
    /// report the broker gives), printed the same way.
    async fn status(&self, args: &StatusArgs) -> anyhow::Result<u8> {
        let query = format!(
            "?since={}&pool={}",
            args.since.as_secs(),
            args.pool.join(",")
        );
        loop {
            let w = self
                .call(reqwest::Method::GET, &format!("/v1/workers{query}"), None)
                .await?;
            let p = self
                .call(reqwest::Method::GET, &format!("/v1/pools{query}"), None)
                .await?;
            let report = crate::status::Report {
                generated_at: chrono::Utc::now(),
                since_secs: args.since.as_secs(),
                workers: serde_json::from_value(w["workers"].clone())
                    .context("the gateway's workers do not parse")?,
                keys: serde_json::from_value(w["keys"].clone())
                    .context("the gateway's keys do not parse")?,
                pools: serde_json::from_value(p["pools"].clone())
                    .context("the gateway's pools do not parse")?,
            };
            let Some(every) = args.watch else {
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", super::status::table(&report, args.all));
                }
                return Ok(0);
            };
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                let table = super::status::table(&report, args.all).replace('\n', "\x1b[K\n");
                print!("\x1b[H{table}\x1b[J");
            }
            tokio::select! {
                _ = tokio::time::sleep(every.max(Duration::from_millis(200))) => {}
                _ = tokio::signal::ctrl_c() => return Ok(0),
            }
        }
    }

    /// `krill drain|resume WORKER|--all`.
    async fn control(&self, what: &str, worker: &Option<String>, all: bool) -> anyhow::Result<u8> {
        let target = super::target(worker.clone(), all)?;
        let path = target.as_deref().unwrap_or("all");
        self.call(
            reqwest::Method::POST,
            &format!("/v1/workers/{path}/{what}"),
            None,
        )
        .await?;
        eprintln!(
            "krill: {what} sent to {}",
            target.as_deref().unwrap_or("all workers")
        );
        Ok(0)
    }

    /// `krill dead list|replay`.
    async fn dead(&self, cmd: &DeadCommand) -> anyhow::Result<u8> {
        match cmd {
            DeadCommand::List { json } => {
                super::print_dead(&self.dead_list().await?, *json)?;
            }
            DeadCommand::Replay { id, all } => {
                let id = super::target(id.clone(), *all)?;
                // `--all`: every dead letter that has an id, one by one.
                let ids = match &id {
                    Some(i) => vec![i.clone()],
                    None => self
                        .dead_list()
                        .await?
                        .into_iter()
                        .filter_map(|d| d.id)
                        .collect(),
                };
                let mut done = Vec::new();
                for i in ids {
                    self.call(reqwest::Method::POST, &format!("/v1/dead/{i}/replay"), None)
                        .await?;
                    done.push(i);
                }
                super::print_replayed(&done, &[], id.as_deref())?;
            }
        }
        Ok(0)
    }

    async fn dead_list(&self) -> anyhow::Result<Vec<crate::dead::DeadLetter>> {
        let v = self.call(reqwest::Method::GET, "/v1/dead", None).await?;
        serde_json::from_value(v["dead"].clone()).context("the gateway's dead letters do not parse")
    }

    async fn submit(&self, args: &SubmitArgs) -> anyhow::Result<u8> {
        if args.follow {
            eprintln!("krill: --follow through the gateway prints the output once the task ends");
        }
        let task = build_task(args)?;
        let body = serde_json::to_vec(&task)?;
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/tasks?pool={}", args.pool),
                Some(body),
            )
            .await?;
        let id = v["id"].as_str().context("the gateway answered no id")?;
        if args.no_wait {
            println!("{id}");
            return Ok(0);
        }
        let result = self.wait(id, args.wait_timeout).await?;
        Ok(print_result(&result, args.json, args.show_sensitive, false))
    }

    async fn wait_cmd(&self, args: &WaitArgs) -> anyhow::Result<u8> {
        let result = self.wait(&args.id, args.timeout).await?;
        Ok(print_result(&result, args.json, args.show_sensitive, false))
    }

    /// Long-polls until the task has finished (or `timeout`).
    async fn wait(&self, id: &str, timeout: Option<Duration>) -> anyhow::Result<TaskResult> {
        let start = Instant::now();
        loop {
            let left = timeout.map(|t| t.saturating_sub(start.elapsed()));
            if left == Some(Duration::ZERO) {
                bail!("no result for task {id} within {timeout:?}");
            }
            let poll = left.map_or(POLL, |l| l.min(POLL)).as_secs().max(1);
            let v = self
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/tasks/{id}/wait?timeout={poll}"),
                    None,
                )
                .await?;
            if v["state"] != "finished" {
                continue;
            }
            if !v["result"].is_null() {
                return serde_json::from_value(v["result"].clone())
                    .context("the gateway's result does not parse");
            }
            // Submitted straight to AMQP: the history has the status, not the output.
            let status: Status = serde_json::from_value(v["status"].clone())
                .context("the gateway's status does not parse")?;
            let mut r = TaskResult::new(id.to_string(), status);
            r.error = v["error"].as_str().map(str::to_string);
            r.exit_code = v["exit_code"].as_i64().map(|c| c as i32);
            r.worker = v["worker"].as_str().map(str::to_string);
            return Ok(r);
        }
    }
}

/// The event name and the data (lines joined by `\n`) of one SSE block.
fn sse_event(block: &str) -> (String, String) {
    let mut event = String::from("message");
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        if let Some(e) = line.strip_prefix("event:") {
            event = e.trim().to_string();
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push(d.strip_prefix(' ').unwrap_or(d));
        }
    }
    (event, data.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::sse_event;

    #[test]
    fn sse_blocks_read_back_to_the_chunk() {
        assert_eq!(
            sse_event("event: stdout\ndata: first\ndata: \n\n"),
            ("stdout".to_string(), "first\n".to_string())
        );
        assert_eq!(sse_event("event: end\ndata: \n\n").0, "end");
    }
}
