//! The control plane's state: signing key, CA, relays, and the agent directory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use dashmap::DashMap;
use ferry_certs::{Ca, IssuedCert, Usage};
use ferry_proto::api::RelayInfo;
use ferry_proto::token::{self, Claims, KeySet, SigningKey, TokenKind, AUDIENCE_FERRY};

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
}

const SIGNING_KEY_FILE: &str = "signing-key.pk8";
const SIGNING_KID_FILE: &str = "signing-key.kid";
const MAX_TTL_SECS: u64 = 400 * 24 * 3600;

/// A relay the control plane has heard from.
#[derive(Debug, Clone)]
pub struct RelayRecord {
    pub info: RelayInfo,
    pub last_seen: Instant,
    /// The relay said it is draining: it stays known but leaves the region map.
    pub draining: bool,
}

/// A relay that has not been heard from (heartbeat or directory update) for this long
/// leaves the region map; relays beat every few seconds.
pub const RELAY_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(15);

/// Where an agent is connected: one entry per relay holding a connection from it.
#[derive(Debug, Clone, Default)]
pub struct DirectoryEntry {
    /// (relay, standby), in the order they reported.
    pub relays: Vec<(String, bool)>,
}

/// Everything the control plane knows.
pub struct State {
    ca: Ca,
    signer: SigningKey,
    relays: DashMap<String, RelayRecord>,
    directory: DashMap<String, DirectoryEntry>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl State {
    /// Loads the CA and signing key from `data_dir`, creating them on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<State, StateError> {
        std::fs::create_dir_all(data_dir).map_err(io_err(data_dir))?;
        let ca = Ca::load_or_create(data_dir)?;
        let key_path = data_dir.join(SIGNING_KEY_FILE);
        let kid_path = data_dir.join(SIGNING_KID_FILE);
        let signer = if key_path.exists() {
            let pkcs8 = std::fs::read(&key_path).map_err(io_err(&key_path))?;
            let kid = std::fs::read_to_string(&kid_path).map_err(io_err(&kid_path))?;
            SigningKey::from_pkcs8(kid.trim(), &pkcs8)?
        } else {
            let signer = SigningKey::generate(format!("k{}", ferry_transport::unix_now()))?;
            write_private(&key_path, signer.pkcs8())?;
            std::fs::write(&kid_path, signer.kid()).map_err(io_err(&kid_path))?;
            signer
        };
        Ok(State {
            ca,
            signer,
            relays: DashMap::new(),
            directory: DashMap::new(),
        })
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The public keys relays verify tokens with.
    pub fn key_set(&self) -> KeySet {
        KeySet::new([self.signer.public_key()])
    }

    /// Mints a token; the lifetime is capped.
    pub fn mint(&self, kind: TokenKind, subject: &str, ttl_secs: u64) -> (String, Claims) {
        let claims = token::new_claims(
            kind,
            subject,
            AUDIENCE_FERRY,
            ferry_transport::unix_now(),
            ttl_secs.min(MAX_TTL_SECS),
        );
        (self.signer.sign(&claims), claims)
    }

    /// Verifies a bearer token for the API.
    pub fn verify(&self, token: &str, kind: TokenKind) -> Result<Claims, token::TokenError> {
        self.key_set().verify(
            token,
            ferry_transport::unix_now(),
            token::Expect {
                kind,
                audience: AUDIENCE_FERRY,
            },
        )
    }

    /// Records a relay and issues its certificate.
    pub fn register_relay(
        &self,
        info: RelayInfo,
        names: &[String],
    ) -> Result<IssuedCert, StateError> {
        let cert = self.ca.issue(names, Usage::ServerAndClient)?;
        tracing::info!(relay = %info.name, region = %info.region, addr = %info.quic_addr, "relay registered");
        self.relays.insert(
            info.name.clone(),
            RelayRecord {
                info,
                last_seen: Instant::now(),
                draining: false,
            },
        );
        Ok(cert)
    }

    /// A relay's heartbeat; false if the relay is unknown (it must register again).
    pub fn heartbeat(&self, relay: &str, draining: bool) -> bool {
        match self.relays.get_mut(relay) {
            Some(mut r) => {
                r.last_seen = Instant::now();
                r.draining = draining;
                true
            }
            None => false,
        }
    }

    /// The relays in service (not draining, heard from recently), grouped by region,
    /// both sorted by name.
    pub fn regions(&self) -> Vec<ferry_proto::api::Region> {
        let mut relays: Vec<RelayInfo> = self
            .relays
            .iter()
            .filter(|r| !r.draining && r.last_seen.elapsed() < RELAY_STALE_AFTER)
            .map(|r| r.info.clone())
            .collect();
        relays.sort_by(|a, b| (&a.region, &a.name).cmp(&(&b.region, &b.name)));
        let mut regions: Vec<ferry_proto::api::Region> = Vec::new();
        for relay in relays {
            match regions.last_mut() {
                Some(r) if r.name == relay.region => r.relays.push(relay),
                _ => regions.push(ferry_proto::api::Region {
                    name: relay.region.clone(),
                    relays: vec![relay],
                }),
            }
        }
        regions
    }

    pub fn relay(&self, name: &str) -> Option<RelayInfo> {
        self.relays.get(name).map(|r| r.info.clone())
    }

    /// A relay reports an agent connecting or leaving.
    pub fn update_directory(&self, relay: &str, workspace: &str, connected: bool, standby: bool) {
        if let Some(mut r) = self.relays.get_mut(relay) {
            r.last_seen = Instant::now();
        }
        if connected {
            let mut entry = self.directory.entry(workspace.to_string()).or_default();
            entry.relays.retain(|(r, _)| r != relay);
            entry.relays.push((relay.to_string(), standby));
        } else {
            // Each relay clears only its own connection: a late "left" from the old
            // relay must not erase the agent's new home.
            if let Some(mut entry) = self.directory.get_mut(workspace) {
                entry.relays.retain(|(r, _)| r != relay);
            }
            self.directory
                .remove_if(workspace, |_, e| e.relays.is_empty());
        }
    }

    /// Where a workspace's agent is connected, if anywhere: its owner (primary) relay
    /// when it has one, else any.
    pub fn route(&self, workspace: &str) -> Option<RelayInfo> {
        let entry = self.directory.get(workspace)?;
        let mut relays: Vec<&(String, bool)> = entry.relays.iter().collect();
        relays.sort_by_key(|(_, standby)| *standby);
        relays.iter().find_map(|(r, _)| self.relay(r))
    }

    /// Every connected workspace with its home region (the region of the relays its
    /// agent is connected to) and those relays, primary first.
    pub fn directory(&self) -> Vec<ferry_proto::api::DirectoryRecord> {
        self.directory
            .iter()
            .filter_map(|e| {
                let mut relays = e.relays.clone();
                // A relay that went silent (killed) no longer holds anyone.
                relays.retain(|(r, _)| {
                    self.relays
                        .get(r)
                        .is_some_and(|r| r.last_seen.elapsed() < RELAY_STALE_AFTER)
                });
                relays.sort_by_key(|(_, standby)| *standby);
                let region = relays
                    .iter()
                    .find_map(|(r, _)| self.relays.get(r).map(|r| r.info.region.clone()))?;
                Some(ferry_proto::api::DirectoryRecord {
                    workspace: e.key().clone(),
                    region,
                    relays: relays.into_iter().map(|(r, _)| r).collect(),
                })
            })
            .collect()
    }
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), StateError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(io_err(path))?;
    f.write_all(contents).map_err(io_err(path))
}
