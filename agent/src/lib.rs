//! The workspace agent: dials out to relays (no inbound port in the workspace),
//! authenticates with its agent token, and serves each stream a relay opens by
//! connecting to a loopback port (or the SSH service) inside the workspace.
//!
//! Placement: the agent fetches the region map and connects to the ring owner of its
//! workspace label in its home region and to the standby, the next relay on the ring
//! (see `ferry-ring`). The home region is the nearest one by measured RTT, chosen with
//! hysteresis ([`selection`]); `--region` pins it, with fallback to the nearest other
//! region while the pinned one does not answer. [`Agent::run`] keeps one
//! link task per relay ([`link`]) in a `JoinSet`, refreshes the map every
//! `map_refresh` (keeping the cached one while the control plane is down), and
//! reconciles: links to new placements start first, links to relays no longer wanted
//! are retired only once every wanted link is up (make-before-break). A relay's
//! go-away makes the agent avoid that relay until it has left the map and come back.
//! Beside the links, one [`telemetry`] task reports the workspace's resource use and
//! metadata items to the control plane.

mod backoff;
mod link;
pub mod metrics;
mod pty;
mod selection;
mod serve;
pub mod telemetry;
mod terminal;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::api::{RegionsResponse, RelayInfo};
use ferry_proto::{alpn, WorkspaceLabel};
use ferry_ring::RegionMap;
use ferry_transport::{ControlClient, Limits};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::link::{LinkContext, LinkEvent};

pub use backoff::Backoff;
pub use serve::PortPolicy;
pub use telemetry::TelemetryConfig;
pub use terminal::TerminalPolicy;

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub control_url: String,
    /// The CA relays' and the control plane's certificates chain to.
    pub ca_pem: String,
    /// An agent token; its subject names the one workspace this agent serves.
    pub token: String,
    /// Pinned home region (used whenever it answers); the nearest region when unset.
    pub region: Option<String>,
    /// Source address for connections to relays (multi-homed hosts; the WAN emulator
    /// tells locations apart by it). The system picks one when unset.
    pub local_ip: Option<std::net::IpAddr>,
    /// How often every relay is probed to choose the home region.
    pub probe_interval: Duration,
    /// A probe without an answer in this long counts as lost.
    pub probe_timeout: Duration,
    /// Which loopback ports streams may reach.
    pub ports: PortPolicy,
    /// Where the workspace's SSH server listens.
    pub ssh_target: SocketAddr,
    /// Whether terminal streams get a shell.
    pub terminal: TerminalPolicy,
    pub limits: Limits,
    pub backoff: Backoff,
    /// How often the region map is fetched again (new relays, drained ones).
    pub map_refresh: Duration,
    /// QUIC on UDP, the TCP tunnel, or whichever gets through (the default).
    pub transport: ferry_transport::reach::TransportMode,
    /// Resource readings and metadata items reported to the control plane.
    pub telemetry: TelemetryConfig,
}

