//! What a relay must remember to keep working while the control plane is away: its
//! certificate, the token keys and the revocation list, kept in memory and in one
//! JSON file in the cache directory (`relay-NAME.json`, mode 0600: it holds the
//! relay's private key).
//!
//! [`sync`] is the relay's one running call to the control plane: a heartbeat that
//! the control plane holds (a long poll, up to a few seconds) until the keys or
//! revocations differ from what the relay has, so a revoked token is refused at once
//! (within about a second when another replica revoked it), and a rotated key is known
//! before tokens signed with it arrive. When the control plane cannot be reached the
//! relay goes on with what it has; a relay that restarts during the outage starts
//! from the file.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::api::{
    HeartbeatRequest, HeartbeatResponse, KeysResponse, RegisterRelayRequest, RegisterRelayResponse,
    Revoked,
};
use ferry_proto::token::{KeySet, PublicKey};
use ferry_transport::{ControlClient, ControlError};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::server::Shared;

/// How often the relay heartbeats when the control plane answers at once (an older
/// one without long polls, or after a failure).
pub const SYNC_INTERVAL: Duration = Duration::from_secs(2);
/// How long the control plane may hold a heartbeat while nothing changes.
const LONG_POLL_SECS: u32 = 5;
/// Least time between two heartbeats, whatever the control plane answers.
const MIN_INTERVAL: Duration = Duration::from_millis(250);
/// How often the relay sends its full directory.
const RESYNC_INTERVAL: Duration = Duration::from_secs(30);

/// The cache file's contents.
#[derive(Clone, Serialize, Deserialize)]
pub struct Cached {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    pub keys: Vec<PublicKey>,
    #[serde(default)]
    pub revoked: Vec<Revoked>,
}

/// Why the cache file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a relay cache: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// The cache file of relay `name` in `dir`.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("relay-{name}.json"))
}

impl Cached {
    pub fn from_registration(r: &RegisterRelayResponse) -> Cached {
        Cached {
            cert_pem: r.cert_pem.clone(),
            key_pem: r.key_pem.clone(),
            ca_pem: r.ca_pem.clone(),
            keys: r.keys.clone(),
            revoked: Vec::new(),
        }
    }

