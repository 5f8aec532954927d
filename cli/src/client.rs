//! The client side of reaching a workspace: connect to a relay near us (any relay can
//! reach any workspace through the mesh), open streams, and retry a stream that a relay
//! refused with a retryable code (draining, overloaded, agent just moved) or that failed
//! because the relay went away, on the next relay.
//!
//! Relays are tried in this order: `--relay NAME` first, then the relays of the
//! nearest region (see [`crate::latency`]; `--region` pins one), starting at a random
//! one to spread clients, then the other regions, nearest first. The
//! region map comes from the control plane and is cached in a file beside the config,
//! so that known relays stay reachable while the control plane is down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ferry_proto::api::{RegionsResponse, RelayInfo};
use ferry_proto::{alpn, ErrorCode, StreamHeader, Target, WorkspaceLabel};
use ferry_transport::dial::{self, Session, StreamError};
use ferry_transport::reach::{Connector, Reached, Transport, TransportMemory};
use ferry_transport::{ControlClient, Limits};
use quinn::{RecvStream, SendStream};
use tokio::sync::Mutex;

use crate::config::ClientSettings;

/// A stream is retried on other relays for at most this long.
const RETRY_FOR: Duration = Duration::from_secs(12);
/// `agent_not_connected` is retried only this soon after the first attempt: long
/// enough to cover an agent moving between relays, short enough that a workspace
/// that really has no agent fails quickly.
const AGENT_MOVE_WINDOW: Duration = Duration::from_millis(2500);
/// A relay that does not finish the handshake in this long is skipped (the next one
/// is tried); a live relay near us answers in milliseconds.
const CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection through the relays to one workspace.
pub struct WorkspaceConnection {
    pub workspace: WorkspaceLabel,
    /// The relay of the first connection (for messages).
    pub relay: String,
    candidates: Vec<RelayInfo>,
    connector: Arc<Connector>,
    token: String,
    current: Arc<Mutex<Current>>,
    /// Asked, when a relay finds no agent, whether the workspace exists at all.
    control: Option<ControlClient>,
}

struct Current {
    /// Index into `candidates` of the relay we are connected to.
    index: usize,
    session: Option<Watched>,
}

/// A session with its relay's watchdog ([`close_when_relay_dies`]) and, on the TCP
/// tunnel, its climb back to QUIC ([`climb_back`]); both stop when the session is
/// dropped: their handles on the connection must not keep an abandoned one open.
struct Watched {
    session: Session,
    /// The endpoint the session runs on (a tunnel's own, or the UDP one).
    endpoint: quinn::Endpoint,
    transport: Transport,
    /// Why this transport was chosen (`ferry status`).
    why: String,
    watchdog: tokio::task::AbortHandle,
    climb_back: Option<tokio::task::AbortHandle>,
}

impl std::ops::Deref for Watched {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.session
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.watchdog.abort();
        if let Some(task) = &self.climb_back {
            task.abort();
        }
    }
}

/// Application close code for a connection whose relay we took for dead.
const RELAY_SILENT: u32 = 2;

/// Ends a connection whose relay died under it, so that the streams open on it (an
/// SSH session, a port-forward's TCP connections) fail within seconds instead of
/// hanging until QUIC's 30 s idle timeout. Silence alone does not tell a dead relay
/// from our own network going away (a laptop changing Wi-Fi), which that timeout is
/// there to ride out. So after `silent_for` ([`relay_silent_for`]) without a packet,
/// we try a handshake with up to three other relays, and close only when one answers
/// while ours still says nothing.
async fn close_when_relay_dies(
    conn: quinn::Connection,
    prober: Arc<Connector>,
    relay: String,
    others: Vec<RelayInfo>,
    silent_for: fn(&quinn::Connection) -> Duration,
) {
    loop {
        let quiet = silent_for(&conn);
        tokio::select! {
            _ = conn.closed() => return,
            _ = ferry_transport::liveness::silence(&conn, quiet) => {}
        }
        let heard = conn.stats().udp_rx.datagrams;
        let other = first_to_answer(&prober, &others).await;
        if conn.stats().udp_rx.datagrams != heard {
            // Ours spoke up while we asked around: it was only stalled.
            continue;
        }
        match other {
            Some(other) => {
                close_dead_relay(&conn, &relay, &other);
                return;
            }
            None => tracing::debug!(
                %relay,
                "the relay and the others we tried are silent: our network, probably; waiting"
            ),
        }
    }
}

