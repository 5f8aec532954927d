//! Workspaces, their agent tokens, and the route lookup.
//!
//! Every lookup by label goes through [`owned`], which answers `unknown_workspace`
//! alike for a workspace that does not exist and for another user's: a user learns
//! nothing about other tenants' names.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use ferry_proto::api::*;
use ferry_proto::token::{Claims, TokenKind};
use ferry_proto::{ErrorCode, WorkspaceLabel};

use super::users::check_token_name;
use super::{authorize, body, default_ttl, token_info, ApiError, ApiResult};
use crate::state::{now, State};
use crate::store::{StoreError, WorkspaceRow};

const USER_OR_ADMIN: &[TokenKind] = &[TokenKind::User, TokenKind::Admin];

fn info(row: WorkspaceRow) -> WorkspaceInfo {
    WorkspaceInfo {
        label: row.label,
        name: row.name,
        owner: row.owner,
        created_at: row.created_at,
    }
}

fn unknown(label: &str) -> ApiError {
    ApiError::not_found(
        ErrorCode::UnknownWorkspace.as_str(),
        format!(
            "workspace `{}` does not exist or is not yours",
            label.chars().take(64).collect::<String>()
        ),
    )
}

/// The workspace `label` if the caller may see it (its owner, or an admin).
pub(crate) async fn owned(
    state: &State,
    claims: &Claims,
    label: &str,
) -> Result<WorkspaceRow, ApiError> {
    let parsed = WorkspaceLabel::parse(label).map_err(|_| unknown(label))?;
    if claims.kind == TokenKind::User && parsed.owner() != claims.sub {
        return Err(unknown(label));
    }
    state
        .store()
        .workspace(parsed.as_str())
        .await?
        .ok_or_else(|| unknown(label))
}

