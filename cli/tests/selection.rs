//! Region selection over the WAN emulator with real processes: relays in three
//! regions at clearly different RTTs from `home` (10, 60 and 150 ms; see
//! netbench/topologies/three-regions.toml), an agent and the CLI at home. They pick
//! the nearest region, stay put under jitter, move when the nearest region's relays
//! go down and come back once it answers again. Assertions are on choices (which
//! region, which relay holds the agent), never on timing.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::*;
use ferry_proto::token::TokenKind;

const WORKSPACE: &str = "demo--dev";

/// `ferry ping --json`: the chosen region.
async fn ping_choice(net: &Network, user: &str, count: &str) -> Result<String> {
    let (ok, out, err) = net
        .ferry_client(
            user,
            &["ping", "--json", "-c", count, "--interval-ms", "100"],
            &[],
        )
        .await?;
    anyhow::ensure!(ok, "ferry ping failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    Ok(v["chosen"].as_str().unwrap_or("none").to_string())
}

/// `ferry status --json`: the hops as (from, to, rtt_us).
async fn status_hops(net: &Network, user: &str) -> Result<Vec<(String, String, u64)>> {
    status_hops_env(net, user, &[]).await
}

async fn status_hops_env(
    net: &Network,
    user: &str,
    envs: &[(&str, &str)],
) -> Result<Vec<(String, String, u64)>> {
    let (ok, out, err) = net
        .ferry_client(user, &["status", "demo", "--json"], envs)
        .await?;
    anyhow::ensure!(ok, "ferry status failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    Ok(v["hops"]
        .as_array()
        .context("hops")?
        .iter()
        .map(|h| {
            (
                h["from"].as_str().unwrap_or_default().to_string(),
                h["to"].as_str().unwrap_or_default().to_string(),
                h["rtt_us"].as_u64().unwrap_or_default(),
            )
        })
        .collect())
}

/// Polls `ferry status` until the relay holding the agent (the last hop's origin)
/// is in `region`.
async fn wait_for_agent_in(
    net: &Network,
    user: &str,
    region: &str,
) -> Result<Vec<(String, String, u64)>> {
    let deadline = Instant::now() + Duration::from_secs(45);
    let prefix = format!("relay:{region}-");
    loop {
        let hops = status_hops(net, user).await;
        if let Ok(hops) = &hops {
            if hops.last().is_some_and(|(from, to, _)| {
                from.starts_with(&prefix) && to == &format!("agent:{WORKSPACE}")
            }) {
                return Ok(hops.clone());
            }
        }
        if Instant::now() > deadline {
            bail!("the agent never settled in {region}: last status {hops:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn agent_log(net: &Network) -> std::path::PathBuf {
    net.dir.0.join(format!("agent-{WORKSPACE}.log"))
}

fn choices_in_log(net: &Network) -> Vec<String> {
    std::fs::read_to_string(agent_log(net))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("home region chosen"))
        .map(|l| {
            l.split("region=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .map(|r| r.trim_matches('"'))
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nearest_region_wins_and_an_outage_moves_everyone_and_back() -> Result<()> {
    let mut wan = Wan::checked_in("three-regions")?;
    let mut net = Network::start("selection-three").await?;
    for (relay, region) in [
        ("eu-1", "eu"),
        ("eu-2", "eu"),
        ("us-1", "us"),
        ("ap-1", "ap"),
    ] {
        net.start_relay_behind(&mut wan, relay, region, &[]).await?;
    }
    net.start_agent(WORKSPACE, &["--probe-ms", "200"]).await?;
    let user = net.mint(TokenKind::User, "dev", None).await?;

    // Both pick eu (10 ms) over us (60 ms) and ap (150 ms).
    wait_for_agent_in(&net, &user, "eu").await?;
    // (While the agent was settling, a relay without it yet may have sent the CLI on
    // to the next relay; now the first one serves.)
    let hops = status_hops(&net, &user).await?;
    assert!(
        hops[0].1.starts_with("relay:eu-"),
        "the CLI dialed {} first",
        hops[0].1
    );
    // The emulated 10 ms is a floor the measurement cannot go under.
    assert!(hops[0].2 >= 8_000, "client -> relay RTT {} us", hops[0].2);
    assert_eq!(ping_choice(&net, &user, "3").await?, "eu");
    assert_eq!(choices_in_log(&net), ["eu"]);

    // A CLI pinned to us goes there, and the path crosses the mesh to eu: the relays
    // report the us -> eu hop at (at least) its emulated 70 ms.
    let pinned = [("FERRY_REGION", "us")];
    let (ok, out, err) = net
        .ferry_client(&user, &["ping", "--json", "-c", "1"], &pinned)
        .await?;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(
        (v["chosen"].as_str(), v["reason"].as_str()),
        (Some("us"), Some("pinned"))
    );
    let hops = status_hops_env(&net, &user, &pinned).await?;
    assert_eq!(hops.len(), 3, "{hops:?}");
    assert_eq!(hops[0].1, "relay:us-1");
    assert_eq!(hops[1].0, "relay:us-1");
    assert!(hops[1].1.starts_with("relay:eu-"), "{hops:?}");
    assert!(hops[1].2 >= 56_000, "us -> eu mesh RTT {} us", hops[1].2);
    assert_eq!(hops[2].1, format!("agent:{WORKSPACE}"));
    let echo = echo_server().await;
    let (ok, out, err) = net
        .ferry_tcp(&user, "demo", &echo.to_string(), b"near")
        .await?;
    assert!(ok && out == b"near", "{err}");

    // eu goes dark: both relays killed.
    let mut dead = Vec::new();
    for name in ["eu-1", "eu-2"] {
        let mut relay = net.take_relay(name);
        relay.child.kill().await?;
        relay.child.wait().await?;
        dead.push(relay);
    }
    // The agent moves to the next nearest region, us.
    wait_for_log(&agent_log(&net), "region=\"us\"", Duration::from_secs(30)).await?;
    assert_eq!(ping_choice(&net, &user, "4").await?, "us");
    wait_for_agent_in(&net, &user, "us").await?;
    let hops = status_hops(&net, &user).await?;
    assert!(hops[0].1.starts_with("relay:us-"), "{hops:?}");
    let (ok, out, err) = net
        .ferry_tcp(&user, "demo", &echo.to_string(), b"moved")
        .await?;
    assert!(ok && out == b"moved", "{err}");

    // eu is back on the same ports: clearly better again, so both return.
    for relay in dead {
        net.start_relay_with_token(
            &relay.name,
            "eu",
            &relay.addr.to_string(),
            &relay.token,
            &[
                "--advertise",
                &wan.fronts[&relay.name].local_addr().to_string(),
            ],
        )
        .await?;
    }
    wait_for_agent_in(&net, &user, "eu").await?;
    assert_eq!(choices_in_log(&net), ["eu", "us", "eu"]);
    let log = std::fs::read_to_string(agent_log(&net))?;
    assert!(
        log.contains("clearly nearer than `us`"),
        "no hysteresis reason in the log"
    );
    assert_eq!(ping_choice(&net, &user, "4").await?, "eu");
    Ok(())
}

/// Two regions 10 ms apart with ±15 ms of jitter: neither is ever clearly better, so
/// after the first choice nobody moves, however the samples fall.
const JITTERY: &str = r#"
    [locations]
    home = "127.0.0.1"
    eu = "127.0.1.1"
    us = "127.0.2.1"

    [[link]]
    between = ["home", "eu"]
    rtt_ms = 40
    jitter_ms = 15
    [[link]]
    between = ["home", "us"]
    rtt_ms = 50
    jitter_ms = 15
    [[link]]
    between = ["eu", "us"]
    rtt_ms = 20
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_does_not_make_the_agent_or_the_cli_flap() -> Result<()> {
    let mut wan = Wan::new(JITTERY)?;
    let mut net = Network::start("selection-jitter").await?;
    for (relay, region) in [("eu-1", "eu"), ("us-1", "us")] {
        net.start_relay_behind(&mut wan, relay, region, &[]).await?;
    }
    net.start_agent(WORKSPACE, &["--probe-ms", "100"]).await?;
    let user = net.mint(TokenKind::User, "dev", None).await?;
    net.wait_for_agent(WORKSPACE, &user).await?;
    wait_for_log(
        &agent_log(&net),
        "home region chosen",
        Duration::from_secs(20),
    )
    .await?;
    let first_cli = ping_choice(&net, &user, "3").await?;
    // At least 30 jittered probe rounds for the agent and 18 for the CLI.
    let kept = |net: &Network| {
        std::fs::read_to_string(agent_log(net))
            .unwrap_or_default()
            .matches("home region kept")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut pings = 0;
    while pings < 6 || kept(&net) < 30 {
        assert!(
            Instant::now() < deadline,
            "the agent probed only {} rounds",
            kept(&net)
        );
        assert_eq!(
            ping_choice(&net, &user, "3").await?,
            first_cli,
            "the CLI flapped"
        );
        pings += 1;
    }
    let choices = choices_in_log(&net);
    assert_eq!(choices.len(), 1, "the agent changed region: {choices:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_agent_falls_back_while_its_region_is_down_and_returns() -> Result<()> {
    let mut wan = Wan::checked_in("three-regions")?;
    let mut net = Network::start("selection-pin").await?;
    for (relay, region) in [("eu-1", "eu"), ("us-1", "us"), ("ap-1", "ap")] {
        net.start_relay_behind(&mut wan, relay, region, &[]).await?;
    }
    // Pinned to us (60 ms): the pin beats the nearer eu (10 ms).
    net.start_agent(WORKSPACE, &["--region", "us", "--probe-ms", "200"])
        .await?;
    let user = net.mint(TokenKind::User, "dev", None).await?;
    wait_for_agent_in(&net, &user, "us").await?;

    let mut us = net.take_relay("us-1");
    us.child.kill().await?;
    us.child.wait().await?;
    // While us is down the nearest other region, eu, takes over...
    wait_for_agent_in(&net, &user, "eu").await?;
    let log = std::fs::read_to_string(agent_log(&net))?;
    assert!(
        log.contains("pinned region `us` does not answer"),
        "no fallback reason in the agent's log"
    );
    // ...and the pin wins again as soon as us answers.
    net.start_relay_with_token(
        "us-1",
        "us",
        &us.addr.to_string(),
        &us.token,
        &["--advertise", &wan.fronts["us-1"].local_addr().to_string()],
    )
    .await?;
    wait_for_agent_in(&net, &user, "us").await?;
    assert_eq!(choices_in_log(&net), ["us", "eu", "us"]);
    Ok(())
}

/// ap's UDP is dropped on the way (loss = 1: a firewall that lets only TCP through).
const NO_UDP_TO_AP: &str = r#"
    [locations]
    home = "127.0.0.1"
    eu = "127.0.1.1"
    ap = "127.0.3.1"
    [[link]]
    between = ["home", "eu"]
    rtt_ms = 10
    [[link]]
    between = ["home", "ap"]
    rtt_ms = 40
    loss = 1.0
    [[link]]
    between = ["eu", "ap"]
    rtt_ms = 40
"#;

/// A relay that QUIC cannot reach is still measured, over its HTTPS `/.ferry/ping`
/// through the same advertised port, and is not chosen over one that QUIC reaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_without_udp_is_measured_over_https() -> Result<()> {
    let mut wan = Wan::new(NO_UDP_TO_AP)?;
    let mut net = Network::start("selection-no-udp").await?;
    for (relay, region) in [("eu-1", "eu"), ("ap-1", "ap")] {
        net.start_relay_behind(&mut wan, relay, region, &[]).await?;
    }
    net.start_agent(WORKSPACE, &["--probe-ms", "200"]).await?;
    let user = net.mint(TokenKind::User, "dev", None).await?;
    wait_for_agent_in(&net, &user, "eu").await?;

    let (ok, out, err) = net
        .ferry_client(
            &user,
            &["ping", "--json", "-c", "2", "--interval-ms", "100"],
            &[],
        )
        .await?;
    assert!(ok, "ferry ping failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    let region = |name: &str| {
        v["regions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["region"] == name)
            .cloned()
            .unwrap_or_default()
    };
    let (eu, ap) = (region("eu"), region("ap"));
    assert_eq!(eu["via"], "quic", "{out}");
    assert_eq!(ap["via"], "https", "{out}");
    // The HTTPS ping crossed the emulated link: its 40 ms are a floor.
    let ap_rtt = ap["rtt_us"].as_u64().context("ap has no RTT")?;
    assert!(
        ap_rtt >= 38_000,
        "ap measured at {ap_rtt} us over HTTPS: {out}"
    );
    assert_eq!(v["chosen"], "eu", "{out}");
    Ok(())
}
