//! The client side of reaching a workspace: find the relay its agent is on, connect
//! with the user's token, open streams.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ferry_proto::api::RouteResponse;
use ferry_proto::{alpn, StreamHeader, Target, WorkspaceLabel};
use ferry_transport::dial::{self, Session};
use ferry_transport::{ControlClient, ControlError, Limits};
use quinn::{RecvStream, SendStream};

use crate::config::ClientSettings;

/// A connection to the relay serving one workspace.
pub struct WorkspaceConnection {
    pub workspace: WorkspaceLabel,
    pub relay: String,
    endpoint: quinn::Endpoint,
    session: Session,
}

impl WorkspaceConnection {
    /// Finds the workspace's relay and connects to it.
    pub async fn connect(
        settings: &ClientSettings,
        workspace: &str,
    ) -> Result<WorkspaceConnection> {
        let workspace = WorkspaceLabel::resolve(workspace, &settings.user)
            .map_err(|e| anyhow!("`{workspace}` is not a workspace name: {e}"))?;
        let control = ControlClient::new(&settings.control_url, &settings.ca_pem)?;
        let looked_up: Result<RouteResponse, ControlError> = control
            .get(
                &format!("/api/v1/workspaces/{workspace}/route"),
                Some(&settings.token),
            )
            .await;
        let route = match looked_up {
            Ok(route) => {
                routes::remember(&route);
                route
            }
            // The control plane is down: the relay we last reached the workspace
            // through still knows its agent (and verifies our token offline).
            Err(e) if e.is_unreachable() => match routes::recall(&workspace) {
                Some(route) => {
                    tracing::warn!(error = %e, relay = %route.relay.name, "control plane unreachable; using the last known route");
                    route
                }
                None => return Err(anyhow!(e)),
            },
            Err(e) => return Err(api_error(e)),
        };
        let addr: SocketAddr = route
            .relay
            .quic_addr
            .parse()
            .with_context(|| format!("relay {} has a bad address", route.relay.name))?;
        let tls = ferry_certs::client_config(&settings.ca_pem, &[alpn::CLIENT])?;
        let endpoint = ferry_transport::quic::client_endpoint(addr, tls, &Limits::default())?;
        let session = dial::connect(&endpoint, addr, &route.relay.server_name, &settings.token)
            .await
            .with_context(|| {
                format!(
                    "connecting to relay {} for workspace `{workspace}`",
                    route.relay.name
                )
            })?;
        Ok(WorkspaceConnection {
            workspace,
            relay: route.relay.name,
            endpoint,
            session,
        })
    }

    /// Opens a stream to `target` in the workspace.
    pub async fn open(&self, target: Target) -> Result<(SendStream, RecvStream)> {
        let header = StreamHeader::new(self.workspace.clone(), target);
        dial::open_stream(&self.session.conn, &header, dial::STREAM_REPLY_TIMEOUT)
            .await
            .map_err(|e| anyhow!("workspace `{}`, {target}: {e}", self.workspace))
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.session.conn.close_reason().is_some()
    }

    /// Closes the connection and lets the close reach the relay.
    pub async fn close(self) {
        self.session.conn.close(0u32.into(), b"done");
        // The CONNECTION_CLOSE leaves on the driver's next poll, within microseconds;
        // `wait_idle` would also wait out the draining period (three PTOs, ~80 ms even
        // on loopback), which only delays the exit of `ferry tcp` and of ssh with it.
        let _ = tokio::time::timeout(Duration::from_millis(20), self.endpoint.wait_idle()).await;
    }
}

/// A control-plane error as the user should read it.
pub fn api_error(e: ControlError) -> anyhow::Error {
    match e {
        ControlError::Api { code, message, .. } => anyhow!("{message} ({code})"),
        other => anyhow!(other),
    }
}

/// The last route seen per workspace, in `routes/LABEL.json` beside the CLI config.
mod routes {
    use ferry_proto::api::RouteResponse;
    use ferry_proto::WorkspaceLabel;

    fn path(workspace: &str) -> Option<std::path::PathBuf> {
        // Labels are validated (lowercase, digits, hyphens), so safe as file names.
        let dir = crate::config::default_path().parent()?.join("routes");
        Some(dir.join(format!("{workspace}.json")))
    }

    pub fn remember(route: &RouteResponse) {
        let Some(path) = path(&route.workspace) else {
            return;
        };
        if WorkspaceLabel::parse(&route.workspace).is_err() {
            return;
        }
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(route).unwrap_or_default())?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            tracing::debug!(error = %e, "cannot cache the route");
        }
    }

    pub fn recall(workspace: &WorkspaceLabel) -> Option<RouteResponse> {
        let text = std::fs::read(path(workspace.as_str())?).ok()?;
        let route: RouteResponse = serde_json::from_slice(&text).ok()?;
        (route.workspace == workspace.as_str()).then_some(route)
    }
}

/// Parses a target: a port number, or `ssh`.
pub fn parse_target(s: &str) -> Result<Target> {
    if s == "ssh" {
        return Ok(Target::Ssh);
    }
    match s.parse::<u16>() {
        Ok(0) | Err(_) => bail!("`{s}` is not a port (1-65535) or `ssh`"),
        Ok(p) => Ok(Target::Port(p)),
    }
}
