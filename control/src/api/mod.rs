//! The HTTP API, `/api/v1`. Every refusal is a typed JSON error
//! (`{"error":{"code","message"}}`) with a 4xx status; 5xx means our bug or the
//! store's outage, and its details go to the log, not to the client.
//!
//! The routes are listed once, in [`ROUTES`], which the OpenAPI test checks against
//! `control/openapi.json`.

mod agents;
pub mod app_auth;
mod measurements;
mod relays;
pub mod session;
mod telemetry;
mod users;
mod workspaces;

/// Hashes a password as the store keeps it (argon2id), for tools that set one.
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    users::hash_password(password).await
}

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use ferry_proto::api::*;
use ferry_proto::token::{Claims, TokenKind};
use ferry_proto::ErrorCode;

use crate::state::{State, StateError, VerifyError};

pub(crate) use measurements::now_ms;
pub(crate) use telemetry::MAX_STREAMS as MAX_TELEMETRY_STREAMS;

/// Request bodies are small JSON documents; anything larger is refused unread.
pub const MAX_BODY: usize = 64 * 1024;

/// A relay's directory snapshot lists every agent on it (~60 bytes per agent).
pub const MAX_SNAPSHOT_BODY: usize = 8 * 1024 * 1024;

/// The checked-in OpenAPI document, served as it is.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Every route: (method, path). Kept beside [`router`] and checked against the OpenAPI
/// document by a test.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/dashboard"),
    ("get", "/dashboard/app.js"),
    ("get", "/dashboard/app.css"),
    ("get", "/healthz"),
    ("get", "/app-auth"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/keys"),
    ("post", "/api/v1/keys/rotate"),
    ("get", "/api/v1/revocations"),
    ("get", "/api/v1/regions"),
    ("post", "/api/v1/relays/register"),
    ("post", "/api/v1/relays/heartbeat"),
    ("post", "/api/v1/directory"),
    ("get", "/api/v1/directory"),
    ("put", "/api/v1/directory"),
    ("get", "/api/v1/relays/load"),
    ("post", "/api/v1/measurements"),
    ("get", "/api/v1/measurements"),
    ("get", "/api/v1/measurements/matrix"),
    ("post", "/api/v1/tokens"),
    ("delete", "/api/v1/tokens/{id}"),
    ("post", "/api/v1/users"),
    ("get", "/api/v1/users"),
    ("post", "/api/v1/login"),
    ("post", "/api/v1/session"),
    ("delete", "/api/v1/session"),
    ("get", "/api/v1/me"),
    ("post", "/api/v1/me/tokens"),
    ("get", "/api/v1/me/tokens"),
    ("delete", "/api/v1/me/tokens/{id}"),
    ("post", "/api/v1/workspaces"),
    ("get", "/api/v1/workspaces"),
    ("get", "/api/v1/workspaces/{label}"),
    ("delete", "/api/v1/workspaces/{label}"),
    ("get", "/api/v1/workspaces/{label}/route"),
    ("get", "/api/v1/workspaces/{label}/latency"),
    ("get", "/api/v1/workspaces/{label}/metadata"),
    ("get", "/api/v1/workspaces/{label}/telemetry"),
    ("get", "/api/v1/workspaces/{label}/telemetry/events"),
    ("post", "/api/v1/agents/metadata"),
    ("post", "/api/v1/workspaces/{label}/agent-tokens"),
    ("get", "/api/v1/workspaces/{label}/agent-tokens"),
    ("delete", "/api/v1/workspaces/{label}/agent-tokens/{id}"),
    (
        "post",
        "/api/v1/workspaces/{label}/agent-tokens/{id}/rotate",
    ),
];

/// A typed API error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub(crate) fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let (status, code) = match rejection {
            JsonRejection::MissingJsonContentType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            JsonRejection::BytesRejection(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            _ => (StatusCode::BAD_REQUEST, "bad_request"),
        };
        ApiError::new(status, code, rejection.body_text())
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        if let StateError::Store(crate::store::StoreError::Conflict { what }) = &e {
            return ApiError::new(StatusCode::CONFLICT, "conflict", what.to_string());
        }
        // Our side failed (most likely the database): log it, tell the client little.
        if matches!(e, StateError::Store(_)) {
            crate::metrics::store_error();
        }
        tracing::error!(error = %e, "request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the control plane failed to serve this request; try again",
        )
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        StateError::from(e).into()
    }
}

pub(crate) type ApiResult<T> = Result<Json<T>, ApiError>;

