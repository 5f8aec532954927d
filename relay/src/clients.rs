//! Serving agents (which we open streams to) and clients (which open streams to us,
//! each routed by [`crate::routing`]), after the hello on their first bi-stream.

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::token::TokenKind;
use ferry_proto::{ErrorCode, ErrorFrame, Hello, Notice, Reply, WorkspaceLabel};
use ferry_transport::frame_io::{read_frame, write_frame};
use quinn::{Connection, RecvStream, SendStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::server::{check_token, Shared};

/// How long a peer may take to send its hello or a stream header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the hello on the first bi-stream and checks its token. On refusal the reason
/// is sent back, and the connection closed once the peer has read it.
pub(crate) async fn accept_hello(
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
    // Heard from: it no longer counts against the handshake admission's limits.
    shared.admission.hello_read(conn);
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
            refuse_connection(shared, conn, send, frame).await;
            None
        }
    }
}

/// Answers the hello with a refusal, then closes the connection once the peer has
/// read it (or after a few seconds).
async fn refuse_connection(
    shared: &Shared,
    conn: &Connection,
    mut send: SendStream,
    frame: ErrorFrame,
) {
    tracing::info!(remote = %conn.remote_address(), code = %frame.code, reason = %frame.message, "refused connection");
    shared
        .metrics
        .refused(crate::metrics::Scope::Connection, frame.code);
    let code = frame.code;
    let _ = write_frame(&mut send, &Reply::Error(frame)).await;
    let _ = send.finish();
    // The dialer closes once it has read the refusal; do not wait for ever.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    conn.close(code.to_u16().into(), b"refused");
}

/// Refuses a connection over one of the relay's limits (`message` says which): its
/// hello is answered with `overloaded` (the client tries another relay; an agent
/// backs off).
pub(crate) async fn refuse_overloaded(shared: &Shared, conn: &Connection, message: String) {
    let first = tokio::time::timeout(HEADER_TIMEOUT, async {
        let (send, mut recv) = conn.accept_bi().await.ok()?;
        let _ = read_frame::<Hello>(&mut recv).await;
        Some(send)
    })
    .await;
    let Ok(Some(send)) = first else {
        conn.close(ErrorCode::Overloaded.to_u16().into(), b"overloaded");
        return;
    };
    let frame = ErrorFrame::new(ErrorCode::Overloaded, message);
    refuse_connection(shared, conn, send, frame).await
}

/// An agent: register it, keep it until its connection ends; when the relay drains,
/// tell it to go away (with a jittered reconnect hint) and let it leave on its own.
pub async fn serve_agent(shared: Arc<Shared>, conn: Connection, stop: CancellationToken) {
    let Some((subject, mut control_send, _control_recv)) =
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
        // Agents connect only to relays of their home region, so ours is theirs.
        shared.view.learn(label.as_str(), &shared.region);
        let standby = crate::view::holds_as_standby(&shared, &label).unwrap_or(false);
        let (id, replaced) = shared.agents.insert(label.clone(), conn.clone(), standby);
        if replaced.is_some() {
            // New streams go to the newer connection. The older one is not closed: an
            // agent moving from the TCP tunnel back to QUIC still carries streams on
            // it, and closes it once they end; a dead one ends at its idle timeout.
            tracing::info!("a newer agent connection for this workspace takes its new streams");
        }
        shared.directory.report(label.as_str(), true, standby);
        tracing::info!(standby, "agent connected");
        let mut told = false;
        loop {
            tokio::select! {
                _ = conn.closed() => break,
                _ = stop.cancelled() => {
                    conn.close(ErrorCode::Draining.to_u16().into(), b"relay shutting down");
                    break;
                }
                _ = shared.drain.started(), if !told => {
                    told = true;
                    let hint = fastrand::u32(..=shared.go_away_jitter_ms.max(1));
                    let notice = Notice::GoAway { reconnect_after_ms: hint };
                    match write_frame(&mut control_send, &notice).await {
                        Ok(()) => tracing::info!(reconnect_after_ms = hint, "told the agent to go away"),
                        Err(e) => tracing::debug!(error = %e, "could not send go-away"),
                    }
                }
            }
        }
        if shared.agents.remove(&label, id) {
            shared.directory.report(label.as_str(), false, false);
        }
        tracing::info!(reason = ?conn.close_reason(), "agent disconnected");
    }
    .instrument(span)
    .await
}

/// A client: accept its streams and route each to the workspace's agent.
pub async fn serve_client(shared: Arc<Shared>, conn: Connection, stop: CancellationToken) {
    let Some((user, _control_send, _control_recv)) =
        accept_hello(&shared, &conn, TokenKind::User).await
    else {
        return;
    };
    let span = tracing::info_span!("client", %user, remote = %conn.remote_address());
    let origin = crate::routing::Origin::Client { user: user.clone() };
    crate::routing::accept_streams(shared, &conn, origin, &stop)
        .instrument(span)
        .await
}
