//! The frames of protocol version 1.
//!
//! Every frame travels as `[len: u16 BE][body]` (see [`crate::codec`]). A connection's
//! first bi-stream carries the [`Hello`] and its [`Reply`]; every later stream starts
//! with a [`StreamHeader`], is answered with a [`Reply`], and then carries raw bytes
//! both ways until each side finishes (half-close is preserved end to end).
//!
//! ```text
//! Hello        = version:u8  token_len:u16  token:[u8; token_len]
//! StreamHeader = version:u8  hops:u8  label_len:u8  label:[u8; label_len]  target
//! target       = 0x01 port:u16          ; a TCP port on the workspace's loopback
//!              | 0x02                    ; the workspace's SSH service
//!              | 0x03 cols:u16 rows:u16  ; a shell on a new PTY (see crate::terminal)
//!              | 0x04                    ; trace: the relays answer with the path's hops
//!                                        ;   and their RTTs (see crate::trace)
//! Reply        = 0x00                    ; ok, raw bytes follow
//!              | 0x01 code:u16 msg_len:u16 msg:[u8; msg_len]   ; error, stream ends
//! ```

use bytes::{BufMut, Bytes};

use crate::codec::{self, check_version, expect_end, get_str, get_u16, get_u8, DecodeError};
use crate::{ErrorCode, WorkspaceLabel, PROTOCOL_VERSION};

/// Longest message we put in an error frame; longer ones are cut at a char boundary.
pub const MAX_ERROR_MESSAGE_LEN: usize = 1024;

/// The most relay-to-relay hops a stream may take before it is refused (loop guard).
pub const MAX_HOPS: u8 = 2;

/// Authenticates a connection: the first frame on its first bi-stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// A signed token (see [`crate::token`]); its kind must fit the ALPN.
    pub token: String,
}

impl Hello {
    pub fn encoded_len(&self) -> usize {
        1 + 2 + self.token.len()
    }

    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_u8(PROTOCOL_VERSION);
        buf.put_u16(self.token.len() as u16);
        buf.put_slice(self.token.as_bytes());
    }

    pub fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        check_version(get_u8(buf, "version")?)?;
        let len = usize::from(get_u16(buf, "token length")?);
        if len > crate::token::MAX_TOKEN_LEN {
            return Err(DecodeError::TooLong {
                len,
                max: crate::token::MAX_TOKEN_LEN,
            });
        }
        let token = get_str(buf, len, "token")?;
        expect_end(buf)?;
        Ok(Hello { token })
    }
}

/// What a data stream is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// A TCP port on the workspace's loopback interface.
    Port(u16),
    /// The workspace's SSH server, wherever the agent was told it listens.
    Ssh,
    /// A login shell on a new PTY of this size.
    Terminal { cols: u16, rows: u16 },
    /// No service: the relays on the path answer with a [`crate::TraceReport`].
    Trace,
}

const TARGET_PORT: u8 = 0x01;
const TARGET_SSH: u8 = 0x02;
const TARGET_TERMINAL: u8 = 0x03;
const TARGET_TRACE: u8 = 0x04;

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Port(p) => write!(f, "port {p}"),
            Target::Ssh => f.write_str("ssh"),
            Target::Terminal { cols, rows } => write!(f, "terminal {cols}x{rows}"),
            Target::Trace => f.write_str("trace"),
        }
    }
}

/// The first frame of every data stream: which workspace, which service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    /// How many relay-to-relay hops this stream has taken so far.
    pub hops: u8,
    pub workspace: WorkspaceLabel,
    pub target: Target,
}

impl StreamHeader {
    pub fn new(workspace: WorkspaceLabel, target: Target) -> Self {
        StreamHeader {
            hops: 0,
            workspace,
            target,
        }
    }

