//! Small decoding primitives shared by every frame. Numbers from the wire are hostile:
//! every read checks the remaining length first and fails with a typed error.

use bytes::{Buf, Bytes};

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The buffer ended before the field did.
    #[error("frame truncated while reading {field}")]
    Truncated { field: &'static str },
    /// The peer speaks a protocol version we do not.
    #[error("unsupported protocol version {got} (this build speaks {supported})")]
    UnsupportedVersion { got: u8, supported: u8 },
    /// A tag byte names no known variant.
    #[error("unknown {field} tag {tag:#04x}")]
    UnknownTag { field: &'static str, tag: u8 },
    /// A field is present but its value is not allowed.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// Bytes were left over after the frame.
    #[error("{extra} trailing bytes after frame")]
    TrailingBytes { extra: usize },
    /// A length prefix exceeds what we accept.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLong { len: usize, max: usize },
}

pub(crate) fn get_u8(buf: &mut Bytes, field: &'static str) -> Result<u8, DecodeError> {
    if buf.remaining() < 1 {
        return Err(DecodeError::Truncated { field });
    }
    Ok(buf.get_u8())
}

pub(crate) fn get_u16(buf: &mut Bytes, field: &'static str) -> Result<u16, DecodeError> {
    if buf.remaining() < 2 {
        return Err(DecodeError::Truncated { field });
    }
    Ok(buf.get_u16())
}

/// Reads `len` bytes as UTF-8.
pub(crate) fn get_u32(buf: &mut Bytes, field: &'static str) -> Result<u32, DecodeError> {
    if buf.remaining() < 4 {
        return Err(DecodeError::Truncated { field });
    }
    Ok(buf.get_u32())
}

pub(crate) fn get_str(
    buf: &mut Bytes,
    len: usize,
    field: &'static str,
) -> Result<String, DecodeError> {
    if buf.remaining() < len {
        return Err(DecodeError::Truncated { field });
    }
    let raw = buf.split_to(len);
    String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::Invalid {
        field,
        reason: "not UTF-8".into(),
    })
}

pub(crate) fn expect_end(buf: &Bytes) -> Result<(), DecodeError> {
    if buf.has_remaining() {
        return Err(DecodeError::TrailingBytes {
            extra: buf.remaining(),
        });
    }
    Ok(())
}

pub(crate) fn check_version(got: u8) -> Result<(), DecodeError> {
    if got != crate::PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            got,
            supported: crate::PROTOCOL_VERSION,
        });
    }
    Ok(())
}

/// Largest frame body we accept. A stream header is tens of bytes and a hello carries
/// one token (bounded by [`crate::token::MAX_TOKEN_LEN`]); anything bigger is an attack
/// or a bug, and refusing it early bounds what one stream can make us buffer.
pub const MAX_FRAME_LEN: usize = 8 * 1024;

/// Checks a frame length prefix read from the wire.
pub fn check_frame_len(len: u16) -> Result<usize, DecodeError> {
    let len = usize::from(len);
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::TooLong {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len)
}