    pub fn load(path: &Path) -> Result<Cached, CacheError> {
        let text = std::fs::read(path).map_err(|source| CacheError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|e| CacheError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Writes atomically (temp file, then rename), private to the relay's user.
    pub fn save(&self, path: &Path) -> Result<(), CacheError> {
        use std::io::Write;
        let io = |source| CacheError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let json = serde_json::to_vec_pretty(self).map_err(|e| CacheError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        options
            .open(&tmp)
            .and_then(|mut f| f.write_all(&json))
            .map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// Open connections by the id (`jti`) of the token they authenticated with, so that
/// revoking a token also ends the sessions already using it.
#[derive(Default)]
pub struct Sessions {
    by_jti: Mutex<HashMap<String, Vec<quinn::Connection>>>,
}

impl Sessions {
    pub fn track(&self, jti: &str, conn: &quinn::Connection) {
        let mut map = self.by_jti.lock().unwrap_or_else(|p| p.into_inner());
        let conns = map.entry(jti.to_string()).or_default();
        // A held handle keeps a closed connection's state alive: one token opening
        // connections as fast as it can must not grow this until the next heartbeat.
        // Pruned at each doubling: amortized constant time per connection.
        if conns.len() >= 8 && conns.len().is_power_of_two() {
            conns.retain(|c| c.close_reason().is_none());
        }
        conns.push(conn.clone());
    }

    /// Closes every connection whose token is in `revoked`, and forgets closed ones.
    pub fn close_revoked(&self, revoked: &HashSet<String>) -> usize {
        let mut map = self.by_jti.lock().unwrap_or_else(|p| p.into_inner());
        let mut closed = 0;
        map.retain(|jti, conns| {
            if revoked.contains(jti) {
                for conn in conns.iter() {
                    conn.close(
                        ferry_proto::ErrorCode::Unauthorized.to_u16().into(),
                        b"token revoked",
                    );
                }
                closed += conns.len();
                return false;
            }
            conns.retain(|c| c.close_reason().is_none());
            !conns.is_empty()
        });
        closed
    }
}

/// The revoked token ids a relay refuses.
pub fn revoked_set(list: &[Revoked]) -> Arc<HashSet<String>> {
    Arc::new(list.iter().map(|r| r.jti.clone()).collect())
}

/// Replaces the keys with the control plane's public set (`GET /api/v1/keys`, no
/// token needed).
async fn refresh_public_keys(
    shared: &Shared,
    control: &ControlClient,
    cached: &mut Option<(PathBuf, Cached)>,
) {
    let keys = match control.get::<KeysResponse>("/api/v1/keys", None).await {
        Ok(resp) if !resp.keys.is_empty() => resp.keys,
        Ok(_) => return,
        Err(e) => {
            tracing::debug!(error = %e, "fetching the public keys failed");
            return;
        }
    };
    *shared.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(KeySet::new(keys.clone()));
    if let Some((path, file)) = cached.as_mut() {
        if file.keys != keys {
            file.keys = keys;
            if let Err(e) = file.save(path) {
                tracing::warn!(error = %e, "cannot write the relay cache");
            }
        }
    }
}

fn close_revoked(shared: &Shared) {
    let revoked = shared
        .revoked
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let closed = shared.sessions.close_revoked(&revoked);
    if closed > 0 {
        tracing::info!(connections = closed, "closed connections of revoked tokens");
    }
}

/// Heartbeats and refreshes keys and revocations until cancelled; rewrites the cache
/// file when they change.
pub(crate) async fn sync(
    shared: Arc<Shared>,
    control: ControlClient,
    token: String,
    enrollment: RegisterRelayRequest,
    enrolled: bool,
    mut cached: Option<(PathBuf, Cached)>,
    cancel: CancellationToken,
) {
    let mut enroll = (!enrolled).then(|| enrollment.clone());
    let mut last: Option<(Vec<PublicKey>, Vec<Revoked>)> = None;
    // Ask the directory reporter for a full snapshot after the control plane was
    // unreachable or forgot us (it may have lost entries the reporter does not know
    // about: a restored database), and every RESYNC_INTERVAL as a safety net. The
    // reporter sends one at start by itself.
    let mut resync = false;
    let mut last_resync = tokio::time::Instant::now();
    // The digest of what we hold, once the control plane long-polls; until then, and
    // after any failure, pause between heartbeats.
    let mut known: Option<String> = None;
    let mut pause = false;
    let mut sent = tokio::time::Instant::now();
    loop {
        let wait = if pause { SYNC_INTERVAL } else { MIN_INTERVAL };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(sent + wait) => {}
        }
        sent = tokio::time::Instant::now();
        // Failure paths below `continue` with this set; success clears it.
        pause = true;
        if last_resync.elapsed() >= RESYNC_INTERVAL {
            resync = true;
        }
        let request = HeartbeatRequest {
            agents: shared.agents.len() as u64,
            known: known.clone(),
            wait_secs: if known.is_some() { LONG_POLL_SECS } else { 0 },
            draining: shared.drain.is_draining(),
            streams: shared.drain.open_streams() as u64,
            bytes: shared
                .bytes_relayed
                .load(std::sync::atomic::Ordering::Relaxed),
        };
        // Every round, not only on a change: a connection whose token was checked just
        // before a revocation arrived is tracked only after it; this also forgets
        // connections that have ended.
        close_revoked(&shared);
        if let Some(request) = &enroll {
            // Enrolling again records our address; the certificate we have stays valid.
            match control
                .post::<_, RegisterRelayResponse>("/api/v1/relays/register", Some(&token), request)
                .await
            {
                Ok(_) => {
                    tracing::info!("enrolled with the control plane");
                    enroll = None;
                    resync = true;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "enrolling failed");
                    continue;
                }
            }
        }
        let resp = match control
            .post::<_, HeartbeatResponse>("/api/v1/relays/heartbeat", Some(&token), &request)
            .await
        {
            Ok(r) => {
                if resync {
                    shared.directory.resync();
                    resync = false;
                    last_resync = tokio::time::Instant::now();
                }
                pause = r.digest.is_empty();
                known = (!r.digest.is_empty()).then(|| r.digest.clone());
                r
            }
            // The control plane forgot us (a restored database): enroll again.
            Err(ControlError::Api { code, .. }) if code == "unknown_relay" => {
                tracing::warn!("the control plane does not know this relay; enrolling again");
                enroll = Some(enrollment.clone());
                resync = true;
                continue;
            }
            // Our own token is refused (revoked, or its key dropped after a leak): the
            // operator must give us a new one. Meanwhile still follow the public key set,
            // so that tokens of dropped keys stop working here too.
            Err(ControlError::Api {
                status: 401,
                message,
                ..
            }) => {
                tracing::error!(reason = %message, "the control plane refuses this relay's token; give the relay a new one");
                refresh_public_keys(&shared, &control, &mut cached).await;
                resync = true;
                continue;
            }
            // Keep verifying with the cached keys and revocations meanwhile.
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat failed");
                resync = true;
                known = None;
                continue;
            }
        };
        if last.as_ref() == Some(&(resp.keys.clone(), resp.revoked.clone())) {
            continue;
        }
        if resp.keys.is_empty() {
            tracing::warn!("control plane returned an empty key set; keeping the cached one");
        } else {
            *shared.keys.write().unwrap_or_else(|p| p.into_inner()) =
                Arc::new(KeySet::new(resp.keys.clone()));
        }
        *shared.revoked.write().unwrap_or_else(|p| p.into_inner()) = revoked_set(&resp.revoked);
        close_revoked(&shared);
        tracing::debug!(
            keys = resp.keys.len(),
            revoked = resp.revoked.len(),
            "token keys and revocations updated"
        );
        if let Some((path, file)) = cached.as_mut() {
            if !resp.keys.is_empty() {
                file.keys = resp.keys.clone();
            }
            file.revoked = resp.revoked.clone();
            if let Err(e) = file.save(path) {
                tracing::warn!(error = %e, "cannot write the relay cache");
            }
        }
        last = Some((resp.keys, resp.revoked));
    }
}
