//! The frame of every page: head (vendored CSS and script only), a skip link,
//! the navigation the caller's rights allow, the sign-out form (with its CSRF
//! token), the page's JSON twin, and the security headers.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use crate::web::db::Session;
use crate::web::session::CSRF_FIELD;

/// The Content-Security-Policy of every page: nothing from elsewhere, no inline script.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; \
    base-uri 'none'";

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Krill" }
            link rel="stylesheet" href="/assets/krill.css";
            script src="/assets/krill.js" defer {}
        }
    }
}

fn secured(markup: Markup) -> Response {
    let mut resp = axum::response::Html(markup.into_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A page without a session (sign-in, refusals).
pub fn bare(title: &str, body: Markup) -> Response {
    secured(html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { main id="main" { (body) } }
        }
    })
}

/// A hidden CSRF field for a form of session `s`.
pub fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(s.csrf); }
}

/// A one-button form that POSTs to `action` with the CSRF token.
pub fn button(s: &Session, action: &str, label: &str) -> Markup {
    html! {
        form class="inline" method="post" action=(action) {
            (csrf(s))
            button type="submit" { (label) }
        }
    }
}

/// A signed-in page: `twin` is its JSON twin under `/v1/`.
pub fn frame(s: &Session, title: &str, twin: Option<&str>, body: Markup) -> Response {
    let r = &s.caller.rights;
    secured(html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a class="skip" href="#main" { "Skip to content" }
                header {
                    strong { "Krill" }
                    nav aria-label="Main" {
                        ul {
                            @if r.see_all { li { a href="/workers" { "Workers" } } }
                            li { a href="/tasks" { "Tasks" } }
                            @if r.see_all { li { a href="/pools" { "Pools" } } }
                            @if r.replay { li { a href="/dead" { "Dead letters" } } }
                        }
                    }
                    form method="post" action="/signout" {
                        span class="muted" { "Signed in as " strong { (s.caller.name) } " " }
                        (csrf(s))
                        button type="submit" { "Sign out" }
                    }
                }
                main id="main" {
                    (body)
                }
                footer {
                    @if let Some(t) = twin {
                        p class="muted" { "This page as JSON: " a href=(t) class="twin" { code { (t) } } }
                    }
                }
            }
        }
    })
}

/// A signed-in page saying the caller may not see this.
pub fn forbidden(s: &Session, what: &str, right: &str) -> Response {
    let mut resp = frame(
        s,
        "Not allowed",
        None,
        html! {
            h1 { "Not allowed" }
            p { "Token " strong { (s.caller.name) } " may not " (what) " (it needs the right " code { (right) } ")." }
        },
    );
    *resp.status_mut() = axum::http::StatusCode::FORBIDDEN;
    resp
}

/// A signed-in page with a message (not found, unavailable).
pub fn message(s: &Session, status: axum::http::StatusCode, title: &str, text: &str) -> Response {
    let mut resp = frame(
        s,
        title,
        None,
        html! { h1 { (title) } p class="error" role="alert" { (text) } },
    );
    *resp.status_mut() = status;
    resp
}

/// `2026-12-03 09:14:05 UTC` from Unix milliseconds.
pub fn time(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "—".into())
}

/// The state as text, with a class that only adds a border style.
pub fn state(text: &str) -> Markup {
    let shown = if text == "started" { "running" } else { text };
    html! { span class={"state " (shown)} { (shown) } }
}
