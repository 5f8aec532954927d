//! Bytes through a real relay: bulk transfers checked by hash, many concurrent
//! streams, and half-close carried end to end.

mod common;

use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Deterministic, incompressible-looking test data.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data);
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_arrive_intact_through_the_relay() -> anyhow::Result<()> {
    let (net, user) = one_relay_network("bulk").await?;
    let echo = echo_server().await;
    let (_pf, local) = net.port_forward(&user, "demo", echo).await?;

    const LEN: usize = 64 * 1024 * 1024;
    let data = pattern(LEN, 7);
    let sent_hash = Sha256::digest(&data);
    let tcp = TcpStream::connect(local).await?;
    let (mut r, mut w) = tcp.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await?;
        anyhow::Ok(())
    });
    let mut hasher = Sha256::new();
    let mut received = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let read = async {
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            received += n;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(120), read).await??;
    writer.await??;
    assert_eq!(received, LEN, "byte count through the relay");
    assert_eq!(hasher.finalize(), sent_hash, "checksum through the relay");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams_each_get_their_own_bytes_back() -> anyhow::Result<()> {
    let (net, user) = one_relay_network("concurrent").await?;
    let echo = echo_server().await;
    let (_pf, local) = net.port_forward(&user, "demo", echo).await?;

    let mut tasks = Vec::new();
    for i in 0..200u64 {
        tasks.push(tokio::spawn(async move {
            let data = pattern(32 * 1024 + i as usize, i);
            let mut tcp = TcpStream::connect(local).await?;
            let (mut r, mut w) = tcp.split();
            let (wrote, back) = tokio::join!(
                async {
                    w.write_all(&data).await?;
                    w.shutdown().await
                },
                async {
                    let mut back = Vec::new();
                    r.read_to_end(&mut back).await.map(|_| back)
                }
            );
            wrote?;
            let back = back?;
            anyhow::ensure!(
                back == data,
                "stream {i} got {} bytes, not its own {}",
                back.len(),
                data.len()
            );
            anyhow::Ok(())
        }));
    }
    let all = async {
        for t in tasks {
            t.await??;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(120), all).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_shuts_its_write_side_still_reads_the_reply() -> anyhow::Result<()> {
    let (net, user) = one_relay_network("halfclose").await?;
    let server = count_after_eof_server().await;

    // Through port-forward, with a real TCP half-close.
    let (_pf, local) = net.port_forward(&user, "demo", server).await?;
    let mut tcp = TcpStream::connect(local).await?;
    tcp.write_all(&[b'x'; 100_000]).await?;
    tcp.shutdown().await?;
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_string(&mut reply)).await??;
    assert_eq!(reply, "got 100000 bytes");

    // Through `ferry tcp`, where end of standard input is the half-close.
    let (ok, out, err) = net
        .ferry_tcp(&user, "demo", &server.to_string(), b"hello")
        .await?;
    assert!(ok, "ferry tcp failed: {err}");
    assert_eq!(String::from_utf8_lossy(&out), "got 5 bytes");
    Ok(())
}