impl AgentConfig {
    pub fn new(control_url: String, ca_pem: String, token: String) -> Self {
        AgentConfig {
            control_url,
            ca_pem,
            token,
            region: None,
            local_ip: None,
            // A QUIC handshake per relay per agent: cheap for one agent, not for tens of
            // thousands on one relay, hence not more often. A map change (a region's
            // relays gone or back) triggers a round at once.
            probe_interval: Duration::from_secs(15),
            probe_timeout: Duration::from_secs(1),
            ports: PortPolicy::AnyLoopback,
            ssh_target: "127.0.0.1:22".parse().expect("literal address"),
            terminal: TerminalPolicy::default(),
            limits: Limits::agent(),
            backoff: Backoff::default(),
            map_refresh: Duration::from_secs(3),
            transport: Default::default(),
            telemetry: TelemetryConfig::default(),
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
    #[error(transparent)]
    Connector(#[from] ferry_transport::reach::ConnectorError),
}

/// Where the agent stands, for status displays and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentStatus {
    Connecting,
    /// Serving through `relay` (the owner when its link is up), with the standby's
    /// link up too when `standby` is set.
    Connected {
        relay: String,
        standby: Option<String>,
    },
    Backoff {
        attempt: u32,
        error: String,
    },
}

/// A workspace agent.
pub struct Agent {
    config: AgentConfig,
    workspace: WorkspaceLabel,
    status: watch::Sender<AgentStatus>,
}

/// A relay the agent was told to leave, avoided until the region map shows it
/// restarted (another incarnation), or for [`AVOID_AT_MOST`] (the control plane may be
/// down and keep showing the old one).
struct Avoid {
    since: Instant,
    /// The incarnation that sent the go-away, once known from the map.
    incarnation: Option<u64>,
}

const AVOID_AT_MOST: Duration = Duration::from_secs(60);

/// One running link.
struct LinkState {
    relay: RelayInfo,
    retire: CancellationToken,
    up: bool,
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
        metrics::describe();
        let control = ControlClient::new(&self.config.control_url, &self.config.ca_pem)?;
        let tls = ferry_certs::client_config(&self.config.ca_pem, &[alpn::AGENT])?;
        let connector = Arc::new(ferry_transport::reach::Connector::new(
            self.config.transport,
            &self.config.ca_pem,
            tls,
            self.config.limits.clone(),
            self.config.local_ip,
            ferry_transport::reach::TransportMemory::in_memory(),
        )?);
        let ctx = Arc::new(LinkContext {
            workspace: self.workspace.clone(),
            token: self.config.token.clone(),
            ports: self.config.ports.clone(),
            ssh_target: self.config.ssh_target,
            terminal: self.config.terminal.clone(),
            backoff: self.config.backoff,
        });
        let (events_tx, mut events) = mpsc::channel::<LinkEvent>(64);
        let mut tasks: JoinSet<String> = JoinSet::new();
        let mut links: HashMap<String, LinkState> = HashMap::new();
        let mut avoid: HashMap<String, Avoid> = HashMap::new();
        let mut going_away: Vec<(String, Option<u64>)> = Vec::new();
        let mut map: Option<RegionMap> = None;
        let (relays_tx, relays_rx) = watch::channel(Vec::<RelayInfo>::new());
        let (chosen_tx, mut chosen) = watch::channel::<selection::Published>(None);
        let mut selection_task = JoinSet::new();
        selection_task.spawn(selection::run(
            selection::SelectionSetup {
                ca_pem: self.config.ca_pem.clone(),
                token: self.config.token.clone(),
                workspace: self.workspace.to_string(),
                pin: self.config.region.clone(),
                local_ip: self.config.local_ip,
                interval: self.config.probe_interval,
                timeout: self.config.probe_timeout,
            },
            control.clone(),
            relays_rx,
            chosen_tx,
            cancel.child_token(),
        ));
        let mut telemetry_task = JoinSet::new();
        telemetry_task.spawn(telemetry::run(
            self.config.telemetry.clone(),
            control.clone(),
            self.config.token.clone(),
            cancel.child_token(),
        ));
        let mut map_error = String::new();
        let mut map_failures = 0u32;
        // When to fetch the map next (now, at start).
        let mut next_fetch = tokio::time::Instant::now();
        let result = loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break Ok(()),
                Some(event) = events.recv() => match event {
                    LinkEvent::Up { relay } => {
                        if let Some(l) = links.get_mut(&relay) { l.up = true; }
                    }
                    LinkEvent::Down { relay, reason } => {
                        if let Some(l) = links.get_mut(&relay) { l.up = false; }
                        map_error = reason;
                    }
                    LinkEvent::GoAway { relay, after } => {
                        // The relay spreads its agents' moves with a jittered hint: move
                        // (and look at the map again) only once it has passed.
                        let incarnation = links.get(&relay).map(|l| l.relay.incarnation);
                        going_away.push((relay, incarnation));
                        next_fetch = next_fetch.min(tokio::time::Instant::now() + after);
                    }
                    LinkEvent::Fatal(e) => break Err(e),
                },
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok(name) = done {
                        if links.get(&name).is_some_and(|l| l.retire.is_cancelled()) {
                            links.remove(&name);
                        }
                    }
                }
                Ok(()) = chosen.changed() => {}
                _ = tokio::time::sleep_until(next_fetch) => {
                    for (relay, incarnation) in going_away.drain(..) {
                        avoid.insert(relay, Avoid { since: Instant::now(), incarnation });
                    }
                    match self.fetch_map(&control).await {
                        Ok(fresh) => {
                            map_failures = 0;
                            avoid.retain(|name, a| {
                                let restarted = match (fresh.relay(name), a.incarnation) {
                                    (Some(now), Some(then)) => now.incarnation != then,
                                    _ => false,
                                };
                                a.since.elapsed() < AVOID_AT_MOST && !restarted
                            });
                            relays_tx.send_if_modified(|relays| {
                                let now: Vec<RelayInfo> = fresh
                                    .region_names()
                                    .flat_map(|r| fresh.relays(r))
                                    .cloned()
                                    .collect();
                                let changed = *relays != now;
                                *relays = now;
                                changed
                            });
                            map = Some(fresh);
                            next_fetch = tokio::time::Instant::now() + self.config.map_refresh;
                        }
                        Err(e) => {
                            // Keep the cached map (the control plane may be down).
                            tracing::debug!(error = %e, "region map fetch failed");
                            map_failures = map_failures.saturating_add(1);
                            map_error = e;
                            let delay = if map.is_some() { self.config.map_refresh } else { self.config.backoff.delay(map_failures) };
                            next_fetch = tokio::time::Instant::now() + delay;
                        }
                    }
                }
            }
            if let Some(map) = &map {
                let region = self.home_region(map, &chosen.borrow());
                let wanted = region
                    .map(|r| self.wanted(map, &r, &avoid))
                    .unwrap_or_default();
                for relay in &wanted {
                    let stale = links.get(&relay.name).is_some_and(|l| {
                        l.relay.quic_addr != relay.quic_addr && !l.retire.is_cancelled()
                    });
                    if stale {
                        // Same name, new address: retire the old link; a new one starts below
                        // once the old task has ended.
                        if let Some(l) = links.get(&relay.name) {
                            l.retire.cancel();
                        }
                        continue;
                    }
                    if links.contains_key(&relay.name) {
                        continue;
                    }
                    let retire = CancellationToken::new();
                    tasks.spawn(link::run(
                        ctx.clone(),
                        connector.clone(),
                        relay.clone(),
                        retire.clone(),
                        cancel.clone(),
                        events_tx.clone(),
                    ));
                    links.insert(
                        relay.name.clone(),
                        LinkState {
                            relay: relay.clone(),
                            retire,
                            up: false,
                        },
                    );
                }
                // Make-before-break: leave the old relays only once the new ones serve.
                let all_up = !wanted.is_empty()
                    && wanted.iter().all(|r| {
                        links
                            .get(&r.name)
                            .is_some_and(|l| l.up && l.relay.quic_addr == r.quic_addr)
                    });
                if all_up {
                    for (name, l) in &links {
                        if !wanted.iter().any(|r| &r.name == name) && !l.retire.is_cancelled() {
                            tracing::info!(workspace = %self.workspace, relay = %name, "retiring the link to a relay no longer in our placement");
                            l.retire.cancel();
                        }
                    }
                }
                self.publish_status(&wanted, &links, &map_error);
            } else {
                self.status.send_replace(AgentStatus::Backoff {
                    attempt: map_failures,
                    error: map_error.clone(),
                });
            }
        };
        selection_task.shutdown().await;
        telemetry_task.shutdown().await;
        tasks.shutdown().await;
        connector
            .close(b"agent stopping", Duration::from_secs(1))
            .await;
        result
    }

    /// The home region: the prober's choice; before its first round the pin (or the
    /// only region); when no region answers probes, the pin or the first region.
    fn home_region(&self, map: &RegionMap, chosen: &selection::Published) -> Option<String> {
        let has_relays = |r: &str| map.relays(r).next().is_some();
        let fallback = || {
            self.config
                .region
                .clone()
                .filter(|r| has_relays(r))
                .or_else(|| map.first_region().map(str::to_string))
        };
        match chosen {
            Some(Some(region)) if has_relays(region) => Some(region.clone()),
            Some(_) => fallback(),
            // Waiting for the first choice (a few quick probe rounds) avoids
            // connecting somewhere only to move at once.
            None if map.region_names().filter(|r| has_relays(r)).count() > 1 => {
                self.config.region.clone().filter(|r| has_relays(r))
            }
            None => fallback(),
        }
    }

    /// The relays the agent should be connected to: owner and standby in `region`,
    /// leaving out relays that told it to go away (unless that leaves none).
    fn wanted(
        &self,
        map: &RegionMap,
        region: &str,
        avoid: &HashMap<String, Avoid>,
    ) -> Vec<RelayInfo> {
        let avoided: Vec<String> = avoid.keys().cloned().collect();
        let trimmed = map.without(&avoided);
        let label = self.workspace.as_str();
        for candidate in [&trimmed, map] {
            if let Some(p) = candidate.placement(region, label) {
                return std::iter::once(p.owner).chain(p.standby).collect();
            }
        }
        Vec::new()
    }

    fn publish_status(
        &self,
        wanted: &[RelayInfo],
        links: &HashMap<String, LinkState>,
        error: &str,
    ) {
        let up = |name: &str| links.get(name).is_some_and(|l| l.up);
        let serving: Vec<&str> = wanted
            .iter()
            .map(|r| r.name.as_str())
            .chain(links.iter().filter(|(_, l)| l.up).map(|(n, _)| n.as_str()))
            .filter(|n| up(n))
            .collect();
        let status = match serving.first() {
            Some(first) => AgentStatus::Connected {
                relay: first.to_string(),
                standby: serving.iter().find(|n| *n != first).map(|n| n.to_string()),
            },
            None if error.is_empty() => AgentStatus::Connecting,
            None => AgentStatus::Backoff {
                attempt: 0,
                error: error.to_string(),
            },
        };
        self.status.send_if_modified(|s| {
            if *s == status {
                false
            } else {
                *s = status;
                true
            }
        });
    }

    async fn fetch_map(&self, control: &ControlClient) -> Result<RegionMap, String> {
        let regions: RegionsResponse = control
            .get("/api/v1/regions", Some(&self.config.token))
            .await
            .map_err(|e| match &e {
                ferry_transport::ControlError::Api { .. } => format!("control plane refused: {e}"),
                _ => e.to_string(),
            })?;
        let map = RegionMap::new(&regions.regions);
        if let Some(want) = &self.config.region {
            if map.relays(want).next().is_none() {
                // The pin falls back to the nearest region that has relays.
                tracing::debug!(region = %want, "the pinned region has no relays in service");
            }
        }
        match map.first_region() {
            None => Err("no relays are registered yet".into()),
            Some(_) => Ok(map),
        }
    }
}
