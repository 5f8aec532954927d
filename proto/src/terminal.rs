//! Frames on a terminal stream, after its [`crate::Reply::Ok`].
//!
//! The client → workspace direction is framed, so that keystrokes and window-size
//! changes travel in one ordered stream; the workspace → client direction is the raw
//! output of the PTY.
//!
//! ```text
//! TerminalFrame = 0x00 len:u16 data:[u8; len]     ; input bytes for the PTY
//!               | 0x01 0x00 0x04 cols:u16 rows:u16 ; the window was resized
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::DecodeError;

/// Largest data payload of one frame.
pub const MAX_TERMINAL_DATA: usize = 16 * 1024;

const DATA: u8 = 0x00;
const RESIZE: u8 = 0x01;

/// One frame of terminal input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TerminalFrame {
    Data(Bytes),
    Resize { cols: u16, rows: u16 },
}

impl TerminalFrame {
    pub fn encode(&self, buf: &mut impl BufMut) {
        match self {
            TerminalFrame::Data(data) => {
                debug_assert!(data.len() <= MAX_TERMINAL_DATA);
                buf.put_u8(DATA);
                buf.put_u16(data.len() as u16);
                buf.put_slice(data);
            }
            TerminalFrame::Resize { cols, rows } => {
                buf.put_u8(RESIZE);
                buf.put_u16(4);
                buf.put_u16(*cols);
                buf.put_u16(*rows);
            }
        }
    }

    /// Frames for `input`, split at [`MAX_TERMINAL_DATA`].
    pub fn encode_input(input: &[u8], buf: &mut impl BufMut) {
        for chunk in input.chunks(MAX_TERMINAL_DATA) {
            TerminalFrame::Data(Bytes::copy_from_slice(chunk)).encode(buf);
        }
    }

    /// Takes one complete frame off the front of `buf`; `Ok(None)` when more bytes are
    /// needed. A streaming decoder: call it again until it returns `None`.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Self>, DecodeError> {
        if buf.len() < 3 {
            return Ok(None);
        }
        let kind = buf[0];
        let len = usize::from(u16::from_be_bytes([buf[1], buf[2]]));
        match kind {
            DATA if len > MAX_TERMINAL_DATA => {
                return Err(DecodeError::TooLong {
                    len,
                    max: MAX_TERMINAL_DATA,
                })
            }
            RESIZE if len != 4 => {
                return Err(DecodeError::Invalid {
                    field: "resize",
                    reason: format!("length {len}, expected 4"),
                })
            }
            DATA | RESIZE => {}
            tag => {
                return Err(DecodeError::UnknownTag {
                    field: "terminal frame",
                    tag,
                })
            }
        }
        if buf.len() < 3 + len {
            return Ok(None);
        }
        buf.advance(3);
        let mut body = buf.split_to(len).freeze();
        Ok(Some(match kind {
            DATA => TerminalFrame::Data(body),
            _ => {
                let cols = body.get_u16();
                let rows = body.get_u16();
                if cols == 0 || rows == 0 {
                    return Err(DecodeError::Invalid {
                        field: "resize",
                        reason: "zero columns or rows".into(),
                    });
                }
                TerminalFrame::Resize { cols, rows }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn frames_round_trip_through_any_split(
            inputs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cols in 1u16.., rows in 1u16..,
            split in 0usize..4000,
        ) {
            let mut wire = BytesMut::new();
            let mut expected = Vec::new();
            for input in &inputs {
                let f = TerminalFrame::Data(Bytes::copy_from_slice(input));
                f.encode(&mut wire);
                expected.push(f);
            }
            let resize = TerminalFrame::Resize { cols, rows };
            resize.encode(&mut wire);
            expected.push(resize);
            // Feed the bytes in two pieces, as a stream may deliver them.
            let split = split.min(wire.len());
            let mut buf = BytesMut::from(&wire[..split]);
            let mut got = Vec::new();
            while let Some(f) = TerminalFrame::decode(&mut buf).unwrap() { got.push(f); }
            buf.extend_from_slice(&wire[split..]);
            while let Some(f) = TerminalFrame::decode(&mut buf).unwrap() { got.push(f); }
            prop_assert_eq!(got, expected);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn garbage_is_an_error_or_a_wait_never_a_panic(raw in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut buf = BytesMut::from(&raw[..]);
            while let Ok(Some(_)) = TerminalFrame::decode(&mut buf) {}
        }
    }

    #[test]
    fn bad_frames_are_refused() {
        for raw in [
            &[0x07, 0, 0][..],
            &[0x01, 0, 3, 0, 0, 0],
            &[0x01, 0, 4, 0, 0, 0, 5],
            &[0x00, 0xff, 0xff],
        ] {
            assert!(
                TerminalFrame::decode(&mut BytesMut::from(raw)).is_err(),
                "{raw:?}"
            );
        }
    }
}
