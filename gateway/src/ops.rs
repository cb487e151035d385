//! The operators' routes: workers and pools (what `krill status` shows),
//! drain/resume, and the dead letters (list, replay), each with its right.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;

use crate::api::{authenticate, control, Accepted};
use crate::error::{ApiError, ErrorBody};
use crate::rights::Caller;
use crate::AppState;

/// `?since=SECS&pool=a,b` of `/v1/workers` and `/v1/pools` (what `krill
/// status --since --pool` asks): heartbeats of the last `since` seconds
/// (default 60, at most a day), and these pools even when no worker serves them.
#[derive(Debug, Default, Deserialize)]
pub struct StatusQuery {
    pub since: Option<u64>,
    pub pool: Option<String>,
}

async fn report(st: &AppState, q: &StatusQuery) -> Result<broker::status::Report, ApiError> {
    let since = Duration::from_secs(q.since.unwrap_or(60).clamp(1, 86_400));
    let pools: Vec<String> = q
        .pool
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    broker::status::gather(&st.amqp_url, since, &pools)
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot read the workers' heartbeats: {e}")))
}

pub(crate) fn need(ok: bool, caller: &Caller, right: &str) -> Result<(), ApiError> {
    if ok {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "token `{}` lacks the right `{right}`",
            caller.name
        )))
    }
}

/// Live workers (from their heartbeats of the last minute).
#[utoipa::path(get, path = "/v1/workers", params(("since" = Option<u64>, Query), ("pool" = Option<String>, Query)), responses((status = 200, description = "broker::status::WorkerStatus list"), (status = 403, body = ErrorBody)))]
pub async fn workers(
    State(st): State<Arc<AppState>>,
    Query(q): Query<StatusQuery>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = authenticate(&st, &headers).await?;
    need(caller.rights.see_all, &caller, "see:all")?;
    let r = report(&st, &q).await?;
    Ok(Json(
        serde_json::json!({ "workers": r.workers, "keys": r.keys }),
    ))
}

/// Pools: queue depth, workers, slots.
#[utoipa::path(get, path = "/v1/pools", params(("since" = Option<u64>, Query), ("pool" = Option<String>, Query)), responses((status = 200, description = "broker::status::PoolStatus list"), (status = 403, body = ErrorBody)))]
pub async fn pools(
    State(st): State<Arc<AppState>>,
    Query(q): Query<StatusQuery>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = authenticate(&st, &headers).await?;
    need(caller.rights.see_all, &caller, "see:all")?;
    let r = report(&st, &q).await?;
    Ok(Json(serde_json::json!({ "pools": r.pools })))
}

/// Ask a worker (`all`: every worker) to stop claiming.
#[utoipa::path(post, path = "/v1/workers/{id}/drain", params(("id" = String, Path)), responses((status = 202, body = Accepted), (status = 403, body = ErrorBody)))]
pub async fn drain(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    drain_or_resume(st, id, headers, true).await
}

/// Ask a worker (`all`: every worker) to claim again.
#[utoipa::path(post, path = "/v1/workers/{id}/resume", params(("id" = String, Path)), responses((status = 202, body = Accepted), (status = 403, body = ErrorBody)))]
pub async fn resume(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    drain_or_resume(st, id, headers, false).await
}

async fn drain_or_resume(
    st: Arc<AppState>,
    id: String,
    headers: HeaderMap,
    drain: bool,
) -> Result<axum::response::Response, ApiError> {
    let caller = authenticate(&st, &headers).await?;
    need(caller.rights.drain, &caller, "drain")?;
    let target = (id != "all").then(|| id.clone());
    control(&st, move |c| {
        Box::pin(async move {
            if drain {
                c.drain(target.as_deref()).await
            } else {
                c.resume(target.as_deref()).await
            }
        })
    })
    .await?;
    let what = format!("{} {id}", if drain { "drain" } else { "resume" });
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            accepted: true,
            what,
        }),
    )
        .into_response())
}

/// Dead letters, with their reasons.
#[utoipa::path(get, path = "/v1/dead", responses((status = 200, description = "broker::dead::DeadLetter list"), (status = 403, body = ErrorBody)))]
pub async fn dead(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = authenticate(&st, &headers).await?;
    need(caller.rights.replay, &caller, "replay")?;
    let client = st.client().await?;
    let list = client
        .dead_list()
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot read krill.dead: {e}")))?;
    Ok(Json(serde_json::json!({ "dead": list })))
}

/// Put a dead task back on its pool's queue.
#[utoipa::path(post, path = "/v1/dead/{id}/replay", params(("id" = String, Path)), responses((status = 202, body = Accepted), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn replay(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    let caller = authenticate(&st, &headers).await?;
    need(caller.rights.replay, &caller, "replay")?;
    let client = st.client().await?;
    let (done, _skipped) = client
        .dead_replay(Some(&id))
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot replay: {e}")))?;
    if done.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no dead letter {id} that can be replayed"
        )));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            accepted: true,
            what: format!("replay {id}"),
        }),
    )
        .into_response())
}