/// Closes the connection to a relay taken for dead (silent while `other` answers), so
/// that the streams still open on it end now.
fn close_dead_relay(conn: &quinn::Connection, relay: &str, other: &str) {
    tracing::warn!(
        %relay, %other,
        "the relay sent nothing while another relay answers: taking it for dead, its open streams end"
    );
    conn.close(RELAY_SILENT.into(), b"relay stopped answering");
}

/// The name of the first of (up to three of) `relays` to complete a handshake, over
/// whichever transport the CLI may use.
async fn first_to_answer(prober: &Arc<Connector>, relays: &[RelayInfo]) -> Option<String> {
    let mut handshakes = tokio::task::JoinSet::new();
    for relay in relays.iter().take(3) {
        let (prober, relay) = (prober.clone(), relay.clone());
        handshakes.spawn(async move {
            prober
                .answers(&relay, CLIENT_HANDSHAKE_TIMEOUT)
                .await
                .then_some(relay.name)
        });
    }
    while let Some(answer) = handshakes.join_next().await {
        if let Ok(Some(name)) = answer {
            return Some(name);
        }
    }
    None
}

/// Keeps the relays that take new streams (healthy, not draining); all of them if the
/// control plane considers none healthy, since any relay that answers can still help.
pub(crate) fn in_service(regions: Vec<ferry_proto::api::Region>) -> Vec<ferry_proto::api::Region> {
    let ok = |r: &RelayInfo| matches!(r.health, None | Some(ferry_proto::api::RelayHealth::Ok));
    if !regions.iter().flat_map(|g| &g.relays).any(ok) {
        return regions;
    }
    regions
        .into_iter()
        .map(|mut g| {
            g.relays.retain(ok);
            g
        })
        .collect()
}

pub(crate) async fn region_map(settings: &ClientSettings) -> Result<Vec<ferry_proto::api::Region>> {
    let control = ControlClient::new(&settings.control_url, &settings.ca_pem)?;
    match control
        .get::<RegionsResponse>("/api/v1/regions", Some(&settings.token))
        .await
    {
        Ok(resp) => {
            if let Ok(json) = serde_json::to_vec(&resp) {
                // Best effort: the cache only helps while the control plane is down.
                let _ = std::fs::write(&settings.regions_cache, json);
            }
            Ok(resp.regions)
        }
        Err(e) if e.is_unreachable() => {
            let cached = std::fs::read(&settings.regions_cache)
                .ok()
                .and_then(|b| serde_json::from_slice::<RegionsResponse>(&b).ok());
            match cached {
                Some(c) => {
                    tracing::warn!(error = %e, "control plane unreachable; using the cached region map");
                    Ok(c.regions)
                }
                None => Err(anyhow!(e)),
            }
        }
        Err(ferry_transport::ControlError::Api { code, message, .. }) => {
            Err(anyhow!("{message} ({code})"))
        }
        Err(e) => Err(anyhow!(e)),
    }
}

