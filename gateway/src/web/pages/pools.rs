//! The pools page: each pool's depth, consumers, workers and free slots, its
//! oldest waiting task and why it waits, and a chart of the queue depth and the
//! running tasks over the last hour.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use maud::html;

use super::layout::{self, frame};
use super::{encode, signed_in};
use crate::store::now_ms;
use crate::web::{chart, db, why};
use crate::AppState;

/// `GET /pools`.
pub async fn page(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let s = match signed_in(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !s.caller.rights.see_all {
        return layout::forbidden(&s, "see the pools", "see:all");
    }
    let report = st.web.live.get();
    let now = now_ms();
    let mut sections = Vec::new();
    if let Some(r) = &report {
        for p in &r.pools {
            let oldest = db::oldest_waiting(&st.store, &p.pool).await.ok().flatten();
            let reason = match &oldest {
                Some((id, state, at)) => {
                    let t = st.store.get(id).await.ok().flatten();
                    let blocked = t
                        .as_ref()
                        .and_then(|t| t.blocked.as_deref())
                        .and_then(|b| serde_json::from_str::<broker::protocol::Blocked>(b).ok());
                    Some(match (state.as_str(), blocked) {
                        ("blocked", Some(b)) => why::blocked(id, &b, chrono::Utc::now()),
                        _ => {
                            let ahead = match at {
                                Some(at) => db::queued_before(&st.store, &p.pool, *at)
                                    .await
                                    .unwrap_or(0),
                                None => 0,
                            };
                            why::queued(&p.pool, Some(r), ahead)
                        }
                    })
                }
                None => None,
            };
            let samples = db::samples(&st.store, &p.pool, now - chart::SPAN_MS)
                .await
                .unwrap_or_default();
            sections.push((p, oldest, reason, samples));
        }
    }
    let body = html! {
        h1 { "Pools" }
        @match &report {
            None => p class="error" role="alert" { "The pool view cannot be read right now (is RabbitMQ up?)." },
            Some(r) => {
                p class="muted" { "As of " (r.generated_at.format("%H:%M:%S UTC")) "." }
                @if sections.is_empty() { p { "No pool is known yet." } }
                @for (p, oldest, reason, samples) in &sections {
                    section aria-labelledby={"pool-" (encode(&p.pool))} {
                        h2 id={"pool-" (encode(&p.pool))} { "Pool " (p.pool) }
                        table {
                            thead { tr {
                                th scope="col" class="num" { "Waiting" } th scope="col" class="num" { "Running" }
                                th scope="col" class="num" { "Consumers" } th scope="col" class="num" { "Workers live / draining / lost" }
                                th scope="col" class="num" { "Free slots / total" }
                            } }
                            tbody { tr {
                                td class="num" { (p.ready) } td class="num" { (p.running) } td class="num" { (p.consumers) }
                                td class="num" { (p.workers_live) " / " (p.workers_draining) " / " (p.workers_lost) }
                                td class="num" { (p.slots_free) " / " (p.slots_total) }
                            } }
                        }
                        @if let Some(w) = &p.waiting { p { "Ready tasks are not starting: " (w) "." } }
                        @match (oldest, reason) {
                            (Some((id, state, at)), Some(why)) => p class="why" {
                                "Oldest waiting task: " a href={"/tasks/" (id)} { code { (id) } } " (" (state) ", submitted " (layout::time(*at)) "). "
                                (why.html()) "."
                            },
                            _ => p { "No task of this pool waits in the history." },
                        }
                        (chart::pool_chart(&p.pool, samples, now))
                        p { a href={"/tasks?pool=" (encode(&p.pool))} { "Tasks of pool " (p.pool) } }
                    }
                }
            }
        }
        @if s.caller.rights.replay { p { a href="/dead" { "Dead letters" } } }
    };
    frame(&s, "Pools", Some("/v1/pools"), body)
}
