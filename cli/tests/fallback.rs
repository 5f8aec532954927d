//! Networks that block UDP: agents and the CLI reach relays through the TCP tunnel on
//! the relay's HTTPS port, pick it automatically, and climb back to QUIC when UDP gets
//! through again. UDP is cut with nftables rules of the test's own (its relays' ports
//! only), so the processes are real and nothing is mocked.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::*;
use ferry_proto::token::TokenKind;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Agents and clients by transport, as the relay counts them.
async fn on_transport(relay: &Relay, role: &str, transport: &str) -> f64 {
    scrape(relay.admin)
        .await
        .map(|s| {
            s.sum(
                "ferry_relay_connections_by_transport",
                &[("role", role), ("transport", transport)],
            )
        })
        .unwrap_or(0.0)
}

/// Polls until the relay counts `want` (or more) `role`s on `transport`.
async fn wait_on_transport(
    relay: &Relay,
    role: &str,
    transport: &str,
    want: f64,
    within: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        if on_transport(relay, role, transport).await >= want {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < within,
            "the relay counts {} {role}(s) on {transport} after {within:?}, expected {want}",
            on_transport(relay, role, transport).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `bytes` through a port-forward both ways at once (an echo service behind it), with
/// sha256 on each side.
async fn echo_through(forward: std::net::SocketAddr, bytes: usize) -> Result<()> {
    let tcp = tokio::net::TcpStream::connect(forward).await?;
    let (mut r, mut w) = tcp.into_split();
    let data = random_bytes(bytes);
    let sent = Sha256::digest(&data);
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await?;
        Ok::<_, std::io::Error>(())
    });
    let mut hasher = Sha256::new();
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), r.read(&mut buf))
            .await
            .context("the echo stalled")??;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        got += n;
    }
    writer.await??;
    ensure!(got == bytes, "{got} of {bytes} bytes came back");
    ensure!(hasher.finalize() == sent, "the bytes came back changed");
    Ok(())
}

/// UDP to the relay silently dropped: the agent and the CLI connect over the TCP
/// tunnel within 2 s of starting, 64 MiB cross a port-forward each way intact, and the
/// relay and the logs say which transport and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_udp_dropped_agent_and_cli_use_the_tcp_tunnel() -> Result<()> {
    let test = "with_udp_dropped_agent_and_cli_use_the_tcp_tunnel";
    let Some(firewall) = Firewall::new(test) else {
        return Ok(());
    };
    let mut net = Network::start("udp-dropped").await?;
    let addr = net.start_relay("eu-1", "eu", "127.0.0.1:0").await?;
    firewall.blackhole_udp(addr.port(), None)?;
    let echo = echo_server().await;

    let started = Instant::now();
    net.start_agent("demo--dev", &[]).await?;
    let relay = net.relay("eu-1");
    wait_on_transport(relay, "agent", "tcp", 1.0, Duration::from_secs(10)).await?;
    let agent_took = started.elapsed();
    ensure!(
        agent_took < Duration::from_secs(2),
        "the agent took {agent_took:?} to reach the relay over TCP"
    );
    let agent_log = std::fs::read_to_string(net.dir.0.join("agent-demo--dev.log"))?;
    ensure!(
        agent_log.contains("falling back to the TCP tunnel")
            && agent_log.contains("no QUIC answer within 300ms"),
        "the agent's log does not say it fell back and why:\n{}",
        net.log_tail("agent-demo--dev", 20)
    );
    assert_eq!(on_transport(relay, "agent", "quic").await, 0.0);

    let user = net.mint(TokenKind::User, "dev", None).await?;
    let started = Instant::now();
    let (ok, out, err) = net
        .ferry_tcp(&user, "demo--dev", &echo.to_string(), b"hello over tcp")
        .await?;
    let cli_took = started.elapsed();
    ensure!(ok && out == b"hello over tcp", "ferry tcp: {err}");
    ensure!(
        cli_took < Duration::from_secs(2),
        "ferry tcp took {cli_took:?} over the tunnel"
    );
    eprintln!("agent on the tunnel {agent_took:?} after its start; ferry tcp ran {cli_took:?}");

    let (_forward, local) = net.port_forward(&user, "demo--dev", echo).await?;
    echo_through(local, 64 << 20).await?;
    let relay = net.relay("eu-1");
    ensure!(
        on_transport(relay, "client", "tcp").await >= 1.0,
        "the port-forward is not counted on tcp"
    );
    assert_eq!(on_transport(relay, "client", "quic").await, 0.0);
    Ok(())
}

