//! The relay's metrics (Prometheus, served on the admin port by `ferry-telemetry`).
//!
//! Every series carries `relay` (this relay's name: one value per process, so it costs
//! no cardinality, and it keeps relays apart when `ferry dev` runs several in one
//! process). Other labels are small fixed sets: `role` (agent, client, mesh), `kind`
//! (port, ssh, terminal, forwarded: a stream that came over the mesh), `direction`
//! (up: towards the agent, down: towards the client), `scope` and `reason` (an
//! [`ErrorCode`]'s `as_str`) and `peer` (another relay's name). Never a workspace.
//!
//! Handles are registered when the relay starts, so every series is exported (at zero)
//! from the first scrape; RTTs are sampled by [`sample`] on the refresh loop.

use std::time::Duration;

use ferry_proto::{ErrorCode, Target};
use metrics::{Counter, Gauge, Histogram, Unit};

use crate::server::Shared;

pub const CONNECTIONS: &str = "ferry_relay_connections";
pub const CONNECTIONS_ACCEPTED: &str = "ferry_relay_connections_accepted_total";
pub const HANDSHAKE_DURATION: &str = "ferry_relay_handshake_duration_seconds";
pub const HANDSHAKE_FAILURES: &str = "ferry_relay_handshake_failures_total";
pub const STREAMS_OPENED: &str = "ferry_relay_streams_opened_total";
pub const STREAMS_ACTIVE: &str = "ferry_relay_streams_active";
pub const STREAM_SETUP_DURATION: &str = "ferry_relay_stream_setup_duration_seconds";
pub const STREAMS_FORWARDED: &str = "ferry_relay_streams_forwarded_total";
pub const BYTES: &str = "ferry_relay_forwarded_bytes_total";
pub const REFUSALS: &str = "ferry_relay_refusals_total";
pub const MESH_RTT: &str = "ferry_relay_mesh_rtt_seconds";
pub const MESH_LINKS: &str = "ferry_relay_mesh_links";
pub const MESH_UDP_PAYLOAD: &str = "ferry_relay_mesh_udp_payload_bytes";
pub const MESH_PEERS_SILENT: &str = "ferry_relay_mesh_peers_silent_total";
pub const AGENT_RTT: &str = "ferry_relay_agent_rtt_seconds";
pub const DRAINING: &str = "ferry_relay_draining";
pub const STREAM_LIMIT: &str = "ferry_relay_stream_limit";
pub const CONNECTION_LIMIT: &str = "ferry_relay_connection_limit";
pub const CONNECTIONS_BY_TRANSPORT: &str = "ferry_relay_connections_by_transport";

/// Who is on the other end of a connection, by ALPN.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role {
    Agent = 0,
    Client = 1,
    Mesh = 2,
}

const ROLES: [&str; 3] = ["agent", "client", "mesh"];

/// How an agent's or client's packets reach the relay: QUIC on UDP, or QUIC inside a
/// tunnel on the HTTPS port ([`ferry_transport::tunnel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Quic = 0,
    Tcp = 1,
    WebSocket = 2,
}

const TRANSPORTS: [&str; 3] = ["quic", "tcp", "websocket"];

impl From<ferry_transport::tunnel::TunnelKind> for Transport {
    fn from(kind: ferry_transport::tunnel::TunnelKind) -> Transport {
        match kind {
            ferry_transport::tunnel::TunnelKind::Tls => Transport::Tcp,
            ferry_transport::tunnel::TunnelKind::WebSocket => Transport::WebSocket,
        }
    }
}

/// What a routed stream is: its target for a client's stream, `forwarded` for a
/// stream another relay sent us (counted once, by the relay the client reached).
#[derive(Debug, Clone, Copy)]
pub(crate) enum StreamKind {
    Port = 0,
    Ssh = 1,
    Terminal = 2,
    Forwarded = 3,
    /// `ferry status`'s trace: answered by the relays, never reaching the agent.
    Trace = 4,
}

const KINDS: [&str; 5] = ["port", "ssh", "terminal", "forwarded", "trace"];

impl StreamKind {
    pub fn of(target: &Target, from_mesh: bool) -> StreamKind {
        match target {
            _ if from_mesh => StreamKind::Forwarded,
            Target::Port(_) => StreamKind::Port,
            Target::Ssh => StreamKind::Ssh,
            Target::Terminal { .. } => StreamKind::Terminal,
            Target::Trace => StreamKind::Trace,
        }
    }
}

/// Whether a refusal ended a whole connection (its hello) or one stream.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope {
    Connection,
    Stream,
}

