//! The relay's endpoint, its start-up and its accept loop.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ferry_proto::api::{RegisterRelayRequest, RegisterRelayResponse};
use ferry_proto::token::{KeySet, TokenKind};
use ferry_proto::{alpn, ErrorCode, RelayAddr, RelayHost};
use ferry_transport::{ControlClient, ControlError, Limits};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::agents::AgentTable;
use crate::cache::{self, Cached};
use crate::directory::{self, DirectoryReporter};
use crate::drain::Drain;
use crate::mesh::Mesh;
use crate::view::View;

/// Default for [`RelayConfig::max_streams`]: far above what one relay's CPU carries
/// usefully, so that only a real overload (or a deliberate limit) refuses streams.
pub const DEFAULT_MAX_STREAMS: usize = 100_000;

/// Default for [`RelayConfig::max_connections`]: agents are idle most of the time,
/// and one relay holds tens of thousands of them.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1_000_000;

/// How a relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Unique within the network; also the subject of its relay token.
    pub name: String,
    pub region: String,
    /// UDP address the QUIC endpoint binds.
    pub listen: SocketAddr,
    /// Address agents, clients and other relays are told to use (`IP:PORT`, or
    /// `NAME:PORT` that they resolve themselves); defaults to `listen`.
    pub advertise: Option<RelayAddr>,
    /// Names for the relay's certificate; the first is its TLS server name.
    pub names: Vec<String>,
    pub control_url: String,
    /// The CA that the control plane's certificate chains to.
    pub ca_pem: String,
    /// A relay token minted by the control plane.
    pub token: String,
    pub limits: Limits,
    /// Where the certificate, token keys and revocations are cached, so that the relay
    /// restarts and verifies tokens while the control plane is down. None: no cache.
    pub cache_dir: Option<PathBuf>,
    /// Plain-HTTP admin port (`/healthz`, `/readyz`, `/metrics`); none when unset.
    pub admin_listen: Option<SocketAddr>,
    /// Streams (from clients and other relays) carried at once; more are refused with
    /// the retryable `overloaded`.
    pub max_streams: usize,
    /// Agent and client connections held at once (mesh links are not counted); more
    /// are refused at their hello with `overloaded`.
    pub max_connections: usize,
    /// Streams one user may have open at once over all its connections; more are
    /// refused with `rate_limited`.
    pub max_streams_per_user: usize,
    /// Limits on new connections before their hello (rate, pending, per address).
    pub admission: crate::admission::AdmissionConfig,
    /// Limits of the HTTPS side (connections per address and in all, timeouts).
    pub web_limits: crate::web::limits::WebLimitsConfig,
    /// How long open streams may run once draining starts.
    pub drain_grace: Duration,
    /// How often the region map and directory are refreshed and the heartbeat sent.
    pub refresh: Duration,
    /// Go-away reconnect hints are spread uniformly over `0..=go_away_jitter`.
    pub go_away_jitter: Duration,
    /// How often mesh and agent round-trip times are reported to the control plane.
    pub report_every: Duration,
    /// Serve web apps and the web terminal under this domain (`PORT--NAME--OWNER.`
    /// `APPS_DOMAIN`); the certificate then also covers `*.APPS_DOMAIN`. HTTPS runs on
    /// the TCP port numbered like `listen` either way (for `/.ferry/ping`).
    pub apps_domain: Option<String>,
    /// The HTTPS origin announced in the region map, when an L7 proxy or load
    /// balancer fronts the HTTPS port; none: `https://FIRST-NAME:PORT`.
    pub https_url: Option<String>,
}

