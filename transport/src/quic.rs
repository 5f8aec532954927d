//! QUIC endpoint and transport configuration.
//!
//! quinn's defaults let a peer open many streams and grow the connection receive
//! window without bound; a relay holding thousands of agents must cap both, so every
//! endpoint here is built from explicit [`Limits`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};

use crate::congestion::{QueueCeilingFactory, QueueConfig};

/// Per-connection resource limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent bi-streams the peer may open towards us.
    pub max_incoming_streams: u32,
    /// Bytes the peer may have in flight to us across all streams of a connection.
    pub connection_receive_window: u32,
    /// Bytes the peer may have in flight to us on one stream.
    pub stream_receive_window: u32,
    /// Bytes we may have in flight to the peer (sender-side buffering).
    pub send_window: u64,
    /// A connection silent for this long is closed.
    pub idle_timeout: Duration,
    /// We send a keep-alive this often, so that NATs keep the path open.
    pub keep_alive: Duration,
    /// How much standing queue our own sending may build on the path before the
    /// window is capped ([`crate::congestion`]); `None` leaves quinn's plain CUBIC.
    /// Without the cap, a bulk transfer fills the receiver's socket buffer and every
    /// interactive stream on the connection waits behind it.
    pub queue_ceiling: Option<QueueConfig>,
}

impl Limits {
    /// For an agent's connection to its relay: a relay that vanished without closing
    /// (killed, cut off) is noticed within a few seconds, so the agent moves on. The
    /// idle timeout is negotiated down to the smaller side, so this binds the relay too.
    pub fn agent() -> Limits {
        Limits {
            idle_timeout: Duration::from_secs(6),
            keep_alive: Duration::from_secs(2),
            ..Limits::default()
        }
    }
}

impl Limits {
    /// For relay-to-relay mesh links: a killed peer must be noticed within about a
    /// second so that streams fail over to the standby. Frequent keep-alives cost a
    /// few packets per second per link, and a relay has tens of links, not thousands.
    pub fn mesh() -> Limits {
        Limits {
            idle_timeout: Duration::from_millis(1200),
            keep_alive: Duration::from_millis(250),
            ..Limits::default()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_incoming_streams: 1024,
            // Large enough for multi-gigabit transfers on a low-RTT path (window/RTT),
            // small enough that a slow reader cannot make us buffer without bound.
            connection_receive_window: 16 * 1024 * 1024,
            stream_receive_window: 4 * 1024 * 1024,
            send_window: 16 * 1024 * 1024,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            queue_ceiling: QueueConfig::from_env(),
        }
    }
}

impl Limits {
    /// Builds quinn's transport configuration from these limits.
    pub fn transport_config(&self) -> TransportConfig {
        let mut t = TransportConfig::default();
        t.max_concurrent_bidi_streams(VarInt::from_u32(self.max_incoming_streams));
        t.max_concurrent_uni_streams(VarInt::from_u32(0));
        t.receive_window(VarInt::from_u32(self.connection_receive_window));
        t.stream_receive_window(VarInt::from_u32(self.stream_receive_window));
        t.send_window(self.send_window);
        t.max_idle_timeout(IdleTimeout::try_from(self.idle_timeout).ok());
        t.keep_alive_interval(Some(self.keep_alive));
        if let Some(config) = &self.queue_ceiling {
            t.congestion_controller_factory(QueueCeilingFactory::new(config.clone()));
        }
        t
    }
}

/// Why an endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    #[error("binding UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS configuration is not usable for QUIC: {0}")]
    Tls(String),
}

