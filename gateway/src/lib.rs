//! # Krill gateway: submit over HTTP, and the task history
//!
//! ## Layout
//! - [`rights`]: bearer tokens (hashed) and what each caller may do.
//! - [`store`]: the history database (SQLite or PostgreSQL, one code path, migrations).
//! - [`tokens`]: the tokens table: add, look up (expiry), list, remove.
//! - [`history`]: task events and results (its own durable queues) into the store, in batches.
//! - [`submit`]: `POST /v1/tasks`: validate, idempotency key, sign and seal, publish confirmed.
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
pub mod rights;
pub mod serve;
pub mod store;
pub mod submit;
pub mod tokens;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use broker::client::Client;
use broker::trust::Credentials;
use tokio::sync::{broadcast, RwLock};

/// How long an `Idempotency-Key` holds its first task.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// Tells waiters a task's row changed (ids on a broadcast channel).
#[derive(Debug)]
pub struct Notifier(broadcast::Sender<String>);

impl Default for Notifier {
    fn default() -> Self {
        Notifier(broadcast::channel(4096).0)
    }
}

impl Notifier {
    pub fn notify(&self, id: &str) {
        let _ = self.0.send(id.to_string());
    }
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.0.subscribe()
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