pub(crate) async fn create(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    req: Result<Json<CreateWorkspaceRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<WorkspaceInfo>), ApiError> {
    let claims = authorize(&state, &headers, USER_OR_ADMIN).await?;
    let req = body(req)?;
    let owner = match (claims.kind, req.owner) {
        (TokenKind::Admin, Some(owner)) => {
            if state.store().user(&owner).await?.is_none() {
                return Err(ApiError::not_found(
                    "unknown_user",
                    format!(
                        "user `{}` does not exist; create it first",
                        owner.chars().take(64).collect::<String>()
                    ),
                ));
            }
            owner
        }
        (TokenKind::Admin, None) => {
            return Err(ApiError::bad_request(
                "owner: an admin must say whose workspace this is",
            ))
        }
        (_, Some(owner)) if owner != claims.sub => {
            return Err(ApiError::forbidden(
                "owner: you can only create workspaces of your own",
            ))
        }
        (_, _) => {
            // A user holding a valid token exists, even if an admin minted the token
            // without creating the account first.
            state.store().ensure_user(&claims.sub, now()).await?;
            claims.sub.clone()
        }
    };
    let label = WorkspaceLabel::new(&req.name, &owner)
        .map_err(|e| ApiError::bad_request(format!("name: {e}")))?;
    let row = WorkspaceRow {
        label: label.to_string(),
        name: req.name,
        owner,
        created_at: now(),
    };
    match state.store().create_workspace(&row).await {
        Ok(()) => {}
        Err(StoreError::Conflict { .. }) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "workspace_exists",
                format!("workspace `{label}` already exists"),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(workspace = %label, "workspace created");
    Ok((StatusCode::CREATED, Json(info(row))))
}

pub(crate) async fn list(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
) -> ApiResult<WorkspacesResponse> {
    let claims = authorize(&state, &headers, USER_OR_ADMIN).await?;
    let owner = (claims.kind == TokenKind::User).then_some(claims.sub.as_str());
    let workspaces = state
        .store()
        .workspaces(owner)
        .await?
        .into_iter()
        .map(info)
        .collect();
    Ok(Json(WorkspacesResponse { workspaces }))
}

pub(crate) async fn show(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(label): Path<String>,
) -> ApiResult<WorkspaceInfo> {
    let claims = authorize(&state, &headers, USER_OR_ADMIN).await?;
    Ok(Json(info(owned(&state, &claims, &label).await?)))
}

pub(crate) async fn remove(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(label): Path<String>,
) -> Result<StatusCode, ApiError> {
    let claims = authorize(&state, &headers, USER_OR_ADMIN).await?;
    let ws = owned(&state, &claims, &label).await?;
    // Its agents must not keep serving a workspace that is gone.
    for t in state.store().tokens("agent", &ws.label).await? {
        state.revoke_token(&t.jti).await?;
    }
    state.store().delete_workspace(&ws.label).await?;
    state.store().delete_telemetry(&ws.label).await?;
    tracing::info!(workspace = %ws.label, "workspace deleted");
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn route(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(label): Path<String>,
) -> ApiResult<RouteResponse> {
    let claims = authorize(&state, &headers, USER_OR_ADMIN).await?;
    let ws = owned(&state, &claims, &label).await?;
    let relay = state.route(&ws.label).await?.ok_or_else(|| {
        ApiError::not_found(
            ErrorCode::AgentNotConnected.as_str(),
            format!("workspace `{}` has no connected agent", ws.label),
        )
    })?;
    if relay.health == Some(RelayHealth::Unreachable) {
        // Its last relay went silent: the agent is gone with it or moving elsewhere.
        return Err(ApiError::not_found(
            ErrorCode::AgentNotConnected.as_str(),
            format!(
                "workspace `{}` has no connected agent (its relay {} in region {} is unreachable)",
                ws.label, relay.name, relay.region
            ),
        ));
    }
    Ok(Json(RouteResponse {
        workspace: ws.label,
        relay,
    }))
}

async fn mint_agent_token(
    state: &State,
    label: &str,
    name: &str,
    ttl: Option<u64>,
) -> Result<NewTokenResponse, ApiError> {
    let ttl = ttl.unwrap_or(default_ttl(TokenKind::Agent));
    let (token, claims) = state.mint(TokenKind::Agent, label, name, ttl).await?;
    Ok(NewTokenResponse {
        id: claims.jti,
        token,
        expires_at: claims.exp,
    })
}

pub(crate) async fn create_agent_token(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(label): Path<String>,
    req: Result<Json<CreateTokenRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<NewTokenResponse>), ApiError> {
    let claims = authorize(&state, &headers, USER_OR_ADMIN).await?;
    let ws = owned(&state, &claims, &label).await?;
    let req = body(req)?;
    check_token_name(&req.name)?;
    let new = mint_agent_token(&state, &ws.label, &req.name, req.ttl_secs).await?;
    tracing::info!(workspace = %ws.label, jti = %new.id, "agent token created");
    Ok((StatusCode::CREATED, Json(new)))
}

pub(crate) async fn list_agent_tokens(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(label): Path<String>,
) -> ApiResult<TokensResponse> {
    let claims = authorize(&state, &headers, USER_OR_ADMIN).await?;
    let ws = owned(&state, &claims, &label).await?;
    let tokens = state
        .store()
        .tokens("agent", &ws.label)
        .await?
        .into_iter()
        .map(token_info)
        .collect();
    Ok(Json(TokensResponse { tokens }))
}

/// The agent token `id` of workspace `label`, or `unknown_token`.
async fn agent_token(
    state: &State,
    claims: &Claims,
    label: &str,
    id: &str,
) -> Result<crate::store::TokenRow, ApiError> {
    let ws = owned(state, claims, label).await?;
    match state.store().token(id).await? {
        Some(t) if t.kind == "agent" && t.subject == ws.label => Ok(t),
        _ => Err(ApiError::not_found(
            "unknown_token",
            format!(
                "workspace `{}` has no agent token `{}`",
                ws.label,
                id.chars().take(64).collect::<String>()
            ),
        )),
    }
}

pub(crate) async fn revoke_agent_token(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path((label, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let claims = authorize(&state, &headers, USER_OR_ADMIN).await?;
    let t = agent_token(&state, &claims, &label, &id).await?;
    state.revoke_token(&t.jti).await?;
    tracing::info!(workspace = %t.subject, jti = %t.jti, "agent token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes the token and mints its successor with the same name.
pub(crate) async fn rotate_agent_token(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path((label, id)): Path<(String, String)>,
) -> ApiResult<NewTokenResponse> {
    let claims = authorize(&state, &headers, USER_OR_ADMIN).await?;
    let old = agent_token(&state, &claims, &label, &id).await?;
    let new = mint_agent_token(&state, &old.subject, &old.name, None).await?;
    state.revoke_token(&old.jti).await?;
    tracing::info!(workspace = %old.subject, old = %old.jti, new = %new.id, "agent token rotated");
    Ok(Json(new))
}
