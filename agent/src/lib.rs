//! The workspace agent: dials out to a relay (no inbound port in the workspace),
//! authenticates with its agent token, and serves each stream the relay opens by
//! connecting to a loopback port (or the SSH service) inside the workspace.
//!
//! [`Agent::run`] loops until its cancellation token fires: find a relay, connect,
//! serve streams until the connection ends, wait a jittered exponential backoff, and
//! again. Stream tasks live in a `JoinSet` owned by the connection they came on.

mod backoff;
mod pty;
mod serve;
mod terminal;

use std::net::SocketAddr;
use std::time::Duration;

use ferry_proto::api::{RegionsResponse, RelayInfo};
use ferry_proto::{alpn, ErrorCode, WorkspaceLabel};
use ferry_transport::dial::{self, DialError};
use ferry_transport::{ControlClient, Limits};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use backoff::Backoff;
pub use serve::PortPolicy;
pub use terminal::TerminalPolicy;

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub control_url: String,
    /// The CA relays' and the control plane's certificates chain to.
    pub ca_pem: String,
    /// An agent token; its subject names the one workspace this agent serves.
    pub token: String,
    /// Preferred region; the first region with relays when unset.
    pub region: Option<String>,
    /// Which loopback ports streams may reach.
    pub ports: PortPolicy,
    /// Where the workspace's SSH server listens.
    pub ssh_target: SocketAddr,
    /// Whether terminal streams get a shell.
    pub terminal: TerminalPolicy,
    pub limits: Limits,
    pub backoff: Backoff,
}

impl AgentConfig {
    pub fn new(control_url: String, ca_pem: String, token: String) -> Self {
        AgentConfig {
            control_url,
            ca_pem,
            token,
            region: None,
            ports: PortPolicy::AnyLoopback,
            ssh_target: "127.0.0.1:22".parse().expect("literal address"),
            terminal: TerminalPolicy::default(),
            limits: Limits::agent(),
            backoff: Backoff::default(),
        }
    }
}