    pub fn encoded_len(&self) -> usize {
        3 + self.workspace.as_str().len()
            + match self.target {
                Target::Port(_) => 3,
                Target::Ssh | Target::Trace => 1,
                Target::Terminal { .. } => 5,
            }
    }

    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_u8(PROTOCOL_VERSION);
        buf.put_u8(self.hops);
        let label = self.workspace.as_str();
        buf.put_u8(label.len() as u8);
        buf.put_slice(label.as_bytes());
        match self.target {
            Target::Port(p) => {
                buf.put_u8(TARGET_PORT);
                buf.put_u16(p);
            }
            Target::Ssh => buf.put_u8(TARGET_SSH),
            Target::Trace => buf.put_u8(TARGET_TRACE),
            Target::Terminal { cols, rows } => {
                buf.put_u8(TARGET_TERMINAL);
                buf.put_u16(cols);
                buf.put_u16(rows);
            }
        }
    }

    pub fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        check_version(get_u8(buf, "version")?)?;
        let hops = get_u8(buf, "hops")?;
        if hops > MAX_HOPS {
            return Err(DecodeError::Invalid {
                field: "hops",
                reason: format!("{hops} relay hops exceeds the limit of {MAX_HOPS}"),
            });
        }
        let len = usize::from(get_u8(buf, "workspace length")?);
        let raw = get_str(buf, len, "workspace")?;
        let workspace = WorkspaceLabel::parse(&raw).map_err(|e| DecodeError::Invalid {
            field: "workspace",
            reason: e.to_string(),
        })?;
        let target = match get_u8(buf, "target")? {
            TARGET_PORT => {
                let port = get_u16(buf, "port")?;
                if port == 0 {
                    return Err(DecodeError::Invalid {
                        field: "port",
                        reason: "port 0".into(),
                    });
                }
                Target::Port(port)
            }
            TARGET_SSH => Target::Ssh,
            TARGET_TRACE => Target::Trace,
            TARGET_TERMINAL => {
                let cols = get_u16(buf, "columns")?;
                let rows = get_u16(buf, "rows")?;
                if cols == 0 || rows == 0 {
                    return Err(DecodeError::Invalid {
                        field: "terminal size",
                        reason: format!("{cols}x{rows}"),
                    });
                }
                Target::Terminal { cols, rows }
            }
            tag => {
                return Err(DecodeError::UnknownTag {
                    field: "target",
                    tag,
                })
            }
        };
        expect_end(buf)?;
        Ok(StreamHeader {
            hops,
            workspace,
            target,
        })
    }
}

/// A typed error: a code for programs and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorFrame {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        if message.len() > MAX_ERROR_MESSAGE_LEN {
            let mut cut = MAX_ERROR_MESSAGE_LEN;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        ErrorFrame { code, message }
    }
}

impl std::fmt::Display for ErrorFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ErrorFrame {}

/// The answer to a hello or a stream header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Error(ErrorFrame),
}

const REPLY_OK: u8 = 0x00;
const REPLY_ERROR: u8 = 0x01;

impl Reply {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Reply::Error(ErrorFrame::new(code, message))
    }

    pub fn encoded_len(&self) -> usize {
        match self {
            Reply::Ok => 1,
            Reply::Error(e) => 1 + 2 + 2 + e.message.len(),
        }
    }

    pub fn encode(&self, buf: &mut impl BufMut) {
        match self {
            Reply::Ok => buf.put_u8(REPLY_OK),
            Reply::Error(e) => {
                buf.put_u8(REPLY_ERROR);
                buf.put_u16(e.code.to_u16());
                buf.put_u16(e.message.len() as u16);
                buf.put_slice(e.message.as_bytes());
            }
        }
    }

    pub fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let reply = match get_u8(buf, "reply")? {
            REPLY_OK => Reply::Ok,
            REPLY_ERROR => {
                let code = ErrorCode::from_u16(get_u16(buf, "error code")?);
                let len = usize::from(get_u16(buf, "error message length")?);
                if len > MAX_ERROR_MESSAGE_LEN {
                    return Err(DecodeError::TooLong {
                        len,
                        max: MAX_ERROR_MESSAGE_LEN,
                    });
                }
                let message = get_str(buf, len, "error message")?;
                Reply::Error(ErrorFrame { code, message })
            }
            tag => {
                return Err(DecodeError::UnknownTag {
                    field: "reply",
                    tag,
                })
            }
        };
        expect_end(buf)?;
        Ok(reply)
    }
}

/// Something that travels as one length-prefixed frame.
pub trait Frame: Sized {
    fn encoded_len(&self) -> usize;
    fn encode(&self, buf: &mut impl BufMut);
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError>;

    /// The frame with its `[len: u16]` prefix, ready to write.
    fn to_framed_bytes(&self) -> Vec<u8> {
        let len = self.encoded_len();
        let mut out = Vec::with_capacity(2 + len);
        out.put_u16(len as u16);
        self.encode(&mut out);
        out
    }
}

macro_rules! impl_frame {
    ($($t:ty),*) => {$(
        impl Frame for $t {
            fn encoded_len(&self) -> usize { <$t>::encoded_len(self) }
            fn encode(&self, buf: &mut impl BufMut) { <$t>::encode(self, buf) }
            fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> { <$t>::decode(buf) }
        }
    )*};
}
impl_frame!(
    Hello,
    StreamHeader,
    Reply,
    crate::notice::Notice,
    crate::trace::TraceReport
);

/// Decodes one complete framed message (`[len][body]`) held entirely in `buf`; used by
/// the fuzz targets and by tests that feed raw bytes.
pub fn decode_framed<F: Frame>(buf: &mut Bytes) -> Result<F, DecodeError> {
    let len = codec::check_frame_len(get_u16(buf, "frame length")?)?;
    if buf.len() < len {
        return Err(DecodeError::Truncated {
            field: "frame body",
        });
    }
    let mut body = buf.split_to(len);
    F::decode(&mut body)
}

#[cfg(test)]
mod tests;