/// The peer's address, added to each request by the server.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Checks the bearer token for one of `kinds`.
pub(crate) async fn authorize(
    state: &State,
    headers: &HeaderMap,
    kinds: &[TokenKind],
) -> Result<Claims, ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized.as_str(),
                "missing `Authorization: Bearer TOKEN` header",
            )
        })?;
    // Verify once for the signature, then check the kind against the allowed list, so
    // that the error names the kinds this endpoint takes.
    let first = kinds.first().copied().unwrap_or(TokenKind::Admin);
    let claims = match state.verify(token, first).await {
        Ok(c) => return Ok(c),
        Err(VerifyError::Token(ferry_proto::token::TokenError::WrongKind { got, .. }))
            if kinds.contains(&got) =>
        {
            state.verify(token, got).await
        }
        Err(e) => Err(e),
    };
    claims.map_err(|e| match e {
        VerifyError::Token(t) => {
            let status = match t.code() {
                ErrorCode::WrongTokenKind => StatusCode::FORBIDDEN,
                _ => StatusCode::UNAUTHORIZED,
            };
            let message = match &t {
                ferry_proto::token::TokenError::WrongKind { got, .. } => format!(
                    "a {got} token cannot be used here; use a {} token",
                    kinds
                        .iter()
                        .map(|k| k.to_string())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
                other => other.to_string(),
            };
            ApiError::new(status, t.code().as_str(), message)
        }
        VerifyError::Revoked => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "token_revoked",
            "token was revoked; log in again or ask for a new one",
        ),
        VerifyError::State(s) => s.into(),
    })
}

/// Parses a JSON body, turning a rejection into a typed error.
pub(crate) fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(v)| v).map_err(ApiError::from)
}

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/", get(crate::dashboard::root))
        .route("/dashboard", get(crate::dashboard::page))
        .route("/dashboard/app.js", get(crate::dashboard::script))
        .route("/dashboard/app.css", get(crate::dashboard::style))
        .route("/healthz", get(|| async { "ok" }))
        .route("/app-auth", get(app_auth::app_auth))
        .route(
            "/api/v1/openapi.json",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    OPENAPI,
                )
            }),
        )
        .route("/api/v1/keys", get(relays::keys))
        .route("/api/v1/keys/rotate", post(relays::rotate_keys))
        .route("/api/v1/revocations", get(relays::revocations))
        .route("/api/v1/regions", get(relays::regions))
        .route("/api/v1/relays/register", post(relays::register_relay))
        .route("/api/v1/relays/heartbeat", post(relays::heartbeat))
        .route(
            "/api/v1/directory",
            post(relays::directory_update)
                .get(relays::directory)
                .put(relays::directory_snapshot.layer(DefaultBodyLimit::max(MAX_SNAPSHOT_BODY))),
        )
        .route("/api/v1/relays/load", get(measurements::relay_load))
        .route(
            "/api/v1/measurements",
            post(measurements::report)
                .get(measurements::series)
                .layer(DefaultBodyLimit::max(measurements::MAX_REPORT_BODY)),
        )
        .route("/api/v1/measurements/matrix", get(measurements::matrix))
        .route("/api/v1/tokens", post(relays::mint_token))
        .route("/api/v1/tokens/{id}", delete(relays::revoke_token))
        .route(
            "/api/v1/users",
            post(users::create_user).get(users::list_users),
        )
        .route("/api/v1/login", post(users::login))
        .route(
            "/api/v1/session",
            post(session::create).delete(session::remove),
        )
        .route("/api/v1/me", get(users::me))
        .route(
            "/api/v1/me/tokens",
            post(users::create_personal_token).get(users::list_personal_tokens),
        )
        .route(
            "/api/v1/me/tokens/{id}",
            delete(users::revoke_personal_token),
        )
        .route(
            "/api/v1/workspaces",
            post(workspaces::create).get(workspaces::list),
        )
        .route(
            "/api/v1/workspaces/{label}",
            get(workspaces::show).delete(workspaces::remove),
        )
        .route("/api/v1/workspaces/{label}/route", get(workspaces::route))
        .route("/api/v1/workspaces/{label}/metadata", get(agents::metadata))
        .route(
            "/api/v1/workspaces/{label}/telemetry",
            get(telemetry::telemetry),
        )
        .route(
            "/api/v1/workspaces/{label}/telemetry/events",
            get(telemetry::events),
        )
        .route("/api/v1/agents/metadata", post(agents::update_metadata))
        .route(
            "/api/v1/workspaces/{label}/latency",
            get(measurements::workspace_latency),
        )
        .route(
            "/api/v1/workspaces/{label}/agent-tokens",
            post(workspaces::create_agent_token).get(workspaces::list_agent_tokens),
        )
        .route(
            "/api/v1/workspaces/{label}/agent-tokens/{id}",
            delete(workspaces::revoke_agent_token),
        )
        .route(
            "/api/v1/workspaces/{label}/agent-tokens/{id}/rotate",
            post(workspaces::rotate_agent_token),
        )
        .fallback(|| async { ApiError::not_found("not_found", "no such API endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session::cookie_to_bearer,
        ))
        .with_state(state)
}

/// A token record as listings show it.
pub(crate) fn token_info(row: crate::store::TokenRow) -> TokenInfo {
    TokenInfo {
        kind: serde_json::from_value(serde_json::Value::String(row.kind.clone()))
            .unwrap_or(TokenKind::User),
        id: row.jti,
        name: row.name,
        subject: row.subject,
        created_at: row.created_at,
        expires_at: row.expires_at,
        revoked: row.revoked_at.is_some(),
    }
}

/// Lifetime of a token of `kind` when the request names none.
pub(crate) fn default_ttl(kind: TokenKind) -> u64 {
    match kind {
        TokenKind::Agent | TokenKind::Relay => 365 * 24 * 3600,
        TokenKind::App => 300,
        TokenKind::User | TokenKind::Admin => 30 * 24 * 3600,
    }
}
