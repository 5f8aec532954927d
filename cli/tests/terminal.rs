//! `ferry terminal`: a real shell on a real PTY in the workspace.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use ferry_proto::terminal::TerminalFrame;
use ferry_proto::token::TokenKind;
use ferry_proto::{alpn, ErrorCode, StreamHeader, Target, WorkspaceLabel};
use ferry_transport::dial::{self, StreamError};

/// Reads terminal output until `needle` shows up.
async fn read_until(
    recv: &mut quinn::RecvStream,
    seen: &mut String,
    needle: &str,
) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !seen.contains(needle) {
            match recv.read_chunk(4096, true).await? {
                Some(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk.bytes)),
                None => anyhow::bail!("terminal closed before `{needle}` appeared: {seen:?}"),
            }
        }
        Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("`{needle}` never appeared: {seen:?}"))?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_runs_a_shell_with_the_requested_size_and_follows_resizes() -> anyhow::Result<()>
{
    let mut net = Network::start("terminal").await?;
    net.start_relay("eu-1", "eu", "127.0.0.1:0").await?;
    net.start_agent("demo--dev", &["--shell", "/bin/sh"])
        .await?;
    net.start_agent("locked--dev", &["--disable-terminal"])
        .await?;
    let user = net.mint(TokenKind::User, "dev", None).await?;
    net.wait_for_agent("demo--dev", &user).await?;
    net.wait_for_agent("locked--dev", &user).await?;

    // The CLI, fed from a pipe: the shell still sees a real terminal of that size.
    let mut cmd = tokio::process::Command::new(FERRY);
    cmd.args(["terminal", "demo", "--size", "100x40"])
        .envs(net.client_env(&user))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, b"stty size; tty; echo ok-$((1+1)); exit\n")
        .await?;
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await??;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("40 100"), "stty size: {text:?}");
    assert!(text.contains("/dev/pts/"), "not a PTY: {text:?}");
    assert!(text.contains("ok-2"), "{text:?}");

    // Over the protocol: a resize frame reaches the shell's terminal.
    let relay = net.relays[0].addr;
    let ca = std::fs::read_to_string(&net.ca_file)?;
    let tls = ferry_certs::client_config(&ca, &[alpn::CLIENT])?;
    let endpoint = ferry_transport::quic::client_endpoint(relay, tls, &Default::default())?;
    let session = dial::connect(&endpoint, relay, "127.0.0.1", &user).await?;
    let header = StreamHeader::new(
        WorkspaceLabel::parse("demo--dev")?,
        Target::Terminal { cols: 80, rows: 24 },
    );
    let (mut send, mut recv) =
        dial::open_stream(&session.conn, &header, dial::STREAM_REPLY_TIMEOUT).await?;
    let mut frames = BytesMut::new();
    TerminalFrame::encode_input(b"stty size\n", &mut frames);
    send.write_all(&frames.split()).await?;
    let mut seen = String::new();
    read_until(&mut recv, &mut seen, "24 80").await?;
    TerminalFrame::Resize {
        cols: 132,
        rows: 50,
    }
    .encode(&mut frames);
    TerminalFrame::encode_input(b"stty size\n", &mut frames);
    send.write_all(&frames.split()).await?;
    read_until(&mut recv, &mut seen, "50 132").await?;
    TerminalFrame::encode_input(b"exit\n", &mut frames);
    send.write_all(&frames.split()).await?;
    send.finish()?;
    tokio::time::timeout(Duration::from_secs(20), recv.read_to_end(1 << 20)).await??;

    // An agent started with --disable-terminal refuses, with a reason.
    let locked = StreamHeader::new(
        WorkspaceLabel::parse("locked--dev")?,
        Target::Terminal { cols: 80, rows: 24 },
    );
    match dial::open_stream(&session.conn, &locked, dial::STREAM_REPLY_TIMEOUT).await {
        Err(StreamError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::PortNotAllowed);
            assert!(
                e.message.contains("terminals are disabled"),
                "{}",
                e.message
            );
        }
        Err(e) => panic!("refused without a reason: {e}"),
        Ok(_) => panic!("a disabled terminal opened"),
    }
    Ok(())
}
