//! The worker's task tree and shutdown order.
//!
//! ```text
//! daemon::run
//!  ├─ connection loop (reconnects with backoff)
//!  │   ├─ consumer: claims deliveries (prefetch = slots) → handlers tracker
//!  │   │    └─ consumer::handle (one per delivery: run, publish result, ack)
//!  │   └─ control queue: cancel / drain / resume
//!  ├─ heartbeat (every --heartbeat-interval)
//!  └─ http (/healthz /readyz /metrics), when --metrics-addr is set
//! ```
//!
//! SIGTERM/SIGINT: stop claiming at once; running tasks get `--shutdown-grace` to
//! finish, then are cancelled ("worker shutdown"); every result is published; exit 0.
//! A second signal cancels at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use broker::protocol::{Control, Heartbeat, SandboxKind, PROTOCOL_VERSION};
use broker::topology::{self, CONTROL_EXCHANGE, CONTROL_QUEUE_PREFIX};
use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties, Consumer};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::config::Config;
use crate::outbound::{AmqpSink, Channels, Outbound};
use crate::runner::RunCtx;
use crate::sandbox::container::{ContainerConfig, ContainerSandbox, Tuning};
use crate::sandbox::process::{ProcessConfig, ProcessSandbox};
use crate::sandbox::uids::UidPool;
use crate::sandboxes::Sandboxes;
use crate::state::TaskState;
use crate::worker::Shared;

/// How long results may still take to publish after the grace period before the
/// worker gives up on an unreachable broker (those tasks are redelivered).
pub const PUBLISH_GRACE: Duration = Duration::from_secs(30);

/// A connection that lasted this long resets the reconnect backoff.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// How long a (re)connecting worker waits for the cancellation stream to catch up
/// before it claims tasks.
pub const CANCEL_CATCH_UP: Duration = Duration::from_secs(10);

/// Runs the worker until SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    let host = hostname();
    let id = cfg
        .worker_id
        .clone()
        .unwrap_or_else(|| format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let mut sandboxes = build_sandboxes(&cfg, &id).await?;
    let metrics = Arc::new(crate::metrics::Metrics::new(&id, &cfg.pool));
    metrics.swept(sandboxes.sweep().await);
    let defaults = cfg
        .policy()
        .effective(&Default::default())
        .map_err(anyhow::Error::msg)?;
    sandboxes.start_prestart(cfg.prestart, defaults, &id);
    let (chan_tx, chan_rx) = watch::channel(None);
    let give_up = CancellationToken::new();
    let outbound = Outbound::new(
        Arc::new(AmqpSink::new(chan_rx, give_up.clone())),
        &id,
        &cfg.pool,
    );
    let shared = Arc::new(Shared {
        id: id.clone(),
        pool: cfg.pool.clone(),
        host,
        run: RunCtx {
            worker_id: id.clone(),
            policy: Arc::new(cfg.policy()),
            sandboxes: sandboxes.clone(),
            outbound,
            metrics,
        },
        tasks: TaskState::default(),
        root: CancellationToken::new(),
        shutdown: CancellationToken::new(),
        draining: watch::channel(false).0,
        slots: Arc::new(Semaphore::new(cfg.concurrency as usize)),
        started: Instant::now(),
        cfg,
    });
    tracing::info!(worker = %id, pool = %shared.pool, slots = shared.cfg.concurrency,
        sandboxes = ?shared.cfg.sandbox, "worker starting");

    let http = match shared.cfg.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding --metrics-addr {addr}"))?,
        ),
        None => None,
    };
    let loops = TaskTracker::new();
    let handlers = TaskTracker::new();
    loops.spawn(connection_loop(shared.clone(), chan_tx, handlers.clone()));
    loops.spawn(heartbeat_loop(shared.clone()));
    if let Some(listener) = http {
        tracing::info!(addr = ?listener.local_addr().ok(), "serving /metrics, /healthz and /readyz");
        loops.spawn(crate::http::serve(listener, shared.clone()));
    }
    if let Some(path) = shared.cfg.metrics_file.clone() {
        let every = shared.cfg.metrics_file_interval;
        loops.spawn(crate::metrics::file_loop(shared.clone(), path, every));
    }

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(running = shared.tasks.running_count(), grace = ?shared.cfg.shutdown_grace,
        "shutting down: no more claims; running tasks may finish");
    shared.shutdown.cancel();
    handlers.close();
    tokio::select! {
        _ = handlers.wait() => {}
        _ = tokio::time::sleep(shared.cfg.shutdown_grace) => {
            tracing::warn!("grace period over: cancelling running tasks");
            shared.tasks.cancel_all("worker shutdown: the drain grace period ran out");
        }
        _ = term.recv() => shared.tasks.cancel_all("worker shutdown: second signal"),
        _ = int.recv() => shared.tasks.cancel_all("worker shutdown: second signal"),
    }
    if tokio::time::timeout(PUBLISH_GRACE, handlers.wait())
        .await
        .is_err()
    {
        tracing::error!(
            "results could not be published in time; unacked tasks go back to the queue"
        );
        give_up.cancel();
        handlers.wait().await;
    }
    send_heartbeat(&shared, true).await;
    shared.root.cancel();
    loops.close();
    loops.wait().await;
    sandboxes.close().await;
    tracing::info!("worker stopped");
    Ok(())
}

