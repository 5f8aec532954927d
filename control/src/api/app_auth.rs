//! `GET /app-auth?host=HOST[:PORT]&return=PATH`: the control plane's half of web-app
//! authentication.
//!
//! A relay sends a browser without a valid app cookie here. With a session (the
//! `ferry_session` cookie, turned into a bearer token by [`super::session`]) whose user
//! owns the workspace (or is an admin), the browser is sent back to
//! `https://HOST/.ferry/auth?token=APP_TOKEN&return=PATH` with an app token bound to
//! that one host name; the relay turns it into a host-only cookie. Without a session a
//! small login page signs in and comes back here. A host that is not an app of a
//! registered relay, a workspace that does not exist, or one that is not the user's
//! all get the same 404 page.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_proto::app_host::{self, AppHost, NOT_FOUND_PAGE};
use ferry_proto::token::TokenKind;

use super::{authorize, ApiError};
use crate::state::State;

/// How long an app cookie lasts (never past the session it came from).
pub const APP_SESSION_SECS: u64 = 12 * 3600;

pub(crate) async fn app_auth(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let Some((hostname, port)) = query.get("host").and_then(|h| app_host::split_authority(h))
    else {
        return Ok(not_found());
    };
    let return_path = query
        .get("return")
        .and_then(|p| app_host::safe_return_path(p))
        .unwrap_or("/")
        .to_string();
    // Only hosts under a registered relay's apps domain: never an open redirect.
    let mut app = None;
    for relay in state.store().relays().await? {
        if relay.apps_domain.is_empty() {
            continue;
        }
        if let Ok(parsed) = AppHost::parse(&hostname, &relay.apps_domain) {
            app = Some(parsed);
            break;
        }
    }
    let Some(app) = app else {
        return Ok(not_found());
    };
    let claims = match authorize(&state, &headers, &[TokenKind::User, TokenKind::Admin]).await {
        Ok(claims) => claims,
        // No session, or an expired or revoked one: sign in, then come back.
        Err(_) => return Ok(login_page()),
    };
    let owns = match state.store().workspace(app.workspace.as_str()).await? {
        Some(ws) => claims.kind == TokenKind::Admin || ws.owner == claims.sub,
        None => false,
    };
    if !owns {
        tracing::info!(user = %claims.sub, host = %hostname, "app auth refused: not the owner");
        return Ok(not_found());
    }
    let ttl = claims
        .exp
        .saturating_sub(ferry_transport::unix_now())
        .min(APP_SESSION_SECS);
    let (token, _) = state.mint_app(&claims, &hostname, ttl).await?;
    let authority = match port {
        Some(port) => format!("{hostname}:{port}"),
        None => hostname.clone(),
    };
    let location = format!(
        "https://{authority}/.ferry/auth?token={token}&return={}",
        app_host::percent_encode(&return_path)
    );
    tracing::debug!(user = %claims.sub, host = %hostname, "app token issued");
    let mut response = StatusCode::FOUND.into_response();
    let h = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, location);
    }
    no_store(h);
    Ok(response)
}

fn no_store(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The next URL carries a token: never tell another site about it.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn html(status: StatusCode, page: &'static str) -> Response {
    let mut response = (status, page).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    no_store(h);
    response
}

fn not_found() -> Response {
    html(StatusCode::NOT_FOUND, NOT_FOUND_PAGE)
}

fn login_page() -> Response {
    html(StatusCode::UNAUTHORIZED, LOGIN_PAGE)
}

/// Signs in with `POST /api/v1/login`, stores the session with `POST /api/v1/session`,
/// then reloads this page, which now has a session. No script from anywhere else.
const LOGIN_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>ferry: sign in</title>
<meta name="viewport" content="width=device-width">
<style>body{font-family:sans-serif;margin:3em;max-width:24em}input,button{display:block;margin:.5em 0;font-size:1em;width:100%}#error{color:#b00}</style>
</head><body>
<h1>Sign in to ferry</h1>
<p>to open this workspace app.</p>
<form id="login">
<input id="user" name="user" autocomplete="username" placeholder="user name" required>
<input id="password" name="password" type="password" autocomplete="current-password" placeholder="password" required>
<button type="submit">Sign in</button>
<p id="error"></p>
</form>
<script>
document.getElementById('login').addEventListener('submit', async (event) => {
  event.preventDefault();
  const error = document.getElementById('error');
  error.textContent = '';
  try {
    const login = await fetch('/api/v1/login', {
      method: 'POST',
      headers: {'content-type': 'application/json'},
      body: JSON.stringify({user: document.getElementById('user').value,
                            password: document.getElementById('password').value}),
    });
    const body = await login.json();
    if (!login.ok) { error.textContent = body.error ? body.error.message : 'sign-in failed'; return; }
    const session = await fetch('/api/v1/session', {
      method: 'POST', headers: {authorization: 'Bearer ' + body.token},
    });
    if (!session.ok) { error.textContent = 'could not start a session'; return; }
    location.reload();
  } catch (e) {
    error.textContent = 'the control plane did not answer: ' + e;
  }
});
</script>
</body></html>
"#;
