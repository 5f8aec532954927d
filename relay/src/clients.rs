//! Serving the two kinds of peers: agents (which we open streams to) and clients
//! (which open streams to us, each forwarded to the workspace's agent).

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::token::TokenKind;
use ferry_proto::{ErrorCode, ErrorFrame, Hello, Reply, StreamHeader, WorkspaceLabel};
use ferry_transport::dial::{self, StreamError};
use ferry_transport::frame_io::{read_frame, write_frame};
use quinn::{Connection, RecvStream, SendStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::server::{check_token, Shared};

/// How long a peer may take to send its hello or a stream header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the hello on the first bi-stream and checks its token. On refusal the reason
/// is sent back, and the connection closed once the peer has read it.
async fn accept_hello(
    shared: &Shared,
    conn: &Connection,
    kind: TokenKind,
) -> Option<(String, SendStream, RecvStream)> {
    let first = tokio::time::timeout(HEADER_TIMEOUT, async {
        let (send, mut recv) = conn.accept_bi().await.ok()?;
        let hello = read_frame::<Hello>(&mut recv).await;
        Some((send, recv, hello))
    })
    .await;
    let Ok(Some((mut send, recv, hello))) = first else {
        conn.close(ErrorCode::Protocol.to_u16().into(), b"no hello");
        return None;
    };
    let verdict = match hello {
        Ok(hello) => check_token(shared, conn, &hello.token, kind),
        Err(e) => Err(ErrorFrame::new(
            ErrorCode::Protocol,
            format!("bad hello: {e}"),
        )),
    };
    match verdict {
        Ok(subject) => {
            write_frame(&mut send, &Reply::Ok).await.ok()?;
            Some((subject, send, recv))
        }
        Err(frame) => {
            tracing::info!(remote = %conn.remote_address(), code = %frame.code, reason = %frame.message, "refused connection");
            let code = frame.code;
            let _ = write_frame(&mut send, &Reply::Error(frame)).await;
            let _ = send.finish();
            // The dialer closes once it has read the refusal; do not wait for ever.
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
            conn.close(code.to_u16().into(), b"refused");
            None
        }
    }
}

/// An agent: register it, keep it until its connection ends.
pub async fn serve_agent(shared: Arc<Shared>, conn: Connection, cancel: CancellationToken) {
    let Some((subject, _control_send, _control_recv)) =
        accept_hello(&shared, &conn, TokenKind::Agent).await
    else {
        return;
    };
    let Ok(label) = WorkspaceLabel::parse(&subject) else {
        conn.close(
            ErrorCode::Unauthorized.to_u16().into(),
            b"agent token subject is not a workspace",
        );
        return;
    };
    let span = tracing::info_span!("agent", workspace = %label, remote = %conn.remote_address());
    async {
        let (id, replaced) = shared.agents.insert(label.clone(), conn.clone());
        if let Some(old) = replaced {
            tracing::warn!("a newer agent connection for this workspace replaces the old one");
            old.conn.close(ErrorCode::Draining.to_u16().into(), b"replaced by a newer connection");
        }
        shared.directory.report(label.as_str(), true);
        tracing::info!("agent connected");
        tokio::select! {
            _ = conn.closed() => {}
            _ = cancel.cancelled() => conn.close(ErrorCode::Draining.to_u16().into(), b"relay shutting down"),
        }
        if shared.agents.remove(&label, id) {
            shared.directory.report(label.as_str(), false);
        }
        tracing::info!(reason = ?conn.close_reason(), "agent disconnected");
    }
    .instrument(span)
    .await
}

/// A client: accept its streams and forward each to the workspace's agent.
pub async fn serve_client(shared: Arc<Shared>, conn: Connection, cancel: CancellationToken) {
    let Some((user, _control_send, _control_recv)) =
        accept_hello(&shared, &conn, TokenKind::User).await
    else {
        return;
    };
    let span = tracing::info_span!("client", %user, remote = %conn.remote_address());
    async {
        let mut streams = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(_) = streams.join_next(), if !streams.is_empty() => {}
                accepted = conn.accept_bi() => {
                    let Ok((send, recv)) = accepted else { break };
                    streams.spawn(forward_stream(shared.clone(), user.clone(), send, recv).in_current_span());
                }
            }
        }
        streams.shutdown().await;
    }
    .instrument(span)
    .await
}

/// Refuses a stream with a typed error and ends it.
async fn refuse(mut send: SendStream, mut recv: RecvStream, frame: ErrorFrame) {
    tracing::debug!(code = %frame.code, reason = %frame.message, "stream refused");
    let _ = write_frame(&mut send, &Reply::Error(frame)).await;
    let _ = send.finish();
    let _ = recv.stop(ferry_transport::splice::ABORTED);
}

async fn forward_stream(shared: Arc<Shared>, user: String, send: SendStream, mut recv: RecvStream) {
    let header =
        match tokio::time::timeout(HEADER_TIMEOUT, read_frame::<StreamHeader>(&mut recv)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                let frame = ErrorFrame::new(ErrorCode::Protocol, format!("bad stream header: {e}"));
                return refuse(send, recv, frame).await;
            }
            Err(_) => {
                let frame = ErrorFrame::new(ErrorCode::Protocol, "no stream header within 10s");
                return refuse(send, recv, frame).await;
            }
        };
    let workspace = &header.workspace;
    // Another user's workspace is refused exactly like one that does not exist.
    if workspace.owner() != user {
        let frame = ErrorFrame::new(
            ErrorCode::UnknownWorkspace,
            format!("workspace `{workspace}` does not exist or is not yours"),
        );
        return refuse(send, recv, frame).await;
    }
    let Some(agent) = shared.agents.get(workspace) else {
        let frame = ErrorFrame::new(
            ErrorCode::AgentNotConnected,
            format!(
                "workspace `{workspace}` has no connected agent on relay {}",
                shared.name
            ),
        );
        return refuse(send, recv, frame).await;
    };
    let upstream = match dial::open_stream(&agent.conn, &header, dial::AGENT_REPLY_TIMEOUT).await {
        Ok(streams) => streams,
        Err(StreamError::Refused(frame)) => return refuse(send, recv, frame).await,
        Err(StreamError::Timeout(after)) => {
            // Most likely the agent vanished without closing (killed, network cut) and
            // its connection has not timed out yet.
            let frame = ErrorFrame::new(
                ErrorCode::AgentNotConnected,
                format!("workspace `{workspace}`: the agent did not answer within {after:?} (it may have just disconnected)"),
            );
            return refuse(send, recv, frame).await;
        }
        Err(e) => {
            let frame = ErrorFrame::new(
                ErrorCode::AgentNotConnected,
                format!("workspace `{workspace}`: agent connection failed: {e}"),
            );
            return refuse(send, recv, frame).await;
        }
    };
    let mut send = send;
    if write_frame(&mut send, &Reply::Ok).await.is_err() {
        return;
    }
    let stats = ferry_transport::splice::quic_with_quic((send, recv), upstream).await;
    tracing::debug!(%workspace, target = %header.target, up = stats.forward, down = stats.backward, "stream done");
}
