//! # Krill gateway: submit over HTTP, and the task history
//!
//! ## Layout
//! - [`rights`]: bearer tokens (hashed) and what each caller may do.
//! - [`store`]: the history database (SQLite or PostgreSQL, one code path, migrations).
//! - [`tokens`]: the tokens table: add, look up (expiry), list, remove.
//! - [`history`]: task events and results (its own durable queues) into the store, in batches.
//! - [`submit`]: `POST /v1/tasks`: validate, idempotency key, sign and seal, publish confirmed.
//! - [`phases`]: per-task phase timings of the HTTP path (`krill::phases=debug`).
//! - [`live`]: live output of the tasks submitted here, kept from their first chunk.
//! - [`ops`]: the operators' routes: workers, pools, drain/resume, dead letters.
//! - [`api`]: the router, the other handlers and the OpenAPI document.
//! - [`error`]: JSON errors with their status codes.
//! - [`serve`]: the gateway's task tree: broker connection, recorder, retention, HTTP.
//! - [`web`]: the web view at `/`: sign-in sessions, the pages, the pool sampler.
//! - `bin/krill-gateway.rs`: the binary, thin over [`serve`].

#![forbid(unsafe_code)]

pub mod api;
pub mod error;
pub mod history;
pub mod live;
pub mod ops;
pub mod phases;
pub mod rights;
pub mod serve;
pub mod store;
pub mod submit;
pub mod tokens;
pub mod web;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use broker::client::Client;
use broker::protocol::TaskResult;
use broker::trust::Credentials;
use tokio::sync::{broadcast, RwLock};

/// How long an `Idempotency-Key` holds its first task.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// Tells waiters a task's row changed (ids on a broadcast channel), and hands
/// them a result the moment the recorder takes it, before its batch is
/// committed ([`Notifier::fresh`]): a long poll answers from the reply itself
/// while the history still records it (the message is acked only after).
#[derive(Debug)]
pub struct Notifier {
    changed: broadcast::Sender<String>,
    fresh: Mutex<HashMap<String, Arc<TaskResult>>>,
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier {
            changed: broadcast::channel(4096).0,
            fresh: Mutex::default(),
        }
    }
}

impl Notifier {
    pub fn notify(&self, id: &str) {
        let _ = self.changed.send(id.to_string());
    }
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changed.subscribe()
    }

    fn results(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<TaskResult>>> {
        self.fresh.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A result taken from the broker, not stored yet: kept until
    /// [`Notifier::stored`], and its waiters told.
    pub fn taken(&self, r: Arc<TaskResult>) {
        let id = r.id.clone();
        self.results().insert(id.clone(), r);
        self.notify(&id);
    }

    /// Task `id`'s result if it was taken and its batch is not settled yet.
    pub fn fresh(&self, id: &str) -> Option<Arc<TaskResult>> {
        self.results().get(id).cloned()
    }

    /// The batch holding task `id`'s result is settled (stored, or put back to
    /// come again): the store answers from now on; its waiters told.
    pub fn stored(&self, id: &str) {
        self.results().remove(id);
        self.notify(id);
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub store: store::Store,
    pub amqp_url: String,
    /// The reply queue of the tasks submitted here ([`history::replies_queue`]).
    pub replies: String,
    /// The broker connection; dropped after a failure and opened again on demand.
    pub broker: RwLock<Option<Arc<Client>>>,
    /// The gateway's key (signs on behalf of callers) and the pool key secrets are sealed to.
    pub creds: Credentials,
    pub notify: Arc<Notifier>,
    /// Largest request body accepted.
    pub max_body: usize,
    /// Live output of the tasks submitted here, from their first chunk.
    pub live: live::Live,
    /// Owns the result collectors.
    pub tasks: tokio_util::task::TaskTracker,
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The web view's settings and live pool view.
    pub web: web::Web,
}

impl AppState {
    /// The broker client, connecting when there is none.
    pub async fn client(&self) -> Result<Arc<Client>, error::ApiError> {
        if let Some(c) = self.broker.read().await.as_ref() {
            return Ok(c.clone());
        }
        let mut slot = self.broker.write().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = Client::connect(&self.amqp_url)
            .await
            .map_err(|e| error::ApiError::Unavailable(format!("the broker is unreachable: {e}")))?
            .with_credentials(self.creds.clone());
        let c = Arc::new(c);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Forgets a broken broker connection.
    pub async fn broker_failed(&self) {
        *self.broker.write().await = None;
    }
}
