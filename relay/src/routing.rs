//! Routing one data stream: serve it from a local agent connection, or forward it over
//! the mesh to the relays that should hold the workspace's agent.
//!
//! The candidates are the relays of the workspace's home region in ring order from
//! its label (owner, standby, then the rest), minus this relay and the peer the stream
//! came from. Each forward adds a hop; a stream that has taken
//! [`MAX_HOPS`](ferry_proto::frame::MAX_HOPS) hops is served locally or refused, so a
//! stream can never loop. A candidate that is unreachable, or answers that it has no
//! agent or is draining, is skipped for the next one: that is how streams fail over to
//! the standby when an owner dies or moves.

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::frame::MAX_HOPS;
use ferry_proto::{ErrorCode, ErrorFrame, Reply, StreamHeader, WorkspaceLabel};
use ferry_transport::dial::{self, StreamError};
use ferry_transport::frame_io::{read_frame, write_frame};
use quinn::{RecvStream, SendStream};

use crate::server::Shared;

/// How long a peer may take to send a stream header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many mesh peers are tried for one stream.
const MAX_CANDIDATES: usize = 3;

/// Accepts a connection's streams until it ends or `stop` fires, routing each as
/// coming from `origin`. Stream tasks are owned here and stopped with the connection.
pub(crate) async fn accept_streams(
    shared: Arc<Shared>,
    conn: &quinn::Connection,
    origin: Origin,
    stop: &tokio_util::sync::CancellationToken,
) {
    use tracing::Instrument;
    let mut streams = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            accepted = conn.accept_bi() => {
                let origin = origin.clone();
                let Ok((send, recv)) = accepted else { break };
                let shared = shared.clone();
                match take_share(&shared, &origin) {
                    Ok(slot) => streams.spawn(async move {
                        let _slot = slot;
                        serve_stream(shared, origin, send, recv).await
                    }.in_current_span()),
                    Err(frame) => streams.spawn(async move {
                        refuse_counted(&shared, send, recv, frame).await
                    }.in_current_span()),
                };
            }
        }
    }
    streams.shutdown().await;
}

/// A slot in the user's share of this relay for a client's new stream ([`crate::user_share`]);
/// streams from the mesh were counted by the relay the client reached.
fn take_share(
    shared: &Shared,
    origin: &Origin,
) -> Result<Option<crate::user_share::UserSlot>, ErrorFrame> {
    let Origin::Client { user } = origin else {
        return Ok(None);
    };
    match shared.user_share.try_stream(user) {
        Some(slot) => Ok(Some(slot)),
        None => Err(ErrorFrame::new(
            ErrorCode::RateLimited,
            format!(
                "user `{user}` has {} streams open on relay {}, its share; close some before opening more",
                shared.user_share.max_streams(),
                shared.name
            ),
        )),
    }
}

/// Where a stream came from.
#[derive(Debug, Clone)]
pub(crate) enum Origin {
    /// A developer's CLI, authenticated as `user`.
    Client { user: String },
    /// Another relay, which already checked the user.
    Mesh { peer: String },
}

/// Refuses a stream with a typed error and ends it.
pub(crate) async fn refuse(mut send: SendStream, mut recv: RecvStream, frame: ErrorFrame) {
    tracing::debug!(code = %frame.code, reason = %frame.message, "stream refused");
    let _ = write_frame(&mut send, &Reply::Error(frame)).await;
    let _ = send.finish();
    let _ = recv.stop(ferry_transport::splice::ABORTED);
}

/// [`refuse`], counted in the refusal metrics by its code.
async fn refuse_counted(shared: &Shared, send: SendStream, recv: RecvStream, frame: ErrorFrame) {
    shared
        .metrics
        .refused(crate::metrics::Scope::Stream, frame.code);
    refuse(send, recv, frame).await
}

