//! Notices a relay sends an agent on the agent's control stream (the first bi-stream,
//! which carried the hello), each as one `[len: u16 BE][body]` frame.
//!
//! ```text
//! Notice = 0x01 reconnect_after_ms:u32    ; GoAway: this relay is draining
//! ```
//!
//! **GoAway** tells the agent to move: it should connect to its new placement (the
//! ring without this relay) after waiting `reconnect_after_ms` (jittered by the relay
//! so that thousands of agents do not reconnect in the same instant), and drop this
//! connection only once the new one is up (make-before-break) and its open streams
//! have finished. Unknown notice tags are a decode error; an agent ignores notices it
//! cannot decode rather than dropping the connection (added in protocol version 1).

use bytes::{BufMut, Bytes};

use crate::codec::{expect_end, get_u32, get_u8, DecodeError};

const NOTICE_GO_AWAY: u8 = 0x01;

/// The longest reconnect hint a relay may send; larger values are clamped on decode.
pub const MAX_RECONNECT_HINT_MS: u32 = 60_000;

/// A relay-to-agent notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The relay is draining: move, after waiting about this long.
    GoAway { reconnect_after_ms: u32 },
}

impl Notice {
    pub fn encoded_len(&self) -> usize {
        match self {
            Notice::GoAway { .. } => 5,
        }
    }

    pub fn encode(&self, buf: &mut impl BufMut) {
        match self {
            Notice::GoAway { reconnect_after_ms } => {
                buf.put_u8(NOTICE_GO_AWAY);
                buf.put_u32(*reconnect_after_ms);
            }
        }
    }

    pub fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let notice = match get_u8(buf, "notice")? {
            NOTICE_GO_AWAY => {
                let ms = get_u32(buf, "reconnect hint")?;
                Notice::GoAway {
                    reconnect_after_ms: ms.min(MAX_RECONNECT_HINT_MS),
                }
            }
            tag => {
                return Err(DecodeError::UnknownTag {
                    field: "notice",
                    tag,
                })
            }
        };
        expect_end(buf)?;
        Ok(notice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_framed, Frame};

    #[test]
    fn go_away_round_trips_and_clamps_the_hint() {
        let n = Notice::GoAway {
            reconnect_after_ms: 1234,
        };
        let bytes = n.to_framed_bytes();
        assert_eq!(bytes, [0, 5, 1, 0, 0, 0x04, 0xd2]);
        assert_eq!(decode_framed::<Notice>(&mut Bytes::from(bytes)).unwrap(), n);
        let huge = Bytes::from_static(&[0, 5, 1, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            decode_framed::<Notice>(&mut huge.clone()).unwrap(),
            Notice::GoAway {
                reconnect_after_ms: MAX_RECONNECT_HINT_MS
            }
        );
        for bad in [
            &[0u8, 1, 9][..],
            &[0, 3, 1, 0, 0],
            &[0, 6, 1, 0, 0, 0, 0, 0],
        ] {
            assert!(decode_framed::<Notice>(&mut Bytes::copy_from_slice(bad)).is_err());
        }
    }
}
