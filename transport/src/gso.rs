//! A UDP socket for quinn that splits segmentation-offload (GSO) writes the kernel
//! would refuse.
//!
//! quinn hands the socket up to 10 packets in one GSO write. The kernel takes at most
//! 64 KiB in one write and refuses a larger one with EMSGSIZE, which quinn-udp drops
//! without a word (it expects that error only for MTU probes; quinn-rs/quinn#2201).
//! With packets over 6548 bytes, as on a jumbo-frame network (8952), every full batch
//! would vanish. Splitting the write here lets mesh links use such packets.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// The most UDP payload one write may carry: 65 535 bytes of IP payload length, less
/// the UDP header, and less the IPv6 header, which the kernel counts against it too
/// (an IPv4 write may carry 20 bytes more; one bound for both is simpler).
const MAX_WRITE_PAYLOAD: usize = 65_535 - 40 - 8;

/// Wraps the runtime's socket; see the module documentation.
pub struct SplitGso {
    inner: Arc<dyn AsyncUdpSocket>,
}

impl SplitGso {
    pub fn new(inner: Arc<dyn AsyncUdpSocket>) -> Arc<SplitGso> {
        Arc::new(SplitGso { inner })
    }
}

impl fmt::Debug for SplitGso {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitGso")
            .field("inner", &self.inner)
            .finish()
    }
}

/// How many segments of `segment_size` bytes fit in one write.
fn segments_per_write(segment_size: usize) -> usize {
    (MAX_WRITE_PAYLOAD / segment_size.max(1)).max(1)
}

impl AsyncUdpSocket for SplitGso {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let segment_size = match transmit.segment_size {
            Some(size) if transmit.contents.len() > MAX_WRITE_PAYLOAD => size,
            _ => return self.inner.try_send(transmit),
        };
        let chunk = segments_per_write(segment_size) * segment_size;
        for (i, contents) in transmit.contents.chunks(chunk).enumerate() {
            let part = Transmit {
                contents,
                segment_size: (contents.len() > segment_size).then_some(segment_size),
                ..*transmit
            };
            match self.inner.try_send(&part) {
                Ok(()) => {}
                // Nothing sent yet: quinn keeps the transmit and retries it whole.
                Err(e) if i == 0 => return Err(e),
                // Part of the batch is out. Retrying would send that part twice, so the
                // rest counts as lost, as a full socket buffer would have dropped it;
                // QUIC's loss recovery resends it.
                Err(e) => {
                    tracing::trace!(error = %e, "GSO write cut short");
                    return Ok(());
                }
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
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::Runtime;

    /// Ten jumbo-sized segments in one transmit, as quinn batches them, sent through
    /// a real socket on loopback: every datagram must arrive, whole. The runtime's
    /// socket alone loses all ten (the kernel refuses the 89 520-byte write).
    #[tokio::test]
    async fn an_oversized_segmentation_write_arrives_in_full() {
        const SEGMENT: usize = 8952;
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let contents: Vec<u8> = (0..10 * SEGMENT).map(|i| (i / SEGMENT) as u8).collect();
        let transmit = Transmit {
            destination: receiver.local_addr().unwrap(),
            ecn: None,
            contents: &contents,
            segment_size: Some(SEGMENT),
            src_ip: None,
        };

        let runtime = quinn::TokioRuntime;
        let sender = |socket| runtime.wrap_udp_socket(socket).unwrap();
        let plain = sender(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        assert!(
            plain.max_transmit_segments() >= 10,
            "this kernel has no UDP segmentation offload"
        );
        send(plain, &transmit).await;
        let split = SplitGso::new(sender(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()));
        send(split.clone(), &transmit).await;

        let mut buf = vec![0u8; 65_536];
        for index in 0..10u8 {
            let (len, from) = receiver.recv_from(&mut buf).expect("a datagram");
            assert_eq!(
                from,
                split.local_addr().unwrap(),
                "only the split write arrives"
            );
            assert_eq!(len, SEGMENT);
            assert!(
                buf[..len].iter().all(|&b| b == index),
                "segment {index} intact"
            );
        }
        receiver.set_nonblocking(true).unwrap();
        assert!(
            receiver.recv_from(&mut buf).is_err(),
            "no more than ten datagrams"
        );
    }

    /// Sends as quinn does: waits until the socket is writable, then tries.
    async fn send(socket: Arc<dyn AsyncUdpSocket>, transmit: &Transmit<'_>) {
        let mut poller = socket.clone().create_io_poller();
        loop {
            std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
                .await
                .unwrap();
            match socket.try_send(transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return result.unwrap(),
            }
        }
    }

    #[test]
    fn writes_carry_as_many_whole_segments_as_fit() {
        assert_eq!(segments_per_write(8952), 7);
        assert_eq!(segments_per_write(6548), 10);
        assert_eq!(segments_per_write(1452), 45);
        assert_eq!(segments_per_write(65_535), 1);
    }
}
