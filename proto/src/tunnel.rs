//! The datagram tunnel: QUIC packets carried over a byte stream (TLS on TCP) where UDP
//! does not get through.
//!
//! Above the tunnel nothing changes: the agent's or CLI's QUIC connection to the relay
//! is the same connection, with the same hello, streams, error codes and limits; only
//! its datagrams travel inside a TLS stream instead of UDP. Two forms reach a relay:
//!
//! - direct: TLS to the relay's HTTPS port with ALPN `ferry-tunnel/1`
//!   ([`crate::alpn::TUNNEL`]), then datagram frames (below) both ways;
//! - through an L7 proxy or load balancer that terminates TLS: a WebSocket upgrade of
//!   `GET` [`PATH`] with subprotocol [`WS_PROTOCOL`], then one binary message per
//!   datagram (WebSocket already frames them).
//!
//! # Datagram frame (direct form)
//! ```text
//! +----------------+------------------------+
//! | length: u16 BE | datagram: length bytes |
//! +----------------+------------------------+
//! ```
//! A length of 0 or above [`MAX_DATAGRAM`] is a protocol error: the tunnel is closed.
//!
//! # History
//! - 1 (ferry 0.1): this layout.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The path of the WebSocket form on every relay name.
pub const PATH: &str = "/.ferry/tunnel";

/// The WebSocket subprotocol of the tunnel (`Sec-WebSocket-Protocol`).
pub const WS_PROTOCOL: &str = "ferry-tunnel.1";

/// The largest datagram a tunnel carries: the relay's largest QUIC packet (what a
/// jumbo-frame network carries). A peer never sends more than the relay says it
/// receives, so anything larger is garbage.
pub const MAX_DATAGRAM: usize = 9000 - 48;

/// Bytes of framing before each datagram.
pub const HEADER_LEN: usize = 2;

/// Why a tunnel's byte stream is not a sequence of datagram frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelFrameError {
    #[error("tunnel frame announces {0} bytes (allowed: 1..={MAX_DATAGRAM})")]
    BadLength(usize),
}

/// Appends one framed datagram to `buf`.
///
/// # Panics
/// When `datagram` is empty or longer than [`MAX_DATAGRAM`]: our own QUIC stack never
/// makes such a packet, and the sender checks before calling.
pub fn encode(datagram: &[u8], buf: &mut impl BufMut) {
    assert!(
        (1..=MAX_DATAGRAM).contains(&datagram.len()),
        "datagram of {} bytes cannot be framed",
        datagram.len()
    );
    buf.put_u16(datagram.len() as u16);
    buf.put_slice(datagram);
}

/// Takes the next whole datagram off the front of `buf`: `Ok(None)` when more bytes are
/// needed. Bytes past the datagram stay in `buf`.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Bytes>, TunnelFrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
    if len == 0 || len > MAX_DATAGRAM {
        return Err(TunnelFrameError::BadLength(len));
    }
    if buf.len() < HEADER_LEN + len {
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    Ok(Some(buf.split_to(len).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_and_oversized_lengths_are_refused() {
        let mut zero = BytesMut::from(&[0u8, 0, 1][..]);
        assert_eq!(decode(&mut zero), Err(TunnelFrameError::BadLength(0)));
        let mut big = BytesMut::new();
        big.put_u16(MAX_DATAGRAM as u16 + 1);
        assert!(decode(&mut big).is_err());
    }

    proptest! {
        /// Any sequence of datagrams, framed and cut into arbitrary pieces, decodes
        /// back to the same datagrams in order.
        #[test]
        fn frames_survive_any_split(
            datagrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..3000), 0..20),
            cuts in proptest::collection::vec(1usize..5000, 0..40),
        ) {
            let mut wire = BytesMut::new();
            for d in &datagrams {
                encode(d, &mut wire);
            }
            let wire = wire.freeze();
            let mut got = Vec::new();
            let mut buf = BytesMut::new();
            let mut at = 0;
            let mut cuts = cuts.into_iter();
            while at < wire.len() {
                let step = cuts.next().unwrap_or(wire.len()).min(wire.len() - at);
                buf.extend_from_slice(&wire[at..at + step]);
                at += step;
                while let Some(d) = decode(&mut buf).unwrap() {
                    got.push(d.to_vec());
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, datagrams);
        }

        /// Garbage never panics the decoder.
        #[test]
        fn garbage_is_an_error_or_a_datagram(bytes in proptest::collection::vec(any::<u8>(), 0..20000)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode(&mut buf) {}
        }
    }
}
