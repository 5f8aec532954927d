//! The trace report: how a `Target::Trace` stream is answered (`ferry status`).
//!
//! A client opens a stream with `target = trace` for a workspace. The relay routes it
//! like any stream but, instead of opening one to the agent, answers `Reply::Ok`
//! followed by one [`TraceReport`]: the hops from itself to the agent, each with the
//! RTT its QUIC connection measured. A relay that forwards the trace over the mesh
//! puts its own hop (to the peer) in front of the peer's report. The client adds the
//! hop it measured itself (client to relay).
//!
//! ```text
//! TraceReport = version:u8  count:u8  hop*count          ; count <= MAX_TRACE_HOPS
//! hop         = from_len:u8  from:[u8; from_len]          ; e.g. "relay:eu-1"
//!               to_len:u8    to:[u8; to_len]              ; e.g. "agent:demo--dev"
//!               rtt_us:u32                                ; smoothed RTT, microseconds
//! ```

use bytes::{BufMut, Bytes};

use crate::codec::{check_version, expect_end, get_str, get_u32, get_u8, DecodeError};
use crate::PROTOCOL_VERSION;

/// More hops than a stream can take (client, two relay hops, agent) with room to spare.
pub const MAX_TRACE_HOPS: usize = 8;
/// Longest endpoint name in a hop (`relay:NAME` or `agent:LABEL`).
pub const MAX_HOP_NAME: usize = 200;

/// One hop of a path and its round-trip time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHop {
    pub from: String,
    pub to: String,
    pub rtt_us: u32,
}

impl TraceHop {
    /// A hop; names longer than [`MAX_HOP_NAME`] are cut at a char boundary.
    pub fn new(from: impl Into<String>, to: impl Into<String>, rtt: std::time::Duration) -> Self {
        TraceHop {
            from: cut(from.into()),
            to: cut(to.into()),
            rtt_us: u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX),
        }
    }
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_HOP_NAME {
        let mut at = MAX_HOP_NAME;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
    s
}

/// The hops from the answering relay to the agent, in path order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TraceReport {
    pub hops: Vec<TraceHop>,
}

impl TraceReport {
    /// Puts `hop` in front, keeping at most [`MAX_TRACE_HOPS`] (the far end is dropped).
    pub fn prepend(&mut self, hop: TraceHop) {
        self.hops.insert(0, hop);
        self.hops.truncate(MAX_TRACE_HOPS);
    }

    pub fn encoded_len(&self) -> usize {
        let name_len = |s: &String| cut(s.clone()).len();
        2 + self
            .hops
            .iter()
            .take(MAX_TRACE_HOPS)
            .map(|h| 1 + name_len(&h.from) + 1 + name_len(&h.to) + 4)
            .sum::<usize>()
    }

    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_u8(PROTOCOL_VERSION);
        let hops = &self.hops[..self.hops.len().min(MAX_TRACE_HOPS)];
        buf.put_u8(hops.len() as u8);
        for hop in hops {
            for name in [&hop.from, &hop.to] {
                // Names built with `TraceHop::new` fit; a longer one is cut here too,
                // at a char boundary.
                let name = cut(name.clone());
                buf.put_u8(name.len() as u8);
                buf.put_slice(name.as_bytes());
            }
            buf.put_u32(hop.rtt_us);
        }
    }

    pub fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        check_version(get_u8(buf, "version")?)?;
        let count = usize::from(get_u8(buf, "hop count")?);
        if count > MAX_TRACE_HOPS {
            return Err(DecodeError::TooLong {
                len: count,
                max: MAX_TRACE_HOPS,
            });
        }
        let mut hops = Vec::with_capacity(count);
        for _ in 0..count {
            let from = get_name(buf, "hop from")?;
            let to = get_name(buf, "hop to")?;
            let rtt_us = get_u32(buf, "hop rtt")?;
            hops.push(TraceHop { from, to, rtt_us });
        }
        expect_end(buf)?;
        Ok(TraceReport { hops })
    }
}

