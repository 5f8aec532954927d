//! The control plane as real relays see it: revocations and key rotations reach a
//! running relay within seconds, and a relay keeps routing known workspaces while the
//! control plane is down, even after restarting during the outage.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use ferry_proto::api::RotateKeysResponse;
use ferry_proto::token::TokenKind;
use ferry_proto::{alpn, ErrorCode};
use ferry_transport::dial::{self, DialError};

fn endpoint(net: &Network, relay: SocketAddr, protocol: &[u8]) -> quinn::Endpoint {
    let ca = std::fs::read_to_string(&net.ca_file).unwrap();
    let tls = ferry_certs::client_config(&ca, &[protocol]).unwrap();
    ferry_transport::quic::client_endpoint(relay, tls, &Default::default()).unwrap()
}

/// Polls `dial::connect` until `accepted(result)` holds, for at most `within`.
async fn wait_for_dial(
    endpoint: &quinn::Endpoint,
    relay: SocketAddr,
    token: &str,
    within: Duration,
    mut done: impl FnMut(&Result<dial::Session, DialError>) -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let r = dial::connect(endpoint, relay, "127.0.0.1", token).await;
        if done(&r) {
            return Ok(start.elapsed());
        }
        if let Ok(s) = r {
            s.conn.close(0u32.into(), b"poll");
        }
        anyhow::ensure!(start.elapsed() < within, "not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn refused_as_revoked(r: &Result<dial::Session, DialError>) -> bool {
    matches!(r, Err(DialError::Refused { frame, .. })
        if frame.code == ErrorCode::Unauthorized && frame.message.contains("revoked"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_user_and_agent_tokens_are_refused_by_a_running_relay_within_seconds(
) -> anyhow::Result<()> {
    let (net, _) = one_relay_network("revoke").await?;
    let relay = net.relays[0].addr;
    let client = endpoint(&net, relay, alpn::CLIENT);
    let agent = endpoint(&net, relay, alpn::AGENT);
    let user = net.mint(TokenKind::User, "dev", None).await?;
    let agent_token = net.agent_token("other--dev").await?;
    // Both work before, and keep a session open.
    let user_session = dial::connect(&client, relay, "127.0.0.1", &user).await?;
    let agent_session = dial::connect(&agent, relay, "127.0.0.1", &agent_token.token).await?;

    let jti = ferry_proto::token::peek_claims(&user).unwrap().jti;
    let admin = net.admin_token.clone();
    net.control_client()
        .delete(&format!("/api/v1/tokens/{jti}"), Some(&admin))
        .await?;
    net.control_client()
        .delete(
            &format!(
                "/api/v1/workspaces/other--dev/agent-tokens/{}",
                agent_token.id
            ),
            Some(&admin),
        )
        .await?;
    let took = wait_for_dial(
        &client,
        relay,
        &user,
        Duration::from_secs(10),
        refused_as_revoked,
    )
    .await?;
    wait_for_dial(
        &agent,
        relay,
        &agent_token.token,
        Duration::from_secs(10),
        refused_as_revoked,
    )
    .await?;
    eprintln!("revocation reached the relay in {took:?}");
    // The sessions already open with those tokens are ended too.
    for session in [user_session, agent_session] {
        let reason = tokio::time::timeout(Duration::from_secs(10), session.conn.closed()).await?;
        match reason {
            quinn::ConnectionError::ApplicationClosed(close) => assert_eq!(
                close.error_code,
                quinn::VarInt::from(ErrorCode::Unauthorized.to_u16())
            ),
            other => panic!("closed for another reason: {other}"),
        }
    }
    // Other tokens are unaffected.
    let fresh = net.mint(TokenKind::User, "dev", None).await?;
    assert!(dial::connect(&client, relay, "127.0.0.1", &fresh)
        .await
        .is_ok());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_key_rotation_relays_accept_new_tokens_and_still_accept_old_ones(
) -> anyhow::Result<()> {
    let (mut net, old) = one_relay_network("rotate").await?;
    let relay = net.relays[0].addr;
    let client = endpoint(&net, relay, alpn::CLIENT);
    let rotated: RotateKeysResponse = net
        .control_client()
        .post(
            "/api/v1/keys/rotate",
            Some(&net.admin_token),
            &serde_json::json!({}),
        )
        .await?;
    assert_eq!(rotated.keys.len(), 2, "the old key stays published");
    let new = net.mint(TokenKind::User, "dev", None).await?;
    wait_for_dial(&client, relay, &new, Duration::from_secs(10), |r| r.is_ok()).await?;
    assert!(dial::connect(&client, relay, "127.0.0.1", &old)
        .await
        .is_ok());
    // And the whole path works with the new token.
    let echo = echo_server().await;
    let (ok, out, err) = net
        .ferry_tcp(&new, "demo", &echo.to_string(), b"new key")
        .await?;
    assert!(ok && out == b"new key", "{err}");

    // A leaked key: rotate dropping the old ones. Relays refuse their tokens within
    // seconds, and accept tokens minted with the new admin token.
    let dropped: RotateKeysResponse = net
        .control_client()
        .post(
            "/api/v1/keys/rotate",
            Some(&net.admin_token),
            &ferry_proto::api::RotateKeysRequest { drop_old: true },
        )
        .await?;
    let unknown_key = |r: &Result<dial::Session, DialError>| {
        matches!(r, Err(DialError::Refused { frame, .. })
            if frame.code == ErrorCode::Unauthorized && frame.message.contains("unknown key"))
    };
    wait_for_dial(&client, relay, &new, Duration::from_secs(10), unknown_key).await?;
    let r = dial::connect(&client, relay, "127.0.0.1", &old).await;
    assert!(unknown_key(&r), "a token of a dropped key still works");
    net.admin_token = dropped.admin_token.expect("new admin token");
    let newest = net.mint(TokenKind::User, "dev", None).await?;
    assert!(dial::connect(&client, relay, "127.0.0.1", &newest)
        .await
        .is_ok());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_control_plane_down_a_restarted_relay_still_routes_known_workspaces(
) -> anyhow::Result<()> {
    let (mut net, user) = one_relay_network("control-down").await?;
    let echo = echo_server().await;
    // One lookup while the control plane is up: the CLI remembers the route.
    let (ok, out, err) = net
        .ferry_tcp(&user, "demo", &echo.to_string(), b"up")
        .await?;
    assert!(ok && out == b"up", "{err}");

    // A revoked token must stay refused through the outage and the restart.
    let revoked = net.mint(TokenKind::User, "dev", None).await?;
    let jti = ferry_proto::token::peek_claims(&revoked).unwrap().jti;
    net.control_client()
        .delete(&format!("/api/v1/tokens/{jti}"), Some(&net.admin_token))
        .await?;
    let relay_addr = net.relays[0].addr;
    let client = endpoint(&net, relay_addr, alpn::CLIENT);
    wait_for_dial(
        &client,
        relay_addr,
        &revoked,
        Duration::from_secs(10),
        refused_as_revoked,
    )
    .await?;

    net.control.kill().await?;
    net.control.wait().await?;
    let relay = net.relays.pop().unwrap();
    let (name, region, token) = (
        relay.name.clone(),
        relay.region.clone(),
        relay.token.clone(),
    );
    let mut child = relay.child;
    child.kill().await?;
    child.wait().await?;
    net.start_relay_with_token(&name, &region, &relay_addr.to_string(), &token, &[])
        .await?;

    // The agent finds the relay again, and the CLI reaches the workspace through it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, err) = net
            .ferry_tcp(&user, "demo", &echo.to_string(), b"down")
            .await?;
        if ok && out == b"down" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never routed with the control plane down: {err}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = endpoint(&net, relay_addr, alpn::CLIENT);
    let r = dial::connect(&client, relay_addr, "127.0.0.1", &revoked).await;
    assert!(
        refused_as_revoked(&r),
        "revoked token accepted after the restart"
    );

    // The agent leaves while the control plane is still down: the relay's report is
    // lost. When the control plane returns, the relay's directory snapshot repairs it.
    let relay_log = net.dir.0.join("relay-eu-1.log");
    // The relay notices the agent gone (idle timeout), then gives up reporting it: its
    // reporter has known since it started that the control plane is missing updates,
    // so it leaves this one to the snapshot it keeps trying.
    let report_lost = || -> anyhow::Result<bool> {
        let log = std::fs::read_to_string(&relay_log)?;
        Ok(log.rfind("agent disconnected").is_some_and(|at| {
            log[at..].contains("directory update failed")
                || log[at..].contains("directory update left to the next snapshot")
        }))
    };
    let mut agent = net.agents.pop().unwrap();
    agent.kill().await?;
    agent.wait().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !report_lost()? {
        assert!(
            Instant::now() < deadline,
            "the relay never gave up reporting"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    net.restart_control().await?;
    // The relay that started from its cache enrolls again (the log starts afresh).
    let control_log = net.dir.0.join("control.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&control_log)?.contains("relay registered") {
        assert!(Instant::now() < deadline, "the relay never enrolled again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let route = net
            .control_client()
            .get::<ferry_proto::api::RouteResponse>(
                "/api/v1/workspaces/demo--dev/route",
                Some(&user),
            )
            .await;
        match route {
            Err(ferry_transport::ControlError::Api { code, .. })
                if code == "agent_not_connected" =>
            {
                break
            }
            other => assert!(
                Instant::now() < deadline,
                "the directory was never repaired: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
