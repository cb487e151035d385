//! The worker's task tree and shutdown order.
//!
//! ```text
//! daemon::run
//!  ├─ connection::run (reconnects with backoff)
//!  │   ├─ control::Listener: control queue (cancel / drain / resume), cancellation stream, dead notify
//!  │   └─ consumer::claim: prefetch = slots → handlers tracker
//!  │        └─ consumer::handle (one per delivery: run, publish the result, ack)
//!  ├─ heartbeat (every --heartbeat-interval)
//!  ├─ metrics file (every --metrics-file-interval), when --metrics-file is set
//!  └─ http (/healthz /readyz /metrics), when --metrics-addr is set
//! ```
//!
//! SIGTERM/SIGINT: stop claiming at once; running tasks get `--shutdown-grace` to
//! finish, then are cancelled ("worker shutdown"); every result is published; exit 0.
//! A second signal cancels at once. Whatever is stuck (a broker that takes
//! nothing, an engine that does not answer), the process ends within the grace
//! plus [`EXIT_BOUND`]: a watchdog thread exits it with status 1 then.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use broker::protocol::SandboxKind;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::liveness::Liveness;
use crate::outbound::{AmqpSink, Outbound};
use crate::runner::RunCtx;
use crate::sandbox::container::{ContainerConfig, ContainerSandbox, Tuning};
use crate::sandbox::process::{ProcessConfig, ProcessSandbox};
use crate::sandbox::uids::UidPool;
use crate::sandbox::REAP_EVERY;
use crate::sandboxes::Sandboxes;
use crate::worker::Shared;

/// How long results may still take to publish after the grace period before the
/// worker gives up on an unreachable broker (those tasks are redelivered).
pub const PUBLISH_GRACE: Duration = Duration::from_secs(30);
/// After the grace period, the longest a stopping worker lives: publishing
/// ([`PUBLISH_GRACE`]) and closing the sandboxes, then the watchdog ends it.
pub const EXIT_BOUND: Duration = Duration::from_secs(45);

/// Runs the worker until SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    let host = hostname();
    let id = cfg
        .worker_id
        .clone()
        .unwrap_or_else(|| format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let trust = crate::trust::Trust::from_config(&cfg, &id)?;
    if trust.policy.allow_unsigned {
        tracing::warn!(
            "--allow-unsigned: unsigned tasks run here; anyone who may publish to krill.tasks runs code on this pool"
        );
    }
    let liveness = match Liveness::acquire(&id) {
        Ok(l) => Some(Arc::new(l)),
        Err(e) if cfg.sandbox.contains(&SandboxKind::Process) => {
            return Err(anyhow::Error::new(e).context("process sandbox"))
        }
        Err(e) => {
            tracing::warn!(error = %e,
                "no host-wide worker lock: containers of dead workers are swept by age only");
            None
        }
    };
    let sandboxes = build_sandboxes(&cfg, &id, liveness.clone()).await?;
    let metrics = Arc::new(crate::metrics::Metrics::new(&id, &cfg.pool));
    metrics.swept(sandboxes.sweep().await);
    let defaults = cfg
        .policy()
        .effective(&Default::default())
        .context("the pool's default limits")?;
    // A sandbox that cannot run a task stops the worker here, not every task later.
    sandboxes.probe(&defaults, &id).await?;
    sandboxes.start_prestart(cfg.prestart, defaults, &id);
    let (chan_tx, chan_rx) = watch::channel(None);
    let give_up = CancellationToken::new();
    let health = Arc::new(crate::health::Health::new(cfg.degraded_after));
    let sink = AmqpSink::new(
        chan_rx,
        give_up.clone(),
        health.clone(),
        cfg.broker_max_message_bytes,
    );
    let outbound =
        Outbound::new(Arc::new(sink), &id, &cfg.pool).with_result_budget(cfg.result_budget());
    let run = RunCtx {
        worker_id: id.clone(),
        policy: Arc::new(cfg.policy()),
        sandboxes: sandboxes.clone(),
        outbound,
        metrics,
    };
    let shared = Arc::new(
        Shared::new(&id, &host, cfg, run)
            .with_trust(trust)
            .with_health(health),
    );
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
    loops.spawn(crate::connection::run(
        shared.clone(),
        chan_tx,
        handlers.clone(),
    ));
    loops.spawn(heartbeat_loop(shared.clone()));
    loops.spawn(reap_loop(shared.clone()));
    if let Some(listener) = http {
        tracing::info!(addr = ?listener.local_addr().ok(), "serving /metrics, /healthz and /readyz");
        loops.spawn(crate::http::serve(listener, shared.clone()));
    }
    if let Some(path) = shared.cfg.metrics_file.clone() {
        let every = shared.cfg.metrics_file_interval;
        let s = shared.clone();
        loops.spawn(async move {
            let stop = s.root.clone();
            crate::metrics::file_loop(&s.run.metrics, || s.snapshot(), path, every, stop).await;
        });
    }

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(running = shared.tasks.running_count(), grace = ?shared.cfg.shutdown_grace,
        "shutting down: no more claims; running tasks may finish");
    exit_watchdog(shared.cfg.shutdown_grace + EXIT_BOUND);
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
    shared.send_heartbeat(true).await;
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

/// Every [`REAP_EVERY`]: removes what dead workers on this host left.
async fn reap_loop(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = shared.root.cancelled() => return,
            _ = tokio::time::sleep(REAP_EVERY) => {}
        }
        let n = shared.run.sandboxes.reap().await;
        shared.run.metrics.swept(n);
    }
}