/// The relays in the order we try them: `preferred` first, then region by region in
/// `region_order` (regions it does not name last, in map order).
fn order_relays(
    regions: &[ferry_proto::api::Region],
    preferred: Option<&str>,
    region_order: &[String],
) -> Vec<RelayInfo> {
    let rank = |name: &str| {
        region_order
            .iter()
            .position(|r| r == name)
            .unwrap_or(usize::MAX)
    };
    let mut regions: Vec<&ferry_proto::api::Region> = regions.iter().collect();
    regions.sort_by_key(|r| rank(&r.name));
    let mut out: Vec<RelayInfo> = Vec::new();
    if let Some(name) = preferred {
        out.extend(
            regions
                .iter()
                .flat_map(|r| &r.relays)
                .filter(|r| r.name == name)
                .cloned(),
        );
    }
    for region in regions.into_iter().filter(|r| !r.relays.is_empty()) {
        let start = fastrand::usize(..region.relays.len());
        let mut relays = region.relays.clone();
        relays.rotate_left(start);
        out.extend(
            relays
                .into_iter()
                .filter(|r| Some(r.name.as_str()) != preferred),
        );
    }
    out
}

/// How long the relay may send nothing at all while we wait for a stream's answer
/// before we take it for dead and go to the next one: three keep-alive intervals (it
/// acknowledges each of our pings), or four round trips on a slow path.
fn relay_silent_for(conn: &quinn::Connection) -> Duration {
    (ferry_transport::quic::CLIENT_KEEP_ALIVE * 3).max(conn.rtt() * 4)
}

fn retryable(e: &StreamError, since_start: Duration) -> bool {
    match e.code() {
        Some(ErrorCode::Draining | ErrorCode::Overloaded) => true,
        Some(ErrorCode::AgentNotConnected) => since_start < AGENT_MOVE_WINDOW,
        Some(_) => false,
        // The relay went away or did not answer: another one may.
        None => true,
    }
}

impl WorkspaceConnection {
    /// Connects to the first relay that answers.
    pub async fn connect(
        settings: &ClientSettings,
        workspace: &str,
    ) -> Result<WorkspaceConnection> {
        let workspace = WorkspaceLabel::resolve(workspace, &settings.user)
            .map_err(|e| anyhow!("`{workspace}` is not a workspace name: {e}"))?;
        let regions = in_service(region_map(settings).await?);
        let region_order = crate::latency::nearest_first(settings, &regions).await;
        let candidates = order_relays(&regions, settings.relay.as_deref(), &region_order);
        if let Some(want) = &settings.relay {
            if candidates.first().map(|r| &r.name) != Some(want) {
                // It may be draining or gone; any relay reaches the workspace.
                tracing::warn!(relay = %want, "relay is not in the region map; using another");
            }
        }
        let Some(first) = candidates.first() else {
            bail!("no relays are registered with the control plane");
        };
        let first_region = first.region.clone();
        let tls = ferry_certs::client_config(&settings.ca_pem, &[alpn::CLIENT])?;
        let connector = Arc::new(Connector::new(
            settings.transport,
            &settings.ca_pem,
            tls,
            Limits::client(),
            settings.local_ip,
            TransportMemory::in_file(settings.transport_cache.clone()),
        )?);
        let mut conn = WorkspaceConnection {
            control: ControlClient::new(&settings.control_url, &settings.ca_pem).ok(),
            workspace,
            relay: String::new(),
            candidates,
            connector,
            token: settings.token.clone(),
            current: Arc::new(Mutex::new(Current {
                index: 0,
                session: None,
            })),
        };
        let mut current = conn.current.lock().await;
        conn_session(
            &conn.candidates,
            &conn.connector,
            &conn.token,
            &conn.current,
            &mut current,
        )
        .await
        .with_context(|| format!("connecting to a relay for workspace `{}`", conn.workspace))?;
        let relay = conn.candidates[current.index].name.clone();
        if settings.relay.is_none() && conn.candidates[current.index].region != first_region {
            // The nearest region as we knew it did not answer: measure again next time.
            crate::latency::mark_stale(settings);
        }
        drop(current);
        conn.relay = relay;
        Ok(conn)
    }

