//! `ferry tcp WORKSPACE PORT`: standard input and output to a port in the workspace,
//! like `nc` (and usable as SSH's ProxyCommand).

use anyhow::Result;

use ferry_transport::splice::{Broken, BrokenCause};

use crate::client::{parse_target, WorkspaceConnection};
use crate::config::ClientArgs;

#[derive(Debug, clap::Args)]
pub struct TcpArgs {
    /// Workspace name (yours) or NAME--OWNER
    pub workspace: String,
    /// Port inside the workspace, or `ssh`
    pub port: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Returns when the workspace side has finished sending.
pub async fn run(args: TcpArgs) -> Result<()> {
    let target = parse_target(&args.port)?;
    let settings = args.client.settings()?;
    let conn = WorkspaceConnection::connect(&settings, &args.workspace).await?;
    let (send, recv) = conn.open(target).await?;
    let upload = ferry_transport::splice::reader_to_quic(tokio::io::stdin(), send);
    let download = ferry_transport::splice::quic_to_writer(recv, tokio::io::stdout());
    tokio::pin!(upload, download);
    // Our input ending only half-closes the stream: keep reading the answer until the
    // far side is done too. The far side finishing first ends the command.
    let downloaded = tokio::select! {
        done = &mut download => done,
        _ = &mut upload => download.await,
    };
    conn.close().await;
    match downloaded {
        Ok(_) => Ok(()),
        // Whoever read our output is gone (`| head`): nothing left to report to.
        Err(Broken {
            cause: BrokenCause::Sink(e),
            ..
        }) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        // A stream cut short (the relay died, the workspace side aborted) must not look
        // like a complete transfer to a script.
        Err(broken) => Err(broken.into()),
    }
}
