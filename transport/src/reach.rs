//! Reaching a relay on the network as it is: QUIC on UDP where it gets through, QUIC
//! inside a TLS tunnel on TCP ([`crate::tunnel`]) where it does not, chosen
//! automatically and remembered per network.
//!
//! [`Connector::connect`] races the two, Happy-Eyeballs style: QUIC starts first; the
//! tunnel starts [`HEAD_START`] later, or at once when QUIC has already failed (an
//! ICMP rejection, a handshake a middlebox refused). Whichever finishes its hello
//! first is used, and the network remembers it: where the tunnel won before, both
//! start together. A session on the tunnel should ask [`Connector::connect_quic`]
//! again every [`reprobe_interval`] and move to QUIC when it answers (make before
//! break: the old connection keeps its open streams until they end).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::api::RelayInfo;
use ferry_proto::ErrorCode;
use tokio::net::TcpStream;

use crate::dial::{self, DialError, Session};
use crate::proxy::ProxySettings;
use crate::quic::{EndpointError, Limits};
use crate::race::{race, CONNECTION_ATTEMPT_DELAY};
use crate::resolve::{ResolveError, Resolver};
use crate::tunnel::{self, TunnelKind};

/// How long QUIC runs alone before the tunnel is tried too: long enough for a QUIC
/// handshake on any path where UDP works well (a few RTTs), short enough that a
/// blocked network costs the user little.
pub const HEAD_START: Duration = Duration::from_millis(300);

/// Which transports may be used (`--transport`, `FERRY_TRANSPORT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportMode {
    /// QUIC first, the tunnel after a head start; remembered per network.
    #[default]
    Auto,
    /// QUIC on UDP only.
    Quic,
    /// The TCP tunnel only.
    Tcp,
}

impl std::str::FromStr for TransportMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(TransportMode::Auto),
            "quic" => Ok(TransportMode::Quic),
            "tcp" => Ok(TransportMode::Tcp),
            other => Err(format!(
                "`{other}` is not a transport: use auto, quic or tcp"
            )),
        }
    }
}

/// How a connection reaches its relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Quic,
    Tcp,
    #[serde(rename = "websocket")]
    WebSocket,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
            Transport::WebSocket => "websocket",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<TunnelKind> for Transport {
    fn from(kind: TunnelKind) -> Transport {
        match kind {
            TunnelKind::Tls => Transport::Tcp,
            TunnelKind::WebSocket => Transport::WebSocket,
        }
    }
}

/// A session with a relay, and how it was reached.
pub struct Reached {
    pub session: Session,
    /// The endpoint the session runs on (a tunnel's own, or the shared UDP one).
    pub endpoint: quinn::Endpoint,
    pub transport: Transport,
    /// Why this transport, for `ferry status` and the logs.
    pub why: String,
}

/// Why no transport reached a relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReachError {
    /// The relay answered and refused (a bad token is bad over any transport).
    #[error(transparent)]
    Refused(DialError),
    #[error("{}", describe_failures(.quic, .tcp))]
    Unreachable {
        quic: Option<String>,
        tcp: Option<String>,
    },
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
}

fn describe_failures(quic: &Option<String>, tcp: &Option<String>) -> String {
    match (quic, tcp) {
        (Some(q), Some(t)) => format!("over QUIC: {q}; over TCP: {t}"),
        (Some(q), None) => format!("over QUIC: {q}"),
        (None, Some(t)) => format!("over TCP: {t}"),
        (None, None) => "no transport was tried".into(),
    }
}

impl ReachError {
    /// The relay's error code, when it answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ReachError::Refused(e) => e.code(),
            _ => None,
        }
    }
}

/// Why a [`Connector`] could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectorError {
    #[error(transparent)]
    Cert(#[from] ferry_certs::CertError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
}

/// A refusal is an answer: the relay is reachable, and another transport would be
/// refused the same way.
fn is_answer(e: &DialError) -> bool {
    matches!(e, DialError::Refused { .. })
}

/// What worked on which network, so that a network that blocks UDP does not cost the
/// head start every time. Kept in memory, and in a file when given one (the CLI, whose
/// processes are short).
pub struct TransportMemory {
    path: Option<PathBuf>,
    known: Mutex<HashMap<String, Transport>>,
}