/// Reads a stream's header and routes it.
pub(crate) async fn serve_stream(
    shared: Arc<Shared>,
    origin: Origin,
    send: SendStream,
    mut recv: RecvStream,
) {
    let _open = shared.drain.stream();
    let header =
        match tokio::time::timeout(HEADER_TIMEOUT, read_frame::<StreamHeader>(&mut recv)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                let frame = ErrorFrame::new(ErrorCode::Protocol, format!("bad stream header: {e}"));
                return refuse_counted(&shared, send, recv, frame).await;
            }
            Err(_) => {
                let frame = ErrorFrame::new(ErrorCode::Protocol, "no stream header within 10s");
                return refuse_counted(&shared, send, recv, frame).await;
            }
        };
    let header_at = std::time::Instant::now();
    let workspace = header.workspace.clone();
    let from_peer = match &origin {
        Origin::Client { user } => {
            // Another user's workspace is refused exactly like one that does not exist.
            if workspace.owner() != user {
                let frame = ErrorFrame::new(
                    ErrorCode::UnknownWorkspace,
                    format!("workspace `{workspace}` does not exist or is not yours"),
                );
                return refuse_counted(&shared, send, recv, frame).await;
            }
            if shared.drain.is_draining() {
                let frame = ErrorFrame::new(
                    ErrorCode::Draining,
                    format!("relay {} is draining; retry on another relay", shared.name),
                );
                return refuse_counted(&shared, send, recv, frame).await;
            }
            None
        }
        Origin::Mesh { peer } => Some(peer.as_str()),
    };
    if header.target == ferry_proto::Target::Trace {
        return crate::trace::answer(&shared, &header, from_peer, send, recv).await;
    }
    let Some(_slot) = shared.load.try_stream() else {
        let frame = ErrorFrame::new(
            ErrorCode::Overloaded,
            format!(
                "relay {} is carrying its limit of {} streams; retry on another relay",
                shared.name,
                shared.load.max_streams()
            ),
        );
        return refuse_counted(&shared, send, recv, frame).await;
    };
    let kind = crate::metrics::StreamKind::of(&header.target, from_peer.is_some());
    let _active = shared.metrics.stream(kind);
    match open_upstream(&shared, &header, from_peer).await {
        Ok(upstream) => {
            shared.metrics.stream_set_up(header_at.elapsed());
            let mut send = send;
            if write_frame(&mut send, &Reply::Ok).await.is_err() {
                return;
            }
            let (up, down) = (shared.metrics.bytes_up(), shared.metrics.bytes_down());
            // Counted as bytes move, so the load the control plane charts is live.
            let relayed = &shared.bytes_relayed;
            let count = |n: u64| {
                relayed.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            };
            let stats = ferry_transport::splice::quic_with_quic_observed(
                (send, recv),
                upstream,
                |n| {
                    up.increment(n);
                    count(n);
                },
                |n| {
                    down.increment(n);
                    count(n);
                },
            )
            .await;
            tracing::debug!(%workspace, target = %header.target, hops = header.hops, up = stats.forward, down = stats.backward, "stream done");
        }
        Err(frame) => refuse_counted(&shared, send, recv, frame).await,
    }
}

/// What a stream of the relay's own web proxy holds while it is open: its place under
/// `--max-streams` and its count in the metrics.
pub(crate) struct WebStreamGuard {
    _slot: crate::load::LoadSlot,
    _active: crate::metrics::StreamGuard,
}

/// Opens a stream to a workspace's agent for the relay's own web proxy (the browser's
/// user was checked by the app cookie): the same routing, limit and metrics as a
/// client's stream. Keep the guard as long as the stream.
pub(crate) async fn open_for_web(
    shared: &Shared,
    header: &StreamHeader,
) -> Result<(SendStream, RecvStream, WebStreamGuard), ErrorFrame> {
    let refused = |frame: ErrorFrame| {
        shared
            .metrics
            .refused(crate::metrics::Scope::Stream, frame.code);
        frame
    };
    let Some(slot) = shared.load.try_stream() else {
        return Err(refused(ErrorFrame::new(
            ErrorCode::Overloaded,
            format!(
                "relay {} is carrying its limit of {} streams",
                shared.name,
                shared.load.max_streams()
            ),
        )));
    };
    let active = shared
        .metrics
        .stream(crate::metrics::StreamKind::of(&header.target, false));
    let started = std::time::Instant::now();
    let (send, recv) = open_upstream(shared, header, None).await.map_err(refused)?;
    shared.metrics.stream_set_up(started.elapsed());
    Ok((
        send,
        recv,
        WebStreamGuard {
            _slot: slot,
            _active: active,
        },
    ))
}

/// Opens the stream towards the agent: locally, or through the mesh.
async fn open_upstream(
    shared: &Shared,
    header: &StreamHeader,
    from_peer: Option<&str>,
) -> Result<(SendStream, RecvStream), ErrorFrame> {
    let workspace = &header.workspace;
    let draining = shared.drain.is_draining();
    // A draining relay prefers to hand streams on, so that its agents can leave.
    if !draining {
        if let Some(streams) = open_local(shared, header).await? {
            return Ok(streams);
        }
    }
    let mut tried = Vec::new();
    if header.hops < MAX_HOPS {
        match shared.view.home_region(workspace.as_str()).await {
            Some(region) => {
                let candidates = candidates_in(shared, &region, header, from_peer);
                let mut forwarded = header.clone();
                forwarded.hops = header.hops + 1;
                for peer in candidates {
                    match forward(shared, &peer, &forwarded).await {
                        Ok(streams) => return Ok(streams),
                        Err(Hop::Final(frame)) => return Err(frame),
                        Err(Hop::Next(why)) => {
                            tracing::debug!(peer = %peer.name, %why, "candidate skipped");
                            tried.push(format!("{}: {why}", peer.name));
                        }
                    }
                }
            }
            None => tried.push("the directory knows no connected agent".into()),
        }
    } else {
        tried.push(format!("the stream already took {MAX_HOPS} relay hops"));
    }
    if draining {
        if let Some(streams) = open_local(shared, header).await? {
            return Ok(streams);
        }
    }
    Err(unreachable(workspace, &shared.name, &tried))
}

