//! The dialing side of ferry's QUIC protocol: connect, say hello with a token, open
//! data streams with a header, and read the relay's typed answer to each.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_proto::{ErrorCode, ErrorFrame, Hello, Reply, StreamHeader};
use quinn::{Connection, Endpoint, RecvStream, SendStream};

use crate::frame_io::{read_frame, write_frame, FrameError};

/// How long a QUIC handshake may take. Without it a dial to a dead relay waits for
/// the whole idle timeout; a few seconds is many round trips even across the world.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a peer may take to answer a hello.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client waits for a relay to answer a stream header. Longer than the
/// relay's own wait for the agent ([`AGENT_REPLY_TIMEOUT`]), so that the client hears
/// the relay's reason instead of timing out first.
pub const STREAM_REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a relay waits for an agent to answer a stream header; longer than the
/// agent's own connect timeout to the target, so the agent's reason wins.
pub const AGENT_REPLY_TIMEOUT: Duration = Duration::from_secs(8);

/// How long a relay waits for a mesh peer to answer a stream header it forwarded with
/// hop count `hops`: longer than the peer's own wait further down the chain (its agent,
/// or another hop), and at most 11 s, under the client's [`STREAM_REPLY_TIMEOUT`].
pub fn mesh_reply_timeout(hops: u8) -> Duration {
    let left = u32::from(ferry_proto::frame::MAX_HOPS.saturating_sub(hops)) + 1;
    AGENT_REPLY_TIMEOUT + Duration::from_millis(1500) * left
}

/// Why a connection to a relay could not be established.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    #[error("cannot start a connection to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectError,
    },
    #[error("connection to {addr} failed: {source}")]
    Connection {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error("relay {addr} did not answer the hello: {source}")]
    Hello {
        addr: SocketAddr,
        #[source]
        source: FrameError,
    },
    #[error(
        "no QUIC handshake with {addr} within {HANDSHAKE_TIMEOUT:?} (relay down, or UDP blocked?)"
    )]
    HandshakeTimeout { addr: SocketAddr },
    #[error("relay {addr} did not answer the hello within {REPLY_TIMEOUT:?}")]
    Timeout { addr: SocketAddr },
    /// The relay refused us, with its reason.
    #[error("relay {addr} refused the connection: {frame}")]
    Refused { addr: SocketAddr, frame: ErrorFrame },
    #[error("cannot open a UDP endpoint: {0}")]
    Endpoint(#[from] crate::quic::EndpointError),
}

impl DialError {
    /// The relay's error code, when it gave one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            DialError::Refused { frame, .. } => Some(frame.code),
            _ => None,
        }
    }
}

/// An authenticated connection to a relay, with its control stream (the first bi-stream,
/// which carried the hello and stays open for the relay's notices).
pub struct Session {
    pub conn: Connection,
    pub control: (SendStream, RecvStream),
}

/// Connects to a relay and authenticates with `token`.
pub async fn connect(
    endpoint: &Endpoint,
    addr: SocketAddr,
    server_name: &str,
    token: &str,
) -> Result<Session, DialError> {
    let connecting = endpoint
        .connect(addr, server_name)
        .map_err(|source| DialError::Connect { addr, source })?;
    finish_connect(connecting, addr, token).await
}

/// Like [`connect`], with a client configuration of its own (a relay's mesh links
/// present a client certificate; the endpoint's default configuration does not).
pub async fn connect_with(
    endpoint: &Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
    token: &str,
) -> Result<Session, DialError> {
    let connecting = endpoint
        .connect_with(config, addr, server_name)
        .map_err(|source| DialError::Connect { addr, source })?;
    finish_connect(connecting, addr, token).await
}

async fn finish_connect(
    connecting: quinn::Connecting,
    addr: SocketAddr,
    token: &str,
) -> Result<Session, DialError> {
    let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
        .await
        .map_err(|_| DialError::HandshakeTimeout { addr })?
        .map_err(|source| DialError::Connection { addr, source })?;
    let hello = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(std::io::Error::from)?;
        write_frame(
            &mut send,
            &Hello {
                token: token.to_string(),
            },
        )
        .await?;
        let reply: Reply = read_frame(&mut recv).await?;
        Ok::<_, FrameError>((reply, send, recv))
    };
    let (reply, send, recv) = tokio::time::timeout(REPLY_TIMEOUT, hello)
        .await
        .map_err(|_| DialError::Timeout { addr })?
        .map_err(|source| DialError::Hello { addr, source })?;
    match reply {
        Reply::Ok => Ok(Session {
            conn,
            control: (send, recv),
        }),
        Reply::Error(frame) => Err(DialError::Refused { addr, frame }),
    }
}

/// Why a data stream could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream failed before it was set up: {0}")]
    Frame(#[from] FrameError),
    #[error("no answer to the stream header within {0:?}")]
    Timeout(Duration),
    /// Nothing at all came back on the connection for this long: the far end is
    /// taken for dead ([`crate::liveness`]), though the connection is still open.
    #[error("the far end sent nothing for {0:?}")]
    Silent(Duration),
    /// The far end refused the stream, with its reason.
    #[error("{0}")]
    Refused(ErrorFrame),
}

impl StreamError {
    /// The far end's error code, when it gave one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            StreamError::Refused(frame) => Some(frame.code),
            _ => None,
        }
    }
}

/// Opens a data stream, sends its header and waits up to `timeout` for the answer.
pub async fn open_stream(
    conn: &Connection,
    header: &StreamHeader,
    timeout: Duration,
) -> Result<(SendStream, RecvStream), StreamError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, header)
        .await
        .map_err(FrameError::from)?;
    let reply: Reply = tokio::time::timeout(timeout, read_frame(&mut recv))
        .await
        .map_err(|_| StreamError::Timeout(timeout))??;
    match reply {
        Reply::Ok => Ok((send, recv)),
        Reply::Error(frame) => Err(StreamError::Refused(frame)),
    }
}

/// [`open_stream`], giving up as soon as the connection has carried nothing for
/// `quiet` ([`StreamError::Silent`]): a killed peer's connection stays open until its
/// idle timeout, and the stream would wait that long or the whole `timeout`. `quiet`
/// must exceed the connection's keep-alive interval, which is what a live but idle
/// peer may take to send something.
pub async fn open_stream_or_silence(
    conn: &Connection,
    header: &StreamHeader,
    timeout: Duration,
    quiet: Duration,
) -> Result<(SendStream, RecvStream), StreamError> {
    tokio::select! {
        answer = open_stream(conn, header, timeout) => answer,
        () = crate::liveness::silence(conn, quiet) => Err(StreamError::Silent(quiet)),
    }
}
