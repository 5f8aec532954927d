//! Users, password login and personal API tokens.
//!
//! Passwords are hashed with argon2id on a blocking thread. A login for a user that
//! does not exist still runs one verification (against a dummy hash), so timing does
//! not tell which user names exist; both cases answer the same `invalid_credentials`.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use ferry_proto::api::*;
use ferry_proto::token::TokenKind;

use super::{authorize, body, default_ttl, token_info, ApiError, ApiResult, Peer};
use crate::limiter;
use crate::login_gate::{GateRefusal, LoginPass};
use crate::state::{now, State};
use crate::store::StoreError;

/// How long a login session lasts.
pub const SESSION_TTL_SECS: u64 = 12 * 3600;
const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 1024;

fn random_salt() -> Result<SaltString, ApiError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "no randomness",
        )
    })?;
    SaltString::encode_b64(&bytes).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "salt encoding",
        )
    })
}

/// Hashes a password (argon2id, default cost) off the async threads.
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    let salt = random_salt()?;
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
    })
    .await
    .ok()
    .and_then(Result::ok)
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "hashing failed",
        )
    })
}

/// A hash no password matches, to spend the same time on unknown users.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::encode_b64(b"ferry-dummy-salt").expect("16 bytes encode");
        Argon2::default()
            .hash_password(b"no password matches this one", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Checks a password in constant time (argon2's comparison), on one of the login
/// gate's hashing threads (`pass` is the login's turn there).
async fn password_matches(
    state: &State,
    pass: &LoginPass,
    hash: Option<String>,
    password: String,
) -> bool {
    let known = hash.is_some();
    let hash = hash.unwrap_or_else(|| dummy_hash().to_string());
    let ok = pass
        .check(&state.login_gate, move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
    ok && known
}

fn check_password(password: &str) -> Result<(), ApiError> {
    if password.len() < MIN_PASSWORD || password.len() > MAX_PASSWORD {
        return Err(ApiError::bad_request(format!(
            "password: use {MIN_PASSWORD} to {MAX_PASSWORD} bytes"
        )));
    }
    Ok(())
}

pub(crate) async fn create_user(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    req: Result<Json<CreateUserRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<UserInfo>), ApiError> {
    authorize(&state, &headers, &[TokenKind::Admin]).await?;
    let req = body(req)?;
    ferry_proto::label::validate_name(&req.name)
        .map_err(|e| ApiError::bad_request(format!("name: {e}")))?;
    let hash = match req.password {
        Some(p) => {
            check_password(&p)?;
            Some(hash_password(p).await?)
        }
        None => None,
    };
    let created_at = now();
    match state
        .store()
        .create_user(&req.name, hash.as_deref(), created_at)
        .await
    {
        Ok(()) => {}
        Err(StoreError::Conflict { .. }) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "user_exists",
                format!("user `{}` already exists", req.name),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(user = %req.name, "user created");
    Ok((
        StatusCode::CREATED,
        Json(UserInfo {
            name: req.name,
            has_password: hash.is_some(),
            created_at,
        }),
    ))
}

pub(crate) async fn list_users(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
) -> ApiResult<UsersResponse> {
    authorize(&state, &headers, &[TokenKind::Admin]).await?;
    let users = state
        .store()
        .users()
        .await?
        .into_iter()
        .map(|u| UserInfo {
            name: u.name,
            has_password: u.password_hash.is_some(),
            created_at: u.created_at,
        })
        .collect();
    Ok(Json(UsersResponse { users }))
}

pub(crate) async fn login(
    AxState(state): AxState<Arc<State>>,
    peer: Option<Extension<Peer>>,
    req: Result<Json<LoginRequest>, JsonRejection>,
) -> ApiResult<NewTokenResponse> {
    let req = body(req)?;
    let t = Instant::now();
    let account_key = format!("user:{}", req.user.chars().take(64).collect::<String>());
    let address_key = match &peer {
        Some(Extension(Peer(addr))) => format!("ip:{}", addr.ip()),
        None => "ip:unknown".to_string(),
    };
    for (key, limit) in [
        (&account_key, limiter::PER_ACCOUNT),
        (&address_key, limiter::PER_ADDRESS),
    ] {
        if let Some(wait) = state.logins.blocked(key, limit, t) {
            tracing::warn!(limit_key = %key, "login rate limited");
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many failed logins; try again in {wait}s"),
            ));
        }
    }
    // Held until the password is checked: bounds the CPU a flood of logins takes.
    let pass = state.login_gate.enter(&address_key).await.map_err(|refusal| {
        tracing::warn!(limit_key = %address_key, %refusal, "login turned away before its check");
        match refusal {
            GateRefusal::AddressBusy => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", refusal.to_string())
            }
            GateRefusal::Overloaded => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", refusal.to_string())
            }
        }
    })?;
    let user = if ferry_proto::label::validate_name(&req.user).is_ok()
        && req.password.len() <= MAX_PASSWORD
    {
        state.store().user(&req.user).await?
    } else {
        None
    };
    let hash = user.as_ref().and_then(|u| u.password_hash.clone());
    let matches = password_matches(&state, &pass, hash, req.password).await;
    drop(pass);
    if !matches {
        state.logins.record_failure(&account_key, t);
        state.logins.record_failure(&address_key, t);
        tracing::info!(user = %account_key, "login failed");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong user name or password",
        ));
    }
    state.logins.record_success(&account_key);
    let (token, claims) = state
        .mint(TokenKind::User, &req.user, "session", SESSION_TTL_SECS)
        .await?;
    tracing::info!(user = %req.user, "logged in");
    Ok(Json(NewTokenResponse {
        id: claims.jti,
        token,
        expires_at: claims.exp,
    }))
}

pub(crate) async fn me(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
) -> ApiResult<MeResponse> {
    let claims = authorize(&state, &headers, &[TokenKind::User]).await?;
    Ok(Json(MeResponse { user: claims.sub }))
}

pub(crate) async fn create_personal_token(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    req: Result<Json<CreateTokenRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<NewTokenResponse>), ApiError> {
    let claims = authorize(&state, &headers, &[TokenKind::User]).await?;
    let req = body(req)?;
    check_token_name(&req.name)?;
    let ttl = req.ttl_secs.unwrap_or(default_ttl(TokenKind::User));
    let (token, new) = state
        .mint(TokenKind::User, &claims.sub, &req.name, ttl)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewTokenResponse {
            id: new.jti,
            token,
            expires_at: new.exp,
        }),
    ))
}

pub(crate) async fn list_personal_tokens(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
) -> ApiResult<TokensResponse> {
    let claims = authorize(&state, &headers, &[TokenKind::User]).await?;
    let tokens = state
        .store()
        .tokens("user", &claims.sub)
        .await?
        .into_iter()
        .map(token_info)
        .collect();
    Ok(Json(TokensResponse { tokens }))
}

pub(crate) async fn revoke_personal_token(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let claims = authorize(&state, &headers, &[TokenKind::User]).await?;
    // Someone else's token id answers like a missing one.
    match state.store().token(&id).await? {
        Some(t) if t.kind == "user" && t.subject == claims.sub => {
            state.revoke_token(&id).await?;
            Ok(StatusCode::NO_CONTENT)
        }
        _ => Err(ApiError::not_found(
            "unknown_token",
            format!(
                "you have no token with id `{}`",
                id.chars().take(64).collect::<String>()
            ),
        )),
    }
}

/// A token's label: short, printable.
pub(crate) fn check_token_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_request(
            "name: give 1 to 64 printable characters",
        ));
    }
    Ok(())
}
