//! The worker's broker connection: made, served, and made again with backoff
//! when it breaks, for the worker's whole life.
//!
//! ```text
//! connection::run                          reconnects with backoff (reset after a stable connection)
//!  └─ serve: one connection's life
//!      ├─ channels: consume, confirm (publisher confirms), fast; topology::declare
//!      ├─ control::Listener::open          the control queue, before anything is claimed
//!      ├─ the outbound sink gets the channels; connected heartbeat
//!      ├─ control::Listener::run           control queue, cancellation stream, dead notify
//!      │   (claims wait until the cancellation stream caught up, at most CANCEL_CATCH_UP)
//!      ├─ trust::Claims::follow            the pool's claims stream (signed tasks; logged if it ends)
//!      └─ consumer::claim                  until the worker stops or the connection breaks
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::topology;
use lapin::options::ConfirmSelectOptions;
use lapin::types::ShortString;
use lapin::{Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::consumer::{self, ClaimError};
use crate::control::{self, ControlError};
use crate::outbound::Channels;
use crate::worker::Shared;

/// A connection that lasted this long resets the reconnect backoff.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// How long a (re)connecting worker waits for the cancellation stream to catch up
/// before it claims tasks.
pub const CANCEL_CATCH_UP: Duration = Duration::from_secs(10);
/// First pause before reconnecting; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest pause between reconnects.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("connecting to {url}")]
    Connect {
        url: String,
        #[source]
        source: broker::amqp::ConnectAnyError,
    },
    #[error("setting up the connection")]
    Setup(#[from] lapin::Error),
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error("control consumers")]
    Control(#[from] ControlError),
}

/// Connects, serves until the connection breaks, and connects again with
/// backoff, until the worker's root token is cancelled. The current channels
/// go to the outbound sink through `chan_tx` (`None` while disconnected).
pub async fn run(
    shared: Arc<Shared>,
    chan_tx: watch::Sender<Option<Channels>>,
    handlers: TaskTracker,
) {
    let mut backoff = FIRST_BACKOFF;
    // Where the next connect starts in `--amqp-url`'s list: after a node was
    // lost, the others are tried first.
    let mut start = 0;
    loop {
        let began = Instant::now();
        let served = serve(&shared, &chan_tx, &handlers, &mut start).await;
        let _ = chan_tx.send(None);
        // After a connection that held, the next outage starts from a short retry
        // again rather than from wherever the last outage left the backoff.
        if began.elapsed() > STABLE_CONNECTION {
            backoff = FIRST_BACKOFF;
        }
        match served {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), retry_in = ?backoff,
                    "broker connection lost; reconnecting");
            }
        }
        // Jittered: the workers of a node that died do not all arrive at the
        // next node in the same instant.
        tokio::select! {
            _ = shared.root.cancelled() => return,
            _ = tokio::time::sleep(broker::amqp::jittered(backoff)) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: declare, obey control commands, claim.
async fn serve(
    shared: &Arc<Shared>,
    chan_tx: &watch::Sender<Option<Channels>>,
    handlers: &TaskTracker,
    start: &mut usize,
) -> Result<(), ConnectionError> {
    let props = ConnectionProperties::default()
        .with_connection_name(format!("krill-worker {}", shared.id).into());
    let connected = broker::amqp::connect_any(&shared.cfg.amqp_url, *start, props)
        .await
        .map_err(|source| ConnectionError::Connect {
            url: broker::amqp::redact_urls(&shared.cfg.amqp_url),
            source,
        })?;
    // Whatever ends this connection, the next try begins with the next node.
    *start = connected.index + 1;
    tracing::info!(node = %connected.url, "broker node reached");
    *shared
        .broker
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(connected.url.clone());
    let conn = connected.conn;
    let consume = conn.create_channel().await?;
    let confirm = conn.create_channel().await?;
    confirm
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let fast = conn.create_channel().await?;
    topology::declare(&consume, &shared.pool).await?;
    declare_heartbeat_stream(&conn).await;
    let conn = Arc::new(conn);
    let listener = control::Listener::open(shared.clone(), conn.clone()).await?;
    let _ = chan_tx.send(Some(Channels {
        confirm,
        fast,
        conn: conn.clone(),
    }));
    tracing::info!("connected to the broker");
    shared.run.metrics.connected();
    shared.send_heartbeat(false).await;
    // The pool's claims stream, read from the oldest claim that can still
    // matter, for as long as this connection lives (a pool with trusted keys).
    let _claims = shared.trust.claims.clone().map(|claims| {
        let conn = conn.clone();
        AbortOnDropHandle::new(tokio::spawn(async move {
            if let Err(e) = claims.follow(conn).await {
                tracing::warn!(consumer = "claims stream", error = %e,
                    "side consumer ended; signed tasks cannot be claimed until the connection is made again");
            }
        }))
    });
    // Every heartbeat of the pool, for as long as this connection lives: who
    // is alive and runs what (redeliveries and key holders are judged by it).
    let _peers = {
        let (conn, shared) = (conn.clone(), shared.clone());
        AbortOnDropHandle::new(tokio::spawn(async move {
            if let Err(e) = crate::peers::tail(&shared.peers, &conn, &shared.id).await {
                tracing::warn!(consumer = "heartbeats", error = %e,
                    "side consumer ended; redelivered tasks wait for the next connection to judge their holder");
            }
        }))
    };
    let (caught_up_tx, caught_up) = tokio::sync::oneshot::channel();
    let control = listener.run(caught_up_tx);
    tokio::pin!(control);
    // Claim nothing before every cancel sent while this worker was away is known.
    tokio::select! {
        r = &mut control => return r.map_err(ConnectionError::from),
        waited = tokio::time::timeout(CANCEL_CATCH_UP, caught_up) => {
            if waited.is_err() {
                tracing::warn!("cancellation stream did not catch up in time; claiming anyway");
            }
        }
    }
    // Keyed tasks: a failure there (no streams) costs them, not the connection.
    let lines = async {
        if let Err(e) = crate::lines::run(shared.clone(), conn.clone(), handlers.clone()).await {
            if conn.status().connected() {
                tracing::warn!(error = %crate::error::chain(&e),
                    "concurrency-key lines stopped on this connection; keyed tasks wait for the next one");
            }
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        r = consumer::claim(shared, &conn, &consume, handlers) => Ok(r?),
        r = &mut control => Ok(r?),
        () = lines => Ok(()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_get_at_least_one_reconnect_backoff_of_grace() {
        assert!(crate::peers::RECONNECT_GRACE >= MAX_BACKOFF);
    }
}