/// Why an agent gave up (it retries everything else).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error("the agent token is not usable: {0}")]
    BadToken(String),
    #[error("the relay refused this agent: {0}")]
    Refused(ferry_proto::ErrorFrame),
    #[error(transparent)]
    Control(#[from] ferry_transport::ControlError),
    #[error(transparent)]
    Cert(#[from] ferry_certs::CertError),
    #[error(transparent)]
    Endpoint(#[from] ferry_transport::quic::EndpointError),
}

/// Where the agent stands, for status displays and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentStatus {
    Connecting,
    Connected { relay: String },
    Backoff { attempt: u32, error: String },
}

/// A workspace agent.
pub struct Agent {
    config: AgentConfig,
    workspace: WorkspaceLabel,
    status: watch::Sender<AgentStatus>,
}

impl Agent {
    pub fn new(config: AgentConfig) -> Result<Agent, AgentError> {
        let claims = ferry_proto::token::peek_claims(&config.token)
            .ok_or_else(|| AgentError::BadToken("it is not a ferry token".into()))?;
        let workspace = WorkspaceLabel::parse(&claims.sub)
            .map_err(|e| AgentError::BadToken(format!("its subject is not a workspace: {e}")))?;
        let (status, _) = watch::channel(AgentStatus::Connecting);
        Ok(Agent {
            config,
            workspace,
            status,
        })
    }

    pub fn workspace(&self) -> &WorkspaceLabel {
        &self.workspace
    }

    /// Watches the agent's status.
    pub fn status(&self) -> watch::Receiver<AgentStatus> {
        self.status.subscribe()
    }

    /// Runs until cancelled, or until the token is refused for good.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), AgentError> {
        let control = ControlClient::new(&self.config.control_url, &self.config.ca_pem)?;
        let mut endpoints: Option<(bool, quinn::Endpoint)> = None;
        let mut relay_cache: Option<RelayInfo> = None;
        let mut attempt = 0u32;
        let result = loop {
            let outcome = self
                .connect_and_serve(
                    &control,
                    &mut endpoints,
                    &mut relay_cache,
                    &cancel,
                    &mut attempt,
                )
                .await;
            if cancel.is_cancelled() {
                break Ok(());
            }
            let error = match outcome {
                Err(fatal) => break Err(fatal),
                Ok(reason) => reason,
            };
            attempt = attempt.saturating_add(1);
            let delay = self.config.backoff.delay(attempt);
            tracing::info!(workspace = %self.workspace, attempt, ?delay, reason = %error, "reconnecting after backoff");
            self.status
                .send_replace(AgentStatus::Backoff { attempt, error });
            tokio::select! {
                _ = cancel.cancelled() => break Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        };
        if let Some((_, endpoint)) = endpoints {
            endpoint.close(0u32.into(), b"agent stopping");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
        result
    }

    /// One connection's life. `Ok(reason)` means "retry after backoff".
    async fn connect_and_serve(
        &self,
        control: &ControlClient,
        endpoint: &mut Option<(bool, quinn::Endpoint)>,
        relay_cache: &mut Option<RelayInfo>,
        cancel: &CancellationToken,
        attempt: &mut u32,
    ) -> Result<String, AgentError> {
        self.status.send_replace(AgentStatus::Connecting);
        let relay = match self.pick_relay(control).await {
            Ok(relay) => {
                *relay_cache = Some(relay.clone());
                relay
            }
            Err(e) => match relay_cache.clone() {
                // The control plane may be down: keep using the relay we knew.
                Some(cached) => {
                    tracing::debug!(error = %e, "region lookup failed; using the cached relay");
                    cached
                }
                None => return Ok(e),
            },
        };
        let addr: SocketAddr = match relay.quic_addr.parse() {
            Ok(a) => a,
            Err(_) => {
                return Ok(format!(
                    "relay {} has a bad address {}",
                    relay.name, relay.quic_addr
                ))
            }
        };
        let ep = match endpoint {
            Some((v6, ep)) if *v6 == addr.is_ipv6() => ep.clone(),
            _ => {
                let ep = ferry_transport::quic::client_endpoint(
                    addr,
                    ferry_certs::client_config(&self.config.ca_pem, &[alpn::AGENT])?,
                    &self.config.limits,
                )?;
                *endpoint = Some((addr.is_ipv6(), ep.clone()));
                ep
            }
        };
        let session = tokio::select! {
            _ = cancel.cancelled() => return Ok("cancelled".into()),
            s = dial::connect(&ep, addr, &relay.server_name, &self.config.token) => s,
        };
        let session = match session {
            Ok(s) => s,
            Err(DialError::Refused { frame, .. })
                if matches!(
                    frame.code,
                    ErrorCode::Unauthorized | ErrorCode::TokenExpired | ErrorCode::WrongTokenKind
                ) =>
            {
                return Err(AgentError::Refused(frame));
            }
            Err(e) => return Ok(e.to_string()),
        };
        *attempt = 0;
        tracing::info!(workspace = %self.workspace, relay = %relay.name, %addr, "connected to relay");
        self.status.send_replace(AgentStatus::Connected {
            relay: relay.name.clone(),
        });
        let conn = session.conn;
        let mut streams = JoinSet::new();
        let reason = loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    conn.close(0u32.into(), b"agent stopping");
                    break "cancelled".to_string();
                }
                Some(_) = streams.join_next(), if !streams.is_empty() => {}
                accepted = conn.accept_bi() => match accepted {
                    Ok((send, recv)) => {
                        streams.spawn(serve::serve_stream(self.workspace.clone(), self.config.ports.clone(), self.config.ssh_target, self.config.terminal.clone(), send, recv));
                    }
                    Err(e) => break format!("connection to relay {} lost: {e}", relay.name),
                }
            }
        };
        // Streams on a dead connection cannot make progress; stop them.
        streams.shutdown().await;
        Ok(reason)
    }

    async fn pick_relay(&self, control: &ControlClient) -> Result<RelayInfo, String> {
        let regions: RegionsResponse = control
            .get("/api/v1/regions", Some(&self.config.token))
            .await
            .map_err(|e| match &e {
                ferry_transport::ControlError::Api { .. } => format!("control plane refused: {e}"),
                _ => e.to_string(),
            })?;
        let region = match &self.config.region {
            Some(want) => regions.regions.iter().find(|r| &r.name == want),
            None => regions.regions.iter().find(|r| !r.relays.is_empty()),
        };
        let region = region.ok_or_else(|| match &self.config.region {
            Some(want) => format!("region `{want}` has no relays"),
            None => "no relays are registered yet".to_string(),
        })?;
        region
            .relays
            .first()
            .cloned()
            .ok_or_else(|| format!("region `{}` has no relays", region.name))
    }
}
