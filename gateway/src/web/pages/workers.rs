//! The workers page: every worker heard from lately (live, draining, degraded,
//! lost, stopped), its slots, its running tasks as a link to exactly those
//! tasks, and drain/resume buttons for callers with the right.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::layout::{self, button, frame};
use super::{encode, signed_in, signed_in_post};
use crate::web::session::PostForm;
use crate::AppState;

/// `GET /workers`.
pub async fn page_(st: &AppState, headers: &HeaderMap) -> Response {
    let s = match signed_in(st, headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !s.caller.rights.see_all {
        return layout::forbidden(&s, "see the workers", "see:all");
    }
    let report = st.web.live.get();
    let may_drain = s.caller.rights.drain;
    let body = html! {
        h1 { "Workers" }
        @match &report {
            None => p class="error" role="alert" { "The workers' heartbeats cannot be read right now (is RabbitMQ up?). This page refreshes itself." },
            Some(r) => {
                p class="muted" { "As of " (r.generated_at.format("%H:%M:%S UTC")) "; workers heard from in the last " (r.since_secs / 60) " minutes." }
                div id="workers" data-live="on" {
                @if r.workers.is_empty() {
                    p { "No worker has sent a heartbeat lately." }
                } @else {
                    table {
                        caption { "Workers, " (r.workers.len()) " in all" }
                        thead { tr {
                            th scope="col" { "Worker" } th scope="col" { "Pool" } th scope="col" { "State" }
                            th scope="col" class="num" { "Slots free / total" } th scope="col" class="num" { "Running" }
                            th scope="col" { "Last heartbeat" } th scope="col" { "Host" }
                            @if may_drain { th scope="col" { "Actions" } }
                        } }
                        tbody {
                            @for w in &r.workers {
                                tr data-worker=(w.id) {
                                    th scope="row" { code { (w.id) } }
                                    td { a href={"/tasks?pool=" (encode(&w.pool))} { (w.pool) } }
                                    td {
                                        (layout::state(w.state.as_str()))
                                        @if let Some(d) = &w.degraded { " (" (d) ")" }
                                    }
                                    td class="num" { (w.slots_free) " / " (w.slots_total) }
                                    td class="num" {
                                        a class="running-link" href={"/tasks?worker=" (encode(&w.id)) "&state=running"}
                                            aria-label={(w.running.len()) " running tasks on " (w.id)} { (w.running.len()) " running" }
                                    }
                                    td { (w.silent_secs) " s ago" }
                                    td { (w.host) }
                                    @if may_drain {
                                        td {
                                            @if w.state.is_up() {
                                                @if w.state == broker::status::WorkerState::Draining {
                                                    (button(&s, &format!("/workers/{}/resume", encode(&w.id)), "Resume"))
                                                } @else {
                                                    (button(&s, &format!("/workers/{}/drain", encode(&w.id)), "Drain"))
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                }
            }
        }
    };
    frame(&s, "Workers", Some("/v1/workers"), body)
}

/// `GET /workers` (the route).
pub async fn page(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    page_(&st, &headers).await
}

/// `POST /workers/{id}/drain`.
pub async fn drain(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: PostForm,
) -> Response {
    act(&st, &id, &headers, form, true).await
}

/// `POST /workers/{id}/resume`.
pub async fn resume(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: PostForm,
) -> Response {
    act(&st, &id, &headers, form, false).await
}

async fn act(
    st: &AppState,
    id: &str,
    headers: &HeaderMap,
    form: PostForm,
    drain: bool,
) -> Response {
    let s = match signed_in_post(st, headers, form).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !s.caller.rights.drain {
        return layout::forbidden(&s, "drain or resume workers", "drain");
    }
    let sent = match st.client().await {
        Ok(c) => {
            let r = if drain {
                c.drain(Some(id)).await
            } else {
                c.resume(Some(id)).await
            };
            if r.is_err() {
                st.broker_failed().await;
            }
            r.map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    match sent {
        Ok(()) => {
            tracing::info!(caller = %s.caller.name, worker = %id, drain, "web: drain/resume sent");
            Redirect::to("/workers").into_response()
        }
        Err(e) => layout::message(
            &s,
            StatusCode::SERVICE_UNAVAILABLE,
            "Not sent",
            &format!("The broker did not confirm the command: {e}"),
        ),
    }
}
