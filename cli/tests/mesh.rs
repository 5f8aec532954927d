//! The regional mesh over real processes: three relays in `eu`, two in `us`, an agent
//! homed in `eu` on its ring owner with a standby, and streams entering through every
//! relay. Payloads are random and checked byte for byte.

mod common;

use std::time::{Duration, Instant};

use anyhow::Context;
use common::*;
use ferry_proto::token::TokenKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WORKSPACE: &str = "demo--dev";

/// The placement every process computes: (owner, standby, the third eu relay).
fn eu_placement(workspace: &str) -> (String, String, String) {
    let ring = ferry_ring::Ring::new(["eu-1", "eu-2", "eu-3"]);
    let order = ring.successors(workspace);
    (
        order[0].to_string(),
        order[1].to_string(),
        order[2].to_string(),
    )
}

/// Three relays in eu, two in us, the demo agent homed in eu on owner + standby.
async fn mesh_network(name: &str) -> anyhow::Result<(Network, String)> {
    let mut net = Network::start(name).await?;
    for (relay, region) in [
        ("eu-1", "eu"),
        ("eu-2", "eu"),
        ("eu-3", "eu"),
        ("us-1", "us"),
        ("us-2", "us"),
    ] {
        net.start_relay(relay, region, "127.0.0.1:0").await?;
    }
    net.start_agent(WORKSPACE, &["--region", "eu"]).await?;
    let user = net.mint(TokenKind::User, "dev", None).await?;
    let (owner, standby, _) = eu_placement(WORKSPACE);
    net.wait_for_placement(WORKSPACE, &[&owner, &standby])
        .await?;
    Ok((net, user))
}

async fn echo_through(
    net: &Network,
    relay: &str,
    user: &str,
    port: u16,
    payload: &[u8],
) -> anyhow::Result<()> {
    let (ok, out, err) = net
        .ferry_tcp_via(relay, user, "demo", &port.to_string(), payload)
        .await?;
    anyhow::ensure!(ok, "via {relay}: {err}");
    anyhow::ensure!(
        out == payload,
        "via {relay}: {} bytes back for {} sent, or corrupted",
        out.len(),
        payload.len()
    );
    Ok(())
}