/// The relay's metric handles.
pub(crate) struct RelayMetrics {
    relay: String,
    connections: [Gauge; 3],
    /// Agents (0) and clients (1) by [`Transport`].
    by_transport: [[Gauge; 3]; 2],
    accepted: [Counter; 3],
    handshake: [Histogram; 3],
    handshake_failures: Counter,
    opened: [Counter; 5],
    active: [Gauge; 5],
    setup: Histogram,
    forwarded: Counter,
    bytes_up: Counter,
    bytes_down: Counter,
    mesh_links: Gauge,
    peers_silent: Counter,
    agent_rtt: Histogram,
    draining: Gauge,
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    ferry_transport::congestion::describe_metrics();
    describe_gauge!(
        CONNECTIONS,
        Unit::Count,
        "Open QUIC connections by role (agent, client, mesh)."
    );
    describe_counter!(
        CONNECTIONS_ACCEPTED,
        Unit::Count,
        "QUIC connections accepted (handshake done), by role."
    );
    describe_histogram!(
        HANDSHAKE_DURATION,
        Unit::Seconds,
        "QUIC handshake time of accepted connections, by role."
    );
    describe_counter!(
        HANDSHAKE_FAILURES,
        Unit::Count,
        "Incoming connections whose QUIC handshake failed."
    );
    describe_counter!(
        STREAMS_OPENED,
        Unit::Count,
        "Streams routed, by kind (port, ssh, terminal; forwarded: came over the mesh)."
    );
    describe_gauge!(STREAMS_ACTIVE, Unit::Count, "Streams open now, by kind.");
    describe_histogram!(
        STREAM_SETUP_DURATION,
        Unit::Seconds,
        "From a stream header received to the agent's (or next relay's) answer."
    );
    describe_counter!(
        STREAMS_FORWARDED,
        Unit::Count,
        "Streams this relay sent on to another relay over the mesh."
    );
    describe_counter!(
        BYTES,
        Unit::Bytes,
        "Bytes spliced, by direction (up: towards the agent, down: towards the client)."
    );
    describe_counter!(
        REFUSALS,
        Unit::Count,
        "Refused connections (scope=connection: at their hello) and streams (scope=stream), by error code; new QUIC connections turned away before their handshake (scope=handshake: reason address_limit, pending_limit, or retry: sent a stateless Retry for address validation); HTTPS connections refused (scope=https: reason address_limit, connection_limit)."
    );
    describe_gauge!(
        MESH_RTT,
        Unit::Seconds,
        "Smoothed QUIC RTT of the mesh link to each peer relay."
    );
    describe_gauge!(MESH_LINKS, Unit::Count, "Live outgoing mesh links.");
    describe_gauge!(
        MESH_UDP_PAYLOAD,
        Unit::Bytes,
        "UDP payload this relay sends on each mesh link (side: dialed by us, or accepted from the peer), as MTU discovery found it. Above 1452 the path carries jumbo packets."
    );
    describe_counter!(
        MESH_PEERS_SILENT,
        Unit::Count,
        "Times a peer relay's link carried nothing for 0.5 s while a stream waited on it: the peer was taken for dead (killed, cut off) and the stream went to the next relay."
    );
    describe_histogram!(
        AGENT_RTT,
        Unit::Seconds,
        "Smoothed QUIC RTT of agent connections, sampled on every refresh."
    );
    describe_gauge!(DRAINING, Unit::Count, "1 while the relay drains, else 0.");
    describe_gauge!(
        CONNECTIONS_BY_TRANSPORT,
        Unit::Count,
        "Open agent and client connections by transport: quic (UDP), tcp (QUIC in a TLS tunnel on the HTTPS port, for networks that block UDP) or websocket (the same through an L7 proxy)."
    );
    describe_gauge!(
        STREAM_LIMIT,
        Unit::Count,
        "Concurrent streams this relay carries before refusing with `overloaded` (--max-streams)."
    );
    describe_gauge!(
        CONNECTION_LIMIT,
        Unit::Count,
        "Agent and client connections this relay holds before refusing with `overloaded` (--max-connections)."
    );
}

