//! JSON bodies of the control plane's HTTP API (`/api/v1`), shared by the server and
//! its clients (relays, agents, the CLI) so that both ends agree on every field.

use serde::{Deserialize, Serialize};

mod telemetry;
pub use telemetry::*;

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
    /// Health by the age of its last heartbeat (absent from older control planes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<RelayHealth>,
    /// Changes every time the relay registers: tells a restarted relay from the
    /// process that was there before (agents avoid a draining relay until it is back).
    #[serde(default)]
    pub incarnation: u64,
    /// Its HTTPS origin for browsers (web apps, the web terminal, the RTT probe at
    /// `/.ferry/ping`), e.g. `https://eu-1.relay.localhost:7443`; absent when the relay
    /// serves no HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_url: Option<String>,
}

/// A relay's health as the control plane sees it, from its heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayHealth {
    /// Heartbeats arrive.
    Ok,
    /// Heartbeats are late.
    Unhealthy,
    /// No heartbeat for long: not offered to new sessions.
    Unreachable,
    /// Draining (shutting down or moving its agents): not offered to new sessions.
    Draining,
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
    /// DNS names and IP addresses the certificate must cover (a web-app relay adds
    /// `*.APPS_DOMAIN`).
    pub names: Vec<String>,
    /// Its HTTPS origin for browsers (see [`RelayInfo::https_url`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_url: Option<String>,
    /// The domain its web apps live under (`PORT--NAME--OWNER.APPS_DOMAIN`), e.g.
    /// `apps.eu.example.com`; absent when the relay serves no web apps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps_domain: Option<String>,
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

/// `PUT /api/v1/directory` (relay token): every workspace whose agent is on the relay
/// now. The control plane replaces the relay's directory entries with it, repairing
/// updates lost while it was unreachable. A relay sends it through the same ordered
/// queue as its [`DirectoryUpdate`]s, one request at a time, so a snapshot never
/// overtakes an update or is overtaken by one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorySnapshot {
    pub workspaces: Vec<String>,
    /// Those of `workspaces` whose agent holds this relay as its standby; the rest are
    /// owned here.
    #[serde(default)]
    pub standby: Vec<String>,
}

/// One workspace in the directory: its home region and the relays holding its agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryRecord {
    pub workspace: String,
    pub region: String,
    /// Relays with a connection from the agent; the owner (primary) first.
    pub relays: Vec<String>,
    /// The relay that serves it as owner, if one does right now: the store allows at
    /// most one, and for a moment while ownership moves there may be none (the
    /// standby then serves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// `GET /api/v1/directory` (relay or admin token): every connected workspace, so that
/// relays can route (and keep routing from cache while the control plane is down).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirectoryResponse {
    pub workspaces: Vec<DirectoryRecord>,
}

/// `GET /api/v1/workspaces/{label}/route` (user token): where the workspace's agent is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteResponse {
    pub workspace: String,
    pub relay: RelayInfo,
}

/// `POST /api/v1/users` (admin token): create a user.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub name: String,
    /// Without one the user can only use tokens an admin mints.
    #[serde(default)]
    pub password: Option<String>,
}

impl std::fmt::Debug for CreateUserRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateUserRequest")
            .field("name", &self.name)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// A user as the API shows it (never the password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub name: String,
    pub has_password: bool,
    pub created_at: i64,
}

/// `GET /api/v1/users` (admin token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsersResponse {
    pub users: Vec<UserInfo>,
}

/// `POST /api/v1/login`: password login, answered with a session (user) token.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A freshly minted token: the only time the secret is shown.
#[derive(Clone, Serialize, Deserialize)]
pub struct NewTokenResponse {
    /// The token's id (`jti`), for listing and revoking.
    pub id: String,
    pub token: String,
    pub expires_at: u64,
}

impl std::fmt::Debug for NewTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewTokenResponse")
            .field("id", &self.id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// `POST /api/v1/me/tokens` (personal API token) and
/// `POST /api/v1/workspaces/{label}/agent-tokens` (agent token).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// A label to recognise the token by in listings.
    pub name: String,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// A token as listings show it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub kind: TokenKind,
    pub subject: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokensResponse {
    pub tokens: Vec<TokenInfo>,
}

/// `GET /api/v1/me` (user token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeResponse {
    pub user: String,
}

/// `POST /api/v1/workspaces` (user token, or admin token with an owner).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspaceRequest {
    pub name: String,
    /// Only an admin may create a workspace for someone else.
    #[serde(default)]
    pub owner: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceInfo {
    /// `NAME--OWNER`, the affinity key.
    pub label: String,
    pub name: String,
    pub owner: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspacesResponse {
    pub workspaces: Vec<WorkspaceInfo>,
}

/// One revoked token that has not expired yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub jti: String,
    pub expires_at: i64,
}

/// `GET /api/v1/revocations` (relay or admin token).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RevocationsResponse {
    pub revoked: Vec<Revoked>,
}

/// `POST /api/v1/relays/heartbeat` (relay token): the relay is alive; the answer
/// carries what the relay must cache to verify tokens offline.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// Agents connected right now.
    pub agents: u64,
    /// The `digest` of the keys and revocations the relay holds. With `wait_secs` the
    /// answer is held until they change or that long has passed (a long poll), so
    /// revocations reach relays at once with few requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known: Option<String>,
    #[serde(default)]
    pub wait_secs: u32,
    /// The relay is draining: it leaves the region map at once and stays out until
    /// it registers again.
    #[serde(default)]
    pub draining: bool,
    /// Streams open right now.
    #[serde(default)]
    pub streams: u64,
    /// Bytes relayed (both directions) since the relay started.
    #[serde(default)]
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub keys: Vec<PublicKey>,
    pub revoked: Vec<Revoked>,
    /// Identifies this pair of lists, for the next request's `known`.
    #[serde(default)]
    pub digest: String,
}

