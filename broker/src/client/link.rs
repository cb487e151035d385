//! A client's connection to one node of its URL list, and failover: when that
//! node is lost, connect to the next node of the list (jittered back-off, a
//! bounded number of rounds) and do again what the broker had not confirmed.
//!
//! Shared by [`Client`](super::Client) (submit, control messages) and
//! [`BulkClient`](crate::bulk::BulkClient). Doing a publish again is safe
//! only because its copy is caught: see [`Links::failover`].

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lapin::{Channel, Connection, ErrorKind};

use super::{open_at, ClientError};
use crate::amqp;

/// How many times an operation is done again, each on a new connection, after
/// its node was lost under it.
pub const FAILOVER_TRIES: u32 = 5;
/// Rounds over every URL of the list a reconnect makes before it gives up
/// (each round tries each node, [`amqp::CONNECT_TIMEOUT`] at most).
pub const RECONNECT_ROUNDS: u32 = 5;
/// The pause before the second round, doubling up to [`RECONNECT_MAX_PAUSE`],
/// each one jittered ([`amqp::jittered`]): about 6 s in all when every node is down.
pub const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
/// The longest pause between two reconnect rounds.
pub const RECONNECT_MAX_PAUSE: Duration = Duration::from_secs(5);

/// One connection (to the node at `index` of the list) and its confirming channel.
#[derive(Debug, Clone)]
pub struct Link {
    pub conn: Arc<Connection>,
    pub channel: Channel,
    /// Position of the node's URL in the list.
    pub index: usize,
    /// Counts the reconnects: a failure seen on an older link is already mended.
    pub generation: u64,
}

impl Link {
    /// Whether its connection or its channel is gone.
    pub fn broken(&self) -> bool {
        !self.conn.status().connected() || !self.channel.status().connected()
    }
}

/// Whether `e` says the connection (or the channel with it) was lost, rather
/// than that the broker refused what was asked.
pub fn lost(e: &ClientError) -> bool {
    let ClientError::Amqp(e) = e else {
        return false;
    };
    matches!(
        e.kind(),
        ErrorKind::IOError(_)
            | ErrorKind::InvalidConnectionState(_)
            | ErrorKind::InvalidChannelState(..)
            | ErrorKind::MissingHeartbeatError
    )
}

/// The current link of a client and how to make the next one.
#[derive(Debug)]
pub struct Links {
    url: String,
    name: &'static str,
    current: Mutex<Link>,
    relinking: tokio::sync::Mutex<()>,
}

impl Links {
    /// Connects as `name` to the first node of `url` (a comma-separated list) that answers.
    pub async fn connect(url: &str, name: &'static str) -> Result<Self, ClientError> {
        let (conn, channel, index) = open_at(url, name, 0).await?;
        Ok(Links {
            url: url.to_string(),
            name,
            current: Mutex::new(Link {
                conn: Arc::new(conn),
                channel,
                index,
                generation: 0,
            }),
            relinking: tokio::sync::Mutex::new(()),
        })
    }

    /// The URL list.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The link in use now.
    pub fn current(&self) -> Link {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A new link in place of `lost`, starting at the node after its own; when
    /// another caller already made one (a later generation that works), that one.
    /// Gives up after [`RECONNECT_ROUNDS`] rounds over the list, with the last
    /// node's reason.
    pub async fn relink(&self, lost: &Link) -> Result<Link, ClientError> {
        let _one_at_a_time = self.relinking.lock().await;
        let now = self.current();
        if now.generation != lost.generation && !now.broken() {
            return Ok(now);
        }
        let mut pause = RECONNECT_PAUSE;
        let mut last = None;
        for round in 0..RECONNECT_ROUNDS {
            if round > 0 {
                tokio::time::sleep(amqp::jittered(pause)).await;
                pause = (pause * 2).min(RECONNECT_MAX_PAUSE);
            }
            match open_at(&self.url, self.name, now.index + 1).await {
                Ok((conn, channel, index)) => {
                    let link = Link {
                        conn: Arc::new(conn),
                        channel,
                        index,
                        generation: now.generation + 1,
                    };
                    *self.current.lock().unwrap_or_else(PoisonError::into_inner) = link.clone();
                    let urls = amqp::urls(&self.url);
                    tracing::info!(
                        node = %amqp::redact_url(urls.get(index).copied().unwrap_or_default()),
                        round,
                        "reconnected to a broker node"
                    );
                    return Ok(link);
                }
                Err(e) => last = Some(e),
            }
        }
        let _ = now.conn.close(200, "failover".into()).await;
        Err(last.unwrap_or(ClientError::Connect {
            url: amqp::redact_urls(&self.url),
            source: amqp::ConnectAnyError::NoUrl,
        }))
    }

    /// Runs `op` on the current link; when it fails because the link was lost
    /// (its node died, its connection was reset) it reconnects ([`Links::relink`])
    /// and runs it again, at most [`FAILOVER_TRIES`] times. `op` is told how
    /// many times it ran before (0 the first time): a publish done again may be
    /// a second copy of a message the broker took but whose confirm was lost.
    /// What the broker refuses (a nack, an unroutable message, a missing
    /// queue on a live connection) is returned as it is.
    pub async fn failover<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, ClientError>
    where
        F: FnMut(Link, u32) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut link = self.current();
        if link.broken() {
            link = self.relink(&link).await?;
        }
        let mut tries = 0;
        loop {
            match op(link.clone(), tries).await {
                Err(e) if tries < FAILOVER_TRIES && (lost(&e) || link.broken()) => {
                    tries += 1;
                    tracing::warn!(what, error = %e, tries,
                        "lost the broker node mid-way; reconnecting to do it again");
                    link = self.relink(&link).await?;
                }
                other => return other,
            }
        }
    }

    /// Closes the current connection.
    pub async fn close(&self) {
        let _ = self.current().conn.close(200, "bye".into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lost_connection_fails_over() {
        let io = lapin::Error::from(ErrorKind::IOError(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        ))));
        assert!(lost(&ClientError::Amqp(io)));
        let closed = lapin::Error::from(ErrorKind::InvalidConnectionState(
            lapin::ConnectionState::Closed,
        ));
        assert!(lost(&ClientError::Amqp(closed)));
        // What the broker refused is returned as it is.
        assert!(!lost(&ClientError::Nacked));
        assert!(!lost(&ClientError::Unroutable("p".into())));
        assert!(!lost(&ClientError::Pool("A".into())));
    }
}
