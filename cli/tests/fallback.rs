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

/// A program on the PATH, or `None` after a loud SKIPPED (a failure under CI, whose
/// `.ci/run` installs it).
fn tool(name: &str, test: &str) -> Option<std::path::PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH")?)
        .chain([std::path::PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: {name} is not installed, and CI must run this test"
        );
        eprintln!("SKIPPED {test}: {name} is not installed (.ci/run installs it)");
    }
    found
}

/// A free TCP port on loopback (for servers that cannot report the one they bound).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until something accepts TCP on `port`.
async fn wait_for_port(port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        ensure!(Instant::now() < deadline, "{what} did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// nginx terminating TLS in front of a relay (as a cloud load balancer would): the
/// agent and the CLI find `http/1.1` there instead of the tunnel's ALPN and use the
/// WebSocket form, which nginx passes to the relay's HTTPS port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_terminating_tls_the_websocket_tunnel_works() -> Result<()> {
    let test = "through_nginx_terminating_tls_the_websocket_tunnel_works";
    let Some(nginx) = tool("nginx", test) else {
        return Ok(());
    };
    let mut net = Network::start("l7-proxy").await?;
    let lb_port = free_port();
    let relay_addr = net
        .start_relay_with(
            "eu-1",
            "eu",
            "127.0.0.1:0",
            &["--https-url", &format!("https://127.0.0.1:{lb_port}")],
        )
        .await?;
    // nginx's own certificate, from ferry's CA (a deployment's would come from its
    // public CA).
    let ca = ferry_certs::Ca::load_or_create(&net.dir.0.join("control"))?;
    let cert = ca.issue(&["127.0.0.1".into()], ferry_certs::Usage::Server)?;
    let dir = net.dir.0.join("nginx");
    std::fs::create_dir_all(dir.join("tmp"))?;
    std::fs::write(dir.join("lb.pem"), &cert.cert_pem)?;
    std::fs::write(dir.join("lb.key"), &cert.key_pem)?;
    let d = dir.display();
    let relay_port = relay_addr.port();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "daemon off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log {d}/access.log;\n\
               client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy;\n\
               fastcgi_temp_path {d}/tmp/fastcgi; uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;\n\
               server {{\n    listen 127.0.0.1:{lb_port} ssl;\n\
                 ssl_protocols TLSv1.2;\n    ssl_certificate {d}/lb.pem;\n    ssl_certificate_key {d}/lb.key;\n\
                 location / {{\n      proxy_pass https://127.0.0.1:{relay_port};\n\
                   proxy_ssl_protocols TLSv1.3;\n\
                   proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n\
                   proxy_set_header Connection \"upgrade\";\n      proxy_set_header Host $host;\n\
                   proxy_read_timeout 1h;\n      proxy_send_timeout 1h;\n      proxy_buffering off;\n\
                 }}\n  }}\n}}\n"
        ),
    )?;
    let _nginx = tokio::process::Command::new(nginx)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-p")
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log"))?)
        .kill_on_drop(true)
        .spawn()
        .context("starting nginx")?;
    wait_for_port(lb_port, "nginx").await?;

    let echo = echo_server().await;
    net.start_agent("demo--dev", &["--transport", "tcp"])
        .await?;
    let relay = net.relay("eu-1");
    wait_on_transport(relay, "agent", "websocket", 1.0, Duration::from_secs(10))
        .await
        .with_context(|| {
            format!(
                "{}\nnginx: {}",
                net.log_tail("agent-demo--dev", 20),
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            )
        })?;
    let user = net.mint(TokenKind::User, "dev", None).await?;
    let payload = random_bytes(4 << 20);
    let (ok, out, err) = net
        .ferry_tcp_env(
            &user,
            "demo--dev",
            &echo.to_string(),
            &payload,
            &[("FERRY_TRANSPORT", "tcp")],
        )
        .await?;
    ensure!(ok && out == payload, "ferry tcp through nginx: {err}");
    let access = std::fs::read_to_string(dir.join("access.log"))?;
    let upgrades = access
        .lines()
        .filter(|l| l.contains("GET /.ferry/tunnel") && l.contains(" 101 "))
        .count();
    // nginx logs a request when it ends: the CLI's tunnel has, the agent's is open.
    ensure!(
        upgrades >= 1,
        "nginx passed {upgrades} tunnel upgrades:\n{access}"
    );
    Ok(())
}