impl RelayConfig {
    /// A configuration with the defaults for everything but identity and control plane.
    pub fn new(
        name: String,
        region: String,
        control_url: String,
        ca_pem: String,
        token: String,
    ) -> Self {
        RelayConfig {
            name,
            region,
            listen: "127.0.0.1:0".parse().expect("literal address"),
            advertise: None,
            names: vec!["127.0.0.1".into(), "localhost".into()],
            control_url,
            ca_pem,
            token,
            limits: Limits::default(),
            admin_listen: None,
            drain_grace: Duration::from_secs(30),
            refresh: Duration::from_secs(2),
            go_away_jitter: Duration::from_millis(500),
            report_every: crate::report::REPORT_EVERY,
            cache_dir: None,
            apps_domain: None,
            https_url: None,
            max_streams: DEFAULT_MAX_STREAMS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_streams_per_user: crate::user_share::DEFAULT_MAX_STREAMS_PER_USER,
            admission: Default::default(),
            web_limits: Default::default(),
        }
    }
}

/// Why a relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    #[error("binding UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("registering with the control plane: {0}")]
    Register(#[from] ControlError),
    #[error(transparent)]
    Cert(#[from] ferry_certs::CertError),
    #[error(transparent)]
    Endpoint(#[from] ferry_transport::quic::EndpointError),
    /// The DNS configuration for resolving peer relays' names is unusable.
    #[error(transparent)]
    Dns(#[from] ferry_transport::ResolveError),
    #[error("binding the HTTPS port {addr} (TCP, the QUIC port's number): {source}")]
    Https {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("binding the admin port {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What connection and stream tasks share.
pub(crate) struct Shared {
    pub name: String,
    /// Concurrent streams a client or mesh peer may open.
    pub stream_allowance: u32,
    pub region: String,
    pub keys: RwLock<Arc<KeySet>>,
    /// Token ids (`jti`) the control plane revoked.
    pub revoked: RwLock<Arc<HashSet<String>>>,
    pub agents: AgentTable,
    pub directory: DirectoryReporter,
    /// Open connections by token id, to end them when the token is revoked.
    pub sessions: cache::Sessions,
    pub view: View,
    pub mesh: Mesh,
    pub drain: Drain,
    pub go_away_jitter_ms: u32,
    /// Bytes spliced through this relay (both directions), for the control plane.
    pub bytes_relayed: std::sync::atomic::AtomicU64,
    pub metrics: crate::metrics::RelayMetrics,
    pub load: crate::load::Load,
    /// Agents and clients whose UDP is blocked reach the endpoint through tunnels on
    /// the HTTPS port ([`ferry_transport::tunnel`]).
    pub tunnels: ferry_transport::tunnel::Ingress,
    pub admission: crate::admission::Admission,
    pub user_share: crate::user_share::UserShare,
}

impl Shared {
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A running relay.
pub struct Relay {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    background: JoinSet<()>,
    /// The caller's token: when it fires, the relay drains.
    drain: CancellationToken,
    /// Ours: stops every task at once, after the drain.
    stop: CancellationToken,
    /// Stops the directory reporter, once it has sent what the last agents left.
    reporter_stop: CancellationToken,
    drain_grace: Duration,
    admin_addr: Option<SocketAddr>,
}

/// After the last stream, how long a draining relay waits for its agents to move
/// (they connect to their new relay first, then leave us).
const AGENT_MOVE_WAIT: Duration = Duration::from_secs(3);

impl Relay {
    /// Binds the UDP socket, registers with the control plane, and builds the endpoint.
    /// When `drain` fires, [`Relay::run`] drains and returns.
    pub async fn start(config: RelayConfig, drain: CancellationToken) -> Result<Relay, RelayError> {
        // Peer relays may be advertised by name; a bad FERRY_DNS_SERVER fails here.
        let resolver = ferry_transport::Resolver::from_env()?;
        let (socket, https_listener) = bind_ports(config.listen).await?;
        let bound = socket.local_addr().map_err(|source| RelayError::Bind {
            addr: config.listen,
            source,
        })?;
        let advertise = config
            .advertise
            .clone()
            .unwrap_or_else(|| RelayAddr::from(bound));
        let mut cert_names = config.names.clone();
        if let Some(domain) = &config.apps_domain {
            cert_names.push(format!("*.{domain}"));
        }
        let https_host = match config.names.first() {
            Some(name) if name.parse::<std::net::Ipv6Addr>().is_ok() => format!("[{name}]"),
            Some(name) => name.clone(),
            None => match &advertise.host {
                RelayHost::Ip(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
                RelayHost::Ip(ip) => ip.to_string(),
                RelayHost::Name(name) => name.clone(),
            },
        };
        let https_url = config
            .https_url
            .clone()
            .unwrap_or_else(|| format!("https://{https_host}:{}", advertise.port));
        let control = ControlClient::new(&config.control_url, &config.ca_pem)?;
        let cache_path = config
            .cache_dir
            .as_ref()
            .map(|dir| cache::path(dir, &config.name));
        let enrollment = RegisterRelayRequest {
            region: config.region.clone(),
            quic_addr: advertise.to_string(),
            names: cert_names,
            https_url: Some(https_url.clone()),
            apps_domain: config.apps_domain.clone(),
        };
        let registered: Result<RegisterRelayResponse, ControlError> = control
            .post("/api/v1/relays/register", Some(&config.token), &enrollment)
            .await;
        let enrolled = registered.is_ok();
        let cached = match (registered, &cache_path) {
            (Ok(r), path) => {
                let cached = Cached::from_registration(&r);
                if let Some(path) = path {
                    if let Err(e) = cached.save(path) {
                        tracing::warn!(error = %e, "cannot write the relay cache");
                    }
                }
                cached
            }
            // The control plane is down: start from what we knew, so that known agents
            // and clients with valid tokens keep working.
            (Err(e), Some(path)) if e.is_unreachable() => match Cached::load(path) {
                Ok(cached) => {
                    tracing::warn!(error = %e, cache = %path.display(), "control plane unreachable; starting from the cache");
                    cached
                }
                Err(_) => return Err(e.into()),
            },
            (Err(e), _) => return Err(e.into()),
        };
        let cert = ferry_certs::IssuedCert {
            cert_pem: cached.cert_pem.clone(),
            key_pem: cached.key_pem.clone(),
        };
        let tls = ferry_certs::relay_server_config(
            &cert,
            &cached.ca_pem,
            &[alpn::AGENT, alpn::CLIENT, alpn::MESH],
        )?;
        // Every connection starts with room for its hello alone: quinn sizes a
        // connection's stream state by this limit, and agents (most connections, and
        // idle) never open another stream. Clients and mesh peers get their full
        // allowance once their ALPN is known (see `serve_connection`).
        //
        // MTU discovery may try mesh-sized packets on every connection, and the
        // endpoint says it receives them: only peer relays take them up. A peer bounds
        // what we send by the largest datagram it says it receives, and agents and
        // clients say 1452 bytes, so their connections never probe past internet sizes.
        let handshake_limits = Limits {
            max_incoming_streams: HELLO_STREAMS,
            max_udp_payload: ferry_transport::quic::MESH_MAX_UDP_PAYLOAD,
            ..config.limits.clone()
        };
        let (endpoint, tunnels) = ferry_transport::quic::server_endpoint_with_tunnels(
            socket,
            tls,
            &handshake_limits,
            config.token.as_bytes(),
        )?;
        let mesh_tls = ferry_certs::mesh_client_config(&cert, &cached.ca_pem, &[alpn::MESH])?;
        let mesh_config = ferry_transport::quic::client_config(mesh_tls, &Limits::mesh())?;
        // Bound before the metric handles are made: binding installs the recorder.
        let admin = match config.admin_listen {
            Some(addr) => Some(
                ferry_telemetry::AdminServer::bind(addr)
                    .await
                    .map_err(|source| RelayError::Admin { addr, source })?,
            ),
            None => None,
        };

        let stop = CancellationToken::new();
        let mut background = JoinSet::new();
        // The reporter outlives the other tasks by a flush (see `run`): its own token.
        let reporter_stop = CancellationToken::new();
        let (reporter, report_task) = directory::reporter();
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            stream_allowance: config.limits.max_incoming_streams,
            region: config.region.clone(),
            keys: RwLock::new(Arc::new(KeySet::new(cached.keys.clone()))),
            revoked: RwLock::new(cache::revoked_set(&cached.revoked)),
            agents: AgentTable::default(),
            directory: reporter,
            sessions: cache::Sessions::default(),
            view: View::new(
                control.clone(),
                config.token.clone(),
                config
                    .cache_dir
                    .as_ref()
                    .map(|dir| dir.join(format!("view-{}.json", config.name))),
            ),
            mesh: Mesh::new(
                endpoint.clone(),
                mesh_config,
                config.token.clone(),
                resolver,
            ),
            drain: Drain::default(),
            go_away_jitter_ms: u32::try_from(config.go_away_jitter.as_millis()).unwrap_or(u32::MAX),
            bytes_relayed: Default::default(),
            metrics: crate::metrics::RelayMetrics::new(
                &config.name,
                config.max_streams,
                config.max_connections,
            ),
            load: crate::load::Load::new(config.max_streams, config.max_connections),
            tunnels,
            admission: crate::admission::Admission::new(config.admission.clone()),
            user_share: crate::user_share::UserShare::new(config.max_streams_per_user),
        });
        {
            let shared = shared.clone();
            let sink = directory::ControlSink {
                control: control.clone(),
                token: config.token.clone(),
            };
            let snapshot = move || shared.agents.snapshot();
            background.spawn(report_task.run(sink, snapshot, reporter_stop.clone()));
        }
        // Know the map before the first agent arrives, so its role is reported right.
        if let Err(e) = shared.view.refresh_map().await {
            tracing::warn!(error = %e, "no region map yet");
        }
        // Keys and revocations: one long-polled heartbeat, cached on disk.
        background.spawn(cache::sync(
            shared.clone(),
            control,
            config.token.clone(),
            enrollment,
            // A relay that started from its cache enrolls once the control plane is back.
            enrolled,
            cache_path.map(|p| (p, cached)),
            stop.clone(),
        ));
        background.spawn(crate::report::report_loop(
            shared.clone(),
            config.report_every,
            stop.clone(),
        ));
        background.spawn(crate::view::refresh_loop(
            shared.clone(),
            config.refresh,
            stop.clone(),
        ));
        let web = Arc::new(crate::web::Web {
            cookie_name: ferry_proto::app_host::app_cookie_name(
                config.apps_domain.as_deref().unwrap_or_default(),
            ),
            apps_domain: config.apps_domain.clone(),
            control_url: config.control_url.clone(),
            tasks: tokio_util::task::TaskTracker::new(),
            stop: stop.clone(),
            limits: crate::web::limits::WebLimits::new(config.web_limits.clone()),
        });
        // The tunnel's ALPN first: rustls picks the first of ours that the client offers,
        // and a tunnel client offers http/1.1 too (for L7 proxies). Browsers never
        // offer it.
        let https_tls = ferry_certs::server_config(&cert, &[alpn::TUNNEL, b"h2", b"http/1.1"])?;
        background.spawn(crate::web::serve(
            shared.clone(),
            web,
            https_listener,
            tokio_rustls::TlsAcceptor::from(Arc::new(https_tls)),
        ));
        let admin_addr = match admin {
            Some(server) => {
                let addr = server.local_addr();
                background.spawn(crate::admin::serve(shared.clone(), server, stop.clone()));
                Some(addr)
            }
            None => None,
        };
        tracing::info!(relay = %config.name, region = %config.region, addr = %advertise, https = %https_url, apps = ?config.apps_domain, admin = ?admin_addr, "relay listening");
        Ok(Relay {
            endpoint,
            shared,
            background,
            drain,
            stop,
            reporter_stop,
            drain_grace: config.drain_grace,
            admin_addr,
        })
    }

    /// Where the admin port listens, if it does.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// Number of agents connected right now.
    pub fn agent_count(&self) -> usize {
        self.shared.agents.len()
    }

    /// Number of live outgoing mesh links.
    pub fn mesh_links(&self) -> usize {
        self.shared.mesh.live_links()
    }

    /// Accepts connections until the drain token fires, then drains: readiness false,
    /// agents told to move, new client streams refused, open streams given the grace
    /// period; returns as soon as they (and the agents) are gone.
    pub async fn run(mut self) {
        let mut connections = JoinSet::new();
        let drained = drain(&self.shared, &self.drain, self.drain_grace);
        tokio::pin!(drained);
        loop {
            tokio::select! {
                biased;
                _ = &mut drained => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    // Accepted here, one at a time (see `admission`), served in a task.
                    if let Some(admitted) = self.shared.admission.admit(&self.shared, incoming) {
                        let serve = crate::admission::serve(self.shared.clone(), admitted, self.stop.clone());
                        connections.spawn(serve);
                    }
                }
            }
        }
        self.stop.cancel();
        self.endpoint
            .close(ErrorCode::Draining.to_u16().into(), b"relay shutting down");
        connections.shutdown().await;
        // Every agent task has ended and queued its "left"; send them before exiting.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.shared.directory.flush()).await;
        self.reporter_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        self.background.shutdown().await;
        tracing::info!(relay = %self.shared.name, "relay stopped");
    }
}

/// Binds the QUIC (UDP) socket and the HTTPS (TCP) listener on the same port number.
/// With port 0 the UDP port is picked first; if its TCP twin is taken, both are tried
/// again on a fresh port.
async fn bind_ports(
    listen: SocketAddr,
) -> Result<(std::net::UdpSocket, tokio::net::TcpListener), RelayError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let socket = ferry_transport::quic::udp_socket(listen)?;
        let port = socket
            .local_addr()
            .map_err(|source| RelayError::Bind {
                addr: listen,
                source,
            })?
            .port();
        let addr = SocketAddr::new(listen.ip(), port);
        match tokio::net::TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((socket, tcp)),
            Err(_) if listen.port() == 0 && attempts < 20 => continue,
            Err(source) => return Err(RelayError::Https { addr, source }),
        }
    }
}

/// Waits for the drain signal, then for open streams (up to `grace`) and agents.
async fn drain(shared: &Arc<Shared>, signal: &CancellationToken, grace: Duration) {
    signal.cancelled().await;
    let started = tokio::time::Instant::now();
    shared.drain.begin();
    shared.metrics.set_draining(true);
    tracing::info!(
        open_streams = shared.drain.open_streams(),
        agents = shared.agents.len(),
        ?grace,
        "draining"
    );
    // Leave the region map now, so agents that move do not pick us again.
    let beat = crate::view::beat(shared);
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        shared.view.control().post::<_, serde_json::Value>(
            "/api/v1/relays/heartbeat",
            Some(shared.view.token()),
            &beat,
        ),
    )
    .await;
    if tokio::time::timeout(grace, shared.drain.idle())
        .await
        .is_err()
    {
        tracing::warn!(
            open_streams = shared.drain.open_streams(),
            "drain grace elapsed; cutting the remaining streams"
        );
        return;
    }
    let deadline = (started + grace).min(tokio::time::Instant::now() + AGENT_MOVE_WAIT);
    let _ = tokio::time::timeout_at(deadline, shared.agents.empty()).await;
    tracing::info!(agents_left = shared.agents.len(), "drained");
}

/// Streams any peer may open before its ALPN is known: the hello, and spare room.
const HELLO_STREAMS: u32 = 4;

pub(crate) async fn serve_connection(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    cancel: CancellationToken,
    handshake: Duration,
) {
    let protocol = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    let role = match protocol.as_deref() {
        Some(p) if p == alpn::AGENT => Some(crate::metrics::Role::Agent),
        Some(p) if p == alpn::CLIENT => Some(crate::metrics::Role::Client),
        Some(p) if p == alpn::MESH => Some(crate::metrics::Role::Mesh),
        _ => None,
    };
    let _open = role.map(|role| shared.metrics.connection(role, handshake));
    // Agents and clients count against the connection limit; mesh links never do.
    let _slot = match role {
        Some(crate::metrics::Role::Agent | crate::metrics::Role::Client) => {
            match shared.load.try_connection() {
                Some(slot) => Some(slot),
                None => {
                    let message = format!(
                        "relay {} holds its limit of {} connections; try another relay",
                        shared.name,
                        shared.load.max_connections()
                    );
                    return crate::clients::refuse_overloaded(&shared, &conn, message).await;
                }
            }
        }
        _ => None,
    };
    if matches!(protocol.as_deref(), Some(p) if p == alpn::CLIENT || p == alpn::MESH) {
        conn.set_max_concurrent_bi_streams(shared.stream_allowance.into());
    }
    let transport = match shared.tunnels.tunnel(conn.remote_address()) {
        Some(tunnel) => {
            tracing::debug!(peer = %tunnel.peer, transport = tunnel.kind.as_str(), "connection through a tunnel");
            crate::metrics::Transport::from(tunnel.kind)
        }
        None => crate::metrics::Transport::Quic,
    };
    let _by_transport = role.and_then(|role| shared.metrics.transport(role, transport));
    // A tunnel that ends takes its peer with it: close the connection now, and let the
    // role's own code clean up as for any closed connection.
    let tunnel_ended = async {
        if transport != crate::metrics::Transport::Quic {
            shared
                .tunnels
                .ended(conn.remote_address())
                .cancelled()
                .await;
            conn.close(0u32.into(), b"tunnel closed");
        }
        std::future::pending::<()>().await
    };
    let serve = async {
        match protocol.as_deref() {
            Some(p) if p == alpn::AGENT => {
                crate::clients::serve_agent(shared.clone(), conn.clone(), cancel).await
            }
            Some(p) if p == alpn::CLIENT => {
                crate::clients::serve_client(shared.clone(), conn.clone(), cancel).await
            }
            Some(p) if p == alpn::MESH => {
                crate::mesh::serve_mesh(shared.clone(), conn.clone(), cancel).await
            }
            // rustls refuses a handshake with no common ALPN, so this is only a safety net.
            _ => conn.close(ErrorCode::Protocol.to_u16().into(), b"unknown ALPN"),
        }
    };
    tokio::select! {
        () = serve => {}
        () = tunnel_ended => {}
    }
}

/// Checks the hello token of `kind` on `conn`; returns the subject. The connection is
/// remembered under the token's id, so that revoking the token ends it.
pub(crate) fn check_token(
    shared: &Shared,
    conn: &quinn::Connection,
    token: &str,
    kind: TokenKind,
) -> Result<String, ferry_proto::ErrorFrame> {
    shared
        .keys()
        .verify(
            token,
            ferry_transport::unix_now(),
            ferry_proto::token::Expect {
                kind,
                audience: ferry_proto::token::AUDIENCE_FERRY,
            },
        )
        .map_err(|e| ferry_proto::ErrorFrame::new(e.code(), e.to_string()))
        .and_then(|claims| {
            let revoked = shared
                .revoked
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if revoked.contains(&claims.jti) {
                Err(ferry_proto::ErrorFrame::new(
                    ErrorCode::Unauthorized,
                    "token was revoked",
                ))
            } else {
                shared.sessions.track(&claims.jti, conn);
                Ok(claims.sub)
            }
        })
}
