//! One relay connection of the agent (its owner or its standby), as a task that
//! connects, serves the streams the relay opens, reconnects with backoff when the
//! connection is lost, and reports what happens to the agent's main loop.
//!
//! A link is *retired* when the agent has moved elsewhere (make-before-break): it
//! then refuses new streams with `Draining` (the relay tries another relay), lets the
//! open ones finish, closes, and the task ends.

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::api::RelayInfo;
use ferry_proto::{ErrorCode, ErrorFrame, Notice, StreamHeader, WorkspaceLabel};
use ferry_transport::dial::DialError;
use ferry_transport::frame_io::{read_frame, FrameError};
use ferry_transport::reach::{Connector, ReachError, Reached, Transport};
use quinn::RecvStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{AgentError, Backoff, PortPolicy};

/// How often the RTT to a connected relay is put in the metrics.
const RTT_SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// What a link tells the agent's main loop.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    Up { relay: String },
    Down { relay: String, reason: String },
    GoAway { relay: String, after: Duration },
    Fatal(AgentError),
}

/// What every link of one agent shares.
pub(crate) struct LinkContext {
    pub workspace: WorkspaceLabel,
    pub token: String,
    pub ports: PortPolicy,
    pub ssh_target: std::net::SocketAddr,
    pub terminal: crate::terminal::TerminalPolicy,
    pub backoff: Backoff,
}

/// Reads the next notice, handing the stream back for the next read (a frame read is
/// not cancel-safe, so it runs as one future across loop turns).
async fn next_notice(mut recv: RecvStream) -> (RecvStream, Result<Notice, FrameError>) {
    let r = read_frame::<Notice>(&mut recv).await;
    (recv, r)
}