/// The uids this worker's sandboxes run as: one per slot, per process helper
/// started ahead, per container started ahead (each holds its uid until every
/// process of its task is gone).
fn claim_uids(cfg: &Config, id: &str) -> anyhow::Result<Arc<UidPool>> {
    let slots = cfg.concurrency as usize;
    let process = if cfg.sandbox.contains(&SandboxKind::Process) {
        slots
    } else {
        0
    };
    let containers = if cfg.sandbox.contains(&SandboxKind::Container) {
        cfg.prestart as usize * cfg.images.len()
    } else {
        0
    };
    let need = slots + process + containers;
    let why = format!(
        "{slots} slots + {process} process sandboxes and {containers} containers started ahead"
    );
    // `auto` also takes a slot's worth for tasks whose sandbox is still being
    // torn down while the next one starts.
    let pool = UidPool::claim(
        &cfg.sandbox_uids,
        std::path::Path::new(crate::sandbox::uids::LOCK_DIR),
        id,
        need,
        need + slots,
        &why,
    )?;
    tracing::info!(uids = %pool.span(), need, "sandbox uids claimed");
    Ok(pool)
}

async fn build_sandboxes(cfg: &Config, id: &str) -> anyhow::Result<Sandboxes> {
    let mut s = Sandboxes::default();
    let uids = claim_uids(cfg, id).context("sandbox uids")?;
    if cfg.sandbox.contains(&SandboxKind::Process) {
        let p = ProcessSandbox::new(&ProcessConfig {
            uids: uids.clone(),
            work_root: cfg.work_dir.clone(),
            worker_id: id.to_string(),
            allow_degraded_limits: cfg.allow_degraded_limits,
            helper_path: cfg.sandbox_helper.clone(),
            slots: cfg.concurrency as usize,
            disk_bytes: cfg.disk,
        })
        .context("process sandbox")?;
        s.process = Some(Arc::new(p));
    }
    if cfg.sandbox.contains(&SandboxKind::Container) {
        let stub_path = match &cfg.stub_path {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .context("locating krill-stub")?
                .with_file_name("krill-stub"),
        };
        let c = ContainerSandbox::connect_tuned(
            ContainerConfig {
                images: cfg.images.clone(),
                allow_pull: cfg.allow_pull,
                allow_network: cfg.allow_network,
                stub_path,
                uids: Some(uids.clone()),
            },
            Tuning {
                runtime: cfg.container_runtime.clone(),
                ..Tuning::default()
            },
        )
        .await
        .context("container sandbox")?;
        s.container = Some(Arc::new(c));
    }
    Ok(s)
}

