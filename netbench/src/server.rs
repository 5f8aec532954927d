//! The benchmark's own server on 127.0.0.1, the far end of every path. The first byte
//! a client sends picks the mode, so one port (one forward per path) serves all tests:
//!
//! - `S` sink: count bytes until EOF, then answer the count as 8 big-endian bytes.
//! - `G` source: read an 8-byte big-endian N, send N bytes, then close.
//! - `E` echo: send back whatever arrives, until EOF.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub const MODE_SINK: u8 = b'S';
pub const MODE_SOURCE: u8 = b'G';
pub const MODE_ECHO: u8 = b'E';

/// Read and write size for bulk transfers.
pub const BUF: usize = 256 * 1024;

/// Bytes that do not compress, so no path gains from compression it would not get on
/// real traffic.
pub fn payload() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..BUF)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The running server; stops when dropped.
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Starts the server on its own thread with its own single-threaded runtime, so the
    /// far end is always another thread, as it is for a real client and server; sharing
    /// the client's runtime would sometimes run both ends on one thread and make direct
    /// round trips look faster than any two programs can be.
    pub fn start() -> Result<Server> {
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", 0)).context("binding the bench server")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!(error = %e, "bench server cannot listen"),
                };
                let accept_loop = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else { continue };
                        tokio::spawn(async move {
                            if let Err(e) = serve(stream).await {
                                tracing::debug!(error = %e, "bench connection ended with an error");
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = accept_loop => {}
                    _ = stopped => {}
                }
            });
                // Dropping the runtime here ends every connection still open.
            })?;
        Ok(Server {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mode = stream.read_u8().await?;
    let mut buf = vec![0u8; BUF];
    match mode {
        MODE_SINK => {
            let mut count = 0u64;
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                count += n as u64;
            }
            stream.write_all(&count.to_be_bytes()).await?;
        }
        MODE_SOURCE => {
            let mut left = stream.read_u64().await?;
            let data = payload();
            while left > 0 {
                let n = left.min(data.len() as u64) as usize;
                stream.write_all(&data[..n]).await?;
                left -= n as u64;
                // On fast loopback the socket rarely pushes back, and tokio only makes
                // a busy task yield every 128 ready writes (32 MiB here): without this,
                // an echo served by this thread would wait behind milliseconds of bulk
                // data, a delay of the bench server, not of the path under test.
                tokio::task::yield_now().await;
            }
        }
        MODE_ECHO => loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n]).await?;
        },
        _ => return Ok(()),
    }
    stream.shutdown().await
}
