//! Browser sessions: a token typed into the sign-in form becomes a random
//! session id in an `HttpOnly; SameSite=Strict; Path=/` cookie (`Secure`
//! behind TLS); the database keeps only the id's SHA-256, bound to the token's
//! hash and an expiry. Every form that changes something carries the session's
//! CSRF token; a POST without it is refused (403). The JSON API accepts the
//! cookie for reads only (GET/HEAD): writes there still need the bearer token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;

use super::db::{self, Session};
use crate::error::ApiError;
use crate::rights::Caller;
use crate::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "krill_session";
/// The form field of the CSRF token.
pub const CSRF_FIELD: &str = "csrf";

/// 244 random bits from the OS (two v4 UUIDs), hex.
fn random_secret(prefix: &str) -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{a}{b}")
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The session of the request's cookie, if it is live.
pub async fn current(st: &AppState, headers: &HeaderMap) -> Option<Session> {
    let id = cookie(headers, COOKIE)?;
    match db::session(&st.store, id).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "web: reading a session failed");
            None
        }
    }
}

/// The caller of a session cookie, for the JSON API: its writes never see the
/// cookie ([`reads_only`] drops it), so this authorises reads only.
pub async fn cookie_caller(st: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    current(st, headers)
        .await
        .map(|s| s.caller)
        .ok_or(ApiError::Unauthorized)
}

/// Middleware of the JSON API: a request that may change something loses its
/// `Cookie` header, so only a bearer token authorises it there (a browser
/// session cannot be ridden to the API's writes, which carry no CSRF token).
pub async fn reads_only(mut req: Request, next: axum::middleware::Next) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        req.headers_mut().remove(header::COOKIE);
    }
    next.run(req).await
}

/// A POSTed form; one that does not parse (another content type) is empty, so
/// it is refused for its missing CSRF token like any other.
pub type PostForm = Result<Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>;

/// The fields of a POSTed form.
pub fn fields(f: PostForm) -> HashMap<String, String> {
    f.map(|Form(m)| m).unwrap_or_default()
}

/// Whether the form carries the session's CSRF token.
pub fn csrf_ok(s: &Session, form: &HashMap<String, String>) -> bool {
    use subtle::ConstantTimeEq;
    form.get(CSRF_FIELD)
        .is_some_and(|t| bool::from(t.as_bytes().ct_eq(s.csrf.as_bytes())))
}

/// The answer to a POST whose CSRF token is missing or wrong.
pub fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        super::pages::layout::bare(
            "Refused",
            html! {
                h1 { "Refused: this form did not come from this session" }
                p { "The request carried no valid CSRF token (a form from another site, or an old page). "
                    "Go back, reload the page and try again." }
            },
        ),
    )
        .into_response()
}

/// Where a signed-out browser is sent.
pub fn to_signin() -> Response {
    Redirect::to("/signin").into_response()
}

/// `GET /signin`.
pub async fn signin_page() -> Response {
    signin_form(None, StatusCode::OK)
}

fn signin_form(error: Option<&str>, status: StatusCode) -> Response {
    (
        status,
        super::pages::layout::bare(
            "Sign in",
            html! {
                h1 { "Sign in to Krill" }
                @if let Some(e) = error { p role="alert" class="error" { strong { "Not signed in: " } (e) } }
                form method="post" action="/signin" {
                    p {
                        label for="token" { "Token" }
                        " "
                        input id="token" name="token" type="password" autocomplete="off" required size="48" placeholder="krill_…";
                    }
                    p { button type="submit" { "Sign in" } }
                }
                p { "Use a token from " code { "krill-gateway tokens add NAME --rights …" }
                    " (" code { "scripts/up" } " prints one). The token is not kept in the browser: "
                    "a session cookie is." }
            },
        ),
    )
        .into_response()
}

/// `POST /signin`: checks the token, starts a session, sets the cookie. An
/// address past its failed sign-ins gets 429 without its token being looked
/// up ([`super::throttle`]).
pub async fn signin(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let ip = peer.ip();
    if let Err(wait) = st.web.throttle.check(ip) {
        let secs = wait.as_secs().max(1);
        tracing::warn!(%ip, "web: sign-in refused, too many failed sign-ins");
        let mut resp = signin_form(
            Some(&format!(
                "too many failed sign-ins from your address: try again in {secs} s"
            )),
            StatusCode::TOO_MANY_REQUESTS,
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return resp;
    }
    let token = form.get("token").map(|t| t.trim()).unwrap_or_default();
    let caller = match st.store.caller(token).await {
        Ok(Some(crate::tokens::Found::Caller(c))) => c,
        Ok(Some(crate::tokens::Found::Expired { name, .. })) => {
            st.web.throttle.failed(ip);
            return signin_form(
                Some(&format!(
                    "token `{name}` has expired: ask the operator for a new one"
                )),
                StatusCode::UNAUTHORIZED,
            );
        }
        Ok(None) => {
            st.web.throttle.failed(ip);
            return signin_form(Some("unknown token"), StatusCode::UNAUTHORIZED);
        }
        Err(e) => {
            tracing::warn!(error = %e, "web: sign-in failed");
            return signin_form(
                Some("the history database is unavailable"),
                StatusCode::SERVICE_UNAVAILABLE,
            );
        }
    };
    let id = random_secret("krs_");
    let csrf = random_secret("");
    let ttl = st.web.session_ttl;
    if let Err(e) = db::create_session(&st.store, &id, token, &csrf, ttl.as_millis() as i64).await {
        tracing::warn!(error = %e, "web: storing a session failed");
        return signin_form(
            Some("the history database is unavailable"),
            StatusCode::SERVICE_UNAVAILABLE,
        );
    }
    tracing::info!(caller = %caller.name, "web: signed in");
    let secure = if st.web.secure_cookie { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        ttl.as_secs()
    );
    let mut resp = Redirect::to(super::pages::home_of(&caller)).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// `POST /signout` (with the CSRF token): ends the session, clears the cookie.
pub async fn signout(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    form: PostForm,
) -> Response {
    let form = fields(form);
    let Some(s) = current(&st, &headers).await else {
        return to_signin();
    };
    if !csrf_ok(&s, &form) {
        return csrf_refused();
    }
    if let Some(id) = cookie(&headers, COOKIE) {
        if let Err(e) = db::delete_session(&st.store, id).await {
            tracing::warn!(error = %e, "web: ending a session failed");
        }
    }
    let mut resp = Redirect::to("/signin").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("krill_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; krill_session=krs_x; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("krs_x"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn csrf_must_match_exactly() {
        let s = Session {
            caller: Caller {
                name: "a".into(),
                rights: Default::default(),
            },
            csrf: "abc".into(),
        };
        let form = |v: &str| HashMap::from([(CSRF_FIELD.to_string(), v.to_string())]);
        assert!(csrf_ok(&s, &form("abc")));
        assert!(!csrf_ok(&s, &form("abd")));
        assert!(!csrf_ok(&s, &form("ab")));
        assert!(!csrf_ok(&s, &HashMap::new()));
    }
}
