//! The HTTP API: the router, the task views (get, wait, logs, cancel, search),
//! workers and pools, drain/resume, dead letters, and the OpenAPI document
//! generated from the types (`/v1/openapi.json`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use broker::protocol::TaskResult;
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

use crate::error::{ApiError, ErrorBody};
use crate::rights::Caller;
use crate::store::{Search, TaskRow};
use crate::{ops, AppState};

/// Longest `?timeout=` of a wait, seconds.
pub const MAX_WAIT_SECS: u64 = 300;
/// Page size of a search when none is asked; also the largest.
pub const PAGE: i64 = 100;

/// The router of every route.
pub fn router(st: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/tasks", post(crate::submit::submit).get(search))
        .route("/v1/tasks/{id}", get(get_task).delete(cancel))
        .route("/v1/tasks/{id}/wait", get(wait))
        .route("/v1/tasks/{id}/logs", get(logs))
        .route("/v1/workers", get(ops::workers))
        .route("/v1/pools", get(ops::pools))
        .route("/v1/workers/{id}/drain", post(ops::drain))
        .route("/v1/workers/{id}/resume", post(ops::resume))
        .route("/v1/dead", get(ops::dead))
        .route("/v1/dead/{id}/replay", post(ops::replay))
        .route("/v1/openapi.json", get(openapi))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(st)
}

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Krill gateway", description = "Submit tasks over HTTP and read their history"),
    paths(crate::submit::submit, get_task, wait, logs, cancel, search, ops::workers, ops::pools, ops::drain, ops::resume, ops::dead, ops::replay),
    components(schemas(TaskView, Timings, crate::submit::Submitted, crate::submit::Links, ErrorBody, TaskEventView, Page, Accepted)),
    modifiers(&Bearer)
)]
#[derive(Debug)]
pub struct ApiDoc;

struct Bearer;
impl utoipa::Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        doc.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The caller of a request, from `Authorization: Bearer …` (else a web session's cookie, GET only).
pub async fn authenticate(st: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let Some(token) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return crate::web::session::cookie_caller(st, headers).await;
    };
    match st.store.caller(token.trim()).await? {
        Some(crate::tokens::Found::Caller(c)) => Ok(c),
        Some(crate::tokens::Found::Expired { name, at }) => Err(ApiError::Expired(format!(
            "token `{name}` expired at {}: ask the operator for a new one (krill-gateway tokens add {name} --expires …)",
            rfc3339(Some(at)).unwrap_or_default()
        ))),
        None => Err(ApiError::Unauthorized),
    }
}

/// When a task was submitted, started and finished (RFC 3339).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Timings {
    pub submitted_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub updated_at: Option<String>,
}

/// One step of a task's life as the events told it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskEventView {
    pub state: String,
    pub worker: String,
    pub at: Option<String>,
    pub detail: Option<String>,
}

/// A task as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskView {
    pub id: String,
    pub pool: String,
    /// `queued`, `blocked`, `started` or `finished`.
    pub state: String,
    /// How it ended (once finished): the result's status.
    pub status: Option<String>,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    /// While it waits for its concurrency key: what it waits for (the `blocked` event's detail).
    #[schema(value_type = Option<Object>)]
    pub blocked_by: Option<serde_json::Value>,
    pub worker: Option<String>,
    pub sandbox: Option<String>,
    pub attempt: Option<i64>,
    /// The key that signed it (the gateway's for tasks submitted here).
    pub submitter: Option<String>,
    /// The token that submitted it here (none: submitted straight to AMQP).
    pub caller: Option<String>,
    pub timings: Timings,
    /// The task as submitted, secret values as `***`.
    #[schema(value_type = Option<Object>)]
    pub task: Option<serde_json::Value>,
    /// The masked result (tasks submitted here); sensitive outputs opened only
    /// for the caller that submitted, else `***`.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub events: Vec<TaskEventView>,
}

