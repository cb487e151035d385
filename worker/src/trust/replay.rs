//! Replay protection of signed tasks, on RabbitMQ alone: the pool's claims
//! stream `krill.claims.<pool>`.
//!
//! Before it runs a signed task, a worker appends a claim (the hash of the
//! signed message, a random nonce, its own id, `not_after`) to the stream and
//! reads the stream until it sees its own claim. Every worker of the pool reads
//! the same stream in the same order, so they all agree on the *first* claim of
//! each message: that worker runs it; any later claim of the same message (a
//! captured copy published again, on any worker, at the same moment or after a
//! worker restart) finds an earlier one and is rejected as `replayed`. A claim
//! already in the book is rejected at once, without a round trip.
//!
//! A worker reads the stream from `now - (MAX_VALIDITY + CLOCK_SKEW)` when it
//! connects, so a restarted worker knows every claim that can still matter, and
//! forgets a claim once its `not_after` (+ skew) has passed — a copy published
//! after that is `expired` anyway. The stream keeps claims for
//! `topology::CLAIMS_RETENTION`.
//!
//! Cost: one publish and one stream delivery per signed task on the claim →
//! run path (measured in the README), and about 100 bytes of memory per claim
//! within its validity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker::amqp::{self, StreamFrom};
use broker::topology;
use broker::trust::{now_unix, CLOCK_SKEW, MAX_VALIDITY};
use futures_util::StreamExt;
use lapin::options::BasicAckOptions;
use lapin::Connection;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::outbound::{Outbound, Published};

/// How long a claim may take to come back from the stream before the task is
/// given back to the queue.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(30);
/// Unacked stream deliveries at most.
const PREFETCH: u16 = 1000;
/// The book drops claims past their validity every this many claims.
const PRUNE_EVERY: usize = 4096;

/// What went wrong claiming.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("the claims stream {0} does not exist (the worker declares it at start)")]
    NoStream(String),
    #[error("no answer from the claims stream within {0:?}")]
    Timeout(Duration),
    #[error("gave up publishing the claim: the worker is stopping")]
    GaveUp,
}

/// One claim as it travels on the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimMsg {
    /// Hex SHA-256 of the signed message (see `broker::trust::sign::claim_id`),
    /// with `:<attempt>` for a run again after a worker loss.
    pub claim: String,
    /// Random, per claim attempt: tells this worker's claim from another's.
    pub nonce: String,
    pub worker: String,
    /// Unix seconds until which the claim matters.
    pub not_after: u64,
}

/// The first claim of every message seen on the stream (pure).
#[derive(Debug, Default)]
pub struct Book {
    first: HashMap<String, (String, u64)>,
    since_prune: usize,
}

impl Book {
    /// Records `m`; returns whether it is the first claim of its message.
    pub fn observe(&mut self, m: &ClaimMsg, now: u64) -> bool {
        self.since_prune += 1;
        if self.since_prune >= PRUNE_EVERY {
            self.since_prune = 0;
            let skew = CLOCK_SKEW.as_secs();
            self.first
                .retain(|_, (_, na)| na.saturating_add(skew) >= now);
        }
        match self.first.get(&m.claim) {
            Some((nonce, _)) => *nonce == m.nonce,
            None => {
                self.first
                    .insert(m.claim.clone(), (m.nonce.clone(), m.not_after));
                true
            }
        }
    }

    /// Whether `claim` was already claimed by someone.
    pub fn claimed(&self, claim: &str) -> bool {
        self.first.contains_key(claim)
    }

    /// Claims remembered.
    pub fn len(&self) -> usize {
        self.first.len()
    }

    /// Whether no claim is remembered.
    pub fn is_empty(&self) -> bool {
        self.first.is_empty()
    }
}

#[derive(Debug, Default)]
struct Inner {
    book: Mutex<Book>,
    waiters: Mutex<HashMap<String, oneshot::Sender<bool>>>,
}

