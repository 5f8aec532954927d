//! QUIC endpoint and transport configuration.
//!
//! quinn's defaults let a peer open many streams and grow the connection receive
//! window without bound; a relay holding thousands of agents must cap both, so every
//! endpoint here is built from explicit [`Limits`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};

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
    /// The largest UDP payload MTU discovery probes for on this connection's path.
    /// Internet paths stay at [`DEFAULT_MAX_UDP_PAYLOAD`]; mesh links try up to
    /// [`MESH_MAX_UDP_PAYLOAD`] (see there). A path that carries less simply fails
    /// the larger probes: the connection keeps the largest size that got through.
    pub max_udp_payload: u16,
}

/// quinn's own ceiling for MTU discovery: a 1500-byte Ethernet MTU less the IPv6 and
/// UDP headers, which nearly every internet path carries.
pub const DEFAULT_MAX_UDP_PAYLOAD: u16 = 1452;

/// The ceiling of MTU discovery on relay-to-relay links: what a 9000-byte (jumbo)
/// MTU carries, less the IPv6 and UDP headers. Relays usually sit in datacenters whose
/// networks carry jumbo frames, and on loopback (`ferry dev`) any size goes: larger
/// packets cut the per-packet work (header protection, ACKs, loss bookkeeping) of a
/// QUIC leg, and a mesh hop is one more such leg.
///
/// quinn batches up to 10 of these in one segmentation-offload write, more than the
/// kernel takes at once; [`crate::gso`] splits such writes (without it whole batches
/// vanished, quinn-rs/quinn#2201, and the link lost a third of its packets).
pub const MESH_MAX_UDP_PAYLOAD: u16 = 9000 - 48;
const _: () = assert!(MESH_MAX_UDP_PAYLOAD > DEFAULT_MAX_UDP_PAYLOAD);

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

/// How often each end of an idle mesh link sends something: a live peer is never
/// silent for much longer (see [`crate::liveness`]).
pub const MESH_KEEP_ALIVE: Duration = Duration::from_millis(250);

/// How often a developer's CLI pings its relay while idle. Its relay acknowledges each
/// ping, so a CLI waiting on a stream hears from a live relay at least this often and
/// can take a few silent intervals for a dead one (see [`crate::liveness`]): a ping a
/// second per client costs a relay next to nothing.
pub const CLIENT_KEEP_ALIVE: Duration = Duration::from_secs(1);

impl Limits {
    /// For a developer's CLI connection to its relay: keep-alives frequent enough
    /// that a relay killed under a long-lived `ferry port-forward` is noticed within
    /// seconds, not at the 30 s idle timeout.
    pub fn client() -> Limits {
        Limits {
            keep_alive: CLIENT_KEEP_ALIVE,
            ..Limits::default()
        }
    }
}

