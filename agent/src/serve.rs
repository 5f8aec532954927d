//! Serving one stream inside the workspace: check the header, connect to the target on
//! loopback, answer, splice.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_proto::{ErrorCode, ErrorFrame, Reply, StreamHeader, Target, WorkspaceLabel};
use ferry_transport::frame_io::{read_frame, write_frame};
use quinn::{RecvStream, SendStream};
use tokio::net::TcpStream;

/// Shorter than the relay's wait for our answer, so the relay hears our reason.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Which loopback ports the agent lets streams reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortPolicy {
    /// Any port on 127.0.0.1.
    AnyLoopback,
    /// Only these ports.
    Only(Vec<u16>),
}

impl PortPolicy {
    pub fn allows(&self, port: u16) -> bool {
        match self {
            PortPolicy::AnyLoopback => true,
            PortPolicy::Only(ports) => ports.contains(&port),
        }
    }
}

pub(crate) async fn refuse(mut send: SendStream, frame: ErrorFrame) {
    crate::metrics::refused(frame.code);
    tracing::debug!(code = %frame.code, reason = %frame.message, "stream refused");
    let _ = write_frame(&mut send, &Reply::Error(frame)).await;
    let _ = send.finish();
}

pub async fn serve_stream(
    workspace: WorkspaceLabel,
    ports: PortPolicy,
    ssh_target: SocketAddr,
    terminal: crate::terminal::TerminalPolicy,
    send: SendStream,
    mut recv: RecvStream,
) {
    let header =
        match tokio::time::timeout(HEADER_TIMEOUT, read_frame::<StreamHeader>(&mut recv)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                return refuse(
                    send,
                    ErrorFrame::new(ErrorCode::Protocol, format!("bad stream header: {e}")),
                )
                .await
            }
            Err(_) => {
                return refuse(
                    send,
                    ErrorFrame::new(ErrorCode::Protocol, "no stream header"),
                )
                .await
            }
        };
    if header.workspace != workspace {
        // A relay bug, not a user error: never serve another workspace's stream.
        tracing::error!(got = %header.workspace, "relay sent a stream for another workspace");
        let frame = ErrorFrame::new(
            ErrorCode::UnknownWorkspace,
            format!(
                "workspace `{}` does not exist or is not yours",
                header.workspace
            ),
        );
        return refuse(send, frame).await;
    }
    let _active = crate::metrics::stream(&header.target);
    let addr: SocketAddr = match header.target {
        Target::Port(port) if ports.allows(port) => SocketAddr::from(([127, 0, 0, 1], port)),
        Target::Port(port) => {
            let frame = ErrorFrame::new(
                ErrorCode::PortNotAllowed,
                format!("port {port} is not open to ferry in workspace `{workspace}` (the agent's --allow-port list)"),
            );
            return refuse(send, frame).await;
        }
        Target::Ssh => ssh_target,
        Target::Trace => {
            // Relays answer traces themselves; one reaching us is a relay bug.
            let frame = ErrorFrame::new(
                ErrorCode::Protocol,
                "trace streams are answered by relays, not agents",
            );
            return refuse(send, frame).await;
        }
        Target::Terminal { cols, rows } => {
            return crate::terminal::serve(&terminal, workspace.as_str(), cols, rows, send, recv)
                .await;
        }
    };
    let dial_started = std::time::Instant::now();
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => {
            crate::metrics::dialed(&header.target, dial_started.elapsed());
            tcp
        }
        Ok(Err(e)) => {
            let frame = ErrorFrame::new(
                ErrorCode::TargetUnreachable,
                format!(
                    "nothing answers on {} in workspace `{workspace}` ({addr}: {e})",
                    header.target
                ),
            );
            return refuse(send, frame).await;
        }
        Err(_) => {
            let frame = ErrorFrame::new(
                ErrorCode::TargetUnreachable,
                format!("connecting to {addr} in workspace `{workspace}` timed out"),
            );
            return refuse(send, frame).await;
        }
    };
    let mut send = send;
    if write_frame(&mut send, &Reply::Ok).await.is_err() {
        return;
    }
    let stats = ferry_transport::splice::quic_with_tcp(send, recv, tcp).await;
    crate::metrics::spliced(stats.forward, stats.backward);
    tracing::debug!(target = %header.target, down = stats.forward, up = stats.backward, "stream done");
}
