//! The alternatives Krill is measured against: spawning the command directly
//! (bare, or in fresh namespaces through util-linux `unshare`), a bare RabbitMQ
//! request/reply round trip, and `docker run --rm`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, ConnectionProperties};

use crate::procs::delete_queue;

/// What runs `sh -c cmd`: directly, or in fresh namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spawn {
    /// `sh -c cmd`.
    Raw,
    /// `unshare --mount --pid --ipc --uts --net --fork sh -c cmd`: the floor of
    /// any sandbox with fresh namespaces per task (no cgroup, no filesystem
    /// view, no privilege drop).
    Namespaced,
}

impl Spawn {
    fn command(self) -> Command {
        match self {
            Spawn::Raw => Command::new("sh"),
            Spawn::Namespaced => {
                let mut c = Command::new("unshare");
                c.args([
                    "--mount", "--pid", "--ipc", "--uts", "--net", "--fork", "sh",
                ]);
                c
            }
        }
    }
}

/// Runs `sh -c cmd` to the end, stdout and stderr read through pipes (as the
/// worker does); returns its exit status success.
pub fn spawn_once(how: Spawn, cmd: &str) -> bool {
    how.command()
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Spawns and reaps `sh -c cmd` `n` times over `spawners` threads; returns the elapsed time.
pub async fn spawn_rate(how: Spawn, cmd: &str, n: usize, spawners: usize) -> Duration {
    let cmd = cmd.to_string();
    tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for i in 0..spawners {
                let share = n / spawners + usize::from(i < n % spawners);
                let cmd = &cmd;
                s.spawn(move || {
                    for _ in 0..share {
                        spawn_once(how, cmd);
                    }
                });
            }
        });
        t0.elapsed()
    })
    .await
    .unwrap_or_default()
}

/// [`spawn_rate`], also timing each spawn: (elapsed, each spawn's duration),
/// the floor at `spawners` parallelism (scenario 8).
pub async fn spawn_floor(
    how: Spawn,
    cmd: &str,
    n: usize,
    spawners: usize,
) -> (Duration, Vec<Duration>) {
    let cmd = cmd.to_string();
    tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        let each = std::thread::scope(|s| {
            let hs: Vec<_> = (0..spawners)
                .map(|i| {
                    let share = n / spawners + usize::from(i < n % spawners);
                    let cmd = &cmd;
                    s.spawn(move || {
                        (0..share)
                            .map(|_| {
                                let t = Instant::now();
                                spawn_once(how, cmd);
                                t.elapsed()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        (t0.elapsed(), each)
    })
    .await
    .unwrap_or_default()
}

/// One spawn at a time, `n` times: each one's duration.
pub async fn spawn_latency(how: Spawn, cmd: &str, n: usize) -> Vec<Duration> {
    let cmd = cmd.to_string();
    tokio::task::spawn_blocking(move || {
        (0..n)
            .map(|_| {
                let t0 = Instant::now();
                spawn_once(how, &cmd);
                t0.elapsed()
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// Runs `sh -c script` with `env`, reading its stdout through a pipe to the end;
/// returns (bytes, elapsed).
pub async fn pipe_throughput(script: &str, env: Vec<(String, String)>) -> (u64, Duration) {
    let script = script.to_string();
    tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        let Ok(mut child) = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
        else {
            return (0, t0.elapsed());
        };
        let mut total = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        if let Some(out) = child.stdout.as_mut() {
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
        }
        let _ = child.wait();
        (total, t0.elapsed())
    })
    .await
    .unwrap_or_default()
}

/// `docker run --rm --network none [--runtime R] IMAGE true`, once.
pub fn docker_run_once(image: &str, runtime: Option<&str>) -> bool {
    let mut c = Command::new("docker");
    c.args(["run", "--rm", "--network", "none"]);
    if let Some(r) = runtime {
        c.args(["--runtime", r]);
    }
    c.args([image, "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `n` `docker run`s in bursts of `burst` concurrent ones, back to back: each
/// run's duration and the total time.
pub async fn docker_runs(
    image: &str,
    runtime: Option<&str>,
    n: usize,
    burst: usize,
) -> (Vec<Duration>, Duration, usize) {
    let image = image.to_string();
    let runtime = runtime.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        let mut lat = Vec::with_capacity(n);
        let mut failed = 0;
        let mut left = n;
        while left > 0 {
            let k = burst.min(left);
            left -= k;
            let batch: Vec<(Duration, bool)> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..k)
                    .map(|_| {
                        let image = &image;
                        let runtime = runtime.as_deref();
                        s.spawn(move || {
                            let t = Instant::now();
                            let ok = docker_run_once(image, runtime);
                            (t.elapsed(), ok)
                        })
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().unwrap_or((Duration::ZERO, false)))
                    .collect()
            });
            for (d, ok) in batch {
                lat.push(d);
                failed += usize::from(!ok);
            }
        }
        (lat, t0.elapsed(), failed)
    })
    .await
    .unwrap_or_default()
}

/// A bare RabbitMQ request/reply round trip, `n` times one at a time: a
/// persistent, confirmed, mandatory publish to a quorum queue; a responder on
/// another connection consumes it, publishes a confirmed reply to the client's
/// exclusive queue, then acks — the same broker work as a Krill task without
/// the task.
pub async fn rabbit_round_trips(url: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let queue = format!("krill.bench.rr.{}", uuid::Uuid::new_v4().simple());
    let client = broker::amqp::connect_first(url, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    let ch = client.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    ch.queue_declare(
        ShortString::from(queue.as_str()),
        QueueDeclareOptions::durable(),
        args,
    )
    .await?;
    let reply = broker::amqp::tap(&ch, "", &[], "rr-client").await?;
    let reply_name = reply.queue.clone();
    let mut replies = reply.consumer;

    let server = broker::amqp::connect_first(url, ConnectionProperties::default()).await?;
    let consume = server.create_channel().await?;
    consume.basic_qos(2, BasicQosOptions::default()).await?;
    let publish = server.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut requests = consume
        .basic_consume(
            ShortString::from(queue.as_str()),
            ShortString::from("rr-server"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let responder = tokio::spawn(async move {
        while let Some(Ok(d)) = requests.next().await {
            let Some(to) = d.properties.reply_to().clone() else {
                continue;
            };
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_correlation_id(d.properties.correlation_id().clone().unwrap_or_default());
            if let Ok(c) = publish
                .basic_publish(
                    ShortString::from(""),
                    to,
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    b"{\"status\":\"succeeded\"}",
                    props,
                )
                .await
            {
                let _ = c.await;
            }
            let _ = d.acker.ack(BasicAckOptions::default()).await;
        }
    });

    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_correlation_id(ShortString::from(i.to_string()))
            .with_reply_to(ShortString::from(reply_name.as_str()));
        let confirm = ch
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue.as_str()),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                b"{\"version\":1,\"id\":\"x\",\"script\":\"echo hi\"}",
                props,
            )
            .await?;
        confirm.await?;
        match tokio::time::timeout(Duration::from_secs(30), replies.next()).await {
            Ok(Some(Ok(_))) => samples.push(t0.elapsed()),
            _ => {
                responder.abort();
                bail!("no reply within 30 s");
            }
        }
    }
    responder.abort();
    let _ = server.close(200, ShortString::from("bye")).await;
    let _ = client.close(200, ShortString::from("bye")).await;
    delete_queue(url, &queue).await;
    Ok(samples)
}
