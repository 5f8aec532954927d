//! What goes wrong, and how ferry says so: restarts, unknown workspaces, bad tokens,
//! malformed frames, other tenants.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use ferry_proto::frame::Frame;
use ferry_proto::token::TokenKind;
use ferry_proto::{alpn, ErrorCode, Reply, StreamHeader, Target, WorkspaceLabel};
use ferry_transport::dial::{self, DialError, StreamError};
use ferry_transport::frame_io::read_frame;

fn quic_endpoint(net: &Network, relay: SocketAddr) -> quinn::Endpoint {
    let ca = std::fs::read_to_string(&net.ca_file).unwrap();
    let tls = ferry_certs::client_config(&ca, &[alpn::CLIENT]).unwrap();
    ferry_transport::quic::client_endpoint(relay, tls, &Default::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reconnects_after_its_relay_restarts() -> anyhow::Result<()> {
    let (mut net, user) = one_relay_network("restart").await?;
    let echo = echo_server().await;
    let (ok, out, err) = net
        .ferry_tcp(&user, "demo", &echo.to_string(), b"before")
        .await?;
    assert!(ok && out == b"before", "before restart: {err}");

    let relay = net.relays.pop().unwrap();
    let addr = relay.addr;
    let mut child = relay.child;
    child.kill().await?;
    child.wait().await?;
    // While the relay is down the workspace is unreachable, with a reason.
    let (ok, _, err) = net
        .ferry_tcp(&user, "demo", &echo.to_string(), b"during")
        .await?;
    assert!(!ok, "a stream succeeded with the relay down");
    assert!(
        err.contains("demo--dev"),
        "error does not name the workspace: {err}"
    );

    net.start_relay("eu-1", "eu", &addr.to_string()).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, err) = net
            .ferry_tcp(&user, "demo", &echo.to_string(), b"after")
            .await?;
        if ok && out == b"after" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent never came back: {err}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_disconnected_workspaces_fail_with_the_name_and_reason() -> anyhow::Result<()> {
    let (mut net, user) = one_relay_network("unknown").await?;
    let echo = echo_server().await;

    let (ok, _, err) = net
        .ferry_tcp(&user, "nope", &echo.to_string(), b"x")
        .await?;
    assert!(!ok);
    assert!(
        err.contains("`nope--dev`") && err.contains("does not exist"),
        "{err}"
    );

    // Stop the agent: the relay reports it gone, and the CLI says so.
    let mut agent = net.agents.pop().unwrap();
    agent.kill().await?;
    agent.wait().await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, _, err) = net
            .ferry_tcp(&user, "demo", &echo.to_string(), b"x")
            .await?;
        assert!(
            !ok || std::time::Instant::now() < deadline,
            "workspace still reachable without its agent"
        );
        if !ok {
            assert!(err.contains("`demo--dev`"), "{err}");
            assert!(
                err.contains("no connected agent")
                    || err.contains("agent did not answer")
                    || err.contains("agent connection failed"),
                "{err}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (ok, _, err) = net.ferry_tcp(&user, "Bad_Name", "80", b"").await?;
    assert!(!ok && err.contains("not a workspace name"), "{err}");
    let (ok, _, err) = net.ferry_tcp(&user, "demo", "0", b"").await?;
    assert!(!ok && err.contains("not a port"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expired_and_wrong_kind_tokens_are_refused_with_their_reason() -> anyhow::Result<()> {
    let (net, user) = one_relay_network("tokens").await?;
    let relay = net.relays[0].addr;
    let endpoint = quic_endpoint(&net, relay);

    let expired = net.mint(TokenKind::User, "dev", Some(0)).await?;
    let agent = net.mint(TokenKind::Agent, "demo--dev", None).await?;
    let mut forged = user.clone();
    forged.pop();
    forged.push(if user.ends_with('A') { 'B' } else { 'A' });
    let cases = [
        (
            "garbage",
            "not-a-token".to_string(),
            ErrorCode::Unauthorized,
        ),
        ("forged signature", forged, ErrorCode::Unauthorized),
        ("expired", expired.clone(), ErrorCode::TokenExpired),
        ("agent token as client", agent, ErrorCode::WrongTokenKind),
    ];
    for (what, token, code) in cases {
        match dial::connect(&endpoint, relay, "127.0.0.1", &token).await {
            Err(DialError::Refused { frame, .. }) => {
                assert_eq!(frame.code, code, "{what}: {}", frame.message);
                assert!(!frame.message.is_empty());
            }
            Err(e) => panic!("{what}: refused without a reason: {e}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    }
    // The relay keeps serving good clients after all that.
    assert!(dial::connect(&endpoint, relay, "127.0.0.1", &user)
        .await
        .is_ok());

    // The CLI prints the reason too.
    let (ok, _, err) = net.ferry_tcp(&expired, "demo", "80", b"").await?;
    assert!(!ok && err.contains("expired"), "{err}");
    let (ok, _, err) = net.ferry_tcp("junk", "demo", "80", b"").await?;
    assert!(!ok && err.contains("not a ferry token"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_stream_header_gets_a_protocol_error_and_the_relay_serves_on(
) -> anyhow::Result<()> {
    let (net, user) = one_relay_network("malformed").await?;
    let echo = echo_server().await;
    let relay = net.relays[0].addr;
    let endpoint = quic_endpoint(&net, relay);
    let session = dial::connect(&endpoint, relay, "127.0.0.1", &user).await?;

    let garbage: [&[u8]; 4] = [
        &[0, 3, 9, 9, 9],             // unknown version
        &[0, 4, 1, 0, 200, b'a'],     // label longer than the frame
        &[0xff, 0xff, 1, 2, 3],       // frame length over the limit
        &[0, 6, 1, 7, 1, b'a', 1, 0], // hop count over the limit
    ];
    for raw in garbage {
        let (mut send, mut recv) = session.conn.open_bi().await?;
        send.write_all(raw).await?;
        let reply: Reply =
            tokio::time::timeout(Duration::from_secs(10), read_frame(&mut recv)).await??;
        match reply {
            Reply::Error(e) => assert_eq!(e.code, ErrorCode::Protocol, "{raw:?}: {}", e.message),
            Reply::Ok => panic!("{raw:?} was accepted"),
        }
    }
    // Same connection, a good stream: served.
    let header = StreamHeader::new(WorkspaceLabel::parse("demo--dev")?, Target::Port(echo));
    let (mut send, mut recv) =
        dial::open_stream(&session.conn, &header, dial::STREAM_REPLY_TIMEOUT).await?;
    send.write_all(b"still here").await?;
    send.finish()?;
    let back = recv.read_to_end(1024).await?;
    assert_eq!(back, b"still here");
    assert!(header.to_framed_bytes().len() > 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_workspace_looks_exactly_like_a_missing_one() -> anyhow::Result<()> {
    let (mut net, _dev) = one_relay_network("tenants").await?;
    let echo = echo_server().await;
    net.start_agent("secret--alice", &["--allow-port", &echo.to_string()])
        .await?;
    let alice = net.mint(TokenKind::User, "alice", None).await?;
    net.wait_for_agent("secret--alice", &alice).await?;
    let mallory = net.mint(TokenKind::User, "mallory", None).await?;

    // Through the control plane: same answer for alice's workspace and a missing one.
    let (ok, _, err_theirs) = net
        .ferry_tcp(&mallory, "secret--alice", &echo.to_string(), b"x")
        .await?;
    assert!(!ok);
    assert!(
        err_theirs.contains("does not exist or is not yours"),
        "{err_theirs}"
    );
    let (_, _, err_missing) = net
        .ferry_tcp(&mallory, "ghost--alice", &echo.to_string(), b"x")
        .await?;
    assert_eq!(err_theirs.replace("secret", "ghost"), err_missing);

    // Straight at the relay, bypassing the control plane: refused, nothing leaks.
    let relay = net.relays[0].addr;
    let endpoint = quic_endpoint(&net, relay);
    let session = dial::connect(&endpoint, relay, "127.0.0.1", &mallory).await?;
    let header = StreamHeader::new(WorkspaceLabel::parse("secret--alice")?, Target::Port(echo));
    match dial::open_stream(&session.conn, &header, dial::STREAM_REPLY_TIMEOUT).await {
        Err(StreamError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::UnknownWorkspace, "{}", e.message)
        }
        Err(e) => panic!("refused without a reason: {e}"),
        Ok(_) => panic!("mallory reached alice's workspace"),
    }

    // Alice's agent only allows the echo port.
    let (ok, out, _) = net
        .ferry_tcp(&alice, "secret", &echo.to_string(), b"mine")
        .await?;
    assert!(ok && out == b"mine");
    let (ok, _, err) = net.ferry_tcp(&alice, "secret", "22", b"").await?;
    assert!(!ok && err.contains("port_not_allowed"), "{err}");
    Ok(())
}
