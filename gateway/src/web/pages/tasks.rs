//! The tasks page: the history filtered by pool, state, submitter, worker and
//! time (a GET form), newest first, paged; while any listed task is unfinished
//! the list refreshes itself.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::layout::{self, frame};
use super::{query, signed_in};
use crate::api::PAGE;
use crate::store::{Search, TaskRow};
use crate::AppState;

/// The filters (all optional; an empty field is no filter).
#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    pub pool: Option<String>,
    /// `queued`, `blocked`, `running` (or `started`), `finished`.
    pub state: Option<String>,
    pub submitter: Option<String>,
    pub worker: Option<String>,
    /// RFC 3339, or `YYYY-MM-DDTHH:MM` (UTC) as a datetime field sends it.
    pub since: Option<String>,
    pub before: Option<i64>,
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// Unix milliseconds of a `since` field.
pub fn parse_since(v: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return Some(t.timestamp_millis());
    }
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(v, f).ok())
        .map(|t| t.and_utc().timestamp_millis())
}

/// `GET /tasks`.
pub async fn page_(st: &AppState, headers: &HeaderMap, f: Filters) -> Response {
    let s = match signed_in(st, headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let caller = &s.caller;
    let state = nonempty(&f.state).map(|v| if v == "running" { "started" } else { v });
    let since_text = nonempty(&f.since);
    let since = since_text.and_then(parse_since);
    let bad_since = since_text.is_some() && since.is_none();
    let rows: Result<Vec<TaskRow>, crate::store::StoreError> = st
        .store
        .search(&Search {
            pool: nonempty(&f.pool).map(str::to_string),
            status: None,
            state: state.map(str::to_string),
            caller: (!caller.rights.see_all).then(|| caller.name.clone()),
            submitter: nonempty(&f.submitter).map(str::to_string),
            worker: nonempty(&f.worker).map(str::to_string),
            since,
            q: None,
            before: f.before,
            limit: PAGE,
        })
        .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            return layout::message(
                &s,
                StatusCode::SERVICE_UNAVAILABLE,
                "Tasks unavailable",
                &format!("The history database is unavailable: {e}"),
            );
        }
    };
    let next = (rows.len() as i64 == PAGE)
        .then(|| rows.last().map(|r| r.updated_at))
        .flatten();
    let since_rfc = since
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339());
    let twin = format!(
        "/v1/tasks{}",
        query(&[
            ("pool", nonempty(&f.pool)),
            ("state", state),
            ("submitter", nonempty(&f.submitter)),
            ("worker", nonempty(&f.worker)),
            ("since", since_rfc.as_deref()),
        ])
    );
    let live = rows.iter().any(|t| t.state != "finished");
    let shown_state = nonempty(&f.state).unwrap_or("");
    let heading = match (nonempty(&f.worker), shown_state) {
        (Some(w), "running") => format!("Tasks running on {w}"),
        (Some(w), _) => format!("Tasks of worker {w}"),
        _ => "Tasks".to_string(),
    };
    let body = html! {
        h1 { (heading) }
        form class="filters" method="get" action="/tasks" role="search" aria-label="Filter tasks" {
            p { label for="f-pool" { "Pool" } input id="f-pool" name="pool" value=(nonempty(&f.pool).unwrap_or("")); }
            p { label for="f-state" { "State" }
                select id="f-state" name="state" {
                    @for (v, label) in [("", "any"), ("queued", "queued"), ("blocked", "blocked"), ("running", "running"), ("finished", "finished")] {
                        option value=(v) selected[shown_state == v || (v == "running" && shown_state == "started")] { (label) }
                    }
                }
            }
            p { label for="f-submitter" { "Submitter (key)" } input id="f-submitter" name="submitter" value=(nonempty(&f.submitter).unwrap_or("")); }
            p { label for="f-worker" { "Worker" } input id="f-worker" name="worker" value=(nonempty(&f.worker).unwrap_or("")); }
            p { label for="f-since" { "Updated since (UTC)" } input id="f-since" name="since" type="datetime-local" value=(since_text.unwrap_or("")); }
            p { button type="submit" { "Filter" } }
        }
        @if bad_since { p class="error" role="alert" { "“Updated since” is not a date and time; it was left out." } }
        div id="tasks" data-live=(if live { "on" } else { "off" }) {
            @if rows.is_empty() {
                p { "No task matches." }
            } @else {
                table {
                    caption { (rows.len()) " tasks, newest first" @if live { " (unfinished ones update live)" } }
                    thead { tr {
                        th scope="col" { "Task" } th scope="col" { "Pool" } th scope="col" { "State" }
                        th scope="col" { "Status" } th scope="col" { "Submitter" } th scope="col" { "Worker" }
                        th scope="col" { "Updated" }
                    } }
                    tbody {
                        @for t in &rows {
                            tr data-task=(t.id) data-state=(t.state) {
                                th scope="row" { a href={"/tasks/" (t.id)} { code { (t.id) } } }
                                td { (t.pool) }
                                td { (layout::state(&t.state)) }
                                td { (t.status.as_deref().unwrap_or("—")) }
                                td { (t.submitter.as_deref().unwrap_or("—")) }
                                td { (t.worker.as_deref().unwrap_or("—")) }
                                td { (layout::time(Some(t.updated_at))) }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(n) = next {
            p { a rel="next" href={"/tasks" (query(&[
                ("pool", nonempty(&f.pool)), ("state", nonempty(&f.state)), ("submitter", nonempty(&f.submitter)),
                ("worker", nonempty(&f.worker)), ("since", since_text), ("before", Some(&n.to_string())),
            ]))} { "Older tasks" } }
        }
    };
    frame(&s, "Tasks", Some(&twin), body)
}

/// `GET /tasks` (the route).
pub async fn page(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(f): Query<Filters>,
) -> Response {
    page_(&st, &headers, f).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_rfc3339_and_the_datetime_field() {
        let t = parse_since("2026-12-03T09:00:00Z").expect("rfc3339");
        assert_eq!(parse_since("2026-12-03T09:00"), Some(t));
        assert_eq!(parse_since("2026-12-03T10:00:00+01:00"), Some(t));
        assert_eq!(parse_since("yesterday"), None);
    }
}
