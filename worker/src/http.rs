//! The worker's HTTP endpoints (on `--metrics-addr`): `/healthz` (the process is
//! up), `/readyz` (connected to RabbitMQ, every enabled sandbox usable, and
//! results going out: not degraded) and
//! `/metrics` (Prometheus/OpenMetrics text).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::worker::Shared;

/// Liveness: answers while the process is up.
pub const HEALTHZ: &str = "/healthz";
/// Readiness: connected to RabbitMQ, every enabled sandbox usable, not degraded.
pub const READYZ: &str = "/readyz";
/// Prometheus metrics.
pub const METRICS: &str = "/metrics";

/// How long `/readyz` waits for a sandbox backend (Docker) to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// The routes, over the worker's shared state.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(HEALTHZ, get(healthz))
        .route(READYZ, get(readyz))
        .route(METRICS, get(metrics))
        .with_state(shared)
}

/// Serves on `listener` until the worker's root token is cancelled (after the
/// drain, so the figures stay visible while running tasks finish).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let root = shared.root.clone();
    let app = router(shared);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { root.cancelled().await })
        .await
    {
        tracing::warn!(error = %e, "the metrics server stopped");
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let broker = shared.run.outbound.connected();
    let sandboxes = tokio::time::timeout(READY_TIMEOUT, shared.run.sandboxes.ready())
        .await
        .unwrap_or(false);
    let degraded = shared.degraded();
    let body = format!(
        "broker: {}\nsandboxes: {}\ndraining: {}\ndegraded: {}\n",
        if broker { "connected" } else { "not connected" },
        if sandboxes { "ready" } else { "not ready" },
        shared.is_draining(),
        degraded.unwrap_or("no"),
    );
    let code = if broker && sandboxes && degraded.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let m = &shared.run.metrics;
    m.refresh(&shared.snapshot());
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        m.encode(),
    )
}
