//! `POST /v1/tasks`: the task JSON of the queue (`version` and `id` filled in
//! when absent), checked as the worker would, the caller's right to the pool,
//! the `Idempotency-Key` claimed in the database (its primary key decides
//! between parallel repeats), then signed and sealed by the broker crate's
//! client and published with a confirm, its result to come on the gateway's
//! one reply queue. 202 only after the confirm.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use broker::client::ClientError;
use broker::protocol::{Task, PROTOCOL_VERSION};
use broker::topology;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::authenticate;
use crate::error::ApiError;
use crate::rights::Caller;
use crate::store::Claim;
use crate::{AppState, IDEMPOTENCY_TTL};

/// How long a repeat waits for the first request of its key to be confirmed.
pub const REPEAT_WAIT: Duration = Duration::from_secs(30);

/// `?pool=` of a submit.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct SubmitQuery {
    /// The pool (default `default`).
    pub pool: Option<String>,
}

/// The answer to a submit.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Submitted {
    pub id: String,
    pub pool: String,
    /// Whether this answers a repeat of an earlier request (same Idempotency-Key).
    pub repeated: bool,
    pub links: Links,
}

/// Where to look next.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Links {
    #[serde(rename = "self")]
    pub this: String,
    pub wait: String,
    pub logs: String,
}

impl Submitted {
    fn new(id: String, pool: String, repeated: bool) -> Self {
        let this = format!("/v1/tasks/{id}");
        Submitted {
            links: Links {
                wait: format!("{this}/wait"),
                logs: format!("{this}/logs"),
                this,
            },
            id,
            pool,
            repeated,
        }
    }
}

/// Submit a task.
#[utoipa::path(post, path = "/v1/tasks", params(SubmitQuery),
    request_body(content = Object, description = "The task JSON of the queue contract (broker/schema/task.json); `version` and `id` may be left out"),
    responses((status = 202, body = Submitted), (status = 200, body = Submitted, description = "a repeat of an earlier request"),
        (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody),
        (status = 413, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
pub async fn submit(
    State(st): State<Arc<AppState>>,
    Query(q): Query<SubmitQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::response::Response, ApiError> {
    let received_unix_us = crate::phases::on().then(crate::phases::unix_us);
    let t0 = std::time::Instant::now();
    let caller = authenticate(&st, &headers).await?;
    let auth_us = t0.elapsed().as_micros() as u64;
    let bytes = axum::body::to_bytes(body, st.max_body)
        .await
        .map_err(|_| ApiError::TooLarge(st.max_body))?;
    let pool = q.pool.unwrap_or_else(|| topology::DEFAULT_POOL.to_string());
    if !topology::valid_pool(&pool) {
        return Err(ApiError::BadRequest(format!(
            "invalid pool name `{pool}` (1-64 characters of a-z 0-9 - _)"
        )));
    }
    if !caller.rights.may_submit(&pool) {
        return Err(ApiError::Forbidden(format!(
            "token `{}` may not submit to pool `{pool}`",
            caller.name
        )));
    }
    let task = parse_task(&bytes)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 255 => Some(k.to_string()),
            _ => {
                return Err(ApiError::BadRequest(
                    "Idempotency-Key must be 1-255 visible ASCII characters".into(),
                ))
            }
        },
    };
    let hash = request_hash(&pool, &bytes);
    if let Some(key) = &key {
        if let Some(done) = claim(&st, &caller, key, &task.id, &hash).await? {
            return Ok((StatusCode::OK, Json(done)).into_response());
        }
    } else if st.store.exists(&task.id).await? {
        return Err(ApiError::Conflict(format!(
            "a task with id {} already exists: leave `id` out to get a fresh one",
            task.id
        )));
    }
    let checks_us = t0.elapsed().as_micros() as u64;
    let published = publish(&st, &caller, &pool, &task).await;
    if let Err(e) = published {
        if let Some(key) = &key {
            st.store.release_key(&caller.name, key).await?;
        }
        return Err(e);
    }
    let published_us = t0.elapsed().as_micros() as u64;
    if let Some(key) = &key {
        st.store.confirm_key(&caller.name, key).await?;
    }
    if let Some(received_unix_us) = received_unix_us {
        tracing::debug!(target: crate::phases::TARGET, task_id = %task.id, received_unix_us,
            auth_us, checks_us, published_us, answered_unix_us = crate::phases::unix_us(),
            "submit phases");
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Submitted::new(task.id, pool, false)),
    )
        .into_response())
}

/// The task from the body: `version`, `id` and `submitted_at` filled in when
/// absent, then the worker's own checks.
pub fn parse_task(bytes: &[u8]) -> Result<Task, ApiError> {
    let mut v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("the body must be a JSON object (a task)".into()))?;
    obj.entry("version")
        .or_insert_with(|| serde_json::json!(PROTOCOL_VERSION));
    obj.entry("id")
        .or_insert_with(|| serde_json::json!(uuid::Uuid::now_v7().to_string()));
    obj.entry("submitted_at")
        .or_insert_with(|| serde_json::json!(chrono::Utc::now()));
    let task: Task = serde_json::from_value(v)
        .map_err(|e| ApiError::BadRequest(format!("invalid task: {e}")))?;
    task.validate()
        .map_err(|e| ApiError::BadRequest(format!("invalid task: {e}")))?;
    Ok(task)
}

