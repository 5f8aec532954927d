//! App authentication on the relay.
//!
//! A request without a valid app cookie for its host is sent to the control plane's
//! `/app-auth`, which checks the browser's session and ownership and sends it back to
//! [`AUTH_PATH`] with an app token whose audience is this host name. The relay checks
//! the token offline and keeps it in a host-only cookie (no `Domain`), `Secure`,
//! `HttpOnly`, `SameSite=Lax`, named per apps domain. Every later request verifies the
//! cookie again (signature, expiry, audience = this exact host, not revoked), so a
//! cookie copied to another app's host, or another user's, is worthless there.

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};

use ferry_proto::app_host;
use ferry_proto::token::{Claims, Expect, TokenKind};

use super::{full, pages, Body, Web};
use crate::server::Shared;

/// Where the control plane sends the browser back with an app token.
pub(crate) const AUTH_PATH: &str = "/.ferry/auth";

/// How old an app token may be when it arrives at [`AUTH_PATH`]: the URL carrying it
/// is good for this long only (the cookie holding it lives on).
const AUTH_LINK_SECS: u64 = 120;

/// The session cookie of the control plane: never passed to apps.
pub(crate) const SESSION_COOKIE: &str = "ferry_session";

fn revoked(shared: &Shared, jti: &str) -> bool {
    let revoked = shared
        .revoked
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    app_host::app_revocation_ids(jti).any(|id| revoked.contains(id))
}

/// How often a long-lived session (a WebSocket) checks its app token is still good.
const REVOCATION_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Resolves once the app token `jti` (or its session) is revoked: long-lived sessions
/// end with it, as QUIC connections of revoked tokens do.
pub(crate) async fn revoked_later(shared: &Shared, jti: &str) {
    while !revoked(shared, jti) {
        tokio::time::sleep(REVOCATION_POLL).await;
    }
    tracing::info!(jti, "app token revoked; ending its session");
}

/// Verifies an app token for `hostname`.
fn verify(shared: &Shared, token: &str, hostname: &str) -> Option<Claims> {
    let claims = shared
        .keys()
        .verify(
            token,
            ferry_transport::unix_now(),
            Expect {
                kind: TokenKind::App,
                audience: hostname,
            },
        )
        .ok()?;
    (!revoked(shared, &claims.jti)).then_some(claims)
}

/// Every value of cookie `name` in the request (a browser may send several).
pub(crate) fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The claims of a valid app cookie for `hostname`, if the request has one.
pub(crate) fn app_claims(
    shared: &Shared,
    web: &Web,
    headers: &HeaderMap,
    hostname: &str,
) -> Option<Claims> {
    cookies(headers, &web.cookie_name).find_map(|token| verify(shared, token, hostname))
}

/// `302` to the control plane's app-auth page, to come back to this very request.
pub(crate) fn redirect_to_control(
    web: &Web,
    authority: &str,
    req: &Request<Incoming>,
) -> Response<Body> {
    let back = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let location = format!(
        "{}/app-auth?host={}&return={}",
        web.control_url.trim_end_matches('/'),
        app_host::percent_encode(authority),
        app_host::percent_encode(back)
    );
    redirect(&location)
}

fn redirect(location: &str) -> Response<Body> {
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::FOUND;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// `GET /.ferry/auth?token=T&return=PATH`: a fresh app token for this host becomes the
/// app cookie, and the browser goes on to PATH.
pub(crate) fn complete(
    shared: &Shared,
    web: &Web,
    hostname: &str,
    req: &Request<Incoming>,
) -> Response<Body> {
    let query = req.uri().query().unwrap_or("");
    let claims = app_host::query_param(query, "token")
        .and_then(|token| verify(shared, &token, hostname).map(|claims| (token, claims)));
    let now = ferry_transport::unix_now();
    let Some((token, claims)) = claims.filter(|(_, c)| now.saturating_sub(c.iat) <= AUTH_LINK_SECS)
    else {
        tracing::info!(host = %hostname, "app sign-in link refused (invalid, expired or for another host)");
        return pages::bad_request(
            "This sign-in link is invalid or has expired. Open the app's address again.",
        );
    };
    let back = app_host::query_param(query, "return");
    let back = back
        .as_deref()
        .and_then(app_host::safe_return_path)
        .unwrap_or("/");
    let max_age = claims.exp.saturating_sub(now);
    let cookie = format!(
        "{}={token}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax",
        web.cookie_name
    );
    tracing::info!(user = %claims.sub, host = %hostname, "app cookie set");
    let mut resp = redirect(back);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// The request's `Cookie` headers without ferry's own cookies, as one header value
/// (HTTP/2 may split cookies over several headers; HTTP/1.1 wants one); `None` when
/// no cookie is left.
pub(crate) fn app_cookies(headers: &HeaderMap, ours: &str) -> Option<HeaderValue> {
    let kept: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let name = pair.split_once('=').map(|(k, _)| k).unwrap_or(pair);
            name != ours && name != SESSION_COOKIE
        })
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join("; ")).ok()
}

/// Whether an `Authorization` header carries one of ferry's own tokens (ferry's claims,
/// valid or not), which an app must never see.
pub(crate) fn is_ferry_authorization(value: &HeaderValue) -> bool {
    let Some(token) = value.to_str().ok().and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    }) else {
        return false;
    };
    ferry_proto::token::peek_claims(token.trim()).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ferry_cookies_are_stripped_and_the_rest_joined() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; ferry_app_x=T; ferry_session=S"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(
            app_cookies(&h, "ferry_app_x").unwrap().to_str().unwrap(),
            "a=1; b=2"
        );
        let mut only_ours = HeaderMap::new();
        only_ours.append(header::COOKIE, HeaderValue::from_static("ferry_app_x=T"));
        assert!(app_cookies(&only_ours, "ferry_app_x").is_none());
        assert_eq!(cookies(&h, "ferry_app_x").collect::<Vec<_>>(), ["T"]);
    }
}