/// A server endpoint on an already bound UDP socket (bound first so that a relay
/// knows its port before it asks the control plane for a certificate). The endpoint
/// also dials out, e.g. for the mesh, from the same socket.
///
/// `reset_secret` keys QUIC stateless resets. Derive it from something that survives
/// a restart (the relay's token): a relay restarted on the same port can then tell
/// peers of its previous life that their connection is gone, and they reconnect at
/// once instead of waiting for the idle timeout.
pub fn server_endpoint(
    socket: std::net::UdpSocket,
    tls: rustls::ServerConfig,
    limits: &Limits,
    reset_secret: &[u8],
) -> Result<quinn::Endpoint, EndpointError> {
    let addr = socket.local_addr().map_err(|source| EndpointError::Bind {
        addr: "0.0.0.0:0".parse().expect("literal"),
        source,
    })?;
    let crypto =
        QuicServerConfig::try_from(Arc::new(tls)).map_err(|e| EndpointError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(limits.transport_config()));
    let secret = ring::digest::digest(
        &ring::digest::SHA256,
        &[b"ferry stateless reset v1\0", reset_secret].concat(),
    );
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_ref());
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
    // Connection IDs carry a keyed checksum; with a random key a restarted relay would
    // treat its old IDs as noise and drop them instead of answering with a reset.
    let cid_key = u64::from_le_bytes(secret.as_ref()[..8].try_into().expect("32-byte digest"));
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    quinn::Endpoint::new(
        endpoint_config,
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| EndpointError::Bind { addr, source })
}

/// A client-only endpoint on an ephemeral port of the right address family.
pub fn client_endpoint(
    peer: SocketAddr,
    tls: rustls::ClientConfig,
    limits: &Limits,
) -> Result<quinn::Endpoint, EndpointError> {
    client_endpoint_from(None, peer, tls, limits)
}

/// The local address a client endpoint binds for `peer`: `local_ip` (a multi-homed
/// host's chosen source address; the WAN emulator tells locations apart by it) when
/// given, else the unspecified address of the peer's family.
pub fn client_bind_addr(local_ip: Option<std::net::IpAddr>, peer: SocketAddr) -> SocketAddr {
    match local_ip {
        Some(ip) => SocketAddr::new(ip, 0),
        None if peer.is_ipv6() => "[::]:0".parse().expect("literal address"),
        None => "0.0.0.0:0".parse().expect("literal address"),
    }
}

/// Like [`client_endpoint`], sending from `local_ip` when given.
pub fn client_endpoint_from(
    local_ip: Option<std::net::IpAddr>,
    peer: SocketAddr,
    tls: rustls::ClientConfig,
    limits: &Limits,
) -> Result<quinn::Endpoint, EndpointError> {
    let bind = client_bind_addr(local_ip, peer);
    let socket = udp_socket(bind)?;
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| EndpointError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(client_config(tls, limits)?);
    Ok(endpoint)
}

/// Socket buffer size we ask for. The kernel's default (about 208 KiB) overflows at
/// gigabit rates: it drops datagrams, which QUIC takes for congestion and slows down.
/// The kernel caps the request at `net.core.rmem_max`/`wmem_max` (raise those on
/// busy relays).
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Binds a UDP socket with large send and receive buffers.
pub fn udp_socket(addr: SocketAddr) -> Result<std::net::UdpSocket, EndpointError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind_err = |source| EndpointError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_err)?;
    if addr.is_ipv6() {
        // Accept IPv4-mapped peers on a `[::]` socket as well.
        let _ = socket.set_only_v6(false);
    }
    for (what, result) in [
        ("receive", socket.set_recv_buffer_size(SOCKET_BUFFER)),
        ("send", socket.set_send_buffer_size(SOCKET_BUFFER)),
    ] {
        if let Err(e) = result {
            tracing::debug!(error = %e, "cannot enlarge the UDP {what} buffer");
        }
    }
    socket.bind(&addr.into()).map_err(bind_err)?;
    Ok(socket.into())
}

/// quinn's client configuration from a rustls one.
pub fn client_config(
    tls: rustls::ClientConfig,
    limits: &Limits,
) -> Result<quinn::ClientConfig, EndpointError> {
    let crypto =
        QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| EndpointError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(limits.transport_config()));
    Ok(config)
}