impl RelayMetrics {
    pub fn new(relay: &str, max_streams: usize, max_connections: usize) -> RelayMetrics {
        describe();
        let r = relay.to_string();
        let by_role = |name: &'static str| ROLES.map(|role| (name, r.clone(), role));
        let by_kind = |name: &'static str| KINDS.map(|kind| (name, r.clone(), kind));
        metrics::gauge!(STREAM_LIMIT, "relay" => r.clone()).set(max_streams as f64);
        metrics::gauge!(CONNECTION_LIMIT, "relay" => r.clone()).set(max_connections as f64);
        let by_transport = |role: &'static str| {
            TRANSPORTS.map(|transport| {
                metrics::gauge!(CONNECTIONS_BY_TRANSPORT, "relay" => r.clone(), "role" => role, "transport" => transport)
            })
        };
        RelayMetrics {
            by_transport: [by_transport("agent"), by_transport("client")],
            connections: by_role(CONNECTIONS)
                .map(|(n, r, role)| metrics::gauge!(n, "relay" => r, "role" => role)),
            accepted: by_role(CONNECTIONS_ACCEPTED)
                .map(|(n, r, role)| metrics::counter!(n, "relay" => r, "role" => role)),
            handshake: by_role(HANDSHAKE_DURATION)
                .map(|(n, r, role)| metrics::histogram!(n, "relay" => r, "role" => role)),
            handshake_failures: metrics::counter!(HANDSHAKE_FAILURES, "relay" => r.clone()),
            opened: by_kind(STREAMS_OPENED)
                .map(|(n, r, kind)| metrics::counter!(n, "relay" => r, "kind" => kind)),
            active: by_kind(STREAMS_ACTIVE)
                .map(|(n, r, kind)| metrics::gauge!(n, "relay" => r, "kind" => kind)),
            setup: metrics::histogram!(STREAM_SETUP_DURATION, "relay" => r.clone()),
            forwarded: metrics::counter!(STREAMS_FORWARDED, "relay" => r.clone()),
            bytes_up: metrics::counter!(BYTES, "relay" => r.clone(), "direction" => "up"),
            bytes_down: metrics::counter!(BYTES, "relay" => r.clone(), "direction" => "down"),
            mesh_links: metrics::gauge!(MESH_LINKS, "relay" => r.clone()),
            peers_silent: metrics::counter!(MESH_PEERS_SILENT, "relay" => r.clone()),
            agent_rtt: metrics::histogram!(AGENT_RTT, "relay" => r.clone()),
            draining: metrics::gauge!(DRAINING, "relay" => r.clone()),
            relay: r,
        }
    }

    /// A connection finished its handshake; it counts as open until the guard drops.
    pub fn connection(&self, role: Role, handshake: Duration) -> ConnectionGuard {
        let i = role as usize;
        self.accepted[i].increment(1);
        self.handshake[i].record(handshake.as_secs_f64());
        self.connections[i].increment(1.0);
        ConnectionGuard(self.connections[i].clone())
    }

    /// An agent or client connection arrived by `transport`; it counts until the
    /// guard drops. Mesh links are not counted (always QUIC).
    pub fn transport(&self, role: Role, transport: Transport) -> Option<ConnectionGuard> {
        let row = match role {
            Role::Agent => 0,
            Role::Client => 1,
            Role::Mesh => return None,
        };
        let gauge = &self.by_transport[row][transport as usize];
        gauge.increment(1.0);
        Some(ConnectionGuard(gauge.clone()))
    }

    pub fn handshake_failed(&self) {
        self.handshake_failures.increment(1);
    }

    /// A stream was accepted for routing; it counts as active until the guard drops.
    pub fn stream(&self, kind: StreamKind) -> StreamGuard {
        let i = kind as usize;
        self.opened[i].increment(1);
        self.active[i].increment(1.0);
        StreamGuard(self.active[i].clone())
    }

    pub fn stream_set_up(&self, took: Duration) {
        self.setup.record(took.as_secs_f64());
    }

    pub fn stream_forwarded(&self) {
        self.forwarded.increment(1);
    }

    /// A mesh peer went silent under a waiting stream ([`crate::mesh::SILENT_FOR`]);
    /// the relay's log names it.
    pub fn peer_silent(&self) {
        self.peers_silent.increment(1);
    }

    pub fn bytes_up(&self) -> &Counter {
        &self.bytes_up
    }

    pub fn bytes_down(&self) -> &Counter {
        &self.bytes_down
    }

    /// Counts a refusal by its code (a handful of codes: low cardinality).
    pub fn refused(&self, scope: Scope, code: ErrorCode) {
        let scope = match scope {
            Scope::Connection => "connection",
            Scope::Stream => "stream",
        };
        metrics::counter!(REFUSALS, "relay" => self.relay.clone(), "scope" => scope, "reason" => code.as_str())
            .increment(1);
    }

    /// Counts a new QUIC connection turned away before its handshake.
    pub fn turned_away(&self, why: crate::admission::TurnedAway) {
        metrics::counter!(REFUSALS, "relay" => self.relay.clone(), "scope" => "handshake", "reason" => why.as_str())
            .increment(1);
    }

    /// Counts an HTTPS connection closed at accept.
    pub fn https_refused(&self, why: crate::web::limits::Refusal) {
        metrics::counter!(REFUSALS, "relay" => self.relay.clone(), "scope" => "https", "reason" => why.as_str())
            .increment(1);
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.set(if draining { 1.0 } else { 0.0 });
    }
}

/// One open connection of a role.
pub(crate) struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// One active stream of a kind.
pub(crate) struct StreamGuard(Gauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Samples RTTs: each live mesh link's (a gauge per peer relay) and every agent
/// connection's (into a histogram). Runs on the refresh loop.
pub(crate) fn sample(shared: &Shared) {
    let m = &shared.metrics;
    let links = shared.mesh.samples();
    m.mesh_links
        .set(links.iter().filter(|l| l.side == "dialed").count() as f64);
    for link in links {
        if link.side == "dialed" {
            metrics::gauge!(MESH_RTT, "relay" => m.relay.clone(), "peer" => link.peer.clone())
                .set(link.rtt.as_secs_f64());
        }
        metrics::gauge!(
            MESH_UDP_PAYLOAD,
            "relay" => m.relay.clone(),
            "peer" => link.peer,
            "side" => link.side
        )
        .set(f64::from(link.udp_payload));
    }
    for rtt in shared.agents.rtts() {
        m.agent_rtt.record(rtt.as_secs_f64());
    }
}