pub fn rfc3339(ms: Option<i64>) -> Option<String> {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

impl TaskView {
    fn new(t: TaskRow, caller: &Caller, st: &AppState, events: Vec<TaskEventView>) -> TaskView {
        let own = t.caller.as_deref() == Some(caller.name.as_str());
        let result = t.result.as_deref().and_then(|r| {
            let mut r: TaskResult = serde_json::from_str(r).ok()?;
            if own {
                if let Some(id) = st.creds.identity.as_deref() {
                    crate::serve::open_outputs(&mut r, id);
                }
            }
            for o in &mut r.outputs {
                if o.sealed.is_some() && !own {
                    o.value = "***".into();
                    o.sealed = None;
                }
            }
            serde_json::to_value(r).ok()
        });
        TaskView {
            timings: Timings {
                submitted_at: rfc3339(t.submitted_at),
                started_at: rfc3339(t.started_at),
                finished_at: rfc3339(t.finished_at),
                updated_at: rfc3339(Some(t.updated_at)),
            },
            blocked_by: t
                .blocked
                .as_deref()
                .and_then(|b| serde_json::from_str(b).ok()),
            task: t.spec.as_deref().and_then(|s| serde_json::from_str(s).ok()),
            result,
            events,
            id: t.id,
            pool: t.pool,
            state: t.state,
            status: t.status,
            exit_code: t.exit_code,
            error: t.error,
            worker: t.worker,
            sandbox: t.sandbox,
            attempt: t.attempt,
            submitter: t.submitter,
            caller: t.caller,
        }
    }
}

/// The row of a task the caller may see (404 otherwise: not even its
/// existence shows), with its result when the recorder has taken it but not
/// committed it yet.
async fn visible(st: &AppState, caller: &Caller, id: &str) -> Result<TaskRow, ApiError> {
    match st.store.get(id).await? {
        Some(t) if caller.may_see(t.caller.as_deref()) => match st.notify.fresh(id) {
            // Taken by the recorder, its batch not committed yet: the row as
            // the store will have it (so every view here agrees with a wait
            // that answered from it).
            Some(r) if !done(&t) => Ok(crate::history::merge_result(t, &r)?),
            _ => Ok(t),
        },
        _ => Err(ApiError::NotFound(format!(
            "no task {id} (or not yours to see)"
        ))),
    }
}

async fn view(st: &AppState, caller: &Caller, t: TaskRow) -> Result<TaskView, ApiError> {
    let events = st
        .store
        .events(&t.id)
        .await?
        .into_iter()
        .map(|(state, worker, at, detail)| TaskEventView {
            state,
            worker,
            at: rfc3339(Some(at)),
            detail,
        })
        .collect();
    Ok(TaskView::new(t, caller, st, events))
}

/// One task: state, blocked-by, timings, the masked result.
#[utoipa::path(get, path = "/v1/tasks/{id}", params(("id" = String, Path)),
    responses((status = 200, body = TaskView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_task(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<TaskView>, ApiError> {
    let caller = authenticate(&st, &headers).await?;
    let t = visible(&st, &caller, &id).await?;
    Ok(Json(view(&st, &caller, t).await?))
}

/// `?timeout=` of a wait.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct WaitQuery {
    /// Seconds to wait at most (default 30, at most 300).
    pub timeout: Option<u64>,
}

/// Whether a task's wait is over: it finished and, when the gateway submitted
/// it, its result is stored.
fn done(t: &TaskRow) -> bool {
    t.state == "finished" && (t.caller.is_none() || t.result.is_some())
}

/// Long poll: the task once it has finished, or as it is when the timeout
/// passes. Answered from the result as soon as the recorder takes it from the
/// broker (not after its batch is committed); `events` lists what the store
/// had recorded by then.
#[utoipa::path(get, path = "/v1/tasks/{id}/wait", params(("id" = String, Path), WaitQuery),
    responses((status = 200, body = TaskView, description = "finished, or the timeout passed (see `state`)"), (status = 404, body = ErrorBody)))]
pub async fn wait(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
) -> Result<Json<TaskView>, ApiError> {
    let received_unix_us = crate::phases::on().then(crate::phases::unix_us);
    let caller = authenticate(&st, &headers).await?;
    let timeout = Duration::from_secs(q.timeout.unwrap_or(30).min(MAX_WAIT_SECS));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut changes = st.notify.subscribe();
    let mut woken_unix_us = 0;
    loop {
        let t = visible(&st, &caller, &id).await?;
        if done(&t) || tokio::time::Instant::now() >= deadline {
            let v = view(&st, &caller, t).await?;
            if let Some(received_unix_us) = received_unix_us {
                tracing::debug!(target: crate::phases::TARGET, task_id = %id, received_unix_us,
                    woken_unix_us, answered_unix_us = crate::phases::unix_us(), "wait phases");
            }
            return Ok(Json(v));
        }
        // Woken by this task's change; a poll of the database now and then
        // catches what another gateway of the same database recorded.
        let poll = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(poll);
        loop {
            tokio::select! {
                _ = &mut poll => break,
                _ = tokio::time::sleep_until(deadline) => break,
                m = changes.recv() => match m {
                    Ok(changed) if changed == id => break,
                    Ok(_) => {}
                    Err(_) => break,
                },
            }
        }
        if received_unix_us.is_some() {
            woken_unix_us = crate::phases::unix_us();
        }
    }
}

/// The task's output as Server-Sent Events (`stdout`/`stderr` events, then `end`):
/// live chunks while it runs (from the first one for a task submitted here,
/// see [`crate::live`]; else from the connection on), the stored (masked,
/// capped) output once it has finished.
#[utoipa::path(get, path = "/v1/tasks/{id}/logs", params(("id" = String, Path)),
    responses((status = 200, description = "text/event-stream"), (status = 404, body = ErrorBody)))]