fn get_name(buf: &mut Bytes, field: &'static str) -> Result<String, DecodeError> {
    let len = usize::from(get_u8(buf, field)?);
    if len > MAX_HOP_NAME {
        return Err(DecodeError::TooLong {
            len,
            max: MAX_HOP_NAME,
        });
    }
    get_str(buf, len, field)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::frame::{decode_framed, Frame};

    fn report() -> TraceReport {
        TraceReport {
            hops: vec![
                TraceHop::new("relay:us-1", "relay:eu-1", Duration::from_millis(70)),
                TraceHop::new("relay:eu-1", "agent:demo--dev", Duration::from_micros(1234)),
            ],
        }
    }

    #[test]
    fn round_trips() {
        let mut bytes = Bytes::from(report().to_framed_bytes());
        assert_eq!(decode_framed::<TraceReport>(&mut bytes).unwrap(), report());
    }

    #[test]
    fn refuses_truncated_oversized_and_trailing_input() {
        let mut body = Vec::new();
        report().encode(&mut body);
        for cut in 0..body.len() {
            let mut short = Bytes::from(body[..cut].to_vec());
            assert!(TraceReport::decode(&mut short).is_err(), "cut at {cut}");
        }
        let mut long = body.clone();
        long.push(0);
        assert!(matches!(
            TraceReport::decode(&mut Bytes::from(long)),
            Err(DecodeError::TrailingBytes { .. })
        ));
        let mut many = Bytes::from(vec![PROTOCOL_VERSION, 200]);
        assert!(matches!(
            TraceReport::decode(&mut many),
            Err(DecodeError::TooLong { .. })
        ));
        let mut bad_utf8 = Bytes::from(vec![PROTOCOL_VERSION, 1, 1, 0xff, 0, 0, 0, 0, 0]);
        assert!(TraceReport::decode(&mut bad_utf8).is_err());
        let mut long_name = vec![PROTOCOL_VERSION, 1, 250];
        long_name.extend([b'a'; 250]);
        long_name.extend([0, 0, 0, 0, 0]);
        assert!(matches!(
            TraceReport::decode(&mut Bytes::from(long_name)),
            Err(DecodeError::TooLong { .. })
        ));
    }

    #[test]
    fn long_names_and_too_many_hops_are_cut_not_refused() {
        let mut r = TraceReport::default();
        for i in 0..20 {
            r.prepend(TraceHop::new(
                "x".repeat(500),
                format!("hop {i}"),
                Duration::MAX,
            ));
        }
        assert_eq!(r.hops.len(), MAX_TRACE_HOPS);
        assert_eq!(r.hops[0].from.len(), MAX_HOP_NAME);
        assert_eq!(r.hops[0].rtt_us, u32::MAX);
        let mut bytes = Bytes::from(r.to_framed_bytes());
        assert_eq!(decode_framed::<TraceReport>(&mut bytes).unwrap(), r);
    }

    proptest! {
        /// Whatever decodes encodes back to the same bytes' meaning (the fuzz target's
        /// property, on the stable toolchain).
        #[test]
        fn arbitrary_bytes_never_panic_and_what_decodes_round_trips(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            if let Ok(r) = TraceReport::decode(&mut Bytes::from(bytes)) {
                let mut again = Bytes::from(r.to_framed_bytes());
                prop_assert_eq!(decode_framed::<TraceReport>(&mut again).unwrap(), r);
            }
        }

        #[test]
        fn any_hops_round_trip(
            hops in proptest::collection::vec(("\\PC{0,80}", "\\PC{0,80}", any::<u32>()), 0..12),
        ) {
            let mut r = TraceReport::default();
            for (from, to, rtt) in hops {
                r.hops.push(TraceHop { from: cut(from), to: cut(to), rtt_us: rtt });
            }
            r.hops.truncate(MAX_TRACE_HOPS);
            let mut bytes = Bytes::from(r.to_framed_bytes());
            prop_assert_eq!(decode_framed::<TraceReport>(&mut bytes).unwrap(), r);
        }
    }
}
