//! Relay-to-relay links (ALPN `ferry-mesh/1`, mutual TLS with CA-issued certificates,
//! then a hello carrying the relay's token so the far end knows which relay we are).
//!
//! [`Mesh`] holds one outgoing link per peer, dialed on first use or by the refresh
//! task ([`crate::view::refresh_loop`]) for the peers kept warm, and redialed when it
//! dies. A peer that failed to answer is skipped for [`DOWN_FOR`], so that streams
//! fail over to the next relay at once instead of each waiting for a handshake.
//! Incoming links are served by [`serve_mesh`]: every stream on them is routed like a
//! client's, with the hop count the sender set.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ferry_proto::api::RelayInfo;
use ferry_proto::token::TokenKind;
use ferry_proto::ErrorCode;
use ferry_transport::dial::{self, DialError};
use quinn::Connection;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::server::Shared;

/// How long a peer that could not be reached is skipped.
const DOWN_FOR: Duration = Duration::from_secs(1);
/// How long a mesh dial may take; peers are near in the network, so less than a client's.
const MESH_DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a mesh link is unavailable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    #[error("relay {peer} has a bad address `{addr}`")]
    BadAddress { peer: String, addr: String },
    #[error("relay {peer} was unreachable moments ago")]
    Down { peer: String },
    #[error("relay {peer} did not complete the mesh handshake within {MESH_DIAL_TIMEOUT:?}")]
    Timeout { peer: String },
    #[error("mesh link to relay {peer}: {source}")]
    Dial {
        peer: String,
        #[source]
        source: DialError,
    },
}

#[derive(Default)]
struct PeerLink {
    conn: tokio::sync::Mutex<Option<Connection>>,
    down_until: std::sync::Mutex<Option<Instant>>,
}

/// The outgoing side of the mesh.
pub(crate) struct Mesh {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    token: String,
    links: DashMap<String, Arc<PeerLink>>,
    /// Links peers dialed to us, by peer name (for metrics).
    accepted: DashMap<String, Connection>,
}

/// What the metrics show of one mesh link.
pub(crate) struct LinkSample {
    pub peer: String,
    /// `dialed` (ours) or `accepted` (the peer's).
    pub side: &'static str,
    pub rtt: Duration,
    /// The UDP payload we send on the link now (MTU discovery's current size).
    pub udp_payload: u16,
}

impl Mesh {
    pub fn new(endpoint: quinn::Endpoint, config: quinn::ClientConfig, token: String) -> Mesh {
        Mesh {
            endpoint,
            config,
            token,
            links: DashMap::new(),
            accepted: DashMap::new(),
        }
    }

    /// A live link to `peer`, dialing it if needed.
    pub async fn link(&self, peer: &RelayInfo) -> Result<Connection, MeshError> {
        let entry = self.links.entry(peer.name.clone()).or_default().clone();
        let mut conn = entry.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let down = *entry.down_until.lock().unwrap_or_else(|p| p.into_inner());
        if down.is_some_and(|t| Instant::now() < t) {
            return Err(MeshError::Down {
                peer: peer.name.clone(),
            });
        }
        let addr: SocketAddr = peer.quic_addr.parse().map_err(|_| MeshError::BadAddress {
            peer: peer.name.clone(),
            addr: peer.quic_addr.clone(),
        })?;
        let dialed = tokio::time::timeout(
            MESH_DIAL_TIMEOUT,
            dial::connect_with(
                &self.endpoint,
                self.config.clone(),
                addr,
                &peer.server_name,
                &self.token,
            ),
        )
        .await;
        let result = match dialed {
            Ok(Ok(session)) => {
                tracing::debug!(peer = %peer.name, %addr, "mesh link up");
                // The control stream stays open for the link's life; nothing uses it yet.
                drop(session.control);
                Ok(session.conn)
            }
            Ok(Err(source)) => Err(MeshError::Dial {
                peer: peer.name.clone(),
                source,
            }),
            Err(_) => Err(MeshError::Timeout {
                peer: peer.name.clone(),
            }),
        };
        match &result {
            Ok(c) => *conn = Some(c.clone()),
            Err(_) => {
                *entry.down_until.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Instant::now() + DOWN_FOR);
            }
        }
        result
    }

    /// Every live link, dialed and accepted (links being dialed are skipped).
    pub fn samples(&self) -> Vec<LinkSample> {
        let sample = |peer: String, side, conn: &Connection| LinkSample {
            peer,
            side,
            rtt: conn.rtt(),
            udp_payload: conn.stats().path.current_mtu,
        };
        let dialed = self
            .live()
            .into_iter()
            .map(|(peer, conn)| sample(peer, "dialed", &conn));
        let accepted: Vec<LinkSample> = self
            .accepted
            .iter()
            .filter(|l| l.value().close_reason().is_none())
            .map(|l| sample(l.key().clone(), "accepted", l.value()))
            .collect();
        dialed.chain(accepted).collect()
    }

    /// The live outgoing links by peer name (links being dialed are skipped).
    pub fn live(&self) -> Vec<(String, Connection)> {
        self.links
            .iter()
            .filter_map(|l| {
                let conn = l.conn.try_lock().ok()?.clone()?;
                conn.close_reason()
                    .is_none()
                    .then(|| (l.key().clone(), conn))
            })
            .collect()
    }

    /// Number of live outgoing links (for tests and status).
    pub fn live_links(&self) -> usize {
        self.links
            .iter()
            .filter(|l| {
                l.conn
                    .try_lock()
                    .map(|c| c.as_ref().is_some_and(|c| c.close_reason().is_none()))
                    .unwrap_or(true)
            })
            .count()
    }
}

/// An incoming mesh link: check the peer's certificate and hello, then route its streams.
pub(crate) async fn serve_mesh(shared: Arc<Shared>, conn: Connection, stop: CancellationToken) {
    // rustls verified any certificate against the CA, but allowed none (agents and
    // clients have none): a mesh link must have presented one.
    if conn.peer_identity().is_none() {
        tracing::info!(remote = %conn.remote_address(), "mesh link without a client certificate refused");
        conn.close(
            ErrorCode::Unauthorized.to_u16().into(),
            b"mesh links need a CA-issued client certificate",
        );
        return;
    }
    let Some((peer, _control_send, _control_recv)) =
        crate::clients::accept_hello(&shared, &conn, TokenKind::Relay).await
    else {
        return;
    };
    let span = tracing::info_span!("mesh", %peer, remote = %conn.remote_address());
    async {
        tracing::debug!("mesh link accepted");
        let origin = crate::routing::Origin::Mesh { peer: peer.clone() };
        shared.mesh.accepted.insert(peer.clone(), conn.clone());
        crate::routing::accept_streams(shared.clone(), &conn, origin, &stop).await;
        // A newer link from the same peer may have taken the entry already.
        shared
            .mesh
            .accepted
            .remove_if(&peer, |_, c| c.stable_id() == conn.stable_id());
    }
    .instrument(span)
    .await
}