    /// Opens a stream to `target` in the workspace, retrying on other relays when a
    /// relay is draining, overloaded, gone, or the agent is moving.
    pub async fn open(&self, target: Target) -> Result<(SendStream, RecvStream)> {
        let header = StreamHeader::new(self.workspace.clone(), target);
        let started = Instant::now();
        let mut delay = Duration::from_millis(50);
        // A relay this stream found silent, with what it had sent us by then.
        let mut silent: Option<(quinn::Connection, u64, String)> = None;
        loop {
            let (conn, index) = {
                let mut current = self.current.lock().await;
                conn_session(
                    &self.candidates,
                    &self.connector,
                    &self.token,
                    &self.current,
                    &mut current,
                )
                .await
                .map_err(|e| anyhow!("workspace `{}`, {target}: {e:#}", self.workspace))?;
                let session = current.session.as_ref().expect("connected above");
                (session.conn.clone(), current.index)
            };
            if let Some((old, heard, relay)) = silent.take() {
                // Another relay answered while the silent one still says nothing: it
                // is dead, and the streams still open on it end now (the watchdog
                // stopped with the session this stream moved away from).
                if old.stable_id() != conn.stable_id() && old.stats().udp_rx.datagrams == heard {
                    close_dead_relay(&old, &relay, &self.candidates[index].name);
                }
            }
            let err = match dial::open_stream_or_silence(
                &conn,
                &header,
                dial::STREAM_REPLY_TIMEOUT,
                relay_silent_for(&conn),
            )
            .await
            {
                Ok(streams) => return Ok(streams),
                Err(e) => e,
            };
            let relay = &self.candidates[index].name;
            if !retryable(&err, started.elapsed()) || started.elapsed() > RETRY_FOR {
                return Err(self.explain(target, err).await);
            }
            tracing::info!(%relay, error = %err, "stream failed; retrying on another relay");
            if matches!(err, StreamError::Silent(_)) {
                silent = Some((conn.clone(), conn.stats().udp_rx.datagrams, relay.clone()));
            }
            {
                let mut current = self.current.lock().await;
                // Another stream may have moved on already.
                if current.index == index {
                    // Dropped, not closed: streams still open on it (a draining relay
                    // lets them finish) keep the connection alive until they end.
                    current.session = None;
                    current.index = (index + 1) % self.candidates.len();
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(400));
        }
    }

    /// Asks the relays for the path to the agent (`Target::Trace`). Returns the relay
    /// we are connected to, our RTT to it, and the relays' hops.
    pub async fn trace(&self) -> Result<(String, Duration, ferry_proto::TraceReport)> {
        let (_send, mut recv) = self.open(Target::Trace).await.map_err(|e| {
            if format!("{e:#}").contains(ErrorCode::Protocol.as_str()) {
                e.context("the relay does not answer traces (an older ferry?)")
            } else {
                e
            }
        })?;
        let report = tokio::time::timeout(
            dial::STREAM_REPLY_TIMEOUT,
            ferry_transport::frame_io::read_frame::<ferry_proto::TraceReport>(&mut recv),
        )
        .await
        .map_err(|_| anyhow!("the relay sent no trace report"))?
        .map_err(|e| anyhow!("bad trace report: {e}"))?;
        let current = self.current.lock().await;
        let relay = self.candidates[current.index].name.clone();
        let rtt = current
            .session
            .as_ref()
            .map(|s| s.conn.rtt())
            .unwrap_or_default();
        Ok((relay, rtt, report))
    }

    /// The error for the user. Relays know only where agents are, so "no agent" is
    /// also what a workspace that does not exist (or is not yours) looks like to
    /// them; the control plane, when it answers, tells which.
    async fn explain(&self, target: Target, err: StreamError) -> anyhow::Error {
        if err.code() == Some(ferry_proto::ErrorCode::AgentNotConnected) {
            if let Some(control) = &self.control {
                let route = control
                    .get::<ferry_proto::api::RouteResponse>(
                        &format!("/api/v1/workspaces/{}/route", self.workspace),
                        Some(&self.token),
                    )
                    .await;
                if let Err(ferry_transport::ControlError::Api { code, message, .. }) = route {
                    if code == ferry_proto::ErrorCode::UnknownWorkspace.as_str() {
                        return anyhow!("{message} ({code})");
                    }
                }
            }
        }
        anyhow!("workspace `{}`, {target}: {err}", self.workspace)
    }

    /// How the connection reaches its relay now, and why that transport.
    pub async fn transport(&self) -> Option<(Transport, String)> {
        let current = self.current.lock().await;
        current
            .session
            .as_ref()
            .map(|s| (s.transport, s.why.clone()))
    }

    /// Whether the connection has ended for good (it reconnects by itself otherwise).
    pub fn is_closed(&self) -> bool {
        false
    }

    /// Closes the connection and lets the close reach the relay.
    pub async fn close(self) {
        let Some(s) = self.current.lock().await.session.take() else {
            return;
        };
        s.conn.close(0u32.into(), b"done");
        // The CONNECTION_CLOSE leaves on the driver's next poll, within microseconds;
        // `wait_idle` would also wait out the draining period (three PTOs, ~80 ms even
        // on loopback), which only delays the exit of `ferry tcp` and of ssh with it.
        let _ = tokio::time::timeout(Duration::from_millis(20), s.endpoint.wait_idle()).await;
    }
}

/// Which transport reaches `relay` from here and why (`ferry ping`): a real
/// connection and hello, closed at once.
pub async fn transport_to(
    settings: &ClientSettings,
    relay: &RelayInfo,
) -> Result<(Transport, String)> {
    let tls = ferry_certs::client_config(&settings.ca_pem, &[alpn::CLIENT])?;
    let connector = Connector::new(
        settings.transport,
        &settings.ca_pem,
        tls,
        Limits::client(),
        settings.local_ip,
        TransportMemory::in_file(settings.transport_cache.clone()),
    )?;
    let reached = tokio::time::timeout(
        CLIENT_HANDSHAKE_TIMEOUT * 2,
        connector.connect(relay, &settings.token),
    )
    .await
    .map_err(|_| anyhow!("no answer within {:?}", CLIENT_HANDSHAKE_TIMEOUT * 2))??;
    reached.session.conn.close(0u32.into(), b"only checking");
    let _ = tokio::time::timeout(Duration::from_millis(20), reached.endpoint.wait_idle()).await;
    Ok((reached.transport, reached.why))
}

/// A control-plane error as the user should read it.
pub fn api_error(e: ferry_transport::ControlError) -> anyhow::Error {
    match e {
        ferry_transport::ControlError::Api { code, message, .. } => anyhow!("{message} ({code})"),
        other => anyhow!(other),
    }
}

/// Makes sure `current` holds a live session, trying candidates from its index on.
async fn conn_session(
    candidates: &[RelayInfo],
    connector: &Arc<Connector>,
    token: &str,
    shared: &Arc<Mutex<Current>>,
    current: &mut Current,
) -> Result<()> {
    if let Some(s) = &current.session {
        if s.conn.close_reason().is_none() {
            return Ok(());
        }
        current.session = None;
        // The relay went away: start with the next one.
        current.index = (current.index + 1) % candidates.len();
    }
    let mut errors = Vec::new();
    for step in 0..candidates.len() {
        let index = (current.index + step) % candidates.len();
        let relay = &candidates[index];
        let started = Instant::now();
        let dialed =
            tokio::time::timeout(CLIENT_HANDSHAKE_TIMEOUT, connector.connect(relay, token)).await;
        match dialed {
            Ok(Ok(reached)) => {
                let others: Vec<RelayInfo> = (1..candidates.len())
                    .map(|step| candidates[(index + step) % candidates.len()].clone())
                    .collect();
                tracing::debug!(relay = %relay.name, transport = %reached.transport, why = %reached.why, took_ms = started.elapsed().as_millis() as u64, "connected");
                current.index = index;
                current.session = Some(watch_session(
                    reached, relay, others, connector, token, shared, index,
                ));
                return Ok(());
            }
            // A bad token is bad everywhere.
            Ok(Err(e))
                if e.code()
                    .is_some_and(|c| !matches!(c, ErrorCode::Draining | ErrorCode::Overloaded)) =>
            {
                return Err(anyhow!(e).context(format!("relay {}", relay.name)));
            }
            Ok(Err(e)) => errors.push(format!("relay {}: {e}", relay.name)),
            Err(_) => errors.push(format!(
                "relay {} ({}): no answer within {CLIENT_HANDSHAKE_TIMEOUT:?}",
                relay.name, relay.quic_addr
            )),
        }
    }
    bail!("no relay answered: {}", errors.join("; "))
}

/// Starts a session's watchdog and, on the tunnel, its climb back to QUIC.
fn watch_session(
    reached: Reached,
    relay: &RelayInfo,
    others: Vec<RelayInfo>,
    connector: &Arc<Connector>,
    token: &str,
    shared: &Arc<Mutex<Current>>,
    index: usize,
) -> Watched {
    let watchdog = tokio::spawn(close_when_relay_dies(
        reached.session.conn.clone(),
        connector.clone(),
        relay.name.clone(),
        others.clone(),
        relay_silent_for,
    ))
    .abort_handle();
    let climb = (reached.transport != Transport::Quic
        && connector.mode() == ferry_transport::reach::TransportMode::Auto)
        .then(|| {
            tokio::spawn(climb_back(
                shared.clone(),
                connector.clone(),
                relay.clone(),
                others,
                token.to_string(),
                index,
                reached.session.conn.stable_id(),
            ))
            .abort_handle()
        });
    Watched {
        session: reached.session,
        endpoint: reached.endpoint,
        transport: reached.transport,
        why: reached.why,
        watchdog,
        climb_back: climb,
    }
}

/// While a session runs on the TCP tunnel, tries QUIC again every re-probe interval;
/// when it answers, new streams use the QUIC session, and the tunnel's connection
/// ends once its open streams have (make before break).
async fn climb_back(
    shared: Arc<Mutex<Current>>,
    connector: Arc<Connector>,
    relay: RelayInfo,
    others: Vec<RelayInfo>,
    token: String,
    index: usize,
    on: usize,
) {
    loop {
        tokio::time::sleep(ferry_transport::reach::reprobe_interval()).await;
        let reached = match connector.connect_quic(&relay, &token).await {
            Ok(reached) => reached,
            Err(e) => {
                tracing::debug!(relay = %relay.name, error = %e, "QUIC still does not get through");
                continue;
            }
        };
        let mut current = shared.lock().await;
        let still_ours = current.index == index
            && current.session.as_ref().map(|s| s.conn.stable_id()) == Some(on);
        if !still_ours {
            reached.session.conn.close(0u32.into(), b"not needed");
            return;
        }
        tracing::info!(relay = %relay.name, "QUIC gets through again: new streams use it, open ones finish on the tunnel");
        let mut reached = reached;
        reached.why = "QUIC works again (re-probed from the TCP tunnel)".into();
        let fresh = watch_session(reached, &relay, others, &connector, &token, &shared, index);
        // Dropping the old session aborts this task too, at its next await: none follows.
        let old = current.session.replace(fresh);
        drop(current);
        drop(old);
        return;
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

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_transport::test_peer::FreezablePeer;
    use std::net::SocketAddr;

    fn relay_at(name: &str, addr: SocketAddr) -> RelayInfo {
        RelayInfo {
            name: name.into(),
            region: "eu".into(),
            quic_addr: addr.to_string(),
            server_name: "127.0.0.1".into(),
            health: None,
            incarnation: 0,
            https_url: None,
        }
    }

    /// What the watchdog asks other relays with: QUIC only, as these test relays
    /// have no HTTPS port.
    fn prober(ca: &ferry_certs::Ca) -> Arc<Connector> {
        let tls = ferry_certs::client_config(ca.cert_pem(), &[alpn::CLIENT]).unwrap();
        Arc::new(
            Connector::new(
                ferry_transport::reach::TransportMode::Quic,
                ca.cert_pem(),
                tls,
                Limits::client(),
                None,
                TransportMemory::in_memory(),
            )
            .unwrap(),
        )
    }

    /// Keep-alives every 100 ms: a live peer is never 300 ms silent.
    fn fast_silence(_: &quinn::Connection) -> Duration {
        Duration::from_millis(300)
    }

    /// A client endpoint like the CLI's, pinging every 100 ms, and its connection to
    /// `peer`.
    async fn connected(
        ca: &ferry_certs::Ca,
        peer: SocketAddr,
    ) -> (quinn::Endpoint, quinn::Connection) {
        let tls = ferry_certs::client_config(ca.cert_pem(), &[alpn::CLIENT]).unwrap();
        let limits = Limits {
            keep_alive: Duration::from_millis(100),
            ..Limits::client()
        };
        let endpoint =
            ferry_transport::quic::client_endpoint_from(None, peer, tls, &limits).unwrap();
        let conn = endpoint.connect(peer, "127.0.0.1").unwrap().await.unwrap();
        (endpoint, conn)
    }

    /// Our relay freezes (as under SIGKILL) while another relay answers: the watchdog
    /// closes the connection soon after it goes silent, so its streams end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_to_a_dead_relay_is_closed_when_another_answers() {
        let ca = ferry_certs::Ca::create().unwrap();
        let mut ours = FreezablePeer::spawn(&ca, alpn::CLIENT);
        let other = FreezablePeer::spawn(&ca, alpn::CLIENT);
        let (_endpoint, conn) = connected(&ca, ours.addr()).await;
        tokio::spawn(close_when_relay_dies(
            conn.clone(),
            prober(&ca),
            "ours".into(),
            vec![relay_at("other", other.addr())],
            fast_silence,
        ));

        // Alive and idle: left alone.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            conn.close_reason().is_none(),
            "a live relay's connection was closed"
        );

        ours.freeze();
        let frozen = Instant::now();
        tokio::time::timeout(Duration::from_secs(3), conn.closed())
            .await
            .expect("the dead relay's connection was never closed");
        // 300 ms after the last packet, which came up to one keep-alive (100 ms)
        // before the freeze.
        let after = frozen.elapsed();
        assert!(
            after >= Duration::from_millis(150) && after < Duration::from_millis(1500),
            "closed {after:?} after the freeze"
        );
        assert!(matches!(
            conn.close_reason(),
            Some(quinn::ConnectionError::LocallyClosed)
        ));
    }

    /// Our relay and every other one we try are silent: that is our own network going
    /// away, which QUIC's idle timeout rides out, so the watchdog closes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_is_kept_when_no_relay_answers() {
        let ca = ferry_certs::Ca::create().unwrap();
        let mut ours = FreezablePeer::spawn(&ca, alpn::CLIENT);
        // Sockets that receive and never answer: relays we cannot reach either.
        let deaf: Vec<std::net::UdpSocket> = (0..2)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let others = deaf
            .iter()
            .enumerate()
            .map(|(i, s)| relay_at(&format!("deaf-{i}"), s.local_addr().unwrap()))
            .collect();
        let (_endpoint, conn) = connected(&ca, ours.addr()).await;
        tokio::spawn(close_when_relay_dies(
            conn.clone(),
            prober(&ca),
            "ours".into(),
            others,
            fast_silence,
        ));
        ours.freeze();
        // Long enough for the watchdog to find the silence, ask both others (their
        // handshakes time out after 2 s), and look again.
        tokio::time::sleep(CLIENT_HANDSHAKE_TIMEOUT + Duration::from_secs(1)).await;
        assert!(
            conn.close_reason().is_none(),
            "closed although no relay answered: {:?}",
            conn.close_reason()
        );
    }
}
