//! A task's page: its state and, while it waits, why (with a link to the
//! blocker); the live log while it runs (the API's SSE stream) and the stored
//! output after; outputs (sensitive ones as `***` unless the caller submitted
//! it); timings, usage, worker, sandbox, attempt, signer; the cancel button.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use broker::protocol::{Blocked, TaskResult};
use maud::html;

use super::layout::{self, button, frame};
use super::{signed_in, signed_in_post};
use crate::rights::Caller;
use crate::store::TaskRow;
use crate::web::session::PostForm;
use crate::web::why;
use crate::AppState;

/// The stored result as a page shows it: every sensitive output as `***`,
/// also for the caller that submitted it (a page is screenshotted, cached and
/// read over shoulders; the submitter reads the value from `GET /v1/tasks/{id}`).
fn result_for(t: &TaskRow) -> Option<TaskResult> {
    let mut r: TaskResult = serde_json::from_str(t.result.as_deref()?).ok()?;
    for o in &mut r.outputs {
        if o.sensitive {
            o.value = "***".into();
            o.sealed = None;
        }
    }
    Some(r)
}

fn may_cancel(c: &Caller, t: &TaskRow) -> bool {
    t.state != "finished" && (t.caller.as_deref() == Some(c.name.as_str()) || c.rights.cancel)
}

fn secs_between(a: Option<i64>, b: Option<i64>) -> Option<String> {
    Some(format!("{:.1} s", (b? - a?) as f64 / 1000.0))
}

