//! Browser sessions: the dashboard and the app-auth flow are pages, and pages carry
//! cookies, not `Authorization` headers. A session is a user token kept in an
//! HttpOnly cookie; [`cookie_to_bearer`] turns it back into a bearer token before any
//! handler runs, so every endpoint authorizes one way.

use std::sync::Arc;

use axum::extract::{Request, State as AxumState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferry_proto::token::TokenKind;

use super::{authorize, ApiError};
use crate::state::State;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "ferry_session";

/// `POST /api/v1/session` (user or admin bearer token): puts that token in the session
/// cookie, for a page that was handed the token out of band (e.g. in a URL fragment).
pub(crate) async fn create(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let claims = authorize(&state, &headers, &[TokenKind::User, TokenKind::Admin]).await?;
    let token = bearer(&headers).unwrap_or_default();
    let max_age = claims.exp.saturating_sub(ferry_transport::unix_now());
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, session_cookie(token, max_age))],
    )
        .into_response())
}

/// `DELETE /api/v1/session`: forgets the cookie (the token itself stays valid until
/// revoked; revoke it through `/api/v1/me/tokens/{id}` to end it everywhere).
pub(crate) async fn remove() -> Response {
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, session_cookie("", 0))],
    )
        .into_response()
}

/// `Set-Cookie` value for a session holding `token` for `max_age` seconds. Secure:
/// the control plane only speaks HTTPS. SameSite=Lax: cross-site navigations (the
/// app-auth redirect) carry it, cross-site requests from scripts do not.
pub fn session_cookie(token: &str, max_age: u64) -> HeaderValue {
    let value = format!(
        "{SESSION_COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax"
    );
    // A token is base64url and dots: always a valid header value.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Middleware: a request with the session cookie and no `Authorization` header is
/// authorized by the cookie's token. Requests that change state must come from our own
/// origin (the `Origin` header matches `Host`), or any site could make a logged-in
/// browser act for its user.
pub(crate) async fn cookie_to_bearer(
    AxumState(_state): AxumState<Arc<State>>,
    mut req: Request,
    next: Next,
) -> Response {
    if req.headers().contains_key(header::AUTHORIZATION) {
        return next.run(req).await;
    }
    let Some(token) = cookie(req.headers(), SESSION_COOKIE).filter(|t| !t.is_empty()) else {
        return next.run(req).await;
    };
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && !same_origin(req.headers()) {
        return ApiError::forbidden(
            "a request authorized by the session cookie must come from this origin",
        )
        .into_response();
    }
    let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        return next.run(req).await;
    };
    req.headers_mut().insert(header::AUTHORIZATION, value);
    next.run(req).await
}

fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    match (host, origin) {
        (Some(host), Some(origin)) => origin.strip_prefix("https://") == Some(host),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; ferry_session=t.k.n"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("t.k.n"));
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, "ferry"), None);
    }

    #[test]
    fn cross_origin_is_not_same_origin() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("cp.localhost:7443"));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://cp.localhost:7443"),
        );
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://cp.localhost:7443"),
        );
        assert!(!same_origin(&headers));
    }
}
