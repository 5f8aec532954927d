//! Splicing two byte streams both ways, with half-close preserved: when one side
//! finishes writing, the other side's write half is finished too, while the opposite
//! direction goes on. An abort (reset) on one side is passed on as an abort, never
//! as a clean end, so a truncated transfer cannot look complete.

use quinn::{RecvStream, SendStream, VarInt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How many bytes went each way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpliceStats {
    /// From the first side to the second.
    pub forward: u64,
    /// From the second side back to the first.
    pub backward: u64,
}

/// Application error code used when a stream is aborted because its partner failed.
pub const ABORTED: VarInt = VarInt::from_u32(1);

/// Biggest chunk read from QUIC at once; also the TCP read buffer size.
const CHUNK: usize = 64 * 1024;

/// Copies QUIC → QUIC without copying the bytes (chunks are reference-counted).
pub async fn quic_to_quic(mut from: RecvStream, mut to: SendStream) -> u64 {
    let mut total = 0u64;
    loop {
        match from.read_chunk(CHUNK, true).await {
            Ok(Some(chunk)) => {
                total += chunk.bytes.len() as u64;
                if to.write_chunk(chunk.bytes).await.is_err() {
                    let _ = from.stop(ABORTED);
                    return total;
                }
            }
            Ok(None) => {
                let _ = to.finish();
                return total;
            }
            Err(_) => {
                let _ = to.reset(ABORTED);
                return total;
            }
        }
    }
}

/// Copies QUIC → a byte sink (TCP, stdout), shutting the sink's write side at the end.
pub async fn quic_to_writer(mut from: RecvStream, mut to: impl AsyncWrite + Unpin) -> u64 {
    let mut total = 0u64;
    loop {
        match from.read_chunk(CHUNK, true).await {
            Ok(Some(chunk)) => {
                total += chunk.bytes.len() as u64;
                // Flush every chunk: standard output is line-buffered underneath, and
                // an interactive peer (SSH's ProxyCommand) waits for bytes that carry
                // no newline.
                let written = async {
                    to.write_all(&chunk.bytes).await?;
                    to.flush().await
                };
                if written.await.is_err() {
                    let _ = from.stop(ABORTED);
                    return total;
                }
            }
            Ok(None) => {
                let _ = to.flush().await;
                let _ = to.shutdown().await;
                return total;
            }
            Err(_) => {
                // The sender aborted: do not turn that into a clean EOF downstream.
                return total;
            }
        }
    }
}

/// Copies a byte source (TCP, stdin) → QUIC, finishing the stream at EOF.
pub async fn reader_to_quic(mut from: impl AsyncRead + Unpin, mut to: SendStream) -> u64 {
    let mut total = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) => {
                let _ = to.finish();
                return total;
            }
            Ok(n) => {
                total += n as u64;
                if to.write_all(&buf[..n]).await.is_err() {
                    return total;
                }
            }
            Err(_) => {
                let _ = to.reset(ABORTED);
                return total;
            }
        }
    }
}

/// Splices a QUIC stream with a TCP connection until both directions are done.
pub async fn quic_with_tcp(send: SendStream, recv: RecvStream, tcp: TcpStream) -> SpliceStats {
    let _ = tcp.set_nodelay(true);
    let (tcp_read, tcp_write) = tcp.into_split();
    let (forward, backward) = tokio::join!(
        quic_to_writer(recv, tcp_write),
        reader_to_quic(tcp_read, send)
    );
    SpliceStats { forward, backward }
}

/// Splices two QUIC streams (the relay's job) until both directions are done.
pub async fn quic_with_quic(
    a: (SendStream, RecvStream),
    b: (SendStream, RecvStream),
) -> SpliceStats {
    let (a_send, a_recv) = a;
    let (b_send, b_recv) = b;
    let (forward, backward) =
        tokio::join!(quic_to_quic(a_recv, b_send), quic_to_quic(b_recv, a_send));
    SpliceStats { forward, backward }
}
