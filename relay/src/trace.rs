//! Answering a trace stream (`Target::Trace`, for `ferry status`): the hops from this
//! relay to the workspace's agent with the RTT quinn measures on each connection.
//! The route is the one a data stream would take (see [`crate::routing`]): the local
//! agent connection unless draining, else the mesh peers that should hold the agent.

use ferry_proto::frame::MAX_HOPS;
use ferry_proto::{ErrorFrame, Reply, StreamHeader, TraceHop, TraceReport};
use ferry_transport::dial;
use ferry_transport::frame_io::{read_frame, write_frame};
use quinn::{RecvStream, SendStream};

use crate::server::Shared;

/// Answers one trace stream whose header was already read.
pub(crate) async fn answer(
    shared: &Shared,
    header: &StreamHeader,
    from_peer: Option<&str>,
    mut send: SendStream,
    recv: RecvStream,
) {
    match trace(shared, header, from_peer).await {
        Ok(report) => {
            if write_frame(&mut send, &Reply::Ok).await.is_ok()
                && write_frame(&mut send, &report).await.is_ok()
            {
                let _ = send.finish();
            }
        }
        Err(frame) => crate::routing::refuse(send, recv, frame).await,
    }
}

async fn trace(
    shared: &Shared,
    header: &StreamHeader,
    from_peer: Option<&str>,
) -> Result<TraceReport, ErrorFrame> {
    let me = format!("relay:{}", shared.name);
    let agent_name = format!("agent:{}", header.workspace);
    let local = shared.agents.get(&header.workspace);
    if let Some(agent) = &local {
        if !shared.drain.is_draining() {
            return Ok(TraceReport {
                hops: vec![TraceHop::new(me, agent_name, agent.conn.rtt())],
            });
        }
    }
    let mut tried = Vec::new();
    if header.hops < MAX_HOPS {
        let mut forwarded = header.clone();
        forwarded.hops = header.hops + 1;
        for peer in crate::routing::mesh_candidates(shared, header, from_peer).await {
            let conn = match shared.mesh.link(&peer).await {
                Ok(c) => c,
                Err(e) => {
                    tried.push(format!("{}: {e}", peer.name));
                    continue;
                }
            };
            let timeout = dial::mesh_reply_timeout(forwarded.hops);
            let answer = async {
                let (_send, mut recv) = dial::open_stream(&conn, &forwarded, timeout)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::time::timeout(timeout, read_frame::<TraceReport>(&mut recv))
                    .await
                    .map_err(|_| "no trace report in time".to_string())?
                    .map_err(|e| e.to_string())
            };
            match answer.await {
                Ok(mut report) => {
                    report.prepend(TraceHop::new(
                        me,
                        format!("relay:{}", peer.name),
                        conn.rtt(),
                    ));
                    return Ok(report);
                }
                Err(why) => tried.push(format!("{}: {why}", peer.name)),
            }
        }
    }
    // A draining relay still knows its own agent's path.
    if let Some(agent) = local {
        return Ok(TraceReport {
            hops: vec![TraceHop::new(me, agent_name, agent.conn.rtt())],
        });
    }
    Err(crate::routing::unreachable(
        &header.workspace,
        &shared.name,
        &tried,
    ))
}