impl Limits {
    /// For relay-to-relay mesh links: a killed peer must be noticed within about a
    /// second so that streams fail over to the standby. Frequent keep-alives cost a
    /// few packets per second per link, and a relay has tens of links, not thousands.
    /// MTU discovery may go past internet sizes ([`MESH_MAX_UDP_PAYLOAD`]); the
    /// relay accepting the link probes as far on its side (see the relay's server).
    pub fn mesh() -> Limits {
        Limits {
            idle_timeout: Duration::from_millis(1200),
            keep_alive: MESH_KEEP_ALIVE,
            max_udp_payload: MESH_MAX_UDP_PAYLOAD,
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
            max_udp_payload: DEFAULT_MAX_UDP_PAYLOAD,
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
        if self.max_udp_payload != DEFAULT_MAX_UDP_PAYLOAD {
            let mut discovery = MtuDiscoveryConfig::default();
            discovery.upper_bound(self.max_udp_payload);
            t.mtu_discovery_config(Some(discovery));
        }
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
    let addr = bound_addr(&socket)?;
    let (endpoint_config, config) = server_configs(tls, limits, reset_secret)?;
    new_endpoint(endpoint_config, Some(config), socket)
        .map_err(|source| EndpointError::Bind { addr, source })
}

/// Like [`server_endpoint`], with tunnels beside the UDP socket: the returned
/// [`crate::tunnel::Ingress`] takes the tunnels the relay's HTTPS port accepts, and the
/// endpoint serves their QUIC connections like any other.
pub fn server_endpoint_with_tunnels(
    socket: std::net::UdpSocket,
    tls: rustls::ServerConfig,
    limits: &Limits,
    reset_secret: &[u8],
) -> Result<(quinn::Endpoint, crate::tunnel::Ingress), EndpointError> {
    use quinn::Runtime;
    let addr = bound_addr(&socket)?;
    let (endpoint_config, config) = server_configs(tls, limits, reset_secret)?;
    let runtime = Arc::new(quinn::TokioRuntime);
    let bind_err = |source| EndpointError::Bind { addr, source };
    let udp = crate::gso::SplitGso::new(runtime.wrap_udp_socket(socket).map_err(bind_err)?);
    let (socket, ingress) = crate::tunnel::relay_socket(udp);
    let endpoint =
        quinn::Endpoint::new_with_abstract_socket(endpoint_config, Some(config), socket, runtime)
            .map_err(bind_err)?;
    Ok((endpoint, ingress))
}

fn bound_addr(socket: &std::net::UdpSocket) -> Result<SocketAddr, EndpointError> {
    socket.local_addr().map_err(|source| EndpointError::Bind {
        addr: "0.0.0.0:0".parse().expect("literal"),
        source,
    })
}

fn server_configs(
    tls: rustls::ServerConfig,
    limits: &Limits,
    reset_secret: &[u8],
) -> Result<(quinn::EndpointConfig, quinn::ServerConfig), EndpointError> {
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
    advertise_receive_size(&mut endpoint_config, limits);
    // Connection IDs carry a keyed checksum; with a random key a restarted relay would
    // treat its old IDs as noise and drop them instead of answering with a reset.
    let cid_key = u64::from_le_bytes(secret.as_ref()[..8].try_into().expect("32-byte digest"));
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    Ok((endpoint_config, config))
}

/// A client endpoint on a tunnel's socket. Inside the tunnel there is no path MTU:
/// packets start at, and stay at, the largest size the relay receives, which cuts
/// the per-packet cost of the connection (see [`crate::tunnel`]).
pub(crate) fn tunnel_client_endpoint(
    socket: crate::tunnel::socket::TunnelSocket,
    tls: rustls::ClientConfig,
    limits: &Limits,
) -> Result<quinn::Endpoint, EndpointError> {
    let limits = Limits {
        max_udp_payload: TUNNEL_MAX_UDP_PAYLOAD,
        ..limits.clone()
    };
    let mut endpoint_config = quinn::EndpointConfig::default();
    advertise_receive_size(&mut endpoint_config, &limits);
    let addr = crate::tunnel::tunnel_addr(0);
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config,
        None,
        Arc::new(socket),
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| EndpointError::Bind { addr, source })?;
    let mut transport = limits.transport_config();
    transport.initial_mtu(TUNNEL_MAX_UDP_PAYLOAD);
    let crypto =
        QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| EndpointError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// The largest QUIC packet inside a tunnel: the largest a relay receives.
pub const TUNNEL_MAX_UDP_PAYLOAD: u16 = MESH_MAX_UDP_PAYLOAD;
const _: () = assert!(TUNNEL_MAX_UDP_PAYLOAD as usize == ferry_proto::tunnel::MAX_DATAGRAM);

/// A quinn endpoint on `socket` whose oversized GSO writes are split ([`crate::gso`]).
fn new_endpoint(
    config: quinn::EndpointConfig,
    server: Option<quinn::ServerConfig>,
    socket: std::net::UdpSocket,
) -> std::io::Result<quinn::Endpoint> {
    use quinn::Runtime;
    let runtime = Arc::new(quinn::TokioRuntime);
    let socket = crate::gso::SplitGso::new(runtime.wrap_udp_socket(socket)?);
    quinn::Endpoint::new_with_abstract_socket(config, server, socket, runtime)
}

/// Tells peers we receive datagrams as large as `limits` lets us send, no larger.
/// A peer's MTU discovery stops at what we advertise: a relay probes every connection
/// up to mesh sizes (its peers' links need them), and agents and clients, saying 1452
/// here, keep it at internet sizes towards them.
fn advertise_receive_size(config: &mut quinn::EndpointConfig, limits: &Limits) {
    config
        .max_udp_payload_size(limits.max_udp_payload.max(DEFAULT_MAX_UDP_PAYLOAD))
        .expect("within QUIC's bounds");
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
    let mut endpoint_config = quinn::EndpointConfig::default();
    advertise_receive_size(&mut endpoint_config, limits);
    let mut endpoint = new_endpoint(endpoint_config, None, socket)
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A relay's endpoint on loopback, as relays build theirs.
    pub(crate) fn relay_endpoint(ca: &ferry_certs::Ca) -> quinn::Endpoint {
        let leaf = ca
            .issue(&["127.0.0.1".into()], ferry_certs::Usage::Server)
            .unwrap();
        let tls = ferry_certs::server_config(&leaf, &[b"test"]).unwrap();
        let socket = udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        server_endpoint(socket, tls, &Limits::mesh(), b"t").unwrap()
    }

    /// Bulk data both ways over a mesh-configured link on loopback (which carries any
    /// size): both sides must settle on jumbo packets without losing packets. quinn's
    /// 10-packet GSO batches of them pass 64 KiB; unsplit ([`crate::gso`]), the kernel
    /// refused every batch, a third of the packets were lost and the link fell back
    /// to 1200 bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mesh_links_settle_on_large_packets_without_loss() {
        const BYTES: usize = 64 * 1024 * 1024;
        let ca = ferry_certs::Ca::create().unwrap();
        let (a, b) = (relay_endpoint(&ca), relay_endpoint(&ca));
        let b_addr = b.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let conn = b.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let got = recv.read_to_end(BYTES).await.unwrap().len();
            send.write_all(&vec![7u8; BYTES]).await.unwrap();
            send.finish().unwrap();
            let _ = send.stopped().await;
            (got, conn, b)
        });
        let tls = ferry_certs::client_config(ca.cert_pem(), &[b"test"]).unwrap();
        let config = client_config(tls, &Limits::mesh()).unwrap();
        let conn = a
            .connect_with(config, b_addr, "127.0.0.1")
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&vec![9u8; BYTES]).await.unwrap();
        send.shutdown().await.unwrap();
        let back = recv.read_to_end(BYTES).await.unwrap();
        let (got, server_conn, b) = server.await.unwrap();
        assert_eq!((got, back.len()), (BYTES, BYTES));

        // An agent or a client (a plain client endpoint, internet limits) says it
        // receives 1452-byte datagrams at most: the relay's side never probes past it.
        let tls = ferry_certs::client_config(ca.cert_pem(), &[b"test"]).unwrap();
        let internet = client_endpoint(b_addr, tls, &Limits::default()).unwrap();
        let accepting = tokio::spawn(async move {
            let conn = b.accept().await.unwrap().await.unwrap();
            (conn, b)
        });
        let agent = internet
            .connect(b_addr, "127.0.0.1")
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = agent.open_bi().await.unwrap();
        send.write_all(b"hello").await.unwrap();
        let (relay_side, _b) = accepting.await.unwrap();
        let (mut back, _) = relay_side.accept_bi().await.unwrap();
        back.write_all(&vec![1u8; 4 * 1024 * 1024]).await.unwrap();
        back.finish().unwrap();
        assert_eq!(recv.read_to_end(usize::MAX).await.unwrap().len(), 4 << 20);
        assert_eq!(relay_side.stats().path.current_mtu, DEFAULT_MAX_UDP_PAYLOAD);

        for (side, conn) in [("dialer", &conn), ("acceptor", &server_conn)] {
            let path = conn.stats().path;
            assert!(
                path.current_mtu > MESH_MAX_UDP_PAYLOAD - 100,
                "{side} sends {}-byte packets, expected about {MESH_MAX_UDP_PAYLOAD}",
                path.current_mtu
            );
            assert!(
                path.lost_packets * 100 < path.sent_packets,
                "{side} lost {} of {} packets",
                path.lost_packets,
                path.sent_packets
            );
        }
    }
}
