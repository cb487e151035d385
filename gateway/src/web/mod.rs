//! # The web view: server-rendered pages over the history and the live pool view
//!
//! ## Layout
//! - [`session`]: sign-in with a token → a cookie-backed session; CSRF tokens on every form.
//! - [`throttle`]: failed sign-ins per client address (429 past a burst).
//! - [`db`]: the sessions and pool samples tables.
//! - [`live`]: the sampler: the heartbeat report every few seconds (what the
//!   pages show) and pool samples into the database (what the charts draw).
//! - [`why`]: why a task waits, in one sentence with a link to the blocker.
//! - [`chart`]: queue depth and running tasks over the last hour as inline SVG.
//! - [`pages`]: the pages (workers, tasks, a task, pools, dead letters) and their forms.
//! - [`assets`]: the vendored CSS and script, served by the gateway.
//!
//! Pages are HTML from `maud` (escaped by default); no framework, no CDN, no
//! external font. Every page links its JSON twin under `/v1/`.

pub mod assets;
pub mod chart;
pub mod db;
pub mod live;
pub mod pages;
pub mod session;
pub mod throttle;
pub mod why;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;

use crate::AppState;

/// How long a session lasts by default.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The web view's settings and its live state.
#[derive(Debug, Default)]
pub struct Web {
    /// Mark the session cookie `Secure` (the gateway is behind TLS).
    pub secure_cookie: bool,
    pub session_ttl: Duration,
    /// The latest heartbeat report (the sampler refreshes it).
    pub live: live::Live,
    /// Failed sign-ins per client address.
    pub throttle: throttle::Throttle,
}

impl Web {
    pub fn new(secure_cookie: bool, session_ttl: Duration) -> Web {
        Web {
            secure_cookie,
            session_ttl,
            live: live::Live::default(),
            throttle: throttle::Throttle::default(),
        }
    }
}

/// The whole app: the JSON API (its writes without the cookie: see
/// [`session::reads_only`]) and the pages.
pub fn app(api: Router, st: Arc<AppState>) -> Router {
    api.layer(axum::middleware::from_fn(session::reads_only))
        .merge(router().with_state(st))
}

/// The pages' routes.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(pages::home))
        .route("/signin", get(session::signin_page).post(session::signin))
        .route("/signout", post(session::signout))
        .route("/workers", get(pages::workers::page))
        .route("/workers/{id}/drain", post(pages::workers::drain))
        .route("/workers/{id}/resume", post(pages::workers::resume))
        .route("/tasks", get(pages::tasks::page))
        .route("/tasks/{id}", get(pages::task::page))
        .route("/tasks/{id}/cancel", post(pages::task::cancel))
        .route("/pools", get(pages::pools::page))
        .route("/dead", get(pages::dead::page))
        .route("/dead/{id}/replay", post(pages::dead::replay))
        .route("/assets/{name}", get(assets::serve))
}
