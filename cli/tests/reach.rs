//! Reaching relays the way real networks let us: relays advertised by DNS name (with
//! a dead address among their records), and an HTTPS proxy as the only way out.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::*;
use ferry_proto::token::TokenKind;

/// A port free for both UDP and TCP on 127.0.0.1 (a relay binds both).
fn free_relay_port() -> u16 {
    for _ in 0..20 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

/// A relay advertised by a name whose first record (IPv6 `::1`, where the relay does
/// not listen) is dead: the agent and the CLI resolve it with a DNS server of the
/// test's own and reach the relay over QUIC through the live address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_advertised_by_name_is_reached_through_its_live_address() -> Result<()> {
    let dns = ferry_transport::test_dns::TestDns::start(60).await?;
    dns.set(
        "eu-1.ferry.test",
        vec!["::1".parse()?, "127.0.0.1".parse()?],
    );
    let mut net = Network::start("relay-by-name").await?;
    let dns_env = ("FERRY_DNS_SERVER".to_string(), dns.addr().to_string());
    net.relay_env.push(dns_env.clone());
    net.client_extra_env.push(dns_env);
    let port = free_relay_port();
    net.start_relay_with(
        "eu-1",
        "eu",
        &format!("127.0.0.1:{port}"),
        &["--advertise", &format!("eu-1.ferry.test:{port}")],
    )
    .await?;
    let echo = echo_server().await;
    net.start_agent("demo--dev", &[]).await?;
    let user = net.mint(TokenKind::User, "dev", None).await?;
    net.wait_for_agent("demo--dev", &user).await?;
    let (ok, out, err) = net
        .ferry_tcp(&user, "demo--dev", &echo.to_string(), b"by name")
        .await?;
    ensure!(ok && out == b"by name", "ferry tcp by name: {err}");
    ensure!(dns.queries() >= 2, "{} DNS queries", dns.queries());
    let relay = net.relay("eu-1");
    ensure!(
        on_transport(relay, "agent", "quic").await == 1.0,
        "the agent is not on QUIC:\n{}",
        net.log_tail("agent-demo--dev", 20)
    );
    Ok(())
}

/// tinyproxy as the only way out for the agent and the CLI (nftables rules for their
/// user refuse TCP to the relay and the control plane and drop UDP to the relay): with
/// `HTTPS_PROXY` they reach the control plane's API and the relay's tunnel through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_an_https_proxy_as_the_only_way_out_agent_cli_and_api_work() -> Result<()> {
    let test = "through_an_https_proxy_as_the_only_way_out_agent_cli_and_api_work";
    let Some(firewall) = Firewall::new(test) else {
        return Ok(());
    };
    if std::process::Command::new("tinyproxy")
        .arg("-v")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: tinyproxy is not installed, and CI must run this test"
        );
        eprintln!("SKIPPED {test}: tinyproxy is not installed");
        return Ok(());
    }
    let mut net = Network::start("proxy-only").await?;
    net.sandbox_clients()?;
    let relay_port = net.start_relay("eu-1", "eu", "127.0.0.1:0").await?.port();
    let control_port: u16 = net
        .control_url
        .rsplit(':')
        .next()
        .context("control port")?
        .parse()?;

    // tinyproxy, as its own user (the rules below cut off the sandboxed user only).
    let dir = net.dir.0.join("tinyproxy");
    std::fs::create_dir_all(&dir)?;
    let proxy_port = free_relay_port();
    std::fs::write(
        dir.join("tinyproxy.conf"),
        format!(
            "User tinyproxy\nGroup tinyproxy\nPort {proxy_port}\nListen 127.0.0.1\nTimeout 600\n\
             Allow 127.0.0.1\nLogLevel Connect\nMaxClients 50\n\
             ConnectPort {relay_port}\nConnectPort {control_port}\n"
        ),
    )?;
    let log = std::fs::File::create(dir.join("tinyproxy.log"))?;
    let _proxy = tokio::process::Command::new("tinyproxy")
        .arg("-d")
        .arg("-c")
        .arg(dir.join("tinyproxy.conf"))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting tinyproxy")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", proxy_port))
        .await
        .is_err()
    {
        ensure!(Instant::now() < deadline, "tinyproxy did not listen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    firewall.blackhole_udp(relay_port, Some(SANDBOX_UID))?;
    firewall.rule(&format!(
        "meta skuid {SANDBOX_UID} tcp dport {{ {relay_port}, {control_port} }} reject"
    ))?;
    let echo = echo_server().await;
    let user = net.mint(TokenKind::User, "dev", None).await?;

    // Without the proxy the sandboxed CLI cannot even reach the API: the rules hold.
    let (ok, _, err) = net
        .ferry_tcp(&user, "demo--dev", &echo.to_string(), b"x")
        .await?;
    ensure!(!ok, "the CLI got out without the proxy: {err}");

    net.client_extra_env.push((
        "HTTPS_PROXY".into(),
        format!("http://127.0.0.1:{proxy_port}"),
    ));
    net.start_agent("demo--dev", &[]).await?;
    net.wait_for_agent("demo--dev", &user).await?;
    let relay = net.relay("eu-1");
    ensure!(
        on_transport(relay, "agent", "tcp").await == 1.0,
        "the agent is not on the tunnel:\n{}",
        net.log_tail("agent-demo--dev", 20)
    );
    let payload = random_bytes(1 << 20);
    let (ok, out, err) = net
        .ferry_tcp(&user, "demo--dev", &echo.to_string(), &payload)
        .await?;
    ensure!(ok && out == payload, "ferry tcp through the proxy: {err}");
    let proxy_log = std::fs::read_to_string(dir.join("tinyproxy.log"))?;
    for port in [relay_port, control_port] {
        ensure!(
            proxy_log.contains(&format!("CONNECT 127.0.0.1:{port}"))
                || proxy_log.contains(&format!(":{port}")),
            "the proxy carried nothing to port {port}:\n{proxy_log}"
        );
    }
    Ok(())
}
