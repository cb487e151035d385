//! `krill` through a krill-gateway (`KRILL_GATEWAY_URL` + `KRILL_TOKEN`):
//! submit, wait and cancel over HTTP, with the same output and exit codes.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use super::args::{Command, SubmitArgs, WaitArgs};
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
        _ => Ok(None),
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