/// UDP rejected on the way out (the send fails at once, as behind a firewall that
/// rejects instead of dropping): the CLI does not wait out the head start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_udp_rejected_the_fallback_takes_under_half_a_second() -> Result<()> {
    let test = "with_udp_rejected_the_fallback_takes_under_half_a_second";
    let Some(firewall) = Firewall::new(test) else {
        return Ok(());
    };
    let mut net = Network::start("udp-rejected").await?;
    let addr = net.start_relay("eu-1", "eu", "127.0.0.1:0").await?;
    firewall.rule(&format!("udp dport {} reject", addr.port()))?;
    let echo = echo_server().await;
    net.start_agent("demo--dev", &[]).await?;
    wait_on_transport(
        net.relay("eu-1"),
        "agent",
        "tcp",
        1.0,
        Duration::from_secs(10),
    )
    .await?;
    let user = net.mint(TokenKind::User, "dev", None).await?;
    let (ok, out, err) = net
        .ferry_tcp_env(
            &user,
            "demo--dev",
            &echo.to_string(),
            b"x",
            &[("FERRY_LOG", "ferry=debug,ferry_transport=debug")],
        )
        .await?;
    ensure!(ok && out == b"x", "ferry tcp: {err}");
    // "connected relay=eu-1 transport=tcp why=QUIC failed: UDP refused (...) took_ms=N"
    let line = err
        .lines()
        .find(|l| l.contains("connected") && l.contains("transport=tcp"))
        .with_context(|| format!("no connection line in the CLI's log:\n{err}"))?;
    ensure!(line.contains("UDP refused"), "{line}");
    let took: u64 = line
        .split("took_ms=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no took_ms in {line}"))?;
    ensure!(took < 500, "the fallback took {took} ms: {line}");
    Ok(())
}

/// UDP comes back while the agent and a port-forward run on the tunnel: both are on
/// QUIC within one re-probe interval, and a transfer that was running the whole time
/// arrives intact (the tunnel's connection finished it; make before break).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_udp_returns_agent_and_cli_climb_back_to_quic_without_breaking_a_transfer(
) -> Result<()> {
    let test = "when_udp_returns_agent_and_cli_climb_back_to_quic_without_breaking_a_transfer";
    let Some(firewall) = Firewall::new(test) else {
        return Ok(());
    };
    // Re-probe every 1-2 s here (30-60 s by default).
    std::env::set_var("FERRY_QUIC_REPROBE_SECS", "1");
    let mut net = Network::start("udp-returns").await?;
    let addr = net.start_relay("eu-1", "eu", "127.0.0.1:0").await?;
    firewall.blackhole_udp(addr.port(), None)?;
    let echo = echo_server().await;
    net.start_agent("demo--dev", &[]).await?;
    let user = net.mint(TokenKind::User, "dev", None).await?;
    let relay = net.relay("eu-1");
    wait_on_transport(relay, "agent", "tcp", 1.0, Duration::from_secs(10)).await?;
    let (_forward, local) = net.port_forward(&user, "demo--dev", echo).await?;

    // A transfer paced over about 6 s, started on the tunnel.
    let tcp = tokio::net::TcpStream::connect(local).await?;
    let (mut r, mut w) = tcp.into_split();
    let data = random_bytes(24 << 20);
    let sent = Sha256::digest(&data);
    let writer = tokio::spawn(async move {
        for chunk in data.chunks(1 << 20) {
            w.write_all(chunk).await?;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        w.shutdown().await?;
        Ok::<_, std::io::Error>(())
    });
    let reader = tokio::spawn(async move {
        let mut hasher = Sha256::new();
        let mut got = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            got += n;
        }
        Ok::<_, std::io::Error>((got, hasher.finalize()))
    });
    wait_on_transport(relay, "client", "tcp", 1.0, Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    firewall.clear()?;
    // One interval is 1-2 s; the probe itself takes a handshake.
    wait_on_transport(relay, "agent", "quic", 1.0, Duration::from_secs(4)).await?;
    wait_on_transport(relay, "client", "quic", 1.0, Duration::from_secs(4)).await?;

    writer.await??;
    let (got, digest) = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .context("the transfer did not finish")???;
    ensure!(got == 24 << 20, "{got} bytes came back of {}", 24 << 20);
    ensure!(digest == sent, "the bytes came back changed");
    // The tunnel's connections end once their streams have.
    let deadline = Instant::now() + Duration::from_secs(15);
    while on_transport(relay, "agent", "tcp").await + on_transport(relay, "client", "tcp").await
        > 0.0
    {
        ensure!(
            Instant::now() < deadline,
            "the tunnel connections stayed open after moving to QUIC"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A new stream works on QUIC.
    echo_through(local, 1 << 20).await?;
    Ok(())
}
