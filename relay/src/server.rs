//! The relay's endpoint, its start-up and its accept loop.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ferry_proto::api::{RegisterRelayRequest, RegisterRelayResponse};
use ferry_proto::token::{KeySet, TokenKind};
use ferry_proto::{alpn, ErrorCode};
use ferry_transport::{ControlClient, ControlError, Limits};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::agents::AgentTable;
use crate::cache::{self, Cached};
use crate::directory::{self, DirectoryReporter};

/// How a relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Unique within the network; also the subject of its relay token.
    pub name: String,
    pub region: String,
    /// UDP address the QUIC endpoint binds.
    pub listen: SocketAddr,
    /// Address agents and clients are told to use; defaults to `listen`.
    pub advertise: Option<SocketAddr>,
    /// Names for the relay's certificate; the first is its TLS server name.
    pub names: Vec<String>,
    pub control_url: String,
    /// The CA that the control plane's certificate chains to.
    pub ca_pem: String,
    /// A relay token minted by the control plane.
    pub token: String,
    pub limits: Limits,
    /// Where the certificate, token keys and revocations are cached, so that the relay
    /// restarts and verifies tokens while the control plane is down. None: no cache.
    pub cache_dir: Option<PathBuf>,
}

/// Why a relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    #[error("binding UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("registering with the control plane: {0}")]
    Register(#[from] ControlError),
    #[error(transparent)]
    Cert(#[from] ferry_certs::CertError),
    #[error(transparent)]
    Endpoint(#[from] ferry_transport::quic::EndpointError),
}

/// What connection and stream tasks share.
pub(crate) struct Shared {
    pub name: String,
    pub keys: RwLock<Arc<KeySet>>,
    /// Token ids (`jti`) the control plane revoked.
    pub revoked: RwLock<Arc<HashSet<String>>>,
    pub agents: AgentTable,
    pub directory: DirectoryReporter,
    /// Open connections by token id, to end them when the token is revoked.
    pub sessions: cache::Sessions,
}

impl Shared {
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A running relay.
pub struct Relay {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    background: JoinSet<()>,
    cancel: CancellationToken,
}

impl Relay {
    /// Binds the UDP socket, registers with the control plane, and builds the endpoint.
    /// Background tasks stop when `cancel` fires.
    pub async fn start(
        config: RelayConfig,
        cancel: CancellationToken,
    ) -> Result<Relay, RelayError> {
        let socket = ferry_transport::quic::udp_socket(config.listen)?;
        let bound = socket.local_addr().map_err(|source| RelayError::Bind {
            addr: config.listen,
            source,
        })?;
        let advertise = config.advertise.unwrap_or(bound);
        let control = ControlClient::new(&config.control_url, &config.ca_pem)?;
        let cache_path = config
            .cache_dir
            .as_ref()
            .map(|dir| cache::path(dir, &config.name));
        let enrollment = RegisterRelayRequest {
            region: config.region.clone(),
            quic_addr: advertise.to_string(),
            names: config.names.clone(),
        };
        let registered: Result<RegisterRelayResponse, ControlError> = control
            .post("/api/v1/relays/register", Some(&config.token), &enrollment)
            .await;
        let enrolled = registered.is_ok();
        let cached = match (registered, &cache_path) {
            (Ok(r), path) => {
                let cached = Cached::from_registration(&r);
                if let Some(path) = path {
                    if let Err(e) = cached.save(path) {
                        tracing::warn!(error = %e, "cannot write the relay cache");
                    }
                }
                cached
            }
            // The control plane is down: start from what we knew, so that known agents
            // and clients with valid tokens keep working.
            (Err(e), Some(path)) if e.is_unreachable() => match Cached::load(path) {
                Ok(cached) => {
                    tracing::warn!(error = %e, cache = %path.display(), "control plane unreachable; starting from the cache");
                    cached
                }
                Err(_) => return Err(e.into()),
            },
            (Err(e), _) => return Err(e.into()),
        };
        let cert = ferry_certs::IssuedCert {
            cert_pem: cached.cert_pem.clone(),
            key_pem: cached.key_pem.clone(),
        };
        let tls = ferry_certs::server_config(&cert, &[alpn::AGENT, alpn::CLIENT])?;
        let endpoint = ferry_transport::quic::server_endpoint(
            socket,
            tls,
            &config.limits,
            config.token.as_bytes(),
        )?;

        let mut background = JoinSet::new();
        let (reporter, report_task) =
            directory::reporter(control.clone(), config.token.clone(), cancel.clone());
        background.spawn(report_task);
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            keys: RwLock::new(Arc::new(KeySet::new(cached.keys.clone()))),
            revoked: RwLock::new(cache::revoked_set(&cached.revoked)),
            agents: AgentTable::default(),
            directory: reporter,
            sessions: cache::Sessions::default(),
        });
        background.spawn(cache::sync(
            shared.clone(),
            control,
            config.token.clone(),
            enrollment,
            // A relay that started from its cache enrolls once the control plane is back.
            enrolled,
            cache_path.map(|p| (p, cached)),
            cancel.clone(),
        ));
        tracing::info!(relay = %config.name, region = %config.region, addr = %advertise, "relay listening");
        Ok(Relay {
            endpoint,
            shared,
            background,
            cancel,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// Number of agents connected right now.
    pub fn agent_count(&self) -> usize {
        self.shared.agents.len()
    }

    /// Accepts connections until cancelled, then closes every connection.
    pub async fn run(mut self) {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let shared = self.shared.clone();
                    let cancel = self.cancel.clone();
                    connections.spawn(async move {
                        let remote = incoming.remote_address();
                        match incoming.await {
                            Ok(conn) => serve_connection(shared, conn, cancel).await,
                            Err(e) => tracing::debug!(%remote, error = %e, "handshake failed"),
                        }
                    });
                }
            }
        }
        self.endpoint
            .close(ErrorCode::Draining.to_u16().into(), b"relay shutting down");
        connections.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        self.background.shutdown().await;
        tracing::info!(relay = %self.shared.name, "relay stopped");
    }
}

async fn serve_connection(shared: Arc<Shared>, conn: quinn::Connection, cancel: CancellationToken) {
    let protocol = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    match protocol.as_deref() {
        Some(p) if p == alpn::AGENT => crate::clients::serve_agent(shared, conn, cancel).await,
        Some(p) if p == alpn::CLIENT => crate::clients::serve_client(shared, conn, cancel).await,
        // rustls refuses a handshake with no common ALPN, so this is only a safety net.
        _ => conn.close(ErrorCode::Protocol.to_u16().into(), b"unknown ALPN"),
    }
}

/// Checks the hello token of `kind` on `conn`; returns the subject. The connection is
/// remembered under the token's id, so that revoking the token ends it.
pub(crate) fn check_token(
    shared: &Shared,
    conn: &quinn::Connection,
    token: &str,
    kind: TokenKind,
) -> Result<String, ferry_proto::ErrorFrame> {
    shared
        .keys()
        .verify(
            token,
            ferry_transport::unix_now(),
            ferry_proto::token::Expect {
                kind,
                audience: ferry_proto::token::AUDIENCE_FERRY,
            },
        )
        .map_err(|e| ferry_proto::ErrorFrame::new(e.code(), e.to_string()))
        .and_then(|claims| {
            let revoked = shared
                .revoked
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if revoked.contains(&claims.jti) {
                Err(ferry_proto::ErrorFrame::new(
                    ErrorCode::Unauthorized,
                    "token was revoked",
                ))
            } else {
                shared.sessions.track(&claims.jti, conn);
                Ok(claims.sub)
            }
        })
}
