//! Agents' own endpoints: metadata readings (`POST /api/v1/agents/metadata`), and
//! their reading by the workspace's owner (`GET /api/v1/workspaces/{label}/metadata`).

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use ferry_proto::api::*;
use ferry_proto::token::TokenKind;
use ferry_proto::ErrorCode;

use super::workspaces::owned;
use super::{authorize, body, ApiError, ApiResult};
use crate::metadata::MetadataError;
use crate::state::{now, State};

pub(crate) async fn update_metadata(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    req: Result<Json<AgentMetadataRequest>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let claims = authorize(&state, &headers, &[TokenKind::Agent]).await?;
    let req = body(req)?;
    // An agent token names its workspace; one minted for a workspace that does not
    // exist (or no longer does) stores nothing.
    if state.store().workspace(&claims.sub).await?.is_none() {
        return Err(ApiError::not_found(
            ErrorCode::UnknownWorkspace.as_str(),
            format!(
                "workspace `{}` does not exist; its agent has nothing to report to",
                claims.sub
            ),
        ));
    }
    state
        .metadata
        .update(&claims.sub, req.items, now())
        .map_err(|e| match e {
            MetadataError::BadItem(m) => ApiError::bad_request(format!("items: {m}")),
            too_many @ MetadataError::TooManyKeys { .. } => ApiError::new(
                StatusCode::BAD_REQUEST,
                "too_many_keys",
                too_many.to_string(),
            ),
        })?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn metadata(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(label): Path<String>,
) -> ApiResult<WorkspaceMetadataResponse> {
    let claims = authorize(&state, &headers, &[TokenKind::User, TokenKind::Admin]).await?;
    let ws = owned(&state, &claims, &label).await?;
    Ok(Json(WorkspaceMetadataResponse {
        items: state.metadata.readings(&ws.label),
        workspace: ws.label,
    }))
}
