//! QUIC over TLS on TCP, for networks where UDP does not get through (blocked,
//! rejected, or only an HTTPS proxy leads out).
//!
//! The tunnel carries QUIC *datagrams*, not streams: above it, an agent's or a CLI's
//! connection to its relay is the very same QUIC connection, with the same hello,
//! tokens, stream headers, error codes, limits, drain and failover, so there is one
//! code path above the transport. A client's endpoint runs on a [`socket::TunnelSocket`]
//! whose only peer is the tunnel; a relay's endpoint runs on a [`socket::RelaySocket`]:
//! its UDP socket plus every tunnel its HTTPS port accepted ([`Ingress`]), each under
//! an address of its own in `100::/64` (RFC 6666's discard-only prefix: no real peer
//! ever has one), so quinn cannot tell a tunnelled peer from one on UDP. The wire
//! format is in [`ferry_proto::tunnel`]; opening one is in [`dial`].
//!
//! Why datagrams and not a stream multiplexer (HTTP/2, yamux): everything above the
//! transport stays as it is, and datagrams inside the tunnel may be far larger than
//! internet UDP allows (no path MTU inside TCP), which is what makes the per-packet
//! cost of a QUIC leg small. The price is two congestion controllers in series (QUIC's
//! inside TCP's); on a path that does not lose packets inside the tunnel, QUIC's only
//! sees the RTT, and its queue ceiling keeps the tunnel's buffers short.

pub mod dial;
mod pipe;
mod queue;
pub(crate) mod socket;

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

pub use dial::{open, Tunnel, TunnelError};
pub use pipe::PipeError;

use queue::DatagramQueue;

/// How a tunnel reaches the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelKind {
    /// TLS straight to the relay's HTTPS port, ALPN `ferry-tunnel/1`.
    Tls,
    /// A WebSocket on `/.ferry/tunnel` (through an L7 proxy that terminates TLS).
    WebSocket,
}

impl TunnelKind {
    /// The metric label and the word `ferry status` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelKind::Tls => "tcp",
            TunnelKind::WebSocket => "websocket",
        }
    }
}

/// The address tunnel `id` has on a QUIC endpoint (see the module documentation).
pub fn tunnel_addr(id: u64) -> SocketAddr {
    let s = id.to_be_bytes();
    let word = |i: usize| u16::from_be_bytes([s[i], s[i + 1]]);
    SocketAddr::new(
        Ipv6Addr::new(0x100, 0, 0, 0, word(0), word(2), word(4), word(6)).into(),
        1,
    )
}

/// Whether `addr` is a tunnel's (not a real UDP peer's) address.
pub fn is_tunnel_addr(addr: SocketAddr) -> bool {
    match addr {
        SocketAddr::V6(v6) => v6.ip().segments()[..4] == [0x100, 0, 0, 0],
        SocketAddr::V4(_) => false,
    }
}

/// Bytes a relay queues towards one tunnel before it drops datagrams. A tunnel's TCP
/// stream drains this in well under a millisecond on a fast path; a slow one loses
/// packets here, as on a router, and QUIC slows down.
const RELAY_TUNNEL_QUEUE: usize = 512 * 1024;

/// Bytes a client queues towards its tunnel before its sends wait.
pub(crate) const CLIENT_TUNNEL_QUEUE: usize = 2 * 1024 * 1024;

/// Datagrams from all tunnels waiting for the relay's endpoint to read them. Tunnel
/// readers wait when it is full, which pushes back on their TCP streams.
const INBOUND_QUEUE: usize = 4096;

struct TunnelEntry {
    queue: Arc<DatagramQueue>,
    peer: SocketAddr,
    kind: TunnelKind,
    ended: CancellationToken,
}

/// A relay's open tunnels, by their QUIC-side address.
#[derive(Default)]
pub(crate) struct TunnelTable {
    entries: RwLock<HashMap<SocketAddr, TunnelEntry>>,
    dropped: AtomicU64,
}

impl TunnelTable {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<SocketAddr, TunnelEntry>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<SocketAddr, TunnelEntry>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn queue(&self, addr: SocketAddr) -> Option<Arc<DatagramQueue>> {
        self.read().get(&addr).map(|e| e.queue.clone())
    }

