//! Endpoints for the network itself: keys, revocations, the region map, relay
//! enrollment and heartbeats, the agent directory, and admin token minting.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use ferry_proto::api::*;
use ferry_proto::token::TokenKind;
use ferry_proto::WorkspaceLabel;

use super::{authorize, body, default_ttl, ApiError, ApiResult};
use crate::state::{now, State};

pub(crate) async fn keys(AxState(state): AxState<Arc<State>>) -> ApiResult<KeysResponse> {
    // Re-read: another replica may have rotated since this one last looked.
    let ring = state.reload_keys().await?;
    Ok(Json(KeysResponse {
        keys: ring.public_keys(),
    }))
}

pub(crate) async fn rotate_keys(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    req: Result<Json<RotateKeysRequest>, JsonRejection>,
) -> ApiResult<RotateKeysResponse> {
    let claims = authorize(&state, &headers, &[TokenKind::Admin]).await?;
    let req = body(req)?;
    let kid = state.rotate_keys(req.drop_old).await?;
    let admin_token = if req.drop_old {
        let ttl = claims.exp.saturating_sub(claims.iat).max(3600);
        let (token, _) = state
            .mint(TokenKind::Admin, &claims.sub, "after dropping keys", ttl)
            .await?;
        Some(token)
    } else {
        None
    };
    Ok(Json(RotateKeysResponse {
        kid,
        keys: state.key_set().to_public_keys(),
        admin_token,
    }))
}

async fn revoked_list(state: &State) -> Result<Vec<Revoked>, ApiError> {
    Ok(state
        .store()
        .revocations(now())
        .await?
        .into_iter()
        .map(|(jti, expires_at)| Revoked { jti, expires_at })
        .collect())
}

pub(crate) async fn revocations(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
) -> ApiResult<RevocationsResponse> {
    authorize(&state, &headers, &[TokenKind::Relay, TokenKind::Admin]).await?;
    Ok(Json(RevocationsResponse {
        revoked: revoked_list(&state).await?,
    }))
}

pub(crate) async fn regions(
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
    )
    .await?;
    Ok(Json(RegionsResponse {
        regions: state.regions().await?,
    }))
}

pub(crate) async fn register_relay(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    req: Result<Json<RegisterRelayRequest>, JsonRejection>,
) -> ApiResult<RegisterRelayResponse> {
    let claims = authorize(&state, &headers, &[TokenKind::Relay]).await?;
    let req = body(req)?;
    ferry_proto::label::validate_name(&req.region)
        .map_err(|e| ApiError::bad_request(format!("region: {e}")))?;
    if req.names.is_empty() || req.names.len() > 16 {
        return Err(ApiError::bad_request(
            "names: give 1 to 16 DNS names or IP addresses for the relay's certificate",
        ));
    }
    // IP:PORT, or NAME:PORT that agents, clients and relays resolve themselves;
    // published in the canonical form, so that equal addresses compare equal.
    let quic_addr = ferry_proto::RelayAddr::parse(&req.quic_addr)
        .map_err(|e| ApiError::bad_request(format!("quic_addr: {e}")))?
        .to_string();
    if let Some(url) = &req.https_url {
        let authority = url.strip_prefix("https://").unwrap_or_default();
        if ferry_proto::app_host::split_authority(authority).is_none() {
            return Err(ApiError::bad_request(format!(
                "https_url `{}` is not https://HOST[:PORT]",
                url.chars().take(100).collect::<String>()
            )));
        }
    }
    if let Some(domain) = &req.apps_domain {
        let valid = domain.len() <= 200
            && domain.contains('.')
            && domain
                .split('.')
                .all(|label| ferry_proto::label::validate_name(label).is_ok());
        if !valid {
            return Err(ApiError::bad_request(format!(
                "apps_domain `{}` is not a lowercase DNS name like apps.eu.example.com",
                domain.chars().take(100).collect::<String>()
            )));
        }
    }
    let info = RelayInfo {
        name: claims.sub.clone(),
        region: req.region,
        quic_addr,
        server_name: req.names[0].clone(),
        health: None,
        // Assigned by the store on registration.
        incarnation: 0,
        https_url: req.https_url,
    };
    let cert = state
        .register_relay(info, &req.names, req.apps_domain.as_deref())
        .await
        .map_err(|e| match e {
            crate::state::StateError::Cert(c) => ApiError::bad_request(c.to_string()),
            other => other.into(),
        })?;
    Ok(Json(RegisterRelayResponse {
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem,
        ca_pem: state.ca().cert_pem().to_string(),
        keys: state.key_set().to_public_keys(),
    }))
}