fn log_of(net: &Network, relay: &str) -> String {
    std::fs::read_to_string(net.dir.0.join(format!("relay-{relay}.log"))).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_local_same_region_and_cross_region_is_byte_exact() -> anyhow::Result<()> {
    let (net, user) = mesh_network("mesh-paths").await?;
    let echo = echo_server().await;
    let (owner, standby, other) = eu_placement(WORKSPACE);
    let payload = random_bytes(256 * 1024);

    // Local: the owner serves from its own agent connection.
    echo_through(&net, &owner, &user, echo, &payload).await?;
    // The standby holds the agent too and serves locally.
    echo_through(&net, &standby, &user, echo, &payload).await?;
    // Same region: the third eu relay forwards one hop to the owner.
    echo_through(&net, &other, &user, echo, &payload).await?;
    // Cross region: us relays forward to the owner in eu.
    echo_through(&net, "us-1", &user, echo, &payload).await?;
    echo_through(&net, "us-2", &user, echo, &payload).await?;

    // The owner saw forwarded streams (one hop) and served them from its agent.
    let owner_log = log_of(&net, &owner);
    assert!(
        owner_log.contains("hops=1"),
        "owner {owner} never served a forwarded stream"
    );
    // Mesh links are mutual TLS: every relay accepted links from its peers.
    for relay in ["eu-1", "eu-2", "eu-3"] {
        assert!(
            log_of(&net, relay).contains("mesh link accepted"),
            "{relay} accepted no mesh link"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_fails_over_to_the_standby_within_a_second() -> anyhow::Result<()> {
    let (mut net, user) = mesh_network("mesh-failover").await?;
    let echo = echo_server().await;
    let (owner, _standby, other) = eu_placement(WORKSPACE);
    let payload = random_bytes(64 * 1024);
    echo_through(&net, &other, &user, echo, &payload).await?;

    let mut killed = net.take_relay(&owner);
    let t0 = Instant::now();
    killed.child.kill().await?;
    killed.child.wait().await?;
    // New streams through the same-region relay: served via the standby once the
    // mesh notices the owner is gone.
    let mut attempts = 0;
    let failover = loop {
        attempts += 1;
        let (ok, out, _) = net
            .ferry_tcp_via(&other, &user, "demo", &echo.to_string(), b"ping")
            .await?;
        if ok && out == b"ping" {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no failover after 20s"
        );
    };
    println!("SIGKILL failover: first stream served via the standby after {failover:?} ({attempts} attempts)");
    // The bound. It includes starting the CLI; the entry relay takes the owner
    // for dead after half a second of silence on their link (relay/src/mesh.rs,
    // SILENT_FOR), where waiting for quinn's idle timeout took 1.2-1.3 s.
    assert!(
        failover < Duration::from_secs(1),
        "failover took {failover:?}"
    );

    // The entry relay counted the dead owner's silence, for operators.
    let scraped = scrape(net.relay(&other).admin).await?;
    let silent = scraped.sum("ferry_relay_mesh_peers_silent_total", &[]);
    assert!(silent >= 1.0, "{other} counted {silent} silent peers");

    // New streams keep being served promptly while the entry relay still counts the
    // dead owner among its peers: its link closes (quinn's idle timeout), and each
    // redial of the dead peer runs in the background instead of holding a stream for
    // the whole dial timeout (2 s, for one stream every few seconds here before).
    let mut slowest = Duration::ZERO;
    while t0.elapsed() < Duration::from_secs(5) {
        let started = Instant::now();
        let (ok, out, err) = net
            .ferry_tcp_via(&other, &user, "demo", &echo.to_string(), b"ping")
            .await?;
        assert!(ok && out == b"ping", "a stream after the failover: {err}");
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("slowest new stream in the 5 s after SIGKILL: {slowest:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "a new stream took {slowest:?}"
    );

    // Every remaining path, byte for byte, through the standby.
    for relay in [other.as_str(), "us-1", "us-2"] {
        echo_through(&net, relay, &user, echo, &payload).await?;
    }
    // A client told to use the dead relay moves on to another one.
    let (ok, out, err) = net
        .ferry_tcp_via(&owner, &user, "demo", &echo.to_string(), &payload)
        .await?;
    assert!(ok && out == payload, "via the dead relay first: {err}");
    Ok(())
}

/// One connection through a port-forward: the payload goes out, the echo comes back.
async fn echo_via_forward(forward: std::net::SocketAddr, payload: &[u8]) -> anyhow::Result<()> {
    let mut tcp = tokio::net::TcpStream::connect(forward).await?;
    tcp.write_all(payload).await?;
    tcp.shutdown().await?;
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await?;
    anyhow::ensure!(
        out == payload,
        "{} bytes back for {} sent, or corrupted",
        out.len(),
        payload.len()
    );
    Ok(())
}

/// A long-lived `ferry port-forward` whose relay is killed: nothing closes its QUIC
/// connection, which would stay open for its 30 s idle timeout, and a new stream on it
/// waited out the 15 s stream timeout and then failed (past the CLI's 12 s retry
/// window). The CLI pings its relay every second and takes three silent seconds for
/// death.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_forward_moves_on_when_its_relay_is_killed() -> anyhow::Result<()> {
    let (mut net, user) = mesh_network("mesh-forward-kill").await?;
    let echo = echo_server().await;
    // Through the relay that is neither the agent's owner nor its standby, so that
    // only the client's side of the path dies.
    let (_owner, _standby, other) = eu_placement(WORKSPACE);
    let (mut forward_child, forward) = net
        .port_forward_env(&user, "demo", echo, &[("FERRY_RELAY", &other)])
        .await?;
    let payload = random_bytes(64 * 1024);
    echo_via_forward(forward, &payload).await?;
    // A connection that stays open through the forward while its relay dies.
    let mut held = tokio::net::TcpStream::connect(forward).await?;
    held.write_all(b"ping").await?;
    let mut pong = [0u8; 4];
    held.read_exact(&mut pong).await?;
    assert_eq!(&pong, b"ping");

    let mut killed = net.take_relay(&other);
    killed.child.kill().await?;
    killed.child.wait().await?;
    let t0 = Instant::now();
    let held_end = tokio::spawn(async move {
        let mut rest = Vec::new();
        let ended =
            tokio::time::timeout(Duration::from_secs(30), held.read_to_end(&mut rest)).await;
        (t0.elapsed(), ended.is_ok())
    });
    tokio::time::timeout(Duration::from_secs(30), echo_via_forward(forward, &payload))
        .await
        .context("no answer through the port-forward within 30 s")??;
    let moved = t0.elapsed();
    println!("port-forward: a new stream after its relay's SIGKILL took {moved:?}");
    assert!(
        moved < Duration::from_secs(6),
        "the port-forward took {moved:?} to move on"
    );
    // The open connection ends once the CLI finds its relay silent while another
    // relay answers, not after QUIC's 30 s idle timeout.
    let (held_for, ended) = held_end.await?;
    println!("port-forward: an open connection ended {held_for:?} after its relay's SIGKILL");
    assert!(
        ended,
        "the open connection was still open 30 s after its relay died"
    );
    assert!(
        held_for < Duration::from_secs(8),
        "the open connection ended only after {held_for:?}"
    );
    // It stays on the relay it moved to.
    let t1 = Instant::now();
    echo_via_forward(forward, &payload).await?;
    assert!(
        t1.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t1.elapsed()
    );
    forward_child.kill().await?;
    Ok(())
}

/// `ferry tcp` holds one stream and opens no other, so nothing but the CLI's watchdog
/// notices when its relay is killed: after three silent seconds another relay answers
/// a handshake, the dead relay's connection is closed, and the process fails with a
/// warning that names both relays, where it used to hang for QUIC's 30 s idle timeout
/// (and then exit 0, as if the transfer were complete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_ends_soon_after_its_relay_is_killed() -> anyhow::Result<()> {
    let (mut net, user) = mesh_network("mesh-idle-kill").await?;
    let echo = echo_server().await;
    let (_owner, _standby, other) = eu_placement(WORKSPACE);
    let mut tcp = tokio::process::Command::new(FERRY)
        .args(["tcp", "demo", &echo.to_string()])
        .envs(net.client_env(&user))
        .env("FERRY_RELAY", &other)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = tcp.stdin.take().context("stdin")?;
    let mut stdout = tcp.stdout.take().context("stdout")?;
    stdin.write_all(b"ping").await?;
    let mut pong = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(20), stdout.read_exact(&mut pong))
        .await
        .context("no echo through ferry tcp")??;
    assert_eq!(&pong, b"ping");

    let mut killed = net.take_relay(&other);
    killed.child.kill().await?;
    killed.child.wait().await?;
    let t0 = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(30), tcp.wait())
        .await
        .context("ferry tcp still running 30 s after its relay's SIGKILL")??;
    let ended = t0.elapsed();

    let mut stderr = String::new();
    tcp.stderr
        .take()
        .context("stderr")?
        .read_to_string(&mut stderr)
        .await?;
    println!("ferry tcp ended {ended:?} after its relay's SIGKILL ({status}):\n{stderr}");
    assert!(
        ended < Duration::from_secs(8),
        "ferry tcp ended only {ended:?} after its relay died; stderr: {stderr}"
    );
    assert!(
        stderr.contains("taking it for dead") && stderr.contains(&other),
        "the warning names the dead relay: {stderr}"
    );
    assert!(
        !status.success() && stderr.contains("broke off after 4 bytes"),
        "a session cut short is an error, not a finished transfer ({status}): {stderr}"
    );
    drop(stdin);
    Ok(())
}

/// Waits until each workspace is on its (owner, standby) and the directory names that
/// owner: the relays agree with the ring even where the agent's connections did not
/// change (a standby whose owner left becomes the owner).
async fn settled(net: &Network, placements: Vec<(String, Vec<String>)>) -> anyhow::Result<()> {
    for (w, relays) in &placements {
        net.wait_for_placement(w, &[&relays[0], &relays[1]]).await?;
    }
    let started = Instant::now();
    for (w, relays) in &placements {
        net.wait_for_owner(w, &relays[0]).await?;
    }
    println!("owners agreed {:?} after placement", started.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_follow_ring_churn_and_stay_reachable() -> anyhow::Result<()> {
    let mut net = Network::start("mesh-churn").await?;
    net.start_relay("eu-1", "eu", "127.0.0.1:0").await?;
    net.start_relay("eu-2", "eu", "127.0.0.1:0").await?;
    let workspaces: Vec<String> = (0..4).map(|i| format!("w{i}--dev")).collect();
    for w in &workspaces {
        net.start_agent(w, &["--region", "eu"]).await?;
    }
    let user = net.mint(TokenKind::User, "dev", None).await?;
    let echo = echo_server().await;
    let settle = |relays: &'static [&'static str]| {
        let ring = ferry_ring::Ring::new(relays.iter().copied());
        workspaces
            .iter()
            .map(|w| {
                let order = ring.successors(w);
                (w.clone(), vec![order[0].to_string(), order[1].to_string()])
            })
            .collect::<Vec<_>>()
    };
    // Every directory snapshot during the churn, to check that no workspace ever had
    // two owners and that every owner held the agent.
    let snapshots = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let watching = tokio_util::sync::CancellationToken::new();
    let watcher = {
        let (snapshots, watching) = (snapshots.clone(), watching.clone());
        let control = net.control_client();
        let admin = net.admin_token.clone();
        tokio::spawn(async move {
            while !watching.is_cancelled() {
                if let Ok(d) = control
                    .get::<ferry_proto::api::DirectoryResponse>("/api/v1/directory", Some(&admin))
                    .await
                {
                    snapshots.lock().unwrap().push(d.workspaces);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    settled(&net, settle(&["eu-1", "eu-2"])).await?;
    check_all(&net, &user, &workspaces, echo).await?;

    // A relay joins: agents whose placement now includes it move there.
    net.start_relay("eu-3", "eu", "127.0.0.1:0").await?;
    let three = settle(&["eu-1", "eu-2", "eu-3"]);
    let moved = three
        .iter()
        .filter(|(_, r)| r.contains(&"eu-3".to_string()))
        .count();
    println!(
        "eu-3 joined: {moved} of {} workspaces placed on it",
        three.len()
    );
    settled(&net, three).await?;
    check_all(&net, &user, &workspaces, echo).await?;

    // It leaves (drained): they move back.
    let leaving = net.take_relay("eu-3");
    sigterm(&leaving.child);
    let mut child = leaving.child;
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    assert!(exit.success());
    settled(&net, settle(&["eu-1", "eu-2"])).await?;
    check_all(&net, &user, &workspaces, echo).await?;

    watching.cancel();
    watcher.await?;
    let snapshots = snapshots.lock().unwrap();
    assert!(
        snapshots.len() > 10,
        "the directory was polled {} times",
        snapshots.len()
    );
    let mut ownerless = 0;
    for snapshot in snapshots.iter() {
        for w in &workspaces {
            let records: Vec<_> = snapshot.iter().filter(|r| &r.workspace == w).collect();
            assert!(records.len() <= 1, "{w} listed twice: {records:?}");
            let Some(record) = records.first() else {
                continue;
            };
            match &record.owner {
                Some(owner) => assert_eq!(
                    record.relays.first(),
                    Some(owner),
                    "{w}'s owner must hold its agent and be listed first: {record:?}"
                ),
                None => ownerless += 1,
            }
        }
    }
    println!(
        "{} directory snapshots; a workspace was without an owner (served by its standby) in {ownerless} places",
        snapshots.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_link_without_a_client_certificate_is_refused() -> anyhow::Result<()> {
    let mut net = Network::start("mesh-mtls").await?;
    let addr = net.start_relay("eu-1", "eu", "127.0.0.1:0").await?;
    // A relay token, but no client certificate: the token alone must not open the mesh.
    let token = net.mint(TokenKind::Relay, "intruder", None).await?;
    let ca = std::fs::read_to_string(&net.ca_file)?;
    let tls = ferry_certs::client_config(&ca, &[ferry_proto::alpn::MESH])?;
    let endpoint = ferry_transport::quic::client_endpoint(addr, tls, &Default::default())?;
    let result = ferry_transport::dial::connect(&endpoint, addr, "127.0.0.1", &token).await;
    assert!(
        result.is_err(),
        "a mesh link without a certificate was accepted"
    );
    let log = log_of(&net, "eu-1");
    assert!(
        log.contains("mesh link without a client certificate refused"),
        "relay did not say why"
    );
    Ok(())
}

/// Every workspace answers, byte for byte.
async fn check_all(
    net: &Network,
    user: &str,
    workspaces: &[String],
    echo: u16,
) -> anyhow::Result<()> {
    for w in workspaces {
        let payload = random_bytes(8 * 1024);
        let (ok, out, err) = net.ferry_tcp(user, w, &echo.to_string(), &payload).await?;
        anyhow::ensure!(ok && out == payload, "{w}: {err}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_keeps_routing_while_the_control_plane_is_down() -> anyhow::Result<()> {
    let (mut net, user) = mesh_network("mesh-control-down").await?;
    let echo = echo_server().await;
    let (_, _, other) = eu_placement(WORKSPACE);
    let payload = random_bytes(32 * 1024);
    // Warms the CLI's region map cache and the relays' directory caches.
    echo_through(&net, &other, &user, echo, &payload).await?;
    echo_through(&net, "us-1", &user, echo, &payload).await?;

    net.control.kill().await?;
    net.control.wait().await?;
    for relay in [other.as_str(), "us-1", "us-2"] {
        echo_through(&net, relay, &user, echo, &payload).await?;
    }

    // A relay restarted during the outage starts from its on-disk cache (keys, region
    // map, directory) and forwards to the owner like before.
    let restarted = net.take_relay(&other);
    let (addr, token) = (restarted.addr, restarted.token.clone());
    let mut child = restarted.child;
    child.kill().await?;
    child.wait().await?;
    net.start_relay_with_token(&other, "eu", &addr.to_string(), &token, &[])
        .await?;
    // Straight at that relay, so that no retry elsewhere can hide a failure.
    let ca = std::fs::read_to_string(&net.ca_file)?;
    let tls = ferry_certs::client_config(&ca, &[ferry_proto::alpn::CLIENT])?;
    let endpoint = ferry_transport::quic::client_endpoint(addr, tls, &Default::default())?;
    let session = ferry_transport::dial::connect(&endpoint, addr, "127.0.0.1", &user).await?;
    let header = ferry_proto::StreamHeader::new(
        ferry_proto::WorkspaceLabel::parse(WORKSPACE)?,
        ferry_proto::Target::Port(echo),
    );
    let (mut send, mut recv) = ferry_transport::dial::open_stream(
        &session.conn,
        &header,
        ferry_transport::dial::STREAM_REPLY_TIMEOUT,
    )
    .await?;
    send.write_all(&payload).await?;
    send.finish()?;
    let back = tokio::time::timeout(Duration::from_secs(20), recv.read_to_end(1 << 20)).await??;
    assert!(
        back == payload,
        "{} bytes back through the restarted relay",
        back.len()
    );
    Ok(())
}

/// A loopback port free for both UDP and TCP (a relay binds both with one number),
/// released for the relay to take.
fn free_relay_port(ip: &str) -> anyhow::Result<u16> {
    for _ in 0..20 {
        let udp = std::net::UdpSocket::bind((ip, 0))?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port on {ip}")
}

/// Starts two eu relays on `listen_ip`, each advertised as `NAME.ferry.test:PORT`
/// with `records` (on the relay's port) in a DNS server the test runs, and waits until
/// each has dialed its mesh link to the other.
async fn relays_by_name_link_up(
    test: &str,
    listen_ip: &str,
    records: &[&str],
) -> anyhow::Result<()> {
    let dns = ferry_transport::test_dns::TestDns::start(60).await?;
    let mut net = Network::start(test).await?;
    net.relay_env
        .push(("FERRY_DNS_SERVER".into(), dns.addr().to_string()));
    for relay in ["eu-1", "eu-2"] {
        let port = free_relay_port(listen_ip)?;
        let name = format!("{relay}.ferry.test");
        let ips = records
            .iter()
            .map(|ip| ip.parse())
            .collect::<Result<Vec<_>, _>>()?;
        dns.set(&name, ips);
        let listen = std::net::SocketAddr::new(listen_ip.parse()?, port).to_string();
        let advertise = format!("{name}:{port}");
        net.start_relay_with(relay, "eu", &listen, &["--advertise", &advertise])
            .await?;
    }
    // The control plane publishes the names; each relay resolves the other's.
    let user = net.mint(TokenKind::User, "dev", None).await?;
    let map: ferry_proto::api::RegionsResponse = net
        .control_client()
        .get("/api/v1/regions", Some(&user))
        .await?;
    let published: Vec<&str> = map.regions[0]
        .relays
        .iter()
        .map(|r| r.quic_addr.as_str())
        .collect();
    anyhow::ensure!(
        published.iter().all(|a| a.contains(".ferry.test:")),
        "published {published:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut up = Vec::new();
        for relay in ["eu-1", "eu-2"] {
            let scrape = scrape(net.relay(relay).admin).await?;
            if scrape.sum("ferry_relay_mesh_links", &[("relay", relay)]) >= 1.0 {
                up.push(relay);
            }
        }
        if up.len() == 2 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "mesh links dialed by name: only {up:?} after 15 s\n{}\n{}",
            log_of(&net, "eu-1"),
            log_of(&net, "eu-2")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(dns.queries() >= 2, "the relays never asked the DNS");
    Ok(())
}

/// A relay advertised by a name with two addresses, the first raced (IPv6) dead for
/// it: the mesh links up through the live one.
#[tokio::test]
async fn relays_advertised_by_name_link_up_through_the_live_address() -> anyhow::Result<()> {
    relays_by_name_link_up("mesh-by-name", "127.0.0.1", &["::1", "127.0.0.1"]).await
}

/// The same over IPv6 loopback end to end.
#[tokio::test]
async fn relays_advertised_by_name_link_up_over_ipv6_loopback() -> anyhow::Result<()> {
    relays_by_name_link_up("mesh-by-name-v6", "::1", &["::1"]).await
}
