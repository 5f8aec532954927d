//! The regional mesh over real processes: three relays in `eu`, two in `us`, an agent
//! homed in `eu` on its ring owner with a standby, and streams entering through every
//! relay. Payloads are random and checked byte for byte.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry_proto::token::TokenKind;

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
async fn a_killed_owner_fails_over_to_the_standby_within_seconds() -> anyhow::Result<()> {
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
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
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
