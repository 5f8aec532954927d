//! JSON bodies of the control plane's HTTP API (`/api/v1`), shared by the server and
//! its clients (relays, agents, the CLI) so that both ends agree on every field.

use serde::{Deserialize, Serialize};

use crate::token::{PublicKey, TokenKind};

/// Every API error: `{"error": {"code": "...", "message": "..."}}` with a 4xx/5xx status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable snake_case code (see [`crate::ErrorCode::as_str`] and the API's own).
    pub code: String,
    pub message: String,
}

/// `GET /api/v1/keys`: the public keys tokens are verified with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysResponse {
    pub keys: Vec<PublicKey>,
}

/// One relay as the region map shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayInfo {
    pub name: String,
    pub region: String,
    /// Where agents and clients reach its QUIC endpoint, `host:port`.
    pub quic_addr: String,
    /// The name its certificate is valid for (TLS server name).
    pub server_name: String,
    /// Changes every time the relay registers: tells a restarted relay from the
    /// process that was there before (agents avoid a draining relay until it is back).
    #[serde(default)]
    pub incarnation: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Region {
    pub name: String,
    pub relays: Vec<RelayInfo>,
}

/// `GET /api/v1/regions`: the region map.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegionsResponse {
    pub regions: Vec<Region>,
}

/// `POST /api/v1/relays/register` (relay token): a relay announces itself and gets its
/// certificate, issued by the control plane's CA for the names it asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRelayRequest {
    pub region: String,
    pub quic_addr: String,
    /// DNS names and IP addresses the certificate must cover.
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRelayResponse {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    pub keys: Vec<PublicKey>,
}

/// `POST /api/v1/tokens` (admin token): mint a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintTokenRequest {
    pub kind: TokenKind,
    pub subject: String,
    /// Lifetime in seconds; the server caps it per kind.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MintTokenResponse {
    pub token: String,
    pub expires_at: u64,
}

/// `POST /api/v1/directory` (relay token): an agent connected to or left a relay.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryUpdate {
    pub workspace: String,
    pub connected: bool,
    /// The agent holds this connection as its standby (the ring owner is elsewhere).
    #[serde(default)]
    pub standby: bool,
}

/// One workspace in the directory: its home region and the relays holding its agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryRecord {
    pub workspace: String,
    pub region: String,
    /// Relays with a connection from the agent; the owner (primary) first.
    pub relays: Vec<String>,
}

/// `GET /api/v1/directory` (relay or admin token): every connected workspace, so that
/// relays can route (and keep routing from cache while the control plane is down).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirectoryResponse {
    pub workspaces: Vec<DirectoryRecord>,
}

/// `POST /api/v1/relays/heartbeat` (relay token): the relay is alive; a draining
/// relay leaves the region map at once, a silent one after a few missed beats.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayHeartbeat {
    pub draining: bool,
}

/// `GET /api/v1/workspaces/{label}/route` (user token): where the workspace's agent is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteResponse {
    pub workspace: String,
    pub relay: RelayInfo,
}
