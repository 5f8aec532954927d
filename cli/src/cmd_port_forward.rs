//! `ferry port-forward WORKSPACE LOCAL:REMOTE...`: a local TCP listener per mapping,
//! one QUIC stream per accepted connection, all on one connection to the relay.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use ferry_proto::Target;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::WorkspaceConnection;
use crate::config::{ClientArgs, ClientSettings};

#[derive(Debug, clap::Args)]
pub struct PortForwardArgs {
    /// Workspace name (yours) or NAME--OWNER
    pub workspace: String,
    /// Mappings LOCAL:REMOTE (or PORT for the same port on both sides; LOCAL 0 picks a free port)
    #[arg(required = true)]
    pub mappings: Vec<String>,
    /// Local address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn parse_mapping(s: &str) -> Result<(u16, u16)> {
    let (local, remote) = s.split_once(':').unwrap_or((s, s));
    let local: u16 = local
        .parse()
        .with_context(|| format!("`{s}`: bad local port"))?;
    let remote: u16 = remote
        .parse()
        .with_context(|| format!("`{s}`: bad remote port"))?;
    if remote == 0 {
        bail!("`{s}`: the remote port cannot be 0");
    }
    Ok((local, remote))
}

/// Shared connection to the relay, re-established when it drops.
struct Link {
    settings: ClientSettings,
    workspace: String,
    conn: Mutex<Option<Arc<WorkspaceConnection>>>,
}

impl Link {
    async fn get(&self) -> Result<Arc<WorkspaceConnection>> {
        let mut guard = self.conn.lock().await;
        if let Some(conn) = guard.as_ref() {
            if !conn.is_closed() {
                return Ok(conn.clone());
            }
        }
        let conn = Arc::new(WorkspaceConnection::connect(&self.settings, &self.workspace).await?);
        *guard = Some(conn.clone());
        Ok(conn)
    }
}

pub async fn run(args: PortForwardArgs, cancel: CancellationToken) -> Result<()> {
    let mappings = args
        .mappings
        .iter()
        .map(|m| parse_mapping(m))
        .collect::<Result<Vec<_>>>()?;
    let settings = args.client.settings()?;
    let link = Arc::new(Link {
        settings,
        workspace: args.workspace.clone(),
        conn: Mutex::new(None),
    });
    // Connect up front so that a wrong workspace fails now, not on the first use.
    let first = link.get().await?;
    let mut listeners = JoinSet::new();
    for (local, remote) in mappings {
        let addr = SocketAddr::new(args.bind, local);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let bound = listener.local_addr()?;
        println!(
            "Forwarding {bound} -> {}:{remote} (via relay {})",
            first.workspace, first.relay
        );
        listeners.spawn(serve_listener(
            listener,
            remote,
            link.clone(),
            cancel.clone(),
        ));
    }
    drop(first);
    tokio::select! {
        _ = cancel.cancelled() => {}
        Some(res) = listeners.join_next() => { res??; }
    }
    listeners.shutdown().await;
    if let Some(conn) = link.conn.lock().await.take() {
        if let Ok(conn) = Arc::try_unwrap(conn) {
            conn.close().await;
        }
    }
    Ok(())
}

async fn serve_listener(
    listener: TcpListener,
    remote: u16,
    link: Arc<Link>,
    cancel: CancellationToken,
) -> Result<()> {
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = accepted.context("accepting a local connection")?;
                let link = link.clone();
                streams.spawn(async move {
                    let opened = match link.get().await {
                        Ok(conn) => conn.open(Target::Port(remote)).await,
                        Err(e) => Err(e),
                    };
                    match opened {
                        Ok((send, recv)) => {
                            ferry_transport::splice::quic_with_tcp(send, recv, tcp).await;
                        }
                        Err(e) => eprintln!("ferry: connection from {peer} refused: {e:#}"),
                    }
                });
            }
        }
    }
    streams.shutdown().await;
    Ok(())
}