/// A pool's claims: the book, fed by [`Claims::follow`], and [`Claims::claim`].
#[derive(Debug, Clone)]
pub struct Claims {
    worker: String,
    stream: String,
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Claims {
    pub fn new(worker: &str, pool: &str) -> Self {
        Claims {
            worker: worker.to_string(),
            stream: topology::claims_stream(pool),
            inner: Arc::default(),
        }
    }

    /// Claims remembered now.
    pub fn remembered(&self) -> usize {
        lock(&self.inner.book).len()
    }

    /// Reads the claims stream for as long as the connection lives (one per
    /// connection), from the oldest claim that can still matter.
    pub async fn follow(&self, conn: Arc<Connection>) -> Result<(), lapin::Error> {
        let ch = conn.create_channel().await?;
        topology::declare_claims(&ch, pool_of(&self.stream)).await?;
        let from = now_unix().saturating_sub(MAX_VALIDITY.as_secs() + CLOCK_SKEW.as_secs());
        let tag = format!("krill-claims.{}", self.worker);
        let mut consumer =
            amqp::consume_stream(&ch, &self.stream, &tag, PREFETCH, StreamFrom::Since(from))
                .await?;
        while let Some(d) = consumer.next().await {
            let d = d?;
            tracing::trace!(bytes = d.data.len(), "claims stream delivery");
            if let Ok(m) = serde_json::from_slice::<ClaimMsg>(&d.data) {
                let first = lock(&self.inner.book).observe(&m, now_unix());
                if m.worker == self.worker {
                    if let Some(tx) = lock(&self.inner.waiters).remove(&m.nonce) {
                        let _ = tx.send(first);
                    }
                }
            }
            d.acker.ack(BasicAckOptions::default()).await?;
        }
        Ok(())
    }

    /// Claims message `claim` (valid until `not_after`): `Ok(true)` when this
    /// worker's claim is the first in stream order, `Ok(false)` when another
    /// claim came first (the message is a replay).
    pub async fn claim(
        &self,
        outbound: &Outbound,
        claim: &str,
        not_after: u64,
    ) -> Result<bool, ClaimError> {
        if lock(&self.inner.book).claimed(claim) {
            return Ok(false);
        }
        let m = ClaimMsg {
            claim: claim.to_string(),
            nonce: uuid::Uuid::new_v4().simple().to_string(),
            worker: self.worker.clone(),
            not_after,
        };
        let (tx, mut rx) = oneshot::channel();
        lock(&self.inner.waiters).insert(m.nonce.clone(), tx);
        let body = serde_json::to_vec(&m).unwrap_or_default();
        let began = std::time::Instant::now();
        let publish = outbound.claim(&self.stream, body);
        tokio::pin!(publish);
        let deadline = tokio::time::sleep(CLAIM_TIMEOUT);
        tokio::pin!(deadline);
        let mut published = false;
        let out = loop {
            tokio::select! {
                biased;
                won = &mut rx => {
                    tracing::debug!(claim, read_back_us = began.elapsed().as_micros() as u64, "claim read back");
                    break won.map_err(|_| ClaimError::Timeout(CLAIM_TIMEOUT));
                }
                r = &mut publish, if !published => {
                    tracing::debug!(claim, confirmed_us = began.elapsed().as_micros() as u64, "claim confirmed");
                    published = true;
                    match r {
                        Ok(Published::Confirmed | Published::Sent) => {}
                        Ok(Published::Unroutable | Published::Dropped) => break Err(ClaimError::NoStream(self.stream.clone())),
                        Err(_) => break Err(ClaimError::GaveUp),
                    }
                }
                _ = &mut deadline => break Err(ClaimError::Timeout(CLAIM_TIMEOUT)),
            }
        };
        lock(&self.inner.waiters).remove(&m.nonce);
        out
    }
}

fn pool_of(stream: &str) -> &str {
    stream
        .strip_prefix(topology::CLAIMS_STREAM_PREFIX)
        .unwrap_or(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(claim: &str, nonce: &str, na: u64) -> ClaimMsg {
        ClaimMsg {
            claim: claim.into(),
            nonce: nonce.into(),
            worker: "w".into(),
            not_after: na,
        }
    }

    #[test]
    fn the_first_claim_in_stream_order_wins() {
        let mut b = Book::default();
        assert!(b.observe(&m("c1", "a", 100), 50));
        assert!(!b.observe(&m("c1", "b", 100), 50), "a later claim loses");
        assert!(
            b.observe(&m("c1", "a", 100), 50),
            "the winner seen again still wins"
        );
        assert!(b.observe(&m("c2", "b", 100), 50));
        assert!(b.claimed("c1") && !b.claimed("c3"));
    }

    #[test]
    fn claims_past_their_validity_are_forgotten() {
        let mut b = Book::default();
        b.observe(&m("old", "a", 100), 50);
        let later = 100 + CLOCK_SKEW.as_secs() + 1;
        for i in 0..PRUNE_EVERY {
            b.observe(&m(&format!("new{i}"), "a", later + 100), later);
        }
        assert!(!b.claimed("old"));
        assert!(b.claimed("new0"));
    }
}