/// `POST /api/v1/keys/rotate` (admin token).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKeysRequest {
    /// Stop publishing the old keys at once (they may have leaked): every token they
    /// signed, this request's admin token included, stops working.
    #[serde(default)]
    pub drop_old: bool,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct RotateKeysResponse {
    /// The new signing key's id.
    pub kid: String,
    /// Every published key, old ones included until their tokens expire.
    pub keys: Vec<PublicKey>,
    /// After `drop_old`, a fresh admin token to replace the one that just died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
}

impl std::fmt::Debug for RotateKeysResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotateKeysResponse")
            .field("kid", &self.kid)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// `POST /api/v1/measurements`: latency samples reported by agents (agent token),
/// relays (relay token, e.g. the mesh RTT matrix), CLIs (user token) and the dashboard
/// page (the user's session). The control plane checks that `from` names the caller
/// and keeps the samples as time series with bounded retention.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasurementsRequest {
    pub samples: Vec<Measurement>,
}

/// One round-trip measurement between two points of the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measurement {
    /// Who measured: `agent:LABEL`, `relay:NAME`, `client:USER` or `browser:USER`.
    pub from: String,
    /// What was measured: `relay:NAME` (or `agent:LABEL` from a relay).
    pub to: String,
    /// Smoothed round-trip time, microseconds.
    pub rtt_us: u64,
    /// Mean deviation of the round-trip time, microseconds.
    #[serde(default)]
    pub jitter_us: u64,
    /// Fraction of probes lost, 0.0..=1.0.
    #[serde(default)]
    pub loss: f32,
    /// When it was measured (Unix milliseconds); absent means on receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
}

/// The answer to a measurement report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasurementsResponse {
    /// Samples kept.
    pub stored: u32,
    /// Samples older than the control plane accepts (already rolled up), dropped.
    #[serde(default)]
    pub stale: u32,
}

/// One point of a latency series: a raw sample (`samples` = 1) or a one-minute bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyPoint {
    /// The sample's time, or the bucket's start (Unix milliseconds).
    pub at_ms: u64,
    /// The round-trip time; a bucket's median.
    pub rtt_us: u64,
    /// A bucket's largest round-trip time (the sample's own for a raw point).
    pub max_us: u64,
    /// Samples in the point.
    pub samples: u32,
    #[serde(default)]
    pub jitter_us: u64,
    #[serde(default)]
    pub loss: f32,
}

/// Where the points of a series come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// Every sample as reported (kept for the last hour).
    Raw,
    /// One-minute buckets: median, maximum and count (kept for a day).
    Minute,
}

/// The samples between two points of the network over time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySeries {
    /// `agent:LABEL`, `relay:NAME`, `client:USER` or `browser:USER`.
    pub from: String,
    pub to: String,
    pub points: Vec<LatencyPoint>,
}

/// `GET /api/v1/measurements?from=&to=&since=` (user or admin token): latency series
/// the caller may see, oldest point first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeasurementsSeriesResponse {
    pub resolution: Resolution,
    pub series: Vec<LatencySeries>,
}

/// The latest mesh round-trip time between two relays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshLink {
    /// The relay that measured.
    pub from: String,
    pub to: String,
    pub from_region: String,
    pub to_region: String,
    pub rtt_us: u64,
    pub at_ms: u64,
}

/// The region-by-region latency: the median of the latest mesh RTTs between their relays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionLatency {
    pub from: String,
    pub to: String,
    pub rtt_us: u64,
    /// Relay pairs the median is over.
    pub links: u32,
}

/// `GET /api/v1/measurements/matrix` (user or admin token): the latest mesh RTT
/// matrix, by relay and by region (links measured in the last few minutes only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyMatrixResponse {
    /// Every region of the region map, sorted.
    pub regions: Vec<String>,
    pub cells: Vec<RegionLatency>,
    pub links: Vec<MeshLink>,
}

/// Which hop of a workspace's path a series measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hop {
    /// The owner's CLI or browser to a relay.
    Client,
    /// Relay to relay (towards the relays holding the workspace's agent).
    Mesh,
    /// Between a relay and the workspace's agent (measured by either end).
    Agent,
}

/// One hop's series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HopSeries {
    pub hop: Hop,
    #[serde(flatten)]
    pub series: LatencySeries,
}

/// `GET /api/v1/workspaces/{label}/latency?since=` (user or admin token): the
/// workspace's hop-by-hop latency over time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceLatencyResponse {
    pub workspace: String,
    /// Relays holding the workspace's agent now, owner first.
    pub relays: Vec<String>,
    pub resolution: Resolution,
    pub hops: Vec<HopSeries>,
}

/// A relay's load at one moment, from its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayLoadPoint {
    pub at_ms: u64,
    pub agents: u64,
    pub streams: u64,
    /// Bytes relayed since the relay started (a drop means it restarted).
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayLoad {
    pub relay: String,
    pub region: String,
    pub points: Vec<RelayLoadPoint>,
}

/// `GET /api/v1/relays/load?since=` (user or admin token): agents, open streams and
/// bytes relayed per relay over time (kept for an hour), for throughput charts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayLoadResponse {
    pub relays: Vec<RelayLoad>,
}
