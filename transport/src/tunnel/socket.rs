//! The sockets quinn runs on when datagrams travel in tunnels: [`TunnelSocket`], a
//! client's one tunnel to its relay, and [`RelaySocket`], a relay's UDP socket with
//! every tunnel its HTTPS port accepted beside it.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

use super::queue::{DatagramQueue, PushError};
use super::TunnelTable;

type Received = Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>;

/// The segments of a transmit: quinn batches same-sized datagrams into one buffer.
fn segments<'a>(transmit: &'a Transmit<'a>) -> impl Iterator<Item = &'a [u8]> {
    let size = transmit
        .segment_size
        .unwrap_or(transmit.contents.len())
        .max(1);
    transmit.contents.chunks(size)
}

/// Moves queued tunnel datagrams into quinn's receive buffers; 0 when none is waiting
/// (the waker is then registered with the channel). `None`: every tunnel is gone.
fn poll_tunnels(
    received: &Received,
    cx: &mut Context,
    bufs: &mut [IoSliceMut<'_>],
    meta: &mut [RecvMeta],
) -> Option<usize> {
    let mut rx = received.lock().unwrap_or_else(|p| p.into_inner());
    let mut n = 0;
    while n < bufs.len().min(meta.len()) {
        let next = if n == 0 {
            match rx.poll_recv(cx) {
                Poll::Ready(next) => next,
                Poll::Pending => return Some(0),
            }
        } else {
            match rx.try_recv() {
                Ok(next) => Some(next),
                Err(_) => break,
            }
        };
        let Some((source, datagram)) = next else {
            return (n > 0).then_some(n);
        };
        // Peers never send more than we advertise, and our buffers hold that much.
        if datagram.len() > bufs[n].len() {
            continue;
        }
        bufs[n][..datagram.len()].copy_from_slice(&datagram);
        meta[n] = RecvMeta {
            addr: source,
            len: datagram.len(),
            stride: datagram.len(),
            ecn: None,
            dst_ip: None,
        };
        n += 1;
    }
    Some(n)
}

/// A client's QUIC endpoint socket whose only peer is its relay, at the other end of
/// one tunnel. Sending waits for room in the tunnel's queue (backpressure instead of
/// loss: there is no other peer to keep going for). When the tunnel ends, receiving
/// fails, which ends the endpoint and with it the connection, at once.
pub(crate) struct TunnelSocket {
    /// The address the QUIC connection is dialed to (a tunnel address).
    pub(crate) remote: SocketAddr,
    outbound: Arc<DatagramQueue>,
    inbound: Received,
    /// The tunnel's task: ends with the socket, which quinn drops with the endpoint.
    pub(crate) _pipe: tokio_util::task::AbortOnDropHandle<()>,
}

impl TunnelSocket {
    pub(crate) fn new(
        remote: SocketAddr,
        outbound: Arc<DatagramQueue>,
        inbound: mpsc::Receiver<(SocketAddr, Bytes)>,
        pipe: tokio::task::JoinHandle<()>,
    ) -> TunnelSocket {
        TunnelSocket {
            remote,
            outbound,
            inbound: Mutex::new(inbound),
            _pipe: tokio_util::task::AbortOnDropHandle::new(pipe),
        }
    }
}

impl fmt::Debug for TunnelSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelSocket")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct QueuePoller(Arc<DatagramQueue>);

impl UdpPoller for QueuePoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        self.0.poll_space(cx).map(Ok)
    }
}

impl AsyncUdpSocket for TunnelSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(QueuePoller(self.outbound.clone()))
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if transmit.destination != self.remote {
            return Ok(());
        }
        for (i, segment) in segments(transmit).enumerate() {
            match self.outbound.push(Bytes::copy_from_slice(segment)) {
                Ok(()) => {}
                // Nothing of this transmit is out yet: quinn waits for room and retries.
                Err(PushError::Full) if i == 0 => return Err(io::ErrorKind::WouldBlock.into()),
                // Part is out: the rest counts as lost (see `gso`).
                Err(PushError::Full) => return Ok(()),
                // The connection ends through the receive side (see `poll_recv`).
                Err(PushError::Closed) => return Ok(()),
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        match poll_tunnels(&self.inbound, cx, bufs, meta) {
            Some(0) => Poll::Pending,
            Some(n) => Poll::Ready(Ok(n)),
            // An I/O error stops quinn's endpoint, which closes the connection at once
            // instead of leaving it to the idle timeout.
            None => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the tunnel to the relay ended",
            ))),
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(super::tunnel_addr(0))
    }

    fn max_transmit_segments(&self) -> usize {
        // quinn's own batch ceiling: fewer wake-ups of the writer per packet.
        10
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

/// A relay's socket: its UDP socket, plus every tunnel the HTTPS port accepted, each
/// under an address of its own ([`super::tunnel_addr`]), so that quinn serves a
/// tunnelled agent or client exactly as one on UDP. A full tunnel queue drops the
/// datagram (one slow tunnel must never hold up the others).
pub(crate) struct RelaySocket {
    udp: Arc<dyn AsyncUdpSocket>,
    tunnels: Arc<TunnelTable>,
    inbound: Received,
    /// Which source is read first, alternating, so that neither starves the other.
    tunnels_first: AtomicBool,
}

impl RelaySocket {
    pub(crate) fn new(
        udp: Arc<dyn AsyncUdpSocket>,
        tunnels: Arc<TunnelTable>,
        inbound: mpsc::Receiver<(SocketAddr, Bytes)>,
    ) -> RelaySocket {
        RelaySocket {
            udp,
            tunnels,
            inbound: Mutex::new(inbound),
            tunnels_first: AtomicBool::new(false),
        }
    }
}

impl fmt::Debug for RelaySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelaySocket")
            .field("udp", &self.udp)
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for RelaySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.udp.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if !super::is_tunnel_addr(transmit.destination) {
            return self.udp.try_send(transmit);
        }
        let Some(queue) = self.tunnels.queue(transmit.destination) else {
            // The tunnel ended; the relay closes its connection (see `Ingress::closed`).
            return Ok(());
        };
        for segment in segments(transmit) {
            if queue.push(Bytes::copy_from_slice(segment)).is_err() {
                self.tunnels.dropped();
                break;
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let tunnels_first = self.tunnels_first.fetch_xor(true, Ordering::Relaxed);
        if !tunnels_first {
            if let Poll::Ready(r) = self.udp.poll_recv(cx, bufs, meta) {
                return Poll::Ready(r);
            }
        }
        // The sender side lives in the ingress, which lives as long as the relay.
        if let Some(n @ 1..) = poll_tunnels(&self.inbound, cx, bufs, meta) {
            return Poll::Ready(Ok(n));
        }
        if tunnels_first {
            return self.udp.poll_recv(cx, bufs, meta);
        }
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.udp.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.udp.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.udp.may_fragment()
    }
}
