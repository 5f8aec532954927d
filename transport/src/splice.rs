//! Splicing two byte streams both ways, with half-close preserved: when one side
//! finishes writing, the other side's write half is finished too, while the opposite
//! direction goes on. An abort (reset) on one side is passed on as an abort, never
//! as a clean end, so a truncated transfer cannot look complete.

use bytes::{Bytes, BytesMut};
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

/// TCP read size, and the most bytes gathered from QUIC before one write to a sink.
const CHUNK: usize = 64 * 1024;

/// STREAM frames taken from QUIC at once. A frame carries at most one packet's worth
/// (about 1.2 KB on the internet), so taking them one by one would cost a lock and a
/// wake-up per packet on both streams.
const FRAMES_PER_BATCH: usize = 32;

/// Copies QUIC → QUIC without copying the bytes (frames are reference-counted).
pub async fn quic_to_quic(from: RecvStream, to: SendStream) -> u64 {
    quic_to_quic_observed(from, to, |_| {}).await
}

/// Like [`quic_to_quic`], telling `on_bytes` about each batch as it is read (for live
/// byte counters: a long stream shows up while it runs, not only when it ends).
pub async fn quic_to_quic_observed(
    mut from: RecvStream,
    mut to: SendStream,
    mut on_bytes: impl FnMut(u64),
) -> u64 {
    let mut total = 0u64;
    let mut batch: [Bytes; FRAMES_PER_BATCH] = Default::default();
    loop {
        match from.read_chunks(&mut batch).await {
            Ok(Some(n)) => {
                let read = batch[..n].iter().map(|b| b.len() as u64).sum::<u64>();
                total += read;
                on_bytes(read);
                if to.write_all_chunks(&mut batch[..n]).await.is_err() {
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

/// A stream that did not finish cleanly.
#[derive(Debug, thiserror::Error)]
#[error("the stream broke off after {bytes} bytes: {cause}")]
pub struct Broken {
    pub bytes: u64,
    pub cause: BrokenCause,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokenCause {
    /// The sender aborted the stream, or the connection was lost.
    #[error("{0}")]
    Stream(#[from] quinn::ReadError),
    /// The sink stopped taking bytes (a closed pipe, a reset TCP connection).
    #[error("writing: {0}")]
    Sink(#[from] std::io::Error),
}

/// Copies QUIC → a byte sink (TCP, stdout), shutting the sink's write side at the end.
/// Returns the bytes copied, or how the stream broke off: a truncated copy must not
/// look complete to whoever reports on it (`ferry tcp`'s exit status).
pub async fn quic_to_writer(
    mut from: RecvStream,
    mut to: impl AsyncWrite + Unpin,
) -> Result<u64, Broken> {
    let mut total = 0u64;
    // Gathering many frames into one buffer turns a syscall per packet into one per
    // buffer; the copy is cheap next to the syscalls it saves.
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(Some(n)) => {
                total += n as u64;
                // Flush each write: some sinks (tokio's stdout) hold written bytes until
                // flushed, which would stall an interactive protocol such as SSH.
                let written = match to.write_all(&buf[..n]).await {
                    Ok(()) => to.flush().await,
                    Err(e) => Err(e),
                };
                if let Err(e) = written {
                    let _ = from.stop(ABORTED);
                    return Err(Broken {
                        bytes: total,
                        cause: e.into(),
                    });
                }
            }
            Ok(None) => {
                let _ = to.shutdown().await;
                return Ok(total);
            }
            Err(e) => {
                // The sender aborted: do not turn that into a clean EOF downstream.
                return Err(Broken {
                    bytes: total,
                    cause: e.into(),
                });
            }
        }
    }
}

/// Copies a byte source (TCP, stdin) → QUIC, finishing the stream at EOF.
pub async fn reader_to_quic(mut from: impl AsyncRead + Unpin, mut to: SendStream) -> u64 {
    let mut total = 0u64;
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        if buf.capacity() < CHUNK / 4 {
            buf.reserve(CHUNK);
        }
        match from.read_buf(&mut buf).await {
            Ok(0) => {
                let _ = to.finish();
                return total;
            }
            Ok(n) => {
                total += n as u64;
                // Hand quinn the buffer itself rather than a slice it would copy.
                if to.write_chunk(buf.split().freeze()).await.is_err() {
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
    SpliceStats {
        forward: forward.unwrap_or_else(|broken| broken.bytes),
        backward,
    }
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

/// Like [`quic_with_quic`], reporting bytes as they pass: `on_forward` for a → b,
/// `on_backward` for b → a.
pub async fn quic_with_quic_observed(
    a: (SendStream, RecvStream),
    b: (SendStream, RecvStream),
    on_forward: impl FnMut(u64),
    on_backward: impl FnMut(u64),
) -> SpliceStats {
    let (a_send, a_recv) = a;
    let (b_send, b_recv) = b;
    let (forward, backward) = tokio::join!(
        quic_to_quic_observed(a_recv, b_send, on_forward),
        quic_to_quic_observed(b_recv, a_send, on_backward)
    );
    SpliceStats { forward, backward }
}