pub async fn logs(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    let caller = authenticate(&st, &headers).await?;
    let t = visible(&st, &caller, &id).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    // Still running: its buffer (from the first chunk when it was submitted
    // here, else from now on). Once finished, the stored output serves: it is
    // whole, the live copy capped.
    if !done(&t) {
        let buf = crate::live::open(&st, &id);
        st.tasks
            .spawn(crate::live::send(buf, tx, st.shutdown.clone()));
        return Ok(Sse::new(stream).into_response());
    }
    st.tasks.spawn(async move {
        if let Some(r) = t
            .result
            .as_deref()
            .and_then(|r| serde_json::from_str::<TaskResult>(r).ok())
        {
            for (name, text) in [("stdout", r.stdout), ("stderr", r.stderr)] {
                if !text.is_empty()
                    && tx
                        .send(Event::default().event(name).data(text))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        }
        let _ = tx.send(Event::default().event("end").data("")).await;
    });
    Ok(Sse::new(stream).into_response())
}

/// An action that was sent.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub accepted: bool,
    pub what: String,
}

/// Cancel a task (running or still queued).
#[utoipa::path(delete, path = "/v1/tasks/{id}", params(("id" = String, Path)),
    responses((status = 202, body = Accepted), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn cancel(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    let caller = authenticate(&st, &headers).await?;
    let t = visible(&st, &caller, &id).await?;
    let own = t.caller.as_deref() == Some(caller.name.as_str());
    if !own && !caller.rights.cancel {
        return Err(ApiError::Forbidden(format!(
            "token `{}` may cancel only its own tasks (right: cancel)",
            caller.name
        )));
    }
    control(&st, |c| Box::pin(async move { c.cancel(&id).await })).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            accepted: true,
            what: format!("cancel {}", t.id),
        }),
    )
        .into_response())
}

pub(crate) type ControlFut<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), broker::client::ClientError>> + Send + 'a>,
>;

