//! The HTTP API, `/api/v1`. Every refusal is a typed JSON error
//! (`{"error":{"code","message"}}`) with a 4xx status; 5xx means our bug.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_proto::api::*;
use ferry_proto::token::{Claims, TokenKind};
use ferry_proto::{ErrorCode, WorkspaceLabel};

use crate::state::State;

/// Request bodies are small JSON documents; anything larger is refused unread.
const MAX_BODY: usize = 64 * 1024;

/// A typed API error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
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
        let status = match rejection {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, "bad_request", rejection.body_text())
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Checks the bearer token for `kind`.
fn authorize(state: &State, headers: &HeaderMap, kinds: &[TokenKind]) -> Result<Claims, ApiError> {
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
    let mut last = None;
    for &kind in kinds {
        match state.verify(token, kind) {
            Ok(claims) => return Ok(claims),
            Err(e) => last = Some(e),
        }
    }
    let err = last.expect("authorize is called with at least one kind");
    let status = match err.code() {
        ErrorCode::WrongTokenKind => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    Err(ApiError::new(status, err.code().as_str(), err.to_string()))
}

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/v1/keys", get(keys))
        .route("/api/v1/regions", get(regions))
        .route("/api/v1/relays/register", post(register_relay))
        .route("/api/v1/tokens", post(mint_token))
        .route("/api/v1/directory", post(directory_update).get(directory))
        .route("/api/v1/relays/heartbeat", post(relay_heartbeat))
        .route("/api/v1/workspaces/{label}/route", get(route))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API endpoint")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn keys(AxState(state): AxState<Arc<State>>) -> Json<KeysResponse> {
    Json(KeysResponse {
        keys: state.key_set().to_public_keys(),
    })
}

async fn regions(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
) -> ApiResult<RegionsResponse> {
    authorize(
        &state,
        &headers,
        &[
            TokenKind::User,
            TokenKind::Agent,
            TokenKind::Relay,
            TokenKind::Admin,
        ],
    )?;
    Ok(Json(RegionsResponse {
        regions: state.regions(),
    }))
}

async fn register_relay(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    body: Result<Json<RegisterRelayRequest>, JsonRejection>,
) -> ApiResult<RegisterRelayResponse> {
    let claims = authorize(&state, &headers, &[TokenKind::Relay])?;
    let Json(req) = body?;
    ferry_proto::label::validate_name(&req.region).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("region: {e}"),
        )
    })?;
    if req.names.is_empty() || req.names.len() > 16 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "names: give 1 to 16 DNS names or IP addresses for the relay's certificate",
        ));
    }
    if req.quic_addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("quic_addr `{}` is not IP:PORT", req.quic_addr),
        ));
    }
    let info = RelayInfo {
        name: claims.sub.clone(),
        region: req.region,
        quic_addr: req.quic_addr,
        server_name: req.names[0].clone(),
        // Registration time in nanoseconds: distinct for every start of a relay.
        incarnation: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    };
    let cert = state
        .register_relay(info, &req.names)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    Ok(Json(RegisterRelayResponse {
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem,
        ca_pem: state.ca().cert_pem().to_string(),
        keys: state.key_set().to_public_keys(),
    }))
}

async fn mint_token(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    body: Result<Json<MintTokenRequest>, JsonRejection>,
) -> ApiResult<MintTokenResponse> {
    authorize(&state, &headers, &[TokenKind::Admin])?;
    let Json(req) = body?;
    let subject_ok = match req.kind {
        TokenKind::Agent => WorkspaceLabel::parse(&req.subject)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        _ => ferry_proto::label::validate_name(&req.subject).map_err(|e| e.to_string()),
    };
    subject_ok.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("subject: {e}"),
        )
    })?;
    let ttl = req.ttl_secs.unwrap_or(match req.kind {
        TokenKind::Agent | TokenKind::Relay => 365 * 24 * 3600,
        TokenKind::App => 300,
        TokenKind::User | TokenKind::Admin => 30 * 24 * 3600,
    });
    let (token, claims) = state.mint(req.kind, &req.subject, ttl);
    Ok(Json(MintTokenResponse {
        token,
        expires_at: claims.exp,
    }))
}

async fn directory_update(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    body: Result<Json<DirectoryUpdate>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let claims = authorize(&state, &headers, &[TokenKind::Relay])?;
    let Json(update) = body?;
    WorkspaceLabel::parse(&update.workspace)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    state.update_directory(
        &claims.sub,
        &update.workspace,
        update.connected,
        update.standby,
    );
    Ok(StatusCode::NO_CONTENT)
}

async fn directory(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
) -> ApiResult<DirectoryResponse> {
    authorize(&state, &headers, &[TokenKind::Relay, TokenKind::Admin])?;
    Ok(Json(DirectoryResponse {
        workspaces: state.directory(),
    }))
}

async fn relay_heartbeat(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    body: Result<Json<RelayHeartbeat>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let claims = authorize(&state, &headers, &[TokenKind::Relay])?;
    let Json(beat) = body?;
    if !state.heartbeat(&claims.sub, beat.draining) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_relay",
            format!("relay `{}` is not registered; register again", claims.sub),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn route(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(label): Path<String>,
) -> ApiResult<RouteResponse> {
    let claims = authorize(&state, &headers, &[TokenKind::User, TokenKind::Admin])?;
    // Another user's workspace answers exactly like one that does not exist.
    let unknown = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownWorkspace.as_str(),
            format!("workspace `{label}` does not exist or is not yours"),
        )
    };
    let parsed = WorkspaceLabel::parse(&label).map_err(|_| unknown())?;
    if claims.kind == TokenKind::User && parsed.owner() != claims.sub {
        return Err(unknown());
    }
    let relay = state.route(parsed.as_str()).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::AgentNotConnected.as_str(),
            format!("workspace `{parsed}` has no connected agent"),
        )
    })?;
    Ok(Json(RouteResponse {
        workspace: parsed.to_string(),
        relay,
    }))
}