pub(crate) async fn heartbeat(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    req: Result<Json<HeartbeatRequest>, JsonRejection>,
) -> ApiResult<HeartbeatResponse> {
    let claims = authorize(&state, &headers, &[TokenKind::Relay]).await?;
    let req = body(req)?;
    crate::metrics::heartbeat();
    if !state
        .store()
        .heartbeat(&claims.sub, now(), req.draining)
        .await?
    {
        return Err(unknown_relay(&claims.sub));
    }
    super::measurements::record_load(&state, &claims.sub, &req).await?;
    // Long poll: hold the answer while the relay is up to date.
    let wait = Duration::from_secs(u64::from(req.wait_secs.min(MAX_HEARTBEAT_WAIT_SECS)));
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = state.watch_changes();
    loop {
        let keys = state.reload_keys().await?.public_keys();
        let revoked = revoked_list(&state).await?;
        let digest = digest(&keys, &revoked);
        if req.known.as_deref() != Some(digest.as_str())
            || tokio::time::Instant::now() >= deadline
            || state.stopping.is_cancelled()
        {
            // The relay was alive for the whole wait.
            state
                .store()
                .heartbeat(&claims.sub, now(), req.draining)
                .await?;
            return Ok(Json(HeartbeatResponse {
                keys,
                revoked,
                digest,
            }));
        }
        // Woken by a change on this replica; other replicas' changes are polled for.
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(STORE_POLL) => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = state.stopping.cancelled() => {}
        }
    }
}

/// A relay token whose relay never enrolled (or was forgotten: a restored database).
/// Relays answer it by enrolling again.
fn unknown_relay(name: &str) -> ApiError {
    ApiError::not_found(
        "unknown_relay",
        format!("relay `{name}` is not enrolled; register it first"),
    )
}

/// Longest a heartbeat is held; well under the relay's healthy interval.
const MAX_HEARTBEAT_WAIT_SECS: u32 = 5;
/// How often a held heartbeat re-reads the store for other replicas' changes.
const STORE_POLL: Duration = Duration::from_secs(1);

/// A short digest of the key set and revocation list.
fn digest(keys: &[ferry_proto::token::PublicKey], revoked: &[Revoked]) -> String {
    let json = serde_json::to_vec(&(keys, revoked)).unwrap_or_default();
    ring::digest::digest(&ring::digest::SHA256, &json)
        .as_ref()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) async fn mint_token(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    req: Result<Json<MintTokenRequest>, JsonRejection>,
) -> ApiResult<MintTokenResponse> {
    authorize(&state, &headers, &[TokenKind::Admin]).await?;
    let req = body(req)?;
    let subject_ok = match req.kind {
        TokenKind::Agent => WorkspaceLabel::parse(&req.subject)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        _ => ferry_proto::label::validate_name(&req.subject).map_err(|e| e.to_string()),
    };
    subject_ok.map_err(|e| ApiError::bad_request(format!("subject: {e}")))?;
    let ttl = req.ttl_secs.unwrap_or(default_ttl(req.kind));
    let (token, claims) = state
        .mint(req.kind, &req.subject, "minted by admin", ttl)
        .await?;
    Ok(Json(MintTokenResponse {
        token,
        expires_at: claims.exp,
    }))
}

pub(crate) async fn revoke_token(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers, &[TokenKind::Admin]).await?;
    if state.revoke_token(&id).await? {
        tracing::info!(jti = %id, "token revoked by admin");
        return Ok(StatusCode::NO_CONTENT);
    }
    match state.store().token(&id).await? {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(ApiError::not_found(
            "unknown_token",
            format!(
                "no token with id `{}`",
                id.chars().take(64).collect::<String>()
            ),
        )),
    }
}

pub(crate) async fn directory_update(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    req: Result<Json<DirectoryUpdate>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let claims = authorize(&state, &headers, &[TokenKind::Relay]).await?;
    let update = body(req)?;
    WorkspaceLabel::parse(&update.workspace).map_err(|e| ApiError::bad_request(e.to_string()))?;
    state
        .update_directory(
            &claims.sub,
            &update.workspace,
            update.connected,
            update.standby,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/v1/directory`: the relay's whole directory, replacing its entries.
pub(crate) async fn directory_snapshot(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    req: Result<Json<DirectorySnapshot>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let claims = authorize(&state, &headers, &[TokenKind::Relay]).await?;
    let snapshot = body(req)?;
    for w in snapshot.workspaces.iter().chain(&snapshot.standby) {
        WorkspaceLabel::parse(w).map_err(|e| ApiError::bad_request(format!("workspaces: {e}")))?;
    }
    if !state.store().heartbeat(&claims.sub, now(), false).await? {
        return Err(unknown_relay(&claims.sub));
    }
    let changes = state
        .store()
        .replace_directory(&claims.sub, &snapshot.workspaces, &snapshot.standby, now())
        .await?;
    tracing::debug!(relay = %claims.sub, agents = snapshot.workspaces.len(), changes, "directory resynchronised");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/directory`: every connected workspace, its home region and relays.
pub(crate) async fn directory(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
) -> ApiResult<DirectoryResponse> {
    authorize(&state, &headers, &[TokenKind::Relay, TokenKind::Admin]).await?;
    Ok(Json(DirectoryResponse {
        workspaces: state.directory().await?,
    }))
}