impl TransportMemory {
    pub fn in_memory() -> TransportMemory {
        TransportMemory {
            path: None,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// Reads what a file remembers (nothing if it is missing or unreadable).
    pub fn in_file(path: PathBuf) -> TransportMemory {
        let known = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        TransportMemory {
            path: Some(path),
            known: Mutex::new(known),
        }
    }

    fn get(&self, network: &str) -> Option<Transport> {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(network)
            .copied()
    }

    fn set(&self, network: &str, transport: Transport) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.get(network) == Some(&transport) {
            return;
        }
        known.insert(network.to_string(), transport);
        if let Some(path) = &self.path {
            // Best effort: a lost memory only costs the head start once.
            if let Ok(json) = serde_json::to_vec(&*known) {
                let _ = std::fs::write(path, json);
            }
        }
    }
}

/// Names the network we are on, as seen towards `addr`: the local address the kernel
/// would send from (no packet is sent), and whether a proxy is in the way. A laptop
/// that moves to another Wi-Fi gets another address, and its own memory.
fn network_key(addr: SocketAddr, proxied: bool) -> String {
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let local = std::net::UdpSocket::bind(bind)
        .and_then(|s| {
            s.connect(addr)?;
            s.local_addr()
        })
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("{local}{}", if proxied { " via proxy" } else { "" })
}

/// Where a relay's tunnel is reached: its HTTPS origin's host and port (which may be
/// an L7 proxy in front of it), else its QUIC address (same port number on TCP).
struct TunnelTarget {
    host: String,
    port: u16,
    /// The name the TLS certificate there must hold.
    tls_name: String,
}

impl TunnelTarget {
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn tunnel_target(relay: &RelayInfo) -> Option<TunnelTarget> {
    if let Some(url) = &relay.https_url {
        let rest = url.strip_prefix("https://")?;
        let authority = rest.split('/').next()?;
        let (host, port) = split_host_port(authority)?;
        return Some(TunnelTarget {
            tls_name: host.clone(),
            host,
            port,
        });
    }
    let (host, port) = split_host_port(&relay.quic_addr)?;
    Some(TunnelTarget {
        host,
        port,
        tls_name: relay.server_name.clone(),
    })
}

/// `host:port` or `[v6]:port` into its parts (the host without brackets).
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// Dials relays for an agent or a CLI, over whichever transport gets through.
pub struct Connector {
    mode: TransportMode,
    quic_tls: rustls::ClientConfig,
    tunnel_tls: Arc<rustls::ClientConfig>,
    limits: Limits,
    local_ip: Option<IpAddr>,
    /// Relays advertised by name are resolved here (A and AAAA, TTLs honoured).
    resolver: Resolver,
    /// `HTTPS_PROXY` and friends, for the tunnel.
    proxies: ProxySettings,
    /// One UDP endpoint per address family, shared by all QUIC connections.
    udp: Mutex<HashMap<bool, quinn::Endpoint>>,
    memory: TransportMemory,
    /// How long each attempt may take.
    pub attempt_timeout: Duration,
}

impl Connector {
    /// `quic_tls` carries the ALPN of the role (agent or client); tunnels use ferry's
    /// CA from `ca_pem`. DNS (`FERRY_DNS_SERVER`) and proxies (`HTTPS_PROXY`,
    /// `NO_PROXY`, ...) come from the environment.
    pub fn new(
        mode: TransportMode,
        ca_pem: &str,
        quic_tls: rustls::ClientConfig,
        limits: Limits,
        local_ip: Option<IpAddr>,
        memory: TransportMemory,
    ) -> Result<Connector, ConnectorError> {
        Ok(Connector {
            mode,
            quic_tls,
            tunnel_tls: tunnel::dial::tls_config(ca_pem)?,
            limits,
            local_ip,
            resolver: Resolver::from_env()?,
            proxies: ProxySettings::from_env(),
            udp: Mutex::new(HashMap::new()),
            memory,
            attempt_timeout: dial::HANDSHAKE_TIMEOUT + dial::REPLY_TIMEOUT,
        })
    }

    /// Closes every connection on the shared UDP endpoints (tunnels close with their
    /// connections) and waits up to `grace` for the closes to go out.
    pub async fn close(&self, reason: &[u8], grace: Duration) {
        let endpoints: Vec<quinn::Endpoint> = self
            .udp
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for endpoint in endpoints {
            endpoint.close(0u32.into(), reason);
            let _ = tokio::time::timeout(grace, endpoint.wait_idle()).await;
        }
    }

    pub fn mode(&self) -> TransportMode {
        self.mode
    }

