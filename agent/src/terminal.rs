//! Serving a terminal stream: a login shell on a PTY, its output sent raw to the
//! client, the client's input and window sizes read as
//! [`ferry_proto::terminal::TerminalFrame`]s.

use std::path::PathBuf;

use bytes::BytesMut;
use ferry_proto::terminal::TerminalFrame;
use ferry_proto::{ErrorCode, ErrorFrame, Reply};
use ferry_transport::frame_io::write_frame;
use quinn::{RecvStream, SendStream};

use crate::pty::Pty;

/// How long a shell may run on after the client's input ended.
const EOF_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether and how the agent offers terminals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TerminalPolicy {
    /// Start this shell (as a login shell) for each terminal stream.
    Shell(PathBuf),
    /// Refuse terminal streams.
    Disabled,
}

impl Default for TerminalPolicy {
    fn default() -> Self {
        let shell = std::env::var_os("SHELL")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| PathBuf::from("/bin/sh"));
        TerminalPolicy::Shell(shell)
    }
}

pub async fn serve(
    policy: &TerminalPolicy,
    workspace: &str,
    cols: u16,
    rows: u16,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let TerminalPolicy::Shell(shell) = policy else {
        let frame = ErrorFrame::new(
            ErrorCode::PortNotAllowed,
            format!("terminals are disabled in workspace `{workspace}` (agent --disable-terminal)"),
        );
        return crate::serve::refuse(send, frame).await;
    };
    let pty = match Pty::spawn(shell, cols, rows) {
        Ok(pty) => pty,
        Err(e) => {
            let frame = ErrorFrame::new(
                ErrorCode::TargetUnreachable,
                format!(
                    "cannot start {} on a terminal in workspace `{workspace}`: {e}",
                    shell.display()
                ),
            );
            return crate::serve::refuse(send, frame).await;
        }
    };
    if write_frame(&mut send, &Reply::Ok).await.is_err() {
        return;
    }
    tracing::debug!(shell = %shell.display(), cols, rows, "terminal started");
    let output = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match pty.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if send.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = send.finish();
    };
    let input = async {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        loop {
            match recv.read_chunk(16 * 1024, true).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                // The client finished its input: end-of-file, as ^D at a terminal. A
                // shell may discard typeahead when its line editor starts, losing the
                // ^D, so hang up if the shell is still there a moment later.
                Ok(None) => {
                    let _ = pty.write_all(b"\x04").await;
                    tokio::time::sleep(EOF_GRACE).await;
                    pty.hang_up();
                    break;
                }
                // The client vanished: hang up, as a closed terminal window does.
                Err(_) => {
                    pty.hang_up();
                    break;
                }
            }
            loop {
                match TerminalFrame::decode(&mut buf) {
                    Ok(Some(TerminalFrame::Data(data))) => {
                        if pty.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                    Ok(Some(TerminalFrame::Resize { cols, rows })) => {
                        let _ = pty.resize(cols, rows);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "bad terminal frame; hanging up");
                        let _ = recv.stop(ferry_transport::splice::ABORTED);
                        pty.hang_up();
                        return std::future::pending().await;
                    }
                }
            }
        }
        // Input is over; the session lasts as long as the shell's output.
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = output => {}
        _ = input => {}
    }
}
