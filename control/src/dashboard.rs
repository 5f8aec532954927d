//! The dashboard: one static page, its script and its style sheet, compiled into the
//! binary and served on the control plane's own origin (relays never serve it). The
//! page reads the API with the session cookie (see [`crate::api::session`]).
//!
//! The page gets a strict Content-Security-Policy: only its own script and style,
//! nothing inline, no frames; `connect-src` allows this origin and the relays' HTTPS
//! origins, which the page probes for "your latency".

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::state::State;

const INDEX_HTML: &str = include_str!("../dashboard/index.html");
const APP_JS: &str = include_str!("../dashboard/app.js");
const APP_CSS: &str = include_str!("../dashboard/app.css");

/// `GET /`: the dashboard is the only page.
pub(crate) async fn root() -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, "/dashboard")]).into_response()
}

/// `GET /dashboard`.
pub(crate) async fn page(AxState(state): AxState<Arc<State>>) -> Response {
    let origins = match state.regions().await {
        Ok(regions) => regions
            .iter()
            .flat_map(|r| r.relays.iter())
            .filter_map(|relay| relay.https_url.as_deref().and_then(origin))
            .collect(),
        Err(e) => {
            // The page still loads; its latency probes will be refused by the policy.
            tracing::warn!(error = %e, "dashboard: cannot list relays for the CSP");
            Vec::new()
        }
    };
    let csp = policy(&origins);
    let mut resp = static_file(INDEX_HTML, "text/html; charset=utf-8");
    if let Ok(value) = HeaderValue::from_str(&csp) {
        resp.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, value);
    }
    resp
}

/// `GET /dashboard/app.js`.
pub(crate) async fn script() -> Response {
    static_file(APP_JS, "text/javascript; charset=utf-8")
}

/// `GET /dashboard/app.css`.
pub(crate) async fn style() -> Response {
    static_file(APP_CSS, "text/css; charset=utf-8")
}

fn static_file(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = (
        [
            (header::CONTENT_TYPE, content_type),
            // Always the binary's own version: a new control plane serves a new page.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response();
    *resp.status_mut() = StatusCode::OK;
    resp
}

/// The page's Content-Security-Policy, allowing `relay_origins` for its probes.
pub fn policy(relay_origins: &[String]) -> String {
    let mut connect = vec!["'self'".to_string()];
    for o in relay_origins {
        if !connect.contains(o) {
            connect.push(o.clone());
        }
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src {}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        connect.join(" ")
    )
}

/// The origin (`https://host[:port]`) of an HTTPS URL, if it is one we can safely put
/// in a CSP header (a relay's registration is input too).
pub fn origin(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let ok = !authority.is_empty()
        && !authority.contains('@')
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    ok.then(|| format!("https://{}", authority.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_origins_are_checked_before_they_reach_the_policy() {
        assert_eq!(
            origin("https://127.0.0.1:7101").as_deref(),
            Some("https://127.0.0.1:7101")
        );
        assert_eq!(
            origin("https://EU-1.relay.example/x?y").as_deref(),
            Some("https://eu-1.relay.example")
        );
        assert_eq!(
            origin("https://[::1]:7101/").as_deref(),
            Some("https://[::1]:7101")
        );
        for bad in [
            "http://127.0.0.1:7101",
            "https://a.example; script-src *",
            "https://user@a.example",
            "https://",
            "javascript:alert(1)",
        ] {
            assert_eq!(origin(bad), None, "{bad}");
        }
        let csp = policy(&[
            "https://127.0.0.1:7101".into(),
            "https://127.0.0.1:7101".into(),
        ]);
        assert!(
            csp.contains("connect-src 'self' https://127.0.0.1:7101;"),
            "{csp}"
        );
        assert!(csp.contains("script-src 'self';"));
        assert!(!csp.contains("unsafe"));
    }
}
