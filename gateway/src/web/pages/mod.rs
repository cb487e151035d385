//! The pages. Each handler starts with [`signed_in`] (a signed-out browser is
//! sent to the sign-in page) and shows and allows only what the session's
//! rights allow; each POST checks the CSRF token first.

pub mod dead;
pub mod layout;
pub mod pools;
pub mod task;
pub mod tasks;
pub mod workers;

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};

use super::db::Session;
use super::session::{csrf_ok, csrf_refused, current, fields, to_signin, PostForm};
use crate::rights::Caller;
use crate::AppState;

/// The session of the request, or the redirect to the sign-in page.
pub async fn signed_in(st: &AppState, headers: &HeaderMap) -> Result<Session, Response> {
    current(st, headers).await.ok_or_else(to_signin)
}

/// The session of a POST whose form carries its CSRF token; else the redirect
/// to the sign-in page, or the refusal.
pub async fn signed_in_post(
    st: &AppState,
    headers: &HeaderMap,
    form: PostForm,
) -> Result<Session, Response> {
    let s = signed_in(st, headers).await?;
    if !csrf_ok(&s, &fields(form)) {
        return Err(csrf_refused());
    }
    Ok(s)
}

/// The first page of a caller: the workers for one who sees all, else its tasks.
pub fn home_of(c: &Caller) -> &'static str {
    if c.rights.see_all {
        "/workers"
    } else {
        "/tasks"
    }
}

/// `GET /`.
pub async fn home(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match signed_in(&st, &headers).await {
        Ok(s) => Redirect::to(home_of(&s.caller)).into_response(),
        Err(r) => r,
    }
}

/// `?a=1&b=2` from pairs whose value is not empty (values percent-encoded).
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| {
            v.filter(|v| !v.is_empty())
                .map(|v| format!("{k}={}", encode(v)))
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Percent-encodes everything but unreserved characters.
pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_skip_empty_values_and_encode() {
        assert_eq!(
            query(&[("a", Some("x y&")), ("b", None), ("c", Some(""))]),
            "?a=x%20y%26"
        );
        assert_eq!(query(&[("a", None)]), "");
    }
}
