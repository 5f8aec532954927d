//! The client side of the bench protocol (see `server.rs`): timed bulk transfers each
//! way and an echo connection for round trips. Every transfer is checked end to end, so
//! a path that loses or truncates data fails instead of looking fast.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::server::{payload, BUF, MODE_ECHO, MODE_SINK, MODE_SOURCE};

async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends `bytes` to the sink and waits for its count; returns the time from the first
/// byte written to the count received.
pub async fn upload(addr: SocketAddr, bytes: u64) -> Result<Duration> {
    let mut stream = connect(addr).await?;
    let data = payload();
    let start = Instant::now();
    stream.write_u8(MODE_SINK).await?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(data.len() as u64) as usize;
        stream
            .write_all(&data[..n])
            .await
            .context("sending to the sink")?;
        left -= n as u64;
    }
    stream.shutdown().await?;
    let count = stream
        .read_u64()
        .await
        .context("reading the sink's count")?;
    let elapsed = start.elapsed();
    ensure!(
        count == bytes,
        "the sink received {count} bytes, {bytes} were sent"
    );
    Ok(elapsed)
}

/// Asks the source for `bytes` and reads them to EOF; returns the time from the request
/// to EOF.
pub async fn download(addr: SocketAddr, bytes: u64) -> Result<Duration> {
    let mut stream = connect(addr).await?;
    let mut buf = vec![0u8; BUF];
    let start = Instant::now();
    let mut request = vec![MODE_SOURCE];
    request.extend_from_slice(&bytes.to_be_bytes());
    stream.write_all(&request).await?;
    let mut count = 0u64;
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .context("reading from the source")?;
        if n == 0 {
            break;
        }
        count += n as u64;
    }
    let elapsed = start.elapsed();
    ensure!(
        count == bytes,
        "received {count} bytes from the source, asked for {bytes}"
    );
    Ok(elapsed)
}

/// One connection in echo mode.
pub struct Echo {
    stream: TcpStream,
    out: Vec<u8>,
    back: Vec<u8>,
    seq: u64,
}

impl Echo {
    pub async fn open(addr: SocketAddr, size: usize) -> Result<Echo> {
        ensure!(size >= 8, "echo messages need at least 8 bytes");
        let mut stream = connect(addr).await?;
        stream.write_u8(MODE_ECHO).await?;
        Ok(Echo {
            stream,
            out: vec![0xA5; size],
            back: vec![0; size],
            seq: 0,
        })
    }

    /// Sends one message and waits for it to come back whole; returns the round trip.
    pub async fn round_trip(&mut self) -> Result<Duration> {
        // A sequence number in every message: a stale or reordered echo is caught.
        self.seq += 1;
        self.out[..8].copy_from_slice(&self.seq.to_be_bytes());
        let start = Instant::now();
        self.stream
            .write_all(&self.out)
            .await
            .context("sending an echo")?;
        self.stream
            .read_exact(&mut self.back)
            .await
            .context("reading an echo")?;
        let elapsed = start.elapsed();
        if self.back != self.out {
            bail!("echo #{} came back different", self.seq);
        }
        Ok(elapsed)
    }
}

/// One echo round trip on a fresh connection: proof that a path is really up.
pub async fn check(addr: SocketAddr) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut echo = Echo::open(addr, 64).await?;
        echo.round_trip().await.map(drop)
    })
    .await
    .context("timed out")?
}
