//! A relay at its stream limit (`--max-streams`) refuses new streams with the typed,
//! retryable `overloaded`, and the CLI's stream still goes through another relay of
//! the region.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use common::*;
use ferry_proto::token::TokenKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_at_its_stream_limit_refuses_with_overloaded_and_the_cli_goes_elsewhere(
) -> Result<()> {
    let mut net = Network::start("overload").await?;
    net.start_relay_with("eu-1", "eu", "127.0.0.1:0", &["--max-streams", "1"])
        .await?;
    net.start_relay("eu-2", "eu", "127.0.0.1:0").await?;
    let echo = echo_server().await;
    net.start_agent("demo--dev", &[]).await?;
    let user = net.mint(TokenKind::User, "dev", None).await?;
    net.wait_for_agent("demo--dev", &user).await?;
    net.wait_for_placement("demo--dev", &["eu-1", "eu-2"])
        .await?;
    let (eu1, eu2) = (net.relay("eu-1").admin, net.relay("eu-2").admin);
    let limit = scrape(eu1).await?;
    assert_eq!(limit.sum("ferry_relay_stream_limit", &[]), 1.0);

    // One long stream through eu-1 takes its only slot.
    let (_forward, local) = net
        .port_forward_env(&user, "demo--dev", echo, &[("FERRY_RELAY", "eu-1")])
        .await?;
    let mut held = tokio::net::TcpStream::connect(local).await?;
    held.write_all(b"held").await?;
    let mut buf = [0u8; 4];
    held.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"held");
    let busy = scrape(eu1).await?;
    assert_eq!(
        busy.sum("ferry_relay_streams_active", &[("kind", "port")]),
        1.0
    );
    let eu2_before = scrape(eu2).await?;

    // The next stream asks eu-1 first, is refused as overloaded, and succeeds on eu-2.
    let (ok, out, err) = net
        .ferry_tcp_env(
            &user,
            "demo--dev",
            &echo.to_string(),
            b"through another relay",
            &[("FERRY_RELAY", "eu-1"), ("FERRY_LOG", "info")],
        )
        .await?;
    assert!(ok, "{err}");
    assert_eq!(out, b"through another relay");
    assert!(
        err.contains("overloaded") && err.contains("retrying on another relay"),
        "the CLI should say it retried after `overloaded`: {err}"
    );
    let refused = scrape(eu1).await?;
    assert_eq!(
        refused.sum(
            "ferry_relay_refusals_total",
            &[("scope", "stream"), ("reason", "overloaded")]
        ),
        1.0
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let eu2_after = scrape(eu2).await?;
        let opened = eu2_after.sum("ferry_relay_streams_opened_total", &[("kind", "port")])
            - eu2_before.sum("ferry_relay_streams_opened_total", &[("kind", "port")]);
        if opened == 1.0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("eu-2 opened {opened} streams, expected the retried one");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The held stream is unharmed, and once it ends eu-1 takes streams again.
    held.write_all(b"more").await?;
    held.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"more");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while scrape(eu1).await?.sum("ferry_relay_streams_active", &[]) != 0.0 {
        if Instant::now() > deadline {
            bail!("eu-1 still counts the closed stream as active");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, out, err) = net
        .ferry_tcp_via("eu-1", &user, "demo--dev", &echo.to_string(), b"back")
        .await?;
    assert!(ok, "{err}");
    assert_eq!(out, b"back");
    let after = scrape(eu1).await?;
    assert_eq!(
        after.sum(
            "ferry_relay_refusals_total",
            &[("scope", "stream"), ("reason", "overloaded")]
        ),
        1.0,
        "a freed slot takes the next stream"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_at_its_connection_limit_refuses_the_hello_with_overloaded() -> Result<()> {
    let mut net = Network::start("overload-conns").await?;
    // The agent's connection takes eu-1's only slot; mesh links are not counted.
    net.start_relay_with("eu-1", "eu", "127.0.0.1:0", &["--max-connections", "1"])
        .await?;
    net.start_relay("eu-2", "eu", "127.0.0.1:0").await?;
    let echo = echo_server().await.to_string();
    net.start_agent("demo--dev", &[]).await?;
    let user = net.mint(TokenKind::User, "dev", None).await?;
    net.wait_for_agent("demo--dev", &user).await?;
    net.wait_for_placement("demo--dev", &["eu-1", "eu-2"])
        .await?;
    let eu1 = net.relay("eu-1").admin;
    let full = scrape(eu1).await?;
    assert_eq!(full.sum("ferry_relay_connection_limit", &[]), 1.0);
    assert_eq!(
        full.sum("ferry_relay_connections", &[("role", "agent")]),
        1.0
    );

    let (ok, out, err) = net
        .ferry_tcp_via("eu-1", &user, "demo--dev", &echo, b"via eu-2")
        .await?;
    assert!(ok, "{err}");
    assert_eq!(out, b"via eu-2");
    let refused = scrape(eu1).await?;
    // Relative to before: on a loaded machine the agent's own reconnects may have met
    // the full relay already.
    let refusals = |s: &Scrape| {
        s.sum(
            "ferry_relay_refusals_total",
            &[("scope", "connection"), ("reason", "overloaded")],
        )
    };
    assert_eq!(refusals(&refused) - refusals(&full), 1.0);
    assert_eq!(
        refused.sum("ferry_relay_streams_opened_total", &[]),
        0.0,
        "the refused client never opened a stream on eu-1"
    );
    Ok(())
}