fn request_hash(pool: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(pool.as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Claims the key; `Some` when an earlier request already holds it (and was
/// confirmed): its answer.
async fn claim(
    st: &AppState,
    caller: &Caller,
    key: &str,
    id: &str,
    hash: &str,
) -> Result<Option<Submitted>, ApiError> {
    let deadline = tokio::time::Instant::now() + REPEAT_WAIT;
    loop {
        let ttl = IDEMPOTENCY_TTL.as_millis() as i64;
        match st.store.claim_key(&caller.name, key, id, hash, ttl).await? {
            Claim::Fresh => return Ok(None),
            Claim::Taken { request_hash, .. } if request_hash != hash => {
                return Err(ApiError::Conflict(format!(
                    "Idempotency-Key `{key}` was used in the last 24 h for another request: \
                     use a new key for a new task"
                )))
            }
            Claim::Taken {
                task_id,
                confirmed: true,
                ..
            } => {
                let pool = st
                    .store
                    .get(&task_id)
                    .await?
                    .map(|t| t.pool)
                    .unwrap_or_default();
                return Ok(Some(Submitted::new(task_id, pool, true)));
            }
            Claim::Taken { .. } => {
                // The first request is still publishing: its answer decides.
                if tokio::time::Instant::now() > deadline {
                    return Err(ApiError::Conflict(format!(
                        "the first request with Idempotency-Key `{key}` is still being submitted; \
                         try again shortly"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Records the task and publishes it (confirmed) with the gateway's replies
/// queue as `reply_to` (the recorder stores its result); on failure the
/// record is removed again.
async fn publish(
    st: &Arc<AppState>,
    caller: &Caller,
    pool: &str,
    task: &Task,
) -> Result<(), ApiError> {
    let spec = spec_json(task)?;
    // Followed before it is published (the gateway's one log consumer is
    // bound already): no chunk of it can be missed.
    crate::live::open(st, &task.id);
    // The row and the broker connection do not depend on each other.
    let (inserted, client) = tokio::join!(
        st.store
            .insert_submitted(&task.id, pool, &caller.name, &spec),
        st.client()
    );
    if let Err(e) = inserted {
        st.live.forget(&task.id);
        return Err(e.into());
    }
    if crate::phases::on() {
        tracing::debug!(target: crate::phases::TARGET, task_id = %task.id,
            prepared_unix_us = crate::phases::unix_us(), "submit prepared");
    }
    let outcome = match client {
        Ok(client) => client
            .submit_replying_to(pool, task, &st.replies)
            .await
            .map_err(map_client_error),
        Err(e) => Err(e),
    };
    if let Err(e) = outcome {
        st.live.forget(&task.id);
        if matches!(e, ApiError::Unavailable(_)) {
            st.broker_failed().await;
        }
        st.store.forget(&task.id).await?;
        return Err(e);
    }
    Ok(())
}

fn map_client_error(e: ClientError) -> ApiError {
    match e {
        ClientError::Invalid(e) => ApiError::BadRequest(format!("invalid task: {e}")),
        ClientError::Pool(p) => ApiError::BadRequest(format!("invalid pool name `{p}`")),
        ClientError::Unroutable(p) => ApiError::NotFound(format!(
            "no queue for pool `{p}`: no worker has declared it yet (start a worker with KRILL_POOL={p})"
        )),
        ClientError::Trust(e) => ApiError::Internal(format!("signing or sealing: {e}")),
        ClientError::Json(e) => ApiError::Internal(e.to_string()),
        ClientError::Nacked => ApiError::Unavailable(
            "the broker refused the task (queue full or out of resources); nothing was submitted"
                .into(),
        ),
        e => ApiError::Unavailable(format!(
            "the broker did not confirm the task, so it was not submitted: {e}"
        )),
    }
}

/// What the history keeps of a task: everything but secret values (their
/// names stay, the value is `***`, sealed or not).
pub fn spec_json(task: &Task) -> Result<String, ApiError> {
    let mut v = serde_json::to_value(task).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(secrets) = v.get_mut("secrets").and_then(|s| s.as_object_mut()) {
        for val in secrets.values_mut() {
            *val = serde_json::json!("***");
        }
    }
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_task_is_filled_in_and_secrets_stay_out_of_the_spec() {
        let t =
            parse_task(br#"{"script":"echo hi","secrets":{"K":"v-123-secret"}}"#).expect("task");
        assert_eq!(t.version, PROTOCOL_VERSION);
        assert!(!t.id.is_empty());
        let spec = spec_json(&t).expect("spec");
        assert!(!spec.contains("v-123-secret"), "{spec}");
        assert!(spec.contains("\"K\":\"***\""), "{spec}");
    }

    #[test]
    fn invalid_tasks_say_why() {
        let e = parse_task(br#"{"script":"x","colour":"red"}"#).expect_err("unknown field");
        assert!(e.to_string().contains("colour"), "{e}");
        assert!(parse_task(b"[1]").is_err());
        assert!(parse_task(b"nope").is_err());
    }
}
