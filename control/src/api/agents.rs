//! Agents' own endpoint: telemetry reports (`POST /api/v1/agents/metadata`: resource
//! readings and custom metadata items), and the plain reading of the items by the
//! workspace's owner (`GET /api/v1/workspaces/{label}/metadata`). Everything goes
//! through the store, so any replica serves what another received.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use ferry_proto::api::*;
use ferry_proto::token::TokenKind;
use ferry_proto::ErrorCode;

use super::workspaces::owned;
use super::{authorize, body, now_ms, ApiError, ApiResult};
use crate::state::State;
use crate::store::StoreError;
use crate::telemetry::{metadata_row, reading, stats_row};

pub(crate) async fn update_metadata(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    req: Result<Json<AgentMetadataRequest>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let claims = authorize(&state, &headers, &[TokenKind::Agent]).await?;
    let req = body(req)?;
    req.check()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?;
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
    // The control plane's clock, not the agent's: every reading of every workspace
    // is on one time line, and an agent cannot write into the past or the future.
    let now = now_ms();
    let stats = req.stats.as_ref().map(|s| stats_row(&claims.sub, now, s));
    let items: Vec<_> = req
        .items
        .into_iter()
        .map(|i| metadata_row(i, now))
        .collect();
    let started = Instant::now();
    let stored = state
        .store()
        .record_telemetry(
            &claims.sub,
            stats.as_ref(),
            STATS_BUCKET_MS,
            &items,
            MAX_METADATA_KEYS,
        )
        .await;
    match stored {
        Ok(()) => {}
        Err(too_many @ StoreError::TooMany { .. }) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "too_many_keys",
                too_many.to_string(),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    crate::metrics::telemetry_written(started.elapsed(), stats.is_some(), items.len());
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn metadata(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(label): Path<String>,
) -> ApiResult<WorkspaceMetadataResponse> {
    let claims = authorize(&state, &headers, &[TokenKind::User, TokenKind::Admin]).await?;
    let ws = owned(&state, &claims, &label).await?;
    let items = state.store().workspace_metadata(&ws.label).await?;
    Ok(Json(WorkspaceMetadataResponse {
        items: items.into_iter().map(reading).collect(),
        workspace: ws.label,
    }))
}