/// `GET /tasks/{id}`.
pub async fn page_(st: &AppState, headers: &HeaderMap, id: &str) -> Response {
    let s = match signed_in(st, headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let t = match st.store.get(id).await {
        Ok(Some(t)) if s.caller.may_see(t.caller.as_deref()) => t,
        Ok(_) => {
            return layout::message(
                &s,
                StatusCode::NOT_FOUND,
                "No such task",
                &format!("No task {id} (or not yours to see)."),
            )
        }
        Err(e) => {
            return layout::message(
                &s,
                StatusCode::SERVICE_UNAVAILABLE,
                "Task unavailable",
                &format!("The history database is unavailable: {e}"),
            )
        }
    };
    let why = match t.state.as_str() {
        "blocked" => Some(
            match t
                .blocked
                .as_deref()
                .and_then(|b| serde_json::from_str::<Blocked>(b).ok())
            {
                Some(b) => why::blocked(&t.id, &b, chrono::Utc::now()),
                None => why::queued(&t.pool, st.web.live.get().as_deref(), 0),
            },
        ),
        "queued" => {
            let ahead = match t.submitted_at {
                Some(at) => crate::web::db::queued_before(&st.store, &t.pool, at)
                    .await
                    .unwrap_or(0),
                None => 0,
            };
            Some(why::queued(&t.pool, st.web.live.get().as_deref(), ahead))
        }
        _ => None,
    };
    let result = result_for(&t);
    let events = st.store.events(&t.id).await.unwrap_or_default();
    let running = t.state != "finished";
    let shown = if t.state == "started" {
        "running"
    } else {
        t.state.as_str()
    };
    let body = html! {
        h1 { "Task " code { (t.id) } }
        div id="task-state" data-state=(t.state) data-live=(if running && t.state != "started" { "on" } else { "off" }) {
            p { "State: " (layout::state(&t.state))
                @if let Some(st) = &t.status { " — status " strong class="status" { (st) } }
                @if let Some(c) = t.exit_code { ", exit code " (c) } }
            @if let Some(w) = &why { p class="why" role="status" { (w.html()) "." } }
            @if let Some(e) = &t.error { p class="error" { strong { "Error: " } (e) } }
        }
        @if may_cancel(&s.caller, &t) {
            (button(&s, &format!("/tasks/{}/cancel", super::encode(&t.id)), "Cancel this task"))
        }
        h2 { "Details" }
        dl class="facts" {
            dt { "Pool" } dd { a href={"/tasks?pool=" (super::encode(&t.pool))} { (t.pool) } }
            dt { "State" } dd { (shown) }
            dt { "Worker" } dd { (t.worker.as_deref().unwrap_or("—")) }
            dt { "Sandbox" } dd { (t.sandbox.as_deref().or(result.as_ref().and_then(|r| r.sandbox.map(|s| s.as_str()))).unwrap_or("—")) }
            dt { "Attempt" } dd { (t.attempt.map(|a| a.to_string()).unwrap_or_else(|| "—".into())) }
            dt { "Signed by" } dd { (t.submitter.as_deref().unwrap_or("—")) }
            dt { "Submitted through the gateway by" } dd { (t.caller.as_deref().unwrap_or("— (straight to AMQP)")) }
            dt { "Submitted" } dd { (layout::time(t.submitted_at)) }
            dt { "Started" } dd { (layout::time(t.started_at)) }
            dt { "Finished" } dd { (layout::time(t.finished_at)) }
            dt { "Waited" } dd { (secs_between(t.submitted_at, t.started_at).unwrap_or_else(|| "—".into())) }
            dt { "Ran" } dd { (secs_between(t.started_at, t.finished_at).unwrap_or_else(|| "—".into())) }
            @if let Some(r) = &result {
                dt { "CPU time" } dd { (r.usage.cpu_time_ms.map(|v| format!("{v} ms")).unwrap_or_else(|| "—".into())) }
                dt { "Peak memory" } dd { (r.usage.peak_memory_bytes.map(|v| format!("{:.1} MiB", v as f64 / 1048576.0)).unwrap_or_else(|| "—".into())) }
            }
        }
        h2 { "Log" }
        @if t.state == "started" {
            p class="muted" { "Live while it runs (needs JavaScript; without it, reload the page)." }
            pre class="log" id="log" data-logs={"/v1/tasks/" (t.id) "/logs"} aria-live="polite" { "(waiting for output…)" }
        } @else if let Some(r) = &result {
            @if r.stdout.is_empty() && r.stderr.is_empty() { p { "No output." } }
            @if !r.stdout.is_empty() { h3 { "stdout" } pre class="log" id="log" { (r.stdout) } }
            @if !r.stderr.is_empty() { h3 { "stderr" } pre class="log" { (r.stderr) } }
            @if r.truncated { p class="muted" { "The output was capped." } }
        } @else if running {
            p class="muted" { "No output yet: the task has not started." }
        } @else {
            p class="muted" { "No stored output (the gateway keeps the output of the tasks submitted through it)." }
        }
        @if let Some(r) = &result {
            @if !r.outputs.is_empty() {
                h2 { "Outputs" }
                table {
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Value" } th scope="col" { "Sensitive" } } }
                    tbody { @for o in &r.outputs {
                        tr { th scope="row" { code { (o.name) } } td { code { (o.value) } } td { (if o.sensitive { "yes (its submitter reads it from the JSON twin)" } else { "no" }) } }
                    } }
                }
            }
        }
        @if !events.is_empty() {
            h2 { "Timeline" }
            table {
                thead { tr { th scope="col" { "When" } th scope="col" { "Event" } th scope="col" { "Worker" } } }
                tbody { @for (state, worker, at, _) in &events {
                    tr { td { (layout::time(Some(*at))) } td { (state) } td { (worker) } }
                } }
            }
        }
    };
    frame(
        &s,
        &format!("Task {}", t.id),
        Some(&format!("/v1/tasks/{}", t.id)),
        body,
    )
}

/// `GET /tasks/{id}` (the route).
pub async fn page(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    page_(&st, &headers, &id).await
}

/// `POST /tasks/{id}/cancel`.
pub async fn cancel(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: PostForm,
) -> Response {
    let s = match signed_in_post(&st, &headers, form).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let t = match st.store.get(&id).await {
        Ok(Some(t)) if s.caller.may_see(t.caller.as_deref()) => t,
        _ => {
            return layout::message(
                &s,
                StatusCode::NOT_FOUND,
                "No such task",
                &format!("No task {id} (or not yours to see)."),
            )
        }
    };
    if t.caller.as_deref() != Some(s.caller.name.as_str()) && !s.caller.rights.cancel {
        return layout::forbidden(&s, "cancel tasks it did not submit", "cancel");
    }
    let sent = match st.client().await {
        Ok(c) => {
            let r = c.cancel(&id).await;
            if r.is_err() {
                st.broker_failed().await;
            }
            r.map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    match sent {
        Ok(()) => {
            tracing::info!(caller = %s.caller.name, task_id = %id, "web: cancel sent");
            Redirect::to(&format!("/tasks/{}", super::encode(&id))).into_response()
        }
        Err(e) => layout::message(
            &s,
            StatusCode::SERVICE_UNAVAILABLE,
            "Not sent",
            &format!("The broker did not confirm the cancel: {e}"),
        ),
    }
}
