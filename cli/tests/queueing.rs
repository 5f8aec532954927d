//! A download must not queue a workspace's interactive traffic behind it.
//!
//! Over an emulated 20 Mbit/s link, plain CUBIC (which backs off only on loss, and
//! the emulator's queue never drops) keeps the whole stream window, megabytes, queued
//! on the link: an echo beside a download then waits more than a second. The queue
//! ceiling (transport/src/congestion.rs) keeps a few milliseconds queued. The bound
//! asserted below sits between the two with a wide margin either way.
//!
//! By default the ceiling only acts on short paths (a base RTT of 3 ms at most; see
//! `QueueConfig::max_base`), and this link's is 40 ms, so the processes run with
//! `FERRY_QUEUE_CEILING=all`. On loopback, the default's own case, the benchmark
//! (`ferry-netbench hol`) shows the effect.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::*;
use ferry_proto::token::TokenKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WORKSPACE: &str = "demo--dev";

const NARROW_LINK: &str = r#"
[locations]
home = "127.0.0.1"
eu = "127.0.1.1"

[[link]]
between = ["home", "eu"]
rtt_ms = 20
rate_mbit = 20
"#;

/// Serves zeros to every connection until it closes.
async fn source_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let zeros = vec![0u8; 64 * 1024];
                while tcp.write_all(&zeros).await.is_ok() {}
            });
        }
    });
    port
}

/// The median of `count` sequential 64-byte echoes on `tcp`.
async fn echo_p50(tcp: &mut TcpStream, count: usize) -> Result<Duration> {
    let mut rtts = Vec::with_capacity(count);
    let mut back = [0u8; 64];
    for i in 0..count {
        let msg = [i as u8; 64];
        let start = Instant::now();
        tcp.write_all(&msg).await?;
        tokio::time::timeout(Duration::from_secs(20), tcp.read_exact(&mut back))
            .await
            .context("an echo took over 20 s")??;
        assert_eq!(back, msg, "echo #{i} came back wrong");
        rtts.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rtts.sort();
    Ok(rtts[count / 2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_does_not_queue_an_echo_behind_it() -> Result<()> {
    // Inherited by every process this test starts (the only test in this binary).
    std::env::set_var("FERRY_QUEUE_CEILING", "all");
    let mut wan = Wan::new(NARROW_LINK)?;
    let mut net = Network::start("queueing").await?;
    net.start_relay_behind(&mut wan, "eu-1", "eu", &[]).await?;
    let agent_admin = net.start_agent_with_admin(WORKSPACE, &[]).await?;
    let user = net.mint(TokenKind::User, "dev", None).await?;
    net.wait_for_agent(WORKSPACE, &user).await?;

    let echo_port = echo_server().await;
    let source_port = source_server().await;
    // Two forwards, one relay, one agent connection: the download's bytes and the
    // echoes' answers cross the narrow link from home to eu on the same connection.
    let (_echo_fwd, echo_addr) = net.port_forward(&user, "demo", echo_port).await?;
    let (_bulk_fwd, bulk_addr) = net.port_forward(&user, "demo", source_port).await?;

    let mut echo = TcpStream::connect(echo_addr).await?;
    echo.set_nodelay(true)?;
    echo_p50(&mut echo, 5).await?; // warm up
    let unloaded = echo_p50(&mut echo, 25).await?;

    let received = Arc::new(AtomicU64::new(0));
    let download = tokio::spawn(download(bulk_addr, received.clone()));
    // Let the download fill whatever queue it is going to fill.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = received.load(Ordering::Relaxed);
    let started = Instant::now();
    let loaded = echo_p50(&mut echo, 25).await?;
    let rate_mbit = (received.load(Ordering::Relaxed) - before) as f64 * 8.0
        / started.elapsed().as_secs_f64()
        / 1e6;
    download.abort();
    eprintln!("echo p50 unloaded {unloaded:?}, beside the download {loaded:?}; download {rate_mbit:.1} Mbit/s");

    // Without the download keeping the link busy the test would prove nothing.
    assert!(
        rate_mbit > 5.0,
        "the download ran at {rate_mbit:.1} Mbit/s of the link's 20"
    );
    // A few ms of queue (plus a busy machine's noise) passes; CUBIC's seconds do not.
    assert!(
        loaded < unloaded + Duration::from_millis(250),
        "beside a download an echo took {loaded:?} (p50), {unloaded:?} without"
    );
    // And it was the ceiling that kept the queue short: the agent, which sends the
    // download, counted its cuts.
    let cuts = scrape(agent_admin)
        .await?
        .sum("ferry_quic_queue_ceiling_cuts_total", &[]);
    assert!(cuts > 0.0, "the agent never lowered its window");
    Ok(())
}

async fn download(addr: SocketAddr, received: Arc<AtomicU64>) -> Result<()> {
    let mut tcp = TcpStream::connect(addr).await?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        received.fetch_add(n as u64, Ordering::Relaxed);
    }
}
