//! Relay-to-relay links (ALPN `ferry-mesh/1`, mutual TLS with CA-issued certificates,
//! then a hello carrying the relay's token so the far end knows which relay we are).
//!
//! [`Mesh`] holds one outgoing link per peer, dialed on first use or by the refresh
//! task ([`crate::view::refresh_loop`]) for the peers kept warm, and redialed when it
//! dies. A peer that failed to answer, or whose link went silent ([`SILENT_FOR`]), is
//! skipped for [`DOWN_FOR`], and later redialed in the background, so that streams
//! fail over to the next relay at once instead of each waiting for a handshake.
//! Incoming links are served by [`serve_mesh`]: every stream on them is routed like a
//! client's, with the hop count the sender set.
//!
//! A peer advertised by name (`relay-2.eu.example.com:4433`) is resolved on each dial
//! (answers are cached for their TTL, and forgotten when the dial fails), and its
//! addresses are raced, IPv6 first ([`ferry_transport::race`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ferry_proto::api::RelayInfo;
use ferry_proto::token::TokenKind;
use ferry_proto::ErrorCode;
use ferry_transport::dial::{self, DialError};
use ferry_transport::race::{race, CONNECTION_ATTEMPT_DELAY};
use ferry_transport::{ResolveError, Resolver};
use quinn::Connection;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::server::Shared;

/// How long a peer that could not be reached, or went silent, is skipped.
const DOWN_FOR: Duration = Duration::from_secs(1);
/// A peer whose link has carried nothing for this long is taken for dead: two
/// keep-alive intervals, where quinn would wait for the link's idle timeout (1.2 s)
/// before closing it. A stream waiting on such a peer moves on to the next relay.
pub(crate) const SILENT_FOR: Duration = ferry_transport::quic::MESH_KEEP_ALIVE.saturating_mul(2);
/// How long a mesh dial may take; peers are near in the network, so less than a client's.
const MESH_DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a mesh link is unavailable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    #[error("relay {peer} has a bad address `{addr}`")]
    BadAddress { peer: String, addr: String },
    #[error("relay {peer}: {source}")]
    Resolve {
        peer: String,
        #[source]
        source: ResolveError,
    },
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
    /// The peer's name gave several addresses, and none answered.
    #[error("mesh link to relay {peer} ({addr}): no address answered: {reasons}")]
    DialAll {
        peer: String,
        addr: String,
        reasons: String,
    },
}

#[derive(Default)]
struct PeerLink {
    conn: tokio::sync::Mutex<Option<Connection>>,
    health: std::sync::Mutex<Health>,
}

#[derive(Default)]
struct Health {
    /// Streams skip the peer until then: a dial failed or the link went silent.
    down_until: Option<Instant>,
    /// The peer's last link failed, went silent or closed: it is redialed in the
    /// background, and a stream waits for that dial only briefly.
    suspect: bool,
}

impl Health {
    fn skipped(&self) -> bool {
        self.down_until.is_some_and(|t| Instant::now() < t)
    }
}

impl PeerLink {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_down(&self) -> bool {
        self.health().skipped()
    }

    /// Whether this caller may start a redial: none is under way, and the peer is not
    /// skipped. While one runs, streams skip the peer rather than queue behind it.
    fn claim_redial(&self) -> bool {
        let mut health = self.health();
        if health.skipped() {
            return false;
        }
        *health = Health {
            down_until: Some(Instant::now() + MESH_DIAL_TIMEOUT),
            suspect: true,
        };
        true
    }

    fn mark_down(&self) {
        *self.health() = Health {
            down_until: Some(Instant::now() + DOWN_FOR),
            suspect: true,
        };
    }

    /// Keeps what a dial gave: the link, or the peer's failure.
    fn record(&self, conn: &mut Option<Connection>, result: &Result<Connection, MeshError>) {
        match result {
            Ok(c) => {
                *conn = Some(c.clone());
                *self.health() = Health::default();
            }
            Err(_) => self.mark_down(),
        }
    }
}

/// The link in `conn` if it is still open.
fn open_link(conn: &Option<Connection>) -> Option<Connection> {
    conn.as_ref()
        .filter(|c| c.close_reason().is_none())
        .cloned()
}

/// The outgoing side of the mesh.
pub(crate) struct Mesh {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    token: String,
    resolver: Resolver,
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
    pub fn new(
        endpoint: quinn::Endpoint,
        config: quinn::ClientConfig,
        token: String,
        resolver: Resolver,
    ) -> Mesh {
        Mesh {
            endpoint,
            config,
            token,
            resolver,
            links: DashMap::new(),
            accepted: DashMap::new(),
        }
    }

