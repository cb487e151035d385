//! The dead letters page: each dead task with its reason, and a replay button
//! (the right `replay`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::layout::{self, button, frame};
use super::{encode, signed_in, signed_in_post};
use crate::web::session::PostForm;
use crate::AppState;

/// `GET /dead`.
pub async fn page(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let s = match signed_in(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !s.caller.rights.replay {
        return layout::forbidden(&s, "see or replay dead letters", "replay");
    }
    let list = match st.client().await {
        Ok(c) => c.dead_list().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let list = match list {
        Ok(l) => l,
        Err(e) => {
            return layout::message(
                &s,
                StatusCode::SERVICE_UNAVAILABLE,
                "Dead letters unavailable",
                &format!("Cannot read krill.dead: {e}"),
            )
        }
    };
    let body = html! {
        h1 { "Dead letters" }
        @if list.is_empty() { p { "No dead letter." } } @else {
            table {
                caption { (list.len()) " dead letters" }
                thead { tr {
                    th scope="col" { "Task" } th scope="col" { "Pool" } th scope="col" { "Reason" }
                    th scope="col" { "Signed by" } th scope="col" { "Dead-lettered by" } th scope="col" { "Action" }
                } }
                tbody { @for d in &list {
                    tr {
                        th scope="row" { code { (d.id.as_deref().unwrap_or("(no id)")) } }
                        td { (d.pool.as_deref().unwrap_or("—")) }
                        td { (d.reason) @if let Some(x) = &d.detail { ": " (x) } }
                        td { (d.submitter.as_deref().unwrap_or(if d.signed { "(unverified)" } else { "unsigned" })) }
                        td { (d.by) }
                        td { @if let Some(id) = &d.id { (button(&s, &format!("/dead/{}/replay", encode(id)), "Replay")) } }
                    }
                } }
            }
        }
    };
    frame(&s, "Dead letters", Some("/v1/dead"), body)
}

/// `POST /dead/{id}/replay`.
pub async fn replay(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: PostForm,
) -> Response {
    let s = match signed_in_post(&st, &headers, form).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !s.caller.rights.replay {
        return layout::forbidden(&s, "replay dead letters", "replay");
    }
    let done = match st.client().await {
        Ok(c) => c.dead_replay(Some(&id)).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match done {
        Ok((done, _)) if !done.is_empty() => {
            tracing::info!(caller = %s.caller.name, task_id = %id, "web: replayed");
            Redirect::to("/dead").into_response()
        }
        Ok(_) => layout::message(
            &s,
            StatusCode::NOT_FOUND,
            "Not replayed",
            &format!("No dead letter {id} that can be replayed."),
        ),
        Err(e) => layout::message(
            &s,
            StatusCode::SERVICE_UNAVAILABLE,
            "Not replayed",
            &format!("Cannot replay: {e}"),
        ),
    }
}