/// Connects, serves until the connection breaks, and connects again with backoff.
async fn connection_loop(
    shared: Arc<Shared>,
    chan_tx: watch::Sender<Option<Channels>>,
    handlers: TaskTracker,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let began = Instant::now();
        let served = serve(&shared, &chan_tx, &handlers).await;
        let _ = chan_tx.send(None);
        // After a connection that held, the next outage starts from a short retry
        // again rather than from wherever the last outage left the backoff.
        if began.elapsed() > STABLE_CONNECTION {
            backoff = Duration::from_millis(200);
        }
        match served {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "broker connection lost; reconnecting");
            }
        }
        tokio::select! {
            _ = shared.root.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One connection's life: declare, consume, obey control commands.
async fn serve(
    shared: &Arc<Shared>,
    chan_tx: &watch::Sender<Option<Channels>>,
    handlers: &TaskTracker,
) -> anyhow::Result<()> {
    let props = ConnectionProperties::default()
        .with_connection_name(format!("krill-worker {}", shared.id).into());
    let conn = Connection::connect(&shared.cfg.amqp_url, props)
        .await
        .with_context(|| {
            format!(
                "connecting to {}",
                broker::client::redact_url(&shared.cfg.amqp_url)
            )
        })?;
    let consume = conn.create_channel().await?;
    let confirm = conn.create_channel().await?;
    confirm
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let fast = conn.create_channel().await?;
    topology::declare(&consume, &shared.pool).await?;
    declare_heartbeat_stream(&conn).await;
    let control = control_consumer(&consume, &shared.id).await?;
    consume
        .basic_qos(
            u16::try_from(shared.cfg.concurrency).unwrap_or(u16::MAX),
            BasicQosOptions::default(),
        )
        .await?;
    let _ = chan_tx.send(Some(Channels { confirm, fast }));
    tracing::info!("connected to the broker");
    shared.run.metrics.connected();
    send_heartbeat(shared, false).await;
    let conn = Arc::new(conn);
    // Owned by this connection's life: aborted when serve() returns.
    let (caught_up_tx, caught_up) = tokio::sync::oneshot::channel();
    let _cancels = AbortOnDropHandle::new(tokio::spawn(side_loop(
        "cancellation stream",
        crate::side::cancellations(shared.clone(), conn.clone(), caught_up_tx),
    )));
    let _dead = AbortOnDropHandle::new(tokio::spawn(side_loop(
        "dead-letter notifications",
        crate::side::dead_notify(shared.clone(), conn.clone()),
    )));

    // Claim nothing before every cancel sent while this worker was away is known.
    if tokio::time::timeout(CANCEL_CATCH_UP, caught_up)
        .await
        .is_err()
    {
        tracing::warn!("cancellation stream did not catch up in time; claiming anyway");
    }
    let mut control = control;
    let mut draining = shared.draining.subscribe();
    let mut generation = 0u32;
    let mut consumer: Option<Consumer> = None;
    let mut cancelling = false;
    let mut health = tokio::time::interval(Duration::from_secs(1));
    loop {
        let want = !shared.is_draining();
        if want && consumer.is_none() {
            generation += 1;
            let tag = format!("krill-worker.{}.{generation}", shared.id);
            consumer = Some(
                consume
                    .basic_consume(
                        ShortString::from(topology::pool_queue(&shared.pool)),
                        ShortString::from(tag),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?,
            );
            cancelling = false;
        } else if !want && !cancelling {
            if let Some(c) = &consumer {
                tracing::info!("draining: no more claims");
                consume
                    .basic_cancel(c.tag(), BasicCancelOptions::default())
                    .await?;
                cancelling = true;
            }
        }
        tokio::select! {
            biased;
            _ = shared.root.cancelled() => {
                let _ = conn.close(200, ShortString::from("worker stopping")).await;
                return Ok(());
            }
            _ = shared.shutdown.cancelled(), if !cancelling && consumer.is_some() => {}
            _ = draining.changed() => send_heartbeat(shared, false).await,
            d = next(&mut consumer) => match d {
                Some(Ok(delivery)) => {
                    let Ok(permit) = shared.slots.clone().acquire_owned().await else { continue };
                    handlers.spawn(crate::consumer::handle(shared.clone(), delivery, permit));
                }
                Some(Err(e)) => return Err(e.into()),
                None => {
                    consumer = None;
                    if !cancelling {
                        anyhow::bail!("the broker cancelled the consumer (queue deleted?)");
                    }
                }
            },
            c = control.next() => match c {
                Some(Ok(d)) => on_control(shared, &d.data),
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("control consumer ended"),
            },
            _ = health.tick() => {
                if !conn.status().connected() {
                    anyhow::bail!("connection closed");
                }
            }
        }
    }
}

async fn side_loop(
    name: &'static str,
    fut: impl std::future::Future<Output = Result<(), lapin::Error>>,
) {
    if let Err(e) = fut.await {
        tracing::warn!(consumer = name, error = %e, "side consumer ended");
    }
}

async fn next(
    consumer: &mut Option<Consumer>,
) -> Option<Result<lapin::message::Delivery, lapin::Error>> {
    match consumer {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

async fn control_consumer(channel: &lapin::Channel, id: &str) -> anyhow::Result<Consumer> {
    let queue = format!("{CONTROL_QUEUE_PREFIX}{id}");
    channel
        .queue_declare(
            ShortString::from(queue.as_str()),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            ShortString::from(queue.as_str()),
            ShortString::from(CONTROL_EXCHANGE),
            ShortString::from("#"),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(channel
        .basic_consume(
            ShortString::from(queue.as_str()),
            ShortString::from(format!("krill-control.{id}")),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?)
}

fn on_control(shared: &Shared, data: &[u8]) {
    let cmd = match serde_json::from_slice::<Control>(data) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring malformed control message");
            return;
        }
    };
    match cmd {
        Control::Cancel { task_id } => {
            let here = shared
                .tasks
                .cancel(&task_id, "cancelled by request (krill cancel)");
            tracing::info!(%task_id, running_here = here, "cancel received");
        }
        Control::Drain { worker } if Control::addresses(&worker, &shared.id) => {
            tracing::info!("drain requested");
            let _ = shared.draining.send(true);
        }
        Control::Resume { worker } if Control::addresses(&worker, &shared.id) => {
            tracing::info!("resume requested");
            let _ = shared.draining.send(false);
        }
        Control::Drain { .. } | Control::Resume { .. } => {}
    }
}

async fn heartbeat_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.cfg.heartbeat_interval);
    loop {
        tokio::select! {
            _ = shared.root.cancelled() => return,
            _ = tick.tick() => send_heartbeat(&shared, false).await,
        }
    }
}

/// The heartbeat as it is now.
pub fn heartbeat(shared: &Shared, stopping: bool) -> Heartbeat {
    Heartbeat {
        version: PROTOCOL_VERSION,
        worker: shared.id.clone(),
        host: shared.host.clone(),
        pool: shared.pool.clone(),
        krill_version: env!("CARGO_PKG_VERSION").to_string(),
        slots_total: shared.cfg.concurrency,
        slots_free: shared.slots_free(),
        draining: shared.is_draining(),
        running: shared.tasks.running(),
        uptime_secs: shared.started.elapsed().as_secs(),
        interval_secs: shared.cfg.heartbeat_interval.as_secs().max(1),
        stopping,
        sent_at: chrono::Utc::now(),
    }
}

async fn send_heartbeat(shared: &Shared, stopping: bool) {
    shared
        .run
        .outbound
        .heartbeat(heartbeat(shared, stopping))
        .await;
}

/// Declares the heartbeat stream on a channel of its own: a broker that refuses it
/// (permissions, no stream support) costs `krill status` its view of lost workers,
/// not the worker its connection.
async fn declare_heartbeat_stream(conn: &Connection) {
    let res = async {
        let ch = conn.create_channel().await?;
        topology::declare_heartbeats(&ch).await?;
        ch.close(200, ShortString::from("declared")).await
    }
    .await;
    if let Err(e) = res {
        tracing::warn!(stream = topology::HEARTBEATS_STREAM, error = %e,
            "cannot declare the heartbeat stream; `krill status` will not see lost workers");
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}
