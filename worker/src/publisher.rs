//! Publishing results, events, log chunks and dead letters across broker reconnects.
//!
//! The daemon owns the connection and puts its current channels in a `watch`; every
//! publish takes the channels from there. A confirmed publish (results, dead
//! letters) that fails because the broker went away waits for the next connection
//! and tries again, so a result finished while the broker was down is published once
//! it is back. Log chunks and events are best effort: they are dropped while there
//! is no connection (followers see a gap in `seq`).

use std::time::Duration;

use broker::client::{publish_confirmed, ClientError};
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The channels of the current connection.
#[derive(Debug, Clone)]
pub struct Channels {
    /// Publisher confirms on: results and dead letters.
    pub confirm: Channel,
    /// No confirms: events, heartbeats and log chunks.
    pub fast: Channel,
}

/// What became of a confirmed publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The broker took it.
    Confirmed,
    /// Nothing was bound to the routing key (a reply queue that expired or was deleted).
    Unroutable,
}

/// Why a confirmed publish was given up.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("gave up publishing: the worker is stopping and the broker is unreachable")]
    GaveUp,
}

/// Shared handle for publishing; cheap to clone.
#[derive(Debug, Clone)]
pub struct Publisher {
    rx: watch::Receiver<Option<Channels>>,
    give_up: CancellationToken,
}

impl Publisher {
    /// A publisher reading channels from `rx`; confirmed publishes stop retrying once
    /// `give_up` is cancelled.
    pub fn new(rx: watch::Receiver<Option<Channels>>, give_up: CancellationToken) -> Self {
        Publisher { rx, give_up }
    }

    /// Whether there is a live connection right now.
    pub fn connected(&self) -> bool {
        self.rx
            .borrow()
            .as_ref()
            .is_some_and(|c| c.confirm.status().connected())
    }

    /// Publishes with confirms, retrying across reconnects until confirmed.
    pub async fn confirmed(
        &self,
        exchange: &str,
        key: &str,
        body: &[u8],
        props: BasicProperties,
        mandatory: bool,
    ) -> Result<Published, PublishError> {
        let mut rx = self.rx.clone();
        let mut backoff = Duration::from_millis(100);
        loop {
            let current = rx.borrow_and_update().clone();
            if let Some(ch) = current {
                match publish_confirmed(&ch.confirm, exchange, key, body, props.clone(), mandatory)
                    .await
                {
                    Ok(()) => return Ok(Published::Confirmed),
                    Err(ClientError::Unroutable(_)) => return Ok(Published::Unroutable),
                    Err(e) => {
                        tracing::warn!(error = %e, exchange, "publish failed; will retry");
                    }
                }
            }
            // Wait for a new connection, or a little, then try again.
            tokio::select! {
                biased;
                _ = self.give_up.cancelled() => return Err(PublishError::GaveUp),
                _ = rx.changed() => {}
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Publishes without confirms; dropped when there is no connection.
    pub async fn fast(&self, exchange: &str, key: &str, body: &[u8], props: BasicProperties) {
        let current = self.rx.borrow().clone();
        if let Some(ch) = current {
            let res = ch
                .fast
                .basic_publish(
                    ShortString::from(exchange),
                    ShortString::from(key),
                    BasicPublishOptions::default(),
                    body,
                    props,
                )
                .await;
            if let Err(e) = res {
                tracing::debug!(error = %e, exchange, "best-effort publish dropped");
            }
        }
    }
}