const WORKSPACE: &str = "demo--dev";
const EU: [&str; 3] = ["eu-1", "eu-2", "eu-3"];

fn placement(relays: &[&str]) -> Vec<String> {
    ferry_ring::Ring::new(relays.iter().copied())
        .successors(WORKSPACE)
        .iter()
        .map(|r| r.to_string())
        .collect()
}

/// Agents and clients on the tunnel behave as on QUIC when relays go away: SIGTERM
/// drains without losing a byte of an open stream (and the agent moves), and after a
/// SIGKILL the standby serves new streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_tunnel_drain_loses_nothing_and_the_standby_takes_over() -> Result<()> {
    let test = "on_the_tunnel_drain_loses_nothing_and_the_standby_takes_over";
    let Some(firewall) = Firewall::new(test) else {
        return Ok(());
    };
    let mut net = Network::start("tunnel-failover").await?;
    net.sandbox_clients()?;
    for relay in EU {
        let addr = net
            .start_relay_with(relay, "eu", "127.0.0.1:0", &["--drain-grace", "20"])
            .await?;
        // Relays still reach each other over UDP (the mesh); the sandboxed agent and
        // CLI do not.
        firewall.blackhole_udp(addr.port(), Some(SANDBOX_UID))?;
    }
    let echo = echo_server().await;
    net.start_agent(WORKSPACE, &["--region", "eu"]).await?;
    let user = net.mint(TokenKind::User, "dev", None).await?;
    let order = placement(&EU);
    net.wait_for_placement(WORKSPACE, &[&order[0], &order[1]])
        .await?;
    let owner = order[0].clone();
    ensure!(
        on_transport(net.relay(&owner), "agent", "tcp").await == 1.0,
        "the agent is not on the tunnel"
    );

    // An open stream through the owner, over the tunnel.
    let (_forward, forward) = net
        .port_forward_env(&user, "demo", echo, &[("FERRY_RELAY", &owner)])
        .await?;
    let tcp = tokio::net::TcpStream::connect(forward).await?;
    let (mut from, mut to) = tcp.into_split();
    let first = random_bytes(1 << 20);
    to.write_all(&first).await?;
    let mut got = vec![0u8; first.len()];
    from.read_exact(&mut got).await?;
    ensure!(got == first, "first half corrupted");

    let draining = net.take_relay(&owner);
    let mut child = draining.child;
    sigterm(&child);
    let rest: Vec<&str> = EU.iter().copied().filter(|r| *r != owner).collect();
    let next = placement(&rest);
    net.wait_for_placement(WORKSPACE, &[&owner, &next[0], &next[1]])
        .await?;
    // The open stream carries on through the draining relay, byte for byte.
    let second = random_bytes(1 << 20);
    to.write_all(&second).await?;
    let mut got = vec![0u8; second.len()];
    from.read_exact(&mut got).await?;
    ensure!(got == second, "second half corrupted");
    to.shutdown().await?;
    let mut tail = Vec::new();
    from.read_to_end(&mut tail).await?;
    ensure!(tail.is_empty(), "bytes after the end");
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait()).await??;
    ensure!(exit.success(), "the drained relay exited with {exit}");
    net.wait_for_placement(WORKSPACE, &[&next[0], &next[1]])
        .await?;

    // SIGKILL the new owner: the standby, which already holds the agent's tunnel,
    // serves new streams.
    let mut killed = net.take_relay(&next[0]);
    let t0 = Instant::now();
    killed.child.kill().await?;
    killed.child.wait().await?;
    let failover = loop {
        let (ok, out, _) = net
            .ferry_tcp_via(&next[1], &user, "demo", &echo.to_string(), b"ping")
            .await?;
        if ok && out == b"ping" {
            break t0.elapsed();
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(20),
            "no failover after 20 s"
        );
    };
    eprintln!("on the tunnel: first stream through the standby {failover:?} after SIGKILL");
    ensure!(
        failover < Duration::from_secs(3),
        "failover on the tunnel took {failover:?}"
    );
    ensure!(
        on_transport(net.relay(&next[1]), "agent", "tcp").await == 1.0,
        "the standby does not hold the agent on the tunnel"
    );
    Ok(())
}
