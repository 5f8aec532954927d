//! The two tasks of a tunnel, run as one future: datagrams read from the byte stream
//! (or WebSocket) go to quinn's receive side; datagrams quinn sent wait in a
//! [`DatagramQueue`] and are written out in batches.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use ferry_proto::tunnel::{self as wire, MAX_DATAGRAM};

use super::queue::DatagramQueue;

/// Datagrams arriving from tunnels, with the (tunnel) address they came from.
pub(crate) type Inbound = mpsc::Sender<(SocketAddr, Bytes)>;

/// How a tunnel ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipeError {
    #[error("tunnel stream: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] wire::TunnelFrameError),
    #[error("WebSocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("WebSocket message of {0} bytes is not a tunnel datagram")]
    BadMessage(usize),
}

/// At most this much is taken off the queue for one write: large enough to fill TLS
/// records and amortise the syscall, small enough to keep the first packet's wait short.
const WRITE_BATCH: usize = 256 * 1024;

/// Carries datagrams over a plain byte stream (the direct TLS form) until either side
/// ends. `Ok` when the peer closed the stream cleanly.
pub(crate) async fn run_stream<S>(
    stream: S,
    source: SocketAddr,
    inbound: Inbound,
    outbound: Arc<DatagramQueue>,
) -> Result<(), PipeError>
where
    S: AsyncRead + AsyncWrite + Send,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let read = async {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            if buf.capacity() - buf.len() < MAX_DATAGRAM + wire::HEADER_LEN {
                buf.reserve(64 * 1024);
            }
            if reader.read_buf(&mut buf).await? == 0 {
                return Ok::<(), PipeError>(());
            }
            while let Some(datagram) = wire::decode(&mut buf)? {
                if inbound.send((source, datagram)).await.is_err() {
                    return Ok(());
                }
            }
        }
    };
    let write = async {
        let mut batch = Vec::new();
        let mut out = BytesMut::new();
        while outbound.pop_into(&mut batch, WRITE_BATCH).await {
            for datagram in batch.drain(..) {
                wire::encode(&datagram, &mut out);
            }
            writer.write_all(&out).await?;
            writer.flush().await?;
            out.clear();
        }
        let _ = writer.shutdown().await;
        Ok::<(), PipeError>(())
    };
    let result = tokio::select! {
        r = read => r,
        r = write => r,
    };
    outbound.close();
    result
}

/// Carries datagrams as binary WebSocket messages (the form that passes L7 proxies).
pub(crate) async fn run_websocket<S>(
    ws: WebSocketStream<S>,
    source: SocketAddr,
    inbound: Inbound,
    outbound: Arc<DatagramQueue>,
) -> Result<(), PipeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut sink, mut messages) = ws.split();
    let read = async {
        while let Some(message) = messages.next().await {
            match message? {
                Message::Binary(data) if (1..=MAX_DATAGRAM).contains(&data.len()) => {
                    if inbound.send((source, Bytes::from(data))).await.is_err() {
                        return Ok(());
                    }
                }
                Message::Binary(data) => return Err(PipeError::BadMessage(data.len())),
                Message::Text(text) => return Err(PipeError::BadMessage(text.len())),
                Message::Close(_) => return Ok(()),
                // Pings are answered by tungstenite itself.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        Ok::<(), PipeError>(())
    };
    let write = async {
        let mut batch = Vec::new();
        while outbound.pop_into(&mut batch, WRITE_BATCH).await {
            for datagram in batch.drain(..) {
                sink.feed(Message::Binary(datagram.to_vec())).await?;
            }
            sink.flush().await?;
        }
        let _ = sink.close().await;
        Ok::<(), PipeError>(())
    };
    let result = tokio::select! {
        r = read => r,
        r = write => r,
    };
    outbound.close();
    result
}