/// Runs one link until it is retired and idle, or `stop` fires. Returns the relay's name.
pub(crate) async fn run(
    ctx: Arc<LinkContext>,
    connector: Arc<Connector>,
    relay: RelayInfo,
    retire: CancellationToken,
    stop: CancellationToken,
    events: mpsc::Sender<LinkEvent>,
) -> String {
    let name = relay.name.clone();
    let mut attempt = 0u32;
    loop {
        if retire.is_cancelled() || stop.is_cancelled() {
            return name;
        }
        let reason = match connect(&ctx, &connector, &relay, &stop, &retire).await {
            Err(fatal) => {
                let _ = events.send(LinkEvent::Fatal(fatal)).await;
                return name;
            }
            Ok(None) => return name,
            Ok(Some(Err(reason))) => reason,
            Ok(Some(Ok(session))) => {
                attempt = 0;
                let _ = events
                    .send(LinkEvent::Up {
                        relay: name.clone(),
                    })
                    .await;
                match serve(&ctx, &connector, &relay, session, &retire, &stop, &events).await {
                    None => return name,
                    Some(reason) => reason,
                }
            }
        };
        let _ = events
            .send(LinkEvent::Down {
                relay: name.clone(),
                reason: reason.clone(),
            })
            .await;
        attempt = attempt.saturating_add(1);
        let delay = ctx.backoff.delay(attempt);
        tracing::info!(workspace = %ctx.workspace, relay = %name, attempt, ?delay, %reason, "relay link down; retrying after backoff");
        tokio::select! {
            _ = stop.cancelled() => return name,
            _ = retire.cancelled() => return name,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// `Ok(None)`: stopped; `Ok(Some(Err(reason)))`: retry later.
async fn connect(
    ctx: &LinkContext,
    connector: &Connector,
    relay: &RelayInfo,
    stop: &CancellationToken,
    retire: &CancellationToken,
) -> Result<Option<Result<Reached, String>>, AgentError> {
    let started = std::time::Instant::now();
    let reached = tokio::select! {
        _ = stop.cancelled() => return Ok(None),
        _ = retire.cancelled() => return Ok(None),
        r = connector.connect(relay, &ctx.token) => r,
    };
    match &reached {
        Ok(_) => crate::metrics::relay_connected_in(started.elapsed()),
        Err(_) => crate::metrics::relay_connect_failed(),
    }
    match reached {
        Ok(r) => {
            tracing::info!(workspace = %ctx.workspace, relay = %relay.name, addr = %relay.quic_addr, transport = %r.transport, why = %r.why, "connected to relay");
            Ok(Some(Ok(r)))
        }
        Err(ReachError::Refused(DialError::Refused { frame, .. }))
            if matches!(
                frame.code,
                ErrorCode::Unauthorized | ErrorCode::TokenExpired | ErrorCode::WrongTokenKind
            ) =>
        {
            Err(AgentError::Refused(frame))
        }
        Err(e) => Ok(Some(Err(e.to_string()))),
    }
}

/// Serves one connection. `None`: the link is finished (retired or stopped);
/// `Some(reason)`: the connection was lost.
///
/// On the TCP tunnel, QUIC is tried again every [`ferry_transport::reach::reprobe_interval`];
/// when it answers, the link moves to it make-before-break: the relay routes new
/// streams to the new connection, and the old one finishes its streams, then closes.
async fn serve(
    ctx: &Arc<LinkContext>,
    connector: &Connector,
    relay: &RelayInfo,
    reached: Reached,
    retire: &CancellationToken,
    stop: &CancellationToken,
    events: &mpsc::Sender<LinkEvent>,
) -> Option<String> {
    let _up = crate::metrics::relay_up();
    let mut rtt_sample = tokio::time::interval(RTT_SAMPLE_EVERY);
    let mut transport = reached.transport;
    let mut _endpoint = reached.endpoint;
    let mut conn = reached.session.conn;
    let (mut _control_send, control_recv) = reached.session.control;
    let mut notices = Some(Box::pin(next_notice(control_recv)));
    let mut streams = JoinSet::new();
    // Connections left behind by a move to QUIC, finishing their streams.
    let mut leaving = JoinSet::new();
    let reprobe = tokio::time::sleep(ferry_transport::reach::reprobe_interval());
    tokio::pin!(reprobe);
    let reason = loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => {
                conn.close(0u32.into(), b"agent stopping");
                break None;
            }
            _ = retire.cancelled(), if streams.is_empty() => {
                tracing::info!(workspace = %ctx.workspace, relay = %relay.name, "moved away; closing the old connection");
                conn.close(0u32.into(), b"agent moved");
                break None;
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            Some(_) = leaving.join_next(), if !leaving.is_empty() => {}
            _ = rtt_sample.tick() => crate::metrics::relay_rtt(&relay.name, conn.rtt()),
            () = &mut reprobe, if transport != Transport::Quic && !retire.is_cancelled() => {
                match connector.connect_quic(relay, &ctx.token).await {
                    Ok(quic) => {
                        tracing::info!(workspace = %ctx.workspace, relay = %relay.name, from = %transport, "QUIC works again: moving back to it");
                        let old = std::mem::replace(&mut conn, quic.session.conn);
                        let old_streams = std::mem::take(&mut streams);
                        leaving.spawn(leave(relay.name.clone(), old, old_streams));
                        _endpoint = quic.endpoint;
                        let (send, recv) = quic.session.control;
                        _control_send = send;
                        notices = Some(Box::pin(next_notice(recv)));
                        transport = Transport::Quic;
                    }
                    Err(e) => {
                        tracing::debug!(relay = %relay.name, error = %e, "QUIC still does not get through");
                        reprobe.as_mut().reset(tokio::time::Instant::now() + ferry_transport::reach::reprobe_interval());
                    }
                }
            }
            (recv, notice) = async { notices.as_mut().expect("guarded").await }, if notices.is_some() => {
                match notice {
                    Ok(Notice::GoAway { reconnect_after_ms }) => {
                        let after = Duration::from_millis(u64::from(reconnect_after_ms));
                        tracing::info!(relay = %relay.name, ?after, "relay is draining: moving");
                        let _ = events.send(LinkEvent::GoAway { relay: relay.name.clone(), after }).await;
                        notices = Some(Box::pin(next_notice(recv)));
                    }
                    // A notice we cannot decode is ignored; a closed control stream ends
                    // the notices (the connection itself tells us when it is lost).
                    Err(FrameError::Decode(e)) => {
                        tracing::debug!(error = %e, "ignoring an unreadable notice");
                        notices = Some(Box::pin(next_notice(recv)));
                    }
                    Err(_) => notices = None,
                }
            }
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) if retire.is_cancelled() => {
                    streams.spawn(refuse_moved(relay.name.clone(), send, recv));
                }
                Ok((send, recv)) => {
                    streams.spawn(crate::serve::serve_stream(ctx.workspace.clone(), ctx.ports.clone(), ctx.ssh_target, ctx.terminal.clone(), send, recv));
                }
                Err(e) => break Some(format!("connection to relay {} lost: {e}", relay.name)),
            }
        }
    };
    // Streams on a dead connection cannot make progress; stop them.
    streams.shutdown().await;
    leaving.shutdown().await;
    reason
}

/// The connection a link moved away from (to QUIC, on the same relay): the relay
/// already routes new streams to the new one; a stream that raced the move is refused
/// as moving, the open ones finish, then the connection closes.
async fn leave(relay: String, conn: quinn::Connection, mut streams: JoinSet<()>) {
    loop {
        tokio::select! {
            joined = streams.join_next() => if joined.is_none() { break },
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => { streams.spawn(refuse_moved(relay.clone(), send, recv)); }
                Err(_) => break,
            },
        }
    }
    streams.shutdown().await;
    conn.close(0u32.into(), b"moved to QUIC");
}

/// A stream on a connection the agent is leaving: the relay should try elsewhere.
async fn refuse_moved(relay: String, send: quinn::SendStream, mut recv: RecvStream) {
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        read_frame::<StreamHeader>(&mut recv),
    )
    .await;
    let frame = ErrorFrame::new(
        ErrorCode::Draining,
        format!("the agent is moving away from relay {relay}"),
    );
    crate::serve::refuse(send, frame).await;
}