/// The worker network: the bridge, Krill's nft tables, and the broker's
/// addresses refused to every task.
async fn setup_net(cfg: &Config) -> anyhow::Result<Arc<crate::sandbox::net::Net>> {
    use crate::sandbox::net::{host_resolvers, Net, NetConfig, LOCK_DIR};
    let mut refused = Vec::new();
    for (host, port) in broker_hosts(&cfg.amqp_url) {
        match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(addrs) => refused.extend(addrs.map(|a| ipnet::IpNet::from(a.ip()))),
            Err(e) => tracing::warn!(%host, error = %e, "could not resolve the broker's host"),
        }
    }
    let dns = host_resolvers();
    let started = std::time::Instant::now();
    let net = Net::setup(NetConfig {
        docker_network: cfg.docker_network.clone(),
        bridge: cfg.network_bridge.clone(),
        subnet: cfg.network_subnet,
        refused,
        dns,
        lock_dir: LOCK_DIR.into(),
    })
    .await?;
    tracing::info!(subnet = %cfg.network_subnet, bridge = %cfg.network_bridge,
        took = ?started.elapsed(), "worker network ready");
    Ok(net)
}

/// Host and port of every URL of `--amqp-url` (each node of a cluster).
fn broker_hosts(list: &str) -> Vec<(String, u16)> {
    broker::amqp::urls(list)
        .into_iter()
        .filter_map(broker_host)
        .collect()
}

/// Host and port of an AMQP URL (`amqp://user:pass@host:port/vhost`; lapin's
/// own parser reads an IPv6 literal as `localhost`).
fn broker_host(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = if scheme == "amqps" { 5671 } else { 5672 };
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match hostport.strip_prefix('[') {
        // An IPv6 literal: `[addr]` or `[addr]:port`.
        Some(v6) => {
            let (h, after) = v6.split_once(']')?;
            (h, after.strip_prefix(':'))
        }
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port,
    };
    Some((host.to_string(), port))
}

async fn build_sandboxes(
    cfg: &Config,
    id: &str,
    liveness: Option<Arc<Liveness>>,
) -> anyhow::Result<Sandboxes> {
    let mut s = Sandboxes::default();
    let uids = claim_uids(cfg, id).context("sandbox uids")?;
    let net = if cfg.allow_network {
        Some(
            setup_net(cfg)
                .await
                .context("worker network (--allow-network)")?,
        )
    } else {
        None
    };
    if cfg.sandbox.contains(&SandboxKind::Process) {
        let liveness = liveness
            .clone()
            .context("the process sandbox needs the host-wide worker lock")?;
        let p = ProcessSandbox::new(&ProcessConfig {
            uids: uids.clone(),
            work_root: cfg.work_dir.clone(),
            worker_id: id.to_string(),
            allow_degraded_limits: cfg.allow_degraded_limits,
            helper_path: cfg.sandbox_helper.clone(),
            slots: cfg.concurrency as usize,
            disk_bytes: cfg.disk,
            binds: cfg.process_binds.clone(),
            rootfs: cfg.process_rootfs.clone(),
            liveness,
            net: net.clone(),
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
                net: net.clone(),
            },
            Tuning {
                runtime: cfg.container_runtime.clone(),
                liveness,
                ..Tuning::default()
            },
        )
        .await
        .context("container sandbox")?;
        s.container = Some(Arc::new(c));
    }
    Ok(s)
}

/// Every `--heartbeat-interval`, and at once when the peers view asks for one
/// (this worker began asking about a task, or a peer asked something new).
async fn heartbeat_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.cfg.heartbeat_interval);
    let mut poke = shared.peers.pokes();
    loop {
        tokio::select! {
            _ = shared.root.cancelled() => return,
            _ = tick.tick() => shared.send_heartbeat(false).await,
            Ok(()) = poke.changed() => shared.send_heartbeat(false).await,
        }
    }
}

/// Ends the process after `limit`, from a thread of its own (so neither a busy
/// runtime nor a stuck await can keep it up): unacked tasks go back to the
/// queue, sandboxes die with their helpers or are swept at the next start.
fn exit_watchdog(limit: Duration) {
    let spawned = std::thread::Builder::new()
        .name("krill-exit-watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            tracing::error!(?limit, "shutdown took too long; exiting now");
            eprintln!(
                "krill-worker: shutdown took longer than {limit:?}; exiting (unacked tasks go \
                 back to the queue)"
            );
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no shutdown watchdog");
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_of_the_url_list_is_a_broker_host() {
        assert_eq!(
            broker_hosts("amqp://u:p@10.0.0.5:5681/%2f, amqp://rabbit-2,amqps://[fd00::7]/v"),
            [
                ("10.0.0.5".to_string(), 5681),
                ("rabbit-2".to_string(), 5672),
                ("fd00::7".to_string(), 5671)
            ]
        );
    }
}