    pub(crate) fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// A relay's side of the tunnels: its HTTPS port hands each accepted tunnel to
/// [`Ingress::serve_tls`] or [`Ingress::serve_websocket`], which carry it until it
/// ends; the relay's QUIC endpoint sees its datagrams. Cheap to clone.
#[derive(Clone)]
pub struct Ingress {
    table: Arc<TunnelTable>,
    inbound: mpsc::Sender<(SocketAddr, Bytes)>,
    next_id: Arc<AtomicU64>,
}

/// What the relay knows of a tunnelled connection's way in.
#[derive(Debug, Clone, Copy)]
pub struct TunnelInfo {
    /// The TCP peer (the client, or the proxy in front of the relay).
    pub peer: SocketAddr,
    pub kind: TunnelKind,
}

/// Removes a tunnel from the table when its task ends, however it ends.
struct Registration {
    table: Arc<TunnelTable>,
    addr: SocketAddr,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(entry) = self.table.write().remove(&self.addr) {
            entry.queue.close();
            entry.ended.cancel();
        }
    }
}

impl Ingress {
    fn register(&self, peer: SocketAddr, kind: TunnelKind) -> (Registration, Arc<DatagramQueue>) {
        // Tunnel ids start at 1: 0 is every client socket's own address.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let addr = tunnel_addr(id);
        let queue = Arc::new(DatagramQueue::new(RELAY_TUNNEL_QUEUE));
        self.table.write().insert(
            addr,
            TunnelEntry {
                queue: queue.clone(),
                peer,
                kind,
                ended: CancellationToken::new(),
            },
        );
        let registration = Registration {
            table: self.table.clone(),
            addr,
        };
        (registration, queue)
    }

    /// Carries a direct (ALPN `ferry-tunnel/1`) tunnel until it ends.
    pub async fn serve_tls<S>(&self, stream: S, peer: SocketAddr) -> Result<(), PipeError>
    where
        S: AsyncRead + AsyncWrite + Send,
    {
        let (registration, queue) = self.register(peer, TunnelKind::Tls);
        pipe::run_stream(stream, registration.addr, self.inbound.clone(), queue).await
    }

    /// Carries a WebSocket tunnel (already upgraded) until it ends.
    pub async fn serve_websocket<S>(
        &self,
        ws: WebSocketStream<S>,
        peer: SocketAddr,
    ) -> Result<(), PipeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (registration, queue) = self.register(peer, TunnelKind::WebSocket);
        pipe::run_websocket(ws, registration.addr, self.inbound.clone(), queue).await
    }

    /// The tunnel behind a QUIC peer address, if it is one that is still open.
    pub fn tunnel(&self, addr: SocketAddr) -> Option<TunnelInfo> {
        self.table.read().get(&addr).map(|e| TunnelInfo {
            peer: e.peer,
            kind: e.kind,
        })
    }

    /// Fires when the tunnel behind `addr` ends (at once for an address that is not an
    /// open tunnel's): its QUIC connection should then be closed, since nothing can
    /// reach its peer any more.
    pub fn ended(&self, addr: SocketAddr) -> CancellationToken {
        match self.table.read().get(&addr) {
            Some(e) => e.ended.clone(),
            None => {
                let t = CancellationToken::new();
                t.cancel();
                t
            }
        }
    }

    /// Tunnels open now.
    pub fn len(&self) -> usize {
        self.table.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Datagrams dropped so far because a tunnel's queue was full.
    pub fn dropped(&self) -> u64 {
        self.table.dropped.load(Ordering::Relaxed)
    }
}

/// The relay's socket for quinn, and the ingress that feeds it.
pub(crate) fn relay_socket(
    udp: Arc<dyn quinn::AsyncUdpSocket>,
) -> (Arc<dyn quinn::AsyncUdpSocket>, Ingress) {
    let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
    let table = Arc::new(TunnelTable::default());
    let socket = socket::RelaySocket::new(udp, table.clone(), rx);
    let ingress = Ingress {
        table,
        inbound: tx,
        next_id: Arc::new(AtomicU64::new(0)),
    };
    (Arc::new(socket), ingress)
}

#[cfg(test)]
mod tests;
