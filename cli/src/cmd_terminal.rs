//! `ferry terminal WORKSPACE`: a shell in the workspace on a real PTY, straight from
//! your terminal, no SSH server needed. Your terminal is put in raw mode (restored on
//! exit) and window-size changes are sent along.

use std::io::IsTerminal;

use anyhow::Result;
use bytes::BytesMut;
use ferry_proto::terminal::TerminalFrame;
use ferry_proto::Target;
use tokio::io::AsyncReadExt;

use crate::client::WorkspaceConnection;
use crate::config::ClientArgs;

#[derive(Debug, clap::Args)]
pub struct TerminalArgs {
    /// Workspace name (yours) or NAME--OWNER
    pub workspace: String,
    /// Terminal size COLSxROWS [default: this terminal's, else 80x24]
    #[arg(long, value_parser = parse_size)]
    pub size: Option<(u16, u16)>,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn parse_size(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("`{s}` is not COLSxROWS, e.g. 120x40");
    let (c, r) = s.split_once('x').ok_or_else(bad)?;
    match (c.parse::<u16>(), r.parse::<u16>()) {
        (Ok(c), Ok(r)) if c > 0 && r > 0 => Ok((c, r)),
        _ => Err(bad()),
    }
}

/// The size of the terminal on standard output, if it is one.
fn window_size() -> Option<(u16, u16)> {
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize into the pointer.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ as _, &mut size) } == 0;
    (ok && size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col, size.ws_row))
}

/// Raw mode on standard input for as long as this lives.
struct RawMode(libc::termios);

impl RawMode {
    fn enable() -> Option<RawMode> {
        if !std::io::stdin().is_terminal() {
            return None;
        }
        // SAFETY: tcgetattr/tcsetattr on standard input with a termios we own.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(RawMode(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes saved in `enable`.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0);
        }
    }
}

pub async fn run(args: TerminalArgs) -> Result<()> {
    let (cols, rows) = args.size.or_else(window_size).unwrap_or((80, 24));
    let settings = args.client.settings()?;
    let conn = WorkspaceConnection::connect(&settings, &args.workspace).await?;
    let (mut send, recv) = conn.open(Target::Terminal { cols, rows }).await?;
    let raw = RawMode::enable();
    let explicit_size = args.size.is_some();
    let input = async move {
        let mut stdin = tokio::io::stdin();
        let mut winch =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok();
        let mut buf = vec![0u8; 16 * 1024];
        let mut out = BytesMut::new();
        loop {
            tokio::select! {
                read = stdin.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => TerminalFrame::encode_input(&buf[..n], &mut out),
                },
                Some(()) = async { match winch.as_mut() { Some(w) => w.recv().await, None => None } } => {
                    match window_size() {
                        Some((cols, rows)) if !explicit_size => TerminalFrame::Resize { cols, rows }.encode(&mut out),
                        _ => continue,
                    }
                }
            }
            if send.write_all(&out.split()).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    };
    let output = ferry_transport::splice::quic_to_writer(recv, tokio::io::stdout());
    tokio::pin!(input, output);
    // The session ends when the shell's output does.
    let ended = tokio::select! {
        done = &mut output => done,
        _ = &mut input => output.await,
    };
    drop(raw);
    conn.close().await;
    // The terminal is restored (`raw` dropped) before the error is printed.
    ended?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_bad_ones_say_why() {
        assert_eq!(parse_size("120x40"), Ok((120, 40)));
        for bad in ["", "120", "0x10", "10x0", "axb", "70000x10"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