pub(crate) async fn control<F>(st: &AppState, f: F) -> Result<(), ApiError>
where
    F: for<'a> FnOnce(&'a broker::client::Client) -> ControlFut<'a>,
{
    let client = st.client().await?;
    if let Err(e) = f(&client).await {
        st.broker_failed().await;
        return Err(ApiError::Unavailable(format!(
            "the broker did not confirm the command: {e}"
        )));
    }
    Ok(())
}

/// Search filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct SearchQuery {
    pub pool: Option<String>,
    /// A result status (`succeeded`, `failed`, …).
    pub status: Option<String>,
    /// `queued`, `blocked`, `started` (or `running`), `finished`.
    pub state: Option<String>,
    /// The signing key's name.
    pub submitter: Option<String>,
    /// A worker's id: only the tasks last seen on it (with `state=started`,
    /// exactly those it runs; the web view's "N running" link).
    pub worker: Option<String>,
    /// RFC 3339: only tasks updated since.
    pub since: Option<String>,
    /// Text in the id, the script or the error.
    pub q: Option<String>,
    /// Paging: the `next` of the previous page.
    pub before: Option<i64>,
    pub limit: Option<i64>,
}

/// A page of tasks, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page {
    pub tasks: Vec<TaskView>,
    /// `?before=` of the next page (absent: last page).
    pub next: Option<i64>,
}

/// Search the history.
#[utoipa::path(get, path = "/v1/tasks", params(SearchQuery),
    responses((status = 200, body = Page), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn search(
    State(st): State<Arc<AppState>>,
    Query(q): Query<SearchQuery>,
    headers: HeaderMap,
) -> Result<Json<Page>, ApiError> {
    let caller = authenticate(&st, &headers).await?;
    let since = match &q.since {
        None => None,
        Some(s) => Some(
            chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|e| ApiError::BadRequest(format!("since: not RFC 3339 ({e})")))?
                .timestamp_millis(),
        ),
    };
    let limit = q.limit.unwrap_or(PAGE).clamp(1, PAGE);
    let s = Search {
        pool: q.pool,
        status: q.status,
        state: q
            .state
            .map(|v| if v == "running" { "started".into() } else { v }),
        caller: (!caller.rights.see_all).then(|| caller.name.clone()),
        submitter: q.submitter,
        worker: q.worker,
        since,
        q: q.q,
        before: q.before,
        limit,
    };
    let rows = st.store.search(&s).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.updated_at))
        .flatten();
    let tasks = rows
        .into_iter()
        .map(|t| TaskView::new(t, &caller, &st, Vec::new()))
        .collect();
    Ok(Json(Page { tasks, next }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed `gateway/openapi.json` is the generated document (write it
    /// again with `KRILL_WRITE_OPENAPI=1 cargo test -p gateway openapi`), and
    /// every route of the router is in it.
    #[test]
    fn openapi_is_in_step() {
        let doc = serde_json::to_string_pretty(&ApiDoc::openapi()).expect("json") + "\n";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
        if std::env::var_os("KRILL_WRITE_OPENAPI").is_some() {
            std::fs::write(&path, &doc).expect("write");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == doc,
            "gateway/openapi.json is stale: run KRILL_WRITE_OPENAPI=1 cargo test -p gateway openapi"
        );
        let v: serde_json::Value = serde_json::from_str(&doc).expect("parse");
        for (path, method) in [
            ("/v1/tasks", "post"),
            ("/v1/tasks", "get"),
            ("/v1/tasks/{id}", "get"),
            ("/v1/tasks/{id}", "delete"),
            ("/v1/tasks/{id}/wait", "get"),
            ("/v1/tasks/{id}/logs", "get"),
            ("/v1/workers", "get"),
            ("/v1/pools", "get"),
            ("/v1/workers/{id}/drain", "post"),
            ("/v1/workers/{id}/resume", "post"),
            ("/v1/dead", "get"),
            ("/v1/dead/{id}/replay", "post"),
        ] {
            assert!(
                v["paths"][path][method].is_object(),
                "{method} {path} missing"
            );
        }
    }
}