    /// The shared UDP endpoint for `peer`'s address family.
    pub fn udp_endpoint(&self, peer: SocketAddr) -> Result<quinn::Endpoint, EndpointError> {
        let mut udp = self.udp.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ep) = udp.get(&peer.is_ipv6()) {
            return Ok(ep.clone());
        }
        let ep = crate::quic::client_endpoint_from(
            self.local_ip,
            peer,
            self.quic_tls.clone(),
            &self.limits,
        )?;
        udp.insert(peer.is_ipv6(), ep.clone());
        Ok(ep)
    }

    /// Whether `relay` completes a handshake (QUIC, or TLS on its HTTPS port, as the
    /// mode allows) within `within`: a cheap sign of life, without a hello.
    pub async fn answers(&self, relay: &RelayInfo, within: Duration) -> bool {
        let quic = async {
            if self.mode != TransportMode::Tcp {
                let first = self
                    .resolver
                    .resolve(&relay.quic_addr)
                    .await
                    .ok()
                    .and_then(|a| a.first().copied());
                if let Some(addr) = first {
                    let connecting = self
                        .udp_endpoint(addr)
                        .ok()
                        .and_then(|ep| ep.connect(addr, &relay.server_name).ok());
                    if let Some(Ok(conn)) = match connecting {
                        Some(c) => Some(c.await),
                        None => None,
                    } {
                        conn.close(0u32.into(), b"only checking");
                        return true;
                    }
                }
            }
            std::future::pending::<bool>().await
        };
        let tcp = async {
            if self.mode != TransportMode::Quic {
                if let Some(target) = tunnel_target(relay) {
                    let name = rustls_pki_types::ServerName::try_from(target.tls_name.clone());
                    if let (Ok(tcp), Ok(name)) = (self.tcp_to(&target).await, name) {
                        let tls = tokio_rustls::TlsConnector::from(self.tunnel_tls.clone());
                        if tls.connect(name, tcp).await.is_ok() {
                            return true;
                        }
                    }
                }
            }
            std::future::pending::<bool>().await
        };
        tokio::time::timeout(within, async {
            tokio::select! {
                answered = quic => answered,
                answered = tcp => answered,
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Connects and says hello over QUIC on UDP only (the re-probe of a session that
    /// runs on the tunnel).
    pub async fn connect_quic(
        &self,
        relay: &RelayInfo,
        token: &str,
    ) -> Result<Reached, ReachError> {
        let addrs =
            self.resolver
                .resolve(&relay.quic_addr)
                .await
                .map_err(|e| ReachError::Unreachable {
                    quic: Some(e.to_string()),
                    tcp: None,
                })?;
        self.race_quic(relay, addrs, token)
            .await
            .map_err(|e| match e {
                Err(answer) => ReachError::Refused(answer),
                Ok(why) => ReachError::Unreachable {
                    quic: Some(why),
                    tcp: None,
                },
            })
    }

    /// QUIC to each of a relay's addresses, staggered (RFC 8305); the first session
    /// wins. `Err(Err(_))`: the relay answered with a refusal; `Err(Ok(why))`: no
    /// address answered (the name is then looked up afresh next time).
    async fn race_quic(
        &self,
        relay: &RelayInfo,
        addrs: Vec<SocketAddr>,
        token: &str,
    ) -> Result<Reached, Result<String, DialError>> {
        match race(addrs, CONNECTION_ATTEMPT_DELAY, |addr| {
            self.dial_quic(relay, addr, token)
        })
        .await
        {
            Ok((_, reached)) => Ok(reached),
            Err(mut errors) => {
                self.resolver.forget(&relay.quic_addr);
                if let Some(i) = errors.iter().position(|(_, e)| is_answer(e)) {
                    return Err(Err(errors.swap_remove(i).1));
                }
                let why: Vec<String> = errors.iter().map(|(a, e)| format!("{a}: {e}")).collect();
                Err(Ok(why.join("; ")))
            }
        }
    }

    /// TCP to where a relay's tunnel is reached: through the proxy the environment
    /// names for it, else to its resolved addresses (raced).
    async fn tcp_to(&self, target: &TunnelTarget) -> Result<TcpStream, String> {
        Ok(self.tcp_via(target).await?.0)
    }

    /// [`Connector::tcp_to`], saying which proxy (if any) the stream goes through.
    async fn tcp_via(
        &self,
        target: &TunnelTarget,
    ) -> Result<(TcpStream, Option<crate::proxy::ProxyUrl>), String> {
        let authority = target.authority();
        let addrs = if self.proxies.proxy_for(&target.host, target.port).is_some() {
            Vec::new()
        } else {
            self.resolver
                .resolve(&authority)
                .await
                .map_err(|e| e.to_string())?
        };
        tokio::time::timeout(
            dial::HANDSHAKE_TIMEOUT,
            crate::proxy::tcp_connect(&self.proxies, &target.host, target.port, &addrs),
        )
        .await
        .map_err(|_| {
            format!(
                "no TCP connection to {authority} within {:?}",
                dial::HANDSHAKE_TIMEOUT
            )
        })?
        .map_err(|e| e.to_string())
    }

    async fn dial_quic(
        &self,
        relay: &RelayInfo,
        addr: SocketAddr,
        token: &str,
    ) -> Result<Reached, DialError> {
        let endpoint = self.udp_endpoint(addr)?;
        let session = dial::connect(&endpoint, addr, &relay.server_name, token).await?;
        Ok(Reached {
            session,
            endpoint,
            transport: Transport::Quic,
            why: String::new(),
        })
    }

    /// Opens a tunnel to the relay and connects through it.
    pub async fn connect_tcp(&self, relay: &RelayInfo, token: &str) -> Result<Reached, String> {
        let target = tunnel_target(relay)
            .ok_or_else(|| format!("relay {} has no usable HTTPS address", relay.name))?;
        let authority = target.authority();
        let (tcp, proxy) = self.tcp_via(&target).await?;
        let tunnel = tunnel::open(
            tcp,
            &target.tls_name,
            &authority,
            self.tunnel_tls.clone(),
            self.quic_tls.clone(),
            &self.limits,
        )
        .await
        .map_err(|e| e.to_string())?;
        let session = dial::connect(&tunnel.endpoint, tunnel.remote, &relay.server_name, token)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Reached {
            session,
            endpoint: tunnel.endpoint,
            transport: tunnel.kind.into(),
            why: proxy
                .map(|p| format!(" through proxy {}", p.authority()))
                .unwrap_or_default(),
        })
    }

    /// Connects to `relay` over the transport the mode allows and the network lets
    /// through (see the module documentation).
    pub async fn connect(&self, relay: &RelayInfo, token: &str) -> Result<Reached, ReachError> {
        match self.mode {
            TransportMode::Quic => {
                let mut reached = self.connect_quic(relay, token).await?;
                reached.why = "--transport quic".into();
                return Ok(reached);
            }
            TransportMode::Tcp => {
                let mut reached = self.connect_tcp(relay, token).await.map_err(|tcp| {
                    ReachError::Unreachable {
                        quic: None,
                        tcp: Some(tcp),
                    }
                })?;
                reached.why = format!("--transport tcp{}", reached.why);
                return Ok(reached);
            }
            TransportMode::Auto => {}
        }
        // Resolved once for both (a proxy resolves the tunnel's name on its side).
        let addrs = self
            .resolver
            .resolve(&relay.quic_addr)
            .await
            .map_err(|e| e.to_string());
        let proxied =
            tunnel_target(relay).is_some_and(|t| self.proxies.proxy_for(&t.host, t.port).is_some());
        let network = match addrs.as_ref().ok().and_then(|a| a.first()) {
            Some(a) => network_key(*a, proxied),
            None => format!("unresolved{}", if proxied { " via proxy" } else { "" }),
        };
        let remembered_tcp = matches!(
            self.memory.get(&network),
            Some(Transport::Tcp | Transport::WebSocket)
        );
        let quic = async {
            match &addrs {
                Ok(a) => self.race_quic(relay, a.clone(), token).await,
                Err(e) => Err(Ok(e.clone())),
            }
        };
        let tcp = async { self.connect_tcp(relay, token).await };
        let refused = async {
            match &addrs {
                Ok(a) => udp_refused(self.local_ip, a).await,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::pin!(quic, tcp, refused);
        let head_start = tokio::time::sleep(if remembered_tcp {
            Duration::ZERO
        } else {
            HEAD_START
        });
        tokio::pin!(head_start);
        let mut quic_failed: Option<String> = None;
        let mut tcp_failed: Option<String> = None;
        let mut tcp_started = false;
        let reached = loop {
            tokio::select! {
                biased;
                r = &mut quic, if quic_failed.is_none() => match r {
                    Ok(mut reached) => {
                        reached.why = if tcp_started { "QUIC answered first".into() } else { "QUIC".into() };
                        break Ok(reached);
                    }
                    Err(Err(answer)) => return Err(ReachError::Refused(answer)),
                    Err(Ok(e)) => {
                        tracing::debug!(relay = %relay.name, error = %e, "QUIC failed; trying the TCP tunnel");
                        quic_failed = Some(e);
                        if tcp_failed.is_some() { break Err(()); }
                    }
                },
                r = &mut tcp, if tcp_started && tcp_failed.is_none() => match r {
                    Ok(mut reached) => {
                        let through = std::mem::take(&mut reached.why);
                        reached.why = match (&quic_failed, remembered_tcp) {
                            (Some(e), _) => format!("QUIC failed: {e}"),
                            (None, true) => "QUIC failed on this network before; the tunnel answered first".into(),
                            (None, false) => format!("no QUIC answer within {}ms (UDP blocked?)", HEAD_START.as_millis()),
                        };
                        reached.why.push_str(&through);
                        break Ok(reached);
                    }
                    Err(e) => {
                        tracing::debug!(relay = %relay.name, error = %e, "TCP tunnel failed");
                        tcp_failed = Some(e);
                        if quic_failed.is_some() { break Err(()); }
                    }
                },
                e = &mut refused, if quic_failed.is_none() => {
                    tracing::debug!(relay = %relay.name, error = %e, "UDP refused; trying the TCP tunnel");
                    quic_failed = Some(format!("UDP refused ({e})"));
                }
                () = &mut head_start, if !tcp_started => tcp_started = true,
            }
            // QUIC failed outright: no point waiting out the head start.
            if quic_failed.is_some() {
                tcp_started = true;
            }
        };
        match reached {
            Ok(reached) => {
                if reached.transport != Transport::Quic {
                    tracing::info!(relay = %relay.name, transport = %reached.transport, why = %reached.why, "falling back to the TCP tunnel");
                }
                self.memory.set(&network, reached.transport);
                Ok(reached)
            }
            Err(()) => Err(ReachError::Unreachable {
                quic: quic_failed,
                tcp: tcp_failed,
            }),
        }
    }
}

/// Resolves only if UDP to every one of `addrs` is refused: one byte (no QUIC packet
/// is that short, so a relay drops it unread) on a connected socket to each. A local
/// firewall that rejects UDP fails the send (EPERM), and an ICMP rejection on the way
/// fails the next receive (ECONNREFUSED): both far sooner than a QUIC handshake would
/// time out. One dead address of several (a relay's name with an AAAA record it does
/// not listen on) says nothing about UDP: the race over addresses handles it.
async fn udp_refused(local_ip: Option<IpAddr>, addrs: &[SocketAddr]) -> String {
    let checks = addrs.iter().map(|&addr| async move {
        let check = async {
            let socket = tokio::net::UdpSocket::bind(crate::quic::client_bind_addr(local_ip, addr))
                .await
                .ok()?;
            socket.connect(addr).await.ok()?;
            if let Err(e) = socket.send(&[0]).await {
                return Some(e.to_string());
            }
            let mut buf = [0u8; 1];
            socket.recv(&mut buf).await.err().map(|e| e.to_string())
        };
        match check.await {
            Some(e) => format!("{addr}: {e}"),
            None => std::future::pending().await,
        }
    });
    let refused = futures_util::future::join_all(checks).await;
    if refused.is_empty() {
        return std::future::pending().await;
    }
    refused.join("; ")
}

/// How long a session on the tunnel waits before it tries QUIC again: 30-60 s,
/// jittered so that many agents do not probe together (`FERRY_QUIC_REPROBE_SECS`
/// sets the lower bound; the upper is twice that).
pub fn reprobe_interval() -> Duration {
    let base = std::env::var("FERRY_QUIC_REPROBE_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(30.0);
    Duration::from_secs_f64(base * (1.0 + fastrand::f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_split_for_names_and_both_families() {
        assert_eq!(
            split_host_port("relay.example.com:4433"),
            Some(("relay.example.com".into(), 4433))
        );
        assert_eq!(split_host_port("[::1]:7"), Some(("::1".into(), 7)));
        assert_eq!(
            split_host_port("127.0.0.1:9"),
            Some(("127.0.0.1".into(), 9))
        );
        assert_eq!(split_host_port("nohost"), None);
        assert_eq!(split_host_port(":80"), None);
    }

    #[test]
    fn modes_parse_and_refuse_others_clearly() {
        assert_eq!("tcp".parse::<TransportMode>(), Ok(TransportMode::Tcp));
        let err = "udp".parse::<TransportMode>().unwrap_err();
        assert!(err.contains("auto, quic or tcp"), "{err}");
    }
}