/// The answer when no relay could reach the workspace's agent: `tried` says why, one
/// entry per candidate, so the user sees every relay that was asked.
pub(crate) fn unreachable(workspace: &WorkspaceLabel, relay: &str, tried: &[String]) -> ErrorFrame {
    let detail = if tried.is_empty() {
        String::new()
    } else {
        format!(" ({})", tried.join("; "))
    };
    ErrorFrame::new(
        ErrorCode::AgentNotConnected,
        format!(
            "workspace `{workspace}` has no connected agent reachable from relay {relay}{detail}"
        ),
    )
}

/// The mesh peers a stream for `header`'s workspace goes to, in order: the relays of
/// its home region in ring order, minus us and the peer it came from.
pub(crate) async fn mesh_candidates(
    shared: &Shared,
    header: &StreamHeader,
    from_peer: Option<&str>,
) -> Vec<ferry_proto::api::RelayInfo> {
    match shared.view.home_region(header.workspace.as_str()).await {
        Some(region) => candidates_in(shared, &region, header, from_peer),
        None => Vec::new(),
    }
}

fn candidates_in(
    shared: &Shared,
    region: &str,
    header: &StreamHeader,
    from_peer: Option<&str>,
) -> Vec<ferry_proto::api::RelayInfo> {
    shared
        .view
        .map()
        .successors(region, header.workspace.as_str())
        .into_iter()
        .filter(|r| r.name != shared.name && Some(r.name.as_str()) != from_peer)
        .take(MAX_CANDIDATES)
        .collect()
}

/// The local agent's answer: `Ok(None)` when it is not here (or its connection just
/// died), a refusal when the agent itself refused (bad port, target down).
async fn open_local(
    shared: &Shared,
    header: &StreamHeader,
) -> Result<Option<(SendStream, RecvStream)>, ErrorFrame> {
    let Some(agent) = shared.agents.get(&header.workspace) else {
        return Ok(None);
    };
    match dial::open_stream(&agent.conn, header, dial::AGENT_REPLY_TIMEOUT).await {
        Ok(streams) => Ok(Some(streams)),
        // The agent on a connection it is leaving says so; try elsewhere.
        Err(StreamError::Refused(frame)) if frame.code == ErrorCode::Draining => Ok(None),
        Err(StreamError::Refused(frame)) => Err(frame),
        Err(StreamError::Timeout(after)) => Err(ErrorFrame::new(
            ErrorCode::AgentNotConnected,
            format!(
                "workspace `{}`: the agent did not answer within {after:?} (it may have just disconnected)",
                header.workspace
            ),
        )),
        Err(e) => {
            tracing::debug!(error = %e, "local agent connection failed; trying the mesh");
            Ok(None)
        }
    }
}

enum Hop {
    /// Give the client this answer.
    Final(ErrorFrame),
    /// Try the next candidate.
    Next(String),
}

async fn forward(
    shared: &Shared,
    peer: &ferry_proto::api::RelayInfo,
    header: &StreamHeader,
) -> Result<(SendStream, RecvStream), Hop> {
    let conn = shared
        .mesh
        .link(peer)
        .await
        .map_err(|e| Hop::Next(e.to_string()))?;
    // A killed peer's link stays open until quinn's idle timeout; its silence tells
    // sooner. The abandoned stream is dropped: should the peer only have stalled, it
    // sees the header end there and its answer goes nowhere.
    let answer = dial::open_stream_or_silence(
        &conn,
        header,
        dial::mesh_reply_timeout(header.hops),
        crate::mesh::SILENT_FOR,
    )
    .await;
    match answer {
        Ok(streams) => {
            shared.metrics.stream_forwarded();
            Ok(streams)
        }
        Err(StreamError::Silent(quiet)) => {
            shared.mesh.mark_silent(&peer.name);
            shared.metrics.peer_silent();
            Err(Hop::Next(format!(
                "relay {} sent nothing for {quiet:?}",
                peer.name
            )))
        }
        Err(StreamError::Refused(frame)) => match frame.code {
            ErrorCode::AgentNotConnected | ErrorCode::Draining | ErrorCode::Overloaded => {
                Err(Hop::Next(frame.to_string()))
            }
            _ => Err(Hop::Final(frame)),
        },
        Err(e) => Err(Hop::Next(e.to_string())),
    }
}
