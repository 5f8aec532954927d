//! The control plane's state: the CA (files in the data directory), the store (users,
//! workspaces, tokens, keys, relays, directory) and the signing keys loaded from it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ferry_certs::{Ca, IssuedCert, Usage};
use ferry_proto::api::{RelayHealth, RelayInfo};
use ferry_proto::token::{self, Claims, KeySet, SigningKey, TokenKind, AUDIENCE_FERRY};

use crate::keyring::{self, Keyring, KeyringError};
use crate::limiter::LoginLimiter;
use crate::store::{RelayRow, Store, StoreError, TokenRow};

/// Why the state could not be loaded or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cert(#[from] ferry_certs::CertError),
    #[error(transparent)]
    Key(#[from] token::KeyError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a bearer token was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error(transparent)]
    Token(#[from] token::TokenError),
    #[error("token was revoked")]
    Revoked,
    #[error(transparent)]
    State(#[from] StateError),
}

/// The pre-store signing key file of older data directories, imported on first start.
const LEGACY_KEY_FILE: &str = "signing-key.pk8";
const LEGACY_KID_FILE: &str = "signing-key.kid";
/// The SQLite database in the data directory.
pub const SQLITE_FILE: &str = "ferry.db";
const MAX_TTL_SECS: u64 = 400 * 24 * 3600;

/// A relay is healthy while its heartbeats (every ~2 s) are this fresh.
pub const HEALTHY_SECS: i64 = 10;
/// Past this silence a relay is unreachable (and not offered to new sessions).
pub const UNREACHABLE_SECS: i64 = 30;

/// When a relay's load was last recorded (Unix ms), with its (agents, streams) then.
pub(crate) type LoadMark = (i64, (u64, u64));

/// Everything the control plane knows.
pub struct State {
    ca: Ca,
    store: Store,
    keys: RwLock<Arc<Keyring>>,
    pub(crate) logins: LoginLimiter,
    /// Password checks running and queued (argon2 is CPU-heavy by design).
    pub(crate) login_gate: crate::login_gate::LoginGate,
    /// Bumped when this replica revokes a token or rotates keys, to answer relays'
    /// long polls at once (changes made by other replicas are seen by polling).
    changes: tokio::sync::watch::Sender<u64>,
    /// Fires when the server begins to shut down, so held requests answer at once.
    pub(crate) stopping: tokio_util::sync::CancellationToken,
    /// When this replica last recorded each relay's load (Unix ms) and its agents and
    /// streams then, to thin the history out.
    pub(crate) load_marks: std::sync::Mutex<std::collections::HashMap<String, LoadMark>>,
    /// Places for open telemetry event streams (the dashboard's live views).
    pub(crate) telemetry_streams: Arc<tokio::sync::Semaphore>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Now, in seconds since the epoch, as the store keeps it.
pub fn now() -> i64 {
    i64::try_from(ferry_transport::unix_now()).unwrap_or(i64::MAX)
}

/// Health from the age of the last heartbeat.
pub fn health(last_heartbeat: i64, now: i64) -> RelayHealth {
    let age = now.saturating_sub(last_heartbeat);
    if age <= HEALTHY_SECS {
        RelayHealth::Ok
    } else if age <= UNREACHABLE_SECS {
        RelayHealth::Unhealthy
    } else {
        RelayHealth::Unreachable
    }
}

fn relay_info(row: &RelayRow, now: i64) -> RelayInfo {
    RelayInfo {
        name: row.name.clone(),
        region: row.region.clone(),
        quic_addr: row.quic_addr.clone(),
        server_name: row.server_name.clone(),
        health: Some(if row.draining {
            RelayHealth::Draining
        } else {
            health(row.last_heartbeat, now)
        }),
        incarnation: u64::try_from(row.incarnation).unwrap_or(0),
        https_url: (!row.https_url.is_empty()).then(|| row.https_url.clone()),
    }
}

impl State {
    /// Loads the CA from `data_dir` and opens the store: `database_url` if given,
    /// else the SQLite file in `data_dir`. Creates what is missing on first start.
    pub async fn open(data_dir: &Path, database_url: Option<&str>) -> Result<State, StateError> {
        std::fs::create_dir_all(data_dir).map_err(io_err(data_dir))?;
        let ca = Ca::load_or_create(data_dir)?;
        let store = match database_url {
            Some(url) => Store::open_url(url).await?,
            None => Store::open_sqlite(&data_dir.join(SQLITE_FILE)).await?,
        };
        Self::with_store(ca, store, data_dir).await
    }

    /// Builds the state on an opened store.
    pub async fn with_store(ca: Ca, store: Store, data_dir: &Path) -> Result<State, StateError> {
        let now = now();
        if store.keys().await?.is_empty() {
            let legacy = data_dir.join(LEGACY_KEY_FILE);
            if legacy.exists() {
                // Keep tokens minted before the store existed valid.
                let pkcs8 = std::fs::read(&legacy).map_err(io_err(&legacy))?;
                let kid_path = data_dir.join(LEGACY_KID_FILE);
                let kid = std::fs::read_to_string(&kid_path).map_err(io_err(&kid_path))?;
                let key = SigningKey::from_pkcs8(kid.trim(), &pkcs8)?;
                keyring::import_key(&store, &key, now).await?;
                // Its tokens were never recorded: stand in for them with the longest
                // lifetime a token can have, so a rotation keeps the key published
                // until any of them could have expired.
                store
                    .record_token(&TokenRow {
                        jti: format!("pre-store-{}", key.kid()),
                        kind: "pre-store".into(),
                        subject: String::new(),
                        name: "tokens minted before the store existed".into(),
                        kid: key.kid().to_string(),
                        created_at: now,
                        expires_at: now.saturating_add(MAX_TTL_SECS as i64),
                        revoked_at: None,
                    })
                    .await?;
            } else {
                keyring::create_key(&store, now).await?;
            }
        }
        let ring = Keyring::load(&store, now).await?;
        tracing::info!(
            backend = store.backend_name(),
            signing_key = ring.signer().kid(),
            "store opened"
        );
        Ok(State {
            ca,
            store,
            keys: RwLock::new(Arc::new(ring)),
            logins: LoginLimiter::default(),
            login_gate: Default::default(),
            changes: tokio::sync::watch::Sender::new(0),
            stopping: tokio_util::sync::CancellationToken::new(),
            load_marks: Default::default(),
            telemetry_streams: Arc::new(tokio::sync::Semaphore::new(
                crate::api::MAX_TELEMETRY_STREAMS,
            )),
        })
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn keyring(&self) -> Arc<Keyring> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the keys (another replica may have rotated them).
    pub async fn reload_keys(&self) -> Result<Arc<Keyring>, StateError> {
        let ring = Arc::new(Keyring::load(&self.store, now()).await?);
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = ring.clone();
        Ok(ring)
    }

    /// The public keys tokens are verified with (as last loaded).
    pub fn key_set(&self) -> KeySet {
        self.keyring().published().clone()
    }

    /// Makes a new signing key; old keys stay published while their tokens live,
    /// unless `drop_old`, which invalidates every token they signed.
    pub async fn rotate_keys(&self, drop_old: bool) -> Result<String, StateError> {
        let kid = keyring::rotate(&self.store, now(), drop_old).await?;
        self.reload_keys().await?;
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
        tracing::info!(signing_key = %kid, drop_old, "signing keys rotated");
        Ok(kid)
    }

    /// Revokes a token by id; false if there is none or it already was.
    pub async fn revoke_token(&self, jti: &str) -> Result<bool, StateError> {
        let done = self.store.revoke_token(jti, now()).await?;
        if done {
            self.changes.send_modify(|v| *v = v.wrapping_add(1));
        }
        Ok(done)
    }

    /// Watches local changes to keys and revocations.
    pub fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Mints a token and records it (so it can be listed and revoked); the lifetime
    /// is capped. `name` is a human label (`session`, a token's name).
    pub async fn mint(
        &self,
        kind: TokenKind,
        subject: &str,
        name: &str,
        ttl_secs: u64,
    ) -> Result<(String, Claims), StateError> {
        // Another replica may have rotated: sign with the newest key.
        let ring = self.reload_keys().await?;
        let claims = token::new_claims(
            kind,
            subject,
            AUDIENCE_FERRY,
            ferry_transport::unix_now(),
            ttl_secs.min(MAX_TTL_SECS),
        );
        let token = ring.signer().sign(&claims);
        self.store
            .record_token(&TokenRow {
                jti: claims.jti.clone(),
                kind: kind.to_string(),
                subject: subject.to_string(),
                name: name.to_string(),
                kid: ring.signer().kid().to_string(),
                created_at: i64::try_from(claims.iat).unwrap_or(i64::MAX),
                expires_at: i64::try_from(claims.exp).unwrap_or(i64::MAX),
                revoked_at: None,
            })
            .await?;
        Ok((token, claims))
    }

    /// Mints an app token for `host` (a web app's host name, its audience) from the
    /// session `session`; its id ties it to that session, so revoking the session ends
    /// it too (see [`ferry_proto::app_host::app_revocation_ids`]).
    pub async fn mint_app(
        &self,
        session: &Claims,
        host: &str,
        ttl_secs: u64,
    ) -> Result<(String, Claims), StateError> {
        let ring = self.reload_keys().await?;
        let mut claims = token::new_claims(
            TokenKind::App,
            &session.sub,
            host,
            ferry_transport::unix_now(),
            ttl_secs.min(MAX_TTL_SECS),
        );
        claims.jti = ferry_proto::app_host::app_token_id(&session.jti, &claims.jti);
        let token = ring.signer().sign(&claims);
        self.store
            .record_token(&TokenRow {
                jti: claims.jti.clone(),
                kind: TokenKind::App.to_string(),
                subject: session.sub.clone(),
                name: format!("app {}", host.chars().take(100).collect::<String>()),
                kid: ring.signer().kid().to_string(),
                created_at: i64::try_from(claims.iat).unwrap_or(i64::MAX),
                expires_at: i64::try_from(claims.exp).unwrap_or(i64::MAX),
                revoked_at: None,
            })
            .await?;
        Ok((token, claims))
    }

    /// Verifies a bearer token for the API: signature, expiry, kind, revocation.
    pub async fn verify(&self, token: &str, kind: TokenKind) -> Result<Claims, VerifyError> {
        let expect = token::Expect {
            kind,
            audience: AUDIENCE_FERRY,
        };
        let now = ferry_transport::unix_now();
        let claims = match self.keyring().published().verify(token, now, expect) {
            Err(token::TokenError::UnknownKey { .. }) => {
                // Maybe a key another replica just made.
                self.reload_keys()
                    .await?
                    .published()
                    .verify(token, now, expect)?
            }
            other => other?,
        };
        if self
            .store
            .is_revoked(&claims.jti)
            .await
            .map_err(StateError::from)?
        {
            return Err(VerifyError::Revoked);
        }
        Ok(claims)
    }

    /// Records a relay and issues its certificate.
    pub async fn register_relay(
        &self,
        info: RelayInfo,
        names: &[String],
        apps_domain: Option<&str>,
    ) -> Result<IssuedCert, StateError> {
        let cert = self.ca.issue(names, Usage::ServerAndClient)?;
        let now = now();
        self.store
            .upsert_relay(&RelayRow {
                name: info.name.clone(),
                region: info.region.clone(),
                quic_addr: info.quic_addr.clone(),
                server_name: info.server_name.clone(),
                registered_at: now,
                last_heartbeat: now,
                // Distinct for every start of a relay: agents tell a restarted relay
                // from the draining process that was there before.
                incarnation: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
                    .unwrap_or(0),
                draining: false,
                https_url: info.https_url.clone().unwrap_or_default(),
                apps_domain: apps_domain.unwrap_or_default().to_string(),
            })
            .await?;
        tracing::info!(relay = %info.name, region = %info.region, addr = %info.quic_addr, "relay registered");
        Ok(cert)
    }

    /// All relays with their health, grouped by region, both sorted by name.
    pub async fn regions(&self) -> Result<Vec<ferry_proto::api::Region>, StateError> {
        let now = now();
        let mut regions: Vec<ferry_proto::api::Region> = Vec::new();
        for row in self.store.relays().await? {
            let relay = relay_info(&row, now);
            match regions.last_mut() {
                Some(r) if r.name == relay.region => r.relays.push(relay),
                _ => regions.push(ferry_proto::api::Region {
                    name: relay.region.clone(),
                    relays: vec![relay],
                }),
            }
        }
        Ok(regions)
    }

    /// A relay reports an agent connecting or leaving.
    pub async fn update_directory(
        &self,
        relay: &str,
        workspace: &str,
        connected: bool,
        standby: bool,
    ) -> Result<(), StateError> {
        let now = now();
        self.store.heartbeat(relay, now, false).await?;
        if connected {
            self.store
                .set_directory(workspace, relay, standby, now)
                .await?;
        } else {
            self.store.clear_directory(workspace, relay).await?;
        }
        Ok(())
    }

    /// Where a workspace's agent is connected, if anywhere: its owner relay when that
    /// one is in service, else its standby.
    pub async fn route(&self, workspace: &str) -> Result<Option<RelayInfo>, StateError> {
        let now = now();
        let mut fallback = None;
        for name in self.store.directory(workspace).await? {
            let Some(row) = self.store.relay(&name).await? else {
                continue;
            };
            let info = relay_info(&row, now);
            if info.health == Some(RelayHealth::Ok) {
                return Ok(Some(info));
            }
            fallback.get_or_insert(info);
        }
        Ok(fallback)
    }

    /// Every connected workspace with its home region and the live relays (healthy or
    /// draining) that hold its agent, owner first: what relays route by.
    pub async fn directory(&self) -> Result<Vec<ferry_proto::api::DirectoryRecord>, StateError> {
        let now = now();
        let relays: std::collections::HashMap<String, RelayInfo> = self
            .store
            .relays()
            .await?
            .iter()
            .map(|row| (row.name.clone(), relay_info(row, now)))
            // A draining relay still holds its agents until they have moved.
            .filter(|(_, info)| {
                matches!(info.health, Some(RelayHealth::Ok | RelayHealth::Draining))
            })
            .collect();
        let mut records: Vec<ferry_proto::api::DirectoryRecord> = Vec::new();
        for (workspace, relay, standby) in self.store.directory_all().await? {
            // A relay that went silent (killed, cut off) no longer holds anyone.
            let Some(info) = relays.get(&relay) else {
                continue;
            };
            let owner = (!standby).then(|| relay.clone());
            match records.last_mut() {
                // Owners sort first, so a later row of the same workspace is a standby.
                Some(r) if r.workspace == workspace => r.relays.push(relay),
                _ => records.push(ferry_proto::api::DirectoryRecord {
                    workspace,
                    region: info.region.clone(),
                    relays: vec![relay],
                    owner,
                }),
            }
        }
        Ok(records)
    }
}