    /// A live link to `peer`, dialing it if needed.
    ///
    /// Only a peer's first link is dialed while the caller waits. Once a peer's link
    /// has failed, gone silent or closed, it is redialed in the background and the
    /// caller waits for that at most [`SILENT_FOR`]: a live peer answers a handshake
    /// well within it, and a dead one would hold every stream for the whole dial
    /// timeout (2 s) each time [`DOWN_FOR`] runs out.
    pub async fn link(&self, peer: &RelayInfo) -> Result<Connection, MeshError> {
        let entry = self.links.entry(peer.name.clone()).or_default().clone();
        let down = || MeshError::Down {
            peer: peer.name.clone(),
        };
        // Checked before the link itself: a peer that went silent still has an open
        // link until quinn's idle timeout.
        if entry.is_down() {
            return Err(down());
        }
        if !entry.health().suspect {
            let mut conn = entry.conn.lock().await;
            if let Some(c) = open_link(&conn) {
                return Ok(c);
            }
            if conn.is_none() {
                let result = dial_peer(
                    &self.endpoint,
                    self.config.clone(),
                    &self.token,
                    &self.resolver,
                    peer,
                )
                .await;
                entry.record(&mut conn, &result);
                return result;
            }
            // The link that was up has closed: the peer restarted, drained or died.
        }
        if !entry.claim_redial() {
            return Err(down());
        }
        let redial = {
            let (entry, peer) = (entry.clone(), peer.clone());
            let (endpoint, config, token, resolver) = (
                self.endpoint.clone(),
                self.config.clone(),
                self.token.clone(),
                self.resolver.clone(),
            );
            tokio::spawn(async move {
                let mut conn = entry.conn.lock().await;
                if let Some(c) = open_link(&conn) {
                    *entry.health() = Health::default();
                    return Ok(c);
                }
                let result = dial_peer(&endpoint, config, &token, &resolver, &peer).await;
                entry.record(&mut conn, &result);
                result
            })
        };
        match tokio::time::timeout(SILENT_FOR, redial).await {
            Ok(Ok(result)) => result,
            // Still dialing (it goes on, and its result is kept), or the task failed.
            Ok(Err(_)) | Err(_) => Err(down()),
        }
    }

    /// `peer`'s link carried nothing for [`SILENT_FOR`]: skip it for [`DOWN_FOR`]
    /// (the link stays open, so a peer that was only stalled keeps its streams).
    pub fn mark_silent(&self, peer: &str) {
        tracing::warn!(%peer, "mesh peer silent for {SILENT_FOR:?}; new streams skip it for {DOWN_FOR:?}");
        self.links.entry(peer.to_string()).or_default().mark_down();
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
                let conn = open_link(&*l.conn.try_lock().ok()?)?;
                Some((l.key().clone(), conn))
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
                    .map(|c| open_link(&c).is_some())
                    .unwrap_or(true)
            })
            .count()
    }
}

/// One mesh handshake with `peer`, hello included, within [`MESH_DIAL_TIMEOUT`]
/// (resolving its name, if it has one, and racing its addresses).
async fn dial_peer(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    token: &str,
    resolver: &Resolver,
    peer: &RelayInfo,
) -> Result<Connection, MeshError> {
    let dialed = tokio::time::timeout(
        MESH_DIAL_TIMEOUT,
        dial_addresses(endpoint, config, token, resolver, peer),
    )
    .await;
    let result = match dialed {
        Ok(result) => result,
        Err(_) => Err(MeshError::Timeout {
            peer: peer.name.clone(),
        }),
    };
    if result.is_err() {
        // The peer may have moved: ask the DNS again next time.
        resolver.forget(&peer.quic_addr);
    }
    result
}

async fn dial_addresses(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    token: &str,
    resolver: &Resolver,
    peer: &RelayInfo,
) -> Result<Connection, MeshError> {
    let addr =
        ferry_proto::RelayAddr::parse(&peer.quic_addr).map_err(|_| MeshError::BadAddress {
            peer: peer.name.clone(),
            addr: peer.quic_addr.clone(),
        })?;
    let addrs: Vec<SocketAddr> =
        resolver
            .resolve_addr(&addr)
            .await
            .map_err(|source| MeshError::Resolve {
                peer: peer.name.clone(),
                source,
            })?;
    let raced = race(addrs, CONNECTION_ATTEMPT_DELAY, |a| {
        dial::connect_with(endpoint, config.clone(), a, &peer.server_name, token)
    })
    .await;
    match raced {
        Ok((addr, session)) => {
            tracing::debug!(peer = %peer.name, %addr, "mesh link up");
            // The control stream stays open for the link's life; nothing uses it yet.
            drop(session.control);
            Ok(session.conn)
        }
        Err(mut errors) if errors.len() == 1 => Err(MeshError::Dial {
            peer: peer.name.clone(),
            source: errors.remove(0).1,
        }),
        Err(errors) => Err(MeshError::DialAll {
            peer: peer.name.clone(),
            addr: peer.quic_addr.clone(),
            reasons: errors
                .iter()
                .map(|(a, e)| format!("{a}: {e}"))
                .collect::<Vec<_>>()
                .join("; "),
        }),
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
