//! `ferry workspace ...`: a user's workspaces, their agents' telemetry (`show`) and
//! their agent tokens.

use anyhow::Result;
use ferry_proto::api::{
    CreateTokenRequest, CreateWorkspaceRequest, NewTokenResponse, RouteResponse, TokensResponse,
    WorkspaceInfo, WorkspaceTelemetryResponse, WorkspacesResponse,
};
use ferry_proto::WorkspaceLabel;
use ferry_transport::ControlClient;

use crate::client::api_error;
use crate::config::ClientArgs;

#[derive(Debug, clap::Args)]
pub struct WorkspaceArgs {
    #[command(subcommand)]
    pub command: WorkspaceCommand,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum WorkspaceCommand {
    /// Create a workspace of yours
    Create { name: String },
    /// List your workspaces
    List,
    /// A workspace's agent, resource use (CPU, memory, disk, load, uptime) and
    /// metadata items, as its agent last reported them
    Show { workspace: String },
    /// Create an agent token for a workspace (printed once)
    AgentToken {
        workspace: String,
        /// A label for the token
        #[arg(long, default_value = "agent")]
        name: String,
    },
    /// List a workspace's agent tokens
    AgentTokens { workspace: String },
    /// Revoke an agent token by id
    RevokeAgentToken { workspace: String, id: String },
}

pub async fn run(args: WorkspaceArgs) -> Result<()> {
    let settings = args.client.settings()?;
    let control = ControlClient::new(&settings.control_url, &settings.ca_pem)?;
    let token = Some(settings.token.as_str());
    let label = |w: &str| -> Result<WorkspaceLabel> {
        WorkspaceLabel::resolve(w, &settings.user)
            .map_err(|e| anyhow::anyhow!("`{w}` is not a workspace name: {e}"))
    };
    match args.command {
        WorkspaceCommand::Create { name } => {
            let ws: WorkspaceInfo = control
                .post(
                    "/api/v1/workspaces",
                    token,
                    &CreateWorkspaceRequest { name, owner: None },
                )
                .await
                .map_err(api_error)?;
            println!("created workspace {}", ws.label);
        }
        WorkspaceCommand::List => {
            let list: WorkspacesResponse = control
                .get("/api/v1/workspaces", token)
                .await
                .map_err(api_error)?;
            for ws in list.workspaces {
                println!("{}", ws.label);
            }
        }
        WorkspaceCommand::Show { workspace } => {
            let ws = label(&workspace)?;
            let info: WorkspaceInfo = control
                .get(&format!("/api/v1/workspaces/{ws}"), token)
                .await
                .map_err(api_error)?;
            let route = match control
                .get::<RouteResponse>(&format!("/api/v1/workspaces/{ws}/route"), token)
                .await
            {
                Ok(r) => format!(
                    "connected to relay {} (region {})",
                    r.relay.name, r.relay.region
                ),
                Err(ferry_transport::ControlError::Api { status: 404, .. }) => {
                    "not connected".to_string()
                }
                Err(e) => return Err(api_error(e)),
            };
            let telemetry: WorkspaceTelemetryResponse = control
                .get(&format!("/api/v1/workspaces/{ws}/telemetry"), token)
                .await
                .map_err(api_error)?;
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            print!(
                "{}",
                crate::telemetry_view::render(&info, &route, &telemetry, now_ms)
            );
        }
        WorkspaceCommand::AgentToken { workspace, name } => {
            let ws = label(&workspace)?;
            let new: NewTokenResponse = control
                .post(
                    &format!("/api/v1/workspaces/{ws}/agent-tokens"),
                    token,
                    &CreateTokenRequest {
                        name,
                        ttl_secs: None,
                    },
                )
                .await
                .map_err(api_error)?;
            eprintln!("agent token {} for {ws}:", new.id);
            println!("{}", new.token);
        }
        WorkspaceCommand::AgentTokens { workspace } => {
            let ws = label(&workspace)?;
            let list: TokensResponse = control
                .get(&format!("/api/v1/workspaces/{ws}/agent-tokens"), token)
                .await
                .map_err(api_error)?;
            for t in list.tokens {
                println!(
                    "{}  {}  expires {}{}",
                    t.id,
                    t.name,
                    t.expires_at,
                    if t.revoked { "  revoked" } else { "" }
                );
            }
        }
        WorkspaceCommand::RevokeAgentToken { workspace, id } => {
            let ws = label(&workspace)?;
            control
                .delete(&format!("/api/v1/workspaces/{ws}/agent-tokens/{id}"), token)
                .await
                .map_err(api_error)?;
            println!("revoked {id}");
        }
    }
    Ok(())
}
